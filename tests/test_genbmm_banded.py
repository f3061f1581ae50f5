"""genbmm's banded matrices (semiring_flash.banded, exported by semiring_flash.genbmm) against dense
matrices, and torch-struct's Alignment, which is built on them, against a plain alignment DP."""

from __future__ import annotations

import pytest
import torch

import semiring_flash as sf
from semiring_flash.genbmm import BandedMatrix, banddiag

F64 = torch.float64
NEG = float("-inf")


def _banded(batch, n, lu, ld, fill, seed, dtype=F64):
    g = torch.Generator().manual_seed(seed)
    return BandedMatrix(torch.randn(batch, n, lu + ld + 1, generator=g, dtype=dtype), lu, ld, fill)


def _dense_by_definition(m: BandedMatrix) -> torch.Tensor:
    """data[b, c, j] is entry (c + j − lu, c); the rest is fill."""
    batch, n, w = m.data.shape
    out = torch.full((batch, n, n), m.fill, dtype=m.data.dtype)
    for c in range(n):
        for j in range(w):
            if 0 <= c + j - m.lu < n:
                out[:, c + j - m.lu, c] = m.data[:, c, j]
    return out


@pytest.mark.parametrize("n, lu, ld", [(1, 0, 0), (5, 2, 1), (6, 0, 3), (4, 5, 5)])
def test_layout_dense_view_and_banddiag(n, lu, ld):
    m = _banded(2, n, lu, ld, -7.0, seed=n + lu)
    dense = m.to_dense()
    assert torch.equal(dense, _dense_by_definition(m))
    band, copy = banddiag(dense, lu, ld)
    assert torch.equal(copy, dense) and band.shape == m.data.shape
    rows = torch.arange(n)[:, None] + torch.arange(lu + ld + 1) - lu
    inside = (rows >= 0) & (rows < n)
    assert torch.equal(band[:, inside], m.data[:, inside])
    band.zero_()  # the band and the copy share memory (genbmm's to_dense writes through it)
    r, c = torch.arange(n)[:, None], torch.arange(n)[None, :]
    in_band = (r >= c - lu) & (r <= c + ld)
    assert torch.equal(copy, torch.where(in_band, torch.zeros((), dtype=F64), dense))


def test_transpose_is_the_dense_transpose_and_differentiable():
    m = _banded(3, 6, 2, 1, NEG, seed=1)
    m.data.requires_grad_()
    t = m.transpose()
    assert (t.lu, t.ld) == (1, 2)
    assert torch.equal(t.to_dense(), m.to_dense().transpose(1, 2))
    assert torch.equal(t.transpose().to_dense(), m.to_dense())
    (g,) = torch.autograd.grad(t.to_dense().exp().sum(), m.data)
    (want,) = torch.autograd.grad(m.to_dense().exp().sum(), m.data)
    torch.testing.assert_close(g, want)


def _dense_product(kind, a, b):
    """genbmm's banded product on dense matrices: out[o, i] = ⊕_p a[p, i] ⊗ b[p, o] (bᵀ a)."""
    if kind == "multiply":
        return b.transpose(1, 2) @ a
    terms = b.transpose(1, 2).unsqueeze(-1) + a.unsqueeze(1)  # (batch, o, p, i)
    if kind == "multiply_log":
        return sf.semirings.logsumexp(terms, 2)
    return terms.max(2).values


@pytest.mark.parametrize("kind", ["multiply", "multiply_log", "multiply_max"])
@pytest.mark.parametrize("bands", [((1, 1), (1, 1)), ((2, 0), (0, 3)), ((0, 0), (2, 2)), ((3, 1), (1, 2))])
def test_products_match_dense_values_and_gradients(kind, bands):
    (alu, ald), (blu, bld) = bands
    zero = 0.0 if kind == "multiply" else NEG
    a, b = _banded(2, 7, alu, ald, zero, seed=3), _banded(2, 7, blu, bld, zero, seed=4)
    if kind != "multiply":  # structural zeros inside the bands
        a.data[0, 2, :] = NEG
        b.data[1, :, 0] = NEG
    a.data.requires_grad_()
    b.data.requires_grad_()
    out = getattr(a, kind)(b)
    assert (out.lu, out.ld) == (alu + bld, ald + blu)
    ref = _dense_product(kind, a.to_dense(), b.to_dense())
    got = out.to_dense()
    assert torch.equal(torch.isinf(got), torch.isinf(ref))
    torch.testing.assert_close(got, ref, rtol=1e-12, atol=1e-12)
    weights = torch.rand(ref.shape, generator=torch.Generator().manual_seed(5), dtype=F64)

    def loss(x):
        return torch.where(torch.isfinite(x), x * weights, torch.zeros((), dtype=F64)).sum()

    g = torch.autograd.grad(loss(got), [a.data, b.data])
    want = torch.autograd.grad(loss(ref), [a.data, b.data])
    for x, y in zip(g, want):
        assert torch.isfinite(x).all()
        torch.testing.assert_close(x, y, rtol=1e-10, atol=1e-12)
    assert getattr(a, kind + "_simple")(b).data.equal(out.data)  # genbmm's fallback names


def test_band_moves_keep_their_dense_meaning():
    m = _banded(2, 6, 1, 2, 0.0, seed=6)
    dense = m.to_dense()
    assert torch.equal(m.band_pad(2).to_dense(), dense) and m.band_pad(2).width == m.width + 4
    assert torch.equal(m._expand(3, 4).to_dense(), dense)
    for t in (1, 2):  # col_shift(t): column c becomes column c + t; t fill columns at the end
        s = m.col_shift(t)
        assert torch.equal(s.to_dense()[:, :, : 6 - t], dense[:, :, t:]) and (s.data[:, 6 - t:] == 0).all()
        assert torch.equal(m.col_shift(-t).to_dense()[:, :, t:], dense[:, :, : 6 - t])
    assert torch.equal(m.col_unshift().to_dense()[:, :, 1:], dense[:, :, :5])
    s = m.band_shift(1)  # slot j takes slot j + 1, the band moves up: row r takes row r + 2
    assert (s.lu, s.ld) == (2, 1) and torch.equal(s.data[:, :, :-1], m.data[:, :, 1:]) and (s.data[:, :, -1] == 0).all()
    assert torch.equal(s.band_shift(-1).data[:, :, 1:], m.data[:, :, 1:])
    assert torch.equal(m.band_unshift().data, m.band_shift(-1).data)
    other = _banded(2, 6, 2, 0, 0.0, seed=7)
    assert torch.equal(m.op(other, torch.add).to_dense(), dense + other.to_dense())


def test_bad_banded_matrices_are_named():
    with pytest.raises(ValueError, match="lu \\+ ld \\+ 1"):
        BandedMatrix(torch.zeros(1, 4, 3), 2, 1)
    with pytest.raises(ValueError, match="data must be"):
        BandedMatrix(torch.zeros(4, 3), 1, 1)
    with pytest.raises(ValueError, match="same batch and n"):
        _banded(1, 4, 1, 1, 0.0, 0).multiply(_banded(1, 5, 1, 1, 0.0, 0))


@pytest.mark.parametrize("name, kind", [("LogSemiring", "multiply_log"), ("MaxSemiring", "multiply_max"),
                                        ("StdSemiring", "multiply"), ("FastLogSemiring", "multiply_log")])
def test_semiring_matmul_takes_banded_matrices_like_torch_struct(name, kind):
    """torch-struct's matmul(a, b) on banded matrices is b.multiply_*(a.transpose()): a @ b in dense."""
    sr = getattr(sf.semirings, name)
    zero = 0.0 if kind == "multiply" else NEG
    a, b = _banded(2, 5, 1, 1, zero, seed=8), _banded(2, 5, 0, 2, zero, seed=9)
    out = sr.matmul(a, b)
    torch.testing.assert_close(out.to_dense(), _dense_product(kind, b.to_dense(), a.to_dense().transpose(1, 2)))
    with pytest.raises(TypeError, match="no banded-matrix product"):
        sf.EntropySemiring.matmul(a, b)


# ------------------------------------------------ torch-struct's Alignment on our banded matrices
def _alignment_dp(x, plus):
    """log-weight of monotone paths (0, 0) -> (N-1, M-1); each cell scores the move that reached it:
    Down (0, +1), Mid (+1, +1), Up (+1, 0); the first cell counts as reached by Mid."""
    B, N, M, _ = x.shape
    none = torch.full((B,), NEG, dtype=x.dtype)
    a = {}
    for i in range(N):
        for j in range(M):
            for op, (di, dj) in enumerate([(0, 1), (1, 1), (1, 0)]):
                if (i, j) == (0, 0):
                    a[i, j, op] = x[:, 0, 0, 1] if op == 1 else none
                elif i - di < 0 or j - dj < 0:
                    a[i, j, op] = none
                else:
                    a[i, j, op] = x[:, i, j, op] + plus(torch.stack([a[i - di, j - dj, o] for o in range(3)], -1))
    return plus(torch.stack([a[N - 1, M - 1, o] for o in range(3)], -1))


@pytest.mark.parametrize("N, M", [(2, 2), (3, 5), (4, 6), (5, 5)])
def test_torch_struct_alignment_runs_on_our_banded_matrices(N, M):
    """torch-struct's Alignment needs genbmm's BandedMatrix (a CUDA build): through the shim it runs
    on ours, and gives the alignment DP's log Z, max, marginals and best path."""
    pytest.importorskip("torch_struct")
    import semiring_flash.torch_struct as ts

    x = torch.randn(2, N, M, 3, generator=torch.Generator().manual_seed(N * M), dtype=F64)
    logz = ts.Alignment(ts.LogSemiring).sum(x.clone())
    torch.testing.assert_close(logz, _alignment_dp(x, lambda t: t.logsumexp(-1)), rtol=1e-12, atol=1e-12)
    best = ts.Alignment(ts.MaxSemiring).sum(x.clone())
    torch.testing.assert_close(best, _alignment_dp(x, lambda t: t.max(-1).values), rtol=1e-12, atol=1e-12)
    marg = ts.Alignment(ts.LogSemiring).marginals(x.clone())
    leaf = x.clone().requires_grad_()
    (want,) = torch.autograd.grad(_alignment_dp(leaf, lambda t: sf.semirings.logsumexp(t, -1)).sum(), leaf)
    torch.testing.assert_close(marg, want, rtol=1e-10, atol=1e-12)
    path = ts.Alignment(ts.MaxSemiring).marginals(x.clone())
    assert ((path == 0) | (path == 1)).all()
    torch.testing.assert_close((path * x).sum((1, 2, 3)), best, rtol=1e-12, atol=1e-12)
