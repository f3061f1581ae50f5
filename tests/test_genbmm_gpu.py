"""genbmm's Triton kernels on CUDA (pytest -m gpu; skipped without CUDA): larger shapes
than the interpreter affords vs the float64 broadcasts, gradients, bitwise determinism,
and peak memory O(B·n·m) where the broadcast needs O(B·n·k·m).
"""

import pytest
import torch

from conftest import require_gpu_kernels

pytestmark = [pytest.mark.gpu]
require_gpu_kernels()

from genbmm_checks import (  # noqa: E402
    OPS,
    check_argmax_grads,
    check_forward,
    check_logbmm_grads,
    check_sample_frequencies,
    operands,
)
from semiring_flash import genbmm  # noqa: E402

DEV = "cuda"


def test_auto_uses_triton_on_cuda():
    assert genbmm._implementation("auto", torch.device(DEV)).__name__.endswith("triton.bmm")


@pytest.mark.parametrize("name", list(OPS))
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("neg", [0.0, 0.3])
def test_forward_matches_broadcast(name, dtype, neg):
    if name == "prodmaxbmm" and neg:
        pytest.skip("a * b with −inf factors is not a semiring product")
    a, b = operands(3, 70, 300, 50, seed=21, dtype=dtype, device=DEV, neg=neg, transposed=True)
    tol = 1e-12 if dtype == torch.float64 else 2e-5
    check_forward(name, "triton", a, b, atol=tol, rtol=tol)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_logbmm_gradients(dtype):
    a, b = operands(3, 70, 300, 50, seed=22, dtype=dtype, device=DEV, neg=0.3)
    tol = 1e-11 if dtype == torch.float64 else 1e-5
    grad_a, grad_b = check_logbmm_grads("triton", a, b, atol=tol, rtol=tol)
    assert (grad_a[0, 35] == 0).all() and (grad_b[-1, :, 25] == 0).all()


def test_logbmm_second_derivative_float64():
    a, b = operands(2, 5, 7, 4, seed=23, device=DEV)
    assert torch.autograd.gradgradcheck(lambda x, y: genbmm.logbmm(x, y), (a.requires_grad_(), b.requires_grad_()))


@pytest.mark.parametrize("name", ["maxbmm", "prodmaxbmm"])
def test_argmax_gradients_with_ties(name):
    g = torch.Generator().manual_seed(24)
    a = torch.randint(-2, 3, (3, 40, 100), generator=g).double().to(DEV)
    b = torch.randint(-2, 3, (3, 100, 30), generator=g).double().to(DEV)
    check_forward(name, "triton", a, b)
    check_argmax_grads(name, "triton", a, b)


def test_maxbmm_neg_inf():
    a, b = operands(3, 40, 100, 30, seed=25, device=DEV, neg=0.3)
    check_argmax_grads("maxbmm", "triton", a, b)


def test_samplebmm_draws_follow_softmax():
    torch.manual_seed(0)
    a, b = operands(1, 2, 6, 3, seed=26, device=DEV)
    b[0, 1, 0] = float("-inf")
    check_sample_frequencies("triton", a, b, draws=50_000)


@pytest.mark.parametrize("name", list(OPS))
def test_bitwise_repeatable(name):
    a, b = operands(4, 130, 257, 90, seed=27, dtype=torch.float32, device=DEV, neg=0.1 if name != "prodmaxbmm" else 0.0)
    g = torch.randn(4, 130, 90, device=DEV)

    def run():
        torch.manual_seed(5)
        x, y = a.detach().requires_grad_(), b.detach().requires_grad_()
        out = OPS[name][0](x, y)
        return (out, *torch.autograd.grad(out, (x, y), g))

    assert all(torch.equal(p, q) for p, q in zip(run(), run()))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_inputs(dtype):
    a, b = operands(2, 50, 80, 40, seed=28, dtype=dtype, device=DEV)
    for name, (fn, oracle) in OPS.items():
        x, y = a.detach().requires_grad_(), b.detach().requires_grad_()
        out = fn(x, y)
        assert out.dtype == dtype
        torch.testing.assert_close(out.double(), oracle(a.double(), b.double()), atol=5e-2, rtol=1e-2)
        assert all(g.dtype == dtype and torch.isfinite(g).all() for g in torch.autograd.grad(out.sum(), (x, y)))


def test_many_batches_fit_the_grid():
    a, b = operands(70_000, 2, 3, 2, seed=29, device=DEV)
    check_forward("logbmm", "triton", a, b)


def test_torch_path_on_cuda_agrees():
    a, b = operands(2, 30, 40, 20, seed=30, device=DEV)
    for name in ("logbmm", "maxbmm", "prodmaxbmm"):
        check_forward(name, "torch", a, b)


def test_peak_memory_is_linear_in_outputs():
    B, n, k, m = 8, 512, 512, 512
    a, b = operands(B, n, k, m, seed=31, dtype=torch.float32, device=DEV)
    a.requires_grad_(), b.requires_grad_()
    g = torch.ones(B, n, m, device=DEV)
    genbmm.logbmm(a, b).backward(g)  # compile first
    a.grad = b.grad = None
    torch.cuda.synchronize()
    base = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    genbmm.logbmm(a, b).backward(g)
    torch.cuda.synchronize()
    extra = torch.cuda.max_memory_allocated() - base
    io_bytes = 4 * B * (n * m + n * k + k * m)  # output + both gradients
    assert extra <= 4 * io_bytes, (extra, io_bytes)
    assert extra < 4 * B * n * k * m / 20  # the broadcast would need 4·B·n·k·m bytes
