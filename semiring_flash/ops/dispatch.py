"""The one door into the engines: engine inputs, backend resolution, and the torch engine or the Triton kernels.

Every value, gradient and decode of the package comes through here: ``inputs``
turns potentials (either kind) into engine inputs, ``value`` computes a
semiring value on them, ``viterbi`` decodes with backpointers where a
dedicated decoder exists. This is the only module that imports the engines
(``streaming``, ``linear_chain``, ``triton``).
"""

from __future__ import annotations

import functools
import importlib
import os
from dataclasses import dataclass, replace

import torch

from ..edges import EdgePotentials
from ..semirings import MaxSemiring, Semiring, StdSemiring
from ..validation import check_values, signature
from . import dense, linear_chain, streaming

BACKENDS = ("auto", "torch", "triton")


@functools.cache  # looked up once: the import machinery costs host time on every call
def optional_module(name: str):
    """(module, None), or (None, the error) when it does not import (no Triton, or Triton failing to start)."""
    try:
        return importlib.import_module(name), None
    except Exception as err:  # ImportError, or triton failing to initialise
        return None, err


def _triton_module():
    return optional_module("semiring_flash.ops.triton")


def check_backend(backend: str) -> str:
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    return backend


def choose_backend(backend: str, device: torch.device, kernels, supported: bool = True, unsupported: str = "") -> str:
    """'torch' or 'triton' for this call; ``kernels()`` gives (Triton module, None) or (None, its import error).

    'auto' takes Triton for CUDA tensors when it imports and is ``supported``;
    'triton' insists, and runs on CPU tensors under TRITON_INTERPRET=1.
    """
    check_backend(backend)
    if backend == "torch" or (backend == "auto" and device.type != "cuda"):
        return "torch"  # auto on CPU never imports Triton
    module, err = kernels()
    if backend == "auto":
        return "triton" if (module is not None and supported) else "torch"
    if module is None:
        raise NotImplementedError(f"backend='triton' is unavailable: {err}")
    if not supported:
        raise NotImplementedError(unsupported)
    if device.type != "cuda" and os.environ.get("TRITON_INTERPRET") != "1":
        raise ValueError("backend='triton' needs CUDA tensors (or TRITON_INTERPRET=1 for CPU tensors)")
    return "triton"


def resolve_backend(backend: str, device: torch.device, semiring: Semiring, extras: bool = False) -> str:
    """:func:`choose_backend` for the scans: Triton supports the semirings with a kernel (``triton_id``),
    one distribution, and no torch-only extra (per-segment biases, checkpoints, double backward)."""
    supported = semiring.triton_id is not None and semiring.n_potentials == 1 and not extras
    return choose_backend(backend, device, _triton_module, supported,
                          f"backend='triton' does not support {semiring!r} with these options; use backend='torch'")


# -- engine inputs -------------------------------------------------------------------------------
@dataclass
class FactoredInputs:
    """Engine inputs of one or two (cross-entropy/KL; leading P dim) SegmentPotentials."""

    cum: torch.Tensor  # (P?, B, T+1, C) float64
    transition: torch.Tensor  # (P?, B, C, C)
    duration: torch.Tensor  # (P?, B, K, C)
    end: torch.Tensor  # (P?, B, C)
    entry: torch.Tensor  # (P?, B, C', C) plain potential into the first segment
    lengths: torch.Tensor  # (B,) tokens
    #: (B, T, C) ⊗-ed into τ(t): its gradient marks where segments of each label start
    start_bias: torch.Tensor | None = None

    @property
    def device(self) -> torch.device:
        return self.cum.device

    def wrt(self) -> list:
        """What marginals differentiate: prefix sums, transition, duration, start bias."""
        return [self.cum, self.transition, self.duration, self.start_bias]

    def indicator(self) -> torch.Tensor:
        """The input whose gradient is the selected structure (start indicators)."""
        return self.start_bias

    def with_indicator(self) -> "FactoredInputs":
        B, T1, C = self.cum.shape[-3:]
        bias = torch.zeros(B, T1 - 1, C, dtype=self.transition.dtype, device=self.device, requires_grad=True)
        return replace(self, start_bias=bias)

    def engine_args(self, semiring) -> tuple:
        """(cum, transition, duration, τ(0), end, lengths): what every factored engine takes."""
        tau0 = entry_value(semiring, self.entry, self.transition.dtype)
        return self.cum, self.transition, self.duration, tau0, self.end, self.lengths


@dataclass
class EdgeInputs:
    """Engine inputs of one or two (leading P dim) torch-struct edge tensors."""

    edges: torch.Tensor  # (P?, B, N-1, K+1, C, C) in the compute dtype
    lengths: torch.Tensor  # (B,) tokens

    @property
    def device(self) -> torch.device:
        return self.edges.device

    def wrt(self) -> list:
        return [self.edges]

    def indicator(self) -> torch.Tensor:
        return self.edges


def _prepared(x, repeat=1, leaf=False, keep_graph=False):
    """x with each sequence ``repeat`` times in a row; a detached leaf that requires grad with ``leaf``
    (unless ``keep_graph`` and it already requires grad)."""
    if repeat > 1:
        x = x.repeat_interleave(repeat, 0)
    if not leaf or (keep_graph and x.requires_grad):
        return x
    return x.detach().requires_grad_()


def inputs(pots: list, leaves: bool = False, keep_graph: bool = False, indicator: bool = False, repeat: int = 1):
    """Engine inputs of one potentials object, or of two (p, q) of one kind (stacked on a leading P dim).

    ``leaves``: the differentiable inputs (``wrt()``) become detached leaves
    that require grad: their gradients are the marginals; with ``keep_graph``
    those that already require grad stay attached to the user's potentials
    instead (differentiable marginals). ``indicator`` (implied by ``leaves``)
    adds the input whose gradient is the selected structure (``indicator()``).
    ``repeat``: each sequence ``repeat`` times in a row (batch R·B, for sampling).
    """
    first = pots[0]
    # a pair's tensors are stacked on a leading P dim (this frame naming torch also lets dynamo compile it whole)
    stacked = (lambda xs: xs[0]) if len(pots) == 1 else functools.partial(torch.stack, dim=0)  # noqa: E731
    for p in pots[1:]:
        if type(p) is not type(first) or p.shape != first.shape:
            raise ValueError(f"both distributions need the same (B, T, K, C) and lengths; got {first.shape} and {p.shape}")
        check_values(signature(lengths=first.lengths, other_lengths=p.lengths), first.device,
                     lambda: [((p.lengths != first.lengths).any(), "both distributions need the same lengths")])

    prep = functools.partial(_prepared, leaf=leaves, keep_graph=keep_graph)
    if isinstance(first, EdgePotentials):  # the edges are their own indicator: a leaf
        edges = [_prepared(p.edges, repeat, leaves or indicator, keep_graph) for p in pots]
        return EdgeInputs(stacked(edges), _prepared(first.lengths, repeat))
    parts = []
    for p in pots:
        trans = prep(p.transition_b())
        parts.append((prep(p.cum()), trans, prep(p.duration_b()), p.end_b(), p.entry_potential(trans)))
    # repeated after the entry is built from the per-batch init/start (a repeat is for sampling: no leaves)
    inp = FactoredInputs(*[_prepared(stacked(list(z)), repeat) for z in zip(*parts)], _prepared(first.lengths, repeat))
    return inp.with_indicator() if (indicator or leaves) else inp


def entry_value(semiring: Semiring, entry: torch.Tensor, dtype) -> torch.Tensor:
    """τ(0, c) = ⊕_{c'} 1̄ ⊗ entry[c', c], as a semiring value (S, B, C)."""
    pot = entry if semiring.n_potentials > 1 else entry.unsqueeze(0)
    if semiring.plus_vjp is not None:  # log/max: 1̄ ⊗ w = w: skip building 1̄ (small-batch GPU calls are host-bound)
        return semiring.sum(pot, -2)
    B, C = pot.shape[1], pot.shape[-1]
    return semiring.matmul_potential(semiring.ones((B, C), dtype, entry.device), pot)


# -- the engines ---------------------------------------------------------------------------------
def value(
    semiring: Semiring,
    inputs: FactoredInputs | EdgeInputs,
    backend: str = "auto",
    seg_bias: torch.Tensor | None = None,
    checkpoint_every: int | None = None,
    create_graph: bool = False,
) -> torch.Tensor:
    """Semiring value (S, B) of engine inputs (either kind).

    ``seg_bias`` (B, T, K, C), factored only: ⊗-ed into the segment starting
    at t with duration d (index d-1). ``create_graph``: twice differentiable
    (torch engine). Both, and ``checkpoint_every``, run on the torch engine.
    """
    extras = seg_bias is not None or checkpoint_every is not None or create_graph
    which = resolve_backend(backend, inputs.device, semiring, extras=extras)
    return _run(semiring, inputs, which, seg_bias, checkpoint_every, create_graph)


def _run(semiring, inp, which, seg_bias=None, checkpoint_every=None, create_graph=False) -> torch.Tensor:
    """The engine ``which`` names on these inputs: Triton, the linear chain (K = 1), or the streaming scan."""
    triton = _triton_module()[0] if which == "triton" else None
    if isinstance(inp, EdgeInputs):
        if seg_bias is not None:
            raise ValueError("per-segment biases need factored potentials")
        if triton is not None:
            return triton.edge_scan_triton(semiring, inp.edges, inp.lengths)
        return streaming.edge_scan(semiring, inp.edges, inp.lengths, checkpoint_every=checkpoint_every,
                                   create_graph=create_graph)
    args, sb = inp.engine_args(semiring), inp.start_bias
    if triton is not None:
        return triton.factored_scan_triton(semiring, *args, start_bias=sb)
    if seg_bias is None and checkpoint_every is None and linear_chain.supports(semiring, inp.duration):
        return linear_chain.linear_chain_scan(semiring, *args, start_bias=sb)  # K = 1: a linear chain
    return streaming.factored_scan(semiring, *args, start_bias=sb, seg_bias=seg_bias,
                                   checkpoint_every=checkpoint_every, create_graph=create_graph)


def potentials_value(semiring: Semiring, pots: list, backend: str = "auto") -> torch.Tensor:
    """Semiring value (S, B) of potentials (one, or a pair [p, q]): ``value(semiring, inputs(pots))``,
    except that on the Triton backend one SegmentPotentials of a log/max semiring runs as a
    single autograd node over the user's tensors (ops/triton/segment_scan.py: a small batch
    costs its host-side glue, not its kernels)."""
    first = pots[0]
    which = resolve_backend(backend, first.device, semiring)
    if which == "triton" and len(pots) == 1 and not isinstance(first, EdgePotentials):
        from .triton import segment_scan  # the kernels are importable: resolve_backend said so

        if segment_scan.supports(semiring, first):
            return segment_scan.segment_scan_triton(semiring, first)
    return _run(semiring, inputs(pots), which)


def viterbi(pots, backend: str = "auto"):
    """(labels, starts, lengths) of the best segmentation by a decoder with
    backpointers: the Triton Viterbi kernel (forward + device backtrace), or
    the linear-chain Viterbi at K = 1 on the torch engine. None where neither
    applies (edges, or K > 1 on the torch engine): callers then take the
    max-semiring gradient."""
    if isinstance(pots, EdgePotentials):
        return None
    triton = resolve_backend(backend, pots.device, MaxSemiring) == "triton"
    if not triton and pots.K != 1:
        return None
    decode = _triton_module()[0].viterbi_triton if triton else linear_chain.viterbi
    with torch.no_grad():  # no graph, and no detached copy of the potentials
        inp = inputs([pots])
        _, labels, starts = decode(*inp.engine_args(MaxSemiring))
    return labels, starts, inp.lengths


def count_edges(edges: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """Number of segmentations whose edges are all finite, (B,) float64: exact integers below
    2**53. The dense DP in the counting semiring (the streaming engines run log-space semirings,
    whose exp(log count) is off by rounding: 2.9999999999999996 for 3)."""
    ones = (edges != float("-inf")).to(torch.float64)
    return dense.dense_edges(StdSemiring, ones, lengths)[0]
