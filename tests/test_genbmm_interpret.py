"""genbmm's Triton kernels on CPU through TRITON_INTERPRET=1 (tiny sizes), against the
float64 broadcasts and the PyTorch path. Checks shared with test_genbmm.py (genbmm_checks).

TRITON_INTERPRET=1 must be set before triton is first imported (see ``conftest.require_interpreter``).
"""

import pytest
import torch

from conftest import interpreter_marks, require_interpreter

require_interpreter()
bmm = pytest.importorskip("semiring_flash.ops.triton.bmm")

from genbmm_checks import (  # noqa: E402
    OPS,
    check_argmax_grads,
    check_forward,
    check_logbmm_grads,
    check_sample_frequencies,
    operands,
    sampled_indices,
)
from semiring_flash import genbmm  # noqa: E402

pytestmark = interpreter_marks(bmm._reduce_k_kernel)


def _set_tiles(monkeypatch, which):
    """Default tiles (one per matrix here), or 2 x 2 x 4 tiles: several programs, loops and
    padding; "many_tiles_k_last" also takes the forward's (BN, BM, BK) term layout."""
    if which == "many_tiles_k_last":
        monkeypatch.setattr(bmm, "FORWARD_K_AXIS", 2)
    if which != "one_tile":
        monkeypatch.setattr(bmm, "TILE_N", 2)
        monkeypatch.setattr(bmm, "TILE_K", 2)
        monkeypatch.setattr(bmm, "TILE_M", 4)
    return which


@pytest.fixture(params=["one_tile", "many_tiles"])
def tiles(request, monkeypatch):
    return _set_tiles(monkeypatch, request.param)


@pytest.fixture(params=["one_tile", "many_tiles", "many_tiles_k_last"])
def forward_tiles(request, monkeypatch):
    return _set_tiles(monkeypatch, request.param)


@pytest.mark.parametrize("name", list(OPS))
@pytest.mark.parametrize("neg", [0.0, 0.3])
def test_forward_matches_broadcast(name, neg, forward_tiles):
    if name == "prodmaxbmm" and neg:
        pytest.skip("a * b with −inf factors is not a semiring product")
    a, b = operands(2, 3, 5, 6, seed=11, neg=neg, transposed=True)
    check_forward(name, "triton", a, b)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_logbmm_gradients(dtype, tiles):
    a, b = operands(2, 3, 5, 6, seed=12, neg=0.3, dtype=dtype)
    tol = 1e-10 if dtype == torch.float64 else 1e-5
    grad_a, grad_b = check_logbmm_grads("triton", a, b, atol=tol, rtol=tol)
    assert (grad_a[0, 1] == 0).all() and (grad_b[-1, :, 3] == 0).all()


@pytest.mark.parametrize("name", ["maxbmm", "prodmaxbmm"])
def test_argmax_gradients_with_ties(name, forward_tiles):
    g = torch.Generator().manual_seed(13)
    a = torch.randint(-1, 2, (2, 3, 5), generator=g).double()  # many ties: the first k must win
    b = torch.randint(-1, 2, (2, 5, 6), generator=g).double()
    check_forward(name, "triton", a, b)
    check_argmax_grads(name, "triton", a, b)


def test_maxbmm_neg_inf_rows():
    a, b = operands(2, 3, 5, 6, seed=14, neg=0.3)
    check_argmax_grads("maxbmm", "triton", a, b)


def test_samplebmm_draws_follow_softmax():
    torch.manual_seed(0)
    a, b = operands(1, 1, 3, 2, seed=15)
    b[0, 1, 0] = float("-inf")
    check_sample_frequencies("triton", a, b, draws=1000)


def test_samplebmm_repeatable_and_never_draws_neg_inf(forward_tiles):
    a, b = operands(2, 3, 5, 6, seed=16, neg=0.3)
    torch.manual_seed(2)
    first = sampled_indices("triton", a, b)
    torch.manual_seed(2)
    assert torch.equal(first, sampled_indices("triton", a, b))
    terms = a.unsqueeze(-1) + b.unsqueeze(-3)  # (B, n, k, m)
    drawn = terms.gather(2, first.clamp(min=0).unsqueeze(2)).squeeze(2)
    assert torch.equal(first == -1, torch.isneginf(terms).all(2))  # −1 exactly where every term is −inf
    assert torch.isfinite(drawn[first >= 0]).all()


@pytest.mark.parametrize("name", list(OPS))
def test_same_numbers_as_torch_path_and_bitwise_repeatable(name):
    a, b = operands(2, 3, 5, 4, seed=17, dtype=torch.float32)
    g = torch.randn(2, 3, 4, generator=torch.Generator().manual_seed(0))
    fn = OPS[name][0]

    def run(backend):
        torch.manual_seed(4)
        x, y = a.detach().requires_grad_(), b.detach().requires_grad_()
        out = fn(x, y, backend=backend)
        return (out, *torch.autograd.grad(out, (x, y), g))

    first, second, torch_path = run("triton"), run("triton"), run("torch")
    assert all(torch.equal(p, q) for p, q in zip(first, second))
    if name != "samplebmm":  # the samplers draw from different random streams
        for p, q in zip(first, torch_path):
            torch.testing.assert_close(p, q, atol=1e-5, rtol=1e-5)


def test_half_inputs_and_backend_choice():
    a, b = operands(1, 2, 3, 2, seed=18, dtype=torch.bfloat16)
    out = genbmm.logbmm(a, b, backend="triton")
    assert out.dtype == torch.bfloat16
    torch.testing.assert_close(out.double(), OPS["logbmm"][1](a.double(), b.double()), atol=2e-2, rtol=1e-2)
    # auto keeps CPU tensors on the PyTorch path even when Triton imports
    assert genbmm._implementation("auto", a.device).__name__.endswith("bmm_torch")
