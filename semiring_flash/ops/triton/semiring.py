"""The semirings, as small ``@triton.jit`` pieces the scan kernels are compiled with.

Every piece takes the semiring id ``SR`` as a ``tl.constexpr``, so each
kernel is specialised per semiring at compile time and the DP itself exists
once (in ``kernels.py``). Values are tiles whose *last* axis holds the
semiring channels (``SP`` = channels padded to a power of two); ``s_idx`` is
a channel-index tile of the same rank (``tl.arange(0, SP)`` broadcast), used
to pick channels.

    id  semiring   channels (S)                       0̄                 1̄
    0   log        log-weight                         -inf              0
    1   max        best score                         -inf              0
    2   entropy    (log-weight, entropy)              (-inf, 0)         (0, 0)
    3   kmax(k)    k best scores, sorted descending   all -inf          (0, -inf, ...)

Pieces:
  * ``zero_value`` / ``one_value``  0̄ / 1̄ broadcast like ``s_idx``
  * ``mul_pot``     x ⊗ convert(w) for a plain potential w (entropy: channel 0 only)
  * ``plus_rows``   ⊕ of a single-channel (log, max) tile over its trailing axes
  * ``plus0``       ⊕ over axis 0 of a 3-D candidate tile (N, M, SP) -> (M, SP),
                    with the *route* (argmax index n·SP + s of each output
                    channel; used by max/kmax backward, zeros otherwise)
  * ``shift``       per-group normaliser of a state (M, SP): log/max/kmax one
                    group (channel 0's max), entropy two (channel 0's max and
                    channel 1 at that label)
  * ``vjp``         the vector-Jacobian product of ``plus0``, element-wise per
                    candidate: how much of the output adjoint flows to that
                    candidate (softmax weights, argmax indicator, routed
                    k-best slots, or entropy's two-channel Jacobian)
  * ``potgrad``     adjoint of a plain potential given the adjoint of x ⊗ w

Every piece is NaN-free on 0̄ inputs: differences of -inf never reach an
output (they are computed only inside masked branches of ``tl.where``).
"""

from __future__ import annotations

import triton
import triton.language as tl

# The ids (``Semiring.triton_id``), as constexprs: kernels branch on them at compile time.
LOG = tl.constexpr(0)
MAX = tl.constexpr(1)
ENTROPY = tl.constexpr(2)
KMAX = tl.constexpr(3)

NEG_INF = float("-inf")


@triton.jit
def zero_value(s_idx, SR: tl.constexpr):
    if SR == ENTROPY:
        return tl.where(s_idx == 1, 0.0, float("-inf"))
    else:
        return tl.where(s_idx >= 0, float("-inf"), float("-inf"))


@triton.jit
def one_value(s_idx, SR: tl.constexpr):
    if SR == KMAX:
        return tl.where(s_idx == 0, 0.0, float("-inf"))
    else:
        return tl.where(s_idx >= 0, 0.0, 0.0)


@triton.jit
def mul_pot(x, w, s_idx, SR: tl.constexpr):
    """x ⊗ convert(w); w broadcasts against x (a trailing channel axis of size 1)."""
    if SR == ENTROPY:
        return x + tl.where(s_idx == 0, w, 0.0)
    else:
        return x + w


@triton.jit
def _chan(x, s_idx, j, AXIS: tl.constexpr):
    """Channel j of x, keeping the channel axis (size 1)."""
    return tl.sum(tl.where(s_idx == j, x, 0), axis=AXIS, keep_dims=True)


@triton.jit
def plus0(x, SR: tl.constexpr, KK: tl.constexpr):
    """⊕ over axis 0 of candidates x (N, M, SP) -> (value, route, nm, nz), each (M, SP).

    route (int32): argmax index n·SP + s per output channel (max, kmax);
    nm, nz: the logsumexp's max and float64 sum of exp(x - nm) (log; entropy channel 0),
    kept so the backward can use exactly normalised weights exp(x - nm) / nz. Only
    kernels that store nz pay for its float64 sum (the compiler drops it elsewhere).
    """
    N: tl.constexpr = x.shape[0]
    M: tl.constexpr = x.shape[1]
    SP: tl.constexpr = x.shape[2]
    s3 = tl.arange(0, SP)[None, None, :]
    s2 = tl.arange(0, SP)[None, :]
    if SR == LOG:
        # two-pass logsumexp: max, then a sum of exps (an online one-pass LSE was measured
        # slower on H200: it puts two exps on every level of the reduction tree)
        m = tl.max(x, axis=0)
        ms = tl.where(m == float("-inf"), 0.0, m)
        e = tl.exp(x - ms[None, :, :])
        out = ms + tl.log(tl.sum(e, axis=0))
        route = tl.zeros((M, SP), dtype=tl.int32)
        nm = ms
        nz = tl.sum(e.to(tl.float64), axis=0)
    elif SR == MAX:
        out = tl.max(x, axis=0)
        route = tl.argmax(x, axis=0, tie_break_left=True).to(tl.int32)
        nm = out * 0.0
        nz = nm
    elif SR == ENTROPY:
        x0 = _chan(x, s3, 0, 2)  # (N, M, 1)
        x1 = _chan(x, s3, 1, 2)
        m = tl.max(x0, axis=0)  # (M, 1)
        ms = tl.where(m == float("-inf"), 0.0, m)
        e = tl.exp(x0 - ms[None, :, :])
        z = tl.sum(e, axis=0)
        part = ms + tl.log(z)  # -inf where every candidate is 0̄
        p = e / tl.where(z > 0, z, 1.0)[None, :, :]
        logp = tl.where(p > 0, x0 - part[None, :, :], 0.0)
        h = tl.sum(tl.where(p > 0, p * (x1 - logp), 0.0), axis=0)  # (M, 1)
        out = tl.where(s2 == 0, part, h)
        route = tl.zeros((M, SP), dtype=tl.int32)
        nm = ms + out * 0.0
        nz = tl.sum(e.to(tl.float64), axis=0) + (out * 0.0).to(tl.float64)
    else:
        n3 = tl.arange(0, N)[:, None, None]
        flat = n3 * SP + s3  # (N, 1, SP)
        big = N * SP
        y = x
        out = tl.zeros((M, SP), dtype=x.dtype) + float("-inf")
        route = tl.zeros((M, SP), dtype=tl.int32)
        for j in tl.static_range(KK):
            m = tl.max(tl.max(y, axis=2), axis=0)  # (M,)
            hit = y == m[None, :, None]
            first = tl.min(tl.min(tl.where(hit, flat, big), axis=2), axis=0)  # (M,)
            y = tl.where(flat == first[None, :, None], float("-inf"), y)
            out = tl.where(s2 == j, m[:, None], out)
            route = tl.where(s2 == j, first[:, None], route)
        nm = tl.zeros((M, SP), dtype=x.dtype)
        nz = nm
    return out, route, nm, nz


@triton.jit
def _rows(x, OP: tl.constexpr):
    """max (OP 0) or sum (OP 1) of a 2-D or 3-D tile over every axis but the first; a 3-D
    tile is reduced along axis 1 first (the register-ring layout keeps that axis in-thread)."""
    if len(x.shape) == 3:
        if OP == 0:
            x = tl.max(x, axis=1)
        else:
            x = tl.sum(x, axis=1)
    if OP == 0:
        return tl.max(x, axis=1)
    else:
        return tl.sum(x, axis=1)


@triton.jit
def _lift(v, x):
    """A per-row vector v (M,) broadcastable against x (M, ...)."""
    if len(x.shape) == 3:
        return v[:, None, None]
    else:
        return v[:, None]


@triton.jit
def plus_rows(x, SR: tl.constexpr):
    """⊕ of a single-channel tile (log or max) over every axis but the first -> (value, nm, nz), each (M,).

    As ``plus0`` (same two-pass logsumexp and float64 ``nz``, the max over *all* the
    candidates, so the backward's weights exp(x - nm) / nz stay exactly normalised), for
    tiles whose reduced axes lie on lanes and registers (the forward's register ring and
    its (c, c') transition tile). Routes are the caller's (their tie rules differ)."""
    if SR == LOG:
        m = _rows(x, 0)
        ms = tl.where(m == float("-inf"), 0.0, m)
        e = tl.exp(x - _lift(ms, x))
        out = ms + tl.log(_rows(e, 1))
        nm = ms
        nz = _rows(e.to(tl.float64), 1)
    else:
        tl.static_assert(SR == MAX, "plus_rows: log or max")
        out = _rows(x, 0)
        nm = out * 0.0
        nz = nm
    return out, nm, nz


@triton.jit
def shift(v, SR: tl.constexpr):
    """Normalisers (group 0, group 1) of a state v (M, SP); 0 where v is all 0̄."""
    M: tl.constexpr = v.shape[0]
    SP: tl.constexpr = v.shape[1]
    s2 = tl.arange(0, SP)[None, :]
    v0 = tl.sum(tl.where(s2 == 0, v, 0), axis=1)  # (M,)
    m = tl.max(v0, axis=0)
    fin = m > float("-inf")
    sh0 = tl.where(fin, m, 0.0)
    if SR == ENTROPY:
        v1 = tl.sum(tl.where(s2 == 1, v, 0), axis=1)
        i = tl.argmax(v0, axis=0, tie_break_left=True)
        sh1 = tl.sum(tl.where(tl.arange(0, M) == i, v1, 0), axis=0)
        sh1 = tl.where(fin, sh1, 0.0)
    else:
        sh1 = sh0 * 0.0
    return sh0, sh1


@triton.jit
def vjp(x, out, a_out, route, nm, nz, idx, s_idx, SR: tl.constexpr, KK: tl.constexpr, SCALED: tl.constexpr = False):
    """Adjoint (float64) reaching candidate x (3-D, the full tile shape) of ``plus0``.

    out / a_out / route / nm / nz: the ⊕ result, its adjoint, route and
    logsumexp normalisers, broadcast against x; idx: the candidate's index
    along the reduced axis (broadcast). Softmax weights are exp(x - nm) / nz
    (applied as exp(x - nm) · (a_out / nz)) with the forward's own nm and
    float64 sum nz of the very same exp(x - nm): they sum to one up to float64
    rounding, and the adjoint is carried in float64, so probability mass is
    conserved over millions of steps. (Weights exp(x - out), out = nm + log nz,
    inherit the bias of the fast log/exp, ~1e-8 per step; a float32 nz or
    adjoint still random-walks, ~√T·ε: both compound along the recursion.)

    SCALED (log): a_out is already a_out / nz (``scaled_adjoint``, 0 where nz = 0), and nz
    is not read: ok is out > 0̄ (the same outputs: nz > 0 exactly when a candidate is finite).
    """
    a_out = a_out.to(tl.float64)
    if SR == LOG:
        if SCALED:
            ok = out > float("-inf")
            scale = a_out
        else:
            ok = nz > 0
            # divide on the un-broadcast operands (nz, a_out lack the reduced axis): one
            # division per output instead of one per candidate
            scale = a_out / tl.where(ok, nz, 1.0)
        r = tl.where(ok, tl.exp(x - nm).to(tl.float64) * scale, 0.0)
    elif SR == MAX:
        r = tl.where((route == idx) & (out > float("-inf")), a_out + tl.zeros_like(x).to(tl.float64), 0.0)
    elif SR == ENTROPY:
        x0 = _chan(x, s_idx, 0, 2)
        x1 = _chan(x, s_idx, 1, 2)
        o0 = _chan(out, s_idx, 0, 2)
        o1 = _chan(out, s_idx, 1, 2)
        a0 = _chan(a_out, s_idx, 0, 2)
        a1 = _chan(a_out, s_idx, 1, 2)
        z0 = _chan(nz, s_idx, 0, 2)
        ok = z0 > 0
        inv_z = 1.0 / tl.where(ok, z0, 1.0)
        p = tl.where(ok, tl.exp(x0 - _chan(nm, s_idx, 0, 2)).to(tl.float64) * inv_z, 0.0)
        lp = tl.where(p > 0, x0 - o0, 0.0)
        c0 = p * a0 + tl.where(p > 0, p * (x1 - lp - o1), 0.0) * a1
        c1 = p * a1
        r = tl.where(s_idx == 0, c0, c1)
    else:
        SP: tl.constexpr = x.shape[2]
        r = tl.zeros_like(x).to(tl.float64)
        for j in tl.static_range(KK):
            rj = _chan(route, s_idx, j, 2)
            aj = _chan(a_out, s_idx, j, 2)
            oj = _chan(out, s_idx, j, 2)
            r += tl.where((rj == idx * SP + s_idx) & (oj > float("-inf")), aj, 0.0)
    return r


@triton.jit
def scaled_adjoint(a_out, nz, SR: tl.constexpr):
    """The adjoint of an output as ``vjp`` with SCALED reads it: log: a_out / nz (float64, 0
    where nz = 0), the very division ``vjp`` makes, done once per output row instead of once
    per later window that reads the row (K times); other semirings: a_out."""
    if SR == LOG:
        ok = nz > 0
        return tl.where(ok, a_out.to(tl.float64) / tl.where(ok, nz, 1.0), 0.0)
    else:
        return a_out


@triton.jit
def potgrad(c, s_idx, SR: tl.constexpr, AXIS: tl.constexpr):
    """Adjoint of a plain potential w from the adjoint c of x ⊗ w (channel axis AXIS summed)."""
    if SR == KMAX:
        return tl.sum(c, axis=AXIS)
    else:
        return tl.sum(tl.where(s_idx == 0, c, 0.0), axis=AXIS)
