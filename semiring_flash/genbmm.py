"""Semiring batched matrix products with genbmm's API, without genbmm's CUDA build.

    from semiring_flash import genbmm
    genbmm.logbmm(a, b)      # out[b,i,j] = logsumexp_k a[b,i,k] + b[b,k,j]; backward: softmax weights
    genbmm.maxbmm(a, b)      # max_k a + b;  backward: indicator of the (first) argmax k
    genbmm.samplebmm(a, b)   # forward as logbmm; backward: indicator of one k ~ softmax_k(a + b)
    genbmm.prodmaxbmm(a, b)  # max_k a * b;  backward: the other factor at the argmax k

a (B, n, k), b (B, k, m) -> (B, n, m), one floating dtype, one device, as in harvardnlp's
genbmm (which torch-struct's Fast semirings call). Unlike the broadcast
``(a.unsqueeze(-1) + b.unsqueeze(-3)).logsumexp(-2)`` nothing of size B·n·k·m is stored:
memory O(B·n·m + B·n·k + B·k·m). CUDA tensors go to fused Triton kernels
(``ops/triton/bmm.py``); other tensors to the chunked PyTorch path (``ops/bmm_torch.py``).
float16/bfloat16 inputs are computed in float32, float64 in float64; results and gradients
come back in the input dtype. Gradients are exact and deterministic; logbmm is twice
differentiable (the second derivative always runs the PyTorch path). An output whose
terms are all −inf is −inf with zero gradients, never NaN (genbmm gives −1e9 there).
samplebmm draws its k's in the forward pass from torch's default generator, so
``torch.manual_seed`` makes it repeatable. ``BandedMatrix`` and ``banddiag`` are genbmm's
banded matrices (``semiring_flash.banded``), which torch-struct's semirings and Alignment use.
"""

from __future__ import annotations

import functools

import torch

from .banded import BandedMatrix, banddiag  # noqa: F401 (genbmm's banded matrices; torch-struct tests for the class)
from .ops import bmm_torch
from .ops.dispatch import choose_backend, optional_module
from .validation import check_same_device, check_tensor, compute_dtype

__all__ = ["logbmm", "maxbmm", "samplebmm", "prodmaxbmm", "BandedMatrix", "banddiag"]


def _implementation(backend: str, device: torch.device):
    """The module (bmm_torch or ops.triton.bmm) that runs this call; both have the same functions."""
    kernels = functools.partial(optional_module, "semiring_flash.ops.triton.bmm")
    return kernels()[0] if choose_backend(backend, device, kernels) == "triton" else bmm_torch


def _check_operands(a, b) -> None:
    check_tensor("a", a, 3)
    check_tensor("b", b, 3)
    check_same_device(a=a, b=b)
    if a.dtype != b.dtype:
        raise TypeError(f"a and b must have one dtype, got a {a.dtype} and b {b.dtype}")
    if a.shape[0] != b.shape[0] or a.shape[2] != b.shape[1]:
        raise ValueError(
            f"a must be (B, n, k) and b (B, k, m) with the same B and k; got a {tuple(a.shape)} and b {tuple(b.shape)}"
        )
    if a.shape[2] == 0:
        raise ValueError(f"the inner dimension k must be at least 1, got a {tuple(a.shape)} and b {tuple(b.shape)}")


def _up(x: torch.Tensor) -> torch.Tensor:
    return x.to(compute_dtype(x.dtype))


class _LogBmm(torch.autograd.Function):
    @staticmethod
    def forward(ctx, a, b, impl):
        out = impl.lse_forward(_up(a), _up(b))
        ctx.impl = impl
        ctx.save_for_backward(a, b, out)
        return out.to(a.dtype)

    @staticmethod
    def backward(ctx, grad_out):
        a, b, out = ctx.saved_tensors
        grad_a, grad_b = _LogBmmGrad.apply(a, b, out, grad_out, ctx.impl)
        return grad_a, grad_b, None


class _LogBmmGrad(torch.autograd.Function):
    """logbmm's backward as a Function of its own, so that create_graph=True (torch-struct's
    marginals) keeps the kernel backward and a second derivative is still exact."""

    @staticmethod
    def forward(ctx, a, b, out, grad_out, impl):
        grad_a, grad_b = impl.lse_backward(_up(a), _up(b), out, _up(grad_out))
        ctx.save_for_backward(a, b, out, grad_out)
        return grad_a.to(a.dtype), grad_b.to(b.dtype)

    @staticmethod
    def backward(ctx, gg_a, gg_b):
        a, b, out, grad_out = ctx.saved_tensors
        up = lambda x: None if x is None else _up(x)  # noqa: E731
        d_a, d_b, d_g = bmm_torch.lse_double_backward(_up(a), _up(b), out, _up(grad_out), up(gg_a), up(gg_b))
        # out is a function of (a, b): its dependence is already in d_a, d_b
        return d_a.to(a.dtype), d_b.to(b.dtype), None, d_g.to(grad_out.dtype), None


class _IndexScatter(torch.autograd.Function):
    """out[b,i,k] = Σ_j [index[b,i,j] = k] w[b,i,j]; linear in w, its adjoint is a gather."""

    @staticmethod
    def forward(ctx, w, index, K, impl):
        ctx.save_for_backward(index)
        return impl.index_scatter(_up(w), index, K).to(w.dtype)

    @staticmethod
    def backward(ctx, grad):
        (index,) = ctx.saved_tensors
        return bmm_torch.index_gather(grad, index), None, None, None


def _t(x: torch.Tensor) -> torch.Tensor:
    return x.transpose(1, 2)


class _ArgBmm(torch.autograd.Function):
    """maxbmm / prodmaxbmm / samplebmm: forward value, then gradients routed through one
    index per output (the argmax, or the sampled k), saved as int32 (B, n, m)."""

    @staticmethod
    def forward(ctx, a, b, kind, impl):
        ua, ub = _up(a), _up(b)
        if kind == "sample":
            out, index = impl.sample_forward(ua, ub)
        else:
            out, index = impl.argmax_forward(ua, ub, product=kind == "prodmax")
        ctx.kind, ctx.impl = kind, impl
        ctx.mark_non_differentiable(index)
        ctx.save_for_backward(a, b, index)
        return out.to(a.dtype), index

    @staticmethod
    def backward(ctx, grad_out, _grad_index):
        a, b, index = ctx.saved_tensors
        w_a = w_b = grad_out
        if ctx.kind == "prodmax":  # d(a_ik b_kj): b_kj for a, a_ik for b, at k = index[i, j]
            w_a = grad_out * bmm_torch.index_gather(_t(b), _t(index)).transpose(1, 2)
            w_b = grad_out * bmm_torch.index_gather(a, index)
        grad_a = _IndexScatter.apply(w_a, index, a.shape[2], ctx.impl)
        grad_b = _t(_IndexScatter.apply(_t(w_b), _t(index), b.shape[1], ctx.impl))
        return grad_a, grad_b, None, None


def logbmm(a: torch.Tensor, b: torch.Tensor, backend: str = "auto") -> torch.Tensor:
    """out[b, i, j] = logsumexp_k a[b, i, k] + b[b, k, j]; (B, n, k) x (B, k, m) -> (B, n, m)."""
    _check_operands(a, b)
    return _LogBmm.apply(a, b, _implementation(backend, a.device))


def maxbmm(a: torch.Tensor, b: torch.Tensor, backend: str = "auto") -> torch.Tensor:
    """out[b, i, j] = max_k a[b, i, k] + b[b, k, j]; the gradient goes to the first argmax k."""
    _check_operands(a, b)
    return _ArgBmm.apply(a, b, "max", _implementation(backend, a.device))[0]


def samplebmm(a: torch.Tensor, b: torch.Tensor, backend: str = "auto") -> torch.Tensor:
    """Forward as logbmm; the gradient of out[b, i, j] goes to one k drawn from softmax_k(a + b)."""
    _check_operands(a, b)
    return _ArgBmm.apply(a, b, "sample", _implementation(backend, a.device))[0]


def prodmaxbmm(a: torch.Tensor, b: torch.Tensor, backend: str = "auto") -> torch.Tensor:
    """out[b, i, j] = max_k a[b, i, k] * b[b, k, j]; gradients b[k, j] to a, a[i, k] to b at the first argmax k."""
    _check_operands(a, b)
    return _ArgBmm.apply(a, b, "prodmax", _implementation(backend, a.device))[0]
