"""Semiring batched matmuls in plain PyTorch, chunked over k.

The terms a[b, i, k] ∘ b[b, k, j] are formed for a slice of k at a time (B, n, kc, m),
with kc chosen so that a slice holds at most ``CHUNK_ELEMENTS`` elements (kc ≥ 1, so the
worst case is one (B, n, 1, m) slice): memory O(B·n·m) instead of the O(B·n·k·m) of the
broadcast in ``bmm_naive``. Reductions over k are merged across slices online (running
max and rescaled sum, as in flash attention), so results are exact, not approximations.

All functions take and return tensors of one floating dtype (the caller picks float32
or float64), never build autograd graphs of their own (callers run them under no_grad
or inside autograd Functions), and are deterministic. Conventions, shared with the
Triton kernels in ``ops/triton/bmm.py``:

* an output whose terms are all −inf is −inf, and its gradients are 0 (never NaN);
* argmax indices are int32, the FIRST k reaching the max, and −1 when every term is −inf;
* ``samplebmm`` draws k with probability softmax_k(a + b) by the Gumbel-max trick
  (argmax_k of a + b + independent Gumbel noise), from torch's generator here.

Functions: lse_forward, argmax_forward, sample_forward, lse_backward, index_scatter
(the same names and signatures in ``ops/triton/bmm.py``), plus index_gather and
lse_double_backward (PyTorch only).
"""

from __future__ import annotations

import torch

CHUNK_ELEMENTS = 1 << 24  # largest (B, n, kc, m) slice: 64 MiB in float32


def k_slices(B: int, n: int, K: int, m: int, budget: int | None = None):
    """Consecutive slices of range(K) whose (B, n, kc, m) terms fit ``budget`` elements."""
    budget = CHUNK_ELEMENTS if budget is None else budget
    kc = max(1, budget // max(1, B * n * m))
    return [slice(s, min(K, s + kc)) for s in range(0, K, kc)]


def _terms(a, b, ks, product=False):
    x, y = a[:, :, ks, None], b[:, None, ks, :]  # (B, n, kc, 1), (B, 1, kc, m)
    return x * y if product else x + y


def _finite_or_zero(x: torch.Tensor) -> torch.Tensor:
    """−inf → 0, so that (−inf) − x never meets (−inf) − (−inf) = NaN."""
    return torch.where(torch.isneginf(x), torch.zeros_like(x), x)


def lse_forward(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """out[b, i, j] = logsumexp_k a[b, i, k] + b[b, k, j], shape (B, n, m)."""
    B, n, K = a.shape
    m = b.shape[2]
    best = a.new_full((B, n, m), float("-inf"))
    total = a.new_zeros((B, n, m))
    for ks in k_slices(B, n, K, m):
        v = _terms(a, b, ks)
        new_best = torch.maximum(best, v.amax(2))
        ref = _finite_or_zero(new_best)
        total = total * torch.exp(best - ref) + torch.exp(v - ref.unsqueeze(2)).sum(2)
        best = new_best
    return torch.where(total > 0, torch.log(total) + _finite_or_zero(best), best)


def sample_forward(a: torch.Tensor, b: torch.Tensor):
    """(logbmm(a, b), one k per output drawn from softmax_k(a + b), int32; −1 where all terms are −inf)."""
    return lse_forward(a, b), argmax_forward(a, b, gumbel=True)[1]


def argmax_forward(a: torch.Tensor, b: torch.Tensor, product: bool = False, gumbel: bool = False):
    """(max_k v, first argmax k as int32, −1 where all v = −inf) of v = a + b (or a * b);
    with ``gumbel`` the argmax is of v + Gumbel noise (a sample of k ~ softmax_k(v))."""
    B, n, K = a.shape
    m = b.shape[2]
    best = a.new_full((B, n, m), float("-inf"))
    index = torch.full((B, n, m), -1, dtype=torch.int64, device=a.device)
    for ks in k_slices(B, n, K, m):
        v = _terms(a, b, ks, product)
        if gumbel:
            v = v - torch.log(-torch.log(torch.rand_like(v)))  # rand in [0, 1): noise in [-inf, +inf)
        top = v.amax(2)
        ks_range = torch.arange(ks.start, ks.stop, device=a.device).view(1, 1, -1, 1)
        first = torch.where(v == top.unsqueeze(2), ks_range, K).amin(2)
        better = top > best  # strict: an earlier slice keeps ties
        best = torch.where(better, top, best)
        index = torch.where(better, first, index)
    return best, index.to(torch.int32)


def index_scatter(w: torch.Tensor, index: torch.Tensor, K: int) -> torch.Tensor:
    """out[b, i, k] = Σ_j [index[b, i, j] = k] · w[b, i, j], shape (B, n, K).

    The backward of the argmax-type products; a deterministic compare-and-sum instead of
    scatter_add (whose CUDA atomics change the summation order from run to run)."""
    B, n, m = w.shape
    out = w.new_zeros((B, n, K))
    index = index.unsqueeze(2)
    for ks in k_slices(B, n, K, m):
        ks_range = torch.arange(ks.start, ks.stop, device=w.device).view(1, 1, -1, 1)
        hit = index == ks_range
        out[:, :, ks] = torch.where(hit, w.unsqueeze(2), torch.zeros((), dtype=w.dtype, device=w.device)).sum(3)
    return out


def index_gather(g: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """out[b, i, j] = g[b, i, index[b, i, j]] (0 where index = −1): the adjoint of index_scatter."""
    valid = index >= 0
    picked = g.gather(2, index.clamp(min=0).long())
    return torch.where(valid, picked, torch.zeros_like(picked))


def lse_backward(a, b, out, grad_out):
    """(grad_a, grad_b) of logbmm: Σ_j P[b,i,k,j] g[b,i,j] and Σ_i P[b,i,k,j] g[b,i,j],
    with P = exp(a + b − out) recomputed slice by slice."""
    B, n, K = a.shape
    m = b.shape[2]
    ref = _finite_or_zero(out).unsqueeze(2)
    g = grad_out.unsqueeze(2)
    grad_a, grad_b = a.new_zeros(a.shape), b.new_zeros(b.shape)
    for ks in k_slices(B, n, K, m):
        pg = torch.exp(_terms(a, b, ks) - ref) * g
        grad_a[:, :, ks] = pg.sum(3)
        grad_b[:, ks, :] = pg.sum(1)
    return grad_a, grad_b


def lse_double_backward(a, b, out, grad_out, gg_a, gg_b):
    """Gradients (d_a, d_b, d_grad_out) of <gg_a, grad_a> + <gg_b, grad_b>, where
    (grad_a, grad_b) = lse_backward(a, b, logbmm(a, b), grad_out); gg_a or gg_b may be None.

    With P = softmax_k(a + b) and c[i,k,j] = gg_a[i,k] + gg_b[k,j]:
    d_grad_out[i,j] = Σ_k P c =: cbar[i,j], and d(a + b)[i,k,j] = g[i,j] P (c − cbar)."""
    B, n, K = a.shape
    m = b.shape[2]
    gg_a = a.new_zeros(a.shape) if gg_a is None else gg_a
    gg_b = b.new_zeros(b.shape) if gg_b is None else gg_b
    ref = _finite_or_zero(out).unsqueeze(2)
    slices = k_slices(B, n, K, m)

    def weights_and_c(ks):
        p = torch.exp(_terms(a, b, ks) - ref)
        return p, gg_a[:, :, ks, None] + gg_b[:, None, ks, :]

    cbar = a.new_zeros(out.shape)
    for ks in slices:
        p, c = weights_and_c(ks)
        cbar += (p * c).sum(2)
    d_a, d_b = a.new_zeros(a.shape), b.new_zeros(b.shape)
    g = grad_out.unsqueeze(2)
    for ks in slices:
        p, c = weights_and_c(ks)
        dv = g * p * (c - cbar.unsqueeze(2))
        d_a[:, :, ks] = dv.sum(3)
        d_b[:, ks, :] = dv.sum(1)
    return d_a, d_b, cbar
