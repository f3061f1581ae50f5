"""The front door: Semiring.plus_grad (the one closed-form ⊕ gradient) and EdgePotentials (edges as an object)."""

import pytest
import torch

import semiring_flash as sf


def test_plus_grad_is_the_gradient_of_plus():
    x = torch.randn(3, 5, 4, dtype=torch.float64)
    x[0, 0] = float("-inf")  # an all −inf row: weight 0, not NaN
    leaf = x.clone().requires_grad_()
    for sr in (sf.LogSemiring, sf.MaxSemiring):
        want = torch.autograd.grad(sr.sum(leaf, 1).sum(), leaf)[0]
        got = sr.plus_grad(x.float(), 1, torch.float64)
        assert got.dtype == torch.float64
        torch.testing.assert_close(got, torch.nan_to_num(want), rtol=1e-6, atol=1e-7)
    assert sf.MaxSemiring.plus_grad(x, 1).dtype == x.dtype
    for sr in (sf.EntropySemiring, sf.KMaxSemiring(2), sf.SampledSemiring):
        with pytest.raises(NotImplementedError, match="plus_vjp"):
            sr.plus_grad(x, 1)


def test_edge_potentials_answer_like_the_raw_tensor():
    torch.manual_seed(0)
    edges, lengths = torch.randn(2, 5, 3, 2, 2), torch.tensor([6, 4])
    pots = sf.EdgePotentials(edges, lengths)
    assert pots.shape == (2, 5, 2, 2) and torch.equal(pots.lengths, lengths - 1)
    raw, wrapped = sf.SemiMarkovCRF(edges, lengths), sf.SemiMarkovCRF(pots)
    torch.testing.assert_close(wrapped.partition, raw.partition, rtol=0, atol=0)
    torch.testing.assert_close(wrapped.marginals, raw.marginals, rtol=0, atol=0)
    assert torch.equal(wrapped.argmax, raw.argmax)
    torch.testing.assert_close(wrapped.log_prob(raw.argmax), raw.log_prob(raw.argmax))
    with pytest.raises(ValueError, match="pass lengths to EdgePotentials"):
        sf.SemiMarkovCRF(pots, lengths)
    with pytest.raises(ValueError, match="lengths"):
        sf.EdgePotentials(edges, torch.tensor([7, 4]))
    with pytest.raises(TypeError, match="log_potentials"):
        sf.EdgePotentials(edges.long())
