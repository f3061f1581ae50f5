"""Launchers and autograd Functions for the streaming scan kernels."""

from __future__ import annotations

import functools

import torch

from ..streaming import default_checkpoint_every
from .kernels import scan_bwd_kernel, scan_fwd_kernel
from ...validation import compute_dtype
from .semiring import ENTROPY, KMAX, LOG, MAX

__all__ = ["factored_scan_triton", "edge_scan_triton", "checkpoint_every"]


def checkpoint_every(T: int, K: int, every: int | None = None) -> int:
    """Δ of the kernels: the streaming engine's rule (≈ √(T·K)) or the caller's ``every``,
    raised to at least K (a checkpoint's K ring rows must lie in one block), at most T."""
    base = default_checkpoint_every(T, K) if every is None else int(every)
    return max(1, min(T, max(K, base)))


def _pow2(n: int) -> int:
    return 1 << max(0, (int(n) - 1).bit_length())


#: force num_warps for every launch (benchmark sweeps); None = heuristic
NUM_WARPS_OVERRIDE = None
#: keep the whole forward tape (no recompute in backward) when it takes at most this many bytes;
#: 128 MiB since the float64 adjoint tapes (B=1, T=10^5, K=100, C=8 needs 84 MB: 0.49 s kept vs 0.62 s recomputed, H200)
STORE_ALL_BYTES = 128 << 20


def _num_warps(elems: int) -> int:
    if NUM_WARPS_OVERRIDE:
        return int(NUM_WARPS_OVERRIDE)
    # measured on H200 (benchmarks/gpu_bench.py --sweep): per-step latency is set by the
    # cross-warp reductions, so few warps for small tiles, more only for big ones
    if elems <= 128:
        return 1
    if elems <= 512:
        return 2
    if elems <= 2048:
        return 4
    return 8


class _Meta:
    """Compile-time shape of one call: semiring, padded sizes, options."""

    def __init__(self, semiring, B, T, K, C, dtype, device, edges, has_sb, every=None):
        if semiring.triton_id is None:
            raise NotImplementedError(f"no Triton kernel for {semiring!r}")
        if semiring.n_potentials != 1:
            raise NotImplementedError("Triton kernels take one-distribution semirings")
        self.sr = semiring.triton_id
        self.S = int(semiring.size())
        self.KK = int(semiring.k) if self.sr == KMAX.value else 1
        self.SP = _pow2(self.S)
        self.B, self.T, self.K, self.C = B, T, K, C
        self.CP, self.KP = max(2, _pow2(C)), max(2, _pow2(K))
        self.dtype, self.device = dtype, device
        self.edges, self.has_sb = edges, has_sb
        self.delta = checkpoint_every(T, K, every)
        # Short sequences: when every tape row of the whole batch fits in STORE_ALL_BYTES the
        # forward keeps them all and the backward skips its recompute pass (one block).
        r_all = _pow2(T + 2 * K + 1)
        self.lse = lse = self.sr in (LOG.value, ENTROPY.value)  # logsumexp normalisers on the tape
        self.routes = routes = self.sr in (MAX.value, KMAX.value)  # argmax routes on the tape
        n64 = 1 + 2 * lse  # adjoint and logsumexp sums: float64 tapes
        n_arr = 2 + has_sb + 2 * routes + 2 * lse
        tape_bytes = B * 2 * r_all * self.CP * self.SP * (n_arr * (8 if dtype == torch.float64 else 4) + n64 * 8)
        self.store_all = every is None and tape_bytes <= STORE_ALL_BYTES
        if self.store_all:
            self.delta = T
        self.nblk = -(-T // self.delta)
        step = self.KP * self.CP * (self.CP if edges else 1) * self.SP
        self.num_warps = _num_warps(max(step, self.CP * self.CP * self.SP))
        # kernels index within one sequence with int32 (the batch offset is int64)
        per_seq = max((T + 1) * C, T * (K + 1) * C * C if edges else 0,
                      2 * _pow2(self.delta + 2 * K + 1) * self.CP * self.SP)
        if per_seq >= 2**31:
            raise NotImplementedError(f"one sequence needs {per_seq} elements; the kernels index one sequence with int32")

    def consts(self):
        return dict(SR=self.sr, KK=self.KK, S=self.S, CP=self.CP, KP=self.KP, SP=self.SP,
                    EDGES=self.edges, HAS_SB=self.has_sb)


    def tapes(self, R, n, dtype=None):
        """n tapes from one allocation (views of one buffer, each contiguous)."""
        buf = torch.empty(n, self.B, 2 * R, self.CP, self.SP, dtype=dtype or self.dtype, device=self.device)
        return buf.unbind(0)

    def bases(self, R):
        return torch.empty(self.B, 2 * R, 2, dtype=torch.float64, device=self.device)


@functools.lru_cache(maxsize=512)
def _cached_meta(*key):
    return _Meta(*key[:-2])


def _meta(*args) -> _Meta:
    """_Meta per call shape, cached (small calls are host-bound); the tuning globals are part of the key.
    torch.compile traces the plain constructor (it warns about lru_cache wrappers)."""
    if torch.compiler.is_compiling():
        return _Meta(*args)
    return _cached_meta(*args, NUM_WARPS_OVERRIDE, STORE_ALL_BYTES)


def _bwd_tape(m: _Meta, R):
    """Tape arrays of the backward (and of a store-all forward):
    tv, to, tp, tra, trt, ta, tb, tam, taz, ttm, ttz.

    One allocation per dtype, split into views: short calls are host-bound,
    and each allocation costs as much host time as a small kernel launch."""
    routed, norm = m.routes, m.lse
    want = dict(to=not m.edges, tp=m.has_sb, tam=norm, ttm=norm and not m.edges)
    names = ["tv"] + [k for k, v in want.items() if v]
    tapes = dict(zip(names, m.tapes(R, len(names))))
    # float64: the adjoints (ta) and the logsumexp sums (taz, ttz) the softmax weights are
    # normalised by, so the adjoint recursion conserves probability mass over 10^6 steps
    want64 = dict(ta=True, taz=norm, ttz=norm and not m.edges)
    names64 = [k for k, v in want64.items() if v]
    tapes.update(zip(names64, m.tapes(R, len(names64), torch.float64)))
    n_int = int(routed) + int(routed and not m.edges)
    ints = m.tapes(R, n_int, torch.int32) if n_int else ()
    tv = tapes["tv"]
    tra = ints[0] if n_int else tv
    trt = ints[1] if n_int > 1 else tv
    get = lambda k: tapes.get(k, tv)  # noqa: E731  (unused arrays alias tv; the kernel never touches them)
    return [tv, get("to"), get("tp"), tra, trt, get("ta"), m.bases(R), get("tam"), get("taz"), get("ttm"), get("ttz")]


def _fwd(m: _Meta, cum, trans, dur, tau0, end, sb, edges, lengths, save_ck: bool, backptr=None):
    """Launch the forward scan. Returns (value (S, B), saved state for the backward)."""
    dev = m.device
    full = bool(save_ck and m.store_all)
    if full:
        R = _pow2(m.delta + 2 * m.K + 1)
        tape = _bwd_tape(m, R)
        tv, to, tp, tra, trt, _, tb, tam, taz, ttm, ttz = tape
    else:
        R = _pow2(m.K + 1)
        tv, to = m.tapes(R, 2) if not m.edges else 2 * m.tapes(R, 1)
        tb = m.bases(R)
        tp = tra = trt = tam = taz = ttm = ttz = tv
        tape = None
    ck_needed = bool(save_ck and m.nblk > 1)
    if ck_needed:
        ckv = torch.empty(m.B, m.nblk, m.KP, m.CP, m.SP, dtype=m.dtype, device=dev)
        ckb = torch.empty(m.B, m.nblk, m.KP, 2, dtype=torch.float64, device=dev)
        ckn = torch.empty(m.B, m.nblk, 2, dtype=torch.float64, device=dev)
    else:
        ckv, ckb, ckn = tv, tb, tb
    value = torch.empty(m.SP, m.B, dtype=m.dtype, device=dev)
    scan_fwd_kernel[(m.B,)](
        cum, trans, dur, tau0, end, sb, edges, lengths,
        value, tv, to, tp, tra, trt, tb, ckv, ckb,
        *(backptr if backptr is not None else (tv, tv, tv)), ckn, tam, taz, ttm, ttz,
        m.B, m.T, m.C, m.K, R, m.delta, m.nblk,
        SAVE_CK=ck_needed, BACKPTR=backptr is not None, FULL=full,
        num_warps=m.num_warps, num_stages=1, **m.consts(),
    )
    return value[: m.S], (ckv, ckb, ckn, *(tape or []))


def _bwd(m: _Meta, grad_value, cum, trans, dur, tau0, end, sb, edges, lengths, saved):
    ckv, ckb, ckn, *tape = saved
    recompute = not tape
    if recompute:
        R = _pow2(m.delta + 2 * m.K + 1)
        tape = _bwd_tape(m, R)
    else:
        R = tape[0].shape[1] // 2
    tv, to, tp, tra, trt, ta, tb, tam, taz, ttm, ttz = tape
    # (S, B), any strides (the kernel takes them): the expanded ones of v.sum() need no copy
    gv = grad_value if grad_value.dtype == m.dtype else grad_value.to(m.dtype)
    if m.edges:
        gedge = torch.zeros_like(edges)
        gcum = gtr = gdur = gtau0 = gend = gsb = gedge
    else:  # every element is written by the kernel (rows past L as zeros): no fill launches
        gedge = cum
        gcum = torch.empty_like(cum)
        gtr = torch.empty_like(trans)
        gdur = torch.empty_like(dur)
        gtau0 = torch.empty_like(tau0)
        gend = torch.empty_like(end)
        gsb = torch.empty_like(sb) if m.has_sb else gcum
    scan_bwd_kernel[(m.B,)](
        cum, trans, dur, tau0, end, sb, edges, lengths, gv,
        tv, to, tp, tra, trt, ta, tb, ckv, ckb,
        tam, taz, ttm, ttz,
        gcum, gtr, gdur, gtau0, gend, gsb, gedge, ckn,
        m.B, m.T, m.C, m.K, R, m.delta, m.nblk, gv.stride(0), gv.stride(1),
        RECOMPUTE=recompute, num_warps=m.num_warps, num_stages=1, **m.consts(),
    )
    if m.edges:
        return gedge
    return gcum, gtr, gdur, gtau0, gend, (gsb if m.has_sb else None)


def _operands(m: _Meta, cum, trans, dur, tau0, end, sb, lengths):
    """Detached contiguous kernel operands: prefix sums in float64, potentials in the
    compute dtype, lengths int64 (a missing start bias aliases the prefix sums)."""
    cum_c = cum.detach().to(torch.float64).contiguous()
    cast = lambda x: x.detach().to(m.dtype).contiguous()  # noqa: E731
    sb_c = cast(sb) if sb is not None else cum_c
    len_c = lengths.to(device=cum.device, dtype=torch.int64).contiguous()
    return cum_c, cast(trans), cast(dur), cast(tau0), cast(end), sb_c, len_c


class _FactoredScan(torch.autograd.Function):
    @staticmethod
    def forward(ctx, m, cum, trans, dur, tau0, end, lengths, sb):
        save = any(ctx.needs_input_grad)
        cum_c, tr_c, dur_c, tau0_c, end_c, sb_c, len_c = _operands(m, cum, trans, dur, tau0, end, sb, lengths)
        value, ck = _fwd(m, cum_c, tr_c, dur_c, tau0_c, end_c, sb_c, cum_c, len_c, save)
        ctx.m = m
        ctx.has_sb = sb is not None
        ctx.save_for_backward(cum_c, tr_c, dur_c, tau0_c, end_c, sb_c if sb is not None else None, len_c, *ck)
        return value

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_value):
        cum_c, tr_c, dur_c, tau0_c, end_c, sb_c, len_c, *ck = ctx.saved_tensors
        m = ctx.m
        sb_arg = sb_c if sb_c is not None else cum_c
        gcum, gtr, gdur, gtau0, gend, gsb = _bwd(
            m, grad_value, cum_c, tr_c, dur_c, tau0_c, end_c, sb_arg, cum_c, len_c, ck)
        need = ctx.needs_input_grad
        pick = lambda g, i: g if need[i] else None  # noqa: E731
        return (None, pick(gcum, 1), pick(gtr, 2), pick(gdur, 3), pick(gtau0, 4), pick(gend, 5), None,
                pick(gsb, 7) if ctx.has_sb else None)


class _EdgeScan(torch.autograd.Function):
    @staticmethod
    def forward(ctx, m, edges, lengths):
        save = any(ctx.needs_input_grad)
        e_c = edges.detach().to(m.dtype).contiguous()
        len_c = lengths.to(device=edges.device, dtype=torch.int64).contiguous()
        value, ck = _fwd(m, e_c, e_c, e_c, e_c, e_c, e_c, e_c, len_c, save)
        ctx.m = m
        ctx.save_for_backward(e_c, len_c, *ck)
        return value

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_value):
        e_c, len_c, *ck = ctx.saved_tensors
        m = ctx.m
        g = _bwd(m, grad_value, e_c, e_c, e_c, e_c, e_c, e_c, e_c, len_c, ck)
        return None, g, None


def _check_lengths(lengths, B):
    if lengths.shape != (B,):
        raise ValueError(f"lengths must have shape ({B},), got {tuple(lengths.shape)}")


def _eager(apply):
    """Under torch.compile, ``apply`` runs outside the graph (one graph break; the kernels
    run as they are); in eager mode it is called directly (the disable wrapper costs host time)."""
    disabled = torch.compiler.disable(apply)
    return lambda *args: disabled(*args) if torch.compiler.is_compiling() else apply(*args)


# settle_impossible inside the same region: one graph break, not a second graph after it
_factored_apply = _eager(lambda sr, *args: sr.settle_impossible(_FactoredScan.apply(*args)))
_edge_apply = _eager(lambda sr, *args: sr.settle_impossible(_EdgeScan.apply(*args)))


def factored_scan_triton(semiring, cum, transition, duration, tau0, end, lengths, start_bias=None,
                         checkpoint_every=None):
    """Semiring value (S, B) of the factored streaming recurrence (see ``ops.streaming.factored_scan``).

    cum (B, T+1, C) float64; transition (B, C, C); duration (B, K, C); tau0 (S, B, C);
    end (B, C); lengths (B,) tokens; start_bias (B, T, C) optional. Compute dtype: tau0's.
    Differentiable w.r.t. every tensor argument; backward by the streaming kernel.
    """
    B, T1, C = cum.shape
    K = duration.shape[-2]
    _check_lengths(lengths, B)
    m = _meta(semiring, B, T1 - 1, K, C, tau0.dtype, cum.device, False, start_bias is not None, checkpoint_every)
    return _factored_apply(semiring, m, cum, transition, duration, tau0, end, lengths, start_bias)


def edge_scan_triton(semiring, edges, lengths, checkpoint_every=None):
    """Semiring value (S, B) over torch-struct edges (B, T, K+1, C, C); lengths (B,) in tokens."""
    B, T, K1, C, _ = edges.shape
    _check_lengths(lengths, B)
    m = _meta(semiring, B, T, K1 - 1, C, compute_dtype(edges.dtype), edges.device, True, False, checkpoint_every)
    return _edge_apply(semiring, m, edges, lengths)
