"""Bad input gets a ValueError/TypeError that names the argument; inputs are never mutated."""

import pytest
import torch

import semiring_flash as sf

B, T, K, C = 2, 5, 3, 2


def good(**over):
    kw = dict(
        scores=torch.randn(B, T, C), transition=torch.randn(C, C), duration=torch.randn(K, C),
        init=None, start=None, end=None, lengths=None,
    )
    kw.update(over)
    return kw


def make(**over):
    kw = good(**over)
    return sf.SegmentPotentials(kw.pop("scores"), **kw)


@pytest.mark.parametrize(
    "over, err, match",
    [
        (dict(scores=torch.randn(T, C)), ValueError, "scores must be 3-D"),
        (dict(scores=torch.randint(0, 3, (B, T, C))), TypeError, "scores must be a floating-point"),
        (dict(scores=[[1.0]]), TypeError, "scores must be a torch.Tensor"),
        (dict(transition=torch.randn(C, C + 1)), ValueError, "transition must have shape"),
        (dict(transition=torch.randn(3, C, C)), ValueError, "transition must have shape"),
        (dict(duration=torch.randn(0, C)), ValueError, "duration must have K >= 1"),
        (dict(duration=torch.randn(K, C + 1)), ValueError, "duration must have shape"),
        (dict(duration=torch.randn(K)), ValueError, "duration must be 2-D or 3-D"),
        (dict(start=torch.randn(C + 1)), ValueError, "start must have shape"),
        (dict(end=torch.randn(B + 1, C)), ValueError, "end must have shape"),
        (dict(init=torch.randn(C), start=torch.randn(C)), ValueError, "at most one of init and start"),
        (dict(lengths=torch.tensor([0, T])), ValueError, r"lengths must lie in \[1, 5\]"),
        (dict(lengths=torch.tensor([T + 1, T])), ValueError, r"lengths must lie in \[1, 5\]"),
        (dict(lengths=torch.tensor([2.0, 3.0])), TypeError, "lengths must be an integer"),
        (dict(lengths=torch.tensor([2])), ValueError, r"lengths must have shape \(B,\)"),
        (dict(scores=torch.full((B, T, C), float("nan"))), ValueError, "scores contains NaN"),
        (dict(scores=torch.full((B, T, C), float("-inf"))), ValueError, "scores must be finite"),
        (dict(transition=torch.full((C, C), float("nan"))), ValueError, "transition contains NaN"),
        (dict(duration=torch.full((K, C), float("inf"))), ValueError, "duration contains \\+inf"),
        (dict(transition=torch.randn(C, C, device="meta")), ValueError, "one device"),
    ],
)
def test_factored_bad_input(over, err, match):
    with pytest.raises(err, match=match):
        make(**over)


def test_scores_and_cum_scores_exclusive():
    with pytest.raises(ValueError, match="exactly one of scores"):
        sf.SegmentPotentials(transition=torch.randn(C, C), duration=torch.randn(K, C))
    with pytest.raises(ValueError, match=r"cum_scores\[:, 0\] must be 0"):
        sf.SegmentPotentials(cum_scores=torch.ones(B, T + 1, C), transition=torch.randn(C, C), duration=torch.randn(K, C))
    with pytest.raises(ValueError, match="center must be None or 'mean'"):
        make(center="median")


@pytest.mark.parametrize(
    "edges, lengths, err, match",
    [
        (torch.randn(2, 4, 3, 2), None, ValueError, "log_potentials must be 5-D"),
        (torch.randn(2, 4, 3, 2, 3), None, ValueError, "equal label dims"),
        (torch.randn(2, 4, 1, 2, 2), None, ValueError, "must be >= 2"),
        (torch.randint(0, 2, (2, 4, 3, 2, 2)), None, TypeError, "floating-point"),
        (torch.full((2, 4, 3, 2, 2), float("nan")), None, ValueError, "NaN"),
        (torch.randn(2, 4, 3, 2, 2), torch.tensor([6, 5]), ValueError, r"lengths must lie in \[2, 5\]"),
        (torch.randn(2, 4, 3, 2, 2), torch.tensor([1, 5]), ValueError, r"lengths must lie in \[2, 5\]"),
        (torch.randn(2, 4, 3, 2, 2), torch.tensor([5]), ValueError, r"shape \(B,\)"),
    ],
)
def test_edge_bad_input(edges, lengths, err, match):
    with pytest.raises(err, match=match):
        sf.SemiMarkovCRF(edges, lengths=lengths)


def test_other_bad_arguments():
    pots = make()
    with pytest.raises(ValueError, match="backend must be one of"):
        sf.SemiMarkovCRF(pots, backend="cuda")
    with pytest.raises(ValueError, match="pass lengths to SegmentPotentials"):
        sf.SemiMarkovCRF(pots, lengths=torch.tensor([5, 5]))
    with pytest.raises(ValueError, match="KMaxSemiring: k must be a positive int"):
        sf.KMaxSemiring(0)
    with pytest.raises(TypeError, match="semiring must be a semiring_flash semiring"):
        sf.SemiMarkov(object())
    dist = sf.SemiMarkovCRF(pots)
    with pytest.raises(TypeError, match="value must be a semiring_flash.Segmentation"):
        dist.log_prob(torch.zeros(B, T))
    bad = sf.Segmentation(torch.zeros(B, T, dtype=torch.long), torch.zeros(B, T, dtype=torch.bool), torch.tensor([T, T]))
    with pytest.raises(ValueError, match=r"starts\[..., 0\] must be True"):
        dist.log_prob(bad)
    other = sf.SemiMarkovCRF(torch.randn(B, T, K + 1, C, C))
    with pytest.raises(TypeError, match="same input kind"):
        dist.kl(other)


def test_inputs_never_mutated():
    kw = good(start=torch.randn(C), end=torch.randn(B, C), lengths=torch.tensor([5, 3]))
    snapshot = {k: v.clone() for k, v in kw.items() if isinstance(v, torch.Tensor)}
    dist = sf.SemiMarkovCRF(sf.SegmentPotentials(kw.pop("scores"), **kw))
    dist.partition, dist.marginals, dist.argmax, dist.entropy, dist.topk(2), dist.sample((2,))
    kw["scores"] = dist.potentials.scores
    for k, v in snapshot.items():
        assert torch.equal(kw[k], v) and not kw[k].requires_grad, k
    edges = torch.randn(B, T, K + 1, C, C)
    before = edges.clone()
    d = sf.SemiMarkovCRF(edges)
    d.partition, d.marginals, d.argmax, d.entropy, d.kmax(2), d.topk(2), d.sample((2,))
    sf.SemiMarkov(sf.LogSemiring).logpartition(edges)
    assert torch.equal(edges, before) and not edges.requires_grad


def test_triton_backend_unavailable_is_a_clear_error(monkeypatch):
    from semiring_flash.ops import dispatch

    monkeypatch.setattr(dispatch, "_triton_module", lambda: (None, ImportError("no triton here")))
    with pytest.raises(NotImplementedError, match="backend='triton' is unavailable"):
        sf.SemiMarkovCRF(make(), backend="triton").partition
    # auto quietly falls back to the torch engine
    assert torch.isfinite(sf.SemiMarkovCRF(make(), backend="auto").partition).all()


def test_nan_only_in_the_padding_is_named_as_such():
    """Fully masked attention rows give NaN features past the lengths: the error says where and what
    to do, instead of a bare 'contains NaN'."""
    scores = torch.randn(2, 6, 3)
    scores[1, 4:] = float("nan")
    with pytest.raises(ValueError, match="only past the lengths"):
        sf.SegmentPotentials(scores, transition=torch.zeros(3, 3), duration=torch.zeros(2, 3), lengths=torch.tensor([6, 4]))
    scores[1, 3, 0] = float("nan")  # one inside: the plain message
    with pytest.raises(ValueError, match="scores contains NaN"):
        sf.SegmentPotentials(scores, transition=torch.zeros(3, 3), duration=torch.zeros(2, 3), lengths=torch.tensor([6, 4]))


def test_nan_in_cum_scores_at_the_length_is_not_padding():
    """cum_scores (B, T+1, C) uses positions 0..L: a NaN at L is inside, one past it is padding."""
    cum = torch.cat([torch.zeros(1, 1, 3), torch.randn(1, 6, 3).cumsum(1)], 1)
    kw = dict(transition=torch.zeros(3, 3), duration=torch.zeros(2, 3), lengths=torch.tensor([4]))
    past = cum.clone()
    past[0, 5:] = float("nan")
    with pytest.raises(ValueError, match="only past the lengths"):
        sf.SegmentPotentials(cum_scores=past, **kw)
    at = cum.clone()
    at[0, 4:] = float("nan")
    with pytest.raises(ValueError, match="cum_scores contains NaN"):
        sf.SegmentPotentials(cum_scores=at, **kw)
