"""The brute-force oracles themselves: against torch-struct 0.5 and closed forms.

Everything else in the suite trusts ``semiring_flash.ops.naive``; this file is
why. torch-struct (materialized reference) checks the edge oracle; a hand-made
materialization of DESIGN.md's ``to_edges()`` ties the factored oracle to the
edge oracle; small closed forms (linear chain, compositions, uniform models
with structural zeros) check both without any DP.

torch-struct 0.5 conventions pinned here (see test_torch_struct_conventions):
lengths count positions (tokens + 1), max(lengths) must equal N, and mixed
lengths in one batch give wrong results for the longer examples (so mixed
batches are compared per example, on edges[b:b+1, :lengths[b]-1]); its semiring
zero is -1e9 / -1e5, kmax pads missing paths with ~-1e5 (not −inf), entropy is
NaN as soon as any edge is −inf, and SemiMarkovCRF.cross_entropy / .kl raise.
"""

import itertools
import math
import warnings

import pytest
import torch
import torch_struct
from hypothesis import given, settings
from hypothesis import strategies as st

from semiring_flash.ops.naive import (
    count_edge_paths,
    count_factored_paths,
    edge_indicator,
    enumerate_edge_paths,
    enumerate_factored_paths,
    oracle_argmax,
    oracle_cross_entropy,
    oracle_edge_marginals,
    oracle_entropy,
    oracle_factored_marginals,
    oracle_kl,
    oracle_kmax,
    oracle_logZ,
    oracle_max,
    oracle_part_marginals,
    oracle_topk,
)
from strategies import ci_settings, edge_models, factored_example, factored_models

# the oracles are cheap at these sizes: more examples than the CI default
more = settings(parent=ci_settings, max_examples=60)

NEG = float("-inf")
TOL = dict(rtol=1e-9, atol=1e-9)

warnings.filterwarnings("ignore", message=".*arg_constraints.*")


def ts_crf(edges, lengths=None):
    # torch-struct calls requires_grad_ on what it is given: always a clone.
    return torch_struct.SemiMarkovCRF(edges.detach().clone(), lengths=lengths)


def n_finite(paths):
    return int((paths.scores > NEG).sum())


def close(a, b, **kw):
    kw = {**TOL, **kw}
    torch.testing.assert_close(torch.as_tensor(a, dtype=torch.float64), torch.as_tensor(b, dtype=torch.float64), **kw)


def check_against_torch_struct(d, e, b, L, ks=(2, 3), entropy=True):
    """Compare every summary of example b (tokens L, edges e of shape (L, Kts, C, C))."""
    P = enumerate_edge_paths(e, L)
    nf = n_finite(P)
    if nf == 0:
        assert float(d.partition[b].detach()) < -1e4
        return
    close(d.partition[b], oracle_logZ(P))
    close(d.marginals[b], oracle_edge_marginals(e, L), atol=1e-8)
    close(d.max[b], oracle_max(P))
    assert torch.equal(d.argmax[b].double(), edge_indicator(oracle_argmax(P), e.shape))
    if entropy:
        close(d.entropy[b], oracle_entropy(P))
    for k in ks:
        ok, kk = oracle_kmax(P, k), min(k, nf)
        km = d.kmax(k)[:, b]
        close(km[:kk], ok[:kk])
        assert (km[kk:] < -1e4).all() and (ok[kk:] == NEG).all()
        tk = d.topk(k)[:, b]
        for i, parts in enumerate(oracle_topk(P, k)):
            assert torch.equal(tk[i].double(), edge_indicator(parts, e.shape)), (k, i)


@pytest.mark.slow
# ------------------------------------------------------------------ torch-struct parity
@more
@given(edge_models(max_N=6, allow_neg_inf=False, mixed_lengths=False))
def test_edge_oracle_matches_torch_struct_full_lengths(m):
    d = ts_crf(m["edges"])
    for b in range(m["B"]):
        check_against_torch_struct(d, m["edges"][b], b, m["N"] - 1)


@pytest.mark.slow
@pytest.mark.parametrize("seed, neg", [(0, False), (1, True)])
def test_edge_oracle_matches_torch_struct_largest_size(seed, neg):
    """The largest size the oracles are meant for: 7 tokens, K = 4, C = 3 (36504 paths)."""
    g = torch.Generator().manual_seed(seed)
    e = torch.rand(1, 7, 5, 3, 3, generator=g, dtype=torch.float64) * 6 - 3
    if neg:
        e[:, :, 1:][torch.rand(e[:, :, 1:].shape, generator=g) < 0.15] = NEG
    check_against_torch_struct(ts_crf(e), e[0], 0, 7, ks=(3,), entropy=not neg)


@more
@given(edge_models(max_N=6, allow_neg_inf=False, mixed_lengths=True))
def test_edge_oracle_matches_torch_struct_per_example(m):
    """Mixed lengths: the oracle on the full (padded) tensor equals torch-struct on the slice."""
    e = m["edges"]
    for b in range(m["B"]):
        Lpos = int(m["lengths"][b])
        d = ts_crf(e[b : b + 1, : Lpos - 1])
        P_full = enumerate_edge_paths(e[b], Lpos - 1)
        P_cut = enumerate_edge_paths(e[b, : Lpos - 1], Lpos - 1)
        assert P_full.parts == P_cut.parts and torch.equal(P_full.scores, P_cut.scores)
        check_against_torch_struct(d, e[b, : Lpos - 1], 0, Lpos - 1, ks=(2,))
        marg = oracle_edge_marginals(e[b], Lpos - 1)
        assert (marg[Lpos - 1 :] == 0).all() and (marg[:, 0] == 0).all()


@pytest.mark.slow
@more
@given(edge_models(max_N=6, allow_neg_inf=True, mixed_lengths=False))
def test_edge_oracle_with_structural_zeros_matches_torch_struct(m):
    """−inf edges: torch-struct still gets logZ / marginals / max / argmax / kmax / topk right
    (its entropy turns NaN, so it is checked by the identity H = logZ − E[score] instead)."""
    d = ts_crf(m["edges"])
    for b in range(m["B"]):
        e = m["edges"][b]
        check_against_torch_struct(d, e, b, m["N"] - 1, ks=(3,), entropy=False)
        P = enumerate_edge_paths(e, m["N"] - 1)
        if n_finite(P):
            mu = oracle_edge_marginals(e, m["N"] - 1)
            expected_score = (mu * torch.where(mu > 0, e, torch.zeros_like(e))).sum()
            close(oracle_entropy(P), oracle_logZ(P) - expected_score, atol=1e-8)


@more
@given(edge_models(max_N=6, allow_neg_inf=False, mixed_lengths=False), st.integers(0, 2**31 - 1))
def test_cross_entropy_and_kl_closed_forms(m, seed):
    """H[p,q] = logZ_q − ⟨μ_p, θ_q⟩ and KL = H[p,q] − H[p], μ and logZ from torch-struct
    (torch-struct 0.5's SemiMarkovCRF.cross_entropy / .kl raise, so not called)."""
    ep = m["edges"]
    eq = torch.randn(ep.shape, generator=torch.Generator().manual_seed(seed), dtype=ep.dtype)
    dp, dq = ts_crf(ep), ts_crf(eq)
    for b in range(m["B"]):
        L = m["N"] - 1
        Pp, Pq = enumerate_edge_paths(ep[b], L), enumerate_edge_paths(eq[b], L)
        mu_p = dp.marginals[b]
        ce = dq.partition[b] - (mu_p * eq[b]).sum()
        h_p = dp.partition[b] - (mu_p * ep[b]).sum()
        close(oracle_cross_entropy(Pp, Pq), ce, atol=1e-8)
        close(oracle_kl(Pp, Pq), ce - h_p, atol=1e-8)
        close(oracle_entropy(Pp), dp.entropy[b])
        close(oracle_kl(Pp, Pp), 0.0, atol=1e-10)
        close(oracle_cross_entropy(Pp, Pp), oracle_entropy(Pp))
        assert oracle_kl(Pp, Pq) >= -1e-10
        # log_prob of each of a few paths = score − logZ, as torch-struct's log_prob
        for parts in oracle_topk(Pp, 2):
            ind = edge_indicator(parts, ep[b].shape).unsqueeze(0)
            lp = ts_crf(ep[b : b + 1]).log_prob(ind)
            close(lp[0], ep[b][ind[0].bool()].sum() - oracle_logZ(Pp))


def test_torch_struct_conventions():
    """Pin the torch-struct 0.5 behaviours the compat layer has to know about."""
    e = torch.zeros(1, 3, 3, 2, 2, dtype=torch.float64)  # 3 tokens, durations 1..2, 2 labels
    P = enumerate_edge_paths(e[0])
    assert len(P) == 32 == count_edge_paths(3, 3, 2)  # c0 is free: 2·(2^3 + 2^2 + 2^2)
    close(ts_crf(e).partition[0], math.log(32))
    km = ts_crf(e).kmax(40)[:, 0]
    assert (km[:32] == 0).all() and (km[32:] <= -1e4).all() and (km[32:] > -1e6).all()  # ~-1e5 pad
    e_neg = e.clone()
    e_neg[:, :, 2] = NEG  # durations of 2 forbidden: 16 paths left
    d = ts_crf(e_neg)
    close(d.partition[0], math.log(16))
    assert torch.isnan(d.entropy[0])  # torch-struct: −inf edges → NaN entropy
    close(oracle_entropy(enumerate_edge_paths(e_neg[0])), math.log(16))
    with pytest.raises(AttributeError):
        ts_crf(e).cross_entropy(ts_crf(e))
    # mixed lengths in one batch: the longer example is wrong in torch-struct 0.5
    g = torch.Generator().manual_seed(0)
    e = torch.randn(2, 4, 3, 2, 2, generator=g, dtype=torch.float64)
    lengths = torch.tensor([5, 2])
    batch = ts_crf(e, lengths).partition
    per = [ts_crf(e[b : b + 1, : lengths[b] - 1]).partition[0] for b in range(2)]
    oracle = [oracle_logZ(enumerate_edge_paths(e[b], int(lengths[b]) - 1)) for b in range(2)]
    close(per[0], oracle[0])
    close(per[1], oracle[1])
    close(batch[1], oracle[1])
    assert abs(float((batch[0] - oracle[0]).detach())) > 1e-3
    with pytest.raises(AssertionError):
        ts_crf(e, torch.tensor([4, 3])).partition  # max(lengths) must be N


# ------------------------------------------------------------------ hand-checkable −inf cases
def _uniform_edges(T=3, K=2, C=2):
    return torch.zeros(T, K + 1, C, C, dtype=torch.float64)


@pytest.mark.parametrize(
    "forbid, count",
    [
        (None, 32),  # 2·(2^3 + 2^2 + 2^2)
        ("dur2", 16),  # only 1+1+1: 2^4 label sequences c0..c3
        ("0to1", 13),  # label sequences with no 0→1: m+2 of them for m segments: 5 + 4 + 4
        ("dur2+0to1", 5),
        ("all", 0),
    ],
)
def test_structural_zeros_hand_counts(forbid, count):
    e = _uniform_edges()
    if forbid and "dur2" in forbid:
        e[:, 2] = NEG
    if forbid and "0to1" in forbid:
        e[:, :, 1, 0] = NEG  # destination 1 after source 0 (includes c0 = 0 → first label 1)
    if forbid == "all":
        e[:] = NEG
    P = enumerate_edge_paths(e)
    assert len(P) == 32 and n_finite(P) == count
    k = 40
    km = oracle_kmax(P, k)
    assert (km[:count] == 0).all() and (km[count:] == NEG).all()
    assert len(oracle_topk(P, k)) == count
    if count == 0:
        assert oracle_logZ(P) == NEG and oracle_max(P) == NEG and oracle_argmax(P) is None
        assert torch.isnan(oracle_entropy(P))
        assert (oracle_edge_marginals(e) == 0).all()
        return
    close(oracle_logZ(P), math.log(count))
    close(oracle_entropy(P), math.log(count))  # uniform over the allowed paths
    assert oracle_max(P) == 0
    mu = oracle_edge_marginals(e)
    assert (mu[torch.isinf(e)] == 0).all()
    close(mu[0, 1:].sum(), 1.0)  # exactly one segment starts at 0
    if forbid is None or forbid == "0to1":
        # ts agrees on the −inf-free counts too
        close(ts_crf(e.unsqueeze(0)).partition[0], math.log(count))


def test_cross_entropy_support_mismatch_is_inf():
    e = _uniform_edges()
    q = e.clone()
    q[:, 2] = NEG  # q forbids what p allows
    Pp, Pq = enumerate_edge_paths(e), enumerate_edge_paths(q)
    assert oracle_cross_entropy(Pp, Pq) == float("inf") and oracle_kl(Pp, Pq) == float("inf")
    close(oracle_kl(Pq, Pp), math.log(32) - math.log(16))  # q uniform on 16 of p's 32
    close(oracle_cross_entropy(Pq, Pp), math.log(32))


# ------------------------------------------------------------------ closed forms
def _compositions(T, K):
    """Compositions of T with parts ≤ K, by brute force over the 2^(T-1) cut sets."""
    n = 0
    for cuts in itertools.product([0, 1], repeat=T - 1):
        bounds = [0] + [i + 1 for i, c in enumerate(cuts) if c] + [T]
        n += max(b - a for a, b in zip(bounds, bounds[1:])) <= K
    return n


@pytest.mark.parametrize("T", range(1, 8))
@pytest.mark.parametrize("K", range(1, 5))
def test_single_label_counts_are_compositions(T, K):
    n = _compositions(T, K)
    P = enumerate_edge_paths(torch.zeros(T, K + 1, 1, 1, dtype=torch.float64))
    assert len(P) == n == count_edge_paths(T, K + 1, 1) and len(set(P.parts)) == n
    close(oracle_logZ(P), math.log(n))
    F = enumerate_factored_paths(torch.zeros(T, 1), torch.zeros(1, 1), torch.zeros(K, 1))
    assert len(F) == n == count_factored_paths(T, K, 1)
    close(oracle_logZ(F), math.log(n))
    # each path is a tiling: contiguous, covering [0, T), durations ≤ K
    for parts in P.parts:
        assert parts[0][0] == 0 and parts[-1][0] + parts[-1][1] == T
        assert all(a[0] + a[1] == b[0] for a, b in zip(parts, parts[1:]))
        assert all(1 <= p[1] <= K for p in parts)


def _chain(m, b, reduce):
    """Forward algorithm of a linear chain (K = 1), written out: log Z or Viterbi."""
    x = factored_example(m, b)
    s, A, D, L = x["scores"], x["transition"], x["duration"], x["length"]
    C = s.shape[1]
    zero = torch.zeros(C, dtype=s.dtype)
    init = x["init"] if x["init"] is not None else zero
    end = x["end"] if x["end"] is not None else zero
    if x["start"] is not None:
        a = x["start"] + s[0] + D[0]
    else:
        a = reduce(init[:, None] + A, 0) + s[0] + D[0]
    for t in range(1, L):
        a = reduce(a[:, None] + A, 0) + s[t] + D[0]
    return reduce(a + end, 0)


@more
@given(factored_models(max_T=7, max_K=1, min_K=1))
def test_linear_chain_forward_algorithm(m):
    lse = lambda x, d: torch.logsumexp(x, d)  # noqa: E731
    mx = lambda x, d: x.max(d).values  # noqa: E731
    for b in range(m["B"]):
        P = enumerate_factored_paths(**factored_example(m, b))
        close(oracle_logZ(P), _chain(m, b, lse))
        close(oracle_max(P), _chain(m, b, mx))


# ------------------------------------------------------------------ factored ↔ edges
def materialize(x, T, K):
    """DESIGN.md's to_edges() for one example, written independently: (T, K+1, C, C)."""
    s, A, D, L = x["scores"].double(), x["transition"].double(), x["duration"].double(), x["length"]
    C = s.shape[1]
    e = torch.full((T, K + 1, C, C), NEG, dtype=torch.float64)
    for n in range(T):
        for d in range(1, K + 1):
            if n + d > T:
                continue
            for c in range(C):
                seg = s[n : n + d, c].sum() + D[d - 1, c]
                if x["end"] is not None and n + d == L:
                    seg = seg + x["end"][c]
                for cp in range(C):
                    if n == 0 and x["start"] is not None:
                        e[n, d, c, cp] = seg + x["start"][c] if cp == 0 else NEG
                    else:
                        e[n, d, c, cp] = seg + A[cp, c] + (x["init"][cp] if n == 0 and x["init"] is not None else 0)
    return e


@more
@given(factored_models(max_T=5))
def test_factored_oracle_equals_edge_oracle_on_materialization(m):
    for b in range(m["B"]):
        x = factored_example(m, b)
        F = enumerate_factored_paths(**x)
        E = enumerate_edge_paths(materialize(x, m["T"], m["K"]), x["length"])
        assert len(F) == count_factored_paths(x["length"], m["K"], m["C"], x["start"] is not None)
        f = {p: float(s) for p, s in zip(F.parts, F.scores) if s > NEG}
        e = {p: float(s) for p, s in zip(E.parts, E.scores) if s > NEG}
        assert f.keys() == e.keys()
        for p in f:
            assert math.isclose(f[p], e[p], rel_tol=1e-12, abs_tol=1e-12)
        close(oracle_logZ(F), oracle_logZ(E))
        if x["start"] is not None:
            assert all(p[0][3] == 0 for p in F.parts)


@more
@given(factored_models(max_T=5))
def test_factored_marginals_are_gradients(m):
    """Compact posteriors from the path list = autograd of oracle log Z (and sane sums)."""
    for b in range(m["B"]):
        x = factored_example(m, b)
        leaves = {k: v.detach().clone().requires_grad_(True) for k, v in x.items() if torch.is_tensor(v)}
        P = enumerate_factored_paths(**{**x, **leaves})
        z = oracle_logZ(P)
        if not bool(torch.isfinite(z)):
            continue
        grads = dict(zip(leaves, torch.autograd.grad(z, list(leaves.values()))))
        fm = oracle_factored_marginals(P, m["T"], m["C"], m["K"], start=x["start"] is not None)
        L = x["length"]
        close(fm["token"], grads["scores"], atol=1e-10)
        close(fm["duration"], grads["duration"], atol=1e-10)
        close(fm["transition"], grads["transition"], atol=1e-10)
        for name in ("init", "start", "end"):
            if name in grads:
                close(grads[name].sum(), 1.0)
        close(fm["token"][:L].sum(-1), torch.ones(L, dtype=torch.float64))
        assert (fm["token"][L:] == 0).all() and (fm["start"][L:] == 0).all()
        close(fm["start"][0], 1.0)
        close(fm["start_label"].sum(-1), fm["start"])
        close((fm["duration"] * torch.arange(1, m["K"] + 1, dtype=torch.float64)[:, None]).sum(), float(L))


@more
@given(edge_models(max_N=6))
def test_edge_marginals_are_gradients_and_sum_rules(m):
    for b in range(m["B"]):
        L = int(m["lengths"][b]) - 1
        e = m["edges"][b].detach().clone().requires_grad_(True)
        P = enumerate_edge_paths(e, L)
        z = oracle_logZ(P)
        if not bool(torch.isfinite(z)):
            continue
        (g,) = torch.autograd.grad(z, e)
        mu = oracle_edge_marginals(e, L)
        close(mu, g, atol=1e-10)
        close(mu, oracle_part_marginals(P, e.shape))
        close(mu[0, 1:].sum(), 1.0)
        dur = torch.arange(e.shape[1], dtype=torch.float64)
        close((mu.sum((0, 2, 3)) * dur).sum(), float(L))  # durations of a path sum to L
        # max / argmax consistency; kmax sorted and its head is max
        am = oracle_argmax(P)
        close(e[tuple(torch.tensor(am).T)].sum(), oracle_max(P))
        km = oracle_kmax(P, 4)
        assert (km[:-1] >= km[1:]).all() and km[0] == oracle_max(P)
        # entropy identity H = logZ − E_p[score]
        es = (mu * torch.where(mu > 0, e, torch.zeros_like(e))).sum()
        close(oracle_entropy(P), z - es, atol=1e-8)


def test_dtype_and_guard():
    e = torch.randn(3, 3, 2, 2, dtype=torch.float32, requires_grad=True)
    P = enumerate_edge_paths(e, 2)
    assert P.scores.dtype == torch.float64 and len(P) == count_edge_paths(2, 3, 2)
    oracle_logZ(P).backward()
    assert e.grad.dtype == torch.float32 and e.grad[2].abs().sum() == 0
    # plain lists of (parts, score) work as well as PathList
    close(oracle_logZ(list(P)), oracle_logZ(P))
    with pytest.raises(AssertionError):
        enumerate_edge_paths(torch.zeros(12, 6, 3, 3), 12)  # ~10^7 paths: refused
