"""``SemiMarkov``: torch-struct's struct surface, for edges and factored potentials.

Every method takes either input kind (torch-struct edges with position
lengths, an :class:`EdgePotentials` or a :class:`SegmentPotentials`), turns it
into a potentials object once (:func:`as_potentials`) and from then on calls
methods both kinds share and the engine door ``ops.dispatch``.
"""

from __future__ import annotations

from contextlib import contextmanager

import torch

from . import edges as _edges
from .edges import EdgePotentials
from .ops import dispatch
from .potentials import SegmentPotentials
from .segmentation import FactoredMarginals, Segmentation
from .semirings import LogSemiring, Semiring

__all__ = ["SemiMarkov", "as_potentials"]

Potentials = EdgePotentials | SegmentPotentials


def as_potentials(x, lengths=None, where: str = "SemiMarkov") -> Potentials:
    """Potentials objects pass through (their lengths are inside); a tensor is torch-struct edges
    with position ``lengths``, validated here."""
    if isinstance(x, (EdgePotentials, SegmentPotentials)):
        if lengths is not None:
            kind = type(x).__name__
            raise ValueError(f"with {kind}, pass lengths to {kind}, not to {where}")
        return x
    return EdgePotentials(x, lengths)


def _drop_empty_channels(grads: torch.Tensor, value: torch.Tensor) -> torch.Tensor:
    """Zero the indicators of channels whose value is −inf (k beyond the number of
    structures, or a sequence without any structure).

    Their gradient would otherwise point at an arbitrary (repeated) structure:
    the max of all-−inf candidates still routes its gradient to one of them.
    """
    alive = value > float("-inf")
    alive = alive.reshape(alive.shape + (1,) * (grads.dim() - alive.dim()))
    return torch.where(alive, grads, torch.zeros((), dtype=grads.dtype, device=grads.device))


@contextmanager
def _autograd_on():
    """Marginals, argmax, topk and samples are gradients of the DP's value:
    autograd runs even under torch.no_grad() and torch.inference_mode()
    (Lightning's validate/predict). Inputs made under inference mode go
    through :func:`_recordable` first."""
    with torch.inference_mode(False), torch.enable_grad():
        yield


def _recordable(pots):
    """Inference tensors (made under torch.inference_mode) cannot enter an
    autograd graph: clone them into normal tensors (inside ``_autograd_on``)."""
    return pots.map_tensors(torch.Tensor.clone) if any(t.is_inference() for t in pots.tensors()) else pots


class SemiMarkov:
    """Semi-Markov struct over a semiring (torch-struct's ``SemiMarkov``).

    Works on torch-struct edge tensors (B, N-1, K+1, C, C) with position
    lengths, on :class:`EdgePotentials` and on :class:`SegmentPotentials`
    (lengths inside). Two-distribution semirings (cross-entropy, KL) take a
    pair ``[p, q]`` of one kind, shape and lengths.
    """

    def __init__(self, semiring: Semiring = LogSemiring, backend: str = "auto"):
        if not isinstance(semiring, Semiring):
            raise TypeError(f"semiring must be a semiring_flash semiring instance (e.g. sf.LogSemiring), got {semiring!r}")
        if not semiring.log_space:
            raise TypeError(f"SemiMarkov runs log-space semirings (0̄ = −inf, ⊗ = +); {semiring!r} is not one")
        self.semiring = semiring
        self.backend = dispatch.check_backend(backend)

    def _all(self, x, lengths) -> list:
        """The semiring's potentials: one, or the pair [p, q] of a two-distribution semiring."""
        n = self.semiring.n_potentials
        xs = list(x) if isinstance(x, (list, tuple)) else [x]
        if len(xs) != n:
            raise ValueError(f"{self.semiring!r} takes {'a pair [p, q] of' if n == 2 else 'one'} potentials, got {len(xs)}")
        return [as_potentials(p, lengths) for p in xs]

    # -- the value -------------------------------------------------------------
    def logpartition(self, log_potentials, lengths: torch.Tensor | None = None,
                     force_grad: bool = False) -> tuple[torch.Tensor, list]:
        """(value (S, B), [potentials]) like torch-struct; never mutates inputs.

        For torch-struct edges (a tensor, or the pair [p, q]) the potentials are what torch-struct
        returns: the semiring's converted edges (S, B, N-1, K+1, C, C) the value is computed from,
        so ``grad(unconvert(value).sum(0), potentials)`` is torch-struct's marginals recipe.
        ``force_grad``: they require grad even when the input does not (a detached copy is made
        the leaf). Only the potential channels feed the value: the statistic channel of an
        entropy / cross-entropy / KL conversion gets a zero gradient (torch-struct's gets the
        marginals). Potentials objects come back as given (their public form).
        """
        sr = self.semiring
        xs = list(log_potentials) if isinstance(log_potentials, (list, tuple)) else [log_potentials]
        if not all(isinstance(x, torch.Tensor) for x in xs):
            pots = self._all(log_potentials, lengths)
            return dispatch.potentials_value(sr, pots, self.backend), [p.public() for p in pots]
        if force_grad and torch.is_grad_enabled() and not any(x.requires_grad for x in xs):
            xs = [x.detach().requires_grad_() for x in xs]
        converted = sr.convert(xs if sr.n_potentials > 1 else xs[0])  # (S, B, ...): channels 0..P-1 are the potentials
        edges = list(converted[: sr.n_potentials].unbind(0))
        return self._value(edges if sr.n_potentials > 1 else edges[0], lengths), [converted]

    def _value(self, log_potentials, lengths=None) -> torch.Tensor:
        """Semiring value (S, B) of the potentials (one, or the pair [p, q])."""
        return dispatch.potentials_value(self.semiring, self._all(log_potentials, lengths), self.backend)

    def sum(self, log_potentials, lengths: torch.Tensor | None = None, _raw: bool = False) -> torch.Tensor:
        v = self._value(log_potentials, lengths)
        return v if _raw else self.semiring.unconvert(v)

    # -- gradients of the value -------------------------------------------------
    def marginals(self, log_potentials, lengths: torch.Tensor | None = None,
                  _raw: bool = False) -> torch.Tensor | FactoredMarginals | list[FactoredMarginals]:
        """Gradient of the value w.r.t. the potentials.

        Edges: (B, N-1, K+1, C, C) like torch-struct (with ``_raw``, (S, ...) one
        per channel). Factored: a :class:`FactoredMarginals` (per channel a
        list with ``_raw``). Works under torch.no_grad() and inference mode.

        When grad mode is on and the potentials require grad, the marginals
        are differentiable (they carry a graph to the potentials, like
        torch-struct's): the torch engine then runs without checkpoints,
        O(T·K·C) memory for factored input (O(T·K·C²) for edges);
        backend="triton" raises. Otherwise the fast path builds no graph.
        """
        sr = self.semiring
        pots = as_potentials(log_potentials, lengths)
        # differentiable marginals: grad mode on and some potential requires grad; argmax indicators (max)
        # are piecewise constant: no graph for them
        create_graph = (not _raw and not sr.indicator_gradient and torch.is_grad_enabled()
                        and any(t.requires_grad for t in pots.tensors()))
        if create_graph and self.backend == "triton":
            raise NotImplementedError(
                "differentiable marginals (potentials that require grad, grad mode on) need backend='torch' "
                "(or 'auto'): the Triton backward has no double backward. Use backend='torch', or detach the "
                "potentials / wrap in torch.no_grad() for marginals without a graph."
            )
        with _autograd_on():
            pots = _recordable(pots)
            # with create_graph, the inputs that require grad stay attached to the user's potentials
            inp = dispatch.inputs([pots], leaves=True, keep_graph=create_graph)
            v = dispatch.value(sr, inp, self.backend, create_graph=create_graph)
            objs = [v[k].sum() for k in range(v.shape[0])] if _raw else [sr.unconvert(v).sum()]
            outs = [pots.marginals(torch.autograd.grad(o, inp.wrt(), retain_graph=True, create_graph=create_graph,
                                                       allow_unused=True, materialize_grads=True))
                    for o in objs]
        if not _raw:
            return outs[0]
        return _drop_empty_channels(torch.stack(outs, 0), v) if isinstance(outs[0], torch.Tensor) else outs

    def indicators(self, log_potentials, lengths: torch.Tensor | None = None, channels: int | None = None,
                   batch_repeat: int = 1) -> torch.Tensor:
        """(channels, R·B, ...) gradients of each value channel w.r.t. the structure.

        For Max/KMax/Sampled semirings these are 0/1 indicators of the selected
        structure(s): one-hot edges (..., N-1, K+1, C, C), or factored "a segment
        of label c starts at t" (..., T, C). Channels whose value is −inf are
        all zero. ``batch_repeat``: each sequence R times in a row (samples).
        """
        pots = as_potentials(log_potentials, lengths)
        with _autograd_on():
            inp = dispatch.inputs([_recordable(pots)], indicator=True, repeat=batch_repeat)
            v = dispatch.value(self.semiring, inp, self.backend)
            n = v.shape[0] if channels is None else channels
            target = inp.indicator()
            grads = [torch.autograd.grad(v[k].sum(), target, retain_graph=k + 1 < n)[0] for k in range(n)]
        return _drop_empty_channels(torch.stack(grads, 0), v[:n])

    def structures(self, log_potentials, lengths: torch.Tensor | None = None) -> torch.Tensor | Segmentation:
        """The structures the value channels select (KMax(k): the k best), (S, B, ...):
        one-hot edges, or a :class:`Segmentation` (S, B, T)."""
        pots = as_potentials(log_potentials, lengths)
        return pots.structures(self.indicators(pots), pots.lengths)

    def argmax(self, log_potentials, lengths: torch.Tensor | None = None) -> torch.Tensor | Segmentation:
        """The best structure (max semiring): by a Viterbi decoder where the door has one, else the
        max-semiring gradient."""
        pots = as_potentials(log_potentials, lengths)
        path = dispatch.viterbi(pots, self.backend)
        if path is not None:
            return Segmentation(*path)
        return pots.structures(self.indicators(pots, channels=1)[0], pots.lengths)

    def segment_marginals(self, pots: SegmentPotentials) -> torch.Tensor:
        """(B, T, K, C): P(segment starting at t, duration d (index d-1), label c). O(T·K·C) memory."""
        if not isinstance(pots, SegmentPotentials):
            raise TypeError("segment_marginals needs SegmentPotentials input")
        with _autograd_on():
            inp = dispatch.inputs([_recordable(pots)])
            bias = torch.zeros(pots.batch, pots.T, pots.K, pots.C, dtype=pots.dtype, device=pots.device, requires_grad=True)
            v = dispatch.value(self.semiring, inp, "torch", seg_bias=bias)
            return torch.autograd.grad(self.semiring.unconvert(v).sum(), bias)[0]

    # -- structures ---------------------------------------------------------------
    def score(self, potentials, parts: torch.Tensor | Segmentation, batch_dims=(0,)) -> torch.Tensor:
        """Σ potentials · parts (edge layout; 0 · −inf counts as 0) or a Segmentation's score.

        ``batch_dims`` is torch-struct's argument: every dim before the structure's own is batch.
        """
        return as_potentials(potentials).score(parts)

    to_parts = staticmethod(_edges.to_parts)
    from_parts = staticmethod(_edges.from_parts)
    hsmm = staticmethod(_edges.hsmm)
