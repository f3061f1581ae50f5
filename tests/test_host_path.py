"""The host path of the public API: value-check policy, device→host reads, torch.compile.

A GPU runs ahead of the host only while nothing reads device data back; these tests
count such reads on CPU tensors (with the GPU policy forced) so they run in CI.
"""

import collections
import os

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

import semiring_flash as sf
from semiring_flash import validation

B, T, K, C = 2, 6, 3, 4
#: aten ops that copy device data to the host (each one a synchronisation on a GPU)
DEVICE_READS = {"aten._local_scalar_dense.default", "aten.is_nonzero.default", "aten.equal.default", "aten.item.default"}


class CountOps(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.ops = collections.Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.ops[str(func)] += 1
        return func(*args, **(kwargs or {}))

    @property
    def reads(self):
        return sum(n for op, n in self.ops.items() if op in DEVICE_READS)


@pytest.fixture
def as_if_on_gpu(monkeypatch):
    """CPU tensors get the policy of accelerator tensors (value checks once per signature)."""
    monkeypatch.setattr(validation, "_on_host", lambda device: False)
    old = sf.set_validation("auto")
    yield
    sf.set_validation(old)


def model(**over):
    g = torch.Generator().manual_seed(0)
    kw = dict(scores=torch.randn(B, T, C, generator=g), transition=torch.randn(C, C, generator=g),
              duration=torch.randn(K, C, generator=g), lengths=torch.tensor([T, 4]))
    kw.update(over)
    return sf.SegmentPotentials(kw.pop("scores"), **kw)


def test_set_validation_modes():
    nan = torch.full((B, T, C), float("nan"))
    assert sf.get_validation() == "auto"
    with pytest.raises(ValueError, match="validation mode must be one of"):
        sf.set_validation("sometimes")
    with sf.validation_mode("off"):
        assert sf.get_validation() == "off"
        model(scores=nan, lengths=torch.tensor([T + 3, 0]))  # structure only: no error
        with pytest.raises(ValueError, match="scores must have shape|scores must be 3-D"):
            model(scores=torch.randn(B, T))
    assert sf.get_validation() == "auto"
    for mode in ("auto", "full"):
        with sf.validation_mode(mode), pytest.raises(ValueError, match="scores contains NaN"):
            model(scores=nan)


def test_auto_checks_each_signature_once_on_a_device(as_if_on_gpu):
    calls = []

    def checks(bad):
        calls.append(bad)
        return [(torch.tensor(bad), "bad input")]

    sig = ("x", (2, 3))
    with pytest.raises(ValueError, match="bad input"):
        validation.check_values(sig, torch.device("cpu"), lambda: checks(True))
    validation.check_values(sig, torch.device("cpu"), lambda: checks(False))  # failure was not remembered
    validation.check_values(sig, torch.device("cpu"), lambda: checks(True))  # seen: skipped
    validation.check_values(sig + (1,), torch.device("cpu"), lambda: checks(False))
    assert calls == [True, False, False]
    with sf.validation_mode("full"):
        with pytest.raises(ValueError, match="bad input"):
            validation.check_values(sig, torch.device("cpu"), lambda: checks(True))


def test_auto_on_a_device_still_catches_the_first_bad_batch(as_if_on_gpu):
    with pytest.raises(ValueError, match=r"lengths must lie in \[1, 6\]"):
        model(lengths=torch.tensor([T + 1, 2]))
    with pytest.raises(ValueError, match="duration contains \\+inf"):
        model(duration=torch.full((K, C), float("inf")))
    with pytest.raises(ValueError, match="scores must be finite"):
        model(scores=torch.full((B, T, C), float("-inf")))


def test_training_step_reads_nothing_back_after_the_first_call(as_if_on_gpu, monkeypatch):
    """SegmentPotentials + partition + backward on the Triton path: the value checks read
    the device once (first call of a signature), then nothing is read back at all.
    (``.tolist()`` on CPU tensors bypasses the dispatcher: only item/bool/int/equal are seen.)"""
    pytest.importorskip("triton")
    from semiring_flash.ops.triton import launch

    class NoLaunch:  # the host path only: kernels stubbed (their outputs are left unwritten)
        def __getitem__(self, grid):
            return lambda *args, **kwargs: None

    monkeypatch.setattr(launch, "scan_fwd_kernel", NoLaunch())
    monkeypatch.setattr(launch, "scan_bwd_kernel", NoLaunch())
    monkeypatch.setenv("TRITON_INTERPRET", "1")  # backend="triton" accepts CPU tensors
    linear = torch.nn.Linear(3, C)
    transition = torch.randn(C, C, requires_grad=True)
    lengths = torch.tensor([T, 4])
    x = torch.randn(B, T, 3)

    def step():
        pots = sf.SegmentPotentials(linear(x), transition=transition, duration=torch.zeros(K, C), lengths=lengths)
        sf.SemiMarkovCRF(pots, backend="triton").partition.sum().backward()

    with CountOps() as first:
        step()
    with CountOps() as second:
        step()
    assert first.reads == 1  # all value checks of the call, read at once
    assert second.reads == 0, second.ops


def test_unchecked_lengths_are_clamped_by_the_kernels():
    pytest.importorskip("triton")
    if os.environ.get("TRITON_INTERPRET") != "1":
        pytest.skip("Triton kernels on CPU tensors need TRITON_INTERPRET=1")
    with sf.validation_mode("off"):
        wild = sf.SemiMarkovCRF(model(lengths=torch.tensor([T + 5, -2])), backend="triton").partition
    clamped = sf.SemiMarkovCRF(model(lengths=torch.tensor([T, 1])), backend="triton").partition
    assert torch.isfinite(wild[0]) and wild[0] == clamped[0]
    assert not torch.isnan(wild[1])  # length clamped to 0: no segmentation, but no NaN either


@pytest.mark.parametrize("ring", [False, True], ids=["tape_step", "ring"])
def test_length_zero_reads_no_unwritten_tape_row(ring, monkeypatch):
    """A length clamped to 0 has log Z = -inf and zero gradients, whatever the fresh buffers hold:
    every torch.empty comes filled with NaN, so a read of a row the forward never wrote shows.
    (The final read took α(0) from an unwritten tape row: NaN or garbage once memory was reused.)"""
    pytest.importorskip("triton")
    if os.environ.get("TRITON_INTERPRET") != "1":
        pytest.skip("Triton kernels on CPU tensors need TRITON_INTERPRET=1")
    from semiring_flash.ops.triton import launch

    monkeypatch.setattr(launch, "RING_FORWARD", ring)
    m = model()
    leaves = [m.scores.clone().requires_grad_(), m.transition.clone().requires_grad_(), m.duration.clone().requires_grad_()]
    originals = {name: getattr(torch, name) for name in ("empty", "empty_like")}
    for name, make in originals.items():
        def filled(*a, make=make, **kw):
            x = make(*a, **kw)
            return x.fill_(float("nan")) if x.is_floating_point() else x.fill_(-7)
        monkeypatch.setattr(torch, name, filled)
    with sf.validation_mode("off"):
        pots = sf.SegmentPotentials(leaves[0], transition=leaves[1], duration=leaves[2], lengths=torch.tensor([T, -2]))
        z = sf.SemiMarkovCRF(pots, backend="triton").partition
        with torch.no_grad():
            z_nograd = sf.SemiMarkovCRF(pots, backend="triton").partition
        grads = torch.autograd.grad(z[1], leaves)
    for name, make in originals.items():
        monkeypatch.setattr(torch, name, make)
    assert z[1] == float("-inf") and z_nograd[1] == float("-inf")
    assert torch.isfinite(z[0]) and z[0] == sf.SemiMarkovCRF(model(lengths=torch.tensor([T, 1])), backend="triton").partition[0]
    for g in grads:
        assert torch.equal(g, torch.zeros_like(g))


def test_pair_of_distributions_needs_equal_lengths():
    p = sf.SemiMarkovCRF(model(lengths=torch.tensor([T, 3])))
    with pytest.raises(ValueError, match="same lengths"):
        p.kl(sf.SemiMarkovCRF(model(lengths=torch.tensor([T, 4]))))
    assert torch.isfinite(p.kl(sf.SemiMarkovCRF(model(lengths=torch.tensor([T, 3]))))).all()


def test_torch_compile_breaks_only_at_the_kernel_call(monkeypatch):
    """dynamo traces the public API; the Triton call is the one break (reported in its frame and the caller's)."""
    pytest.importorskip("triton")
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    import torch._dynamo

    linear = torch.nn.Linear(3, C)
    transition = torch.randn(C, C, requires_grad=True)

    def loss(x, lengths):
        pots = sf.SegmentPotentials(linear(x), transition=transition, duration=torch.zeros(K, C), lengths=lengths)
        return sf.SemiMarkovCRF(pots, backend="triton").partition.sum()

    x, lengths = torch.randn(B, T, 3), torch.tensor([T, 4])
    explained = torch._dynamo.explain(loss)(x, lengths)
    assert explained.graph_break_count <= 2, [b.reason for b in explained.break_reasons]
    torch._dynamo.reset()
