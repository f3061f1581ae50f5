"""Forward-only log-semiring scan variants for B=1 per-step latency (issue 11).

Each variant maps the factored inputs of the real kernel
(``semiring_flash.ops.triton.factored_scan_triton``: cum (B, T+1, C) float64,
transition (B, C, C) as [c', c], duration (B, K, C), tau0 (1, B, C), end (B, C),
lengths (B,)) to log Z (B,) float64. ``VARIANTS`` lists them by name.

  baseline        the real kernel (_full: with grad, FULL tape stores; _ck: checkpoints); since issue 11 step 2 its log/max forward is the
                  lanesk_trt layout below folded into kernels.py (``_fac_ring_step``);
                  before, a global-memory tape ring with a CTA barrier per step
  regring*        idea (a): the ring of the last K τ rows lives in registers as a
                  loop-carried (CP, KP, 1) tile, τ(t) inserted with tl.where at slot
                  t mod KP; the per-slot duration terms come from loads that depend
                  only on t, issued one step ahead (PREFETCH), off the dependency
                  chain. No tape, no explicit barrier; Triton picks the layout (warps
                  along slots).
                  _w1/_w2/_w4/_w8: num_warps (idea c); _nopf: no prefetch.
  lanesk*         ideas (a)+(b) within plain Triton: the ring tile is (CP, KO, LANES)
                  with slot = ko·LANES + lane, so Triton's default layout puts lanes
                  along durations and warps along labels (order: last axis first);
                  the reductions over durations are then in-thread + warp shuffles.
  *_trt           transition tile as (c, c') and one equal copy of BASE per label, so
                  max_c α comes from the transition's exchanged α (no extra reduction).
  *_online        one-pass (max, sum) logsumexp (one tl.reduce with a pair combine
                  instead of a max pass and a sum pass: half the cross-warp rounds).
  (gluon_variants.py: the same ring with explicit Gluon layouts.)

Numerics as the real kernel (DESIGN.md "Numerics"): the ring keeps τ(p) in fp32
relative to BASE(p), plus G(p) = BASE(p) - S[p] in float64; a window term adds
(G(p) + S[t] - BASE(t)) — the float64 prefix difference and normaliser offset
rounded once — and the duration potential. BASE(t+1) = BASE(t) + max_c α(t)
(float64). −inf potentials give −inf, never NaN (no −inf − −inf is formed).

Log-only experiments. lanesk_trt is folded into kernels.py's template
(``_fac_ring_step``, log and max), with the rotated table built by the kernel itself.
"""

from __future__ import annotations

import functools

import torch
import triton
import triton.language as tl

NEG_INF = float("-inf")


def _pow2(n: int) -> int:
    return 1 << max(0, (int(n) - 1).bit_length())


# --------------------------------------------------------------------------------------
# pieces
# --------------------------------------------------------------------------------------
@triton.jit
def _lse_pair(m1, s1, m2, s2):
    """Combine two (max, sum of exp(x - max)) partials; −inf maxima contribute 0 (no NaN)."""
    m = tl.maximum(m1, m2)
    ms = tl.where(m == float("-inf"), 0.0, m)
    return m, s1 * tl.exp(m1 - ms) + s2 * tl.exp(m2 - ms)


@triton.jit
def _lse(x, AXIS: tl.constexpr, ONLINE: tl.constexpr):
    """logsumexp over AXIS (−inf where every term is −inf): two passes, or one pair reduce."""
    if ONLINE:
        m, s = tl.reduce((x, tl.where(x == float("-inf"), 0.0, 1.0)), AXIS, _lse_pair)
        ms = tl.where(m == float("-inf"), 0.0, m)
    else:
        m = tl.max(x, axis=AXIS)
        ms = tl.where(m == float("-inf"), 0.0, m)
        s = tl.sum(tl.exp(x - tl.expand_dims(ms, AXIS)), axis=AXIS)
    return ms + tl.log(s)


@triton.jit
def _terms(t, L, cum_b, rot_b, C, slot, c3, c1, KP: tl.constexpr):
    """What step t needs that depends on t only: S[t] (CP,) float64, and the duration
    potential of every ring slot, dur[d-1] with d = (t - slot) mod KP (−inf outside 1..K),
    read from the rotated table at offset (-t) mod KP: contiguous along the slots, unmasked."""
    cum_t = tl.load(cum_b + tl.minimum(t, L) * C + c1, mask=c1 < C, other=0.0)
    dw = tl.load(rot_b + c3 * (2 * KP) + ((-t) & (KP - 1)) + slot)
    return cum_t, dw


def rotated_durations(duration: torch.Tensor, KP: int, CP: int) -> torch.Tensor:
    """(B, CP, 2·KP) fp32 table E with E[b, c, i] = D[b, c, (-i) mod KP], D[.., d] = duration[.., d-1, c]
    for 1 <= d <= K, −inf otherwise (d = 0, d > K, padded labels): the slot j's term at step t
    is E[c, ((-t) mod KP) + j]."""
    B, K, C = duration.shape
    D = torch.full((B, CP, KP), NEG_INF, dtype=torch.float32, device=duration.device)
    D[:, :C, 1:K + 1] = duration.detach().to(torch.float32).transpose(1, 2)
    i = torch.arange(2 * KP, device=duration.device)
    return D[:, :, (-i) % KP].contiguous()


# --------------------------------------------------------------------------------------
# register-ring kernel: tile (CP, KO, LANES), slot = ko·LANES + lane
# --------------------------------------------------------------------------------------
@triton.jit(do_not_specialize=["T"])
def regring_kernel(cum_ptr, trans_ptr, rot_ptr, tau0_ptr, end_ptr, len_ptr, out_ptr, B, T, C, K,
                   CP: tl.constexpr, KP: tl.constexpr, LANES: tl.constexpr,
                   PREFETCH: tl.constexpr, ONLINE: tl.constexpr, TRT: tl.constexpr):
    KO: tl.constexpr = KP // LANES
    b = tl.cast(tl.program_id(0), tl.int64)
    L = tl.minimum(tl.maximum(tl.load(len_ptr + b).to(tl.int32), 0), T)
    cum_b = cum_ptr + b * (T + 1) * C
    rot_b = rot_ptr + b * CP * (2 * KP)
    c3 = tl.arange(0, CP)[:, None, None]
    ko3 = tl.arange(0, KO)[None, :, None]
    l3 = tl.arange(0, LANES)[None, None, :]
    slot = ko3 * LANES + l3  # (1, KO, LANES)
    c1 = tl.arange(0, CP)
    cr = tl.arange(0, CP)[:, None]  # c'
    cc = tl.arange(0, CP)[None, :]  # c
    if TRT:  # tile (c, c'): the sum over c' along the tile's second axis
        tr = tl.load(trans_ptr + b * C * C + cc * C + cr, mask=(cr < C) & (cc < C), other=float("-inf"))
    else:  # tile (c', c)
        tr = tl.load(trans_ptr + b * C * C + cr * C + cc, mask=(cr < C) & (cc < C), other=float("-inf"))
    tau0 = tl.load(tau0_ptr + b * C + c1, mask=c1 < C, other=float("-inf"))
    cum0 = tl.load(cum_b + c1, mask=c1 < C, other=0.0)
    tau3 = tl.expand_dims(tl.expand_dims(tau0, 1), 2)
    ring = tl.where(slot == 0, tau3, float("-inf"))  # (CP, KO, LANES) fp32, rows p < 0 are 0̄
    g = tl.where(slot == 0, tl.expand_dims(tl.expand_dims(-cum0, 1), 2), 0.0)  # float64 G(0) = 0 - S[0]
    if TRT:  # one equal copy of BASE per label, made like the loop's (same layout: no conversion)
        m0 = tl.max(tl.broadcast_to(tl.expand_dims(tau0, 0), (CP, CP)), axis=1)
    else:
        m0 = tl.max(tau0, axis=0)
    base = tl.where(m0 > float("-inf"), m0, 0.0).to(tl.float64)  # BASE(1)
    bl = base * 0.0  # BASE(L)
    alpha = tl.full((CP,), float("-inf"), tl.float32)
    if PREFETCH:
        cum_t, dw = _terms(1, L, cum_b, rot_b, C, slot, c3, c1, KP)
    for t in range(1, L + 1):
        if PREFETCH:
            cum_n, dw_n = _terms(t + 1, L, cum_b, rot_b, C, slot, c3, c1, KP)
        else:
            cum_t, dw = _terms(t, L, cum_b, rot_b, C, slot, c3, c1, KP)
        a_t = tl.expand_dims(tl.expand_dims(cum_t - base, 1), 2)  # S[t] - BASE(t), float64
        cand = ring + (g + a_t).to(tl.float32) + dw
        a2 = _lse(cand, 1, ONLINE)  # (CP, LANES): over the slots in registers / warps
        if LANES == 1:
            alpha = tl.sum(a2, axis=1)  # one element: no arithmetic
        else:
            alpha = _lse(a2, 1, ONLINE)  # over the lanes: warp shuffles
        if TRT:
            # α along the tile's c' axis: one layout exchange; then each label's copy of
            # max_c' α(c') comes from that same tile (no second cross-warp reduction)
            ae = tl.expand_dims(alpha, 0)
            tau = _lse(ae + tr, 1, ONLINE)  # (CP,) over c'
            sh = tl.max(tl.broadcast_to(ae, (CP, CP)), axis=1)  # (CP,) all equal
        else:
            tau = _lse(tl.expand_dims(alpha, 1) + tr, 0, ONLINE)  # (CP,) over c'
            sh = tl.max(alpha, axis=0)
        s = t & (KP - 1)
        new = slot == s
        ring = tl.where(new, tl.expand_dims(tl.expand_dims(tau, 1), 2), ring)
        g = tl.where(new, tl.expand_dims(tl.expand_dims(base - cum_t, 1), 2), g)
        bl = base
        base = base + tl.where(sh > float("-inf"), sh, 0.0).to(tl.float64)
        if PREFETCH:
            cum_t = cum_n
            dw = dw_n
    e = tl.load(end_ptr + b * C + c1, mask=c1 < C, other=float("-inf"))
    z = _lse(alpha + e, 0, False)
    if TRT:
        bl = tl.max(bl, axis=0)
    tl.store(out_ptr + b, z.to(tl.float64) + bl)


# --------------------------------------------------------------------------------------
# wrappers
# --------------------------------------------------------------------------------------
def _check(cum, transition, duration, tau0, end, lengths):
    if cum.dim() != 3:
        raise ValueError(f"cum must be (B, T+1, C), got {tuple(cum.shape)}")
    B, T1, C = cum.shape
    K = duration.shape[-2]
    for name, x, shape in (("transition", transition, (B, C, C)), ("duration", duration, (B, K, C)),
                           ("tau0", tau0, (1, B, C)), ("end", end, (B, C)), ("lengths", lengths, (B,))):
        if tuple(x.shape) != shape:
            raise ValueError(f"{name} must have shape {shape}, got {tuple(x.shape)}")
    return B, T1 - 1, K, C


def baseline(cum, transition, duration, tau0, end, lengths, *, tape=None):
    """The real kernel's forward (log semiring, compute dtype fp32). ``tape``: None, a pure
    forward (no grad); "full": with grad, so a sequence whose tape fits ``launch.STORE_ALL_BYTES``
    stores every row (FULL); "ck": with grad and checkpoints every ⌈√(T·K)⌉ steps (SAVE_CK).
    Only the forward runs (the saved state is dropped)."""
    import math

    import semiring_flash as sf
    from semiring_flash.ops.triton import factored_scan_triton

    _, T, K, _ = _check(cum, transition, duration, tau0, end, lengths)
    f32 = lambda x: x.detach().to(torch.float32).requires_grad_(tape is not None)  # noqa: E731
    every = math.ceil(math.sqrt(T * K)) if tape == "ck" else None
    with torch.set_grad_enabled(tape is not None):
        v = factored_scan_triton(sf.LogSemiring, cum.to(torch.float64), f32(transition), f32(duration), f32(tau0),
                                 f32(end), lengths, checkpoint_every=every)
    return v[0].detach().to(torch.float64)


def regring(cum, transition, duration, tau0, end, lengths, *, num_warps=4, lanes=False, prefetch=True,
            online=False, trt=False):
    """log Z (B,) float64 by ``regring_kernel``; fp32 states, float64 prefix sums and normalisers."""
    B, T, K, C = _check(cum, transition, duration, tau0, end, lengths)
    KP = max(2, _pow2(K + 1))  # > K: the slot being overwritten is never in the window
    CP = max(2, _pow2(C))
    f32 = lambda x: x.detach().to(torch.float32).contiguous()  # noqa: E731
    out = torch.empty(B, dtype=torch.float64, device=cum.device)
    regring_kernel[(B,)](
        cum.detach().to(torch.float64).contiguous(), f32(transition), rotated_durations(duration, KP, CP), f32(tau0),
        f32(end),
        lengths.to(device=cum.device, dtype=torch.int64).contiguous(), out, B, T, C, K,
        CP=CP, KP=KP, LANES=min(32, KP) if lanes else 1, PREFETCH=prefetch, ONLINE=online, TRT=trt,
        num_warps=num_warps, num_stages=1)
    return out


def _variant(**kw):
    return functools.partial(regring, **kw)


#: name -> callable(cum, transition, duration, tau0, end, lengths) -> log Z (B,) float64
VARIANTS = {
    "baseline": baseline,
    "baseline_full": functools.partial(baseline, tape="full"),
    "baseline_ck": functools.partial(baseline, tape="ck"),
    "regring_w4": _variant(num_warps=4),
    "regring_w2": _variant(num_warps=2),
    "regring_w1": _variant(num_warps=1),
    "regring_w8": _variant(num_warps=8),
    "regring_w4_nopf": _variant(num_warps=4, prefetch=False),
    "regring_w4_online": _variant(num_warps=4, online=True),
    "lanesk_w4": _variant(num_warps=4, lanes=True),
    "lanesk_w8": _variant(num_warps=8, lanes=True),
    "lanesk_w2": _variant(num_warps=2, lanes=True),
    "lanesk_w4_online": _variant(num_warps=4, lanes=True, online=True),
    "lanesk_trt_w4": _variant(num_warps=4, lanes=True, trt=True),
    "lanesk_trt_w8": _variant(num_warps=8, lanes=True, trt=True),
    "lanesk_trt_w2": _variant(num_warps=2, lanes=True, trt=True),
    "lanesk_trt_w4_online": _variant(num_warps=4, lanes=True, trt=True, online=True),
    "regring_trt_w4": _variant(num_warps=4, trt=True),
}

def kernel_config(name: str, K: int, C: int):
    """(kernel, constexprs, num_warps) of a regring/lanesk variant at sizes K, C."""
    p = VARIANTS[name]
    kw = dict(num_warps=4, lanes=False, prefetch=True, online=False, trt=False) | p.keywords
    KP = max(2, _pow2(K + 1))
    consts = dict(CP=max(2, _pow2(C)), KP=KP, LANES=min(32, KP) if kw["lanes"] else 1,
                  PREFETCH=kw["prefetch"], ONLINE=kw["online"], TRT=kw["trt"])
    return regring_kernel, consts, kw["num_warps"]
