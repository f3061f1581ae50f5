"""Gluon (``triton.experimental.gluon``) forward variants: the register ring of fwd_variants.py
with explicit layouts (idea (b) of issue 11). Cannot run under TRITON_INTERPRET=1: GPU only
(benchmarks/latency/run_gpu.py); ptx_proxy.py compiles them for sm_90 without a GPU.

Layout P3 of the ring tile (CP labels, KO, LS), slot = ko·LS + lane:
    labels along NW warps and LW lanes (CP/(NW·LW) per thread), KO = KP/LS slots in
    registers, LS = 32/LW lanes along slots (LW > 1: fewer shuffle levels, more registers).
  * α(c) = logsumexp over the slots: in-thread over KO, then warp shuffles over the lanes —
    no shared memory, no barrier;
  * τ(c) = logsumexp_c' α(c') + trans[c', c] on the (c, c') tile S1 = SliceLayout(1, P3)
    (c along warps as in the ring, c' along lanes): α moves once from "c along warps" to
    "c' along lanes, every warp a copy" — the step's only cross-warp exchange (shared memory
    + barrier); the sum over c' is then warp shuffles and τ lands in the ring's own label
    layout, so inserting it at slot t mod KP moves no data;
  * max_c α(c) (the next normaliser) comes from the exchanged copy: shuffles only.
Numerics and inputs as fwd_variants.regring (float64 prefix differences and BASE, −inf safe).
"""

from __future__ import annotations

import functools

import torch
from triton.experimental import gluon
from triton.experimental.gluon import language as gl

from .fwd_variants import _check, _pow2, rotated_durations


@gluon.jit
def _lse_last(x, AXIS: gl.constexpr):
    """logsumexp over AXIS (−inf where every term is −inf), two passes."""
    m = gl.max(x, axis=AXIS)
    ms = gl.where(m == float("-inf"), 0.0, m)
    s = gl.sum(gl.exp(x - gl.expand_dims(ms, AXIS)), axis=AXIS)
    return ms + gl.log(s)


# max over the 32 lanes of a warp in one instruction: redux.sync is integer-only on sm_90, so
# floats go through the order-preserving map x -> x ^ 0x7FFFFFFF for negative bit patterns
_REDUX_MAX = gl.constexpr("""{ .reg .s32 k; .reg .pred p;
  setp.lt.s32 p, $1, 0; xor.b32 k, $1, 0x7FFFFFFF; selp.b32 k, k, $1, p;
  redux.sync.max.s32 k, k, 0xffffffff;
  setp.lt.s32 p, k, 0; xor.b32 $0, k, 0x7FFFFFFF; selp.b32 $0, $0, k, p; }""")


@gluon.jit
def _warp_max(x):
    """Element-wise max of x over the warp's 32 lanes (every lane gets it); needs a layout whose
    lanes all lie along the reduced axis (LW = 1) and −inf/finite values (no NaN)."""
    r = gl.inline_asm_elementwise(_REDUX_MAX, "=r,r", [x.to(gl.int32, bitcast=True)], dtype=gl.int32,
                                  is_pure=True, pack=1)
    return r.to(gl.float32, bitcast=True)


@gluon.jit
def _lse_lanes(x, REDUX: gl.constexpr):
    """logsumexp over axis 1 of a (c, lanes) tile; REDUX: the max by one redux.sync, its 1-D
    copy (needed only at the end) by shuffles off the exp/sum path."""
    if REDUX:
        mw = _warp_max(x)
        mww = gl.where(mw == float("-inf"), 0.0, mw)
        s = gl.sum(gl.exp(x - mww), axis=1)
        ms = gl.max(mww, axis=1)
        return ms + gl.log(s)
    else:
        return _lse_last(x, 1)


@gluon.jit(do_not_specialize=["T"])
def gluon_ring_kernel(cum_ptr, trans_ptr, rot_ptr, tau0_ptr, end_ptr, len_ptr, out_ptr, B, T, C, K,
                      CP: gl.constexpr, KP: gl.constexpr, NW: gl.constexpr, LW: gl.constexpr,
                      REDUX: gl.constexpr):
    LS: gl.constexpr = 32 // LW
    KO: gl.constexpr = KP // LS
    P3: gl.constexpr = gl.BlockedLayout([CP // (NW * LW), KO, 1], [LW, 1, LS], [NW, 1, 1], [2, 1, 0])
    S1: gl.constexpr = gl.SliceLayout(1, P3)  # (c, lane) / (c, c') tiles
    LC: gl.constexpr = gl.SliceLayout(1, S1)  # a label vector, labels along warps (the ring's)
    LR: gl.constexpr = gl.SliceLayout(0, S1)  # a label vector along lanes, every warp a copy
    S2: gl.constexpr = gl.SliceLayout(2, P3)
    b = gl.program_id(0).to(gl.int64)
    L = gl.minimum(gl.maximum(gl.load(len_ptr + b).to(gl.int32), 0), T)
    cum_b = cum_ptr + b * (T + 1) * C
    rot_b = rot_ptr + b * CP * (2 * KP)
    c3 = gl.expand_dims(gl.expand_dims(gl.arange(0, CP, layout=gl.SliceLayout(1, S2)), 1), 2)
    ko3 = gl.expand_dims(gl.expand_dims(gl.arange(0, KO, layout=gl.SliceLayout(0, S2)), 0), 2)
    l3 = gl.expand_dims(gl.expand_dims(gl.arange(0, LS, layout=gl.SliceLayout(0, S1)), 0), 1)
    slot = ko3 * LS + l3  # (1, KO, LS)
    rot_off = c3 * (2 * KP) + slot  # (CP, KO, LS)
    cl = gl.arange(0, CP, layout=LC)
    cr = gl.arange(0, CP, layout=LR)
    c2 = gl.expand_dims(cl, 1)  # c
    cp2 = gl.expand_dims(cr, 0)  # c'
    trT = gl.load(trans_ptr + b * C * C + cp2 * C + c2, mask=(c2 < C) & (cp2 < C), other=float("-inf"))
    tau0 = gl.load(tau0_ptr + b * C + cl, mask=cl < C, other=float("-inf"))
    tau0r = gl.load(tau0_ptr + b * C + cr, mask=cr < C, other=float("-inf"))
    cum0 = gl.load(cum_b + cl, mask=cl < C, other=0.0)
    zero3 = gl.full([CP, KO, LS], 0.0, gl.float32, layout=P3)
    ring = gl.where(slot == 0, gl.expand_dims(gl.expand_dims(tau0, 1), 1) + zero3, float("-inf"))
    g = gl.where(slot == 0, gl.expand_dims(gl.expand_dims(-cum0, 1), 1) + zero3.to(gl.float64), 0.0)
    m0 = gl.max(tau0r, axis=0)
    base = gl.where(m0 > float("-inf"), m0, 0.0).to(gl.float64)  # BASE(1)
    bl = base * 0.0
    alpha = gl.full([CP], float("-inf"), gl.float32, layout=LC)
    cum_t = gl.load(cum_b + gl.minimum(1, L) * C + cl, mask=cl < C, other=0.0)
    dw = gl.load(rot_b + ((-1) & (KP - 1)) + rot_off)
    for t in range(1, L + 1):
        # next step's terms depend on t only: issued now, used next iteration
        cum_n = gl.load(cum_b + gl.minimum(t + 1, L) * C + cl, mask=cl < C, other=0.0)
        dw_n = gl.load(rot_b + ((-(t + 1)) & (KP - 1)) + rot_off)
        a_t = gl.expand_dims(gl.expand_dims(cum_t - base, 1), 1)
        cand = ring + (g + a_t).to(gl.float32) + dw
        if REDUX:  # registers, then one redux.sync per label for the max
            mw = _warp_max(gl.max(cand, axis=1))  # (CP, LS) S1, equal over the lanes
            mww = gl.where(mw == float("-inf"), 0.0, mw)
            s = gl.sum(gl.sum(gl.exp(cand - gl.expand_dims(mww, 1)), axis=1), axis=1)
            alpha = gl.max(mww, axis=1) + gl.log(s)
        else:
            m = gl.max(gl.max(cand, axis=1), axis=1)  # (CP,) LC: registers, then shuffles
            ms = gl.where(m == float("-inf"), 0.0, m)
            e = gl.exp(cand - gl.expand_dims(gl.expand_dims(ms, 1), 1))
            alpha = ms + gl.log(gl.sum(gl.sum(e, axis=1), axis=1))
        ar = gl.convert_layout(alpha, LR)  # the one cross-warp exchange
        tau = _lse_lanes(gl.expand_dims(ar, 0) + trT, REDUX)  # (CP,) LC
        sh = gl.max(ar, axis=0)
        new = slot == (t & (KP - 1))
        ring = gl.where(new, gl.expand_dims(gl.expand_dims(tau, 1), 1) + zero3, ring)
        g = gl.where(new, gl.expand_dims(gl.expand_dims(base - cum_t, 1), 1) + zero3.to(gl.float64), g)
        bl = base
        base = base + gl.where(sh > float("-inf"), sh, 0.0).to(gl.float64)
        cum_t = cum_n
        dw = dw_n
    e_end = gl.load(end_ptr + b * C + cl, mask=cl < C, other=float("-inf"))
    x = alpha + e_end
    mz = gl.max(x, axis=0)
    msz = gl.where(mz == float("-inf"), 0.0, mz)
    z = msz + gl.log(gl.sum(gl.exp(x - msz), axis=0))
    gl.store(out_ptr + b, z.to(gl.float64) + bl)


def _sizes(K, C, num_warps, label_lanes):
    """(KP, CP): KP > K a power of two filling the slot lanes; CP covers the label warps x lanes."""
    return max(32 // label_lanes, _pow2(K + 1)), max(num_warps * label_lanes, _pow2(C))


def gluon_ring(cum, transition, duration, tau0, end, lengths, *, num_warps=4, label_lanes=1, redux=False):
    """log Z (B,) float64 by ``gluon_ring_kernel``."""
    B, T, K, C = _check(cum, transition, duration, tau0, end, lengths)
    KP, CP = _sizes(K, C, num_warps, label_lanes)
    if redux and label_lanes != 1:
        raise ValueError(f"redux needs label_lanes=1 (whole warps along the reduced axis), got {label_lanes}")
    f32 = lambda x: x.detach().to(torch.float32).contiguous()  # noqa: E731
    out = torch.empty(B, dtype=torch.float64, device=cum.device)
    gluon_ring_kernel[(B,)](
        cum.detach().to(torch.float64).contiguous(), f32(transition), rotated_durations(duration, KP, CP), f32(tau0),
        f32(end), lengths.to(device=cum.device, dtype=torch.int64).contiguous(), out, B, T, C, K,
        CP=CP, KP=KP, NW=num_warps, LW=label_lanes, REDUX=redux, num_warps=num_warps)
    return out


def kernel_config(name: str, K: int, C: int):
    kw = GLUON_VARIANTS[name].keywords
    nw, lw = kw["num_warps"], kw.get("label_lanes", 1)
    KP, CP = _sizes(K, C, nw, lw)
    return gluon_ring_kernel, dict(CP=CP, KP=KP, NW=nw, LW=lw, REDUX=kw.get("redux", False)), nw


#: gluon_w{warps}[_l{label lanes}]: warps x label lanes = 8 covers C = 8 with one label per thread
GLUON_VARIANTS = {f"gluon_w{w}" + (f"_l{lw}" if lw > 1 else ""): functools.partial(gluon_ring, num_warps=w, label_lanes=lw)
                  for w, lw in ((8, 1), (4, 1), (2, 1), (1, 1), (4, 2), (2, 4), (1, 8), (2, 2), (1, 4))}
#: _redux: the logsumexp maxima by redux.sync (one instruction instead of a 5-level shuffle tree)
GLUON_VARIANTS.update({f"gluon_w{w}_redux": functools.partial(gluon_ring, num_warps=w, redux=True) for w in (8, 4, 1)})
