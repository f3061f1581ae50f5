"""Segment-labelling head: put a semi-Markov CRF on top of any encoder.

    head = sf.nn.SemiCRFHead(in_features=256, num_labels=5, max_duration=64,
                             duration="negbin", allowed_transitions=grammar,
                             long_segments=True)
    loss = head.loss(features, lengths, gold)          # mean NLL, exact
    segs = head.decode(features, lengths)              # [[(start, end, label), ...], ...]
    dist = head(features, lengths)                     # a SemiMarkovCRF: .marginals, .topk(k), .entropy ...

The head owns a projection of the features to per-token label scores, the
transition (C×C), duration (K×C), start and end scores, and structural
constraints (−inf entries; never NaN). See docs/head.md.

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
from torch import nn

from .distribution import SemiMarkovCRF
from .potentials import SegmentPotentials
from .segmentation import FactoredMarginals, Segmentation

__all__ = ["SemiCRFHead", "DurationModel", "SegmentCRF", "StateLayout", "to_segmentation"]

NEG_INF = float("-inf")
DURATION_FAMILIES = ("table", "geometric", "poisson", "negbin")


# ---------------------------------------------------------------------------------------------
# duration models
class DurationModel(nn.Module):
    """Per-label log-scores of durations d = 1..K: a free table or a parametric family.

    Families (each label c has its own learnable parameters; d − 1 ≥ 0 is the
    shifted count so that every family starts at d = 1):

    - ``"table"``: a free (K, C) table (initialised to 0).
    - ``"geometric"``: P(d) = p (1 − p)^(d−1), p = sigmoid(θ_c).
    - ``"poisson"``: d − 1 ~ Poisson(λ_c), λ_c = softplus(θ_c).
    - ``"negbin"``: d − 1 ~ NegBin(r_c, p_c) (failures before the r-th success),
      P = Γ(d−1+r) / (Γ(r) (d−1)!) · p^(d−1) (1 − p)^r, r = softplus, p = sigmoid.

    Durations outside [min_duration[c], max_duration[c]] get −inf. With
    ``normalize=True`` (default) a parametric log-pmf is renormalised over the
    allowed durations (a proper truncated distribution); in a CRF that only
    shifts each label's segments by a constant, which start/transition scores
    could absorb, but it keeps the parameters interpretable. ``init_mean``
    (scalar or per label) places the initial mode/mean of the families.
    """

    def __init__(self, num_labels: int, max_duration: int, family: str = "table",
                 min_duration=None, max_durations=None, normalize: bool = True, init_mean=None):
        super().__init__()
        if family not in DURATION_FAMILIES:
            raise ValueError(f"duration must be one of {DURATION_FAMILIES}, got {family!r}")
        self.family, self.K, self.C, self.normalize = family, int(max_duration), int(num_labels), normalize
        lo = _per_label(min_duration, num_labels, 1, "min_duration")
        hi = _per_label(max_durations, num_labels, self.K, "max_duration")
        if any(h > self.K or h < 1 for h in hi) or any(lo_ < 1 or lo_ > h for lo_, h in zip(lo, hi)):
            raise ValueError(f"need 1 <= min_duration <= max_duration <= K={self.K}; got min={lo}, max={hi}")
        d = torch.arange(1, self.K + 1).view(-1, 1)
        allowed = (d >= torch.tensor(lo).view(1, -1)) & (d <= torch.tensor(hi).view(1, -1))
        self.register_buffer("allowed", allowed, persistent=False)  # (K, C)
        self.register_buffer("d", d.to(torch.float32), persistent=False)
        self.min_duration, self.max_durations = lo, hi
        mean = torch.as_tensor(init_mean if init_mean is not None else min(10.0, (self.K + 1) / 2), dtype=torch.float32)
        mean = mean.expand(num_labels).clamp(min=1.0 + 1e-3)
        if family == "table":
            self.table = nn.Parameter(torch.zeros(self.K, num_labels))
        elif family == "geometric":  # mean 1/p
            self.theta = nn.Parameter(_logit(1.0 / mean))
        elif family == "poisson":  # mean 1 + λ
            self.theta = nn.Parameter(_inv_softplus(mean - 1.0))
        else:  # mean 1 + r p / (1 - p); start at r = 2
            r = torch.full_like(mean, 2.0)
            p = (mean - 1.0) / (mean - 1.0 + r)
            self.theta_r = nn.Parameter(_inv_softplus(r))
            self.theta_p = nn.Parameter(_logit(p))

    def log_pmf(self) -> torch.Tensor:
        """(K, C) unmasked log-scores of durations 1..K."""
        k = self.d - 1.0  # (K, 1) shifted count
        if self.family == "table":
            return self.table
        if self.family == "geometric":
            p = torch.sigmoid(self.theta)
            return k * torch.log1p(-p.clamp(max=1 - 1e-6)) + torch.log(p.clamp(min=1e-12))
        if self.family == "poisson":
            lam = nn.functional.softplus(self.theta) + 1e-6
            return k * torch.log(lam) - lam - torch.lgamma(k + 1.0)
        r = nn.functional.softplus(self.theta_r) + 1e-4
        logp = nn.functional.logsigmoid(self.theta_p)
        log1mp = nn.functional.logsigmoid(-self.theta_p)
        return torch.lgamma(k + r) - torch.lgamma(r) - torch.lgamma(k + 1.0) + k * logp + r * log1mp

    def forward(self) -> torch.Tensor:
        """(K, C) duration scores with −inf outside the allowed durations."""
        logp = self.log_pmf()
        logp = logp.masked_fill(~self.allowed, NEG_INF)
        if self.normalize and self.family != "table":
            logp = logp - torch.logsumexp(logp, 0, keepdim=True)
        return logp

    def extra_repr(self) -> str:
        return f"family={self.family!r}, K={self.K}, min={self.min_duration}, max={self.max_durations}"


def _logit(p):
    p = torch.as_tensor(p, dtype=torch.float32).clamp(1e-4, 1 - 1e-4)
    return torch.log(p) - torch.log1p(-p)


def _inv_softplus(x):
    x = torch.as_tensor(x, dtype=torch.float32).clamp(min=1e-4)
    return x + torch.log(-torch.expm1(-x))


def _per_label(value, C: int, default: int, name: str) -> list:
    if value is None:
        return [default] * C
    if isinstance(value, int):
        return [value] * C
    value = [default if v is None else int(v) for v in value]
    if len(value) != C:
        raise ValueError(f"{name} needs one entry per label ({C}), got {len(value)}")
    return value


def _mask(value, shape, name: str) -> torch.Tensor:
    if value is None:
        return torch.ones(shape, dtype=torch.bool)
    m = torch.as_tensor(value, dtype=torch.bool)
    if m.shape != shape:
        raise ValueError(f"{name} must have shape {tuple(shape)}, got {tuple(m.shape)}")
    return m.clone()


# ---------------------------------------------------------------------------------------------
# user labels <-> internal states
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
        bnd = torch.zeros(self.S, self.S, dtype=torch.bool)
        for c in range(C):
            for c2 in range(C):
                for e in self.ending[c]:
                    for i in self.entry[c2]:
                        bnd[e, i] = True
        self.boundary = bnd

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
        ninf = float("-inf")
        dev, dt = trans.device, trans.dtype
        one = dur[0]  # (C,) duration score of a 1-token segment: paid when a first piece ends the segment
        # transitions: boundaries and continuations
        src, dst, cs, c2s, first_src = [], [], [], [], []
        for c in range(C):
            for c2 in range(C):
                for e in self.ending[c]:
                    for i in self.entry[c2]:
                        src.append(e), dst.append(i), cs.append(c), c2s.append(c2), first_src.append(self.kind[e] == "first")
        cs_t, c2_t = torch.tensor(cs, device=dev), torch.tensor(c2s, device=dev)
        first_t = torch.tensor(first_src, device=dev)
        vals = trans[cs_t, c2_t] + torch.where(first_t, one[cs_t], torch.zeros((), device=dev, dtype=dt))
        T_int = torch.full((S, S), ninf, device=dev, dtype=dt)
        T_int = T_int.index_put((torch.tensor(src, device=dev), torch.tensor(dst, device=dev)), vals)
        T_int = torch.where(self.cont.to(dev), torch.zeros((), device=dev, dtype=dt), T_int)
        # durations
        pad = torch.full((K + 1, C), ninf, device=dev, dtype=dt)
        shifted = torch.cat([dur, pad], 0)
        off = 1 if self.first_token else 0  # a tail of d tokens after a first token is a segment of d + 1
        rows = torch.arange(K, device=dev)
        cols = []
        for s in range(S):
            c, kind = self.base[s], self.kind[s]
            if kind == "tail":
                cols.append(shifted[off:off + K, c])
            elif kind == "chunk":
                cols.append(torch.where(rows == self.chunk_len[c] - 1, chunk[c], torch.full_like(chunk[c], ninf)))
            else:
                cols.append(torch.where(rows == 0, torch.zeros((), device=dev, dtype=dt), torch.full((), ninf, device=dev, dtype=dt)))
        D_int = torch.stack(cols, 1)
        base = torch.tensor(self.base, device=dev)
        is_entry = torch.zeros(S, dtype=torch.bool, device=dev)
        is_end = torch.zeros(S, dtype=torch.bool, device=dev)
        end_extra = torch.zeros(S, device=dev, dtype=dt)
        for c in range(C):
            is_entry[self.entry[c]] = True
            for e in self.ending[c]:
                is_end[e] = True
                if self.kind[e] == "first":
                    end_extra[e] = 1.0
        start_i = torch.where(is_entry, start[..., base], torch.full((), ninf, device=dev, dtype=dt))
        end_i = end[..., base] + torch.where(end_extra > 0, one[base], torch.zeros((), device=dev, dtype=dt))
        end_i = torch.where(is_end, end_i, torch.full((), ninf, device=dev, dtype=dt))
        return T_int, D_int, start_i, end_i


def to_segmentation(gold, lengths: torch.Tensor, T: int, device=None) -> Segmentation:
    """Gold in any accepted form -> :class:`Segmentation` (B, T).

    Accepts a Segmentation, per-sequence lists of (start, end_exclusive, label),
    or a pair (labels (B, T) long, starts (B, T) bool).
    """
    lengths = torch.as_tensor(lengths, device=device).long()
    if isinstance(gold, Segmentation):
        seg = gold
    elif isinstance(gold, (tuple, list)) and len(gold) == 2 and all(isinstance(g, torch.Tensor) for g in gold):
        seg = Segmentation(gold[0].long(), gold[1].bool(), lengths)
    elif isinstance(gold, (list, tuple)):
        seg = Segmentation.from_segments([list(s) for s in gold], T=T, device=device)
    else:
        raise TypeError("gold must be a Segmentation, a list of (start, end, label) lists, or (labels, starts) tensors")
    if seg.T != T:  # pad or cut to the feature length
        if seg.T > T:
            raise ValueError(f"gold covers {seg.T} tokens but the features have T={T}")
        pad = T - seg.T
        seg = Segmentation(nn.functional.pad(seg.labels, (0, pad), value=-1), nn.functional.pad(seg.starts, (0, pad)), seg.lengths)
    shape = seg.labels.shape[:-1]
    if lengths.shape != shape[-1:] or not torch.equal(seg.lengths.to(lengths.device).expand(shape), lengths.expand(shape)):
        raise ValueError(f"gold lengths {seg.lengths.tolist()} differ from the given lengths {lengths.tolist()}")
    return seg.to(device) if device is not None else seg


# ---------------------------------------------------------------------------------------------
# the distribution the head returns
class SegmentCRF(SemiMarkovCRF):
    """A :class:`SemiMarkovCRF` over the head's internal states that speaks user labels.

    ``log_prob`` accepts user segmentations (Segmentation, segment lists or
    (labels, starts)); ``argmax``, ``topk``, ``sample`` and ``marginals`` are
    returned in user labels. ``internal`` gives the plain SemiMarkovCRF over
    internal states; ``layout`` the mapping.
    """

    def __init__(self, potentials: SegmentPotentials, layout: StateLayout, backend: str = "auto"):
        super().__init__(potentials, backend=backend)
        self.layout = layout

    @property
    def internal(self) -> SemiMarkovCRF:
        return SemiMarkovCRF(self.potentials, backend=self.backend)

    def log_prob(self, value) -> torch.Tensor:
        seg = to_segmentation(value, self.token_lengths, self.potentials.T, self.token_lengths.device)
        return super().log_prob(self.layout.to_internal(seg))

    @property
    def argmax(self) -> Segmentation:
        if "_user_argmax" not in self.__dict__:
            self.__dict__["_user_argmax"] = self.layout.to_user(SemiMarkovCRF.argmax.__get__(self, type(self)))
        return self.__dict__["_user_argmax"]

    @property
    def mode(self):
        return self.argmax

    def topk(self, k: int) -> Segmentation:
        return self.layout.to_user(super().topk(k))

    def sample(self, sample_shape=torch.Size(), generator=None) -> Segmentation:
        return self.layout.to_user(super().sample(sample_shape, generator))

    @property
    def marginals(self) -> FactoredMarginals:
        """Posteriors in user labels.

        ``token``, ``start`` and ``start_label`` are exact for user segments
        (chunk continuations are not starts). ``transition`` counts user-level
        boundaries c' -> c. ``duration`` counts internal pieces of d ≤ K
        (with long_segments a long segment contributes its tail piece there).
        """
        if "_user_marginals" in self.__dict__:
            return self.__dict__["_user_marginals"]
        m = SemiMarkovCRF.marginals.__get__(self, type(self))
        out = self.layout.user_marginals(m)
        self.__dict__["_user_marginals"] = out
        return out


# ---------------------------------------------------------------------------------------------
class SemiCRFHead(nn.Module):
    """Semi-Markov CRF head over encoder features.

    Args:
        in_features: H of the features (B, T, H); ``None`` takes the features as
            per-token label scores (B, T, num_labels) as they are.
        num_labels: C.
        max_duration: K (int), or per-label maxima (K = their max).
        duration: "table" | "geometric" | "poisson" | "negbin" (see :class:`DurationModel`).
        min_duration: int or per-label minimum durations (default 1).
        long_segments: False, True (all labels) or a per-label bool list: labels
            whose segments may exceed their max duration (chained, see the module doc).
        first_token: give the first token of every segment its own score channel
            (the projection outputs 2C scores: [inside, first-token]); segment
            boundaries can then depend on the input even between equal labels.
        allowed_transitions: (C, C) bool, [prev, next]; False -> −inf.
        allowed_start / allowed_end: (C,) bool masks for the first/last segment.
        duration_normalize: renormalise parametric log-pmfs over allowed durations.
        duration_init_mean: initial mean duration of parametric families (scalar or per label).
        learn_start_end: learn start/end scores (else 0 where allowed).
        center: ``None`` (exact model) or ``"mean"`` (see SegmentPotentials).
        backend: passed to SemiMarkovCRF ("auto" uses Triton on CUDA).
        bias: the projection's bias.

    The entry into the first segment is ``start[c]`` (no transition), the last
    segment adds ``end[c]``; ``log_prob`` of a gold segmentation and the
    partition share this convention, so the NLL is a proper one.
    """

    def __init__(self, in_features: int | None, num_labels: int, max_duration, *, duration: str = "table",
                 min_duration=None, long_segments=False, first_token: bool = False, allowed_transitions=None,
                 allowed_start=None, allowed_end=None, duration_normalize: bool = True, duration_init_mean=None,
                 learn_start_end: bool = True, center: str | None = None, backend: str = "auto", bias: bool = True):
        super().__init__()
        C = int(num_labels)
        if isinstance(max_duration, int):
            K, max_d = int(max_duration), [int(max_duration)] * C
        else:
            max_d = _per_label(max_duration, C, None, "max_duration")
            K = max(max_d)
        if K < 1:
            raise ValueError(f"max_duration must be >= 1, got {max_duration}")
        self.in_features, self.num_labels, self.K = in_features, C, K
        self.center, self.backend, self.first_token = center, backend, bool(first_token)
        self.num_channels = 2 * C if first_token else C
        self.proj = nn.Linear(in_features, self.num_channels, bias=bias) if in_features is not None else None
        self.durations = DurationModel(C, K, duration, min_duration, max_d, duration_normalize, duration_init_mean)
        long_mask = [bool(long_segments)] * C if isinstance(long_segments, bool) else [bool(x) for x in long_segments]
        if len(long_mask) != C:
            raise ValueError(f"long_segments needs one entry per label ({C})")
        self.layout = StateLayout(C, long_mask, self.durations.min_duration, self.durations.max_durations, first_token)
        self.register_buffer("allowed_transitions", _mask(allowed_transitions, (C, C), "allowed_transitions"), persistent=False)
        self.register_buffer("allowed_start", _mask(allowed_start, (C,), "allowed_start"), persistent=False)
        self.register_buffer("allowed_end", _mask(allowed_end, (C,), "allowed_end"), persistent=False)
        if not self.allowed_start.any() or not self.allowed_end.any():
            raise ValueError("allowed_start and allowed_end must allow at least one label")
        self.transition = nn.Parameter(torch.zeros(C, C))
        self.start = nn.Parameter(torch.zeros(C), requires_grad=learn_start_end)
        self.end = nn.Parameter(torch.zeros(C), requires_grad=learn_start_end)
        if any(long_mask):  # per-chunk score of long labels (no parameter otherwise: DDP needs every one used)
            self.chunk = nn.Parameter(torch.zeros(C))
        else:
            self.register_parameter("chunk", None)
        self.register_buffer("state_channel", torch.tensor(self.layout.channel, dtype=torch.long), persistent=False)

    # ---------------------------------------------------------------------------------------
    def scores(self, features: torch.Tensor) -> torch.Tensor:
        """(B, T, C) per-token label scores; with ``first_token`` (B, T, 2C): [inside, first-token] scores."""
        width = self.num_channels if self.proj is None else self.in_features
        if not isinstance(features, torch.Tensor) or not features.is_floating_point():
            raise TypeError(f"features must be a floating-point tensor (B, T, {width}), got "
                            f"{features.dtype if isinstance(features, torch.Tensor) else type(features).__name__}")
        if features.dim() != 3 or features.shape[-1] != width:
            what = "label scores" if self.proj is None else "encoder features"
            raise ValueError(f"features must be (B, T, {width}) {what}, got shape {tuple(features.shape)}")
        return features if self.proj is None else self.proj(features)

    def _masked(self, x, mask):
        return torch.where(mask, x, NEG_INF)

    def structure(self, start=None, end=None) -> dict:
        """Internal transition (S, S), duration (K_int, S), start (.., S), end (.., S) (S = internal states)."""
        trans = self._masked(self.transition, self.allowed_transitions)
        start = self._masked(self.start, self.allowed_start) if start is None else start
        end = self._masked(self.end, self.allowed_end) if end is None else end
        dur = self.durations()
        if self.layout.identity:
            return dict(transition=trans, duration=dur, start=start, end=end)
        T_int, D_int, start_i, end_i = self.layout.assemble(trans, dur, self.chunk, start, end)
        return dict(transition=T_int, duration=D_int, start=start_i, end=end_i)

    def potentials(self, features: torch.Tensor, lengths: torch.Tensor | None = None,
                   prev_labels: torch.Tensor | None = None, next_labels: torch.Tensor | None = None) -> SegmentPotentials:
        """Factored potentials over internal states (see :meth:`forward` for prev/next_labels)."""
        scores = self.scores(features)
        if not self.layout.identity:
            scores = scores.index_select(-1, self.state_channel)
        start = end = None
        if prev_labels is not None or next_labels is not None:
            start, end = self._window_ends(features.shape[0], prev_labels, next_labels)
        st = self.structure(start, end)
        return SegmentPotentials(scores, transition=st["transition"], duration=st["duration"],
                                 start=st["start"], end=st["end"], lengths=lengths, center=self.center)

    def _window_ends(self, B, prev_labels, next_labels):
        """User-level (B, C) entry and exit scores of windows cut at segment boundaries of longer sequences.

        prev_labels[b] = label of the segment just before the window (−1: the
        window starts the sequence, use ``start``); next_labels[b] likewise after
        it (−1: use ``end``). Entry is transition[prev, c]; exit transition[c, next].
        """
        C, dev = self.num_labels, self.transition.device
        trans = self._masked(self.transition, self.allowed_transitions)
        start = self._masked(self.start, self.allowed_start).expand(B, C)
        end = self._masked(self.end, self.allowed_end).expand(B, C)
        if prev_labels is not None:
            prev = torch.as_tensor(prev_labels, device=dev).long()
            start = torch.where((prev >= 0).view(B, 1), trans[prev.clamp(min=0)], start)
        if next_labels is not None:
            nxt = torch.as_tensor(next_labels, device=dev).long()
            end = torch.where((nxt >= 0).view(B, 1), trans[:, nxt.clamp(min=0)].T, end)
        return start, end

    def forward(self, features: torch.Tensor, lengths: torch.Tensor | None = None,
                prev_labels: torch.Tensor | None = None, next_labels: torch.Tensor | None = None) -> SegmentCRF:
        """A :class:`SegmentCRF` (a SemiMarkovCRF speaking user labels) over features (B, T, H).

        For training on windows of long sequences, cut windows at gold segment
        boundaries and pass the labels of the segments just outside
        (``prev_labels``, ``next_labels``; −1 where the window touches the
        sequence's own start/end): the log-likelihood is then the exact
        conditional log p(window's segments | the segments around it), because a
        semi-Markov chain is Markov at segment boundaries.
        """
        if lengths is not None:
            lengths = torch.as_tensor(lengths, device=features.device)
            if lengths.is_floating_point() or lengths.dtype == torch.bool:
                raise TypeError(f"lengths must be an integer tensor (B,), got {lengths.dtype}")
            lengths = lengths.long()
        pots = self.potentials(features, lengths, prev_labels, next_labels)
        return SegmentCRF(pots, self.layout, backend=self.backend)

    def loss(self, features: torch.Tensor, lengths: torch.Tensor | None, gold, reduction: str = "mean",
             check_gold: bool = True, prev_labels=None, next_labels=None) -> torch.Tensor:
        """Negative log-likelihood of ``gold``.

        gold: Segmentation, per-sequence lists of (start, end_exclusive, label),
        or (labels, starts). reduction: "mean" (over sequences), "sum", "token"
        (sum divided by the number of tokens) or "none" (B,).
        check_gold: raise ValueError (saying why) when a gold segmentation is
        impossible under the constraints, instead of returning an infinite loss.
        prev_labels / next_labels: windows of longer sequences (see :meth:`forward`).
        """
        B, T = features.shape[:2]
        if lengths is None:
            lengths = torch.full((B,), T, dtype=torch.long, device=features.device)
        dist = self(features, lengths, prev_labels, next_labels)
        nll = -dist.log_prob(gold)
        if check_gold and torch.isinf(nll).any():
            bad = torch.nonzero(torch.isinf(nll)).flatten().tolist()
            seg = to_segmentation(gold, dist.token_lengths, features.shape[1])
            raise ValueError(f"gold of sequences {bad[:10]} is impossible under the head's constraints: "
                             + (self.explain(seg[bad[0]].segments()[0])
                                or "its entry/exit is not allowed after prev_labels / before next_labels"))
        if reduction == "none":
            return nll
        if reduction == "sum":
            return nll.sum()
        if reduction == "token":
            return nll.sum() / dist.token_lengths.sum()
        if reduction == "mean":
            return nll.mean()
        raise ValueError(f"reduction must be 'mean', 'sum', 'token' or 'none', got {reduction!r}")

    def explain(self, segments) -> str:
        """Why a user segmentation (list of (start, end, label)) is impossible, or "" if it is allowed."""
        lay = self.layout
        for i, (s, e, c) in enumerate(segments):
            n = e - s
            if n > lay.max_d[c] and not lay.long[c]:
                return (f"segment {(s, e, c)} has {n} tokens > max_duration {lay.max_d[c]} of label {c}; "
                        "raise max_duration or pass long_segments=True for this label")
            if n < lay.min_d[c]:
                return f"segment {(s, e, c)} is shorter than min_duration {lay.min_d[c]} of label {c}"
            if n <= lay.max_d[c] and not bool(self.durations.allowed[n - 1, c]):
                return f"duration {n} of label {c} is not allowed"
            if i == 0 and not bool(self.allowed_start[c]):
                return f"label {c} may not start a sequence"
            if i > 0 and not bool(self.allowed_transitions[segments[i - 1][2], c]):
                return f"transition {segments[i - 1][2]} -> {c} at token {s} is not allowed"
        if segments and not bool(self.allowed_end[segments[-1][2]]):
            return f"label {segments[-1][2]} may not end a sequence"
        return ""

    @torch.no_grad()
    def decode(self, features: torch.Tensor, lengths: torch.Tensor | None = None) -> list:
        """Viterbi: per sequence, a list of (start, end_exclusive, label)."""
        return self(features, lengths).argmax.segments()

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, num_labels={self.num_labels}, K={self.K}, "
                f"long_segments={self.layout.long}, internal_states={self.layout.S}")
