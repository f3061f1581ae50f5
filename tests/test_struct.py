"""SemiMarkov struct surface: hsmm, to_parts/from_parts, score, _raw marginals."""

import torch

import semiring_flash as sf


def test_hsmm_matches_its_definition():
    g = torch.Generator().manual_seed(0)
    B, N, K, C = 2, 5, 3, 3
    init = torch.randn(C, generator=g)
    A = torch.randn(C, C, generator=g)  # [z_n, z_{n+1}]
    L = torch.randn(C, K, generator=g)
    em = torch.randn(B, N, K, C, generator=g)
    edges = sf.SemiMarkov.hsmm(init, A, L, em)
    assert edges.shape == (B, N, K, C, C)
    for b, n, k, c2, c1 in [(0, 0, 1, 2, 0), (1, 3, 2, 0, 1), (0, 4, 0, 1, 1)]:
        want = A[c1, c2] + L[c2, k] + em[b, n, k, c2] + (init[c1] if n == 0 else 0)
        torch.testing.assert_close(edges[b, n, k, c2, c1], want)


def test_to_parts_from_parts_round_trip_and_score():
    seq = torch.tensor([[1, -1, 0, 2, -1, -1, 1], [0, 2, -1, -1, 1, -1, 0]])
    C, K = 3, 4
    parts = sf.SemiMarkov.to_parts(seq, (C, K))
    assert parts.shape == (2, 6, K, C, C) and parts.sum() == 6
    back, extra = sf.SemiMarkov.from_parts(parts)
    assert torch.equal(back, seq) and extra == (C, K)
    edges = torch.randn(2, 6, K, C, C, dtype=torch.float64)
    edges[0, 5, 3] = float("-inf")  # unused by the structure: 0 · −inf must not poison the score
    s = sf.SemiMarkov().score(edges, parts)
    assert torch.isfinite(s).all()
    torch.testing.assert_close(s, (edges.nan_to_num(neginf=0) * parts).sum((1, 2, 3, 4)))
    d = sf.SemiMarkovCRF(edges)
    assert (d.log_prob(parts) <= 0).all()


def test_raw_marginals_of_kmax_are_the_topk_structures():
    edges = torch.randn(2, 6, 3, 2, 2, dtype=torch.float64)
    raw = sf.SemiMarkov(sf.KMaxSemiring(2)).marginals(edges, _raw=True)
    top = sf.SemiMarkovCRF(edges).topk(2)
    assert torch.equal(raw, top)
    scores = sf.SemiMarkov().score(edges, top, batch_dims=(0, 1))
    torch.testing.assert_close(scores, sf.SemiMarkovCRF(edges).kmax(2))


def test_struct_accepts_factored_potentials():
    pots = sf.SegmentPotentials(torch.randn(2, 6, 2), transition=torch.randn(2, 2), duration=torch.randn(3, 2))
    st = sf.SemiMarkov(sf.LogSemiring)
    v, [p] = st.logpartition(pots)
    assert v.shape == (1, 2) and p is pots
    torch.testing.assert_close(st.sum(pots), sf.SemiMarkovCRF(pots).partition)
    m = st.marginals(pots)
    assert isinstance(m, sf.FactoredMarginals) and m.token.shape == (2, 6, 2)


def test_topk_beyond_the_number_of_segmentations_gives_empty_channels():
    # T=2, K=2, C=1 has exactly two segmentations: [0,1)[1,2) and [0,2).
    pots = sf.SegmentPotentials(torch.tensor([[[0.3], [-0.2]]]), transition=torch.zeros(1, 1), duration=torch.tensor([[0.5], [0.1]]))
    dist = sf.SemiMarkovCRF(pots)
    assert dist.kmax(4)[2:].isneginf().all()
    assert dist.topk(4).segments() == [[(0, 1, 0), (1, 2, 0)], [(0, 2, 0)], [], []]
    edges = sf.SemiMarkovCRF(pots.to_edges()).topk(4)
    assert edges.flatten(1).sum(-1).tolist() == [2.0, 1.0, 0.0, 0.0]
