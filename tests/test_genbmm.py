"""semiring_flash.genbmm on the chunked PyTorch path, against float64 broadcast references.

The same checks run on the Triton kernels in test_genbmm_interpret.py (CPU interpreter)
and test_genbmm_gpu.py (CUDA).
"""

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from genbmm_checks import (
    OPS,
    check_argmax_grads,
    check_forward,
    check_logbmm_grads,
    check_sample_frequencies,
    first_argmax,
    operands,
    sampled_indices,
)
from strategies import ci_settings
from semiring_flash import genbmm
from semiring_flash.ops import bmm_torch

NAMES = list(OPS)
SHAPES = [(1, 1, 1, 1), (2, 3, 5, 4), (3, 7, 2, 6), (1, 4, 9, 1)]


@pytest.fixture(params=["whole", "sliced"])
def chunking(request, monkeypatch):
    """Run each test with k in one slice and with k cut into slices of 1-2 entries."""
    if request.param == "sliced":
        monkeypatch.setattr(bmm_torch, "CHUNK_ELEMENTS", 20)
    return request.param


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("neg", [0.0, 0.3])
def test_forward_matches_broadcast(name, shape, neg, chunking):
    if name == "prodmaxbmm" and neg:
        pytest.skip("a * b with −inf factors is not a semiring product")
    a, b = operands(*shape, seed=sum(shape), neg=neg, transposed=shape[0] == 2)
    check_forward(name, "torch", a, b)


@ci_settings
@given(
    shape=st.tuples(st.integers(1, 3), st.integers(1, 6), st.integers(1, 6), st.integers(1, 6)),
    seed=st.integers(0, 2**16),
    neg=st.sampled_from([0.0, 0.4]),
    budget=st.sampled_from([1, 30, bmm_torch.CHUNK_ELEMENTS]),
)
def test_random_shapes_values_and_gradients(shape, seed, neg, budget):
    old, bmm_torch.CHUNK_ELEMENTS = bmm_torch.CHUNK_ELEMENTS, budget  # (no fixtures under @given)
    try:
        a, b = operands(*shape, seed=seed, neg=neg)
        for name in NAMES:
            if not (name == "prodmaxbmm" and neg):
                check_forward(name, "torch", a, b)
        check_logbmm_grads("torch", a, b, seed=seed)
        check_argmax_grads("maxbmm", "torch", a, b, seed=seed)
    finally:
        bmm_torch.CHUNK_ELEMENTS = old


@pytest.mark.parametrize("neg", [0.0, 0.3])
def test_logbmm_gradients_match_broadcast(neg, chunking):
    a, b = operands(2, 4, 6, 5, seed=1, neg=neg)
    grad_a, grad_b = check_logbmm_grads("torch", a, b)
    if neg:  # the all −inf row of a and column of b get exactly zero gradient
        assert (grad_a[0, 2] == 0).all() and (grad_b[-1, :, 2] == 0).all()


@pytest.mark.parametrize("name", ["logbmm", "maxbmm", "prodmaxbmm"])
def test_gradcheck(name, chunking):
    a, b = operands(2, 3, 4, 3, seed=2)
    fn = OPS[name][0]
    assert torch.autograd.gradcheck(lambda x, y: fn(x, y, backend="torch"), (a.requires_grad_(), b.requires_grad_()))


def test_logbmm_second_derivative(chunking):
    a, b = operands(2, 3, 4, 3, seed=3)
    assert torch.autograd.gradgradcheck(lambda x, y: genbmm.logbmm(x, y, backend="torch"), (a.requires_grad_(), b.requires_grad_()))


def test_logbmm_second_derivative_with_neg_inf_row():
    a, b = operands(2, 3, 4, 3, seed=4, neg=0.2)
    a.requires_grad_(), b.requires_grad_()
    out = genbmm.logbmm(a, b)
    ga, gb = torch.autograd.grad(out, (a, b), torch.ones_like(out), create_graph=True)
    second = torch.autograd.grad((ga * ga).sum() + (gb * gb).sum(), (a, b))
    assert all(torch.isfinite(s).all() for s in second)


@pytest.mark.parametrize("name", ["maxbmm", "prodmaxbmm"])
@pytest.mark.parametrize("neg", [0.0, 0.3])
def test_argmax_gradient_is_first_argmax_indicator(name, neg, chunking):
    if name == "prodmaxbmm" and neg:
        pytest.skip("a * b with −inf factors is not a semiring product")
    a, b = operands(2, 5, 6, 4, seed=5, neg=neg)
    check_argmax_grads(name, "torch", a, b)


@pytest.mark.parametrize("name", ["maxbmm", "prodmaxbmm"])
def test_ties_go_to_the_first_k(name, chunking):
    g = torch.Generator().manual_seed(6)
    a = torch.randint(-1, 2, (2, 4, 7), generator=g).double()  # few distinct values: many ties
    b = torch.randint(-1, 2, (2, 7, 3), generator=g).double()
    assert (first_argmax(a, b, name == "prodmaxbmm") >= 0).all()
    check_argmax_grads(name, "torch", a, b)


def test_samplebmm_draws_follow_softmax():
    torch.manual_seed(0)
    a, b = operands(1, 2, 4, 3, seed=7)
    b[0, 1, 0] = float("-inf")  # one impossible term
    check_sample_frequencies("torch", a, b, draws=4000)


def test_samplebmm_value_is_logsumexp_and_seed_repeats(chunking):
    a, b = operands(2, 3, 5, 4, seed=8, neg=0.3)
    check_forward("samplebmm", "torch", a, b)
    torch.manual_seed(1)
    first = sampled_indices("torch", a, b)
    torch.manual_seed(1)
    assert torch.equal(first, sampled_indices("torch", a, b))
    assert (first[0, 1] == -1).all() and (first[1, :, 2] == -1).all()  # all −inf outputs draw nothing


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32])
@pytest.mark.parametrize("name", NAMES)
def test_low_precision_inputs_come_back_in_their_dtype(name, dtype):
    a, b = operands(2, 3, 6, 4, seed=9, dtype=dtype)
    out = OPS[name][0](a.requires_grad_(), b.requires_grad_(), backend="torch")
    assert out.dtype == dtype
    torch.testing.assert_close(out.double(), OPS[name][1](a.double(), b.double()), atol=2e-2 if dtype != torch.float32 else 1e-5, rtol=1e-2)
    grads = torch.autograd.grad(out.sum(), (a, b))
    assert all(g.dtype == dtype and torch.isfinite(g).all() for g in grads)


@pytest.mark.parametrize("name", NAMES)
def test_deterministic_and_inputs_untouched(name):
    a, b = operands(2, 4, 5, 3, seed=10, neg=0.2 if name != "prodmaxbmm" else 0.0)
    a0, b0 = a.clone(), b.clone()
    fn = OPS[name][0]
    runs = []
    for _ in range(2):
        torch.manual_seed(3)
        x, y = a.detach().requires_grad_(), b.detach().requires_grad_()
        out = fn(x, y)
        runs.append((out, *torch.autograd.grad(out, (x, y), torch.ones_like(out))))
    assert all(torch.equal(p, q) for p, q in zip(*runs))
    fn(a, b)
    assert torch.equal(a, a0) and torch.equal(b, b0) and not a.requires_grad and not b.requires_grad


def test_empty_outputs():
    a, b = torch.zeros(2, 0, 3), torch.zeros(2, 3, 4)
    for fn, _ in OPS.values():
        assert fn(a, b).shape == (2, 0, 4)


@pytest.mark.parametrize(
    "a, b, err, match",
    [
        (torch.zeros(3, 4), torch.zeros(1, 4, 2), ValueError, "a must be 3-D"),
        (torch.zeros(1, 3, 4), torch.zeros(4, 2), ValueError, "b must be 3-D"),
        (torch.zeros(2, 3, 4), torch.zeros(3, 4, 2), ValueError, "same B and k"),
        (torch.zeros(1, 3, 4), torch.zeros(1, 5, 2), ValueError, "same B and k"),
        (torch.zeros(1, 3, 0), torch.zeros(1, 0, 2), ValueError, "inner dimension k"),
        (torch.zeros(1, 3, 4), torch.zeros(1, 4, 2, dtype=torch.float64), TypeError, "one dtype"),
        (torch.zeros(1, 3, 4, dtype=torch.long), torch.zeros(1, 4, 2, dtype=torch.long), TypeError, "floating-point"),
        ([[[0.0]]], torch.zeros(1, 1, 1), TypeError, "torch.Tensor"),
        (torch.zeros(1, 3, 4), torch.zeros(1, 4, 2, device="meta"), ValueError, "one device"),
    ],
)
@pytest.mark.parametrize("name", NAMES)
def test_bad_input_raises(name, a, b, err, match):
    with pytest.raises(err, match=match):
        OPS[name][0](a, b)


def test_bad_backend_raises():
    a, b = operands(1, 2, 2, 2, seed=0)
    with pytest.raises(ValueError, match="backend must be one of"):
        genbmm.logbmm(a, b, backend="cuda")


def test_slices_bound_the_temporary():
    # the largest (B, n, kc, m) slice respects the budget, and never drops below one k
    assert [s.stop - s.start for s in bmm_torch.k_slices(2, 3, 10, 4, budget=50)] == [2, 2, 2, 2, 2]
    assert {s.stop - s.start for s in bmm_torch.k_slices(2, 30, 5, 40, budget=50)} == {1}
