"""Backend dispatch: assemble engine inputs and pick the torch engine or the Triton kernels."""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass

import torch

from ..potentials import SegmentPotentials
from ..semirings import MaxSemiring, Semiring
from ..validation import check_values, signature
from . import linear_chain, streaming

BACKENDS = ("auto", "torch", "triton")


@functools.cache  # looked up once: the import machinery costs host time on every call
def _triton_module():
    """(kernels module, None), or (None, the error) when Triton is unusable."""
    try:
        from . import triton as kernels  # noqa: WPS433 (optional dependency)
    except Exception as err:  # ImportError, or triton failing to initialise
        return None, err
    if not hasattr(kernels, "factored_scan_triton"):
        return None, ImportError("semiring_flash.ops.triton has no kernels")
    return kernels, None


def check_backend(backend: str) -> str:
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    return backend


def resolve_backend(backend: str, device: torch.device, semiring: Semiring, extras: bool = False) -> str:
    """'torch' or 'triton' for this call.

    'auto' takes Triton for CUDA tensors when it imports and supports the
    semiring (and no torch-only extra such as per-segment biases is asked
    for); 'triton' insists, and runs on CPU tensors under TRITON_INTERPRET=1.
    """
    check_backend(backend)
    if backend == "torch" or (backend == "auto" and device.type != "cuda"):
        return "torch"  # auto on CPU never imports Triton
    kernels, err = _triton_module()
    supported = semiring.triton_id is not None and semiring.n_potentials == 1 and not extras
    if backend == "auto":
        return "triton" if (kernels is not None and supported) else "torch"
    if kernels is None:
        raise NotImplementedError(f"backend='triton' is unavailable: {err}")
    if not supported:
        raise NotImplementedError(f"backend='triton' does not support {semiring!r} with these options; use backend='torch'")
    if device.type != "cuda" and os.environ.get("TRITON_INTERPRET") != "1":
        raise ValueError("backend='triton' needs CUDA tensors (or TRITON_INTERPRET=1 for CPU tensors)")
    return "triton"


@dataclass
class FactoredInputs:
    """Engine inputs for one or two (cross-entropy/KL) SegmentPotentials."""

    cum: torch.Tensor  # (P?, B, T+1, C) float64
    transition: torch.Tensor  # (P?, B, C, C)
    duration: torch.Tensor  # (P?, B, K, C)
    end: torch.Tensor  # (P?, B, C)
    entry: torch.Tensor  # (P?, B, C', C) plain potential into the first segment
    lengths: torch.Tensor


def factored_inputs(pots: list[SegmentPotentials], leaves: bool = False, keep_graph: bool = False) -> FactoredInputs:
    """Stack per-distribution inputs (leading P dim only when len(pots) == 2).

    With ``leaves`` the per-batch cum/transition/duration are detached leaves
    that require grad: their gradients are the compact marginals. With
    ``keep_graph`` those that already require grad stay attached to the
    user's potentials instead (differentiable marginals).
    """
    first = pots[0]
    for p in pots[1:]:
        if p.shape != first.shape:
            raise ValueError(f"both distributions need the same (B, T, K, C) and lengths; got {first.shape} and {p.shape}")
        check_values(signature(lengths=first.lengths, other_lengths=p.lengths), first.device,
                     lambda: [((p.lengths != first.lengths).any(), "both distributions need the same lengths")])

    def prep(x):
        if not leaves or (keep_graph and x.requires_grad):
            return x
        return x.detach().requires_grad_()

    parts = []
    for p in pots:
        trans = prep(p.transition_b())
        parts.append((prep(p.cum()), trans, prep(p.duration_b()), p.end_b(), p.entry_potential(trans)))
    if len(pots) == 1:
        return FactoredInputs(*parts[0], first.lengths)
    return FactoredInputs(*(torch.stack(z, 0) for z in zip(*parts)), first.lengths)


def entry_value(semiring: Semiring, entry: torch.Tensor, dtype) -> torch.Tensor:
    """τ(0, c) = ⊕_{c'} 1̄ ⊗ entry[c', c], as a semiring value (S, B, C)."""
    pot = entry if semiring.n_potentials > 1 else entry.unsqueeze(0)
    if semiring.plus_vjp is not None:  # log/max: 1̄ ⊗ w = w: skip building 1̄ (small-batch GPU calls are host-bound)
        return semiring.sum(pot, -2)
    B, C = pot.shape[1], pot.shape[-1]
    return semiring.matmul_potential(semiring.ones((B, C), dtype, entry.device), pot)


def factored_value(
    semiring: Semiring,
    inputs: FactoredInputs,
    backend: str = "auto",
    start_bias: torch.Tensor | None = None,
    seg_bias: torch.Tensor | None = None,
    checkpoint_every: int | None = None,
    create_graph: bool = False,
) -> torch.Tensor:
    """Semiring value (S, B) of factored potentials; ``create_graph``: twice differentiable (torch engine)."""
    tau0 = entry_value(semiring, inputs.entry, inputs.transition.dtype)
    args = (inputs.cum, inputs.transition, inputs.duration, tau0, inputs.end, inputs.lengths)
    extras = seg_bias is not None or checkpoint_every is not None or create_graph
    which = resolve_backend(backend, inputs.cum.device, semiring, extras=extras)
    if which == "triton":
        kernels, _ = _triton_module()
        return kernels.factored_scan_triton(semiring, *args, start_bias=start_bias)
    if seg_bias is None and checkpoint_every is None and linear_chain.supports(semiring, inputs.duration):
        return linear_chain.linear_chain_scan(semiring, *args, start_bias=start_bias)  # K = 1: a linear chain (plain autograd)
    return streaming.factored_scan(
        semiring, *args, start_bias=start_bias, seg_bias=seg_bias, checkpoint_every=checkpoint_every, create_graph=create_graph
    )


def edge_value(
    semiring: Semiring,
    edges: torch.Tensor,
    lengths: torch.Tensor,
    backend: str = "auto",
    checkpoint_every: int | None = None,
    create_graph: bool = False,
) -> torch.Tensor:
    """Semiring value (S, B) of torch-struct edges; ``lengths`` in tokens; ``create_graph`` as in factored_value."""
    which = resolve_backend(backend, edges.device, semiring, extras=checkpoint_every is not None or create_graph)
    if which == "triton":
        kernels, _ = _triton_module()
        return kernels.edge_scan_triton(semiring, edges, lengths)
    return streaming.edge_scan(semiring, edges, lengths, checkpoint_every=checkpoint_every, create_graph=create_graph)


def factored_viterbi(pots: SegmentPotentials, backend: str = "auto"):
    """(labels, starts, lengths) of the best segmentation from the Triton Viterbi
    kernel (forward with backpointers + device backtrace), from the linear-chain
    Viterbi at K = 1 on the torch engine, or None otherwise (callers then take
    the max-semiring gradient)."""
    triton = resolve_backend(backend, pots.device, MaxSemiring) == "triton"
    if not triton and pots.K != 1:
        return None
    viterbi = _triton_module()[0].viterbi_triton if triton else linear_chain.viterbi
    with torch.no_grad():  # no graph, and no detached copy of the potentials
        inputs = factored_inputs([pots])
        tau0 = entry_value(MaxSemiring, inputs.entry, inputs.transition.dtype)
        _, labels, starts = viterbi(inputs.cum, inputs.transition, inputs.duration, tau0, inputs.end, inputs.lengths)
    return labels, starts, inputs.lengths
