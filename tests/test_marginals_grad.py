"""Differentiable marginals: with grad mode on and potentials that require grad, ``marginals`` carry a graph.

Oracles: autograd's double backward through the dense DP (ops/dense.py), torch-struct 0.5's (differentiable)
marginals, and torch.autograd.gradgradcheck in float64. Without a graph (no grad needed) the fast path is kept.
"""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from strategies import _common, edge_models, factored_kwargs, factored_models

import semiring_flash as sf
from semiring_flash.ops import dispatch
from semiring_flash.ops.dispatch import entry_value
from semiring_flash.ops.dense import dense_edges, dense_factored

few = settings(max_examples=12, derandomize=True, **_common)
FIELDS = ("token", "start", "start_label", "duration", "transition")


def _leaves(m: dict, names) -> dict:
    return {k: (m[k].clone().requires_grad_() if k in names and m[k] is not None else m[k]) for k in m}


def _dense_factored_marginals(pots: sf.SegmentPotentials) -> dict:
    """The same gradients as SemiMarkov.marginals, by create_graph autograd through the dense DP (the oracle)."""
    inp = dispatch.inputs([pots], leaves=True, keep_graph=True)
    sb = torch.zeros(pots.batch, pots.T, pots.C, dtype=pots.dtype, requires_grad=True)
    tau0 = entry_value(sf.LogSemiring, inp.entry, inp.transition.dtype)
    logz = dense_factored(sf.LogSemiring, inp.cum, inp.transition, inp.duration, tau0, inp.end, inp.lengths, sb)[0]
    g_cum, g_tr, g_dur, g_sb = torch.autograd.grad(
        logz.sum(), [inp.cum, inp.transition, inp.duration, sb], create_graph=True, allow_unused=True)
    g_tr = torch.zeros_like(inp.transition) if g_tr is None else g_tr  # unused when T = 1 and start is given
    return dict(token=g_cum.flip(1).cumsum(1).flip(1)[:, 1:].to(pots.dtype), start=g_sb.sum(-1), start_label=g_sb,
                duration=g_dur, transition=g_tr)


def _second_order(marg: dict, wrt: list, seed: int = 0) -> list:
    """∂/∂wrt of Σ_field <R_field, marg[field]> for fixed random R (a vector-Hessian product)."""
    g = torch.Generator().manual_seed(seed)
    obj = sum((torch.randn(v.shape, generator=g, dtype=v.dtype) * v).sum() for v in marg.values())
    return torch.autograd.grad(obj, wrt, allow_unused=True, retain_graph=True)


def _finite_close(a, b):
    if a is None or b is None:  # unused on both sides
        assert (a is None or not a.any()) and (b is None or not b.any())
        return
    torch.testing.assert_close(a, b, rtol=1e-7, atol=1e-9)


@few
@given(factored_models(max_B=2, max_T=5, max_C=3, max_K=3))
def test_factored_marginals_double_backward_match_dense_dp(m):
    names = ["scores", "transition", "duration", "init", "start", "end"]
    m = _leaves(m, names)
    pots = sf.SegmentPotentials(**factored_kwargs(m))
    got = sf.SemiMarkovCRF(pots, backend="auto").marginals
    assert got.token.requires_grad
    got = {f: getattr(got, f) for f in FIELDS}
    want = _dense_factored_marginals(pots)
    for f in FIELDS:
        torch.testing.assert_close(got[f], want[f], rtol=1e-7, atol=1e-9)
    wrt = [m[k] for k in names if m[k] is not None]
    for a, b in zip(_second_order(got, wrt), _second_order(want, wrt)):
        _finite_close(a, b)


@few
@given(edge_models(max_B=2, max_N=6, max_C=3, max_K=3))
def test_edge_marginals_double_backward_match_dense_dp(m):
    edges, tokens = m["edges"].clone().requires_grad_(), m["lengths"] - 1
    got = sf.SemiMarkovCRF(edges, m["lengths"]).marginals
    assert got.requires_grad
    (want,) = torch.autograd.grad(dense_edges(sf.LogSemiring, edges, tokens)[0].sum(), edges, create_graph=True)
    torch.testing.assert_close(got, want, rtol=1e-7, atol=1e-9)
    for a, b in zip(_second_order({"m": got}, [edges]), _second_order({"m": want}, [edges])):
        _finite_close(a, b)


def test_edge_marginals_double_backward_match_torch_struct():
    ts = pytest.importorskip("torch_struct")
    g = torch.Generator().manual_seed(3)
    edges = torch.randn(2, 6, 4, 3, 3, generator=g, dtype=torch.float64, requires_grad=True)
    lengths = torch.full((2,), 7)  # full lengths: torch-struct 0.5 mishandles mixed ones
    ours = sf.SemiMarkovCRF(edges, lengths).marginals
    theirs = ts.SemiMarkovCRF(edges, lengths).marginals
    torch.testing.assert_close(ours, theirs)
    for a, b in zip(_second_order({"m": ours}, [edges]), _second_order({"m": theirs}, [edges])):
        torch.testing.assert_close(a, b)


def test_gradgradcheck_factored_marginals():
    g = torch.Generator().manual_seed(0)
    r = lambda *s: torch.randn(*s, generator=g, dtype=torch.float64, requires_grad=True)  # noqa: E731
    scores, trans, dur, init = r(1, 4, 2), r(2, 2), r(3, 2), r(2)

    def marginals(scores, trans, dur, init):
        m = sf.SemiMarkovCRF(sf.SegmentPotentials(scores, transition=trans, duration=dur, init=init)).marginals
        return tuple(getattr(m, f) for f in FIELDS)

    assert torch.autograd.gradgradcheck(marginals, (scores, trans, dur, init))


def test_gradgradcheck_edge_marginals_and_partitions():
    g = torch.Generator().manual_seed(1)
    edges = torch.randn(2, 3, 3, 2, 2, generator=g, dtype=torch.float64, requires_grad=True)
    lengths = torch.tensor([4, 3])
    assert torch.autograd.gradgradcheck(lambda e: sf.SemiMarkovCRF(e, lengths).marginals, (edges,))
    # log Z through the checkpointed Function: its backward is differentiable under create_graph
    assert torch.autograd.gradgradcheck(lambda e: sf.SemiMarkovCRF(e, lengths).partition, (edges,))
    scores = torch.randn(2, 4, 2, generator=g, dtype=torch.float64, requires_grad=True)
    trans = torch.randn(2, 2, generator=g, dtype=torch.float64, requires_grad=True)
    dur = torch.randn(2, 2, generator=g, dtype=torch.float64)

    def logz(s, t):
        return sf.SemiMarkovCRF(sf.SegmentPotentials(s, transition=t, duration=dur, lengths=torch.tensor([4, 2]))).partition

    assert torch.autograd.gradgradcheck(logz, (scores, trans))


@pytest.mark.parametrize("kind", ["factored", "edges"])
def test_no_graph_without_grad_and_same_values(kind):
    g = torch.Generator().manual_seed(2)
    if kind == "edges":
        x = torch.randn(2, 5, 3, 2, 2, generator=g, dtype=torch.float64)
        make = lambda x: sf.SemiMarkovCRF(x, torch.tensor([6, 4]))  # noqa: E731
        read = lambda m: m  # noqa: E731
    else:
        x = torch.randn(2, 5, 2, generator=g, dtype=torch.float64)
        trans, dur = torch.randn(2, 2, generator=g, dtype=torch.float64), torch.randn(3, 2, generator=g, dtype=torch.float64)
        make = lambda x: sf.SemiMarkovCRF(sf.SegmentPotentials(x, transition=trans, duration=dur, lengths=torch.tensor([5, 2])))  # noqa: E731
        read = lambda m: m.token  # noqa: E731
    fast = read(make(x).marginals)
    assert not fast.requires_grad  # nothing requires grad: the checkpointed path, no graph
    leaf = x.clone().requires_grad_()
    with torch.no_grad():
        assert not read(make(leaf).marginals).requires_grad
    graph = read(make(leaf).marginals)
    assert graph.requires_grad
    torch.testing.assert_close(graph, fast, rtol=1e-12, atol=1e-12)
    if kind == "edges":  # argmax (max-semiring marginals): indicators, no graph
        assert not make(leaf).argmax.requires_grad


def test_triton_backend_refuses_differentiable_marginals_naming_torch():
    edges = torch.randn(1, 3, 3, 2, 2, requires_grad=True)
    with pytest.raises(NotImplementedError, match="backend='torch'"):
        sf.SemiMarkovCRF(edges, backend="triton").marginals
    pots = sf.SegmentPotentials(torch.randn(1, 3, 2, requires_grad=True), transition=torch.randn(2, 2), duration=torch.randn(2, 2))
    with pytest.raises(NotImplementedError, match="backend='torch'"):
        sf.SemiMarkovCRF(pots, backend="triton").marginals


def test_factored_marginals_double_backward_match_torch_struct_on_edges():
    """Duration and transition counts are sums of torch-struct's edge marginals over to_edges()."""
    ts = pytest.importorskip("torch_struct")
    g = torch.Generator().manual_seed(4)
    r = lambda *s: torch.randn(*s, generator=g, dtype=torch.float64, requires_grad=True)  # noqa: E731
    scores, trans, dur = r(2, 5, 3), r(3, 3), r(2, 3)
    pots = sf.SegmentPotentials(scores, transition=trans, duration=dur)  # full lengths (torch-struct 0.5)
    ours = sf.SemiMarkovCRF(pots).marginals
    edge_marg = ts.SemiMarkovCRF(pots.to_edges()).marginals  # (B, T, K+1, C, C'): [n, d, c, c']
    theirs = dict(duration=edge_marg[:, :, 1:].sum((1, 4)), transition=edge_marg.sum((1, 2)).transpose(-1, -2))
    wrt = [scores, trans, dur]
    for f in theirs:
        torch.testing.assert_close(getattr(ours, f), theirs[f])
        for a, b in zip(_second_order({f: getattr(ours, f)}, wrt), _second_order({f: theirs[f]}, wrt)):
            torch.testing.assert_close(a, b)
