"""Factored semi-CRF potentials: the edge tensor is never built (except by ``to_edges``)."""

from __future__ import annotations

import copy

import torch

from .segmentation import FactoredMarginals, Segmentation
from .semirings import logsumexp
from .validation import (
    all_finite,
    check_same_device,
    check_shape,
    check_tensor,
    check_values,
    compute_dtype,
    lengths_in_range,
    lengths_tensor,
    no_nan_or_pos_inf,
    signature,
)

__all__ = ["SegmentPotentials"]

_TENSORS = ("scores", "cum_scores", "transition", "duration", "init", "start", "end", "lengths")


class SegmentPotentials:
    """Per-token scores (or their prefix sums) + transition, duration, entry and exit scores.

    A segment [s, s+d) with label c after a segment of label c' scores::

        S[s+d, c] - S[s, c] + duration[d-1, c] + transition[c', c]

    where S are prefix sums of ``scores`` (S[t] = Σ_{j<t} scores[j]). The first
    segment scores ``start[c]`` when ``start`` is given, else
    ⊕_{c'} (init[c'] ⊗ transition[c', c]) (a free initial label); the last
    adds ``end[c]``.

    Args:
        scores: (B, T, C) per-token label scores. Exactly one of ``scores`` and
            ``cum_scores`` is given.
        cum_scores: (B, T+1, C) prefix sums with ``cum_scores[:, 0] == 0``. Give
            float64 prefix sums for long sequences: float32 ones have already
            lost the digits that segment differences need.
        transition: (C, C) or (B, C, C), ``transition[c_prev, c]``.
        duration: (K, C) or (B, K, C), ``duration[d-1, c]``; K is the longest segment.
        init, start, end: optional (C,) or (B, C).
        lengths: (B,) integer tokens per sequence, 1 ≤ lengths ≤ T (default T).
        center: None (exact model) or ``"mean"``: subtract, per sequence and
            label, the mean score over valid tokens before the prefix sum. That
            is a different model (each segment gets −d·mean[b, c]); opt-in.

    Prefix sums are accumulated and kept in float64; segment scores are taken
    as float64 differences and only then rounded to the compute dtype
    (float32, or float64 when the scores are float64).
    Inputs are never modified.
    """

    def __init__(
        self,
        scores: torch.Tensor | None = None,
        *,
        cum_scores: torch.Tensor | None = None,
        transition: torch.Tensor,
        duration: torch.Tensor,
        init: torch.Tensor | None = None,
        start: torch.Tensor | None = None,
        end: torch.Tensor | None = None,
        lengths: torch.Tensor | None = None,
        center: str | None = None,
    ):
        if (scores is None) == (cum_scores is None):
            raise ValueError("give exactly one of scores (B, T, C) and cum_scores (B, T+1, C)")
        base_name, base = ("scores", scores) if scores is not None else ("cum_scores", cum_scores)
        check_tensor(base_name, base, 3)
        B, T, C = base.shape
        T -= 1 if cum_scores is not None else 0  # prefix sums have T+1 rows
        if B < 1 or T < 1 or C < 1:
            raise ValueError(f"{base_name} needs B, T, C >= 1, got shape {tuple(base.shape)}")
        check_tensor("transition", transition, (2, 3))
        check_tensor("duration", duration, (2, 3))
        if duration.shape[-2] < 1:
            raise ValueError(f"duration must have K >= 1 rows (durations 1..K), got shape {tuple(duration.shape)}")
        K = duration.shape[-2]
        check_shape("transition", transition, (B, C, C)[3 - transition.dim():], "(C, C) or (B, C, C)")
        check_shape("duration", duration, (B, K, C)[3 - duration.dim():], "(K, C) or (B, K, C)")
        optional = (("init", init), ("start", start), ("end", end))
        for name, v in optional:
            if v is not None:
                check_tensor(name, v, (1, 2))
                check_shape(name, v, (B, C)[2 - v.dim():], "(C,) or (B, C)")
        device = check_same_device(scores=scores, cum_scores=cum_scores, transition=transition, duration=duration,
                                   init=init, start=start, end=end)
        if center not in (None, "mean"):
            raise ValueError(f"center must be None or 'mean', got {center!r}")
        if init is not None and start is not None:
            raise ValueError("give at most one of init and start (start replaces init ⊗ transition)")
        given_lengths = lengths is not None
        lengths = lengths_tensor("lengths", lengths, B, T, device)
        host_lengths = given_lengths and lengths.device.type == "cpu" and device.type != "cpu"  # GPU potentials

        def value_checks():
            # used positions: scores 0..L-1, cum_scores 0..L (for the message on padding only)
            yield all_finite(base_name, base, lengths + (cum_scores is not None))
            for name, v in (("transition", transition), ("duration", duration)) + optional:
                if v is not None:
                    yield no_nan_or_pos_inf(name, v)
            if cum_scores is not None:
                yield (cum_scores.detach()[:, 0] != 0).any(), "cum_scores[:, 0] must be 0 (prefix sums S[t] = sum of scores[:t])"
            if given_lengths and not host_lengths:
                yield lengths_in_range("lengths", lengths, 1, T)

        if host_lengths:  # checked where the data is: no device sync
            check_values(signature(lengths=lengths) + (T,), lengths.device, lambda: [lengths_in_range("lengths", lengths, 1, T)])
        sig = signature(**{base_name: base}, transition=transition, duration=duration, init=init, start=start,
                        end=end, lengths=lengths if given_lengths else None)
        check_values(sig, device, value_checks)

        self.scores = scores
        self.cum_scores = cum_scores
        self.transition = transition
        self.duration = duration
        self.init = init
        self.start = start
        self.end = end
        self.center = center
        self.batch, self.T, self.C, self.K = B, T, C, K
        self.device = device
        self.dtype = compute_dtype(base.dtype)
        self.lengths = lengths.to(device=device, dtype=torch.long)

    # -- shapes ---------------------------------------------------------------
    @property
    def shape(self) -> tuple[int, int, int, int]:
        """(B, T, K, C)"""
        return (self.batch, self.T, self.K, self.C)

    @property
    def event_shape(self) -> tuple[int, int]:
        """One structure's shape in the distribution's terms: (T, C)."""
        return (self.T, self.C)

    def public(self) -> "SegmentPotentials":
        """What the struct surface shows for these potentials: themselves."""
        return self

    def _per_batch(self, x: torch.Tensor | None, tail: tuple) -> torch.Tensor | None:
        if x is None:
            return None
        x = x.to(self.dtype)
        return x.expand(self.batch, *tail) if x.dim() == len(tail) else x

    # -- the arrays the engines read ----------------------------------------
    def cum(self) -> torch.Tensor:
        """(B, T+1, C) float64 prefix sums (centred if requested), differentiable."""
        if self.scores is not None:
            s = self.scores.to(torch.float64).cumsum(1)
            cum = torch.cat([s.new_zeros(self.batch, 1, self.C), s], 1)
        else:
            cum = self.cum_scores.to(torch.float64)
        if self.center == "mean":
            L = self.lengths.to(torch.float64).view(-1, 1)
            mean = cum.gather(1, self.lengths.view(-1, 1, 1).expand(-1, 1, self.C)).squeeze(1) / L
            t = torch.arange(self.T + 1, device=cum.device, dtype=torch.float64).view(1, -1, 1)
            cum = cum - t * mean.unsqueeze(1)
        return cum

    def transition_b(self) -> torch.Tensor:
        return self._per_batch(self.transition, (self.C, self.C))

    def duration_b(self) -> torch.Tensor:
        return self._per_batch(self.duration, (self.K, self.C))

    def end_b(self) -> torch.Tensor:
        e = self._per_batch(self.end, (self.C,))
        return e if e is not None else torch.zeros(self.batch, self.C, dtype=self.dtype, device=self.device)

    def entry_potential(self, transition_b: torch.Tensor | None = None) -> torch.Tensor:
        """(B, C', C) plain potential of entering the first segment with label c.

        With ``start``: the c' = 0 row holds start[c], the rest 0̄ (a single
        fixed initial label). Else init[c'] + transition[c', c]. This is
        exactly slot ``edge[:, 0, d, c, c']`` minus the segment's own score.
        """
        if self.start is not None:
            pot = torch.full((self.batch, self.C, self.C), float("-inf"), dtype=self.dtype, device=self.device)
            return torch.cat([self._per_batch(self.start, (self.C,)).unsqueeze(1), pot[:, 1:]], 1)
        init = self._per_batch(self.init, (self.C,))
        trans = self.transition_b() if transition_b is None else transition_b
        return trans if init is None else trans + init.unsqueeze(-1)

    # -- interop ---------------------------------------------------------------
    def to_edges(self) -> torch.Tensor:
        """Materialize torch-struct's (B, T, K+1, C, C) edge tensor (tests, interop).

        edge[b, n, d, c, c'] = S[n+d, c] - S[n, c] + duration[d-1, c] + transition[c', c]
        (+ init[c'] at n = 0, or the ``start`` convention; + end[c] where n+d = L_b).
        Segments running past T get a finite filler (0): no path uses them.
        Memory is O(T·K·C²): this is what the factored path exists to avoid.
        """
        B, T, C, K = self.batch, self.T, self.C, self.K
        cum = self.cum()
        n = torch.arange(T, device=self.device).view(T, 1)
        d = torch.arange(1, K + 1, device=self.device).view(1, K)
        stop = n + d  # (T, K)
        valid = stop <= T
        seg = cum[:, stop.clamp(max=T)] - cum[:, n.expand(T, K)]  # (B, T, K, C) float64
        seg = (seg.to(self.dtype) + self.duration_b().unsqueeze(1))
        at_end = (stop.unsqueeze(0) == self.lengths.view(B, 1, 1))  # (B, T, K)
        seg = seg + torch.where(at_end.unsqueeze(-1), self.end_b().view(B, 1, 1, C), torch.zeros((), dtype=self.dtype, device=self.device))
        trans = self.transition_b().transpose(-1, -2)  # (B, C, C'): [c, c']
        edge = seg.unsqueeze(-1) + trans.view(B, 1, 1, C, C)
        first = seg[:, 0].unsqueeze(-1) + self.entry_potential().transpose(-1, -2).unsqueeze(1)
        edge = torch.cat([first.unsqueeze(1), edge[:, 1:]], 1)
        edge = torch.where(valid.view(1, T, K, 1, 1), edge, torch.zeros((), dtype=self.dtype, device=self.device))
        zero_k = torch.zeros(B, T, 1, C, C, dtype=self.dtype, device=self.device)
        return torch.cat([zero_k, edge], 2)

    def map_tensors(self, fn) -> "SegmentPotentials":
        """The same model with ``fn`` (keeping shape, dtype and device: clone, detach) applied to each of its
        tensors, lengths included; already validated: no checks, no sync."""
        out = copy.copy(self)
        for name in _TENSORS:
            v = getattr(self, name)
            setattr(out, name, None if v is None else fn(v))
        return out

    def detach(self) -> "SegmentPotentials":
        """The same potentials cut from the autograd graph."""
        return self.map_tensors(torch.Tensor.detach)

    def tensors(self) -> list:
        """The tensors given (scores or cum_scores, transition, duration, init, start, end, lengths)."""
        return [getattr(self, n) for n in _TENSORS if getattr(self, n) is not None]

    # -- structures ---------------------------------------------------------------
    def score(self, seg: Segmentation) -> torch.Tensor:
        """Score of segmentations (..., B, T) -> (..., B); −inf where impossible and for the empty one.

        Shares the partition's convention exactly: segment sums of the (centred)
        scores, duration[d-1, c], transition between consecutive segments, the
        entry term (start[c], or ⊕_{c'} init[c'] ⊗ transition[c', c]) and end[c].
        """
        B, T, K, C = self.shape
        if seg.labels.shape[-2:] != (B, T):
            raise ValueError(f"value must be a Segmentation of shape (..., B, T) = (..., {B}, {T}), got {tuple(seg.labels.shape)}")
        lead = seg.labels.shape[:-2]
        seg_lengths = seg.lengths.expand(seg.labels.shape[:-1])
        if not torch.equal(seg_lengths, self.lengths.expand_as(seg_lengths)):
            raise ValueError("value.lengths must equal the potentials' lengths")
        seg.check(C)
        labels = seg.labels.reshape(-1, B, T).clamp(min=0)
        starts = seg.starts.reshape(-1, B, T)
        R = labels.shape[0]
        dev = labels.device
        L = self.lengths.view(1, B, 1)
        t = torch.arange(T, device=dev).view(1, 1, T)
        valid = t < L

        tok = self.cum().diff(dim=1).unsqueeze(0).expand(R, B, T, C)  # float64 per-token scores (centred if asked)
        total = torch.where(valid, tok.gather(-1, labels.unsqueeze(-1)).squeeze(-1), tok.new_zeros(())).sum(-1)

        # duration of the segment starting at t: next start (or L) - t
        pos = torch.where(starts & valid, t.expand(R, B, T), torch.full_like(labels, T))
        after = torch.cat([pos[..., 1:], torch.full_like(pos[..., :1], T)], -1)
        nxt = after.flip(-1).cummin(-1).values.flip(-1)
        nxt = torch.minimum(nxt, L.expand(R, B, T))
        is_start = starts & valid
        d = (nxt - t).clamp(min=1)
        dur = self.duration_b().to(torch.float64)  # (B, K, C)
        dur_term = dur.view(1, B, K * C).expand(R, B, K * C).gather(-1, (d.clamp(max=K) - 1) * C + labels)
        dur_term = torch.where(d > K, torch.full_like(dur_term, float("-inf")), dur_term)
        total = total + torch.where(is_start, dur_term, dur_term.new_zeros(())).sum(-1)

        trans = self.transition_b().to(torch.float64)  # (B, C, C)
        prev = torch.cat([labels[..., :1], labels[..., :-1]], -1)
        tr = trans.view(1, B, C * C).expand(R, B, C * C).gather(-1, prev * C + labels)
        inner = is_start & (t > 0)
        total = total + torch.where(inner, tr, tr.new_zeros(())).sum(-1)

        entry = logsumexp(self.entry_potential().to(torch.float64), 1)  # (B, C)
        total = total + entry.unsqueeze(0).expand(R, B, C).gather(-1, labels[..., :1]).squeeze(-1)
        last = labels.gather(-1, (L.expand(R, B, 1) - 1))
        total = total + self.end_b().to(torch.float64).unsqueeze(0).expand(R, B, C).gather(-1, last).squeeze(-1)
        total = torch.where(seg.empty().reshape(R, B), float("-inf"), total)  # the empty segmentation: weight 0̄
        return total.to(self.dtype).reshape(*lead, B)

    def check_value(self, value) -> torch.Tensor:
        """Validate a structure for log_prob; returns the (..., B) mask of empty segmentations."""
        if not isinstance(value, Segmentation):
            raise TypeError("with SegmentPotentials, value must be a semiring_flash.Segmentation")
        return value.empty()

    def structures(self, indicators: torch.Tensor, lengths: torch.Tensor) -> Segmentation:
        """Segmentations from (..., B, T, C) start indicators (a segment of label c starts at t)."""
        return Segmentation.from_start_labels(indicators, lengths)

    def empty(self, shape: torch.Size) -> Segmentation:
        """``shape`` empty structures: a Segmentation (*shape, B, T) with labels −1 and no starts."""
        B, T = self.batch, self.T
        return Segmentation(torch.full((*shape, B, T), -1, dtype=torch.long, device=self.device),
                            torch.zeros(*shape, B, T, dtype=torch.bool, device=self.device), self.lengths.expand(*shape, B))

    def marginals(self, grads: list) -> FactoredMarginals:
        """Compact marginals from the gradients of the value w.r.t. (cum, transition, duration, start bias)."""
        g_cum, g_tr, g_dur, g_sb = grads
        token = g_cum.flip(1).cumsum(1).flip(1)[:, 1:]  # ∂/∂scores[j] = Σ_{t>j} ∂/∂S[t]
        return FactoredMarginals(token=token.to(self.dtype), start=g_sb.sum(-1), start_label=g_sb,
                                 duration=g_dur, transition=g_tr)

    def __repr__(self):
        B, T, K, C = self.shape
        opts = [n for n in ("init", "start", "end") if getattr(self, n) is not None]
        return f"SegmentPotentials(B={B}, T={T}, K={K}, C={C}, dtype={self.dtype}, center={self.center!r}, with={opts})"
