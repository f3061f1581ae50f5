"""torch-struct 0.5's OWN Fast semirings (torch_struct.semirings.fast_semirings, which
call genbmm) running on semiring_flash.genbmm: same numbers as torch-struct's plain
semirings on structures built on ``semiring.matmul`` (LinearChain, CKY), float64, PyTorch
path. (semiring_flash.torch_struct's Fast semirings are tested with the shim.)
"""

import pytest
import torch

torch_struct = pytest.importorskip("torch_struct")
fast_semirings = pytest.importorskip("torch_struct.semirings.fast_semirings")

from semiring_flash import genbmm  # noqa: E402


@pytest.fixture(autouse=True)
def our_genbmm(monkeypatch):
    """Stand in for the genbmm module torch-struct imports (BandedMatrix included)."""
    monkeypatch.setattr(fast_semirings, "genbmm", genbmm, raising=False)


def _chain(seed, B=3, N=7, C=4):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(B, N, C, C, generator=g, dtype=torch.float64)


@pytest.mark.parametrize("plain, fast", [("LogSemiring", "FastLogSemiring"), ("MaxSemiring", "FastMaxSemiring")])
def test_linear_chain_partition_and_marginals(plain, fast):
    edges = _chain(0)
    edges[0, 2, 1, :] = float("-inf")  # a forbidden label at one position
    slow = torch_struct.LinearChain(getattr(torch_struct, plain))
    quick = torch_struct.LinearChain(getattr(fast_semirings, fast))
    torch.testing.assert_close(quick.sum(edges), slow.sum(edges), rtol=1e-12, atol=1e-12)
    # marginals use create_graph=True: the fused backward inside a differentiable graph
    torch.testing.assert_close(quick.marginals(edges), slow.marginals(edges), rtol=1e-10, atol=1e-12)


def test_linear_chain_sample_is_a_path():
    edges = _chain(1)
    torch.manual_seed(0)
    sample = torch_struct.LinearChain(fast_semirings.FastSampleSemiring).marginals(edges)  # (B, N, C, C_prev)
    assert ((sample == 0) | (sample == 1)).all()
    assert (sample.sum((2, 3)) == 1).all()  # one edge per position
    # the label entered at n is the one left at n + 1
    torch.testing.assert_close(sample[:, :-1].sum(3), sample[:, 1:].sum(2))


def test_cky_partition():
    g = torch.Generator().manual_seed(2)
    B, N, NT, T = 2, 5, 3, 2
    terms = torch.randn(B, N, T, generator=g, dtype=torch.float64)
    rules = torch.randn(B, NT, NT + T, NT + T, generator=g, dtype=torch.float64)
    roots = torch.randn(B, NT, generator=g, dtype=torch.float64)
    slow = torch_struct.CKY(torch_struct.LogSemiring).sum((terms, rules, roots))
    quick = torch_struct.CKY(fast_semirings.FastLogSemiring).sum((terms, rules, roots))
    torch.testing.assert_close(quick, slow, rtol=1e-12, atol=1e-12)
