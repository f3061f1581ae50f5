"""The glue around the scan of SegmentPotentials, as two small kernels (ops/triton/segment_scan.py).

A small batch is host-bound: each torch op of the glue (prefix sums, broadcasts, the entry's
⊕, the gradients' cumulative and batch sums) costs more host time than its GPU work. Here the
glue is one launch before the forward scan and one after the backward scan.

``segment_prep_kernel`` (one program per sequence b): the user's tensors, any strides (a
shared parameter has batch stride 0), become the scan's operands (contiguous, the compute
dtype): per-batch transition (B, C, C), duration (B, K, C), end (B, C; zeros when not given),
the entry τ(0, c) = ⊕_{c'} init[c'] ⊗ transition[c', c] (or start[c]) and the entry's ⊕
weights ∂τ(0, c)/∂entry[c', c] (B, C', C) for the backward; from scores, the prefix sums
(B, T+1, C) in float64 with a zero first row.

``segment_grads_kernel`` (B + 1 programs): program b < B writes the scores' gradient of
sequence b, ∂/∂scores[j] = Σ_{t > j} ∂/∂S[t], a reverse cumulative sum in float64; program B
writes the parameters' gradients (transition: the scan's plus the entry term; duration, init,
start, end), summed over the batch in a fixed order where the parameter is shared (SH_*).
Outputs are contiguous, in the user's dtype; a None pointer is a gradient nobody asked for.
"""

from __future__ import annotations

import triton
import triton.language as tl

from .semiring import LOG


@triton.jit
def segment_prep_kernel(
    sc_ptr, tr_ptr, du_ptr, in_ptr, st_ptr, en_ptr,  # the user's tensors (None: not given)
    # outputs: the scan's operands (cum None: cum_scores given) and the entry's weights (None: not wanted)
    cum_ptr, trans_ptr, dur_ptr, tau0_ptr, end_ptr, entw_ptr,
    T, C, K, SC_B, SC_T, SC_C, TR_B, TR_R, TR_C, DU_B, DU_K, DU_C, IN_B, IN_C, ST_B, ST_C, EN_B, EN_C,
    SR: tl.constexpr, CP: tl.constexpr, KP: tl.constexpr, BT: tl.constexpr,
):
    b = tl.cast(tl.program_id(0), tl.int64)
    dt = trans_ptr.dtype.element_ty
    c1 = tl.arange(0, CP)
    rr = c1[:, None]  # source label c'
    cc = c1[None, :]  # destination label c
    if sc_ptr is not None:  # S[t] = Σ_{j<t} scores[j], blocks of BT rows carried in float64
        cum_b = cum_ptr + b * (T + 1) * C
        carry = tl.zeros([CP], dtype=tl.float64)
        tl.store(cum_b + c1, carry, mask=c1 < C)
        t1 = tl.arange(0, BT)[:, None]
        for t0 in range(0, T, BT):
            t = t0 + t1
            ok = (t < T) & (cc < C)
            x = tl.load(sc_ptr + b * SC_B + t * SC_T + cc * SC_C, mask=ok, other=0.0).to(tl.float64)
            tl.store(cum_b + (t + 1) * C + cc, tl.cumsum(x, 0) + carry[None, :], mask=ok)
            carry += tl.sum(x, 0)
    tm = (rr < C) & (cc < C)
    tr = tl.load(tr_ptr + b * TR_B + rr * TR_R + cc * TR_C, mask=tm, other=0.0).to(dt)
    tl.store(trans_ptr + b * C * C + rr * C + cc, tr, mask=tm)
    kk = tl.arange(0, KP)[:, None]
    dm = (kk < K) & (cc < C)
    du = tl.load(du_ptr + b * DU_B + kk * DU_K + cc * DU_C, mask=dm, other=0.0).to(dt)
    tl.store(dur_ptr + b * K * C + kk * C + cc, du, mask=dm)
    if en_ptr is not None:
        en = tl.load(en_ptr + b * EN_B + c1 * EN_C, mask=c1 < C, other=0.0).to(dt)
    else:
        en = tl.zeros([CP], dtype=dt)
    tl.store(end_ptr + b * C + c1, en, mask=c1 < C)
    if st_ptr is not None:  # the first segment scores start[c]
        tau0 = tl.load(st_ptr + b * ST_B + c1 * ST_C, mask=c1 < C, other=0.0).to(dt)
    else:  # τ(0, c) = ⊕_{c'} entry[c', c], entry = init[c'] ⊗ transition[c', c]
        entry = tr
        if in_ptr is not None:
            entry = entry + tl.load(in_ptr + b * IN_B + rr * IN_C, mask=rr < C, other=0.0).to(dt)
        entry = tl.where(tm, entry, float("-inf"))
        m = tl.max(entry, axis=0)
        if SR == LOG:
            ms = tl.where(m == float("-inf"), 0.0, m)  # an all −inf column: τ = −inf, weights 0
            e = tl.exp(entry - ms[None, :])
            z = tl.sum(e, axis=0)
            tau0 = ms + tl.log(z)
            w = e / tl.where(z > 0, z, 1.0)[None, :]
        else:  # max: the gradient goes to the first argmax (torch.argmax's rule)
            tau0 = m
            w = tl.where(rr == tl.argmax(entry, axis=0, tie_break_left=True)[None, :], 1.0, 0.0).to(dt)
        if entw_ptr is not None:
            tl.store(entw_ptr + b * C * C + rr * C + cc, w, mask=tm)
    tl.store(tau0_ptr + b * C + c1, tau0, mask=c1 < C)


@triton.jit
def _store_out(ptr, x, mask):
    """Store a (float64) gradient in the user's dtype; a 16-bit one through float32 (Triton 3.6's
    interpreter rounds float64 -> bfloat16 wrongly: the gradients came out 0)."""
    if ptr.dtype.element_ty == tl.float64:
        tl.store(ptr, x, mask=mask)
    else:
        tl.store(ptr, x.to(tl.float32).to(ptr.dtype.element_ty), mask=mask)


@triton.jit
def _batch_out(out_ptr, acc, g, ob, off, mask, SHARED: tl.constexpr):
    """Per-batch gradient rows g (BB, ...) of a parameter: stored at ob + off (per-batch parameter),
    or added to acc (a shared one; stored by the caller after the last chunk)."""
    if out_ptr is not None:
        if SHARED:
            acc += tl.sum(g.to(tl.float64), axis=0)
        else:
            _store_out(out_ptr + ob + off, g, mask)
    return acc


@triton.jit
def segment_grads_kernel(
    gcum_ptr, gtr_ptr, gdur_ptr, gtau0_ptr, gend_ptr,  # the scan's gradients (B, ...)
    entw_ptr,  # the entry's weights (the prep kernel's; None: no entry term wanted)
    osc_ptr, otr_ptr, odu_ptr, oin_ptr, ost_ptr, oen_ptr,  # the user's gradients (None: not wanted)
    B, T, C, K,
    CP: tl.constexpr, KP: tl.constexpr, BT: tl.constexpr, BB: tl.constexpr,
    SH_TR: tl.constexpr, SH_DU: tl.constexpr, SH_IN: tl.constexpr, SH_ST: tl.constexpr, SH_EN: tl.constexpr,
):
    pid = tl.program_id(0)
    c1 = tl.arange(0, CP)
    if pid < B:
        if osc_ptr is not None:  # blocks of BT rows from the end, the carry in float64
            b = tl.cast(pid, tl.int64)
            cc = c1[None, :]
            t1 = tl.arange(0, BT)[:, None]
            carry = tl.zeros([CP], dtype=tl.float64)
            for i in range(0, tl.cdiv(T, BT)):
                j = (tl.cdiv(T, BT) - 1 - i) * BT + t1
                ok = (j < T) & (cc < C)
                x = tl.load(gcum_ptr + b * (T + 1) * C + (j + 1) * C + cc, mask=ok, other=0.0)
                _store_out(osc_ptr + b * T * C + j * C + cc, tl.cumsum(x, 0, reverse=True) + carry[None, :], ok)
                carry += tl.sum(x, 0)
    else:  # chunks of BB sequences: 3-D tiles (BB, rows, C)
        b3 = tl.arange(0, BB)[:, None, None]
        b2 = tl.arange(0, BB)[:, None]
        r3 = c1[None, :, None]
        k3 = tl.arange(0, KP)[None, :, None]
        c3 = c1[None, None, :]
        c2 = c1[None, :]
        a_tr = tl.zeros([CP, CP], dtype=tl.float64)  # batch sums of shared parameters' gradients
        a_du = tl.zeros([KP, CP], dtype=tl.float64)
        a_in = tl.zeros([CP], dtype=tl.float64)
        a_st = tl.zeros([CP], dtype=tl.float64)
        a_en = tl.zeros([CP], dtype=tl.float64)
        for b0 in range(0, B, BB):
            bb3 = (b0 + b3).to(tl.int64)
            bb2 = (b0 + b2).to(tl.int64)
            tm = (bb3 < B) & (r3 < C) & (c3 < C)
            vm = (bb2 < B) & (c2 < C)
            g_t0 = tl.load(gtau0_ptr + bb2 * C + c2, mask=vm, other=0.0)  # (BB, CP)
            if entw_ptr is not None:  # ∂/∂entry[c', c] = w[c', c] ∂/∂τ(0, c): into the transition and the init
                w = tl.load(entw_ptr + bb3 * C * C + r3 * C + c3, mask=tm, other=0.0)
                g_entry = w * g_t0[:, None, :]
                g_in = tl.sum(g_entry, axis=2)  # (BB, CP) over c
                a_in = _batch_out(oin_ptr, a_in, g_in, bb2 * C, c1[None, :], (bb2 < B) & (c2 < C), SH_IN)
            if otr_ptr is not None:
                g_tr = tl.load(gtr_ptr + bb3 * C * C + r3 * C + c3, mask=tm, other=0.0)
                if entw_ptr is not None:
                    g_tr = g_tr + g_entry
                a_tr = _batch_out(otr_ptr, a_tr, g_tr, bb3 * C * C, r3 * C + c3, tm, SH_TR)
            if odu_ptr is not None:
                dm = (bb3 < B) & (k3 < K) & (c3 < C)
                g_du = tl.load(gdur_ptr + bb3 * K * C + k3 * C + c3, mask=dm, other=0.0)
                a_du = _batch_out(odu_ptr, a_du, g_du, bb3 * K * C, k3 * C + c3, dm, SH_DU)
            a_st = _batch_out(ost_ptr, a_st, g_t0, bb2 * C, c2, vm, SH_ST)
            if oen_ptr is not None:
                g_en = tl.load(gend_ptr + bb2 * C + c2, mask=vm, other=0.0)
                a_en = _batch_out(oen_ptr, a_en, g_en, bb2 * C, c2, vm, SH_EN)
        r2 = c1[:, None]
        if SH_TR and otr_ptr is not None:
            _store_out(otr_ptr + r2 * C + c2, a_tr, (r2 < C) & (c2 < C))
        if SH_DU and odu_ptr is not None:
            k2 = tl.arange(0, KP)[:, None]
            _store_out(odu_ptr + k2 * C + c2, a_du, (k2 < K) & (c2 < C))
        if SH_IN and oin_ptr is not None:
            _store_out(oin_ptr + c1, a_in, c1 < C)
        if SH_ST and ost_ptr is not None:
            _store_out(ost_ptr + c1, a_st, c1 < C)
        if SH_EN and oen_ptr is not None:
            _store_out(oen_ptr + c1, a_en, c1 < C)
