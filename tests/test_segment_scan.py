"""The one-node SegmentPotentials path (ops/triton/segment_scan.py) and its glue kernels
(ops/triton/segment_glue.py): its host work, pinned, and the glue against the general path
(the same scan kernels behind autograd glue; itself checked against the dense DP) where the
glue kernels loop: several row blocks, several batch chunks, any strides, float64.
Interpreter tests (TRITON_INTERPRET=1, tiny sizes); see also test_triton_interpret.py."""

import os

import pytest
import torch

triton = pytest.importorskip("triton")
if os.environ.get("TRITON_INTERPRET") != "1" and not torch.cuda.is_available():
    pytest.skip("needs TRITON_INTERPRET=1 before triton is imported", allow_module_level=True)

import semiring_flash as sf  # noqa: E402
from semiring_flash import validation  # noqa: E402
from semiring_flash.ops import dispatch  # noqa: E402
from semiring_flash.ops.triton import launch, segment_scan  # noqa: E402
from test_host_path import CountOps  # noqa: E402

pytestmark = [pytest.mark.triton_interpret, pytest.mark.filterwarnings("ignore::RuntimeWarning"),
              pytest.mark.filterwarnings("ignore::DeprecationWarning"),
              pytest.mark.skipif(type(launch.scan_fwd_kernel).__name__ != "InterpretedFunction",
                                 reason="kernels compiled for a GPU (TRITON_INTERPRET unset at import)")]

#: aten ops of one public-API training step (B=32, T=128, K=8, C=16; the second call of a
#: signature), launches excluded: 45 before the glue kernels and the cached plan, 13 with them
#: (5 of those are the caller's: partition's squeeze, z.sum() and their backward)
MAX_ATEN_OPS = 15
#: the ops among them that run a GPU kernel: z.sum() and the ones its backward starts from
#: (partition's select cost a zero fill and a copy in its backward; its squeeze costs a view)
KERNEL_OPS = {"aten.sum.default", "aten.ones_like.default"}
NO_KERNEL = ("aten.empty", "aten.split", "aten.squeeze", "aten.unsqueeze", "aten.expand", "aten.view")
LAUNCHES = 4  # the glue before the scan, the forward scan, the backward scan, the glue after it


def test_public_api_step_host_work_is_pinned(monkeypatch):
    """The host work of SegmentPotentials -> partition -> gradients on the Triton backend: aten ops
    (each ~10 µs of host time on a GPU host) and kernel launches, counted with the kernels stubbed."""
    if os.environ.get("SF_POISON_EMPTY") == "1":
        pytest.skip("SF_POISON_EMPTY adds a fill to every allocation")
    launched = []

    class Stub:  # records the launch; the kernels' outputs stay unwritten (the host path only)
        def __init__(self, name):
            self.name = name

        def __getitem__(self, grid):
            return lambda *args, **kwargs: launched.append(self.name)

    for mod, name in ((launch, "scan_fwd_kernel"), (launch, "scan_bwd_kernel"),
                      (segment_scan, "segment_prep_kernel"), (segment_scan, "segment_grads_kernel")):
        monkeypatch.setattr(mod, name, Stub(name))
    monkeypatch.setattr(validation, "_on_host", lambda device: False)  # the GPU policy: checks once per signature
    B, T, K, C = 32, 128, 8, 16
    leaves = [torch.randn(B, T, C, requires_grad=True), torch.randn(C, C, requires_grad=True),
              torch.randn(K, C, requires_grad=True)]
    lengths = torch.full((B,), T)

    def step():
        pots = sf.SegmentPotentials(leaves[0], transition=leaves[1], duration=leaves[2], lengths=lengths)
        z = sf.SemiMarkovCRF(pots, backend="triton").partition
        return torch.autograd.grad(z.sum(), leaves)

    step()
    launched.clear()
    with CountOps() as count:
        grads = step()
    n = sum(count.ops.values())
    assert n <= MAX_ATEN_OPS, f"{n} aten ops per step (at most {MAX_ATEN_OPS}): {dict(count.ops)}"
    assert count.reads == 0
    assert {op for op in count.ops if not op.startswith(NO_KERNEL)} == KERNEL_OPS, dict(count.ops)
    assert sorted(launched) == sorted(["segment_prep_kernel", "scan_fwd_kernel", "scan_bwd_kernel",
                                       "segment_grads_kernel"]), launched
    assert [g.shape for g in grads] == [x.shape for x in leaves]


def _model(shared, option, B=3, T=5, K=2, C=3, dtype=torch.float32, seed=0):
    g = torch.Generator().manual_seed(seed)
    r = lambda *s: torch.randn(*s, generator=g, dtype=torch.float64).to(dtype)  # noqa: E731
    batch = () if shared else (B,)
    d = dict(transition=r(*batch, C, C), duration=r(*batch, K, C))
    d["transition"][..., 0, 1] = float("-inf")
    d["duration"][..., K - 1, C - 1] = float("-inf")
    if option == "strided":  # non-contiguous scores and transition
        d["scores"] = r(B, C, T).transpose(1, 2)
        d["transition"] = d["transition"].transpose(-1, -2)
    elif option == "cum":
        d["cum_scores"] = torch.cat([torch.zeros(B, 1, C, dtype=dtype), r(B, T, C).cumsum(1)], 1)
    else:
        d["scores"] = r(B, T, C)
    if option in ("init", "strided"):
        d["init"] = r(*batch, C)
    if option == "start":
        d["start"] = r(*batch, C)
    if option != "plain":
        d["end"] = r(*batch, C)
    lengths = torch.randint(1, T + 1, (B,), generator=g)
    lengths[0] = T
    return d, lengths


def _value_and_grads(semiring, d, lengths, fast):
    leaves = {k: v.detach().clone().requires_grad_() for k, v in d.items()}
    pots = sf.SegmentPotentials(**leaves, lengths=lengths)
    if fast:
        assert segment_scan.supports(semiring, pots)
        v = segment_scan.segment_scan_triton(semiring, pots)
    else:
        v = dispatch.value(semiring, dispatch.inputs([pots]), "triton")
    return v, torch.autograd.grad(v.sum(), list(leaves.values()), allow_unused=True)


@pytest.mark.parametrize("semiring", [sf.LogSemiring, pytest.param(sf.MaxSemiring, marks=pytest.mark.slow)],
                         ids=["log", "max"])
@pytest.mark.parametrize("shared", [True, False], ids=["shared", "per_batch"])
@pytest.mark.parametrize("option", ["plain", "init", "start", "cum", "strided"])
def test_glue_in_blocks_and_chunks_equals_the_general_path(semiring, shared, option, monkeypatch):
    """Tiles of 8 elements: the prefix sums and the scores' gradient run in blocks of 2 rows
    (a carry across 3 blocks), the parameters' batch sums in chunks of 1 sequence (3 chunks)."""
    monkeypatch.setattr(segment_scan, "_TILE", 8)
    d, L = _model(shared, option)
    v_fast, g_fast = _value_and_grads(semiring, d, L, True)
    v_ref, g_ref = _value_and_grads(semiring, d, L, False)
    torch.testing.assert_close(v_fast, v_ref, rtol=1e-6, atol=1e-6)
    for name, a, b in zip(d, g_fast, g_ref):
        if b is None:  # init beside a given start: no part in the model
            assert a is None or not a.any(), name
            continue
        assert a.dtype == b.dtype and a.shape == b.shape, name
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5, msg=name)


def test_float64_model_matches_the_general_path_tightly():
    """float64 everywhere (compute dtype float64): the glue adds no float32 rounding."""
    for option in ("init", "cum"):
        d, L = _model(False, option, dtype=torch.float64)
        v_fast, g_fast = _value_and_grads(sf.LogSemiring, d, L, True)
        v_ref, g_ref = _value_and_grads(sf.LogSemiring, d, L, False)
        assert v_fast.dtype == torch.float64
        torch.testing.assert_close(v_fast, v_ref, rtol=1e-12, atol=1e-12)
        for a, b in zip(g_fast, g_ref):
            assert a.dtype == torch.float64
            torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_gradients_come_back_in_the_input_dtype(dtype):
    """bf16/fp16 inputs (compute in float32): the glue's float64 gradients are stored in the user's
    dtype through float32 (stored directly, bf16 gradients came out 0 in the interpreter)."""
    for shared, option in ((True, "init"), (False, "cum")):
        d, L = _model(shared, option, dtype=dtype)
        _, g_fast = _value_and_grads(sf.LogSemiring, d, L, True)
        _, g_ref = _value_and_grads(sf.LogSemiring, d, L, False)
        for name, a, b in zip(d, g_fast, g_ref):
            assert a.dtype == b.dtype == dtype, name
            assert b.abs().sum() > 0.1, name
            torch.testing.assert_close(a.float(), b.float(), rtol=2e-2, atol=2e-2, msg=name)


def test_plan_is_cached_per_signature():
    """One plan per (shapes, dtypes, strides, device, options); a new signature gets its own."""
    d, L = _model(True, "init")
    segment_scan._cached_plan.cache_clear()
    first, _ = _value_and_grads(sf.LogSemiring, d, L, True)
    again, _ = _value_and_grads(sf.LogSemiring, d, L, True)
    assert segment_scan._cached_plan.cache_info().currsize == 1 and torch.equal(first, again)
    d["scores"] = d["scores"].transpose(1, 2).contiguous().transpose(1, 2)  # same values, other strides
    strided, _ = _value_and_grads(sf.LogSemiring, d, L, True)
    assert segment_scan._cached_plan.cache_info().currsize == 2
    torch.testing.assert_close(strided, first, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("semiring", [sf.LogSemiring, sf.MaxSemiring], ids=["log", "max"])
def test_checkpointed_and_forward_only_calls_equal_the_general_path(semiring, monkeypatch):
    """The workspace outside the tape's allocations: a tape too big to keep (checkpoints, the
    backward recomputes) and a call that needs no gradient (no tape)."""
    monkeypatch.setattr(launch, "STORE_ALL_BYTES", 0)
    d, L = _model(False, "init")
    v_fast, g_fast = _value_and_grads(semiring, d, L, True)
    v_ref, g_ref = _value_and_grads(semiring, d, L, False)
    torch.testing.assert_close(v_fast, v_ref, rtol=1e-6, atol=1e-6)
    for a, b in zip(g_fast, g_ref):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
    with torch.no_grad():
        pots = sf.SegmentPotentials(**d, lengths=L)
        torch.testing.assert_close(segment_scan.segment_scan_triton(semiring, pots), v_ref, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("option", ["init", "cum"])
def test_second_backward_leaves_the_first_gradients_alone(option):
    """The backward scan's buffers are carved in the forward (kept tape) and reused by a second
    backward (retain_graph): the gradients handed out by the first stay as they were."""
    d, L = _model(True, option)
    leaves = {k: v.detach().clone().requires_grad_() for k, v in d.items()}
    v = segment_scan.segment_scan_triton(sf.LogSemiring, sf.SegmentPotentials(**leaves, lengths=L))
    first = torch.autograd.grad(v.sum(), list(leaves.values()), retain_graph=True)
    kept = [g.clone() for g in first]
    second = torch.autograd.grad((2 * v).sum(), list(leaves.values()))
    for a, b, c in zip(first, kept, second):
        assert torch.equal(a, b)
        torch.testing.assert_close(c, 2 * b)


@pytest.mark.parametrize("one_node", [True, False], ids=["segment_scan", "factored_scan"])
def test_no_grad_forward_stores_nothing_for_a_backward(one_node, monkeypatch):
    """Under torch.no_grad (inputs that require grad: a model in eval) the forward keeps no tape and
    no checkpoints: autograd's needs_input_grad ignores no_grad, so the paths decide it themselves."""
    saves = []
    real = launch._fwd
    monkeypatch.setattr(launch, "_fwd", lambda m, ops, save, *a, **k: (saves.append(save), real(m, ops, save, *a, **k))[1])
    monkeypatch.setattr(segment_scan, "_fwd", launch._fwd)
    if not one_node:
        monkeypatch.setattr(segment_scan, "supports", lambda *a: False)
    B, T, K, C = 2, 7, 3, 2
    leaves = [torch.randn(B, T, C, dtype=torch.float64, requires_grad=True),
              torch.randn(C, C, dtype=torch.float64, requires_grad=True),
              torch.randn(K, C, dtype=torch.float64, requires_grad=True)]

    def z():
        pots = sf.SegmentPotentials(leaves[0], transition=leaves[1], duration=leaves[2])
        return sf.SemiMarkovCRF(pots, backend="triton").partition

    with torch.no_grad():
        z_eval = z()
    z_train = z()
    assert saves == [False, True]
    assert not z_eval.requires_grad and z_train.requires_grad
    torch.testing.assert_close(z_eval, z_train.detach(), rtol=1e-12, atol=1e-12)
