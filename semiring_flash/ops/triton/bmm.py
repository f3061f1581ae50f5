"""Triton kernels for the semiring batched matmuls of ``semiring_flash.genbmm``.

Same functions, signatures and conventions as the PyTorch path ``ops/bmm_torch.py``
(its docstring lists them); ``ops/bmm_naive.py`` holds the broadcast references.

Layout. Every kernel is a tiled "matmul" over a (B, n, k) and (B, k, m) pair, given by
strides (transposed views cost nothing), one program per output tile, flattened into
grid axis 0 (batch-major) so that any B fits:

* ``_reduce_k_kernel``: out tile (BN, BM); loops over k in slices of BK, forms the
  (BN, BK, BM) (or, with ``FORWARD_K_AXIS = 2``, (BN, BM, BK)) terms a + b (or a * b)
  in registers and merges them into running
  accumulators: max and rescaled sum for logsumexp (flash-attention style), max and
  first argmax for max / prodmax, and for sample both the logsumexp and the argmax of
  terms + Gumbel noise (Philox ``tl.rand``, counter = global (b, i, k, j) index).
* ``_lse_grad_kernel``: grad_a tile (BN, BK) = Σ_j exp(a + b − out) · g, looping over j;
  grad_b is the same kernel on the transposed problem (b^T, a^T, out^T, g^T).
* ``_index_scatter_kernel``: (BN, BK) tile of Σ_j [index[i, j] = k] · w[i, j], looping
  over j; grad_b again through transposed strides.

Each output element is written once by one program, so results are bitwise repeatable
(no atomics). −inf inputs are legal: an all −inf output is −inf with index −1 and zero
gradients. Inputs are float32 or float64 (the caller upcasts half types); accumulators
take the input dtype.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

__all__ = ["lse_forward", "argmax_forward", "sample_forward", "lse_backward", "index_scatter"]

MODE_LSE, MODE_MAX, MODE_SAMPLE, MODE_PRODMAX = 0, 1, 2, 3


@triton.jit
def _tile_coords(N, M, BN: tl.constexpr, BM: tl.constexpr):
    """(batch, rows, cols) of this program's (BN, BM) tile; programs are batch-major."""
    pid = tl.program_id(0)
    tiles_n = tl.cdiv(N, BN)
    tiles_m = tl.cdiv(M, BM)
    per_batch = tiles_n * tiles_m
    bid = pid // per_batch
    rest = pid % per_batch
    rows = (rest // tiles_m) * BN + tl.arange(0, BN)
    cols = (rest % tiles_m) * BM + tl.arange(0, BM)
    return bid.to(tl.int64), rows.to(tl.int64), cols.to(tl.int64)


@triton.jit
def _along_k(x, KAX: tl.constexpr):
    """(BK,) vector -> the k axis of the 3-D term tile."""
    if KAX == 2:
        y = x[None, None, :]
    else:
        y = x[None, :, None]
    return y


@triton.jit
def _along_j(x, KAX: tl.constexpr):
    """(BM,) vector -> the j axis of the 3-D term tile."""
    if KAX == 2:
        y = x[None, :, None]
    else:
        y = x[None, None, :]
    return y


@triton.jit
def _per_ij(x, KAX: tl.constexpr):
    """(BN, BM) tile -> broadcast along the k axis of the 3-D term tile."""
    if KAX == 2:
        y = x[:, :, None]
    else:
        y = x[:, None, :]
    return y


@triton.jit
def _reduce_k_kernel(
    A, Bm, OUT, IDX, seed,
    N, K, M,
    sa_b, sa_n, sa_k, sb_b, sb_k, sb_m,
    MODE: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr, BM: tl.constexpr, KAX: tl.constexpr,
):
    """Term tile (BN, BK, BM) (KAX = 1) or (BN, BM, BK) (KAX = 2): the layout only
    changes speed (benchmarks/genbmm_bench.py --sweep), not the numbers."""
    bid, rn, rm = _tile_coords(N, M, BN, BM)
    dt = OUT.dtype.element_ty
    a_ptr = A + bid * sa_b
    b_ptr = Bm + bid * sb_b
    best = tl.full((BN, BM), float("-inf"), dt)  # running max of the terms (lse, max, prodmax)
    total = tl.zeros((BN, BM), dt)  # Σ exp(term − best) (lse, sample)
    noisy = tl.full((BN, BM), float("-inf"), dt)  # running max of term + Gumbel (sample)
    index = tl.full((BN, BM), -1, tl.int32)
    row_ok = rn < N
    col_ok = rm < M
    for k0 in range(0, K, BK):
        rk = k0 + tl.arange(0, BK)
        k_ok = rk < K
        a = tl.load(a_ptr + rn[:, None] * sa_n + rk[None, :] * sa_k, mask=row_ok[:, None] & k_ok[None, :], other=0.0)
        if KAX == 2:  # b as a (BM, BK) tile: terms a[:, None, :] ∘ b[None, :, :]
            b = tl.load(b_ptr + rm[:, None] * sb_m + rk[None, :] * sb_k, mask=col_ok[:, None] & k_ok[None, :], other=0.0)
            x, y = a[:, None, :], b[None, :, :]
        else:  # b as a (BK, BM) tile: terms a[:, :, None] ∘ b[None, :, :]
            b = tl.load(b_ptr + rk[:, None] * sb_k + rm[None, :] * sb_m, mask=k_ok[:, None] & col_ok[None, :], other=0.0)
            x, y = a[:, :, None], b[None, :, :]
        if MODE == 3:
            v = x * y
        else:
            v = x + y
        v = tl.where(_along_k(k_ok, KAX), v, float("-inf"))  # padding k's are 0̄
        if MODE == 0 or MODE == 2:
            new_best = tl.maximum(best, tl.max(v, axis=KAX))
            ref = tl.where(new_best == float("-inf"), 0.0, new_best)
            total = total * tl.exp(best - ref) + tl.sum(tl.exp(v - _per_ij(ref, KAX)), axis=KAX)
            best = new_best
        if MODE == 2:
            flat = ((bid * N + rn[:, None, None]) * K + _along_k(rk, KAX)) * M + _along_j(rm, KAX)
            u = tl.rand(seed, flat).to(dt)
            v = v - tl.log(-tl.log(u))  # Gumbel noise; u = 0 gives −inf, never chosen
        if MODE != 0:
            top = tl.max(v, axis=KAX)
            first = tl.min(tl.where(v == _per_ij(top, KAX), _along_k(rk.to(tl.int32), KAX), K), axis=KAX)
            better = top > (noisy if MODE == 2 else best)  # strict: earlier k's keep ties
            index = tl.where(better, first, index)
            if MODE == 2:
                noisy = tl.where(better, top, noisy)
            else:
                best = tl.where(better, top, best)
    out_off = bid * N * M + rn[:, None] * M + rm[None, :]
    ok = row_ok[:, None] & col_ok[None, :]
    if MODE == 0 or MODE == 2:
        safe = tl.where(total > 0, total, 1.0)
        tl.store(OUT + out_off, tl.where(total > 0, tl.log(safe) + best, float("-inf")), mask=ok)
    else:
        tl.store(OUT + out_off, best, mask=ok)
    if MODE != 0:
        tl.store(IDX + out_off, index, mask=ok)


@triton.jit
def _lse_grad_kernel(
    A, Bm, OUT, G, GA,
    N, K, M,
    sa_b, sa_n, sa_k, sb_b, sb_k, sb_m, so_b, so_n, so_m, sg_b, sg_n, sg_m, sr_b, sr_n, sr_k,
    BN: tl.constexpr, BK: tl.constexpr, BM: tl.constexpr,
):
    """GA[b, i, k] = Σ_j exp(A[b,i,k] + Bm[b,k,j] − OUT[b,i,j]) · G[b,i,j]; tile (BN, BK)."""
    bid, rn, rk = _tile_coords(N, K, BN, BK)
    dt = GA.dtype.element_ty
    row_ok = rn < N
    k_ok = rk < K
    a = tl.load(A + bid * sa_b + rn[:, None] * sa_n + rk[None, :] * sa_k,
                mask=row_ok[:, None] & k_ok[None, :], other=float("-inf"))
    acc = tl.zeros((BN, BK), dt)
    for j0 in range(0, M, BM):
        rj = (j0 + tl.arange(0, BM)).to(tl.int64)
        j_ok = rj < M
        b = tl.load(Bm + bid * sb_b + rk[:, None] * sb_k + rj[None, :] * sb_m,
                    mask=k_ok[:, None] & j_ok[None, :], other=float("-inf"))
        ij_ok = row_ok[:, None] & j_ok[None, :]
        out = tl.load(OUT + bid * so_b + rn[:, None] * so_n + rj[None, :] * so_m, mask=ij_ok, other=0.0)
        g = tl.load(G + bid * sg_b + rn[:, None] * sg_n + rj[None, :] * sg_m, mask=ij_ok, other=0.0)
        ref = tl.where(out == float("-inf"), 0.0, out)  # then every term is −inf too: weight 0
        w = tl.exp(a[:, :, None] + b[None, :, :] - ref[:, None, :])
        acc += tl.sum(w * g[:, None, :], axis=2)
    tl.store(GA + bid * sr_b + rn[:, None] * sr_n + rk[None, :] * sr_k, acc, mask=row_ok[:, None] & k_ok[None, :])


@triton.jit
def _index_scatter_kernel(
    W, IDX, OUT,
    N, K, M,
    sw_b, sw_n, sw_m, si_b, si_n, si_m, sr_b, sr_n, sr_k,
    BN: tl.constexpr, BK: tl.constexpr, BM: tl.constexpr,
):
    """OUT[b, i, k] = Σ_j [IDX[b,i,j] = k] · W[b,i,j]; tile (BN, BK)."""
    bid, rn, rk = _tile_coords(N, K, BN, BK)
    dt = OUT.dtype.element_ty
    row_ok = rn < N
    acc = tl.zeros((BN, BK), dt)
    for j0 in range(0, M, BM):
        rj = (j0 + tl.arange(0, BM)).to(tl.int64)
        ij_ok = row_ok[:, None] & (rj < M)[None, :]
        idx = tl.load(IDX + bid * si_b + rn[:, None] * si_n + rj[None, :] * si_m, mask=ij_ok, other=-1)
        w = tl.load(W + bid * sw_b + rn[:, None] * sw_n + rj[None, :] * sw_m, mask=ij_ok, other=0.0)
        hit = idx[:, None, :] == rk[None, :, None].to(tl.int32)
        acc += tl.sum(tl.where(hit, w[:, None, :], 0.0), axis=2)
    tl.store(OUT + bid * sr_b + rn[:, None] * sr_n + rk[None, :] * sr_k, acc, mask=row_ok[:, None] & (rk < K)[None, :])


# --------------------------------------------------------------------------------------
# launchers
# --------------------------------------------------------------------------------------
#: tile sizes (rows, inner, cols); the (BN, BK, BM) term tile lives in registers. 16 x 16 x 16
#: with 4 warps was the fastest logbmm forward + backward of benchmarks/genbmm_bench.py --sweep
#: on an H200 (B = 8, n = k = m = 1024; docs/genbmm.md)
TILE_N, TILE_K, TILE_M = 16, 16, 16
NUM_WARPS = 4
#: axis of k in the forward's term tile: 1 = (BN, BK, BM), 2 = (BN, BM, BK)
FORWARD_K_AXIS = 1


def _block(size: int, cap: int) -> int:
    return min(cap, max(2, triton.next_power_of_2(int(size))))


def _grid(B: int, rows: int, cols: int, br: int, bc: int):
    return (B * triton.cdiv(rows, br) * triton.cdiv(cols, bc),)


def _reduce_k(a, b, mode, seed=0):
    B, N, K = a.shape
    M = b.shape[2]
    out = torch.empty((B, N, M), dtype=a.dtype, device=a.device)
    index = torch.empty((B, N, M), dtype=torch.int32, device=a.device) if mode != MODE_LSE else out
    if out.numel() == 0:
        return out, index
    bn, bk, bm = _block(N, TILE_N), _block(K, TILE_K), _block(M, TILE_M)
    _reduce_k_kernel[_grid(B, N, M, bn, bm)](
        a, b, out, index, seed, N, K, M, *a.stride(), *b.stride(),
        MODE=mode, BN=bn, BK=bk, BM=bm, KAX=FORWARD_K_AXIS, num_warps=NUM_WARPS,
    )
    return out, index


def lse_forward(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return _reduce_k(a, b, MODE_LSE)[0]


def argmax_forward(a: torch.Tensor, b: torch.Tensor, product: bool = False):
    return _reduce_k(a, b, MODE_PRODMAX if product else MODE_MAX)


def sample_forward(a: torch.Tensor, b: torch.Tensor):
    # the seed comes from torch's default (CPU) generator: torch.manual_seed repeats a draw
    seed = int(torch.randint(0, 2**31 - 1, (1,)).item())
    return _reduce_k(a, b, MODE_SAMPLE, seed)


def _lse_grad(a, b, out, g, grad):
    B, N, K = a.shape
    M = b.shape[2]
    bn, bk, bm = _block(N, TILE_N), _block(K, TILE_K), _block(M, TILE_M)
    _lse_grad_kernel[_grid(B, N, K, bn, bk)](
        a, b, out, g, grad, N, K, M,
        *a.stride(), *b.stride(), *out.stride(), *g.stride(), *grad.stride(),
        BN=bn, BK=bk, BM=bm, num_warps=NUM_WARPS,
    )


def lse_backward(a, b, out, grad_out):
    grad_a, grad_b = torch.empty_like(a), torch.empty_like(b)
    if a.numel() and b.numel() and out.numel():
        _lse_grad(a, b, out, grad_out, grad_a)
        t = lambda x: x.transpose(1, 2)  # noqa: E731  (grad_b^T is grad_a of the transposed problem)
        _lse_grad(t(b), t(a), t(out), t(grad_out), t(grad_b))
    else:
        grad_a.zero_(), grad_b.zero_()
    return grad_a, grad_b


def index_scatter(w: torch.Tensor, index: torch.Tensor, K: int) -> torch.Tensor:
    B, N, M = w.shape
    out = torch.empty((B, N, K), dtype=w.dtype, device=w.device)
    if out.numel() == 0:
        return out
    if M == 0:
        return out.zero_()
    bn, bk, bm = _block(N, TILE_N), _block(K, TILE_K), _block(M, TILE_M)
    _index_scatter_kernel[_grid(B, N, K, bn, bk)](
        w, index, out, N, K, M, *w.stride(), *index.stride(), *out.stride(),
        BN=bn, BK=bk, BM=bm, num_warps=NUM_WARPS,
    )
    return out
