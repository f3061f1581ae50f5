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

The internal states behind ``long_segments`` and ``first_token`` (a unique
chain of pieces per user segment, so the likelihood stays exact) are
described in :mod:`semiring_flash.layout`.
"""

from __future__ import annotations

import operator
from collections.abc import Sequence
from typing import Literal, Union

import torch
from torch import nn

from .collate import mask_to_lengths
from .distribution import SemiMarkovCRF, _lazy_property
from .layout import StateLayout, to_segmentation
from .potentials import SegmentPotentials
from .segmentation import FactoredMarginals, Segmentation

__all__ = ["SemiCRFHead", "DurationModel", "SegmentCRF", "StateLayout", "to_segmentation", "Gold", "Segments"]

#: one sequence's segments: (start, end_exclusive, label)
Segments = list[tuple[int, int, int]]
#: gold segmentations: a Segmentation, per-sequence segment lists, (labels, starts) tensors,
#: or per-token labels (B, T) (see :meth:`SemiCRFHead.loss`)
Gold = Union[Segmentation, list[Segments], tuple[torch.Tensor, torch.Tensor], torch.Tensor]
#: grammar buffers saved in the state_dict and checked on load
_GRAMMAR = ("allowed_transitions", "allowed_start", "allowed_end")

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


def _int(value, name: str) -> int:
    """An int argument; floats (even 3.0) and bools are refused rather than truncated."""
    if isinstance(value, bool):
        raise TypeError(f"{name} must be an int, got {value!r}")
    try:
        return operator.index(value)
    except TypeError:
        raise TypeError(f"{name} must be an int, got {value!r} ({type(value).__name__})") from None


def _per_label(value, C: int, default: int, name: str) -> list:
    if value is None:
        return [default] * C
    if not isinstance(value, (list, tuple, torch.Tensor)):
        return [_int(value, name)] * C
    value = [default if v is None else _int(v, f"{name} entries") for v in value]
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

    def log_prob(self, value: Gold) -> torch.Tensor:
        seg = to_segmentation(value, self.token_lengths, self.potentials.T, self.token_lengths.device,
                              num_labels=self.layout.C, runs=not self.layout.single_token)
        return super().log_prob(self.layout.to_internal(seg))

    @_lazy_property
    def argmax(self) -> Segmentation:
        return self.layout.to_user(super().argmax)

    def topk(self, k: int) -> Segmentation:
        return self.layout.to_user(super().topk(k))

    def sample(self, sample_shape=torch.Size(), generator=None) -> Segmentation:
        return self.layout.to_user(super().sample(sample_shape, generator))

    @_lazy_property
    def marginals(self) -> FactoredMarginals:
        """Posteriors in user labels.

        ``token``, ``start`` and ``start_label`` are exact for user segments
        (chunk continuations are not starts). ``transition`` counts user-level
        boundaries c' -> c. ``duration`` counts internal pieces of d ≤ K
        (with long_segments a long segment contributes its tail piece there).
        """
        return self.layout.user_marginals(super().marginals)


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

    def __init__(self, in_features: int | None, num_labels: int, max_duration: int | Sequence[int], *,
                 duration: Literal["table", "geometric", "poisson", "negbin"] = "table",
                 min_duration: int | Sequence[int] | None = None, long_segments: bool | Sequence[bool] = False,
                 first_token: bool = False, allowed_transitions: torch.Tensor | None = None,
                 allowed_start: torch.Tensor | None = None, allowed_end: torch.Tensor | None = None,
                 duration_normalize: bool = True, duration_init_mean: float | Sequence[float] | None = None,
                 learn_start_end: bool = True, center: Literal["mean"] | None = None,
                 backend: Literal["auto", "torch", "triton"] = "auto", bias: bool = True):
        super().__init__()
        C = _int(num_labels, "num_labels")
        if C < 1:
            raise ValueError(f"num_labels must be >= 1, got {C}")
        if in_features is not None and _int(in_features, "in_features") < 1:
            raise ValueError(f"in_features must be >= 1 (or None for label scores as features), got {in_features}")
        max_d = _per_label(max_duration, C, None, "max_duration")
        K = max(max_d)
        if min(max_d) < 1:
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
        # persistent: a checkpoint carries its grammar, and loading it into a head built with another one fails
        self.register_buffer("allowed_transitions", _mask(allowed_transitions, (C, C), "allowed_transitions"))
        self.register_buffer("allowed_start", _mask(allowed_start, (C,), "allowed_start"))
        self.register_buffer("allowed_end", _mask(allowed_end, (C,), "allowed_end"))
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
        self._check_features(features)
        scores = features if self.proj is None else self.proj(features)
        # fp16/bf16 (autocast) features: the CRF itself runs in fp32 (prefix sums in float64 regardless)
        return scores.float() if scores.dtype in (torch.float16, torch.bfloat16) else scores

    def _check_features(self, features) -> None:
        width = self.num_channels if self.proj is None else self.in_features
        if not isinstance(features, torch.Tensor) or not features.is_floating_point():
            raise TypeError(f"features must be a floating-point tensor (B, T, {width}), got "
                            f"{features.dtype if isinstance(features, torch.Tensor) else type(features).__name__}")
        if features.dim() != 3 or features.shape[-1] != width:
            what = "label scores" if self.proj is None else "encoder features"
            raise ValueError(f"features must be (B, T, {width}) {what}, got shape {tuple(features.shape)}")

    # -- checkpoints: the structure travels with the weights -------------------------------------
    def _config(self) -> dict:
        lay = self.layout
        # duration_normalize changes a parametric family's distribution (a table ignores it)
        normalize = bool(self.durations.normalize) if self.durations.family != "table" else None
        return dict(num_labels=self.num_labels, in_features=self.in_features, max_duration=lay.max_d,
                    min_duration=lay.min_d, long_segments=lay.long, first_token=self.first_token,
                    duration=self.durations.family, duration_normalize=normalize, center=self.center)

    def get_extra_state(self) -> dict:
        return {"config": self._config()}

    def set_extra_state(self, state) -> None:
        pass  # compared in _load_from_state_dict, where a mismatch can be reported like a shape mismatch

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs):
        extra = state_dict.get(prefix + "_extra_state")
        saved, mine = (extra.get("config") or {}) if isinstance(extra, dict) else {}, self._config()
        # keys a checkpoint predates (e.g. duration_normalize) are not compared
        diff = {k: (saved[k], mine[k]) for k in mine if k in saved and saved[k] != mine[k]}
        if diff:
            error_msgs.append(f"SemiCRFHead structure differs from the checkpoint's (saved, this head): {diff}; "
                              "build the head with the checkpoint's arguments")
        for name in _GRAMMAR:
            saved = state_dict.get(prefix + name)
            mine = getattr(self, name)
            if saved is not None and (saved.shape != mine.shape or not torch.equal(saved.to(mine.device).bool(), mine)):
                error_msgs.append(f"{prefix}{name} of the checkpoint differs from this head's: the checkpoint was "
                                  f"trained with another grammar; build the head with the same {name}")
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs)

    def _masked(self, x, mask):
        return torch.where(mask, x, NEG_INF)

    def structure(self, start: torch.Tensor | None = None, end: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
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
        C = self.num_labels
        trans = self._masked(self.transition, self.allowed_transitions)
        start = self._masked(self.start, self.allowed_start).expand(B, C)
        end = self._masked(self.end, self.allowed_end).expand(B, C)
        if prev_labels is not None:
            prev = self._outside_labels("prev_labels", prev_labels, B)
            start = torch.where((prev >= 0).view(B, 1), trans[prev.clamp(min=0)], start)
        if next_labels is not None:
            nxt = self._outside_labels("next_labels", next_labels, B)
            end = torch.where((nxt >= 0).view(B, 1), trans[:, nxt.clamp(min=0)].T, end)
        return start, end

    def _outside_labels(self, name: str, value, B: int) -> torch.Tensor:
        """(B,) integer labels in [-1, C) (−1: the window touches the sequence's own start/end)."""
        x = torch.as_tensor(value, device=self.transition.device)
        if x.is_floating_point() or x.is_complex() or x.dtype == torch.bool:
            raise TypeError(f"{name} must be an integer tensor (B,), got {x.dtype}")
        if x.shape != (B,):
            raise ValueError(f"{name} must have shape (B,) = ({B},), got {tuple(x.shape)}")
        x = x.long()
        bad = (x < -1) | (x >= self.num_labels)
        if bad.any():
            b = int(torch.nonzero(bad)[0])
            raise ValueError(f"{name} must lie in [-1, {self.num_labels}) (−1: none); sequence {b} has {int(x[b])}")
        return x

    def _lengths(self, features: torch.Tensor, lengths, mask) -> torch.Tensor | None:
        """(B,) long lengths from ``lengths`` or a (B, T) bool prefix ``mask`` (pytorch-crf style)."""
        self._check_features(features)
        B, T = features.shape[:2]
        if mask is not None:
            if lengths is not None:
                raise ValueError("give lengths or mask, not both")
            if isinstance(mask, torch.Tensor):
                mask = mask.to(features.device)
            return mask_to_lengths(mask, B, T)
        if lengths is None:
            return None
        lengths = torch.as_tensor(lengths, device=features.device)
        if lengths.dtype == torch.bool and lengths.dim() == 2:
            raise TypeError("lengths must be an integer tensor (B,); pass a (B, T) bool mask as mask=")
        if lengths.is_floating_point() or lengths.dtype == torch.bool or lengths.is_complex():
            raise TypeError(f"lengths must be an integer tensor (B,), got {lengths.dtype}")
        return lengths.long()

    def forward(self, features: torch.Tensor, lengths: torch.Tensor | None = None,
                prev_labels: torch.Tensor | None = None, next_labels: torch.Tensor | None = None, *,
                mask: torch.Tensor | None = None) -> SegmentCRF:
        """A :class:`SegmentCRF` (a SemiMarkovCRF speaking user labels) over features (B, T, H).

        ``lengths`` (B,) tokens per sequence, or ``mask`` (B, T) bool, a
        left-aligned prefix per row as in pytorch-crf; neither: all T tokens.

        For training on windows of long sequences, cut windows at gold segment
        boundaries and pass the labels of the segments just outside
        (``prev_labels``, ``next_labels``; −1 where the window touches the
        sequence's own start/end): the log-likelihood is then the exact
        conditional log p(window's segments | the segments around it), because a
        semi-Markov chain is Markov at segment boundaries.
        """
        lengths = self._lengths(features, lengths, mask)
        pots = self.potentials(features, lengths, prev_labels, next_labels)
        return SegmentCRF(pots, self.layout, backend=self.backend)

    def loss(self, features: torch.Tensor, lengths: torch.Tensor | None = None, gold: Gold | None = None,
             reduction: Literal["mean", "sum", "token", "none"] = "mean", check_gold: bool = True,
             prev_labels: torch.Tensor | None = None, next_labels: torch.Tensor | None = None, *,
             mask: torch.Tensor | None = None) -> torch.Tensor:
        """Negative log-likelihood of ``gold`` (float32, also under fp16/bf16 autocast).

        gold: a Segmentation, per-sequence lists of (start, end_exclusive, label),
        a pair (labels (B, T), starts (B, T)), or per-token labels (B, T) integer
        (pytorch-crf's ``tags``; values past each length are ignored, e.g. −100):
        maximal runs of one label are segments, and at max_duration 1 every
        token is one (see docs/head.md; for BIO/BIOES/BMES tag ids use
        :func:`semiring_flash.tags.tag_ids_to_segmentation`).
        lengths (B,) or mask (B, T) bool: see :meth:`forward`.
        reduction: "mean" (over sequences), "sum", "token" (sum divided by the
        number of tokens) or "none" (B,).
        check_gold: raise ValueError (saying why) when a gold segmentation is
        impossible under the constraints, instead of returning an infinite loss.
        A sequence whose length no segmentation fits (log Z = −inf) always raises.
        prev_labels / next_labels: windows of longer sequences (see :meth:`forward`).
        """
        if gold is None:
            raise TypeError("loss() needs gold (segments, a Segmentation or per-token labels)")
        self._check_features(features)
        B, T = features.shape[:2]
        lengths = self._lengths(features, lengths, mask)
        if lengths is None:
            lengths = torch.full((B,), T, dtype=torch.long, device=features.device)
        dist = self(features, lengths, prev_labels, next_labels)
        seg = to_segmentation(gold, dist.token_lengths, T, features.device, num_labels=self.num_labels,
                              runs=not self.layout.single_token)
        log_z = dist.partition
        if torch.isneginf(log_z).any():
            b = int(torch.nonzero(torch.isneginf(log_z))[0])
            raise ValueError(f"sequence {b} (length {int(dist.token_lengths[b])}) has no segmentation the head allows "
                             "(min/max durations, allowed transitions, start/end labels, prev/next labels): log Z = -inf")
        nll = -dist.log_prob(seg)
        if check_gold and torch.isinf(nll).any():
            bad = torch.nonzero(torch.isinf(nll)).flatten().tolist()
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

    def explain(self, segments: Segments) -> str:
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
    def decode(self, features: torch.Tensor, lengths: torch.Tensor | None = None, *, mask: torch.Tensor | None = None,
               output: Literal["segments", "labels"] = "segments") -> list[Segments] | list[list[int]]:
        """Viterbi: per sequence, a list of (start, end_exclusive, label) segments, or with
        ``output="labels"`` the per-token labels (a list of ints per sequence, as pytorch-crf's decode)."""
        if output not in ("segments", "labels"):
            raise ValueError(f"output must be 'segments' or 'labels', got {output!r}")
        best = self(features, lengths, mask=mask).argmax
        if output == "segments":
            return best.segments()
        return [row[:n] for row, n in zip(best.labels.tolist(), best.lengths.tolist())]

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, num_labels={self.num_labels}, K={self.K}, "
                f"long_segments={self.layout.long}, internal_states={self.layout.S}")
