"""Triton kernels on CPU through TRITON_INTERPRET=1 (tiny sizes), against the dense float64 DP.

Every semiring x input kind (factored / materialized edges) x mixed lengths x
-inf structural zeros, forward and backward, with checkpoints small enough to
force several blocks. TRITON_INTERPRET=1 must be set before triton is first
imported (see ``conftest.require_interpreter``).
"""

import pytest
import torch

from conftest import dot as _dot, interpreter_marks, require_interpreter

triton = require_interpreter()

import semiring_flash as sf  # noqa: E402
from semiring_flash.ops.dispatch import entry_value  # noqa: E402
from semiring_flash.ops.dense import dense_edges, dense_factored  # noqa: E402

kernels = pytest.importorskip("semiring_flash.ops.triton")
from semiring_flash.ops.triton.kernels import scan_fwd_kernel  # noqa: E402

pytestmark = interpreter_marks(scan_fwd_kernel)

NEG = float("-inf")
SEMIRINGS = [sf.LogSemiring, sf.MaxSemiring, sf.EntropySemiring, sf.KMaxSemiring(3)]
IDS = ["log", "max", "entropy", "kmax3"]


def _factored(sr, B, T, K, C, seed, neg, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    r = lambda *s: torch.randn(*s, generator=g, dtype=torch.float64)  # noqa: E731
    cum = torch.cat([torch.zeros(B, 1, C, dtype=torch.float64), r(B, T, C).cumsum(1)], 1)
    trans, dur, entry, end = r(B, C, C), r(B, K, C), r(B, C, C), r(B, C)
    if neg:
        trans[:, 0, C - 1] = NEG  # forbidden transition
        dur[:, K - 1, 0] = NEG  # forbidden duration
        end[:, 0] = NEG
    lengths = torch.randint(1, T + 1, (B,), generator=g)
    lengths[0] = T
    tau0 = entry_value(sr, entry, torch.float64)
    sb = 0.1 * r(B, T, C)
    ins = [cum, trans.to(dtype), dur.to(dtype), tau0.to(dtype), end.to(dtype), sb.to(dtype)]
    return [x.requires_grad_() for x in ins], lengths


def _edges(B, T, K, C, seed, neg, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    e = torch.randn(B, T, K + 1, C, C, generator=g, dtype=torch.float64)
    if neg:
        e[:, :, 1, 0, :] = NEG
        e[:, 2, :, :, C - 1] = NEG
    lengths = torch.randint(1, T + 1, (B,), generator=g)
    lengths[0] = T
    return e.to(dtype).requires_grad_(), lengths


def _check_grads(sr, a, b, ins, seed, tol):
    """Log/entropy: gradients equal the dense DP's. Max/kmax: ties make the argmax
    ambiguous, so check Euler's identity (Σ input·gradient = value, for any optimal
    path) on a weighted sum of the finite channels, and that gradients are 0/±w."""
    assert not torch.isnan(a).any()
    w = torch.randn(a.shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    w = torch.where(torch.isfinite(b), w, torch.zeros_like(w))
    ga = torch.autograd.grad((a.nan_to_num(0, 0, 0) * w.to(a.dtype)).sum(), ins, allow_unused=True)
    for x in ga:
        assert x is None or not torch.isnan(x).any()
    if sr.name in ("max", "kmax"):
        # one weight per (channel, batch): each gradient entry is a sum of path counts times weights
        total = sum(_dot(g.double(), x.detach().double()) for g, x in zip(ga, ins) if g is not None)
        ref = (b.nan_to_num(0, 0, 0) * w).sum()
        torch.testing.assert_close(total, ref, rtol=tol, atol=tol)
        return
    gb = torch.autograd.grad((b.nan_to_num(0, 0, 0) * w).sum(), ins, allow_unused=True)
    for x, y in zip(ga, gb):
        y = torch.zeros_like(x) if y is None else y
        torch.testing.assert_close(x.double(), y.double(), rtol=tol, atol=tol)


# "ckpt": checkpoints every 3 steps, the backward recomputes each block from its checkpoint;
# "stored": short sequences keep the whole tape and the backward skips the recompute
MODES = {"ckpt": 3, "stored": None}


def _grid():
    """semiring x {finite, -inf zeros} x mode; the fast selection (-m "not slow") keeps a
    smoke subset (log and max, -inf zeros, stored tape): the interpreter costs seconds per case."""
    for si in range(4):
        for neg in (False, True):
            for mode in MODES:
                smoke = si in (0, 1) and neg and mode == "stored"
                yield pytest.param(si, neg, mode, id=f"{IDS[si]}-{'neginf' if neg else 'finite'}-{mode}",
                                   marks=() if smoke else pytest.mark.slow)


def _check_factored_vs_dense(sr, si, ins, L, every):
    """The factored kernels' value and gradients against the dense float64 DP."""
    a = kernels.factored_scan_triton(sr, *ins[:5], L, start_bias=ins[5], checkpoint_every=every)
    b = dense_factored(sr, *ins[:5], L, start_bias=ins[5])
    torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)
    _check_grads(sr, a, b, ins, si, 1e-9)


@pytest.fixture
def ring(monkeypatch):
    """The log/max forward on the register ring for every shape, tape and checkpoint stores included
    (by default only in the GPU-checked regime, and never when the forward stores for the backward)."""
    from semiring_flash.ops.triton import launch

    monkeypatch.setattr(launch, "RING_FORWARD", True)
    monkeypatch.setattr(launch, "RING_TAPES", True)


@pytest.mark.parametrize("si, neg, mode", list(_grid()))
def test_factored_fwd_bwd_vs_dense(si, neg, mode):
    sr = SEMIRINGS[si]
    ins, L = _factored(sr, 3, 9, 3, 3, seed=10 + si, neg=neg)
    _check_factored_vs_dense(sr, si, ins, L, MODES[mode])


@pytest.mark.parametrize("si, neg, mode", [p for p in _grid() if p.values[0] in (0, 1)])
def test_factored_register_ring_fwd_bwd_vs_dense(si, neg, mode, ring):
    """The same grid on the register-ring forward (log, max)."""
    test_factored_fwd_bwd_vs_dense(si, neg, mode)
    from semiring_flash.ops.triton import launch
    assert launch._meta(SEMIRINGS[si], 3, 9, 3, 3, torch.float64, torch.device("cpu"), False, True, None).ring


@pytest.mark.parametrize("K, C, want", [(100, 8, True), (32, 2, True), (31, 8, False), (100, 9, False), (30, 39, False)])
def test_register_ring_default_regime(K, C, want):
    """By default the ring runs where it was checked on a GPU (K >= 32, C <= 8), log/max only: the
    forward, its tape and checkpoint stores, the backward's recompute and its adjoint pass."""
    from semiring_flash.ops.triton import launch
    flags = ("RING_FORWARD", "RING_TAPES", "RING_RECOMPUTE", "RING_ADJOINT")
    assert all(getattr(launch, f) == "measured" for f in flags)
    m = lambda sr: launch._meta(sr, 1, 50, K, C, torch.float32, torch.device("cpu"), False, False, None)  # noqa: E731
    for sr in SEMIRINGS[:2]:
        got = m(sr)
        assert [got.ring, got.ring_tapes, got.ring_recompute, got.ring_adjoint] == [want] * 4
    e = m(SEMIRINGS[2])  # entropy steps on the tape
    assert not (e.ring or e.ring_tapes or e.ring_recompute or e.ring_adjoint)


def test_ring_backward_flags_follow_the_ring_forward_by_default(monkeypatch):
    """With the ring forward off, the "measured" recompute and adjoint go off too (they re-form the
    ring forward's roundings); set True, each runs on its own."""
    from semiring_flash.ops.triton import launch
    m = lambda: launch._meta(SEMIRINGS[0], 1, 50, 100, 8, torch.float32, torch.device("cpu"), False, False, None)  # noqa: E731
    monkeypatch.setattr(launch, "RING_FORWARD", False)
    assert not (m().ring_tapes or m().ring_recompute or m().ring_adjoint)
    monkeypatch.setattr(launch, "RING_ADJOINT", True)
    assert m().ring_adjoint and not m().ring_recompute


@pytest.mark.parametrize("every", [None, 6])
def test_register_ring_only_for_forwards_that_store_nothing(every, monkeypatch):
    """Default RING_TAPES outside the measured regime (here K = 3 with RING_FORWARD on): the
    value-only forward takes the ring, a forward that stores the backward's tape (every=None: all
    of it) or checkpoints (every=6) takes the tape step."""
    from semiring_flash.ops.triton import launch
    monkeypatch.setattr(launch, "RING_FORWARD", True)
    seen = []
    real = launch._launch
    monkeypatch.setattr(launch, "_launch", lambda kernel, m, variant, kw, **o: (
        seen.append(kw.get("USE_RING")), real(kernel, m, variant, kw, **o))[1])
    sr = SEMIRINGS[0]
    ins, L = _factored(sr, 2, 16, 3, 2, seed=5, neg=True)
    with torch.no_grad():
        v0 = kernels.factored_scan_triton(sr, *ins[:5], L, checkpoint_every=every)
    xs = [x.detach().requires_grad_() for x in ins[:5]]
    v1 = kernels.factored_scan_triton(sr, *xs, L, checkpoint_every=every)
    v1.sum().backward()
    assert seen[:2] == [True, False], seen
    torch.testing.assert_close(v0, v1.detach(), rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(v1.detach(), dense_factored(sr, *ins[:5], L), rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("si, neg, mode", list(_grid()))
def test_edges_fwd_bwd_vs_dense(si, neg, mode):
    sr = SEMIRINGS[si]
    e, L = _edges(3, 8, 3, 2, seed=20 + si, neg=neg)
    a = kernels.edge_scan_triton(sr, e, L, checkpoint_every=MODES[mode])
    b = dense_edges(sr, e, L)
    torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)
    _check_grads(sr, a, b, [e], si, 1e-9)


@pytest.mark.parametrize("si", [0, 1], ids=["log", "max"])
def test_factored_no_start_bias_single_block_k_gt_t(si):
    """K > T (every duration fits), one block, no start bias (HAS_SB off)."""
    sr = SEMIRINGS[si]
    ins, L = _factored(sr, 2, 4, 6, 2, seed=3, neg=False)
    a = kernels.factored_scan_triton(sr, *ins[:5], L)
    b = dense_factored(sr, *ins[:5], L)
    torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)
    _check_grads(sr, a, b, ins[:5], 3, 1e-9)


@pytest.mark.parametrize("mode", list(MODES))
@pytest.mark.parametrize("si", [0, 1], ids=["log", "max"])
def test_factored_register_ring_with_several_slots_per_lane(si, mode, ring):
    """K = 40: the log/max forward's register ring has KR = 64 slots, two per lane (KO = 2),
    and T < K cuts every window; "stored": the backward reads the ring step's tape rows,
    "ckpt": it recomputes them with the tape step."""
    sr = SEMIRINGS[si]
    ins, L = _factored(sr, 2, 12, 40, 2, seed=30 + si, neg=True)
    _check_factored_vs_dense(sr, si, ins, L, MODES[mode])


@pytest.mark.parametrize("si", [0, 1], ids=["log", "max"])
def test_factored_checkpointed_ring_vs_dense_and_bitwise_repeatable(si, ring):
    """The ring wraps (T = 16 > KR = 4) and the forward stores checkpoints from registers
    (every 4 steps); values and gradients match the dense DP, and two runs give the same bits."""
    sr = SEMIRINGS[si]
    ins, L = _factored(sr, 2, 16, 3, 3, seed=40 + si, neg=True)

    def run():
        v = kernels.factored_scan_triton(sr, *ins[:5], L, start_bias=ins[5], checkpoint_every=4)
        return [v.detach()] + list(torch.autograd.grad(v.sum(), ins))

    _check_factored_vs_dense(sr, si, ins, L, 4)
    for x, y in zip(run(), run()):
        assert torch.equal(x, y)


# -- the backward on the register ring (issue 11): launch flags, each with the ring forward -------
#: flag sets of the ring backward: the recompute on the ring (launch.RING_RECOMPUTE), the adjoint
#: pass on it (RING_ADJOINT) after the tape forward and recompute, and everything on the ring
RING_BWD = {"recompute": ("RING_FORWARD", "RING_TAPES", "RING_RECOMPUTE"), "adjoint": ("RING_ADJOINT",),
            "all": ("RING_FORWARD", "RING_TAPES", "RING_RECOMPUTE", "RING_ADJOINT")}


@pytest.fixture(params=["all"])
def ring_bwd(request, monkeypatch):
    """The backward's register-ring flags (by default on only at K >= 32, C <= 8): every flag on, or a
    set named by indirect parametrization (``EACH_RING_BWD``: each flag set, in the dense test);
    the adjoint ring folds its duration adjoints every 4 steps (several folds, not aligned with
    the blocks)."""
    from semiring_flash.ops.triton import launch

    for flag in RING_BWD[request.param]:
        monkeypatch.setattr(launch, flag, True)
    monkeypatch.setattr(launch, "RING_FOLD", 4)
    return request.param


def _value_grads(sr, ins, L, every, sb=True):
    v = kernels.factored_scan_triton(sr, *ins[:5], L, start_bias=ins[5] if sb else None, checkpoint_every=every)
    wrt = ins if sb else ins[:5]
    return [v.detach()] + list(torch.autograd.grad(v.sum(), wrt))


#: each flag set at K = 3, every flag at K = 5 too (the other ring tests take every flag: CI time)
EACH_RING_BWD = [pytest.param(k, 3, id=f"{k}-K3", marks=() if k == "all" else pytest.mark.slow) for k in RING_BWD] + [
    pytest.param("all", 5, id="all-K5", marks=pytest.mark.slow)]


@pytest.mark.parametrize("ring_bwd, K", EACH_RING_BWD, indirect=["ring_bwd"])
@pytest.mark.parametrize("si", [0, 1], ids=["log", "max"])
def test_ring_backward_vs_dense_and_bitwise_the_stored_tape(si, K, ring_bwd):
    """K not a power of two, mixed lengths, -inf zeros, T = 16 > KR (the ring wraps), 4 blocks:
    gradients match the dense DP, and the blocks recomputed from checkpoints give bit for bit
    the gradients of the ring forward's stored tape (the tape step's sums would differ in the
    last bits for log)."""
    sr = SEMIRINGS[si]
    ins, L = _factored(sr, 3, 16, K, 3, seed=50 + si, neg=True)
    _check_factored_vs_dense(sr, si, ins, L, 4)
    for x, y in zip(_value_grads(sr, ins, L, 4), _value_grads(sr, ins, L, None)):
        assert torch.equal(x, y)


@pytest.mark.parametrize("si", [0, 1], ids=["log", "max"])
def test_pipelined_backward_equals_the_one_program_backward(si, ring_bwd, monkeypatch):
    """launch.PIPELINE_BACKWARD: two programs per sequence, one launch per block (the recompute of
    block j-1 beside the adjoints of block j), gdur and the transition's adjoints carried between
    launches in float64. Gradients bit for bit those of the one-program ring backward and of the
    stored tape: lengths of 4 blocks, of exactly 2, of less than one, and of 0 (unchecked lengths), the
    duration-adjoint folds (every 4 steps) straddling launches; checked against the dense DP."""
    from semiring_flash.ops.triton import launch

    sr = SEMIRINGS[si]
    ins, _ = _factored(sr, 4, 15, 3, 3, seed=60 + si, neg=True)
    L = torch.tensor([15, 8, 3, 0])
    launched = []
    real = launch._launch
    monkeypatch.setattr(launch, "_launch", lambda kernel, m, variant, kw, **o: (
        launched.append((kw.get("PIPE"), kw.get("I"), o.get("grid"))), real(kernel, m, variant, kw, **o))[1])
    monkeypatch.setattr(launch, "PIPELINE_BACKWARD", True)
    piped = _value_grads(sr, ins, L, 4)
    assert [x for x in launched if x[0] is not None] == [(True, i, 8) for i in range(5)]  # 4 blocks + 1
    monkeypatch.setattr(launch, "PIPELINE_BACKWARD", False)
    for x, y, z in zip(piped, _value_grads(sr, ins, L, 4), _value_grads(sr, ins, L, None)):
        assert torch.equal(x, y) and torch.equal(x, z)
    assert all(torch.isfinite(g).all() for g in piped[1:])
    monkeypatch.setattr(launch, "PIPELINE_BACKWARD", True)
    _check_factored_vs_dense(sr, si, ins, L, 4)


@pytest.mark.parametrize("every", [None, 4], ids=["kept", "recompute"])
@pytest.mark.parametrize("si", [0, 1, 2], ids=IDS[:3])
def test_tape_pull_gives_the_plain_pulls_gradients_bit_for_bit(si, every, monkeypatch):
    """launch.TAPE_PULL (the tape adjoint's transition pull on a transposed copy, log divisions once
    per row): the same float64 operations as the plain pull, so the interpreter's gradients are bit
    for bit equal, kept tape and recomputed blocks, mixed lengths, -inf zeros, a start bias; the
    launches did take it (and the dense DP agrees)."""
    from semiring_flash.ops.triton import launch

    sr = SEMIRINGS[si]
    ins, _ = _factored(sr, 3, 13, 3, 5, seed=70 + si, neg=True)
    L = torch.tensor([13, 6, 1])
    seen = []
    real = launch._launch
    monkeypatch.setattr(launch, "_launch", lambda kernel, m, variant, kw, **o: (
        seen.append(kw.get("TAPE_PULL")), real(kernel, m, variant, kw, **o))[1])
    monkeypatch.setattr(launch, "TAPE_PULL", True)
    pulled = _value_grads(sr, ins, L, every)
    assert True in seen
    seen.clear()
    monkeypatch.setattr(launch, "TAPE_PULL", False)
    for x, y in zip(pulled, _value_grads(sr, ins, L, every)):
        assert torch.equal(x, y)
    assert False in seen and True not in seen
    monkeypatch.setattr(launch, "TAPE_PULL", True)
    _check_factored_vs_dense(sr, si, ins, L, every)


def test_tape_pull_only_where_measured(monkeypatch):
    """"measured": C > 32 with the whole tape kept (the GPU-checked regime); never with the ring
    adjoint or edges, nor on the recompute path (2026-12-08: a 20x larger gradient error there on
    the H100, since traced to the recompute's sum order and fixed, not yet re-measured); the
    transposed copy is carved only where the pull reads it."""
    from semiring_flash.ops.triton import launch

    cpu = torch.device("cpu")
    m = lambda C, T=1000, K=30, edges=False, every=None: launch._meta(  # noqa: E731
        SEMIRINGS[0], 16, T, K, C, torch.float32, cpu, edges, False, every)
    assert launch.TAPE_PULL == "measured"
    assert m(39).tape_pull and m(39).store_all
    assert not m(39, every=100).tape_pull  # recomputed blocks
    assert not m(12).tape_pull and not m(39, edges=True).tape_pull
    assert launch.tape_with(m(39), 0)[0].trs is not None and launch.tape_with(m(12), 0)[0].trs is None
    monkeypatch.setattr(launch, "TAPE_PULL", True)
    assert m(12).tape_pull and m(39, every=100).tape_pull
    assert not launch._meta(SEMIRINGS[0], 1, 1000, 100, 8, torch.float32, cpu, False, False, None).tape_pull  # ring adjoint


def test_pipelined_backward_only_where_it_can_run(monkeypatch):
    """The pipeline needs the ring recompute and adjoint; "auto" takes it on a GPU whose SMs hold
    the 2B programs, never on the CPU (the interpreter); its tape ring holds two blocks."""
    from semiring_flash.ops.triton import launch

    cpu = torch.device("cpu")
    m = lambda sr=SEMIRINGS[0], every=200: launch._meta(sr, 1, 10_000, 100, 8, torch.float32, cpu, False, False, every)  # noqa: E731
    assert launch.PIPELINE_BACKWARD == "auto" and not m().pipe and m().r_pipe == m().r_tape
    monkeypatch.setattr(launch, "PIPELINE_BACKWARD", True)
    assert m().pipe and (m().r_tape, m().r_pipe) == (512, 1024)  # pow2(Δ + 2K + 1), pow2(2Δ + 2K + 1)
    assert not m(every=None).pipe  # the whole tape kept: no recompute
    assert not m(sr=SEMIRINGS[2]).pipe  # entropy: no ring backward
    monkeypatch.setattr(launch, "RING_ADJOINT", False)
    assert not m().pipe


@pytest.mark.slow
@pytest.mark.parametrize("T, K, C, every", [(12, 40, 2, None), (10, 7, 8, 3)], ids=["KO2", "labels_fill_lanes"])
@pytest.mark.parametrize("si", [0, 1], ids=["log", "max"])
def test_ring_backward_slot_and_lane_extremes_vs_dense(si, T, K, C, every, ring_bwd):
    """K = 40: KR = 64 slots, two per lane, T < K cuts every window; K = 7, C = 8: KR = CP = 8,
    the transition pull's labels fill every lane of the ring (the largest C it takes there)."""
    sr = SEMIRINGS[si]
    ins, L = _factored(sr, 2, T, K, C, seed=100 + si, neg=True)
    _check_factored_vs_dense(sr, si, ins, L, every)


@pytest.mark.parametrize("every", [0, -2, 1.5])
def test_kernels_refuse_a_bad_checkpoint_interval(every):
    ins, L = _factored(sf.LogSemiring, 2, 6, 2, 2, seed=1, neg=False)
    with pytest.raises(ValueError, match="checkpoint_every"):
        kernels.factored_scan_triton(sf.LogSemiring, *ins[:5], L, checkpoint_every=every)


def test_kept_tape_is_linear_one_row_per_position():
    """A kept (store-all) tape has one row per position (R = 0, kernels._tape_rows), not a
    mirrored ring of pow2(T + 2K + 1) rows: issue 11's batched case (B=16, T=1000, K=30, C=39,
    log, fp32) keeps its tape within the default budget (42 MB; 168 MB mirrored, over
    STORE_ALL_BYTES, so its backward recomputed), and B=1, T=10^5, K=100, C=8 takes 34 MB
    instead of 84 MB."""
    from semiring_flash.ops.triton import launch

    cpu = torch.device("cpu")
    for (B, T, K, C), most in [((16, 1000, 30, 39), 43e6), ((1, 100_000, 100, 8), 35e6)]:
        m = launch._meta(sf.LogSemiring, B, T, K, C, torch.float32, cpu, False, False, None)
        assert m.store_all and m.r_tape == 0 and m.rows(m.r_tape) == T + K + 1
        tape = launch.tape_with(m, m.r_tape)[0]
        assert sum(x.numel() * x.element_size() for x in tape if x is not None) < most
    # a checkpointed backward keeps its mirrored ring
    m = launch._meta(sf.LogSemiring, 1, 1000, 30, 8, torch.float32, cpu, False, False, 100)
    assert not m.store_all and m.r_tape == 256 and m.rows(m.r_tape) == 512


@pytest.mark.parametrize("every", [None, 6, 50])
def test_one_block_is_always_kept(every, monkeypatch):
    """A single block (Δ >= T) keeps its tape even over STORE_ALL_BYTES: recomputing it had no
    checkpoint to start from, and the backward's checkpoint branch failed to compile (GPU)."""
    from semiring_flash.ops.triton import launch

    monkeypatch.setattr(launch, "STORE_ALL_BYTES", 0)
    sr = sf.LogSemiring
    m = launch._meta(sr, 2, 6, 8, 3, torch.float64, torch.device("cpu"), False, True, every)
    assert m.nblk == 1 and m.store_all and m.r_tape == 0
    ins, L = _factored(sr, 2, 6, 8, 3, seed=3, neg=True)
    _check_factored_vs_dense(sr, 0, ins, L, every)


@pytest.mark.slow
@pytest.mark.parametrize("si", [0, 1], ids=["log", "max"])
def test_ring_backward_default_blocks_vs_dense(si, ring_bwd, monkeypatch):
    """No tape kept (STORE_ALL_BYTES = 0): the default Δ ≈ √(T·K) cuts T = 16 into 3 blocks."""
    from semiring_flash.ops.triton import launch

    monkeypatch.setattr(launch, "STORE_ALL_BYTES", 0)
    sr = SEMIRINGS[si]
    ins, L = _factored(sr, 2, 16, 3, 2, seed=60 + si, neg=True)
    assert launch._meta(sr, 2, 16, 3, 2, torch.float64, torch.device("cpu"), False, True, None).nblk == 3
    _check_factored_vs_dense(sr, si, ins, L, None)


@pytest.mark.parametrize("si", [0, 1], ids=["log", "max"])
def test_ring_backward_against_flags_off_with_ties(si, ring_bwd, monkeypatch):
    """Integer potentials (max: many tied paths), no start bias, several blocks: the gradients
    equal the flags-off kernel's (max: bit for bit, the same tie rules; log: to rounding) and,
    by Euler's identity / against the dense DP, an optimal path's."""
    from semiring_flash.ops.triton import launch

    sr = SEMIRINGS[si]
    ins, L = _factored(sr, 2, 12, 3, 3, seed=70 + si, neg=True)
    with torch.no_grad():
        for x in ins:
            x.copy_(torch.where(torch.isfinite(x), x.round(), x))
    on = _value_grads(sr, ins, L, 4, sb=False)
    with monkeypatch.context() as mp:
        for flag in ("RING_FORWARD",) + RING_BWD[ring_bwd]:
            mp.setattr(launch, flag, False)
        off = _value_grads(sr, ins, L, 4, sb=False)
    for x, y in zip(on, off):
        if si == 1:
            assert torch.equal(x, y)
        else:
            torch.testing.assert_close(x, y, rtol=1e-12, atol=1e-12)
    a = kernels.factored_scan_triton(sr, *ins[:5], L, checkpoint_every=4)
    _check_grads(sr, a, dense_factored(sr, *ins[:5], L), ins[:5], 70 + si, 1e-9)


@pytest.mark.slow
@pytest.mark.parametrize("si", [0, 1], ids=["log", "max"])
def test_ring_backward_fp32_vs_float64_dense_and_flags_off(si, ring_bwd, monkeypatch):
    """fp32 compute: the ring backward's gradients stay as close to the float64 dense DP as the
    flags-off kernel's (its sums run in another order: the last bits of fp32 α, of float64 sums)."""
    from semiring_flash.ops.triton import launch

    sr = SEMIRINGS[si]
    ins, L = _factored(sr, 2, 12, 4, 3, seed=80 + si, neg=True, dtype=torch.float32)
    ref = [x.detach().double().requires_grad_() for x in ins]
    gb = torch.autograd.grad(dense_factored(sr, *ref[:5], L, start_bias=ref[5])[0].sum(), ref)
    on = _value_grads(sr, ins, L, 4)
    with monkeypatch.context() as mp:
        for flag in RING_BWD[ring_bwd]:
            mp.setattr(launch, flag, False)
        off = _value_grads(sr, ins, L, 4)
    for x, y, z in zip(on[1:], off[1:], gb):
        torch.testing.assert_close(x, y, rtol=1e-6, atol=1e-6)
        if si == 0:  # max: Euler's identity below (ties)
            torch.testing.assert_close(x.double(), z, rtol=1e-4, atol=1e-4)


@pytest.mark.slow
def test_ring_adjoint_falls_back_to_the_tape_when_labels_outnumber_slots(monkeypatch):
    """K = 2 (KR = 4 slots), C = 5 (CP = 8): the transition pull cannot lay labels along the
    slots, so the tape adjoint runs (launch._Meta.ring_adjoint off), still right."""
    from semiring_flash.ops.triton import launch

    monkeypatch.setattr(launch, "RING_ADJOINT", True)
    sr = SEMIRINGS[0]
    assert not launch._meta(sr, 2, 8, 2, 5, torch.float64, torch.device("cpu"), False, True, 3).ring_adjoint
    assert launch._meta(sr, 2, 8, 3, 4, torch.float64, torch.device("cpu"), False, True, 3).ring_adjoint
    ins, L = _factored(sr, 2, 8, 2, 5, seed=90, neg=True)
    _check_factored_vs_dense(sr, 0, ins, L, 3)


@pytest.mark.slow
@pytest.mark.parametrize("si", [0, 2], ids=["log", "entropy"])
def test_fp32_compute_vs_float64_dense(si):
    sr = SEMIRINGS[si]
    ins, L = _factored(sr, 2, 12, 4, 3, seed=5, neg=True, dtype=torch.float32)
    a = kernels.factored_scan_triton(sr, *ins[:5], L, start_bias=ins[5], checkpoint_every=4)
    assert a.dtype == torch.float32
    ref = [x.detach().double().requires_grad_() for x in ins]
    b = dense_factored(sr, *ref[:5], L, start_bias=ref[5])
    torch.testing.assert_close(a.double(), b, rtol=1e-5, atol=1e-5)
    ga = torch.autograd.grad(a[0].sum(), ins)
    gb = torch.autograd.grad(b[0].sum(), ref)
    for x, y in zip(ga, gb):
        torch.testing.assert_close(x.double(), y, rtol=1e-4, atol=1e-4)


@pytest.mark.slow
@pytest.mark.parametrize("block", [4, 4096], ids=["blocks", "one-block"])
def test_viterbi_matches_max_gradient_path(block, monkeypatch):
    from semiring_flash.ops.triton import segments

    monkeypatch.setattr(segments, "CHAIN_BLOCK", block)
    sr = sf.MaxSemiring
    ins, L = _factored(sr, 3, 12, 4, 3, seed=7, neg=True)
    cum, trans, dur, tau0, end, _ = ins
    sb = torch.zeros(3, 12, 3, dtype=torch.float64, requires_grad=True)
    v = kernels.factored_scan_triton(sr, cum, trans, dur, tau0, end, L, start_bias=sb)
    (g,) = torch.autograd.grad(v.sum(), sb)
    score, labels, starts = kernels.viterbi_triton(cum, trans, dur, tau0, end, L)
    torch.testing.assert_close(score, v[0])
    assert torch.equal(starts, g.sum(-1) > 0)
    for b in range(3):
        cur = -1
        for t in range(12):
            if t < L[b] and starts[b, t]:
                cur = int(g[b, t].argmax())
            assert int(labels[b, t]) == (cur if t < L[b] else -1)


def _walk(bpa, bpt, fin, L, T):
    """The chain from (L, fin), walked in Python: the backtrace's reference."""
    labels, starts = [-1] * T, [0] * T
    t, c = (L, fin) if fin >= 0 else (0, 0)
    while t > 0:
        d = int(bpa[t, c]) + 1
        labels[t - d:t] = [c] * d
        starts[t - d] = 1
        t, c = t - d, int(bpt[t - d, c]) if t > d else 0  # position 0: no route
    return labels, starts


@pytest.mark.parametrize("block", [4, 8, 16, 4096])
def test_parallel_backtrace_matches_a_walk_of_the_chain(block):
    """segments.backtrace (pointer jumping inside blocks, one load per block, blocks walked in
    parallel) against a Python walk: mixed lengths, segments longer than a block, a sequence
    without a segmentation (fin −1), garbage backpointers past L and in row 0 (any int16)."""
    from semiring_flash.ops.triton import launch, segments

    g = torch.Generator().manual_seed(block)
    B, T, K, C = 4, 15, 6, 3
    lengths = torch.tensor([15, 11, 1, 9])
    fin = torch.tensor([2, 0, 1, -1], dtype=torch.int32)
    bpa = torch.randint(-32768, 32767, (B, T + 1, C), generator=g, dtype=torch.int16)
    bpt = torch.randint(-32768, 32767, (B, T + 1, C), generator=g, dtype=torch.int16)
    for b in range(B):
        L = int(lengths[b])
        for t in range(1, L + 1):
            long = torch.rand(C, generator=g) < 0.3  # mostly one-token segments: long chains inside a block
            bpa[b, t] = torch.where(long, torch.randint(0, min(K, t), (C,), generator=g), 0)
        bpt[b, 1:L] = torch.randint(0, C, (L - 1, C), generator=g)  # row 0 stays garbage, as the forward leaves it
    bpa[0, 15, 2] = 5  # a 6-token segment: it skips whole blocks of 4 states
    bp = launch.Backpointers(bpa, bpt, fin)
    labels, starts = segments.backtrace(bp, fin, lengths, B, T, C, K, block)
    for b in range(B):
        want_labels, want_starts = _walk(bpa[b], bpt[b], int(fin[b]), int(lengths[b]), T)
        assert labels[b].tolist() == want_labels
        assert starts[b].tolist() == want_starts


@pytest.mark.slow
def test_dispatch_backend_triton_matches_torch():
    """The public API with backend='triton' (CPU tensors under the interpreter)."""
    g = torch.Generator().manual_seed(11)
    B, T, K, C = 2, 8, 3, 3
    pots = sf.SegmentPotentials(
        torch.randn(B, T, C, generator=g, dtype=torch.float64),
        transition=torch.randn(C, C, generator=g, dtype=torch.float64),
        duration=torch.randn(K, C, generator=g, dtype=torch.float64),
        init=torch.randn(C, generator=g, dtype=torch.float64),
        end=torch.randn(C, generator=g, dtype=torch.float64),
        lengths=torch.tensor([8, 5]),
    )
    a = sf.SemiMarkovCRF(pots, backend="triton")
    b = sf.SemiMarkovCRF(pots, backend="torch")
    torch.testing.assert_close(a.partition, b.partition)
    ma, mb = a.marginals, b.marginals
    for name in ("token", "start", "duration", "transition"):
        torch.testing.assert_close(getattr(ma, name), getattr(mb, name), rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(a.entropy, b.entropy)
    sa, sb_ = a.argmax, b.argmax
    torch.testing.assert_close(a.max, b.max)
    assert torch.equal(sa.labels, sb_.labels) and torch.equal(sa.starts, sb_.starts)


def test_edges_match_torch_struct():
    torch_struct = pytest.importorskip("torch_struct")
    e, _ = _edges(2, 7, 3, 3, seed=9, neg=False)
    L = torch.tensor([7, 7])
    a = kernels.edge_scan_triton(sf.LogSemiring, e, L)
    ref = torch_struct.SemiMarkovCRF(e.detach().clone().requires_grad_(), lengths=L + 1)
    torch.testing.assert_close(a[0], ref.partition)
    (ga,) = torch.autograd.grad(a.sum(), e)
    torch.testing.assert_close(ga, ref.marginals)


def test_semiring_ids_match_the_kernel_pieces():
    """Semiring.triton_id is what the kernels' named constexprs branch on."""
    from semiring_flash.ops.triton import semiring as pieces

    for sr, piece in [(sf.LogSemiring, pieces.LOG), (sf.MaxSemiring, pieces.MAX),
                      (sf.EntropySemiring, pieces.ENTROPY), (sf.KMaxSemiring(2), pieces.KMAX)]:
        assert sr.triton_id == piece.value
    # subclasses that change ⊕'s gradient must not inherit the parent's kernel or closed form
    from semiring_flash.semirings import GumbelMaxSemiring, SampledSemiring, TempMax
    for sr in (SampledSemiring, TempMax(1.0), GumbelMaxSemiring(1.0)):
        assert sr.triton_id is None and sr.plus_vjp is None


# -- SegmentPotentials as one autograd node on the Triton backend (ops/triton/segment_scan.py) ----
def _segment_model(shared, option, dtype=torch.float32, seed=0):
    g = torch.Generator().manual_seed(seed)
    B, T, K, C = 3, 7, 3, 4
    r = lambda *s: torch.randn(*s, generator=g).to(dtype)  # noqa: E731
    batch = () if shared else (B,)
    d = dict(transition=r(*batch, C, C), duration=r(*batch, K, C))
    d["transition"][..., 0, 1] = float("-inf")  # a forbidden transition
    d["duration"][..., 2, 3] = float("-inf")  # a forbidden duration
    scores = r(B, T, C)
    if option == "cum":
        d["cum_scores"] = torch.cat([torch.zeros(B, 1, C, dtype=torch.float64), scores.double().cumsum(1)], 1)
    else:
        d["scores"] = scores
    if option == "init":
        d["init"] = r(C)
    if option == "start":
        d["start"] = r(B, C)
    if option in ("init", "start", "cum"):
        d["end"] = r(*batch, C)
    return d, torch.tensor([7, 5, 1])


def _value_and_grads(semiring, d, lengths, fast, needs=None):
    from semiring_flash.ops import dispatch

    leaves = {k: v.clone().requires_grad_(needs is None or k in needs) for k, v in d.items()}
    pots = sf.SegmentPotentials(**leaves, lengths=lengths)
    v = (dispatch.potentials_value(semiring, [pots], "triton") if fast
         else dispatch.value(semiring, dispatch.inputs([pots]), "triton"))
    wrt = [x for x in leaves.values() if x.requires_grad]
    return v, torch.autograd.grad(v.sum(), wrt)


@pytest.mark.parametrize("semiring", [sf.LogSemiring, sf.MaxSemiring], ids=["log", "max"])
@pytest.mark.parametrize("shared", [True, False], ids=["shared", "per_batch"])
@pytest.mark.parametrize("option", ["plain", "init", "start", "cum"])
def test_segment_scan_equals_the_general_path(semiring, shared, option, monkeypatch):
    """The one-node path (hand-written glue VJP) gives the general path's value and gradients
    (the autograd glue around the same kernels), in the user's shapes and dtypes."""
    from semiring_flash.ops.triton import segment_scan

    d, L = _segment_model(shared, option)
    calls = []
    real = segment_scan.segment_scan_triton
    monkeypatch.setattr(segment_scan, "segment_scan_triton", lambda *a: calls.append(1) or real(*a))
    v_fast, g_fast = _value_and_grads(semiring, d, L, True)
    assert calls, "the one-node path was not taken"
    v_ref, g_ref = _value_and_grads(semiring, d, L, False)
    torch.testing.assert_close(v_fast, v_ref, rtol=1e-6, atol=1e-6)
    for a, b in zip(g_fast, g_ref):
        assert a.dtype == b.dtype and a.shape == b.shape
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


def test_segment_scan_partial_grads_half_scores_and_inputs_untouched():
    d, L = _segment_model(True, "init")
    d["scores"] = d["scores"].half()
    before = {k: v.clone() for k, v in d.items()}
    for needs in (("transition",), ("scores", "init"), ("duration", "end")):
        v_fast, g_fast = _value_and_grads(sf.LogSemiring, d, L, True, needs)
        v_ref, g_ref = _value_and_grads(sf.LogSemiring, d, L, False, needs)
        torch.testing.assert_close(v_fast, v_ref)
        for a, b in zip(g_fast, g_ref):
            assert a.dtype == b.dtype
            torch.testing.assert_close(a.float(), b.float(), rtol=2e-3, atol=2e-3)
    assert all(torch.equal(d[k], before[k]) for k in d)


def test_segment_scan_impossible_sequence_zero_gradients():
    """Length 1 with duration 1 forbidden: log Z = −inf, every gradient 0 (never NaN), like the general path."""
    d, _ = _segment_model(True, "init")
    d["duration"][0] = float("-inf")
    L = torch.tensor([7, 5, 1])
    for semiring in (sf.LogSemiring, sf.MaxSemiring):
        v, grads = _value_and_grads(semiring, d, L, True)
        assert v[0, 2] == float("-inf") and torch.isfinite(v[0, :2]).all()
        assert all(torch.isfinite(x).all() for x in grads)
        assert not grads[list(d).index("scores")][2].any()  # the impossible sequence's scores get no gradient
        _, ref = _value_and_grads(semiring, d, L, False)
        for a, b in zip(grads, ref):
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
