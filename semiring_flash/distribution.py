"""``SemiMarkovCRF``: a torch.distributions-style semi-CRF, torch-struct compatible."""

from __future__ import annotations

import functools

import torch
from torch.distributions import Distribution, register_kl

from .edges import EdgePotentials
from .ops.dispatch import check_backend
from .potentials import SegmentPotentials
from .segmentation import FactoredMarginals, Segmentation
from .semirings import (
    CrossEntropySemiring, EntropySemiring, KLDivergenceSemiring, KMaxSemiring, LogSemiring, MaxSemiring,
    SampledSemiring,
)
from .struct import SemiMarkov, as_potentials

__all__ = ["SemiMarkovCRF"]


def _lazy_property(fn):
    """A read-only property computed once per instance (like torch-struct's lazy properties).

    A plain ``property`` underneath, so help() lists it with the properties
    (pydoc files ``functools.cached_property`` under the methods).
    """
    key = fn.__qualname__  # an override in a subclass is cached apart from the property it wraps

    @functools.wraps(fn)
    def get(self):
        if key not in self.__dict__:
            self.__dict__[key] = fn(self)
        return self.__dict__[key]

    return property(get)


def _sample_shape(sample_shape) -> torch.Size:
    """torch.Size of non-negative ints, or a clear error (an int alone is not a shape)."""
    try:
        shape = torch.Size(sample_shape)
    except TypeError:
        raise TypeError(f"sample_shape must be a tuple of ints such as (n,), got {sample_shape!r}") from None
    if any(s < 0 for s in shape):
        raise ValueError(f"sample_shape must hold non-negative sizes, got {tuple(shape)}")
    return shape


class SemiMarkovCRF(Distribution):
    """Semi-Markov CRF over segmentations.

    Args:
        log_potentials: torch-struct edges (B, N-1, K+1, C, C), durations 1..K — a drop-in for
            ``torch_struct.SemiMarkovCRF`` — or an :class:`EdgePotentials`, or a
            :class:`SegmentPotentials` (the flash path: edges are never materialized).
        lengths: with an edge tensor, (B,) positions (tokens + 1), as in torch-struct.
            Potentials objects hold their lengths.
        backend: "auto" (Triton for CUDA tensors when importable), "torch" or "triton".

    With edges every result has torch-struct's layout. With factored
    potentials results stay compact: ``marginals`` is a
    :class:`FactoredMarginals`, ``argmax``/``topk``/``sample`` give
    :class:`Segmentation` objects (``.segments()`` lists (start, end, label)).
    """

    arg_constraints: dict = {}
    has_rsample = False

    def __init__(self, log_potentials: torch.Tensor | EdgePotentials | SegmentPotentials,
                 lengths: torch.Tensor | None = None, backend: str = "auto", validate_args: bool | None = None):
        self.backend = check_backend(backend)
        self._potentials = as_potentials(log_potentials, lengths, where="SemiMarkovCRF")
        self.potentials = self._potentials.public()  # edges (compute dtype) or the SegmentPotentials
        self.token_lengths = self._potentials.lengths
        self.log_potentials = log_potentials
        self.lengths = lengths
        super().__init__(batch_shape=(self._potentials.batch,), event_shape=self._potentials.event_shape,
                         validate_args=False)

    @property
    def factored(self) -> bool:
        """Whether the potentials are factored (SegmentPotentials) rather than edges."""
        return isinstance(self._potentials, SegmentPotentials)

    def _struct(self, semiring=LogSemiring) -> SemiMarkov:
        return SemiMarkov(semiring, self.backend)

    def _pair(self, other: "SemiMarkovCRF") -> list:
        """[p, q] for the two-distribution semirings (shape and lengths are checked at the engine door)."""
        if not isinstance(other, SemiMarkovCRF) or type(other._potentials) is not type(self._potentials):
            raise TypeError("other must be a SemiMarkovCRF of the same input kind (edges or SegmentPotentials)")
        return [self._potentials, other._potentials]

    # -- values ------------------------------------------------------------------------
    @_lazy_property
    def partition(self) -> torch.Tensor:
        """log Z, (B,)."""
        # the one channel of the raw value, taken here: a call taking the tensor would be one more
        # torch.compile graph (dynamo compiles every frame whose arguments hold tensors). squeeze,
        # not [0]: its backward is a view, select's a zero fill and a copy (two GPU ops per step)
        return self._struct(LogSemiring).sum(self._potentials, _raw=True).squeeze(0)

    @_lazy_property
    def max(self) -> torch.Tensor:
        """Score of the best segmentation, (B,)."""
        return self._struct(MaxSemiring).sum(self._potentials)

    @_lazy_property
    def entropy(self) -> torch.Tensor:
        """H[p], (B,); torch-struct's EntropySemiring value (differentiable)."""
        return self._struct(EntropySemiring).sum(self._potentials)

    def kmax(self, k: int) -> torch.Tensor:
        """Scores of the k best structures, (k, B), sorted (−inf past the last one)."""
        return self._struct(KMaxSemiring(k)).sum(self._potentials, _raw=True)

    def cross_entropy(self, other: "SemiMarkovCRF") -> torch.Tensor:
        """H[p, q] = −E_p[log q], (B,)."""
        return self._struct(CrossEntropySemiring).sum(self._pair(other))

    def kl(self, other: "SemiMarkovCRF") -> torch.Tensor:
        """KL[p || q], (B,)."""
        return self._struct(KLDivergenceSemiring).sum(self._pair(other))

    # -- structures ------------------------------------------------------------------
    @_lazy_property
    def marginals(self) -> torch.Tensor | FactoredMarginals:
        """Edges: (B, N-1, K+1, C, C) edge marginals. Factored: :class:`FactoredMarginals`.

        Differentiable (double backward, torch engine) when grad mode is on and
        the potentials require grad; see :meth:`SemiMarkov.marginals`.
        """
        return self._struct(LogSemiring).marginals(self._potentials)

    def segment_marginals(self) -> torch.Tensor:
        """Factored only: (B, T, K, C) P(segment at t of duration d (index d-1), label c)."""
        return self._struct(LogSemiring).segment_marginals(self._potentials)

    @_lazy_property
    def argmax(self) -> torch.Tensor | Segmentation:
        """The Viterbi structure: one-hot edges, or a :class:`Segmentation` (factored)."""
        return self._struct(MaxSemiring).argmax(self._potentials)

    @property
    def mode(self) -> torch.Tensor | Segmentation:
        """Same as ``argmax``."""
        return self.argmax

    def topk(self, k: int) -> torch.Tensor | Segmentation:
        """The k best structures: (k, B, ...) one-hot edges, or a Segmentation with (k, B, T).

        When a sequence has fewer than k segmentations, the extra channels are
        empty: all-zero edges, or labels −1 with no starts.
        """
        return self._struct(KMaxSemiring(k)).structures(self._potentials)

    def log_prob(self, value: torch.Tensor | Segmentation) -> torch.Tensor:
        """log p(value): one-hot edges (..., B, N-1, K+1, C, C), or a Segmentation (..., B, T).

        −inf (never NaN) for the empty structure and for every value of an
        impossible sequence (log Z = −inf). Malformed values raise ValueError.
        """
        empty = self._potentials.check_value(value)
        score = torch.where(empty, float("-inf"), self._struct().score(self._potentials, value))
        return torch.where(self.impossible, float("-inf"), score - self.partition)

    @property
    def impossible(self) -> torch.Tensor:
        """(B,) bool: the sequence has no segmentation (log Z = −inf).

        Conventions there: partition, max and kmax are −inf; entropy,
        cross-entropy and KL are 0; marginals are 0; argmax, topk and sample
        give the empty structure (all-zero edges, or a Segmentation with
        labels −1 and no starts); log_prob is −inf.
        """
        return self.partition.detach() == float("-inf")

    def sample(self, sample_shape: torch.Size | tuple[int, ...] = torch.Size(),
               generator: torch.Generator | None = None) -> torch.Tensor | Segmentation:
        """Exact samples (ancestral sampling through the DP's backward).

        Edges: one-hot (*sample_shape, B, N-1, K+1, C, C). Factored: a Segmentation
        of shape (*sample_shape, B, T). ``generator``: a torch.Generator on the
        potentials' device to draw from (default: the global RNG). Runs on the
        torch engine whatever the backend (the Triton kernels do not sample).
        """
        pots = self._potentials
        if generator is not None:
            if not isinstance(generator, torch.Generator):
                raise TypeError(f"generator must be a torch.Generator or None, got {type(generator).__name__}")
            if generator.device.type != pots.device.type:
                raise ValueError(f"generator is on {generator.device} but the potentials are on {pots.device}")
        shape = _sample_shape(sample_shape)
        n = int(shape.numel())
        if n == 0:  # like torch.distributions: an empty batch of samples
            return pots.empty(shape)
        struct = SemiMarkov(SampledSemiring.with_generator(generator), "torch")
        ind = struct.indicators(pots.detach(), batch_repeat=n)[0]  # (B·n, ...): sample j of sequence b at b·n + j
        B = pots.batch
        ind = ind.view(B, n, *ind.shape[1:]).transpose(0, 1).reshape(*shape, B, *ind.shape[1:])
        return pots.structures(ind, self.token_lengths.expand(*shape, B))

    # -- torch-struct event helpers ------------------------------------------------
    @staticmethod
    def to_event(sequence: torch.Tensor, extra: tuple[int, int], lengths: torch.Tensor | None = None) -> torch.Tensor:
        return SemiMarkov.to_parts(sequence, extra, lengths)

    @staticmethod
    def from_event(event: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int]]:
        return SemiMarkov.from_parts(event)

    def __repr__(self):
        return f"SemiMarkovCRF({self._potentials!r}, backend={self.backend!r})"


@register_kl(SemiMarkovCRF, SemiMarkovCRF)
def _kl_semi_markov(p: SemiMarkovCRF, q: SemiMarkovCRF) -> torch.Tensor:
    """torch.distributions.kl_divergence(p, q) = p.kl(q)."""
    return p.kl(q)
