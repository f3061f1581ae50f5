"""Compact segmentations: per-token labels + segment starts (never a T·K·C² one-hot)."""

from __future__ import annotations

import operator
from collections.abc import Sequence
from dataclasses import dataclass

import torch

__all__ = ["Segmentation", "FactoredMarginals", "segment_lists", "check_tiling"]


def segment_lists(gold, where: str = "gold") -> list:
    """Per-sequence lists of (start, end, label) with int fields: a float label like 1.5 (or a bool)
    is a TypeError, not truncated; a negative label a ValueError (−1 marks padding)."""
    out = []
    for b, segs in enumerate(gold):
        if not isinstance(segs, (list, tuple)):
            raise TypeError(f"{where}[{b}] must be a list of (start, end, label) tuples, got {type(segs).__name__}")
        rows = []
        for seg in segs:
            if not isinstance(seg, (list, tuple)) or len(seg) != 3:
                raise TypeError(f"{where}[{b}] holds {seg!r}; each segment is a (start, end_exclusive, label) tuple")
            if any(isinstance(v, bool) for v in seg):
                raise TypeError(f"{where}[{b}] segment {tuple(seg)!r}: start, end and label must be ints, not bools")
            try:
                row = tuple(operator.index(v) for v in seg)
            except TypeError:
                raise TypeError(f"{where}[{b}] segment {tuple(seg)!r}: start, end and label must be ints") from None
            if row[2] < 0:
                raise ValueError(f"{where}[{b}] segment {row!r}: labels are >= 0")
            rows.append(row)
        out.append(rows)
    return out


def check_tiling(segs, where: str) -> int:
    """The length a list of (start, end, label) segments tiles, in order from 0; else ValueError."""
    pos = 0
    for seg in segs:
        if seg[0] != pos or seg[1] <= seg[0]:
            raise ValueError(f"{where} must tile [0, length) in order from 0; got {tuple(seg)} where a segment "
                             f"starting at {pos} was due")
        pos = seg[1]
    return pos


@dataclass
class FactoredMarginals:
    """Posterior expectations of a factored semi-CRF (all compact).

    token: (B, T, C) P(token t lies in a segment of label c)
    start: (B, T) P(a segment starts at t)
    start_label: (B, T, C) P(a segment of label c starts at t)
    duration: (B, K, C) expected number of segments of label c and duration d (index d-1)
    transition: (B, C, C) expected number of c_prev → c boundaries (with ``init``
        and no ``start``, this includes the entry transition from the free
        initial label)
    """

    token: torch.Tensor
    start: torch.Tensor
    start_label: torch.Tensor
    duration: torch.Tensor
    transition: torch.Tensor


@dataclass
class Segmentation:
    """Segmentations of a batch, shapes (..., T) with ``lengths`` (...,) or broadcastable.

    labels[..., t]: label of the segment covering token t (-1 at t ≥ length);
    starts[..., t]: a segment starts at t (True at t = 0, False at t ≥ length).

    The *empty* segmentation (labels all −1, no starts; see :meth:`empty`) is
    what argmax/topk/sample give for a sequence without any segmentation (or
    for channels past the number of structures); its log-probability is −inf.
    """

    labels: torch.Tensor
    starts: torch.Tensor
    lengths: torch.Tensor

    def __post_init__(self):
        if not isinstance(self.labels, torch.Tensor) or self.labels.is_floating_point() or self.labels.is_complex() \
                or self.labels.dtype == torch.bool:
            got = self.labels.dtype if isinstance(self.labels, torch.Tensor) else type(self.labels).__name__
            raise TypeError(f"Segmentation.labels must be an integer tensor (..., T), got {got}")
        if self.labels.dtype != torch.long:  # int8/int16/int32 labels: one dtype for gather and indexing
            self.labels = self.labels.long()
        if not isinstance(self.starts, torch.Tensor):
            raise TypeError("Segmentation.starts must be a bool tensor (..., T)")
        if self.labels.shape != self.starts.shape:
            raise ValueError(f"labels {tuple(self.labels.shape)} and starts {tuple(self.starts.shape)} must have one shape")
        self.starts = self.starts.bool()
        self.lengths = torch.as_tensor(self.lengths, device=self.labels.device).long()

    @property
    def T(self) -> int:
        return self.labels.shape[-1]

    def valid(self) -> torch.Tensor:
        t = torch.arange(self.T, device=self.labels.device)
        return t < self.lengths.expand(self.labels.shape[:-1]).unsqueeze(-1)

    def empty(self) -> torch.Tensor:
        """(...,) bool: the sequence holds the empty segmentation (no segment starts)."""
        return ~(self.starts & self.valid()).any(-1)

    def to(self, device) -> "Segmentation":
        return Segmentation(self.labels.to(device), self.starts.to(device), self.lengths.to(device))

    def __getitem__(self, idx) -> "Segmentation":
        lengths = self.lengths.expand(self.labels.shape[:-1])
        return Segmentation(self.labels[idx], self.starts[idx], lengths[idx])

    @classmethod
    def from_start_labels(cls, start_label: torch.Tensor, lengths: torch.Tensor) -> "Segmentation":
        """From a (..., T, C) indicator of 'a segment of label c starts at t'."""
        starts = start_label.sum(-1) > 0.5
        first = start_label.argmax(-1)
        T = starts.shape[-1]
        t = torch.arange(T, device=starts.device)
        last_start = torch.where(starts, t, torch.zeros_like(t)).cummax(-1).values
        labels = first.gather(-1, last_start)
        seg = cls(labels, starts, lengths)
        ok = seg.valid() & starts.cummax(-1).values  # an all-zero indicator is an empty structure
        seg.labels = torch.where(ok, labels, torch.full_like(labels, -1))
        seg.starts = starts & ok
        return seg

    @classmethod
    def from_segments(cls, segments: Sequence[Sequence[tuple[int, int, int]]], T: int | None = None,
                      device: torch.device | str | None = None) -> "Segmentation":
        """From per-sequence lists of (start, end_exclusive, label) tiling [0, length); int fields
        (``segment_lists``: a float label is a TypeError, not truncated)."""
        segments = segment_lists(segments, "segments")
        if not segments:
            raise ValueError("segments is empty: give one list of segments per sequence")
        lengths = [max((e for _, e, _ in segs), default=0) for segs in segments]
        if T is None:
            T = max(lengths)
        elif T < max(lengths):
            raise ValueError(f"T = {T} is shorter than a sequence's segments (they end at {max(lengths)})")
        labels = torch.full((len(segments), T), -1, dtype=torch.long)
        starts = torch.zeros(len(segments), T, dtype=torch.bool)
        for b, segs in enumerate(segments):
            check_tiling(sorted(segs), f"segments of sequence {b}")
            for s, e, c in segs:
                labels[b, s:e] = c
                starts[b, s] = True
        return cls(labels.to(device), starts.to(device), torch.tensor(lengths, device=device))

    def segments(self) -> list[list[tuple[int, int, int]]]:
        """Per sequence (flattening leading dims), a list of (start, end_exclusive, label)."""
        labels = self.labels.reshape(-1, self.T).tolist()
        starts = self.starts.reshape(-1, self.T).tolist()
        lengths = self.lengths.expand(self.labels.shape[:-1]).reshape(-1).tolist()
        out = []
        for lab, st, L in zip(labels, starts, lengths):
            bounds = [t for t in range(L) if st[t]] + [L]
            out.append([(s, e, lab[s]) for s, e in zip(bounds[:-1], bounds[1:])])
        return out

    def check(self, num_labels: int) -> None:
        """Raise ValueError unless every sequence is a well-formed segmentation (or the empty one)."""
        if (self.lengths > self.T).any() or (self.lengths < 0).any():
            raise ValueError(f"Segmentation.lengths must lie in [0, T = {self.T}], got {self.lengths.tolist()}")
        ok = self.valid()
        empty = self.empty().unsqueeze(-1)
        if ((self.labels != -1) & ok & empty).any():
            raise ValueError("Segmentation.starts[..., 0] must be True (a segment starts at token 0); only the "
                             "empty segmentation (labels -1, no starts) has no start")
        if ((self.labels < 0) & ok & ~empty).any() or ((self.labels >= num_labels) & ok).any():
            raise ValueError(f"Segmentation.labels must lie in [0, {num_labels}) inside the lengths")
        if (~self.starts[..., 0] & ~empty[..., 0]).any():
            raise ValueError("Segmentation.starts[..., 0] must be True (a segment starts at token 0)")
        change = torch.zeros_like(self.starts)
        change[..., 1:] = self.labels[..., 1:] != self.labels[..., :-1]
        if (change & ~self.starts & ok).any():
            raise ValueError("Segmentation.labels change inside a segment (a label change needs a start)")
