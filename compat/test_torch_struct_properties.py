"""The kinds of checks torch-struct's own test-suite makes, run on our SemiMarkov through the shim.

Written for this project (not copied): shapes per semiring; sums against a
brute-force enumeration that goes through the semiring interface
(``convert`` / ``times`` / ``sum`` / ``unconvert``) and against the plain
oracles of ops/naive.py; entropy and k-max; parts round trips; lengths;
gradients w.r.t. parameters; max vs argmax; Gumbel (differentiable
marginals). Cases are tiny (every path is enumerated), with mixed lengths
and −inf structural zeros.
"""

from __future__ import annotations

import pytest
import torch

import semiring_flash.semirings as srs
import semiring_flash.torch_struct as sts
from semiring_flash.ops.naive import enumerate_edge_paths, oracle_entropy, oracle_kmax, oracle_logZ, oracle_max

F64 = torch.float64
NEG_INF = float("-inf")

#: (B, N-1 tokens, Kts, C, seed, mixed lengths, −inf zeros)
CASES = [
    (2, 4, 3, 2, 0, False, False),
    (3, 5, 3, 2, 1, True, False),
    (2, 4, 4, 3, 2, True, True),
    (1, 3, 2, 3, 3, False, True),
]
IDS = [f"B{c[0]}T{c[1]}K{c[2]}C{c[3]}{'-mixed' if c[5] else ''}{'-neginf' if c[6] else ''}" for c in CASES]


def make(case):
    """(edges (B, N-1, Kts, C, C), position lengths (B,) or None)."""
    B, T, Kts, C, seed, mixed, neg = case
    g = torch.Generator().manual_seed(seed)
    edges = torch.rand(B, T, Kts, C, C, generator=g, dtype=F64) * 6 - 3
    if neg:
        edges[:, :, 1:][torch.rand(B, T, Kts - 1, C, C, generator=g) < 0.15] = NEG_INF
    if not mixed:
        return edges, None
    tokens = torch.randint(1, T + 1, (B,), generator=g)
    tokens[0] = T
    return edges, tokens + 1


def tokens_of(edges, lengths):
    B, T = edges.shape[:2]
    return [T] * B if lengths is None else (lengths - 1).tolist()


def semiring_enumeration(sr, edges, lengths, q_edges=None):
    """(S, B): ⊕ over every path of ⊗ of its converted edges, through the semiring interface only."""
    out = []
    for b, L in enumerate(tokens_of(edges, lengths)):
        paths = enumerate_edge_paths(edges[b], L)
        values = []
        for parts, _ in paths:
            pots = [edges[b][p] for p in parts]
            if q_edges is not None:  # two-distribution semirings read (p, q) side by side
                pots = [torch.stack([w, q_edges[b][p]]) for w, p in zip(pots, parts)]
            values.append(sr.times(*[sr.convert(w) for w in pots]))
        out.append(sr.sum(torch.stack(values, -1)))
    return torch.stack(out, -1)


SEMIRINGS = {
    "log": srs.LogSemiring,
    "max": srs.MaxSemiring,
    "entropy": srs.EntropySemiring,
    "kmax3": srs.KMaxSemiring(3),
    "sampled": srs.SampledSemiring,
    "multisampled": srs.MultiSampledSemiring,
    "sparsemax": srs.SparseMaxSemiring,
    "tempmax": srs.TempMax(2.0),
    "checkpoint_log": srs.CheckpointSemiring(srs.LogSemiring),
    "fast_max": srs.FastMaxSemiring,
}


@pytest.mark.parametrize("case", CASES, ids=IDS)
@pytest.mark.parametrize("name", list(SEMIRINGS))
def test_shapes_and_values_per_semiring(name, case):
    sr = SEMIRINGS[name]
    edges, lengths = make(case)
    struct = sts.SemiMarkov(sr)
    B, S = edges.shape[0], sr.size()
    value, raw = struct.sum(edges, lengths), struct.sum(edges, lengths, _raw=True)
    assert value.shape == (B,) and raw.shape == (S, B)
    if name == "sparsemax":
        # a smoothed max is not associative: the DP's value depends on how it groups ⊕, and
        # only the bounds max ≤ value ≤ max + ½·(⊕ levels) hold against enumeration
        best = sts.SemiMarkov(sts.MaxSemiring).sum(edges, lengths)
        assert (value >= best - 1e-12).all() and (value <= best + 0.5 * edges.shape[1] * edges.shape[2]).all()
    else:
        torch.testing.assert_close(raw, semiring_enumeration(sr, edges, lengths), rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(sr.unconvert(raw), value, rtol=0, atol=0)
    marg = struct.marginals(edges, lengths)
    assert marg.shape == edges.shape and torch.isfinite(marg).all()
    assert struct.marginals(edges, lengths, _raw=True).shape == (S, *edges.shape)


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_values_against_plain_oracles(case):
    """log Z, max, entropy and k-max against ops/naive.py (no semiring code in the oracle)."""
    edges, lengths = make(case)
    Ls = tokens_of(edges, lengths)
    paths = [enumerate_edge_paths(edges[b], L) for b, L in enumerate(Ls)]
    checks = [
        (srs.LogSemiring, torch.stack([oracle_logZ(p) for p in paths])),
        (srs.MaxSemiring, torch.stack([oracle_max(p) for p in paths])),
        (srs.EntropySemiring, torch.stack([oracle_entropy(p) for p in paths])),
    ]
    for sr, want in checks:
        torch.testing.assert_close(sts.SemiMarkov(sr).sum(edges, lengths), want, rtol=1e-9, atol=1e-9)
    k = 4
    kmax = sts.SemiMarkov(sts.KMaxSemiring(k)).sum(edges, lengths, _raw=True)  # (k, B)
    torch.testing.assert_close(kmax.T, torch.stack([oracle_kmax(p, k) for p in paths]), rtol=1e-9, atol=1e-9)
    # 1-best of k-max is max; its argmax is the max's argmax, the 2nd best differs
    struct_k = sts.SemiMarkov(sts.KMaxSemiring(k))
    top = struct_k.marginals(edges, lengths, _raw=True)
    assert torch.equal(top[0], sts.SemiMarkov(sts.MaxSemiring).marginals(edges, lengths))
    two = kmax[1] > NEG_INF
    assert (top[1][two] != top[0][two]).any() if two.any() else True
    torch.testing.assert_close(struct_k.score(edges, top[1]), kmax[1], rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_cross_entropy_and_kl_through_the_semiring_interface(case):
    p, lengths = make(case)
    q = p.flip(-1).flip(-2).clone()
    for sr in (srs.CrossEntropySemiring, srs.KLDivergenceSemiring):
        got = sts.SemiMarkov(sr).sum([p, q], lengths, _raw=True)
        torch.testing.assert_close(got, semiring_enumeration(sr, p, lengths, q_edges=q), rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_max_equals_score_of_argmax(case):
    edges, lengths = make(case)
    struct = sts.SemiMarkov(sts.MaxSemiring)
    argmax = struct.marginals(edges, lengths)
    torch.testing.assert_close(struct.score(edges, argmax), struct.sum(edges, lengths), rtol=1e-12, atol=1e-12)
    assert (struct.sum(edges, lengths) <= sts.SemiMarkov().sum(edges, lengths) + 1e-12).all()


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_parts_round_trips(case):
    edges, lengths = make(case)
    B, T, Kts, C = edges.shape[:4]
    # from the argmax's parts
    argmax = sts.SemiMarkov(sts.MaxSemiring).marginals(edges, lengths).long()
    seq, extra = sts.SemiMarkov.from_parts(argmax)
    assert extra == (C, Kts)
    assert torch.equal(sts.SemiMarkov.to_parts(seq, extra, lengths=lengths), argmax)
    # from random sequences (label at each segment start, -1 inside segments)
    g = torch.Generator().manual_seed(7)
    seq = torch.full((B, T + 1), -1, dtype=torch.long)
    for b, L in enumerate(tokens_of(edges, lengths)):
        n = 0
        while True:
            seq[b, n] = int(torch.randint(C, (1,), generator=g))
            if n == L:
                break
            n = min(L, n + int(torch.randint(1, Kts, (1,), generator=g)))
    parts = sts.SemiMarkov.to_parts(seq, (C, Kts), lengths=lengths)
    seq2, extra2 = sts.SemiMarkov.from_parts(parts)
    assert extra2 == (C, Kts) and torch.equal(seq2, seq)
    assert torch.equal(sts.SemiMarkov.to_parts(seq2, extra2, lengths=lengths), parts)


@pytest.mark.parametrize("case", [c for c in CASES if c[5]], ids=[i for c, i in zip(CASES, IDS) if c[5]])
def test_lengths_batched_equals_per_example(case):
    edges, lengths = make(case)
    for sr in (sts.LogSemiring, sts.MaxSemiring, sts.EntropySemiring):
        struct = sts.SemiMarkov(sr)
        batched, marg = struct.sum(edges, lengths), struct.marginals(edges, lengths)
        for b, L in enumerate(tokens_of(edges, lengths)):
            one = edges[b : b + 1, :L]
            torch.testing.assert_close(batched[b : b + 1], struct.sum(one), rtol=1e-12, atol=1e-12)
            torch.testing.assert_close(marg[b : b + 1, :L], struct.marginals(one), rtol=1e-12, atol=1e-12)
            assert not marg[b, L:].any()  # nothing past the end


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_params_gradient_is_the_marginals(case):
    edges, lengths = make(case)
    theta = edges.clone().requires_grad_()
    sts.SemiMarkov().sum(theta, lengths).sum().backward()
    torch.testing.assert_close(theta.grad, sts.SemiMarkov().marginals(edges, lengths), rtol=1e-12, atol=1e-12)
    plain = edges.clone()
    sts.SemiMarkovCRF(plain, lengths).marginals
    assert not plain.requires_grad  # inputs are never given requires_grad


def test_gumbel_marginals_are_differentiable():
    edges, lengths = make(CASES[1])
    theta = edges.clone().requires_grad_()
    marg = sts.SemiMarkov().marginals(theta, lengths)
    w = torch.rand_like(marg)
    (g,) = torch.autograd.grad((marg * w).sum(), theta)
    # d/dθ Σ w·m(θ) by central differences along a random direction
    d, eps = torch.randn_like(edges), 1e-6
    m = lambda t: (sts.SemiMarkov().marginals(t, lengths) * w).sum()  # noqa: E731
    fd = (m(edges + eps * d) - m(edges - eps * d)) / (2 * eps)
    torch.testing.assert_close((g * d).nansum(), fd, rtol=1e-5, atol=1e-7)
