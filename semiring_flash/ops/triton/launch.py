"""Launchers and autograd Functions for the streaming scan kernels.

The kernels' arguments are described once, by role: ``Operands`` (what both kernels read),
``Tape`` (the per-sequence ring), ``Checkpoints``, ``Grads`` and ``Backpointers``; field f is
the kernels' keyword ``f_ptr``, and an array a variant never touches is passed as None (a
constexpr None in Triton: the kernels form its offsets only under the branches that use it).
``_launch`` launches a cached compiled kernel directly after the first call of a shape: small
calls are host-bound, and Triton's generic launch path is most of a launch's host time.
"""

from __future__ import annotations

import functools
from typing import NamedTuple, Optional

import torch
from triton import knobs
from triton.runtime.driver import driver
from triton.runtime.jit import JITFunction

from ..streaming import default_checkpoint_every
from .kernels import scan_bwd_kernel, scan_fwd_kernel
from ...validation import checkpoint_interval, compute_dtype
from .semiring import ENTROPY, KMAX, LOG, MAX

__all__ = ["factored_scan_triton", "edge_scan_triton", "checkpoint_every"]


def checkpoint_every(T: int, K: int, every: int | None = None) -> int:
    """Δ of the kernels: the streaming engine's rule (≈ √(T·K)) or the caller's ``every``,
    raised to at least K (a checkpoint's K ring rows must lie in one block), at most T."""
    every = checkpoint_interval(every)
    base = default_checkpoint_every(T, K) if every is None else every
    return max(1, min(T, max(K, base)))


def _pow2(n: int) -> int:
    return 1 << max(0, (int(n) - 1).bit_length())


#: force num_warps for every launch (benchmark sweeps); None = heuristic
NUM_WARPS_OVERRIDE = None
#: launch compiled kernels directly after their first call (see _launch); False: always Triton's generic path
DIRECT_LAUNCH = True
#: keep the whole forward tape (no recompute in backward) when it takes at most this many bytes;
#: 128 MiB since the float64 adjoint tapes (B=1, T=10^5, K=100, C=8: 0.49 s kept vs 0.62 s recomputed, H200).
#: The kept tape is linear since 2026-12-07 (one row per position): that case takes 34 MB (84 MB
#: mirrored), B=16, T=1000, K=30, C=39 takes 42 MB (168 MB: it used to recompute)
STORE_ALL_BYTES = 128 << 20

#: The factored log/max forward on the register ring (kernels._fac_ring_step: 6 CTA barriers per
#: step instead of 16 in its sm_90 code). H100, 2026-12-07 (docs/gpu.md): B=1, K=100, C=8, 0.71 vs
#: 1.48 us/step, log Z within 2e-8 of float64, Viterbi at T=10^6 the same path bitwise in 0.82 s vs
#: 1.72 s. "measured": where it was timed and checked on a GPU (K >= 32 and C <= 8, a warp per
#: label and the slots on lanes); True: every factored log/max forward; False: never.
RING_FORWARD = "measured"
#: ... also for forwards that store the backward's tape or checkpoints (FULL / SAVE_CK). The
#: H100 gradients once 5e-2 (of the largest) away from the tape step's came from a race (step 1
#: read the rotated duration table before the barrier that completes it; fixed 2026-12-07, and
#: tests/test_triton_gpu.py::test_register_ring_on_poisoned_memory_matches_the_tape_step passed on
#: an H100). "measured" (as RING_FORWARD: K >= 32, C <= 8), True: wherever the ring forward runs,
#: False: never. By default RING_RECOMPUTE and RING_ADJOINT go with it: a ring forward's
#: checkpoints recomputed by the tape step sum windows in another order (6e-5 gradient error at
#: T=1e5 instead of 1e-6, H100 2026-12-07). Timed together (benchmarks/latency/run_gpu_bwd.py, H100,
#: 2026-12-07, B=1, T=1e5, K=100, C=8, us/step forward / backward): kept tape 2.02 / 2.97 -> 0.94 /
#: 1.34; recomputed 1.66 / 4.69 -> 0.82 / 2.37; gradients within 1.1e-6 of float64 either way; and
#: B=1, T=1e7 forward + backward 67.5 s -> 31.7 s (docs/gpu.md).
RING_TAPES = "measured"
#: The backward's block recompute (checkpointed calls) of factored log/max on the register ring
#: (kernels.scan_bwd_kernel, RING_RC): the tape rows of a ring forward, bit for bit. True: for
#: every factored log/max call; False: never; "measured": where RING_TAPES runs.
RING_RECOMPUTE = "measured"
#: The backward's adjoint pass of factored log/max on a register ring (kernels.scan_bwd_kernel,
#: RING_ADJ): the adjoints of the last K rows in registers, no adjoint tape, 3 CTA barriers per
#: step at K=100, C=8 (sm_90). True / False / "measured" as RING_RECOMPUTE.
RING_ADJOINT = "measured"
#: The checkpointed backward of the ring (RING_RECOMPUTE and RING_ADJOINT both on) as a pipeline
#: (kernels.scan_bwd_kernel, PIPE): two programs per sequence and one launch per block, the
#: recompute of block j-1 beside the adjoints of block j, so that a long sequence's backward costs
#: about its adjoint pass instead of recompute + adjoints in one CTA; the tape ring holds two blocks
#: (2x its memory). "auto": when the 2B programs fit the GPU's SMs (B=1 long sequences; a full GPU
#: gains nothing); True: always (the interpreter tests); False: never. H100, 2026-12-07, B=1,
#: K=100, C=8: recomputed backward 2.37 -> 1.35 us/step (the kept tape's 1.34), the same gradients;
#: T=1e7 forward + backward 31.7 -> 21.5 s (docs/gpu.md).
PIPELINE_BACKWARD = "auto"
#: The tape adjoint's transition pull on a transposed copy of the transition, with its log softmax
#: divisions once per row (kernels._fac_tpull, TAPE_PULL). True / False / "measured": the regime
#: timed and checked on a GPU, C > 32 (CP >= 64) with the whole tape kept (H100, 2026-12-08:
#: B=16, T=1000, K=30, C=39 forward + backward 13.25 -> 11.54 ms, the same gradients to every
#: printed digit). Not beyond it: at B=32, T=1e4, K=64, C=12 (recompute path) the same call gave
#: gradients within 3.3e-5 of float64 instead of 1.6e-6 and a 6% slower backward. The gradients:
#: the copy's store laid the recompute's τ sum out otherwise than the forward's (found on CPU by
#: benchmarks/latency/sum_order.py, fixed 2026-12-08, not yet re-run on a GPU); the time: one CTA
#: barrier more in the adjoint step at CP <= 32 (sm_90: 7 -> 8 at K=64, C=12), still there.
TAPE_PULL = "measured"
#: steps between two folds of RING_ADJ's duration-adjoint scratch into registers (a power of two; one
#: barrier each; the scratch holds 2·RING_FOLD steps of (CP, KR) float64 per sequence)
RING_FOLD = 16


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


def _ring_on(flag, K: int, C: int) -> bool:
    """A register-ring flag's value for a shape: "measured" is the regime timed and checked on a
    GPU (K >= 32 and C <= 8: a warp per label, the slots on lanes); True / False everywhere."""
    if flag == "measured":
        return K >= 32 and C <= 8
    return bool(flag)


def _follows(flag, ring_tapes: bool) -> bool:
    """RING_RECOMPUTE / RING_ADJOINT for a call: "measured" follows the forward's RING_TAPES."""
    return ring_tapes if flag == "measured" else bool(flag)


def _tape_pull_on(flag, CP: int, store_all: bool) -> bool:
    """TAPE_PULL for a call: "measured" where it was timed and checked (CP >= 64, tape kept)."""
    if flag == "measured":
        return CP >= 64 and store_all
    return bool(flag)


def _pipeline_on(flag, B: int, device) -> bool:
    """PIPELINE_BACKWARD for a batch of B: "auto" when its 2B programs fit the GPU's SMs."""
    if flag != "auto":
        return bool(flag)
    device = torch.device(device)
    return device.type == "cuda" and 2 * B <= torch.cuda.get_device_properties(device).multi_processor_count


def _ring_warps(CP: int, KR: int) -> int:
    """Warps of the register-ring forward (kernels._fac_ring_step): labels lie across warps and
    ring slots on lanes, so at most one warp per label (a label's slot sums stay in one warp);
    fewer for small rings (benchmarks/latency: lanesk_trt_w8 at K=100, C=8)."""
    if NUM_WARPS_OVERRIDE:
        return int(NUM_WARPS_OVERRIDE)
    return max(1, min(8, CP, CP * KR // 128))


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
        # forward keeps them all and the backward skips its recompute pass (one block), on a
        # linear tape (R = 0: one row per position, kernels._tape_rows)
        self.rows_all = T + K + 1
        self.lse = lse = self.sr in (LOG.value, ENTROPY.value)  # logsumexp normalisers on the tape
        self.routes = routes = self.sr in (MAX.value, KMAX.value)  # argmax routes on the tape
        n64 = 1 + 2 * lse  # adjoint and logsumexp sums: float64 tapes
        n_arr = 2 + has_sb + 2 * routes + 2 * lse
        tape_bytes = B * self.rows_all * self.CP * self.SP * (n_arr * (8 if dtype == torch.float64 else 4) + n64 * 8)
        # one block (Δ >= T: a short sequence, or the caller's interval) is always kept: its
        # recompute would hold a larger ring (2·pow2(T + 2K + 1) rows) and has no checkpoint to
        # start from (the backward's checkpoint branch does not compile without one: H100,
        # 2026-12-07, B=1, T=2, K=2 with STORE_ALL_BYTES = 0)
        self.store_all = self.delta >= T or (every is None and tape_bytes <= STORE_ALL_BYTES)
        if self.store_all:
            self.delta = T
        self.nblk = -(-T // self.delta)
        # the backward's (and a store-all forward's) tape: a ring of R slots (recompute), or linear (R = 0)
        self.r_tape = 0 if self.store_all else _pow2(self.delta + 2 * K + 1)
        step = self.KP * self.CP * (self.CP if edges else 1) * self.SP
        self.num_warps = _num_warps(max(step, self.CP * self.CP * self.SP))
        # factored log / max forward: register ring of KR > K slots (kernels.scan_fwd_kernel, RING)
        ring_ok = not edges and self.sr in (LOG.value, MAX.value)
        self.ring = ring_ok and _ring_on(RING_FORWARD, K, C)
        self.ring_tapes = self.ring and _ring_on(RING_TAPES, K, C)
        self.KR = max(2, _pow2(K + 1))
        self.ring_warps = _ring_warps(self.CP, self.KR)
        # the backward's recompute on the same ring (kernels.scan_bwd_kernel, RING_RC), and its
        # adjoint pass (RING_ADJ: no adjoint tape; the transition pull puts labels on the ring's
        # lanes, so CP <= min(KR, 32)), folding duration adjoints every ``fold`` steps. "measured":
        # with the ring forward's stores (RING_TAPES), whose roundings they re-form
        self.ring_recompute = ring_ok and _follows(RING_RECOMPUTE, self.ring_tapes)
        self.ring_adjoint = ring_ok and _follows(RING_ADJOINT, self.ring_tapes) and self.CP <= min(self.KR, 32)
        self.fold = RING_FOLD
        # the tape adjoint's transition pull on a transposed copy (kernels._fac_tpull, TAPE_PULL)
        self.tape_pull = not edges and not self.ring_adjoint and _tape_pull_on(TAPE_PULL, self.CP, self.store_all)
        # the checkpointed backward as a pipeline of block launches (PIPELINE_BACKWARD): its tape
        # ring holds two blocks
        self.pipe = (not self.store_all and self.ring_recompute and self.ring_adjoint
                     and _pipeline_on(PIPELINE_BACKWARD, B, device))
        self.r_pipe = _pow2(2 * self.delta + 2 * K + 1) if self.pipe else self.r_tape
        # kernels index within one sequence with int32 (the batch offset is int64)
        per_seq = max((T + 1) * C, T * (K + 1) * C * C if edges else 0, self.rows(self.r_pipe) * self.CP * self.SP)
        if per_seq >= 2**31:
            raise NotImplementedError(f"one sequence needs {per_seq} elements; the kernels index one sequence with int32")
        self.compiled = {}  # launch key -> compiled kernel (see _launch)
        self._consts = dict(SR=self.sr, KK=self.KK, S=self.S, CP=self.CP, KP=self.KP, SP=self.SP,
                            EDGES=self.edges, HAS_SB=self.has_sb)
        self._scalars = {}

    def bwd_ring(self, recompute: bool) -> dict:
        """The backward's register-ring switches for a call (RECOMPUTE or not)."""
        return dict(USE_RING_RECOMPUTE=recompute and self.ring_recompute, USE_RING_ADJOINT=self.ring_adjoint)

    def bwd_warps(self, recompute: bool) -> int:
        """Warps of the backward: the ring's when a ring step runs in it (its layout, and no
        spills at K=100, C=8: 4 warps need more than 255 registers a thread there)."""
        return self.ring_warps if any(self.bwd_ring(recompute).values()) else self.num_warps

    def consts(self):
        return self._consts

    def scalars(self, R: int) -> dict:
        """The scan kernels' integer and constexpr arguments for a tape of R rows (built once)."""
        kw = self._scalars.get(R)
        if kw is None:
            kw = self._scalars[R] = dict(B=self.B, T=self.T, C=self.C, K=self.K, R=R, DELTA=self.delta,
                                         NBLK=self.nblk, **self._consts)
        return kw

    def rows(self, R) -> int:
        """Rows per sequence of a tape (kernels._tape_rows): a ring of R slots stored twice, or
        (R = 0) one row per position."""
        return self.rows_all if R == 0 else 2 * R

    def tapes(self, R, n, dtype=None, bases=False, extra=()):
        """n tapes (B, rows, CP, SP) from one allocation, then (``bases``) the bases (B, rows, 2)
        in float64 too, then a caller's pieces of the ``extra`` sizes; flat views of one buffer
        (the kernels index them themselves). rows: ``rows(R)``."""
        rows = self.rows(R)
        sizes = [self.B * rows * self.CP * self.SP] * n + [self.B * rows * 2] * bases + list(extra)
        if not sizes:
            return ()
        return torch.empty(sum(sizes), dtype=dtype or self.dtype, device=self.device).split_with_sizes(sizes)

    def bases(self, R):
        return torch.empty(self.B, self.rows(R), 2, dtype=torch.float64, device=self.device)


@functools.lru_cache(maxsize=512)
def _cached_meta(*key):
    return _Meta(*key[:-9])  # the tuning globals end the key


def tuning() -> tuple:
    """The tuning globals a cached launch plan depends on (part of every cache key)."""
    return (NUM_WARPS_OVERRIDE, STORE_ALL_BYTES, RING_FORWARD, RING_TAPES, RING_RECOMPUTE, RING_ADJOINT, RING_FOLD,
            PIPELINE_BACKWARD, TAPE_PULL)


def _meta(*args) -> _Meta:
    """_Meta per call shape, cached (small calls are host-bound); the tuning globals are part of the key.
    torch.compile traces the plain constructor (it warns about lru_cache wrappers)."""
    if torch.compiler.is_compiling():
        return _Meta(*args)
    return _cached_meta(*args, *tuning())


class Operands(NamedTuple):
    """What both kernels read (detached, contiguous). Factored: cum (B, T+1, C) float64, trans (B, C, C),
    dur (B, K, C), tau0 (S, B, C), end (B, C), sb (B, T, C) or None; edges: edges (B, T, K+1, C, C).
    lengths (B,) int64. None where the variant reads nothing (the kernel never forms its offsets)."""
    cum: Optional[torch.Tensor] = None
    trans: Optional[torch.Tensor] = None
    dur: Optional[torch.Tensor] = None
    tau0: Optional[torch.Tensor] = None
    end: Optional[torch.Tensor] = None
    sb: Optional[torch.Tensor] = None
    edges: Optional[torch.Tensor] = None
    lengths: Optional[torch.Tensor] = None


class Tape(NamedTuple):
    """The per-sequence ring (see kernels.py): values tv, α to (factored), τ before the start bias tp,
    routes tra/trt (max, kmax), adjoints ta (float64), bases tb, logsumexp max/sum tam/taz, ttm/ttz."""
    tv: torch.Tensor
    to: Optional[torch.Tensor] = None
    tp: Optional[torch.Tensor] = None
    tra: Optional[torch.Tensor] = None
    trt: Optional[torch.Tensor] = None
    ta: Optional[torch.Tensor] = None
    tb: Optional[torch.Tensor] = None
    tam: Optional[torch.Tensor] = None
    taz: Optional[torch.Tensor] = None
    ttm: Optional[torch.Tensor] = None
    ttz: Optional[torch.Tensor] = None
    trs: Optional[torch.Tensor] = None  # the backward's transposed transition (B, CP, CP), kernel-written


class Checkpoints(NamedTuple):
    """Ring rows (ckv), their bases (ckb) and the block's starting base (ckn) at every block border."""
    ckv: Optional[torch.Tensor] = None
    ckb: Optional[torch.Tensor] = None
    ckn: Optional[torch.Tensor] = None


class Grads(NamedTuple):
    """Gradient outputs of the backward kernel, one per operand (gedge: the edge path's only one)."""
    gcum: Optional[torch.Tensor] = None
    gtr: Optional[torch.Tensor] = None
    gdur: Optional[torch.Tensor] = None
    gtau0: Optional[torch.Tensor] = None
    gend: Optional[torch.Tensor] = None
    gsb: Optional[torch.Tensor] = None
    gedge: Optional[torch.Tensor] = None


class Backpointers(NamedTuple):
    """Viterbi routes of every α and τ sum, (B, T+1, C) int16 each, and the final label (B,) int32."""
    bpa: torch.Tensor
    bpt: torch.Tensor
    fin: torch.Tensor


@functools.cache
def _ptr_names(role_type, skip=()) -> tuple:
    """The kernel keywords of a role's fields (field f: ``f_ptr``; a skipped field: None)."""
    return tuple(None if name in skip else f"{name}_ptr" for name in role_type._fields)


def _pointers(*roles, skip=()) -> dict:
    """Kernel keyword arguments of operand roles: field f is the kernel's ``f_ptr``."""
    kw = {}
    for role in roles:
        kw.update(zip(_ptr_names(type(role), skip), role))
    kw.pop(None, None)
    return kw


def _aligned(*tensors) -> tuple:
    """16-byte alignment of each tensor (Triton specialises pointers on it); None: False."""
    return tuple([x is not None and x.data_ptr() & 15 == 0 for x in tensors])


def _launch(kernel, m: _Meta, variant: tuple, kw: dict, num_warps: Optional[int] = None, grid: int = 0,
            cache: Optional[dict] = None):
    """``kernel[(grid or B,)](**kw)`` with m's launch options.

    Compiled kernels (a GPU, no launch hooks) are launched directly after the first call of a
    specialisation: Triton's generic path (binding ~45 arguments, hashing the key, checking
    globals, launch metadata) costs tens of microseconds of host time per launch, the direct one
    a few. The cache lives on the (per shape) _Meta, keyed by ``variant``: everything Triton
    specialises on that m does not fix (constexpr switches, alignment of caller-owned operands,
    integer arguments that vary); dtypes come from m, and the kernel's own buffers come from
    the caching allocator, aligned. The interpreter, stubs and hooked launches (profilers)
    take the plain path. num_warps: m.num_warps unless given; grid: m.B programs unless given;
    cache: m.compiled unless given (a caller whose kernels specialise on more than m fixes)."""
    num_warps = num_warps or m.num_warps
    grid = grid or m.B
    hooks = knobs.runtime.launch_enter_hook.calls or knobs.runtime.launch_exit_hook.calls
    if not (DIRECT_LAUNCH and isinstance(kernel, JITFunction)) or hooks:
        kernel[(grid,)](**kw, num_warps=num_warps, num_stages=1)
        return
    device = driver.active.get_current_device()
    key = (kernel, device, variant)
    cache = m.compiled if cache is None else cache
    compiled = cache.get(key)
    if compiled is None:
        compiled = kernel[(grid,)](**kw, num_warps=num_warps, num_stages=1)
        if not hasattr(compiled, "result"):  # not an async-compile future
            cache[key] = compiled
        return
    stream = driver.active.get_current_stream(device)
    compiled.run(grid, 1, 1, stream, compiled.function, compiled.packed_metadata, None, None, None,
                 *[kw[name] for name in kernel.arg_names])


def _bwd_tape(m: _Meta, R) -> Tape:
    """Tape of the backward (and of a store-all forward); arrays the variant never touches are None.

    One allocation per dtype, split into views: short calls are host-bound,
    and each allocation costs as much host time as a small kernel launch."""
    return tape_with(m, R)[0]


def tape_with(m: _Meta, R, sizes=(), sizes64=()):
    """(Tape, flat pieces of the ``sizes`` in the compute dtype, of the ``sizes64`` in float64):
    a caller's buffers that live as long as the tape, carved from its allocations. The tape
    adjoint's transposed transition (``trs``, TAPE_PULL) is carved the same way."""
    trs = m.tape_pull
    arrays, more = {}, {None: (m.B * m.CP * m.CP,) * trs + tuple(sizes), torch.float64: sizes64}
    for dtype, names in _tape_names(m.edges, m.has_sb, m.routes, m.lse, m.ring_adjoint):
        bases = dtype == torch.float64  # the bases share the float64 tapes' allocation
        extra = more.get(dtype, ())
        parts = m.tapes(R, len(names), dtype, bases, extra)
        arrays.update(zip(names + ["tb"] * bases, parts))
        more[dtype] = parts[len(parts) - len(extra):]
    pieces = list(more[None])
    if trs:
        arrays["trs"] = pieces.pop(0)
    return Tape(**arrays), pieces, list(more[torch.float64])


@functools.cache
def _tape_names(edges, has_sb, routed, norm, ring_adjoint) -> tuple:
    """(dtype, the Tape fields in it) of a variant's tape; dtype None: the compute dtype."""
    want = dict(to=not edges, tp=has_sb, tam=norm, ttm=norm and not edges)
    # float64: the adjoints (ta) and the logsumexp sums (taz, ttz) the softmax weights are
    # normalised by, so the adjoint recursion conserves probability mass over 10^6 steps
    want64 = dict(ta=not ring_adjoint, taz=norm, ttz=norm and not edges)
    want_int = dict(tra=routed, trt=routed and not edges)
    return ((None, ["tv"] + [k for k, v in want.items() if v]), (torch.float64, [k for k, v in want64.items() if v]),
            (torch.int32, [k for k, v in want_int.items() if v]))


def _fwd(m: _Meta, ops: Operands, save_ck: bool, backptr: Optional[Backpointers] = None,
         tape: Optional[Tape] = None):
    """Launch the forward scan. Returns (value (S, B), saved state for the backward:
    Checkpoints, then the Tape when the forward kept all of it). ``tape``: the whole tape,
    allocated by the caller (``tape_with``), when the forward keeps all of it."""
    dev = m.device
    full = bool(save_ck and m.store_all)
    checkpoints = save_ck and m.nblk > 1
    ring = m.ring_tapes or (m.ring and not (full or checkpoints))  # see RING_TAPES
    if full:
        R = m.r_tape
        tape = _bwd_tape(m, R) if tape is None else tape
    elif ring:  # the ring lives in registers: no tape
        R = 1
        tape = Tape(tv=None)
    else:
        R = _pow2(m.K + 1)
        rings = m.tapes(R, 1 if m.edges else 2)
        tape = Tape(tv=rings[0], to=None if m.edges else rings[1], tb=m.bases(R))
    ck = Checkpoints()
    if checkpoints:
        ck = Checkpoints(ckv=torch.empty(m.B, m.nblk, m.KP, m.CP, m.SP, dtype=m.dtype, device=dev),
                         ckb=torch.empty(m.B, m.nblk, m.KP, 2, dtype=torch.float64, device=dev),
                         ckn=torch.empty(m.B, m.nblk, 2, dtype=torch.float64, device=dev))
    value = torch.empty(m.SP, m.B, dtype=m.dtype, device=dev)
    rot = torch.empty(m.B, m.CP, 2 * m.KR, dtype=m.dtype, device=dev) if ring else None
    bl = torch.empty(m.B, dtype=torch.float64, device=dev) if ring else None  # BASE(L), kernel scratch
    bp = backptr if backptr is not None else Backpointers(None, None, None)
    flags = dict(SAVE_CK=ck.ckv is not None, BACKPTR=backptr is not None, FULL=full)
    _launch(scan_fwd_kernel, m, (*flags.values(), ring, *_aligned(*ops)), dict(
        **_pointers(ops, bp, tape, ck, skip=("ta", "trs")), value_ptr=value, rot_ptr=rot, bl_ptr=bl,
        **m.scalars(R), **flags, KR=m.KR, USE_RING=ring), num_warps=m.ring_warps if ring else m.num_warps)
    return (value if m.SP == m.S else value[: m.S]), (ck, tape if full else None)


def _bwd(m: _Meta, grad_value, ops: Operands, saved, grads: Optional[Grads] = None) -> Grads:
    """Launch the backward scan; returns its Grads (``grads``: the caller's buffers for them)."""
    ck, tape = saved
    recompute = tape is None
    pipe = recompute and m.pipe
    R = m.r_pipe if pipe else m.r_tape
    if recompute:
        tape = _bwd_tape(m, R)
    # (S, B), any strides (the kernel takes them): the expanded ones of v.sum() need no copy
    gv = grad_value if grad_value.dtype == m.dtype else grad_value.to(m.dtype)
    if grads is not None:
        pass
    elif m.edges:
        grads = Grads(gedge=torch.zeros_like(ops.edges))
    else:  # every element is written by the kernel (rows past L as zeros): no fill launches
        like = [ops.trans, ops.dur, ops.tau0, ops.end] + ([] if ops.sb is None else [ops.sb])
        gtr, gdur, gtau0, gend, *gsb = _empty_like(like, m.dtype)
        grads = Grads(gcum=torch.empty_like(ops.cum), gtr=gtr, gdur=gdur, gtau0=gtau0, gend=gend,
                      gsb=gsb[0] if gsb else None)
    ring = m.bwd_ring(recompute)
    rot = torch.empty(m.B, 2, m.CP, 2 * m.KR, dtype=m.dtype, device=m.device) if any(ring.values()) else None
    # RING_ADJ's scratch: 2·fold steps of duration adjoints, the adjoint ring (5 rows), and with
    # the pipeline the sums carried between launches (2 rows)
    gsc = (torch.empty(m.B, 2 * m.fold + 5 + 2 * pipe, m.CP, m.KR, dtype=torch.float64, device=m.device)
           if m.ring_adjoint else None)
    gv_s, gv_b = gv.stride()
    kw = dict(**_pointers(ops, tape, ck, grads), gv_ptr=gv, rot_ptr=rot, gsc_ptr=gsc,
              **m.scalars(R), I=0, GV_S=gv_s, GV_B=gv_b, RECOMPUTE=recompute,
              # KR, GM: constants where no ring runs (one compilation still serves every K of a KP)
              KR=m.KR if any(ring.values()) else 2, GM=m.fold if m.ring_adjoint else 1, PIPE=pipe,
              TAPE_PULL=m.tape_pull, **ring)
    variant = (recompute, pipe, *_aligned(*ops, gv), gv_s, gv_b)
    # PIPE: launch I recomputes block nb-1-I and runs the adjoints of block nb-I (per sequence)
    for i in range(m.nblk + 1 if pipe else 1):
        kw["I"] = i
        _launch(scan_bwd_kernel, m, variant, kw, num_warps=m.bwd_warps(recompute), grid=2 * m.B if pipe else 0)
    return grads


def _empty_like(tensors, dtype):
    """Uninitialised contiguous tensors shaped like ``tensors``, views of one allocation
    (on a GPU host an allocation costs more host time than the views; flat ones need no view)."""
    sizes = [x.numel() for x in tensors]
    parts = torch.empty(sum(sizes), dtype=dtype, device=tensors[0].device).split_with_sizes(sizes)
    return [p if x.dim() == 1 else p.view(x.shape) for p, x in zip(parts, tensors)]


def _edge_operands(m: _Meta, edges, lengths) -> Operands:
    return Operands(edges=edges.detach().to(m.dtype).contiguous(), lengths=_lengths(lengths, edges.device))


def _operands(m: _Meta, cum, trans, dur, tau0, end, sb, lengths) -> Operands:
    """Detached contiguous kernel operands: prefix sums in float64, potentials in the
    compute dtype, lengths int64."""
    cast = lambda x: x.detach().to(m.dtype).contiguous()  # noqa: E731
    return Operands(cum=cum.detach().to(torch.float64).contiguous(), trans=cast(trans), dur=cast(dur),
                    tau0=cast(tau0), end=cast(end), sb=None if sb is None else cast(sb),
                    lengths=_lengths(lengths, cum.device))


def _lengths(lengths, device):
    return lengths.to(device=device, dtype=torch.int64).contiguous()


def _save(ctx, m, ops: Operands, saved):
    """Everything through save_for_backward (version checks on operands that alias inputs,
    saved-tensor hooks on the tapes); the roles are rebuilt by ``_saved``."""
    ck, tape = saved
    ctx.m, ctx.full = m, tape is not None
    ctx.save_for_backward(*ops, *ck, *(tape or ()))


def _saved(ctx):
    """(Operands, (Checkpoints, Tape or None)) saved by ``_save``."""
    xs = ctx.saved_tensors
    n, c = len(Operands._fields), len(Checkpoints._fields)
    tape = Tape(*xs[n + c:]) if ctx.full else None
    return Operands(*xs[:n]), (Checkpoints(*xs[n:n + c]), tape)


class _FactoredScan(torch.autograd.Function):
    @staticmethod
    def forward(ctx, m, cum, trans, dur, tau0, end, lengths, sb):
        ops = _operands(m, cum, trans, dur, tau0, end, sb, lengths)
        value, saved = _fwd(m, ops, any(ctx.needs_input_grad))
        _save(ctx, m, ops, saved)
        return value

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_value):
        g = _bwd(ctx.m, grad_value, *_saved(ctx))
        need = ctx.needs_input_grad
        pick = lambda x, i: x if need[i] else None  # noqa: E731
        return (None, pick(g.gcum, 1), pick(g.gtr, 2), pick(g.gdur, 3), pick(g.gtau0, 4), pick(g.gend, 5), None,
                pick(g.gsb, 7))


class _EdgeScan(torch.autograd.Function):
    @staticmethod
    def forward(ctx, m, edges, lengths):
        ops = _edge_operands(m, edges, lengths)
        value, saved = _fwd(m, ops, any(ctx.needs_input_grad))
        _save(ctx, m, ops, saved)
        return value

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_value):
        return None, _bwd(ctx.m, grad_value, *_saved(ctx)).gedge, None


def _check_lengths(lengths, B):
    if lengths.shape != (B,):
        raise ValueError(f"lengths must have shape ({B},), got {tuple(lengths.shape)}")


def _eager(apply):
    """Under torch.compile, ``apply`` runs outside the graph (one graph break; the kernels
    run as they are); in eager mode it is called directly (the disable wrapper costs host time)."""
    disabled = torch.compiler.disable(apply)
    return lambda *args: disabled(*args) if torch.compiler.is_compiling() else apply(*args)


def _wants_grad(*tensors) -> bool:
    """Whether autograd will ask for a backward. Inside a Function's forward grad mode is off and
    ``needs_input_grad`` ignores torch.no_grad, so this is decided before ``apply``: a forward
    that will get no backward stores no tape nor checkpoints (and may take the register ring)."""
    return torch.is_grad_enabled() and any(x is not None and x.requires_grad for x in tensors)


def _factored_value(m, cum, trans, dur, tau0, end, lengths, sb):
    if _wants_grad(cum, trans, dur, tau0, end, sb):
        return _FactoredScan.apply(m, cum, trans, dur, tau0, end, lengths, sb)
    return _fwd(m, _operands(m, cum, trans, dur, tau0, end, sb, lengths), False)[0]


def _edge_value(m, edges, lengths):
    if _wants_grad(edges):
        return _EdgeScan.apply(m, edges, lengths)
    return _fwd(m, _edge_operands(m, edges, lengths), False)[0]


# settle_impossible inside the same region: one graph break, not a second graph after it
_factored_apply = _eager(lambda sr, *args: sr.settle_impossible(_factored_value(*args)))
_edge_apply = _eager(lambda sr, *args: sr.settle_impossible(_edge_value(*args)))


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
