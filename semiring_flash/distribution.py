"""``SemiMarkovCRF``: a torch.distributions-style semi-CRF, torch-struct compatible."""

from __future__ import annotations

import functools

import torch
from torch.distributions import Distribution, register_kl

from .ops.autograd import check_backend, edge_value, factored_inputs, factored_value, factored_viterbi
from .potentials import SegmentPotentials
from .segmentation import Segmentation
from .semirings import (
    CrossEntropySemiring,
    EntropySemiring,
    KLDivergenceSemiring,
    KMaxSemiring,
    LogSemiring,
    MaxSemiring,
    SampledSemiring,
)
from .struct import SemiMarkov, check_edges

__all__ = ["SemiMarkovCRF"]


def _lazy_property(fn):
    """A read-only property computed once per instance (like torch-struct's lazy properties).

    A plain ``property`` underneath, so help() lists it with the properties
    (pydoc files ``functools.cached_property`` under the methods).
    """
    name = fn.__name__

    @functools.wraps(fn)
    def get(self):
        if name not in self.__dict__:
            self.__dict__[name] = fn(self)
        return self.__dict__[name]

    return property(get)


class SemiMarkovCRF(Distribution):
    """Semi-Markov CRF over segmentations.

    Args:
        log_potentials: torch-struct edges (B, N-1, K, C, C) — a drop-in for
            ``torch_struct.SemiMarkovCRF`` — or a :class:`SegmentPotentials`
            (the flash path: edges are never materialized).
        lengths: with edges, (B,) positions (tokens + 1), as in torch-struct.
            With SegmentPotentials, lengths live inside them.
        backend: "auto" (Triton for CUDA tensors when importable), "torch" or "triton".

    With edges every result has torch-struct's layout. With factored
    potentials results stay compact: ``marginals`` is a
    :class:`FactoredMarginals`, ``argmax``/``topk``/``sample`` give
    :class:`Segmentation` objects (``.segments()`` lists (start, end, label)).
    """

    arg_constraints: dict = {}
    has_rsample = False

    def __init__(self, log_potentials, lengths=None, backend: str = "auto", validate_args=None):
        self.backend = check_backend(backend)
        if isinstance(log_potentials, SegmentPotentials):
            if lengths is not None:
                raise ValueError("with SegmentPotentials, pass lengths to SegmentPotentials, not to SemiMarkovCRF")
            self.factored = True
            self.potentials = log_potentials
            B, T, K, C = log_potentials.shape
            batch_shape, event_shape = (B,), (T, C)
            self.token_lengths = log_potentials.lengths
        else:
            edges, tokens = check_edges(log_potentials, lengths)
            self.factored = False
            self.potentials = edges
            batch_shape, event_shape = edges.shape[:1], edges.shape[1:]
            self.token_lengths = tokens
        self.log_potentials = log_potentials
        self.lengths = lengths
        super().__init__(batch_shape=batch_shape, event_shape=event_shape, validate_args=False)

    # -- plumbing ------------------------------------------------------------------
    def _struct(self, semiring=LogSemiring) -> SemiMarkov:
        return SemiMarkov(semiring, self.backend)

    def _value(self, semiring, other=None) -> torch.Tensor:
        """Semiring value (S, B); with ``other``, of the pair (p = self, q = other)."""
        if self.factored:
            pots = [self.potentials] + ([other.potentials] if other is not None else [])
            return factored_value(semiring, factored_inputs(pots), self.backend)
        edges = self.potentials if other is None else torch.stack([self.potentials, other.potentials], 0)
        return edge_value(semiring, edges, self.token_lengths, self.backend)

    def _check_other(self, other: "SemiMarkovCRF"):
        if not isinstance(other, SemiMarkovCRF) or other.factored != self.factored:
            raise TypeError("other must be a SemiMarkovCRF of the same input kind (edges or SegmentPotentials)")
        if not self.factored and (other.potentials.shape != self.potentials.shape or not torch.equal(other.token_lengths, self.token_lengths)):
            raise ValueError("other must have the same edge shape and lengths")

    # -- values ------------------------------------------------------------------------
    @_lazy_property
    def partition(self) -> torch.Tensor:
        """log Z, (B,)."""
        return self._value(LogSemiring)[0]

    @_lazy_property
    def max(self) -> torch.Tensor:
        """Score of the best segmentation, (B,)."""
        return self._value(MaxSemiring)[0]

    @_lazy_property
    def entropy(self) -> torch.Tensor:
        """H[p], (B,); torch-struct's EntropySemiring value (differentiable)."""
        return self._value(EntropySemiring)[1]

    def kmax(self, k: int) -> torch.Tensor:
        """Scores of the k best structures, (k, B), sorted (−inf past the last one)."""
        return self._value(KMaxSemiring(k))

    def cross_entropy(self, other: "SemiMarkovCRF") -> torch.Tensor:
        """H[p, q] = −E_p[log q], (B,)."""
        self._check_other(other)
        return self._value(CrossEntropySemiring, other)[2]

    def kl(self, other: "SemiMarkovCRF") -> torch.Tensor:
        """KL[p || q], (B,)."""
        self._check_other(other)
        return self._value(KLDivergenceSemiring, other)[2]

    # -- structures ------------------------------------------------------------------
    @_lazy_property
    def marginals(self):
        """Edges: (B, N-1, K, C, C) edge marginals. Factored: :class:`FactoredMarginals`.

        Differentiable (double backward, torch engine) when grad mode is on and
        the potentials require grad; see :meth:`SemiMarkov.marginals`.
        """
        return self._struct(LogSemiring).marginals(self.potentials, self._edge_lengths())

    def segment_marginals(self) -> torch.Tensor:
        """Factored only: (B, T, K, C) P(segment at t of duration d (index d-1), label c)."""
        self._require_factored("segment_marginals")
        return self._struct(LogSemiring).segment_marginals(self.potentials)

    @_lazy_property
    def argmax(self):
        """The Viterbi structure: one-hot edges, or a :class:`Segmentation` (factored)."""
        if self.factored:
            path = factored_viterbi(self.potentials, self.backend)
            if path is not None:
                return Segmentation(*path)
            ind, lengths = self._struct(MaxSemiring).start_indicators(self.potentials)
            return Segmentation.from_start_labels(ind[0], lengths)
        return self._struct(MaxSemiring).marginals(self.potentials, self._edge_lengths())

    @property
    def mode(self):
        """Same as ``argmax``."""
        return self.argmax

    def topk(self, k: int):
        """The k best structures: (k, B, ...) one-hot edges, or a Segmentation with (k, B, T).

        When a sequence has fewer than k segmentations, the extra channels are
        empty: all-zero edges, or labels −1 with no starts.
        """
        if self.factored:
            ind, lengths = self._struct(KMaxSemiring(k)).start_indicators(self.potentials)
            return Segmentation.from_start_labels(ind, lengths)
        return self._struct(KMaxSemiring(k)).marginals(self.potentials, self._edge_lengths(), _raw=True)

    def log_prob(self, value) -> torch.Tensor:
        """log p(value): one-hot edges (..., B, N-1, K, C, C), or a Segmentation (..., B, T)."""
        if self.factored:
            if not isinstance(value, Segmentation):
                raise TypeError("with SegmentPotentials, value must be a semiring_flash.Segmentation")
            score = self._struct().score(self.potentials, value)
        else:
            if not isinstance(value, torch.Tensor) or value.shape[-5:] != self.potentials.shape[-5:]:
                raise ValueError(f"value must be one-hot edges of shape (..., {', '.join(map(str, self.potentials.shape))})")
            score = self._struct().score(self.potentials, value, batch_dims=range(value.dim() - 4))
        return score - self.partition

    def sample(self, sample_shape=torch.Size(), generator: torch.Generator | None = None):
        """Exact samples (ancestral sampling through the DP's backward).

        Edges: one-hot (*sample_shape, B, N-1, K, C, C). Factored: a Segmentation
        of shape (*sample_shape, B, T). ``generator``: a torch.Generator on the
        potentials' device to draw from (default: the global RNG). Runs on the
        torch engine whatever the backend (the Triton kernels do not sample).
        """
        if generator is not None:
            if not isinstance(generator, torch.Generator):
                raise TypeError(f"generator must be a torch.Generator or None, got {type(generator).__name__}")
            device = self.potentials.device
            if generator.device.type != device.type:
                raise ValueError(f"generator is on {generator.device} but the potentials are on {device}")
        shape = torch.Size(sample_shape)
        n = int(torch.Size(shape).numel())
        struct = SemiMarkov(SampledSemiring.with_generator(generator), "torch")
        if self.factored:
            ind, lengths = struct.start_indicators(self.potentials.detach(), batch_repeat=n)
            B, T, C = self.potentials.batch, self.potentials.T, self.potentials.C
            ind = ind[0].view(B, n, T, C).transpose(0, 1).reshape(*shape, B, T, C)
            return Segmentation.from_start_labels(ind, self.token_lengths.expand(*shape, B))
        edges = self.potentials.detach()
        rep = edges.repeat_interleave(n, 0)
        lengths = self._edge_lengths()
        lengths = None if lengths is None else torch.as_tensor(lengths).repeat_interleave(n, 0)
        marg = struct.marginals(rep, lengths)
        B = edges.shape[0]
        return marg.view(B, n, *edges.shape[1:]).transpose(0, 1).reshape(*shape, *edges.shape)

    # -- torch-struct event helpers ------------------------------------------------
    @staticmethod
    def to_event(sequence, extra, lengths=None):
        return SemiMarkov.to_parts(sequence, extra, lengths)

    @staticmethod
    def from_event(event):
        return SemiMarkov.from_parts(event)

    def _edge_lengths(self):
        return None if self.factored else self.lengths

    def _require_factored(self, what):
        if not self.factored:
            raise TypeError(f"{what} needs SegmentPotentials input")

    def __repr__(self):
        kind = repr(self.potentials) if self.factored else f"edges{tuple(self.potentials.shape)}"
        return f"SemiMarkovCRF({kind}, backend={self.backend!r})"


@register_kl(SemiMarkovCRF, SemiMarkovCRF)
def _kl_semi_markov(p: SemiMarkovCRF, q: SemiMarkovCRF) -> torch.Tensor:
    """torch.distributions.kl_divergence(p, q) = p.kl(q)."""
    return p.kl(q)
