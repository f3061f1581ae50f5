"""Streaming semi-CRF scan kernels: one forward template, one backward template.

Both are specialised at compile time by the semiring (``SR``, pieces from
``semiring.py``), the edge source (``EDGES``: on-the-fly factored potentials
from float64 prefix sums, or streamed torch-struct edges) and options
(``HAS_SB``: start bias; ``SAVE_CK``: store checkpoints). T is a runtime
argument: one compilation serves every length.

Which step runs where:
  forward, factored log / max (RING)     ``_fac_ring_step``: register ring (below)
  forward, factored entropy / kmax       ``_fac_fwd_step``: tape window
  forward and backward recompute, edges  ``_edge_fwd_step``: tape window
  backward recompute, log / max (RING_RC) ``_fac_ring_step`` with the FULL stores
  backward recompute, factored, else     ``_fac_fwd_step``: tape window
  backward adjoints, log / max (RING_ADJ) the adjoint ring (below)
  backward adjoints, else                ``_fac_pull`` / ``_fac_tpull`` / ``_edge_pull``: tape
(RING: launch.RING_FORWARD; RING_RC: launch.RING_RECOMPUTE; RING_ADJ:
launch.RING_ADJOINT. One template each: entropy, kmax and the edge path keep the
tape steps under the same constexpr switches.) Both factored
steps form a window term bit for bit alike, so the backward re-forms from FULL
tape rows the very candidates whose max and float64 sum the ring step stored
(exactly normalised weights). The steps sum a window in different orders (the
ring by slot, the tape by duration), so a block recomputed by the other step
differs from the forward in the last bits of α; its own stored normalisers
match its own candidates. RING_RC after RING gives the forward's rows exactly.

Layout. One program scans one sequence (``program_id(0)`` = batch row b) for
exactly L_b steps. Labels lie across lanes, durations along the other tile
axis, semiring channels last: a step is a handful of tile ops on
(KP, CP, SP) (factored) or (KP·CP, CP, SP) (edges) tiles.

Register ring (RING; issue 11, from benchmarks/latency's lanesk_trt). The last K
τ rows live in a loop-carried (CP, KO, LANES) tile, slot = p mod KR (KR a power
of two > K), with each row's BASE(p) and S[p] in float64 beside it: labels
across warps, slots on lanes and registers, so a step's sums over durations
are in-thread and warp shuffles and no step waits on a barrier of its own
(the compiler's layout exchanges remain: 6 CTA barriers per step on sm_90 at
K=100, C=8, against 16 on the tape). What depends on t only (S[t], the
slots' duration terms from a rotated table the kernel writes first, sb[t])
is loaded a step ahead. The transition tile is (c, c'), so max_c α for
BASE(t+1) comes from the exchanged α (one equal copy per label). Tape rows
(FULL), checkpoints and backpointers are stored from registers in the layout
each value has (``_put``), never read back.

Tape. Each program owns a circular *tape* in global memory, rows indexed by
position mod R (R a power of two: ≥ K+1 in a plain forward, ≥ Δ + 2K + 1 in
backward), each row stored twice (slot and slot + R) so that any window of
K consecutive rows is contiguous (addresses = scalar + loop-invariant tile).
A whole-sequence tape (FULL, and the backward without RECOMPUTE) is linear
instead: R = 0 makes every slot formula the identity, one row per position
(``_tape_rows``), 2–4× less memory than a mirrored ring of pow2(T + 2K + 1):
  VAL   ring value of the position: τ(t) (factored, after the start bias) or α(t) (edges)
  OUT   α(t) (factored)                 TPRE  τ(t) before the start bias (factored)
  RA/RT routes of the α / τ sums (max, kmax)   ADJ  adjoint of α(t) (backward; float64)
  AM/AZ, TM/TZ  max and (float64) sum of the α / τ logsumexps (log, entropy): the
        backward uses exactly normalised weights exp(x - m) / z (see semiring.vjp)
  BASE  (2R, 2) float64 normalisers: every stored value of row t is relative to BASE(t).
BASE(t+1) = BASE(t) + shift(α(t)) (float64), so fp32 values stay O(1) at
any T; a window read adds float64 differences BASE(p) - BASE(t) rounded
once. A tape step writes one row and reads the K rows before it, so a CTA-wide
barrier separates steps (besides the compiler's own for cross-warp reductions).
Short sequences whose whole tape fits ``launch.STORE_ALL_BYTES`` keep every
row in the forward (FULL) and the backward skips its recompute (RECOMPUTE off).

Checkpoints. Every Δ steps (Δ ≈ √(T·K)) the forward keeps the K ring rows
before the block border (VAL + BASE). The backward walks blocks in reverse:
it reloads the checkpoint, recomputes the block's rows (values, routes),
then runs the adjoint recursion over the block in reverse, reading the K
rows after each position (the next block's rows survive on the tape since
R > Δ + 2K). Memory: O((T/Δ)·K·C + Δ·C) per sequence.

Backward = the vector-Jacobian products of the forward ops, in the order
autograd through the dense DP would apply them; every gradient element is
written once by one program (no atomics): bitwise deterministic.

Adjoint ring (RING_ADJ; issue 11, step 2). The adjoint pass of factored log / max
keeps, for the window rows q = p+1..p+K of position p, the scaled adjoints
adj(q) / z(q) (log; max: adj(q)), their masks, LSE maxima or routes, BASE(q) and
S[q] in registers, in the forward ring's layout (slot q mod KR; labels across
warps, slots on lanes), and loads tape row p (τ, α, normalisers, routes) a step
ahead: the dependent chain of a step is one sum over slots, one exchange of
a_tau across warps, the C x C transition pull (c along the lanes) and the ring
insert (3 CTA barriers at K=100, C=8 on sm_90, against 8-11 on the tape). The
weights are ``vjp``'s (the same candidates, stored normalisers and roundings); the
float64 sum over durations runs by slot. Duration adjoints, which rotate with
the slots, are stored per step to a float64 scratch and folded into gdur every
RING_FOLD steps (p descending, as the tape pull adds them; one barrier); the
ring waits in global memory while a block is recomputed. Needs CP <= min(KR, 32)
(labels on the lanes).
"""

from __future__ import annotations

import triton
import triton.language as tl

from .semiring import (ENTROPY, KMAX, LOG, MAX, mul_pot, one_value, plus0, plus_rows, potgrad, scaled_adjoint, shift, vjp,
                       zero_value)


# --------------------------------------------------------------------------------------
# shared bits
# --------------------------------------------------------------------------------------
@triton.jit
def _offset(bp0, bp1, bq0, bq1, s_idx, SR: tl.constexpr):
    """float64 normaliser difference BASE(p) - BASE(q), per channel group."""
    if SR == ENTROPY:
        return tl.where(s_idx == 1, bp1 - bq1, bp0 - bq0)
    else:
        return bp0 - bq0


@triton.jit
def _row0(tau0_ptr, sb_b, tv_ptr, b, B, C, S: tl.constexpr, CP: tl.constexpr, SP: tl.constexpr,
          SR: tl.constexpr, EDGES: tl.constexpr, HAS_SB: tl.constexpr):
    """The state at position 0: τ(0) ⊗ start_bias[0] (factored) or 1̄ (edges, in the tape's dtype)."""
    c2 = tl.arange(0, CP)[:, None]
    s2 = tl.arange(0, SP)[None, :]
    ok = (c2 < C) & (s2 < S)
    if EDGES:
        v0 = tl.where(ok, one_value(s2, SR), zero_value(s2, SR)).to(tv_ptr.dtype.element_ty)
    else:
        v0 = tl.load(tau0_ptr + s2 * (B * C) + b * C + c2, mask=ok, other=0.0)
        v0 = tl.where(ok, v0, zero_value(s2, SR))
        if HAS_SB:
            v0 = mul_pot(v0, tl.load(sb_b + c2, mask=c2 < C, other=0.0), s2, SR)
    return v0


@triton.jit
def _store_row(ptr_b, slot, v, CP: tl.constexpr, SP: tl.constexpr):
    c2 = tl.arange(0, CP)[:, None]
    s2 = tl.arange(0, SP)[None, :]
    tl.store(ptr_b + slot * (CP * SP) + c2 * SP + s2, v)


# --------------------------------------------------------------------------------------
# forward steps
# --------------------------------------------------------------------------------------
@triton.jit
def _load_bases(tb_b, rows, ok, SR: tl.constexpr):
    b0 = tl.load(tb_b + rows * 2, mask=ok, other=0.0)
    if SR == ENTROPY:
        b1 = tl.load(tb_b + rows * 2 + 1, mask=ok, other=0.0)
    else:
        b1 = b0
    return b0, b1


@triton.jit
def _store_row2(ptr_b, slot, R, v, CP: tl.constexpr, SP: tl.constexpr):
    """Store a row at its slot and at its mirror slot + R (windows are then contiguous);
    a linear tape (R = 0) has no mirror."""
    c2 = tl.arange(0, CP)[:, None]
    s2 = tl.arange(0, SP)[None, :]
    o = c2 * SP + s2
    tl.store(ptr_b + slot * (CP * SP) + o, v)
    if R != 0:
        tl.store(ptr_b + (slot + R) * (CP * SP) + o, v)


@triton.jit
def _store_base2(tb_b, slot, R, base0, base1):
    tl.store(tb_b + slot * 2, base0)
    tl.store(tb_b + slot * 2 + 1, base1)
    if R != 0:
        tl.store(tb_b + (slot + R) * 2, base0)
        tl.store(tb_b + (slot + R) * 2 + 1, base1)


@triton.jit
def _tape_rows(T, K, R):
    """Rows per sequence of a tape: a ring of R slots, each stored twice (slot, slot + R), or
    (R = 0) the whole sequence, one row per position 0..T plus K spare rows. With R = 0 every
    slot formula is the identity (x & (R - 1) = x, mirror slot + R = slot), windows are
    contiguous anyway, and the mirror stores are skipped."""
    return tl.where(R == 0, T + K + 1, 2 * R)


@triton.jit
def _fac_fwd_step(t, T, C, K, R, base0, base1, cum_b, sb_b, dur3, tr3,
                  tv_b, to_b, tp_b, tra_b, trt_b, tb_b, tam_b, taz_b, ttm_b, ttz_b,
                  SR: tl.constexpr, KK: tl.constexpr, S: tl.constexpr, CP: tl.constexpr,
                  KP: tl.constexpr, SP: tl.constexpr, HAS_SB: tl.constexpr, FULL: tl.constexpr):
    """α(t) = ⊕_d τ(t-d) ⊗ w(t, d);  τ(t) = (⊕_c' α(t, c') ⊗ trans[c', ·]) ⊗ sb[t].

    Window rows t-1, t-2, ..., t-K (tile row n = d-1) are read downwards from the
    mirror slot of t-1, so every address is a scalar plus a loop-invariant tile.
    """
    n3 = tl.arange(0, KP)[:, None, None]  # duration d = n3 + 1
    c3 = tl.arange(0, CP)[None, :, None]
    s3 = tl.arange(0, SP)[None, None, :]
    c2 = tl.arange(0, CP)[:, None]
    s2 = tl.arange(0, SP)[None, :]
    okr = (n3 < K) & (n3 < t)  # position t-1-n3 >= 0
    okc = okr & (c3 < C) & (s3 < S)
    top = ((t - 1) & (R - 1)) + R  # mirror slot of position t-1
    x = tl.load(tv_b + top * (CP * SP) + (c3 * SP + s3 - n3 * (CP * SP)), mask=okc, other=0.0)
    b0, b1 = _load_bases(tb_b, top - n3, okr, SR)
    off = _offset(b0, b1, base0, base1, s3, SR).to(x.dtype)
    cum_t = tl.load(cum_b + t * C + c3, mask=c3 < C, other=0.0)
    cum_p = tl.load(cum_b + (t - 1) * C + (c3 - n3 * C), mask=okr & (c3 < C), other=0.0)
    w = (cum_t - cum_p).to(x.dtype) + dur3
    cand = tl.where(okc, mul_pot(x + off, w, s3, SR), zero_value(s3, SR))
    alpha, ra, am, az = plus0(cand, SR, KK)  # (CP, SP)
    if SR == MAX:
        # ties go to the longest duration, as in the torch engine (whose ring lists
        # durations K..1 and whose max takes the first index): one argmax on every backend
        tie = (cand == alpha[None, :, :]) & (alpha[None, :, :] > float("-inf"))
        ra = tl.max(tl.where(tie, n3 + s3 * 0, 0), axis=0).to(tl.int32)
    tpre, rt, tm, tz = plus0(mul_pot(tl.expand_dims(alpha, 1), tr3, s3, SR), SR, KK)
    if HAS_SB:
        sbt = tl.load(sb_b + t * C + c2, mask=(c2 < C) & (t < T), other=0.0)
        tau = mul_pot(tpre, sbt, s2, SR)
    else:
        tau = tpre
    st = t & (R - 1)
    _store_row2(tv_b, st, R, tau, CP, SP)
    _store_row2(to_b, st, R, alpha, CP, SP)
    _store_base2(tb_b, st, R, base0, base1)
    if FULL:
        if HAS_SB:
            _store_row(tp_b, st, tpre, CP, SP)
        if SR == MAX or SR == KMAX:
            _store_row2(tra_b, st, R, ra, CP, SP)
            _store_row(trt_b, st, rt, CP, SP)
        if SR == LOG or SR == ENTROPY:
            _store_row2(tam_b, st, R, am, CP, SP)
            _store_row2(taz_b, st, R, az, CP, SP)
            _store_row(ttm_b, st, tm, CP, SP)
            _store_row(ttz_b, st, tz, CP, SP)
    # the next normaliser comes from α(t): its label axis lies inside a warp (cheap reduction)
    sh0, sh1 = shift(alpha, SR)
    return base0 + sh0.to(tl.float64), base1 + sh1.to(tl.float64), tau, ra, rt


@triton.jit
def _rotate_durations(dur_b, rot_b, C, K, CP: tl.constexpr, KR: tl.constexpr, SIGN: tl.constexpr = -1):
    """Write the rotated duration table E (CP, 2·KR): E[c, i] = duration[d-1, c] with
    d = (SIGN·i) mod KR, −inf outside 1..K (and for padded labels). Slot j's term at step t is
    then E[c, ((-t) mod KR) + j]: contiguous along the slots, so the coalescing pass lays the
    ring out with lanes on slots and warps on labels (a gather from ``duration`` would put
    lanes on labels, and the sums over slots would cross warps). SIGN -1: the forward's
    ring (slot j holds row t - d); +1: the adjoint ring of step p (slot j holds row p + d)."""
    c2 = tl.arange(0, CP)[:, None]
    i2 = tl.arange(0, 2 * KR)[None, :]
    d = (SIGN * i2) & (KR - 1)
    e = tl.load(dur_b + (d - 1) * C + c2, mask=(d >= 1) & (d <= K) & (c2 < C), other=float("-inf"))
    tl.store(rot_b + c2 * (2 * KR) + i2, e)


@triton.jit
def _ring_terms(t, L, T, C, cum_b, rot_b, sb_b, slot, rc3, c1, KR: tl.constexpr, HAS_SB: tl.constexpr):
    """What ring step t reads that depends on t only (so it is loaded a step ahead, off the
    dependency chain): S[t] (CP,) float64; the duration potential of every ring slot (CP, KO,
    LANES) from the rotated table (−inf for the slot about to be overwritten and for rows
    older than K); the start bias sb[t] (CP,)."""
    tc = tl.minimum(t, L)  # the prefetch one past the end stays in bounds
    cum_t = tl.load(cum_b + tc * C + c1, mask=c1 < C, other=0.0)
    dw = tl.load(rot_b + rc3 * (2 * KR) + ((-t) & (KR - 1)) + slot)
    if HAS_SB:
        sbt = tl.load(sb_b + tc * C + c1, mask=(c1 < C) & (tc < T), other=0.0)
    else:
        sbt = 0.0
    return cum_t, dw, sbt


@triton.jit
def _put(ptr, v, lab, pos, N):
    """Store a per-label vector v (lifted to lab's rank) at ptr + label, labels < N, from the
    layout v already has: ``lab`` is the label index times an opaque 1 and ``pos`` an index
    contiguous along v's broadcast axes (the ring's slots), so the
    coalescing pass lays the store out like v (no layout exchange, no barrier). Masked to
    pos == 0: one write per label."""
    tl.store(ptr + lab + pos, v, mask=(pos == 0) & (lab < N))


@triton.jit
def _put2(ptr, R, v, lab, pos, N):
    """``_put`` at ptr and at its mirror ptr + R (a tape row's two slots; R = 0: linear, one)."""
    _put(ptr, v, lab, pos, N)
    if R != 0:
        _put(ptr + R, v, lab, pos, N)


@triton.jit
def _ring_setup(L, C, tr_b, CP: tl.constexpr, KR: tl.constexpr):
    """What every register-ring scan of a sequence shares: the ring's label and slot index
    tiles (rc3, slot), the store indices of ``_put`` (lab3, pos3 along the ring) and the
    transition tile tr2 (c, c'). Every store of the scan is from the ring's layout: one from
    the transition tile's lays the τ sum out for itself (2 CTA barriers a step more, sm_90)."""
    # ring tile (CP, KO, LANES), slot = ko·LANES + lane: the slot-contiguous layout Triton
    # picks puts lanes on slots and warps on labels (benchmarks/latency: lanesk_trt)
    LANES: tl.constexpr = 32 if KR > 32 else KR
    KO: tl.constexpr = KR // LANES
    rc3 = tl.arange(0, CP)[:, None, None]
    slot = tl.arange(0, KO)[None, :, None] * LANES + tl.arange(0, LANES)[None, None, :]
    rr = tl.arange(0, CP)[:, None]  # c
    rj = tl.arange(0, CP)[None, :]  # c'
    tr2 = tl.load(tr_b + rj * C + rr, mask=(rr < C) & (rj < C), other=float("-inf"))
    # store indices for _put: label times an opaque 1 (L >= 0 always holds), positions
    # contiguous along the ring's slots (minus an opaque 0)
    one = (L >= 0).to(tl.int32)
    return rc3, slot, rc3 * one, slot - (one - 1), tr2


@triton.jit
def _ring_start(v0, base0, cum_b, C, rc3, slot, CP: tl.constexpr):
    """The ring at position 0: τ(0) in slot 0, rows p < 0 are 0̄ (SP = 1); BASE(0) = 0 and
    S[0] beside it; BASE(1) = base0 as one equal copy per label, (CP, 1, 1) in the ring's layout."""
    ring = tl.where(slot == 0, v0[:, :, None], float("-inf"))
    cum0 = tl.load(cum_b + rc3, mask=rc3 < C, other=0.0)
    cring = tl.where(slot == 0, cum0, 0.0)
    bring = tl.zeros(ring.shape, dtype=tl.float64)
    return ring, bring, cring, base0 + tl.zeros((CP, 1, 1), dtype=tl.float64)


@triton.jit
def _ring_from_checkpoint(ckv_b, ckb_b, ckn_b, cum_b, C, K, t0, j, rc3, slot, CP: tl.constexpr,
                          KP: tl.constexpr, KR: tl.constexpr):
    """The ring after position t0 = j·Δ from block j's checkpoint: the K rows t0-K+1..t0 (τ,
    BASE) at slot p mod KR with S[p] beside them, 0̄ elsewhere, and BASE(t0+1) as one copy
    per label, (CP, 1, 1): the very state the ring forward had there (SP = 1)."""
    r = (slot - (t0 - K + 1)) & (KR - 1)  # checkpoint row of the slot's position
    ok = r < K
    ck = tl.cast(j * KP + r, tl.int64)
    ring = tl.load(ckv_b + ck * CP + rc3, mask=ok, other=float("-inf"))  # all CP labels were stored
    bring = tl.load(ckb_b + ck * 2 + rc3 * 0, mask=ok, other=0.0)
    cring = tl.load(cum_b + (t0 - K + 1 + r) * C + rc3, mask=ok & (rc3 < C), other=0.0)
    base = tl.load(ckn_b + j * 2) + tl.zeros((CP, 1, 1), dtype=tl.float64)
    return ring, bring, cring, base


@triton.jit
def _fac_ring_step(t, R, ring, bring, cring, base, cum_t, dw, sbt, slot, tr2, lab3, pos3,
                   tv_b, to_b, tp_b, tra_b, trt_b, tb_b, tam_b, taz_b, ttm_b, ttz_b,
                   SR: tl.constexpr, CP: tl.constexpr, SP: tl.constexpr, KR: tl.constexpr,
                   HAS_SB: tl.constexpr, FULL: tl.constexpr):
    """``_fac_fwd_step`` (log, max) on the register ring: the last K rows of τ live in the
    loop-carried tile ``ring`` (CP, KO, LANES), slot = p mod KR (KR > K), with each row's
    BASE(p) (``bring``) and S[p] (``cring``) in float64. Labels lie across warps and slots on
    lanes and registers, so the sums over durations are in-thread and warp shuffles; the
    transition tile is (c, c'), so the label-axis max behind BASE(t+1) comes from the same
    exchanged α (``base``: one equal copy per label, (CP, 1, 1) in the ring's layout, so that
    its update needs no exchange; no cross-warp reduction).

    A window term is formed exactly as the tape step (and the backward) forms it, τ(p) +
    fp(BASE(p) - BASE(t)) + (fp(S[t] - S[p]) + duration), so the tape rows FULL stores
    give the backward the very candidates whose max / float64 sum they hold."""
    off = (bring - base).to(ring.dtype)
    cand = (ring + off) + ((cum_t[:, None, None] - cring).to(ring.dtype) + dw)
    alpha, am, az = plus_rows(cand, SR)  # (CP,)
    ae = tl.expand_dims(alpha, 0)  # α along the transition tile's c' axis: one layout exchange
    x = ae + tr2
    tpre, tm, tz = plus_rows(x, SR)
    if SR == MAX:
        # ties: the longest duration (as _fac_fwd_step), the smallest c' (as plus0)
        d = (t - slot) & (KR - 1)
        tie = (cand == alpha[:, None, None]) & (alpha[:, None, None] > float("-inf"))
        ra = tl.max(tl.max(tl.where(tie, d - 1, 0), axis=1), axis=1).to(tl.int32)
        rt = tl.argmax(x, axis=1, tie_break_left=True).to(tl.int32)
    else:  # no routes
        ra = tl.zeros((CP,), dtype=tl.int32)
        rt = ra
    sh = tl.max(tl.broadcast_to(ae, (CP, CP)), axis=1)  # max_c α(t, c), one copy per label
    if HAS_SB:
        tau = tpre + sbt
    else:
        tau = tpre
    new = slot == (t & (KR - 1))
    ring = tl.where(new, tau[:, None, None], ring)
    bring = tl.where(new, base, bring)
    cring = tl.where(new, cum_t[:, None, None], cring)
    # tape rows (FULL: the backward reads them; stores from registers, never read back), all
    # from the ring's layout (lab3, pos3), as the forward's checkpoint rows: a store from the
    # transition tile's layout lays the τ sum out for it, and the backward's recompute would
    # then round τ otherwise than a forward without FULL (sum_order.py)
    if FULL:
        st = (t & (R - 1)) * CP  # SP = 1
        _put2(tv_b + st, R * CP, tau[:, None, None], lab3, pos3, CP)
        _put2(to_b + st, R * CP, alpha[:, None, None], lab3, pos3, CP)
        sl = (t & (R - 1)) * 2
        _put2(tb_b + sl, R * 2, base, lab3 * 0, pos3, 1)  # equal copies: label 0's
        _put2(tb_b + sl + 1, R * 2, base * 0.0, lab3 * 0, pos3, 1)
        if HAS_SB:
            _put(tp_b + st, tpre[:, None, None], lab3, pos3, CP)
        if SR == MAX:
            _put2(tra_b + st, R * CP, ra[:, None, None], lab3, pos3, CP)
            _put(trt_b + st, rt[:, None, None], lab3, pos3, CP)
        else:
            _put2(tam_b + st, R * CP, am[:, None, None], lab3, pos3, CP)
            _put2(taz_b + st, R * CP, az[:, None, None], lab3, pos3, CP)
            _put(ttm_b + st, tm[:, None, None], lab3, pos3, CP)
            _put(ttz_b + st, tz[:, None, None], lab3, pos3, CP)
    sh3 = sh[:, None, None]
    base = base + tl.where(sh3 > float("-inf"), sh3, 0.0).to(tl.float64)
    return ring, bring, cring, base, alpha, tau, ra, rt


@triton.jit
def _edge_fwd_step(t, C, K, R, base0, base1, edge_b, tv_b, tra_b, tb_b, tam_b, taz_b,
                   SR: tl.constexpr, KK: tl.constexpr, S: tl.constexpr, CP: tl.constexpr,
                   KP: tl.constexpr, SP: tl.constexpr, FULL: tl.constexpr):
    """α(t, c) = ⊕_{d, c'} α(t-d, c') ⊗ edge[t-d, d, c, c'] (rows: (d, c'), columns: c)."""
    i3 = tl.arange(0, KP * CP)[:, None, None]
    dd = i3 // CP  # d - 1
    cp = i3 % CP  # c'
    c3 = tl.arange(0, CP)[None, :, None]
    s3 = tl.arange(0, SP)[None, None, :]
    okr = (dd < K) & (dd < t) & (cp < C)
    top = ((t - 1) & (R - 1)) + R
    x = tl.load(tv_b + top * (CP * SP) + (cp * SP + s3 - dd * (CP * SP)), mask=okr & (s3 < S), other=0.0)
    b0, b1 = _load_bases(tb_b, top - dd, okr, SR)
    off = _offset(b0, b1, base0, base1, s3, SR).to(x.dtype)
    # edge[p, d, c, c'] with p = t-1-dd: ((t-1)(K+1) + dd(1-(K+1)) + 1) C² + c C + c'
    e = tl.load(edge_b + (t - 1) * ((K + 1) * C * C) + ((1 - dd * K) * (C * C) + c3 * C + cp),
                mask=okr & (c3 < C), other=0.0)
    cand = tl.where(okr & (c3 < C) & (s3 < S), mul_pot(x + off, e, s3, SR), zero_value(s3, SR))
    alpha, ra, am, az = plus0(cand, SR, KK)
    if SR == MAX:
        # ties as in the torch engine (ring slots list durations K..1, then c' ascending; its
        # max takes the first index): the longest duration, then the smallest c'
        tie = (cand == alpha[None, :, :]) & (alpha[None, :, :] > float("-inf"))
        key = tl.max(tl.where(tie, dd * CP + (CP - 1 - cp) + s3 * 0, -1), axis=0)
        ra = tl.where(key >= 0, (key // CP) * CP + (CP - 1 - key % CP), 0).to(tl.int32)
    st = t & (R - 1)
    _store_row2(tv_b, st, R, alpha, CP, SP)
    _store_base2(tb_b, st, R, base0, base1)
    if FULL:
        if SR == MAX or SR == KMAX:
            _store_row2(tra_b, st, R, ra, CP, SP)
        if SR == LOG or SR == ENTROPY:
            _store_row2(tam_b, st, R, am, CP, SP)
            _store_row2(taz_b, st, R, az, CP, SP)
    sh0, sh1 = shift(alpha, SR)
    return base0 + sh0.to(tl.float64), base1 + sh1.to(tl.float64), alpha, ra, ra


# --------------------------------------------------------------------------------------
# forward kernel
# --------------------------------------------------------------------------------------
@triton.jit(do_not_specialize=["T", "R", "DELTA", "NBLK"])
def scan_fwd_kernel(
    # operands (launch.Operands); None where the variant reads nothing
    cum_ptr, trans_ptr, dur_ptr, tau0_ptr, end_ptr, sb_ptr, edges_ptr, lengths_ptr,
    # outputs: value, and the Viterbi backpointers (launch.Backpointers, BACKPTR)
    value_ptr, bpa_ptr, bpt_ptr, fin_ptr,
    # tape (launch.Tape, less the adjoint); checkpoints (launch.Checkpoints, SAVE_CK)
    tv_ptr, to_ptr, tp_ptr, tra_ptr, trt_ptr, tb_ptr, tam_ptr, taz_ptr, ttm_ptr, ttz_ptr,
    ckv_ptr, ckb_ptr, ckn_ptr,
    # RING's rotated duration table (B, CP, 2·KR) and BASE(L) (B,) float64, written by the kernel (launch._fwd)
    rot_ptr, bl_ptr,
    B, T, C, K, R, DELTA, NBLK,
    SR: tl.constexpr, KK: tl.constexpr, S: tl.constexpr, CP: tl.constexpr, KP: tl.constexpr,
    SP: tl.constexpr, EDGES: tl.constexpr, HAS_SB: tl.constexpr, SAVE_CK: tl.constexpr,
    BACKPTR: tl.constexpr, FULL: tl.constexpr, KR: tl.constexpr, USE_RING: tl.constexpr,
):
    """Value (B, SP) float64 of the scan; optionally checkpoints (SAVE_CK) and, for
    the max semiring, backpointers (BACKPTR: the routes of every α and τ sum,
    (B, T+1, C) int16 each, and the final label, for a device-side backtrace).
    A None pointer is a constexpr None: its offsets below are never formed.

    Factored log / max (RING) step on the register ring (``_fac_ring_step``, KR = its slots,
    a power of two > K): the tape is written only when FULL, and there is no barrier per
    step. Entropy, kmax and the edge path step on the tape (``_fac_fwd_step``, ``_edge_fwd_step``)."""
    RING: tl.constexpr = USE_RING and (not EDGES) and (SR == LOG or SR == MAX)  # launch.RING_FORWARD
    b = tl.cast(tl.program_id(0), tl.int64)
    L = tl.minimum(tl.maximum(tl.load(lengths_ptr + b).to(tl.int32), 0), T)  # unchecked lengths stay in bounds
    rows = _tape_rows(T, K, R)
    tape = b * rows * (CP * SP)  # rows [0, 2R): slot and mirror slot + R; or positions (R = 0)
    tv_b = None if tv_ptr is None else tv_ptr + tape
    to_b = None if to_ptr is None else to_ptr + tape
    tp_b = None if tp_ptr is None else tp_ptr + tape
    tra_b = None if tra_ptr is None else tra_ptr + tape
    trt_b = None if trt_ptr is None else trt_ptr + tape
    tam_b = None if tam_ptr is None else tam_ptr + tape
    taz_b = None if taz_ptr is None else taz_ptr + tape
    ttm_b = None if ttm_ptr is None else ttm_ptr + tape
    ttz_b = None if ttz_ptr is None else ttz_ptr + tape
    tb_b = None if tb_ptr is None else tb_ptr + b * rows * 2
    cum_b = None if cum_ptr is None else cum_ptr + b * (T + 1) * C
    sb_b = None if sb_ptr is None else sb_ptr + b * T * C
    edge_b = None if edges_ptr is None else edges_ptr + b * T * (K + 1) * C * C
    ckv_b = None if ckv_ptr is None else ckv_ptr + b * NBLK * (KP * CP * SP)
    ckb_b = None if ckb_ptr is None else ckb_ptr + b * NBLK * (KP * 2)

    n3 = tl.arange(0, KP)[:, None, None]
    c3 = tl.arange(0, CP)[None, :, None]
    cr = tl.arange(0, CP)[:, None, None]
    s3 = tl.arange(0, SP)[None, None, :]
    c2 = tl.arange(0, CP)[:, None]
    s2 = tl.arange(0, SP)[None, :]
    c1 = tl.arange(0, CP)
    v0 = _row0(tau0_ptr, sb_b, tv_ptr, b, B, C, S, CP, SP, SR, EDGES, HAS_SB)
    zero64 = tl.zeros((), dtype=tl.float64)
    if (not RING) or FULL:
        _store_row2(tv_b, 0, R, v0, CP, SP)
        _store_base2(tb_b, 0, R, zero64, zero64)
    sh0, sh1 = shift(v0, SR)
    base0 = sh0.to(tl.float64)
    base1 = sh1.to(tl.float64)
    if RING:
        rc3, slot, lab3, pos3, tr2 = _ring_setup(L, C, trans_ptr + b * C * C, CP, KR)
        rot_b = rot_ptr + b * CP * (2 * KR)
        _rotate_durations(dur_ptr + b * K * C, rot_b, C, K, CP, KR)  # read after the barrier below
        ring, bring, cring, base0 = _ring_start(v0, base0, cum_b, C, rc3, slot, CP)
        base1 = base0 * 0.0
        alpha = tl.full((CP,), float("-inf"), v0.dtype)  # α(L)
    elif not EDGES:
        # loop invariants: duration tile (d-1, c) and transition tile (c', c)
        dur3 = tl.load(dur_ptr + b * K * C + n3 * C + c3, mask=(n3 < K) & (c3 < C), other=0.0)
        tr3 = tl.load(trans_ptr + b * C * C + cr * C + c3, mask=(cr < C) & (c3 < C), other=float("-inf"))
    tl.debug_barrier()
    if RING:
        # step 1's terms only now: other threads wrote parts of the rotated table before the
        # barrier (read before it, step 1 took stale memory's durations on the GPU: log Z off
        # by O(1), tape rows wrong from row 1, while the sequential interpreter was exact)
        cum_t, dw, sbt = _ring_terms(1, L, T, C, cum_b, rot_b, sb_b, slot, rc3, c1, KR, HAS_SB)
    for t in range(1, L + 1):
        bt0 = base0
        bt1 = base1
        if EDGES:
            base0, base1, v, ra, rt = _edge_fwd_step(t, C, K, R, base0, base1, edge_b, tv_b, tra_b, tb_b, tam_b, taz_b,
                                                     SR, KK, S, CP, KP, SP, FULL)
        elif RING:
            cum_n, dw_n, sb_n = _ring_terms(t + 1, L, T, C, cum_b, rot_b, sb_b, slot, rc3, c1, KR, HAS_SB)
            ring, bring, cring, base0, alpha, v, ra, rt = _fac_ring_step(
                t, R, ring, bring, cring, base0, cum_t, dw, sbt, slot, tr2, lab3, pos3,
                tv_b, to_b, tp_b, tra_b, trt_b, tb_b, tam_b, taz_b, ttm_b, ttz_b, SR, CP, SP, KR, HAS_SB, FULL)
            cum_t, dw, sbt = cum_n, dw_n, sb_n
        else:
            base0, base1, v, ra, rt = _fac_fwd_step(t, T, C, K, R, base0, base1, cum_b, sb_b, dur3, tr3,
                                                    tv_b, to_b, tp_b, tra_b, trt_b, tb_b, tam_b, taz_b, ttm_b, ttz_b,
                                                    SR, KK, S, CP, KP, SP, HAS_SB, FULL)
        if BACKPTR:
            bo = (b * (T + 1) + t) * C
            if RING:
                _put(bpa_ptr + bo, ra[:, None, None].to(tl.int16), lab3, pos3, C)
                _put(bpt_ptr + bo, rt[:, None, None].to(tl.int16), lab3, pos3, C)
            else:
                tl.store(bpa_ptr + bo + c2 + s2 * 0, ra.to(tl.int16), mask=(c2 < C) & (s2 == 0))
                tl.store(bpt_ptr + bo + c2 + s2 * 0, rt.to(tl.int16), mask=(c2 < C) & (s2 == 0))
        if SAVE_CK:
            j = (t + DELTA - 1) // DELTA
            r = t - j * DELTA + K - 1
            if (r >= 0) & (j < NBLK):  # the K steps before a block border
                ck = tl.cast((j * KP + r), tl.int64)
                cn = (b * NBLK + j) * 2
                if RING:  # SP = 1; the bases are per-label equal copies: label 0's. From the
                    # ring's layout, as the FULL rows (_fac_ring_step)
                    _put(ckv_b + ck * CP, v[:, None, None], lab3, pos3, CP)
                    _put(ckb_b + ck * 2, bt0, lab3 * 0, pos3, 1)
                    _put(ckb_b + ck * 2 + 1, bt0 * 0.0, lab3 * 0, pos3, 1)
                    if r == K - 1:  # t = j·Δ: the base the block after the border starts from
                        _put(ckn_ptr + cn, base0, lab3 * 0, pos3, 1)
                        _put(ckn_ptr + cn + 1, base0 * 0.0, lab3 * 0, pos3, 1)
                else:
                    tl.store(ckv_b + ck * (CP * SP) + c2 * SP + s2, v)
                    tl.store(ckb_b + ck * 2, bt0)
                    tl.store(ckb_b + ck * 2 + 1, bt1)
                    if r == K - 1:
                        tl.store(ckn_ptr + cn, base0)
                        tl.store(ckn_ptr + cn + 1, base1)
        if not RING:
            tl.debug_barrier()  # the next step reads the row this one wrote

    # value = ⊕_c α(L, c) [⊗ end[c]] + BASE(L)
    okf = (cr < C) & (s3 < S)
    if RING:
        x = alpha[:, None, None]  # (CP, 1, SP), SP = 1
        # BASE(L), the ring's slot of L, through memory from the ring's own layout: any reduction
        # of a loop-carried BASE here lays it out for itself, and Triton then carries a second
        # copy through the loop, exchanging α twice a step (sm_90: 6 CTA barriers a step, not 2)
        _put(bl_ptr + b, bring, lab3 * 0, pos3 - (L & (KR - 1)), 1)  # equal copies: one value
        tl.debug_barrier()
        bl0 = tl.load(bl_ptr + b)
        bl1 = bl0 * 0.0
    else:
        sl = L & (R - 1)
        bl0 = tl.load(tb_b + sl * 2)
        bl1 = tl.load(tb_b + sl * 2 + 1)
        if EDGES:
            x = tl.load(tv_b + sl * (CP * SP) + cr * SP + s3)
        else:  # α(0) is never stored: no segment ends at 0 (L = 0 only with unchecked lengths)
            x = tl.load(to_b + sl * (CP * SP) + cr * SP + s3, mask=L > 0, other=0.0)
    if EDGES:
        x = tl.where(okf, x, zero_value(s3, SR))
    else:
        e3 = tl.load(end_ptr + b * C + cr, mask=cr < C, other=0.0)
        x = tl.where(okf & (L > 0), mul_pot(x, e3, s3, SR), zero_value(s3, SR))
    v, rv, _, _ = plus0(x, SR, KK)  # (1, SP)
    if SR == ENTROPY:
        vb = v.to(tl.float64) + tl.where(s2 == 1, bl1, bl0)
    else:
        vb = v.to(tl.float64) + bl0
    tl.store(value_ptr + s2 * B + b, vb.to(value_ptr.dtype.element_ty), mask=s2 < S)  # (S, B)
    if BACKPTR:
        tl.store(fin_ptr + b + s2 * 0, rv, mask=s2 == 0)


# --------------------------------------------------------------------------------------
# backward steps
# --------------------------------------------------------------------------------------
@triton.jit
def _window_rows(rowq, ok, okr, slots, to_b, ta_b, tra_b, tam_b, taz_b, tb_b, SR: tl.constexpr):
    """What the backward needs of window rows q: the forward's ⊕ result, its adjoint (factored
    log: scaled by the row's LSE sum, ``_store_adjoint``), route (max/kmax) or LSE normalisers
    (log/entropy), and the rows' bases."""
    outq = tl.load(to_b + rowq, mask=ok, other=0.0)
    adjq = tl.load(ta_b + rowq, mask=ok, other=0.0)
    if SR == MAX or SR == KMAX:
        raq = tl.load(tra_b + rowq, mask=ok, other=0)
    else:
        raq = 0
    if SR == LOG or SR == ENTROPY:
        amq = tl.load(tam_b + rowq, mask=ok, other=0.0)
        azq = tl.load(taz_b + rowq, mask=ok, other=0.0)  # unread (so not loaded) where adjq is scaled
    else:
        amq = 0.0
        azq = 0.0
    bq0, bq1 = _load_bases(tb_b, slots, okr, SR)
    return outq, adjq, raq, amq, azq, bq0, bq1


@triton.jit
def _scaled_row(a, z_b, slot, CP: tl.constexpr, SP: tl.constexpr, SR: tl.constexpr, SCALED: tl.constexpr):
    """An adjoint a (CP, SP) as a SCALED ``vjp`` reads it: log: divided by the LSE sums of tape row
    ``slot`` of z_b (``scaled_adjoint``: the very float64 division vjp would make), in the
    layout a already has; else a."""
    if SCALED and SR == LOG:
        c2 = tl.arange(0, CP)[:, None]
        s2 = tl.arange(0, SP)[None, :]
        return scaled_adjoint(a, tl.load(z_b + slot * (CP * SP) + c2 * SP + s2), SR)
    else:
        return a


@triton.jit
def _store_adjoint(ta_b, taz_b, slot, R, a, CP: tl.constexpr, SP: tl.constexpr, SR: tl.constexpr,
                   SCALED: tl.constexpr):
    """Adjoint row ``slot`` (and its mirror) as the window pulls read it. SCALED (factored log):
    divided by the row's LSE sum here, once, instead of in each of the K later windows. The edge
    path keeps the division in its pull (its tile holds one per thread already)."""
    _store_row2(ta_b, slot, R, _scaled_row(a, taz_b, slot, CP, SP, SR, SCALED), CP, SP)


@triton.jit
def _source_row(tv_b, tb_b, sp, rows, ok, bq0, bq1, s3, SR: tl.constexpr, CP: tl.constexpr, SP: tl.constexpr):
    """Row p (slot sp) of τ, rebased to the bases of the window rows it feeds."""
    vp = tl.load(tv_b + sp * (CP * SP) + (rows * SP + s3), mask=ok, other=0.0)
    bp0 = tl.load(tb_b + sp * 2)
    bp1 = tl.load(tb_b + sp * 2 + 1)
    return vp + _offset(bp0, bp1, bq0, bq1, s3, SR).to(vp.dtype)


@triton.jit
def _fac_pull(p, L, C, K, R, cum_b, dur3, tv_b, to_b, tra_b, ta_b, tb_b, tam_b, taz_b,
              SR: tl.constexpr, KK: tl.constexpr, S: tl.constexpr, CP: tl.constexpr,
              KP: tl.constexpr, SP: tl.constexpr, SCALED: tl.constexpr):
    """Adjoint of τ(p) from α(p+d), d = 1..K, and the duration-potential adjoints (KP, CP).

    Window rows p+1..p+K are read upwards from the slot of p+1 (through the mirror)."""
    n3 = tl.arange(0, KP)[:, None, None]
    c3 = tl.arange(0, CP)[None, :, None]
    s3 = tl.arange(0, SP)[None, None, :]
    okr = (n3 < K) & (n3 < L - p)  # q = p+1+n3 <= L
    okc = okr & (c3 < C) & (s3 < S)
    lo = (p + 1) & (R - 1)
    rowq = lo * (CP * SP) + (n3 * (CP * SP) + c3 * SP + s3)
    outq, adjq, raq, amq, azq, bq0, bq1 = _window_rows(rowq, okc, okr, lo + n3, to_b, ta_b, tra_b, tam_b, taz_b,
                                                       tb_b, SR)
    vp = _source_row(tv_b, tb_b, p & (R - 1), c3, (c3 < C) & (s3 < S), bq0, bq1, s3, SR, CP, SP)
    cum_p = tl.load(cum_b + p * C + c3, mask=c3 < C, other=0.0)
    cum_q = tl.load(cum_b + (p + 1) * C + (n3 * C + c3), mask=okr & (c3 < C), other=0.0)
    w = (cum_q - cum_p).to(vp.dtype) + dur3
    x = mul_pot(vp, w, s3, SR)
    ct = tl.where(okc, vjp(x, outq, adjq, raq, amq, azq, n3, s3, SR, KK, SCALED), 0.0)
    a_tau = tl.sum(ct, axis=0)  # (CP, SP)
    gd = potgrad(ct, s3, SR, 2)  # (KP, CP)
    return a_tau, gd


@triton.jit
def _fac_tpull(p, C, R, a_tau, trT3, to_b, tp_b, trt_b, tv_b, ttm_b, ttz_b,
               SR: tl.constexpr, KK: tl.constexpr, S: tl.constexpr, CP: tl.constexpr,
               SP: tl.constexpr, HAS_SB: tl.constexpr, SCALED: tl.constexpr):
    """Adjoint of α(p, c') from τ(p, c) through the transition (rows c, columns c'); a_tau
    (SCALED: divided by τ(p)'s LSE sums in the window sum's layout, one label per thread, not in
    this tile's, where each thread holds a sixteenth of the labels).

    SCALED goes with TAPE_PULL (launch.TAPE_PULL): trT3 is then read from the kernel's
    transposed copy (contiguous along c'), so c' lies on the lanes, as c does in the window
    pull's tile, and the sum over c is in registers and across warps. Read from the transition
    itself, c lies on the lanes and each c' is summed by a float64 shuffle tree (166 shuffles
    a step in sm_90 code at K=30, C=39, against 8)."""
    cr = tl.arange(0, CP)[:, None, None]
    cc = tl.arange(0, CP)[None, :, None]
    s3 = tl.arange(0, SP)[None, None, :]
    sp = p & (R - 1)
    ap = tl.load(to_b + sp * (CP * SP) + cc * SP + s3)  # α(p, c') (1, CP, SP)
    x = mul_pot(ap, trT3, s3, SR)
    if HAS_SB:
        outp = tl.load(tp_b + sp * (CP * SP) + cr * SP + s3)
    else:
        outp = tl.load(tv_b + sp * (CP * SP) + cr * SP + s3)
    if SR == MAX or SR == KMAX:
        rtp = tl.load(trt_b + sp * (CP * SP) + cr * SP + s3)
    else:
        rtp = 0
    if SR == LOG or SR == ENTROPY:
        tmp = tl.load(ttm_b + sp * (CP * SP) + cr * SP + s3)
    else:
        tmp = 0.0
    if SR == ENTROPY or (SR == LOG and not SCALED):
        tzp = tl.load(ttz_b + sp * (CP * SP) + cr * SP + s3)
    else:
        tzp = 0.0
    ct = vjp(x, outp, tl.expand_dims(a_tau, 1), rtp, tmp, tzp, cc, s3, SR, KK, SCALED)
    ct = tl.where((cr < C) & (cc < C) & (s3 < S), ct, 0.0)
    a_alpha = tl.sum(ct, axis=0)  # (CP, SP) over c'
    gt = potgrad(ct, s3, SR, 2)  # (CP c, CP c')
    return a_alpha, gt


@triton.jit
def _edge_pull(p, L, C, K, R, edge_b, gedge_b, tv_b, tra_b, ta_b, tb_b, tam_b, taz_b,
               SR: tl.constexpr, KK: tl.constexpr, S: tl.constexpr, CP: tl.constexpr,
               KP: tl.constexpr, SP: tl.constexpr):
    """Adjoint of α(p, c') from α(p+d, c); writes the edge adjoints of segments starting at p."""
    i3 = tl.arange(0, KP * CP)[:, None, None]
    dd = i3 // CP  # d - 1
    cd = i3 % CP  # destination label c
    cc = tl.arange(0, CP)[None, :, None]  # source label c'
    s3 = tl.arange(0, SP)[None, None, :]
    okr = (dd < K) & (dd < L - p) & (cd < C)
    okq = okr & (s3 < S)
    lo = (p + 1) & (R - 1)
    rowq = lo * (CP * SP) + (dd * (CP * SP) + cd * SP + s3)
    outq, adjq, raq, amq, azq, bq0, bq1 = _window_rows(rowq, okq, okr, lo + dd, tv_b, ta_b, tra_b, tam_b, taz_b,
                                                       tb_b, SR)
    vp = _source_row(tv_b, tb_b, p & (R - 1), cc, (cc < C) & (s3 < S), bq0, bq1, s3, SR, CP, SP)
    eoff = p * ((K + 1) * C * C) + ((dd + 1) * (C * C) + cd * C + cc)  # (KP·CP, CP, 1)
    oke = okr & (cc < C)
    e = tl.load(edge_b + eoff, mask=oke, other=0.0)
    x = mul_pot(vp, e, s3, SR)
    ct = tl.where(oke & (s3 < S), vjp(x, outq, adjq, raq, amq, azq, dd * CP + cc, s3, SR, KK), 0.0)
    a_alpha = tl.sum(ct, axis=0)  # (CP c', SP)
    ge = potgrad(ct, s3, SR, 2)  # (KP·CP, CP)
    i2 = tl.arange(0, KP * CP)[:, None]
    c2 = tl.arange(0, CP)[None, :]
    ok2 = (i2 // CP < K) & (i2 // CP < L - p) & (i2 % CP < C) & (c2 < C)
    tl.store(gedge_b + p * ((K + 1) * C * C) + ((i2 // CP + 1) * (C * C) + (i2 % CP) * C + c2),
             ge.to(gedge_b.dtype.element_ty), mask=ok2)
    return a_alpha


@triton.jit
def _final_pull(L, GV_S, C, R, gv_b, end_b, gend_b, tv_b, to_b,
                SR: tl.constexpr, KK: tl.constexpr, S: tl.constexpr, CP: tl.constexpr,
                SP: tl.constexpr, EDGES: tl.constexpr):
    """Adjoint of α(L, ·) from the value's adjoint; writes the end-potential adjoint."""
    cr = tl.arange(0, CP)[:, None, None]
    s3 = tl.arange(0, SP)[None, None, :]
    sl = L & (R - 1)
    okf = (cr < C) & (s3 < S)
    if EDGES:
        x = tl.load(tv_b + sl * (CP * SP) + cr * SP + s3)
        x = tl.where(okf, x, zero_value(s3, SR))
    else:  # α(0): see scan_fwd_kernel's final read
        okf = okf & (L > 0)
        x = tl.load(to_b + sl * (CP * SP) + cr * SP + s3, mask=L > 0, other=0.0)
        e3 = tl.load(end_b + cr, mask=cr < C, other=0.0)
        x = tl.where(okf, mul_pot(x, e3, s3, SR), zero_value(s3, SR))
    v, rv, vm, vz = plus0(x, SR, KK)  # (1, SP)
    g = tl.load(gv_b + s3 * GV_S, mask=s3 < S, other=0.0)  # (1, 1, SP) from grad_value (S, B)
    ct = tl.where(okf, vjp(x, tl.expand_dims(v, 0), g, tl.expand_dims(rv, 0), tl.expand_dims(vm, 0),
                             tl.expand_dims(vz, 0), cr, s3, SR, KK), 0.0)
    a_alpha = tl.sum(ct, axis=1)  # (CP, SP)
    if not EDGES:
        ge = potgrad(ct, s3, SR, 2)  # (CP, 1)
        c2 = tl.arange(0, CP)[:, None]
        tl.store(gend_b + c2, ge.to(gend_b.dtype.element_ty), mask=c2 < C)
    return a_alpha


@triton.jit
def _pull_terms(p, C, R, cum_b, rotb_b, tv_b, to_b, tp_b, tra_b, trt_b, tb_b, tam_b, taz_b, ttm_b, ttz_b,
                slot, rc3, col3, SR: tl.constexpr, CP: tl.constexpr, KR: tl.constexpr, HAS_SB: tl.constexpr):
    """What adjoint ring step p reads (tape row p, S[p], the slots' duration terms), loaded
    a step ahead, off the dependency chain, each in the shape it is used in (SP = 1): ring
    rows (CP, 1, 1) (the transition tile's c' too), the ring (CP, KO, LANES), and the
    transition tile's columns c, laid along the ring's lanes (1, 1, LANES). ``ar``, ``aq``:
    row p's α normalisers (log: max, sum) or route and α (max), for its ring insert; ``tr``,
    ``tq``: τ(p)'s (log: max, sum; max: route, τ before the start bias), for the transition
    pull."""
    sp = (p & (R - 1)) * CP
    tau = tl.load(tv_b + sp + rc3)
    bp = tl.load(tb_b + (p & (R - 1)) * 2)
    cum_p = tl.load(cum_b + p * C + rc3, mask=rc3 < C, other=0.0)
    dw = tl.load(rotb_b + rc3 * (2 * KR) + ((-p) & (KR - 1)) + slot)
    alpha = tl.load(to_b + sp + rc3)  # α(p, c'): the tile's rows (max: and the ring insert's)
    col = col3 < CP  # the tile's columns c = lane
    if SR == LOG:
        ar = tl.load(tam_b + sp + rc3)
        aq = tl.load(taz_b + sp + rc3)
        tr = tl.load(ttm_b + sp + col3, mask=col, other=0.0)
        tq = tl.load(ttz_b + sp + col3, mask=col, other=0.0)
    else:
        ar = tl.load(tra_b + sp + rc3)
        aq = alpha
        tr = tl.load(trt_b + sp + col3, mask=col, other=0)
        if HAS_SB:
            tq = tl.load(tp_b + sp + col3, mask=col, other=float("-inf"))
        else:
            tq = tl.load(tv_b + sp + col3, mask=col, other=float("-inf"))
    return tau, bp, cum_p, dw, alpha, ar, aq, tr, tq


@triton.jit
def _ring_adj_weights(p, L, K, tau, bp, cum_p, dw, alpha, tr, tq, aok, amr, rar, bqr, cqr, trs, C, slot, rc3, col3,
                      SR: tl.constexpr, KR: tl.constexpr):
    """The weights of adjoint step p, off the dependency chain (computed a step ahead):
    window w (CP, KO, LANES) and transition wt (CP, 1, LANES), 0 where ``vjp`` gives none.
    Window rows q = p+1..p+K (slot q mod KR): the term τ(p) + fp(BASE(p) - BASE(q)) +
    (fp(S[q] - S[p]) + duration) exactly as the forward formed it, exp(x - m(q)) (log) or the
    route's indicator (max): ``_fac_pull``'s candidates and roundings. Transition (c', c = lane):
    exp(α(p, c') + tr[c', c] - m(p, c)) or the route c' of τ(p, c) (``_fac_tpull``)."""
    d = (slot - p) & (KR - 1)  # the slot's duration: row q = p + d
    okq = (d >= 1) & (d <= K) & (d <= L - p) & aok
    okt = (rc3 < C) & (col3 < C)
    if SR == LOG:
        off = (bp - bqr).to(amr.dtype)
        x = (tau + off) + ((cqr - cum_p).to(amr.dtype) + dw)
        w = tl.where(okq, tl.exp(x - amr), 0.0)
        wt = tl.where(okt & (tq > 0), tl.exp((alpha + trs) - tr), 0.0)
    else:
        w = tl.where(okq & (rar == d - 1), 1.0, 0.0)
        wt = tl.where(okt & (tr == rc3) & (tq > float("-inf")), 1.0, 0.0)
    return w, wt


@triton.jit
def _ring_adj_tau(w, asc):
    """Adjoint of τ(p) (CP, 1, 1) float64, and its terms ct by slot: the weights times the
    ring's adj(q) / z(q) (log; max: adj(q)), as ``vjp`` (a weight 0 gives 0), summed by
    slot (in-thread, then across lanes) instead of by duration."""
    ct = w.to(tl.float64) * asc
    return tl.sum(tl.sum(ct, axis=1, keep_dims=True), axis=2, keep_dims=True), ct


@triton.jit
def _ring_adj_fold(p, L, K, ct, gsc_b, gdur, lab3, pos3, CP: tl.constexpr, KP: tl.constexpr, KR: tl.constexpr,
                   GM: tl.constexpr):
    """Duration adjoints of step p, off the chain: its terms ct (by slot; the slot's duration
    rotates with p) are stored from registers (lab3, pos3: as ``_put``, in ct's layout) to the
    scratch gsc_b of 2·GM steps, and folded into gdur (KP, CP) by duration once per GM steps,
    p descending as the tape pull adds them (one barrier; the other half is written meanwhile)."""
    tl.store(gsc_b + (p & (2 * GM - 1)) * (CP * KR) + lab3 * KR + pos3, ct)
    if p % GM == 0:
        tl.debug_barrier()
        n2 = tl.arange(0, KP)[:, None]
        c2 = tl.arange(0, CP)[None, :]
        for i in range(0, GM):
            pp = p + GM - 1 - i
            g = tl.load(gsc_b + (pp & (2 * GM - 1)) * (CP * KR) + c2 * KR + ((pp + n2 + 1) & (KR - 1)),
                        mask=(n2 < K) & (pp < L), other=0.0)
            gdur += g
    return gdur


@triton.jit
def _ring_adj_insert(p, a_alpha, ar, aq, bp, cum_p, asc, aok, amr, rar, bqr, cqr, slot,
                     SR: tl.constexpr, KR: tl.constexpr):
    """Row p into the adjoint ring (slot p mod KR): its scaled adjoint a_alpha (CP, 1, 1) / z(p) (log;
    as ``vjp``: 0 weights where z = 0) or a_alpha (max), mask, normaliser or route, base, S[p]."""
    new = slot == (p & (KR - 1))
    if SR == LOG:
        ok = aq > 0
        sc = a_alpha / tl.where(ok, aq, 1.0)
    else:
        ok = aq > float("-inf")
        sc = a_alpha + tl.zeros(ok.shape, dtype=tl.float64)
    asc = tl.where(new, sc, asc)
    aok = tl.where(new, ok, aok)
    if SR == LOG:
        amr = tl.where(new, ar, amr)
    else:
        rar = tl.where(new, ar, rar)
    bqr = tl.where(new, bp, bqr)
    cqr = tl.where(new, cum_p, cqr)
    return asc, aok, amr, rar, bqr, cqr


@triton.jit
def _ring_adj_tpull(a_tau, wt, tq, rc3, col3, SR: tl.constexpr):
    """Adjoint of α(p, c') (CP, 1, 1) from a_tau(c) (CP, 1, 1) through the transition tile laid
    out as the ring (c' on its label axis, c on its lanes: the tile's sums stay within warps),
    and the tile's own adjoint (the transition's): the weights wt times a_tau(c) / z(p, c)
    (log; max: a_tau(c)), as ``vjp``. a_tau reaches the lanes by one exchange across warps
    (a sum of one value and zeros: exact)."""
    at = tl.sum(tl.where(rc3 == col3, a_tau, 0.0), axis=0, keep_dims=True)  # (1, 1, LANES): a_tau(c = lane)
    if SR == LOG:
        at = at / tl.where(tq > 0, tq, 1.0)
    ct = wt.to(tl.float64) * at
    return tl.sum(tl.sum(ct, axis=1, keep_dims=True), axis=2, keep_dims=True), ct


@triton.jit
def _ring_adj_save(sv_b, asc, lab3, pos3, CP: tl.constexpr, KR: tl.constexpr, aok=None, amr=None, rar=None,
                   bqr=None, cqr=None, SR: tl.constexpr = 0):
    """Store the adjoint ring (float64 rows of sv_b: asc, aok, amr or rar, bqr, cqr; without
    the rest: asc as every row, the empty ring) at a block's end, from registers. Carried
    through the loop over blocks instead, the ring would stay live across the recompute and
    keep a layout of its own there (layout exchanges in every step)."""
    o = lab3 * KR + pos3
    tl.store(sv_b + o, asc)
    if aok is None:
        for i in tl.static_range(1, 5):
            tl.store(sv_b + i * (CP * KR) + o, asc)
    else:
        tl.store(sv_b + CP * KR + o, aok.to(tl.float64))
        if SR == LOG:
            tl.store(sv_b + 2 * CP * KR + o, amr.to(tl.float64))
        else:
            tl.store(sv_b + 2 * CP * KR + o, rar.to(tl.float64))
        tl.store(sv_b + 3 * CP * KR + o, bqr)
        tl.store(sv_b + 4 * CP * KR + o, cqr)


@triton.jit
def _ring_adj_load(sv_b, lab3, pos3, amr_dtype: tl.constexpr, CP: tl.constexpr, KR: tl.constexpr):
    """The adjoint ring ``_ring_adj_save`` stored (by the same threads: no barrier)."""
    o = lab3 * KR + pos3
    asc = tl.load(sv_b + o)
    aok = tl.load(sv_b + CP * KR + o) != 0
    third = tl.load(sv_b + 2 * CP * KR + o)
    bqr = tl.load(sv_b + 3 * CP * KR + o)
    cqr = tl.load(sv_b + 4 * CP * KR + o)
    return asc, aok, third.to(amr_dtype), third.to(tl.int32), bqr, cqr


# --------------------------------------------------------------------------------------
# backward kernel
# --------------------------------------------------------------------------------------
@triton.jit(do_not_specialize=["T", "R", "DELTA", "NBLK", "I"])
def scan_bwd_kernel(
    # operands (launch.Operands) and the value's adjoint (S, B), any strides
    cum_ptr, trans_ptr, dur_ptr, tau0_ptr, end_ptr, sb_ptr, edges_ptr, lengths_ptr, gv_ptr,
    # tape (launch.Tape); checkpoints (launch.Checkpoints, RECOMPUTE from a saved block)
    tv_ptr, to_ptr, tp_ptr, tra_ptr, trt_ptr, ta_ptr, tb_ptr, tam_ptr, taz_ptr, ttm_ptr, ttz_ptr,
    ckv_ptr, ckb_ptr, ckn_ptr,
    # gradients (launch.Grads)
    gcum_ptr, gtr_ptr, gdur_ptr, gtau0_ptr, gend_ptr, gsb_ptr, gedge_ptr,
    # the rings' rotated duration tables (B, 2, CP, 2·KR) and RING_ADJ's duration-adjoint scratch
    # (B, 2·GM, CP, KR) float64, written by the kernel (launch._bwd)
    rot_ptr, gsc_ptr,
    # the transposed transition (B, CP, CP) of the tape's transition pull, written by the kernel
    trs_ptr,
    B, T, C, K, R, DELTA, NBLK, I, GV_S, GV_B,
    SR: tl.constexpr, KK: tl.constexpr, S: tl.constexpr, CP: tl.constexpr, KP: tl.constexpr,
    SP: tl.constexpr, EDGES: tl.constexpr, HAS_SB: tl.constexpr, RECOMPUTE: tl.constexpr,
    KR: tl.constexpr, USE_RING_RECOMPUTE: tl.constexpr, USE_RING_ADJOINT: tl.constexpr, GM: tl.constexpr,
    PIPE: tl.constexpr, TAPE_PULL: tl.constexpr = False,
):
    """Gradients of the scan. RECOMPUTE: rebuild each block's tape rows from its
    checkpoint (O(√(T·K)) memory); else the forward stored every row (one block).
    A None pointer is a constexpr None: its offsets below are never formed.

    RING_RC (launch.RING_RECOMPUTE; factored log / max): the recompute steps on the register
    ring (``_fac_ring_step`` with the FULL stores), reloaded from each checkpoint: the rows it
    writes are, bit for bit, those of a ring forward that kept the whole tape. RING_ADJ
    (launch.RING_ADJOINT; factored log / max, CP <= min(KR, 32)): the adjoint pass on the
    adjoint ring (module docstring), no adjoint tape. Entropy, kmax and the edge path keep the tape steps
    (``_fac_fwd_step``, ``_edge_fwd_step``, ``_fac_pull``, ``_edge_pull``).

    PIPE (launch.PIPELINE_BACKWARD; RING_RC and RING_ADJ): two programs per sequence and one
    launch per block, I = 0..NBLK. In launch I the recompute program (odd id) rebuilds block
    nb-1-I while the adjoint program (even id) runs the adjoints of block nb-I, which the
    previous launch recomputed: the recompute no longer adds to the chain of one CTA (the
    launch boundary orders them). The roles differ by loop bounds, not by a branch around the
    recompute steps (inside one, sm_90 code has 10 CTA barriers per step instead of 6). The
    tape ring holds two blocks (R >= 2Δ + 2K + 1: the two programs' rows never share a slot,
    except row t0, which the adjoint program loads ahead and does not use); gdur and the
    transition's adjoints are carried from launch to launch in float64 (gsc_ptr), as the
    adjoint ring already is between blocks."""
    RING_RC: tl.constexpr = USE_RING_RECOMPUTE and RECOMPUTE and (not EDGES) and (SR == LOG or SR == MAX)
    RING_ADJ: tl.constexpr = USE_RING_ADJOINT and (not EDGES) and (SR == LOG or SR == MAX) and (CP <= KR) and (CP <= 32)
    PULL_T: tl.constexpr = TAPE_PULL and (not EDGES) and (not RING_ADJ)  # launch.TAPE_PULL (_fac_tpull)
    tl.static_assert((not PIPE) or (RING_RC and RING_ADJ), "PIPE needs the ring recompute and the ring adjoint")
    pid = tl.program_id(0)
    if PIPE:
        b = tl.cast(pid // 2, tl.int64)
        do_rc = pid % 2 == 1
        do_adj = pid % 2 == 0
        first = do_adj & (I == 0)  # the launch that starts the carried state
        last = do_adj & (I == NBLK)  # the launch that writes the gradients out
    else:
        b = tl.cast(pid, tl.int64)
        do_rc = True
        do_adj = True
        first = True
        last = True
    L = tl.minimum(tl.maximum(tl.load(lengths_ptr + b).to(tl.int32), 0), T)  # unchecked lengths stay in bounds
    rows = _tape_rows(T, K, R)
    tape = b * rows * (CP * SP)
    tv_b = tv_ptr + tape
    ta_b = None if ta_ptr is None else ta_ptr + tape  # RING_ADJ keeps the adjoints in registers
    to_b = None if to_ptr is None else to_ptr + tape
    tp_b = None if tp_ptr is None else tp_ptr + tape
    tra_b = None if tra_ptr is None else tra_ptr + tape
    trt_b = None if trt_ptr is None else trt_ptr + tape
    tam_b = None if tam_ptr is None else tam_ptr + tape
    taz_b = None if taz_ptr is None else taz_ptr + tape
    ttm_b = None if ttm_ptr is None else ttm_ptr + tape
    ttz_b = None if ttz_ptr is None else ttz_ptr + tape
    tb_b = tb_ptr + b * rows * 2
    cum_b = None if cum_ptr is None else cum_ptr + b * (T + 1) * C
    sb_b = None if sb_ptr is None else sb_ptr + b * T * C
    edge_b = None if edges_ptr is None else edges_ptr + b * T * (K + 1) * C * C
    gedge_b = None if gedge_ptr is None else gedge_ptr + b * T * (K + 1) * C * C
    gcum_b = None if gcum_ptr is None else gcum_ptr + b * (T + 1) * C
    gsb_b = None if gsb_ptr is None else gsb_ptr + b * T * C
    end_b = None if end_ptr is None else end_ptr + b * C
    gend_b = None if gend_ptr is None else gend_ptr + b * C
    ckv_b = None if ckv_ptr is None else ckv_ptr + b * NBLK * (KP * CP * SP)
    ckb_b = None if ckb_ptr is None else ckb_ptr + b * NBLK * (KP * 2)

    n3 = tl.arange(0, KP)[:, None, None]
    c3 = tl.arange(0, CP)[None, :, None]
    cr = tl.arange(0, CP)[:, None, None]
    s3 = tl.arange(0, SP)[None, None, :]
    c2 = tl.arange(0, CP)[:, None]
    s2 = tl.arange(0, SP)[None, :]
    c1 = tl.arange(0, CP)
    if not EDGES:
        dur3 = tl.load(dur_ptr + b * K * C + n3 * C + c3, mask=(n3 < K) & (c3 < C), other=0.0)
        amr_dtype = dur3.dtype
        tr3 = tl.load(trans_ptr + b * C * C + cr * C + c3, mask=(cr < C) & (c3 < C), other=float("-inf"))
        # the tape's transition pull (c, c'): from a transposed copy (PULL_T, see _fac_tpull) or the transition
        if PULL_T:
            # the copy from a load of its own, read transposed: storing tr3 itself would lay tr3
            # out for this store, and the recompute's τ sum over tr3 would then round otherwise
            # than the forward's (GPU only: recomputed rows off the checkpoints, 3e-5 gradients)
            one = (L >= 0).to(tl.int32)  # opaque: indices of their own, not tr3's (see _ring_setup)
            ri = cr * one
            rj = c3 - (one - 1)  # an opaque 0: still contiguous along c'
            trc = tl.load(trans_ptr + b * C * C + rj * C + ri, mask=(ri < C) & (rj < C), other=float("-inf"))
            tl.store(trs_ptr + b * (CP * CP) + ri * CP + rj, trc)
            tl.debug_barrier()
            trT3 = tl.load(trs_ptr + b * (CP * CP) + ri * CP + rj)
        elif not RING_ADJ:
            trT3 = tl.load(trans_ptr + b * C * C + c3 * C + cr, mask=(cr < C) & (c3 < C), other=float("-inf"))
    if RING_RC or RING_ADJ:
        rc3, slot, lab3, pos3, tr2 = _ring_setup(L, C, trans_ptr + b * C * C, CP, KR)
        rot_b = rot_ptr + b * 2 * CP * (2 * KR)  # the forward's table, then the adjoints' (read after a barrier)
        if RING_RC:
            if do_rc:
                _rotate_durations(dur_ptr + b * K * C, rot_b, C, K, CP, KR, -1)
        if RING_ADJ:
            if do_adj:
                _rotate_durations(dur_ptr + b * K * C, rot_b + CP * (2 * KR), C, K, CP, KR, 1)
            gsc_b = gsc_ptr + b * (2 * GM + 5 + 2 * PIPE) * (CP * KR)
            sv_b = gsc_b + 2 * GM * (CP * KR)  # the adjoint ring between blocks
            if first:
                _ring_adj_save(sv_b, tl.zeros(slot.shape, dtype=tl.float64) + tl.zeros((CP, 1, 1), dtype=tl.float64),
                               lab3, pos3, CP, KR)
            rotb_b = rot_b + CP * (2 * KR)
            # the transition tile (c', 1, c = lane) and its adjoint
            LANES: tl.constexpr = 32 if KR > 32 else KR
            col3 = tl.arange(0, LANES)[None, None, :]
            trs = tl.load(trans_ptr + b * C * C + rc3 * C + col3, mask=(rc3 < C) & (col3 < C), other=float("-inf"))
            gtrs = tl.zeros(trs.shape, dtype=tl.float64)
            if PIPE:  # the sums of the launches before (PIPE), after the adjoint ring's rows
                carry_b = sv_b + 5 * (CP * KR)
                gtrs = tl.load(carry_b + CP * KR + rc3 * LANES + col3, mask=do_adj & (I > 0) & (rc3 < CP), other=0.0)
        tl.debug_barrier()  # the tables
    # adjoints are float64 (semiring.vjp); so are these sums over up to 10^6 positions
    gdur = tl.zeros((KP, CP), dtype=tl.float64)
    gtr = tl.zeros((CP, CP), dtype=tl.float64)
    k2 = tl.arange(0, KP)[:, None]
    cc2 = tl.arange(0, CP)[None, :]
    if PIPE:
        gdur = tl.load(carry_b + k2 * CP + cc2, mask=do_adj & (I > 0) & (k2 < KP), other=0.0)

    nb = (L + DELTA - 1) // DELTA
    jj_lo = 0
    jj_hi = nb
    if PIPE:  # this program's block of launch I (none: an empty range)
        jj_hi = tl.minimum(I + (pid % 2), nb)
        jj_lo = tl.minimum(tl.maximum(I + (pid % 2) - 1, 0), jj_hi)
    for jj in range(jj_lo, jj_hi):
        j = nb - 1 - jj
        t0 = j * DELTA
        t1 = tl.minimum(t0 + DELTA, L)
        if RECOMPUTE:
            # ---- prologue: ring rows t0-K+1..t0 from the checkpoint (or position 0) ----
            if j == 0:
                v0 = _row0(tau0_ptr, sb_b, tv_ptr, b, B, C, S, CP, SP, SR, EDGES, HAS_SB)
                zero64 = tl.zeros((), dtype=tl.float64)
                _store_row2(tv_b, 0, R, v0, CP, SP)
                _store_base2(tb_b, 0, R, zero64, zero64)
                sh0, sh1 = shift(v0, SR)
                base0 = sh0.to(tl.float64)
                base1 = sh1.to(tl.float64)
                if RING_RC:
                    ring, bring, cring, rbase = _ring_start(v0, base0, cum_b, C, rc3, slot, CP)
            elif RING_RC:  # the adjoints read no row <= t0 of this block: the ring alone
                ring, bring, cring, rbase = _ring_from_checkpoint(ckv_b, ckb_b, ckn_ptr + b * NBLK * 2, cum_b, C, K,
                                                                  t0, j, rc3, slot, CP, KP, KR)
            else:
                okr = n3 < K
                cks = (t0 - K + 1 + n3) & (R - 1)
                ck = tl.cast((j * KP + n3), tl.int64)
                vals = tl.load(ckv_b + ck * (CP * SP) + c3 * SP + s3, mask=okr, other=0.0)
                tl.store(tv_b + cks * (CP * SP) + c3 * SP + s3, vals, mask=okr)
                tl.store(tv_b + (cks + R) * (CP * SP) + c3 * SP + s3, vals, mask=okr)
                cb0 = tl.load(ckb_b + ck * 2, mask=okr, other=0.0)
                cb1 = tl.load(ckb_b + ck * 2 + 1, mask=okr, other=0.0)
                tl.store(tb_b + cks * 2, cb0, mask=okr)
                tl.store(tb_b + cks * 2 + 1, cb1, mask=okr)
                tl.store(tb_b + (cks + R) * 2, cb0, mask=okr)
                tl.store(tb_b + (cks + R) * 2 + 1, cb1, mask=okr)
                base0 = tl.load(ckn_ptr + (b * NBLK + j) * 2)
                base1 = tl.load(ckn_ptr + (b * NBLK + j) * 2 + 1)
            tl.debug_barrier()
            # ---- recompute the block's rows (PIPE: the adjoint program only runs the prologue, whose
            # stores are row 0's, the very bits its block's recompute wrote a launch before) ----
            t_end = t1 + 1
            if PIPE:
                t_end = tl.where(do_rc, t1 + 1, t0 + 1)
            if RING_RC:
                cum_t, dw, sbt = _ring_terms(t0 + 1, L, T, C, cum_b, rot_b, sb_b, slot, rc3, c1, KR, HAS_SB)
            for t in range(t0 + 1, t_end):
                if EDGES:
                    base0, base1, v, ra, rt = _edge_fwd_step(t, C, K, R, base0, base1, edge_b, tv_b, tra_b, tb_b, tam_b, taz_b,
                                                             SR, KK, S, CP, KP, SP, True)
                elif RING_RC:
                    cum_n, dw_n, sb_n = _ring_terms(t + 1, L, T, C, cum_b, rot_b, sb_b, slot, rc3, c1, KR, HAS_SB)
                    ring, bring, cring, rbase, alpha, v, ra, rt = _fac_ring_step(
                        t, R, ring, bring, cring, rbase, cum_t, dw, sbt, slot, tr2, lab3, pos3,
                        tv_b, to_b, tp_b, tra_b, trt_b, tb_b, tam_b, taz_b, ttm_b, ttz_b, SR, CP, SP, KR, HAS_SB, True)
                    cum_t, dw, sbt = cum_n, dw_n, sb_n
                else:
                    base0, base1, v, ra, rt = _fac_fwd_step(t, T, C, K, R, base0, base1, cum_b, sb_b, dur3, tr3,
                                                    tv_b, to_b, tp_b, tra_b, trt_b, tb_b, tam_b, taz_b, ttm_b, ttz_b,
                                                    SR, KK, S, CP, KP, SP, HAS_SB, True)
                if not RING_RC:
                    tl.debug_barrier()  # the next step reads the row this one wrote
            if RING_RC:
                tl.debug_barrier()  # the adjoints read the rows the ring stored
        if do_adj:  # (PIPE: the adjoint program)
            # ---- adjoints, positions t1 down to t0+1 (and 0 in the first block) ----
            hi = t1
            if RING_ADJ:
                asc, aok, amr, rar, bqr, cqr = _ring_adj_load(sv_b, lab3, pos3, amr_dtype, CP, KR)
            if t1 == L:
                a_alpha = _final_pull(L, GV_S, C, R, gv_ptr + b * GV_B, end_b, gend_b, tv_b, to_b,
                                      SR, KK, S, CP, SP, EDGES)
                if RING_ADJ:
                    tau, bp, cum_p, dw, alpha, ar, aq, tr, tq = _pull_terms(
                        L, C, R, cum_b, rotb_b, tv_b, to_b, tp_b, tra_b, trt_b, tb_b, tam_b, taz_b, ttm_b, ttz_b,
                        slot, rc3, col3, SR, CP, KR, HAS_SB)
                    asc, aok, amr, rar, bqr, cqr = _ring_adj_insert(L, a_alpha[:, :, None], ar, aq, bp, cum_p,
                                                                    asc, aok, amr, rar, bqr, cqr, slot, SR, KR)
                else:
                    _store_adjoint(ta_b, taz_b, L & (R - 1), R, a_alpha, CP, SP, SR, PULL_T)
                if not EDGES:
                    pa = potgrad(a_alpha, s2, SR, 1)
                    tl.store(gcum_b + L * C + c1, pa, mask=c1 < C)
                hi = L - 1
                if not RING_ADJ:
                    tl.debug_barrier()
            lo = t0 + 1
            if EDGES:
                if j == 0:
                    lo = lo - lo
            if RING_ADJ:
                # positions hi..lo on the adjoint ring: the chain per step is the K-reduction, the
                # C x C transition pull and the ring insert; tape rows are loaded a step ahead, and
                # the next step's weights are formed while this step's chain waits
                tau, bp, cum_p, dw, alpha, ar, aq, tr, tq = _pull_terms(
                    hi, C, R, cum_b, rotb_b, tv_b, to_b, tp_b, tra_b, trt_b, tb_b, tam_b, taz_b, ttm_b, ttz_b,
                    slot, rc3, col3, SR, CP, KR, HAS_SB)
                w, wt = _ring_adj_weights(hi, L, K, tau, bp, cum_p, dw, alpha, tr, tq, aok, amr, rar, bqr, cqr, trs, C,
                                          slot, rc3, col3, SR, KR)
                for i in range(0, hi - lo + 1):
                    p = hi - i
                    # row p - 1 (at the block's first position, a row the next block recomputes first: unused)
                    tau_n, bp_n, cum_n, dw_n, alpha_n, ar_n, aq_n, tr_n, tq_n = _pull_terms(
                        p - 1, C, R, cum_b, rotb_b, tv_b, to_b, tp_b, tra_b, trt_b, tb_b, tam_b, taz_b, ttm_b, ttz_b,
                        slot, rc3, col3, SR, CP, KR, HAS_SB)
                    a_tau, ct = _ring_adj_tau(w, asc)
                    a_alpha, gt = _ring_adj_tpull(a_tau, wt, tq, rc3, col3, SR)
                    asc, aok, amr, rar, bqr, cqr = _ring_adj_insert(p, a_alpha, ar, aq, bp, cum_p,
                                                                    asc, aok, amr, rar, bqr, cqr, slot, SR, KR)
                    w, wt = _ring_adj_weights(p - 1, L, K, tau_n, bp_n, cum_n, dw_n, alpha_n, tr_n, tq_n, aok, amr, rar,
                                              bqr, cqr, trs, C, slot, rc3, col3, SR, KR)
                    gtrs += gt
                    _put(gcum_b + p * C, a_alpha - a_tau, lab3, pos3, C)
                    if HAS_SB:
                        _put(gsb_b + p * C, a_tau.to(dur3.dtype), lab3, pos3, C)
                    gdur = _ring_adj_fold(p, L, K, ct, gsc_b, gdur, lab3, pos3, CP, KP, KR, GM)
                    tau, bp, cum_p, tq = tau_n, bp_n, cum_n, tq_n
                    ar, aq = ar_n, aq_n
                if j == 0:  # position 0 (weights and terms: row lo - 1 = 0): τ(0) has no transition
                    a_tau, ct = _ring_adj_tau(w, asc)
                    gdur = _ring_adj_fold(0, L, K, ct, gsc_b, gdur, lab3, pos3, CP, KP, KR, GM)
                    _put(gcum_b, -a_tau, lab3, pos3, C)
                    if HAS_SB:
                        _put(gsb_b, a_tau.to(dur3.dtype), lab3, pos3, C)
                    _put(gtau0_ptr + b * C, a_tau.to(dur3.dtype), lab3, pos3, C)
                _ring_adj_save(sv_b, asc, lab3, pos3, CP, KR, aok, amr, rar, bqr, cqr, SR)
            else:
                for i in range(0, hi - lo + 1):
                    p = hi - i
                    if EDGES:
                        a_alpha = _edge_pull(p, L, C, K, R, edge_b, gedge_b, tv_b, tra_b, ta_b, tb_b, tam_b, taz_b,
                                             SR, KK, S, CP, KP, SP)
                    else:
                        a_tau, gd = _fac_pull(p, L, C, K, R, cum_b, dur3, tv_b, to_b, tra_b, ta_b, tb_b, tam_b, taz_b,
                                              SR, KK, S, CP, KP, SP, PULL_T)
                        a_st = _scaled_row(a_tau, ttz_b, p & (R - 1), CP, SP, SR, PULL_T)
                        a_alpha, gt = _fac_tpull(p, C, R, a_st, trT3, to_b, tp_b, trt_b, tv_b, ttm_b, ttz_b,
                                                 SR, KK, S, CP, SP, HAS_SB, PULL_T)
                        gdur += gd
                        gtr += gt
                        pa = potgrad(a_alpha, s2, SR, 1)
                        pt = potgrad(a_tau, s2, SR, 1)
                        pp = p
                        tl.store(gcum_b + pp * C + c1, pa - pt, mask=c1 < C)
                        if HAS_SB:
                            tl.store(gsb_b + pp * C + c1, pt.to(dur3.dtype), mask=c1 < C)
                    _store_adjoint(ta_b, taz_b, p & (R - 1), R, a_alpha, CP, SP, SR, PULL_T)
                    tl.debug_barrier()
            if not (EDGES or RING_ADJ):
                if j == 0:
                    a_tau, gd = _fac_pull(0, L, C, K, R, cum_b, dur3, tv_b, to_b, tra_b, ta_b, tb_b, tam_b, taz_b,
                                          SR, KK, S, CP, KP, SP, PULL_T)
                    gdur += gd
                    pt = potgrad(a_tau, s2, SR, 1)
                    tl.store(gcum_b + c1, -pt, mask=c1 < C)
                    if HAS_SB:
                        tl.store(gsb_b + c1, pt.to(dur3.dtype), mask=c1 < C)
                    tl.store(gtau0_ptr + s2 * (B * C) + b * C + c2, a_tau.to(dur3.dtype), mask=(c2 < C) & (s2 < S))
    if PIPE:  # carried to the next launch (the last one writes them out below)
        if do_adj:
            tl.store(carry_b + k2 * CP + cc2, gdur)
            tl.store(carry_b + CP * KR + rc3 * LANES + col3, gtrs, mask=rc3 < CP)
    if not EDGES:
        if last:
            if L == 0:  # unchecked lengths only: no block ran, so none wrote these adjoints (all zero)
                tl.store(gcum_b + c1, tl.zeros((CP,), dtype=tl.float64), mask=c1 < C)
                tl.store(gend_b + c1, tl.zeros((CP,), dtype=dur3.dtype), mask=c1 < C)
                tl.store(gtau0_ptr + s2 * (B * C) + b * C + c2, tl.zeros((CP, SP), dtype=dur3.dtype), mask=(c2 < C) & (s2 < S))
            # rows past the sequence's end: zero (the buffers come uninitialised)
            for r in range(L + 1, T + 1):
                tl.store(gcum_b + r * C + c1, tl.zeros((CP,), dtype=tl.float64), mask=c1 < C)
                if HAS_SB:
                    if r < T:
                        tl.store(gsb_b + r * C + c1, tl.zeros((CP,), dtype=dur3.dtype), mask=c1 < C)
            if HAS_SB:
                tl.store(gsb_b + L * C + c1, tl.zeros((CP,), dtype=dur3.dtype), mask=(c1 < C) & (L < T))
            tl.store(gdur_ptr + b * K * C + k2 * C + cc2, gdur.to(dur3.dtype), mask=(k2 < K) & (cc2 < C))
            if RING_ADJ:
                tl.store(gtr_ptr + b * C * C + rc3 * C + col3, gtrs.to(dur3.dtype), mask=(rc3 < C) & (col3 < C))
            else:  # gtr[c, c'] is the adjoint of transition[c', c]
                tl.store(gtr_ptr + b * C * C + cc2 * C + c2, gtr.to(dur3.dtype), mask=(c2 < C) & (cc2 < C))


# --------------------------------------------------------------------------------------
# Viterbi backtrace (max semiring, factored input)
# --------------------------------------------------------------------------------------
@triton.jit(do_not_specialize=["T"])
def backlink_kernel(bpa_ptr, bpt_ptr, link_ptr, T, C, BLOCK: tl.constexpr):
    """link[b, s] = d << 16 | c' for every state s = t·C + c (grid (B, blocks of BLOCK)): the
    segment ending at t with label c has duration d and follows label c' = bpt[b, t − d, c].
    Rows past a sequence's end and position 0 hold no backpointers (uninitialised memory):
    their states get d = 0, no segment, so no walk leaves the array or loops."""
    b = tl.cast(tl.program_id(0), tl.int64)
    i = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    n = (T + 1) * C
    ok = i < n
    row = b * n
    d = tl.load(bpa_ptr + row + i, mask=ok, other=0).to(tl.int32) + 1
    t = i // C
    prev = i - d * C  # (t - d)·C + c
    # position 0 has no route (any label there; its row is not written)
    cp = tl.load(bpt_ptr + row + prev, mask=ok & (d >= 1) & (prev >= C), other=0).to(tl.int32)
    valid = (d >= 1) & (d <= t) & (cp >= 0) & (cp < C)
    tl.store(link_ptr + row + i, tl.where(valid, (d << 16) | cp, 0), mask=ok)


@triton.jit(do_not_specialize=["T"])
def backjump_kernel(link_ptr, exit_ptr, T, C, BLOCK: tl.constexpr, ROUNDS: tl.constexpr):
    """exit[b, s] = the first state of s's chain below s's block of BLOCK states (−1: the chain
    ends at position 0 inside the block, or s has no segment), by pointer jumping inside the
    block (grid (B, blocks)): a chain has fewer than 2^ROUNDS states in one block, so ROUNDS
    rounds of ``next = next[next]`` reach its exit."""
    b = tl.cast(tl.program_id(0), tl.int64)
    i0 = tl.program_id(1) * BLOCK
    i = i0 + tl.arange(0, BLOCK)
    n = (T + 1) * C
    ok = i < n
    row = b * n
    v = tl.load(link_ptr + row + i, mask=ok, other=0)
    d = v >> 16
    nxt = tl.where(d >= 1, (i // C - d) * C + (v & 0xFFFF), -1)
    tl.store(exit_ptr + row + i, nxt, mask=ok)
    for _ in tl.static_range(ROUNDS):
        tl.debug_barrier()  # the last round's stores are visible to the whole block
        inside = ok & (nxt >= i0)
        far = tl.load(exit_ptr + row + nxt, mask=inside, other=-1)
        tl.debug_barrier()  # every gather of this round is done before any store
        nxt = tl.where(inside, far, nxt)
        tl.store(exit_ptr + row + i, nxt, mask=ok)


@triton.jit(do_not_specialize=["T", "NB"])
def backentry_kernel(exit_ptr, fin_ptr, len_ptr, entry_ptr, T, C, NB, BLOCK: tl.constexpr):
    """From (L, best final label), follow the exits (``backjump_kernel``): entry[b, j] = the
    chain's first state in block j. One program per sequence, one dependent load per block the
    chain visits; entry must be pre-filled with −1 (blocks the chain skips or never reaches).
    A final label of −1 marks a sequence without a segmentation: nothing is written."""
    b = tl.cast(tl.program_id(0), tl.int64)
    L = tl.minimum(tl.maximum(tl.load(len_ptr + b).to(tl.int32), 0), T)  # unchecked lengths stay in bounds
    c = tl.load(fin_ptr + b).to(tl.int32)
    s = tl.where(c >= 0, L * C + c, -1)
    while s >= C:  # a state past position 0
        tl.store(entry_ptr + b * NB + s // BLOCK, s)
        s = tl.load(exit_ptr + b * (T + 1) * C + s)


@triton.jit(do_not_specialize=["T", "NB"])
def backwalk_kernel(link_ptr, entry_ptr, labels_ptr, starts_ptr, T, C, NB, BLOCK: tl.constexpr, KP: tl.constexpr):
    """The chain's segments inside block j (grid (B, blocks)): from entry[b, j] down to the
    block's start, one dependent load and one vector store per segment; blocks in parallel.

    labels (B, T) int64 and starts (B, T) int8 must be pre-filled (-1 / 0) past L."""
    b = tl.cast(tl.program_id(0), tl.int64)
    i0 = tl.program_id(1) * BLOCK
    s = tl.load(entry_ptr + b * NB + tl.program_id(1))
    o = tl.arange(0, KP)
    while (s >= i0) & (s >= C):
        v = tl.load(link_ptr + b * (T + 1) * C + s)
        d = v >> 16
        t = s // C
        c = s - t * C
        pos = t - d + o
        ok = o < d
        tl.store(labels_ptr + b * T + pos, (c + o * 0).to(tl.int64), mask=ok)
        tl.store(starts_ptr + b * T + pos, (o == 0).to(tl.int8), mask=ok)
        s = tl.where(d >= 1, (t - d) * C + (v & 0xFFFF), -1)  # a chain state always has d >= 1
