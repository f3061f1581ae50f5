"""Factored potentials: equal to their own to_edges() through the materialized path, compact outputs."""

import pytest
import torch
from hypothesis import given, settings, strategies as st

import semiring_flash as sf

NEG = float("-inf")


def random_pots(seed, B=2, T=7, K=3, C=3, mode="init", neg=True, center=None, mixed=True, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    r = lambda *s: torch.randn(*s, generator=g, dtype=dtype)  # noqa: E731
    trans, dur = r(C, C), r(K, C)
    if neg and C > 1:
        trans[0, 1] = NEG
    if neg and K > 1:
        dur[K - 1, C - 1] = NEG
    kw = dict(transition=trans, duration=dur, end=r(B, C) if mode != "plain" else None)
    if mode == "init":
        kw["init"] = r(C)
    elif mode == "start":
        kw["start"] = r(B, C)
    lengths = torch.randint(1, T + 1, (B,), generator=g) if mixed else torch.full((B,), T)
    lengths[0] = T
    return sf.SegmentPotentials(r(B, T, C) + 0.5, lengths=lengths, center=center, **kw)


models = st.builds(
    random_pots,
    seed=st.integers(0, 2**16), B=st.integers(1, 3), T=st.integers(1, 7), K=st.integers(1, 4), C=st.integers(1, 3),
    mode=st.sampled_from(["init", "start", "plain"]), neg=st.booleans(), center=st.sampled_from([None, "mean"]),
)


def both(pots):
    return sf.SemiMarkovCRF(pots), sf.SemiMarkovCRF(pots.to_edges(), lengths=pots.lengths + 1)


@settings(max_examples=30, deadline=None, derandomize=True)
@given(pots=models)
def test_factored_equals_its_edges(pots):
    f, e = both(pots)
    for name in ("partition", "max", "entropy"):
        a, b = getattr(f, name), getattr(e, name)
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-9, msg=name)
    torch.testing.assert_close(f.kmax(3), e.kmax(3), rtol=1e-9, atol=1e-9)


@settings(max_examples=25, deadline=None, derandomize=True)
@given(pots=models)
def test_compact_marginals_sum_edge_marginals(pots):
    f, e = both(pots)
    m = f.marginals
    em = e.marginals  # (B, T, K+1, C, C') [n, d, c, c']
    B, T, K, C = pots.shape
    em = torch.nan_to_num(em)
    per_seg = em.sum(-1)[:, :, 1:]  # (B, T, K, C) by start, duration-1, label
    torch.testing.assert_close(f.segment_marginals(), per_seg, rtol=1e-8, atol=1e-9)
    torch.testing.assert_close(m.duration, per_seg.sum(1), rtol=1e-8, atol=1e-9)
    torch.testing.assert_close(m.start_label, per_seg.sum(2), rtol=1e-8, atol=1e-9)
    torch.testing.assert_close(m.start, per_seg.sum((2, 3)), rtol=1e-8, atol=1e-9)
    cover = torch.zeros(B, T, C, dtype=em.dtype)
    for n in range(T):
        for d in range(1, K + 1):
            cover[:, n : n + d] += per_seg[:, n, d - 1].unsqueeze(1)
    torch.testing.assert_close(m.token, cover, rtol=1e-8, atol=1e-9)
    trans = em[:, 1:, 1:].sum((1, 2)).transpose(-1, -2)  # boundaries after the first segment
    if pots.start is None:
        trans = trans + em[:, 0, 1:].sum(1).transpose(-1, -2)  # entry transition from the free initial label
    torch.testing.assert_close(m.transition, trans, rtol=1e-8, atol=1e-9)


def test_center_mean_is_explicit_mean_subtraction():
    pots = random_pots(3, B=2, T=9, K=3, C=2, mode="start", center="mean")
    L = pots.lengths
    s = pots.scores.clone()
    for b in range(2):
        s[b, : L[b]] -= s[b, : L[b]].mean(0)
    ref = sf.SegmentPotentials(s, transition=pots.transition, duration=pots.duration, start=pots.start, end=pots.end, lengths=L)
    torch.testing.assert_close(sf.SemiMarkovCRF(pots).partition, sf.SemiMarkovCRF(ref).partition)
    exact = sf.SegmentPotentials(pots.scores, transition=pots.transition, duration=pots.duration, start=pots.start, end=pots.end, lengths=L)
    assert not torch.allclose(sf.SemiMarkovCRF(pots).partition, sf.SemiMarkovCRF(exact).partition)


def test_cum_scores_input_equals_scores_input():
    pots = random_pots(5, mode="start")
    s = pots.scores
    cum = torch.cat([torch.zeros_like(s[:, :1]), s.cumsum(1)], 1)
    other = sf.SegmentPotentials(cum_scores=cum, transition=pots.transition, duration=pots.duration, start=pots.start, end=pots.end, lengths=pots.lengths)
    torch.testing.assert_close(sf.SemiMarkovCRF(pots).partition, sf.SemiMarkovCRF(other).partition)


@pytest.mark.parametrize("mode", ["start", "init"])
def test_argmax_and_topk_are_segmentations_scoring_max_and_kmax(mode):
    pots = random_pots(11, B=3, T=8, K=3, C=3, mode=mode)
    d = sf.SemiMarkovCRF(pots)
    best = d.argmax
    top = d.topk(3)
    # the Viterbi segmentation is the first of the top-k
    assert torch.equal(best.labels, top.labels[0]) and torch.equal(best.starts, top.starts[0])
    if mode == "start":  # with a fixed initial label, structure scores are segmentation scores
        score = d.log_prob(best) + d.partition
        torch.testing.assert_close(score, d.max)
        torch.testing.assert_close(d.log_prob(top) + d.partition, d.kmax(3))
    for segs, L in zip(best.segments(), pots.lengths.tolist()):
        assert segs[0][0] == 0 and segs[-1][1] == L
        assert all(1 <= e - s <= pots.K for s, e, _ in segs)


def test_sample_frequencies_match_marginals():
    torch.manual_seed(0)
    pots = random_pots(2, B=2, T=5, K=2, C=2, mode="start", neg=False)
    d = sf.SemiMarkovCRF(pots)
    n = 4000
    samples = d.sample((n,))
    assert samples.labels.shape == (n, 2, 5)
    onehot = torch.nn.functional.one_hot(samples.labels.clamp(min=0), 2).double() * samples.valid().unsqueeze(-1)
    freq = onehot.mean(0)
    # binomial standard error <= 0.5/sqrt(n) ≈ 0.008; 5 sigma
    assert (freq - d.marginals.token).abs().max() < 0.04
    sfreq = samples.starts.double().mean(0)
    assert (sfreq - d.marginals.start).abs().max() < 0.04


def test_log_prob_gradients_reach_every_parameter():
    g = torch.Generator().manual_seed(0)
    B, T, K, C = 2, 6, 3, 2
    params = [torch.randn(*s, generator=g, dtype=torch.float64, requires_grad=True) for s in [(B, T, C), (C, C), (K, C), (C,), (C,)]]
    scores, trans, dur, start, end = params
    pots = sf.SegmentPotentials(scores, transition=trans, duration=dur, start=start, end=end)
    d = sf.SemiMarkovCRF(pots)
    gold = sf.Segmentation.from_segments([[(0, 2, 0), (2, 3, 1), (3, 6, 0)], [(0, 1, 1), (1, 4, 1), (4, 6, 0)]])
    nll = -d.log_prob(gold).sum()
    grads = torch.autograd.grad(nll, params)
    assert all(torch.isfinite(x).all() and x.abs().sum() > 0 for x in grads)
    assert (nll > 0).item()
