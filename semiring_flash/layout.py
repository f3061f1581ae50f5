"""User labels <-> the internal states of the head's semi-CRF; gold segmentations in any accepted form.

Segments longer than ``max_duration`` (``long_segments``)
--------------------------------------------------------
A semi-CRF only knows segments of 1..K tokens. With ``long_segments`` a label
may also have longer segments: internally it gets a second state, the
*chunk*, of fixed duration L_c = K_c − m_c + 1 (K_c, m_c its max/min
duration). A segment of n tokens is the unique chain

    m = max(0, (n − m_c) // L_c) chunks of L_c tokens, then one tail piece of n − m·L_c ∈ [m_c, K_c]

so every labelled segmentation has exactly one internal path: ``log_prob`` is
the exact log-probability of the segmentation (no sum over spurious splits),
``partition``, ``entropy``, ``topk`` and ``sample`` are those of the
segmentation distribution, and decoding merges the chain back. The duration
score of a long segment is ``m · chunk[c] + duration[r − 1, c]`` (a geometric
tail in blocks of L_c, with a learned per-label ``chunk`` score).

First-token channel (``first_token``)
-------------------------------------
With additive per-token scores, where a segment starts can only depend on the
input through label changes. ``first_token=True`` gives the first token of
each segment its own score channel (internally a 1-token *first* piece per
label, followed by the tail/chunks), the role B/S tags play for a BIES tagger.
The same unique-decomposition argument keeps the likelihood exact.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from .segmentation import FactoredMarginals, Segmentation, segment_lists

__all__ = ["StateLayout", "to_segmentation"]


class StateLayout:
    """User labels <-> internal states. Each user segment is a fixed chain of *pieces*:

    ``[first]`` (1 token; only with ``first_token``) + ``chunk``* (fixed length
    L_c; only for ``long`` labels) + ``tail`` (the rest). Pieces are internal
    states of the semi-CRF; the decomposition of a labelled segment is unique,
    so internal paths and user segmentations are in bijection.

    Per internal state s: ``base[s]`` (user label), ``kind[s]`` in
    {"tail", "chunk", "first"}, ``channel[s]`` (which per-token score it emits:
    c, or C + c for first tokens), and its duration range [lo[s], hi[s]].
    """

    def __init__(self, num_labels: int, long_mask: Sequence, min_d: Sequence, max_d: Sequence, first_token: bool = False):
        C = self.C = num_labels
        self.long = [bool(x) for x in long_mask]
        self.min_d, self.max_d = list(min_d), list(max_d)
        self.first_token = bool(first_token)
        self.base, self.kind, self.channel, self.lo, self.hi = [], [], [], [], []
        self.first_of, self.tail_of, self.chunk_of = [-1] * C, [-1] * C, [-1] * C
        self.chunk_len, self.body_lo, self.body_hi = [0] * C, [0] * C, [0] * C

        def add(c, kind, channel, lo, hi):
            for lst, v in ((self.base, c), (self.kind, kind), (self.channel, channel), (self.lo, lo), (self.hi, hi)):
                lst.append(v)
            return len(self.base) - 1

        for c in range(C):  # tails first: without first_token and long labels, state c is label c
            m, M = self.min_d[c], self.max_d[c]
            lo, hi = (max(1, m - 1), M - 1) if first_token else (m, M)
            self.body_lo[c], self.body_hi[c] = lo, hi
            if hi >= 1:
                self.tail_of[c] = add(c, "tail", c, lo, hi)
            elif self.long[c]:
                raise ValueError(f"label {c}: first_token with max_duration 1 leaves no tail to chain; use max_duration >= 2")
        for c in range(C):
            if self.long[c]:
                L = self.chunk_len[c] = self.body_hi[c] - self.body_lo[c] + 1
                self.chunk_of[c] = add(c, "chunk", c, L, L)
        if first_token:
            for c in range(C):
                self.first_of[c] = add(c, "first", C + c, 1, 1)
        self.S = len(self.base)
        self.K = max(self.hi)
        # every user segment is one token (a linear chain): per-token gold labels are then single tokens
        self.single_token = max(self.max_d) == 1 and not any(self.long)
        self.identity = self.S == C and not first_token
        # entry states (begin a user segment), ending states (may end one), continuations (p -> s inside one)
        self.entry = [[self.first_of[c]] if first_token else [s for s in (self.tail_of[c], self.chunk_of[c]) if s >= 0]
                      for c in range(C)]
        self.ending = [[s for s in (self.tail_of[c], self.first_of[c] if first_token and self.min_d[c] <= 1 else -1) if s >= 0]
                       for c in range(C)]
        cont = torch.zeros(self.S, self.S, dtype=torch.bool)
        for c in range(C):
            f, t, k = self.first_of[c], self.tail_of[c], self.chunk_of[c]
            for p, s in ((f, t), (f, k), (k, k), (k, t)):
                if p >= 0 and s >= 0:
                    cont[p, s] = True
        self.cont = cont
        # every boundary between user segments: (ending state, entry state, label before, label after)
        self.boundaries = [(e, i, c, c2) for c in range(C) for c2 in range(C) for e in self.ending[c] for i in self.entry[c2]]
        self.boundary = torch.zeros(self.S, self.S, dtype=torch.bool)
        for e, i, _, _ in self.boundaries:
            self.boundary[e, i] = True

    # segments ---------------------------------------------------------------------------
    def split(self, segments: list) -> list:
        """User segments (start, end, label) -> internal pieces. Impossible segments map to pieces that score −inf."""
        out = []
        for s, e, c in segments:
            if self.first_token:
                out.append((s, s + 1, self.first_of[c]))
                s += 1
                if s >= e:
                    continue
            n = e - s
            if self.chunk_of[c] >= 0 and n > self.body_hi[c]:
                L = self.chunk_len[c]
                m = max(0, (n - self.body_lo[c]) // L)
                out += [(s + i * L, s + (i + 1) * L, self.chunk_of[c]) for i in range(m)]
                s += m * L
            out.append((s, e, self.tail_of[c] if self.tail_of[c] >= 0 else self.first_of[c]))
        return out

    def merge(self, pieces: list) -> list:
        """Internal pieces -> user segments."""
        out, prev = [], None
        for s, e, st in pieces:
            if prev is not None and bool(self.cont[prev, st]):
                out[-1] = (out[-1][0], e, out[-1][2])
            else:
                out.append((s, e, self.base[st]))
            prev = st
        return out

    def to_internal(self, seg: Segmentation) -> Segmentation:
        if self.identity:
            return seg
        T, lead = seg.T, seg.labels.shape[:-1]
        pieces = [self.split(s) for s in seg.segments()]
        out = Segmentation.from_segments(pieces, T=T, device=seg.labels.device)
        return Segmentation(out.labels.view(*lead, T), out.starts.view(*lead, T), seg.lengths)

    def to_user(self, seg: Segmentation) -> Segmentation:
        if self.identity:
            return seg
        dev = seg.labels.device
        base = torch.tensor(self.base, device=dev)
        state = seg.labels.clamp(min=0)
        labels = torch.where(seg.labels >= 0, base[state], seg.labels)
        prev = torch.cat([state[..., :1], state[..., :-1]], -1)
        is_cont = self.cont.to(dev)[prev, state]
        is_cont[..., 0] = False
        return Segmentation(labels, seg.starts & ~is_cont, seg.lengths)

    def fold(self, x: torch.Tensor, dim: int = -1) -> torch.Tensor:
        """Sum internal states into their user labels along ``dim``."""
        if self.identity:
            return x
        index = torch.tensor(self.base, device=x.device)
        shape = list(x.shape)
        shape[dim] = self.C
        return x.new_zeros(shape).index_add_(dim % x.dim(), index, x)

    def user_marginals(self, m: FactoredMarginals) -> FactoredMarginals:
        """Internal compact marginals -> user-label ones (see :attr:`SegmentCRF.marginals`)."""
        if self.identity:
            return m
        C = self.C
        sl = m.start_label
        start_label = torch.stack([sum(sl[..., i] for i in self.entry[c]) for c in range(C)], -1)
        for c in range(C):
            k = self.chunk_of[c]
            if k >= 0 and not self.first_token:  # a piece right after a chunk continues the segment
                L = self.chunk_len[c]
                if L < sl.shape[-2]:
                    start_label[..., L:, c] = start_label[..., L:, c] - sl[..., :-L, k]
        start_label = start_label.clamp(min=0)
        trans = m.transition * self.boundary.to(m.transition.device)
        trans = self.fold(self.fold(trans, -1), -2)
        tails = [self.tail_of[c] for c in range(C)]
        dur = torch.stack([m.duration[..., t] if t >= 0 else torch.zeros_like(m.duration[..., 0]) for t in tails], -1)
        return FactoredMarginals(token=self.fold(m.token, -1), start=start_label.sum(-1), start_label=start_label,
                                 duration=dur, transition=trans)

    # parameters -> internal potentials ------------------------------------------------------------------
    def assemble(self, trans, dur, chunk, start, end):
        """User-level (masked) transition (C, C), duration (K_user, C), chunk (C,), start (.., C), end (.., C)
        -> internal transition (S, S), duration (K, S), start (.., S), end (.., S)."""
        C, S, K = self.C, self.S, self.K
        dev, dt = trans.device, trans.dtype
        zero, ninf = torch.zeros((), device=dev, dtype=dt), torch.full((), float("-inf"), device=dev, dtype=dt)
        one = dur[0]  # (C,) duration score of a 1-token segment: paid when a first piece ends the segment
        # transitions: boundaries and continuations
        src, dst, cs, c2s = (torch.tensor(v, device=dev) for v in zip(*self.boundaries))
        first_src = torch.tensor([self.kind[e] == "first" for e, _, _, _ in self.boundaries], device=dev)
        vals = trans[cs, c2s] + torch.where(first_src, one[cs], zero)
        T_int = torch.full((S, S), float("-inf"), device=dev, dtype=dt).index_put((src, dst), vals)
        T_int = torch.where(self.cont.to(dev), zero, T_int)
        # durations
        shifted = torch.cat([dur, ninf.expand(K + 1, C)], 0)
        off = 1 if self.first_token else 0  # a tail of d tokens after a first token is a segment of d + 1
        rows = torch.arange(K, device=dev)
        cols = []
        for s in range(S):
            c, kind = self.base[s], self.kind[s]
            if kind == "tail":
                cols.append(shifted[off:off + K, c])
            elif kind == "chunk":
                cols.append(torch.where(rows == self.chunk_len[c] - 1, chunk[c], ninf))
            else:
                cols.append(torch.where(rows == 0, zero, ninf))
        D_int = torch.stack(cols, 1)
        base = torch.tensor(self.base, device=dev)
        is_entry = torch.zeros(S, dtype=torch.bool, device=dev)
        is_end = torch.zeros(S, dtype=torch.bool, device=dev)
        end_first = torch.zeros(S, dtype=torch.bool, device=dev)  # a first piece ending a segment pays ``one``
        for c in range(C):
            is_entry[self.entry[c]] = True
            for e in self.ending[c]:
                is_end[e] = True
                end_first[e] = self.kind[e] == "first"
        start_i = torch.where(is_entry, start[..., base], ninf)
        end_i = torch.where(is_end, end[..., base] + torch.where(end_first, one[base], zero), ninf)
        return T_int, D_int, start_i, end_i


def _integer_tensor(name: str, x: torch.Tensor) -> torch.Tensor:
    if x.is_floating_point() or x.is_complex() or x.dtype == torch.bool:
        raise TypeError(f"{name} must be an integer tensor, got {x.dtype}")
    return x.long()


def to_segmentation(gold, lengths: torch.Tensor, T: int, device=None, num_labels: int | None = None,
                    runs: bool = True) -> Segmentation:
    """Gold in any accepted form -> :class:`Segmentation` (..., B, T), labels −1 past the lengths.

    Accepts a Segmentation, per-sequence lists of (start, end_exclusive, label),
    a pair (labels (B, T) integer, starts (B, T) bool), or per-token labels
    (B, T) integer (maximal runs are segments with ``runs``, else single tokens;
    padding past the lengths may hold anything, e.g. −100). With ``num_labels``,
    labels outside [0, num_labels) inside the lengths raise a ValueError that
    names the sequence.
    """
    lengths = torch.as_tensor(lengths, device=device).long()
    if isinstance(gold, Segmentation):
        seg = gold
    elif isinstance(gold, torch.Tensor):
        labels = _integer_tensor("gold (per-token labels)", gold)
        if labels.dim() != 2 or labels.shape[0] != lengths.shape[0]:
            raise ValueError(f"per-token gold labels must be (B, T) = ({lengths.shape[0]}, {T}), got {tuple(gold.shape)}")
        valid = torch.arange(labels.shape[1], device=labels.device) < lengths.to(labels.device).unsqueeze(1)
        starts = valid.clone()
        if runs:
            starts[:, 1:] &= labels[:, 1:] != labels[:, :-1]
        seg = Segmentation(labels, starts, lengths.to(labels.device))
    elif isinstance(gold, (tuple, list)) and len(gold) == 2 and all(isinstance(g, torch.Tensor) for g in gold):
        labels = _integer_tensor("gold labels", gold[0])
        if gold[1].is_floating_point():
            raise TypeError(f"gold starts must be a bool tensor, got {gold[1].dtype}")
        seg = Segmentation(labels, gold[1].bool(), lengths.to(labels.device))
    elif isinstance(gold, (list, tuple)):
        seg = Segmentation.from_segments(segment_lists(gold), T=T, device=device)
    else:
        raise TypeError("gold must be a Segmentation, a list of (start, end, label) lists, (labels, starts) tensors "
                        f"or per-token labels (B, T); got {type(gold).__name__}")
    if seg.T != T:  # pad or cut to the feature length
        if seg.T > T:
            raise ValueError(f"gold covers {seg.T} tokens but the features have T={T}")
        pad = T - seg.T
        seg = Segmentation(F.pad(seg.labels, (0, pad), value=-1), F.pad(seg.starts, (0, pad)), seg.lengths)
    shape = seg.labels.shape[:-1]
    if lengths.shape != shape[-1:] or not torch.equal(seg.lengths.to(lengths.device).expand(shape), lengths.expand(shape)):
        raise ValueError(f"gold lengths {seg.lengths.tolist()} differ from the given lengths {lengths.tolist()}")
    valid = seg.valid()
    labels = seg.labels.long()
    if num_labels is not None:
        bad = valid & ((labels < 0) | (labels >= num_labels))
        if bad.any():
            where = torch.nonzero(bad)[0].tolist()
            value = int(labels[tuple(where)])
            hint = " (padding? pass lengths or a mask)" if value < 0 else ""
            raise ValueError(f"gold labels must lie in [0, {num_labels}); sequence {where[:-1] if len(where) > 2 else where[0]} "
                             f"has {value} at token {where[-1]}{hint}")
    seg = Segmentation(torch.where(valid, labels, -1), seg.starts & valid, seg.lengths)
    return seg.to(device) if device is not None else seg
