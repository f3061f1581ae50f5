"""The K = 1 fast path (ops/linear_chain.py) against brute force and the streaming engine, and its routing."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given
from strategies import factored_example, factored_kwargs, factored_models

import semiring_flash as sf
from semiring_flash.ops import dispatch
from semiring_flash.ops import linear_chain, naive, streaming
from semiring_flash.ops.dispatch import entry_value


def _engine_args(pots, semiring, leaves=False):
    inp = dispatch.inputs([pots], leaves=leaves)
    tau0 = entry_value(semiring, inp.entry, inp.transition.dtype)
    return inp, (inp.cum, inp.transition, inp.duration, tau0, inp.end, inp.lengths)


@given(factored_models(max_K=1, max_T=6, max_C=3))
def test_value_and_viterbi_match_brute_force(m):
    pots = sf.SegmentPotentials(**factored_kwargs(m))
    log_z = linear_chain.linear_chain_scan(sf.LogSemiring, *_engine_args(pots, sf.LogSemiring)[1])[0]
    best = linear_chain.linear_chain_scan(sf.MaxSemiring, *_engine_args(pots, sf.MaxSemiring)[1])[0]
    score, labels, starts = linear_chain.viterbi(*_engine_args(pots, sf.MaxSemiring)[1])
    for b in range(m["B"]):
        paths = naive.enumerate_factored_paths(**factored_example(m, b))
        torch.testing.assert_close(log_z[b], naive.oracle_logZ(paths), rtol=1e-10, atol=1e-10)
        torch.testing.assert_close(best[b], naive.oracle_max(paths), rtol=1e-10, atol=1e-10)
        torch.testing.assert_close(score[b], naive.oracle_max(paths), rtol=1e-10, atol=1e-10)
        L, ref = int(m["lengths"][b]), naive.oracle_argmax(paths)
        if ref is None:  # no finite path: an empty structure
            assert (labels[b] == -1).all() and not starts[b].any()
            continue
        assert labels[b, :L].tolist() == [c for _, _, c, _ in ref]
        assert (labels[b, L:] == -1).all() and starts[b, :L].all() and not starts[b, L:].any()


@pytest.mark.parametrize("semiring", [sf.LogSemiring, sf.MaxSemiring], ids=["log", "max"])
@given(m=factored_models(max_K=1, max_T=7, max_C=3))
def test_gradients_match_streaming_engine(semiring, m):
    pots = sf.SegmentPotentials(**factored_kwargs(m))
    inp, args = _engine_args(pots, semiring, leaves=True)
    bias = torch.zeros(m["B"], m["T"], m["C"], dtype=torch.float64, requires_grad=True)
    leaves = [inp.cum, inp.transition, inp.duration, bias]
    fast = linear_chain.linear_chain_scan(semiring, *args, start_bias=bias)
    ref = streaming.factored_scan(semiring, *args, start_bias=bias)
    torch.testing.assert_close(fast, ref, rtol=1e-10, atol=1e-10)
    # every sequence, impossible ones (value −inf) too: their gradient is 0, as on the streaming engine
    g_fast = torch.autograd.grad(fast[0].sum(), leaves, allow_unused=True, retain_graph=True)
    g_ref = torch.autograd.grad(ref[0].sum(), leaves, allow_unused=True)
    for a, b in zip(g_fast, g_ref):
        a = torch.zeros_like(b) if a is None else a
        assert not torch.isnan(a).any()
        torch.testing.assert_close(a, b, rtol=1e-8, atol=1e-10)


def test_distribution_routes_k1_to_linear_chain(monkeypatch):
    """At K = 1 on the torch engine, partition/max/marginals/argmax never reach the streaming engine."""
    g = torch.Generator().manual_seed(0)
    B, T, C = 2, 5, 3
    pots = sf.SegmentPotentials(torch.randn(B, T, C, generator=g, dtype=torch.float64),
                                transition=torch.randn(C, C, generator=g, dtype=torch.float64),
                                duration=torch.randn(1, C, generator=g, dtype=torch.float64),
                                lengths=torch.tensor([5, 3]))
    ref = sf.SemiMarkovCRF(pots, backend="torch")
    want = (ref.partition, ref.max, ref.marginals.token, ref.argmax.labels)

    def refuse(*args, **kwargs):
        raise AssertionError("K = 1 went to the streaming engine")

    monkeypatch.setattr(streaming, "factored_scan", refuse)
    monkeypatch.setattr(dispatch.streaming, "factored_scan", refuse)
    dist = sf.SemiMarkovCRF(pots, backend="torch")
    got = (dist.partition, dist.max, dist.marginals.token, dist.argmax.labels)
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b)
    with pytest.raises(AssertionError, match="streaming"):  # K = 2 still takes the general engine
        sf.SemiMarkovCRF(sf.SegmentPotentials(pots.scores, transition=pots.transition,
                                              duration=torch.zeros(2, C, dtype=torch.float64)), backend="torch").partition


def test_marginals_match_streaming_engine_at_k1():
    g = torch.Generator().manual_seed(1)
    B, T, C = 3, 9, 4
    kw = dict(transition=torch.randn(C, C, generator=g, dtype=torch.float64),
              start=torch.randn(C, generator=g, dtype=torch.float64), end=torch.randn(C, generator=g, dtype=torch.float64),
              lengths=torch.tensor([9, 4, 1]))
    scores = torch.randn(B, T, C, generator=g, dtype=torch.float64)
    fast = sf.SemiMarkovCRF(sf.SegmentPotentials(scores, duration=torch.zeros(1, C, dtype=torch.float64), **kw),
                            backend="torch").marginals
    # the same model with K = 2 and duration 2 forbidden goes through the streaming engine
    dur2 = torch.tensor([[0.0] * C, [-math.inf] * C], dtype=torch.float64)
    ref = sf.SemiMarkovCRF(sf.SegmentPotentials(scores, duration=dur2, **kw), backend="torch").marginals
    for name in ("token", "start", "start_label", "transition"):
        torch.testing.assert_close(getattr(fast, name), getattr(ref, name), rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(fast.duration[:, 0], ref.duration[:, 0], rtol=1e-10, atol=1e-12)


def test_fp32_long_sequence_matches_float64():
    """States are re-centred in fp32 with float64 offsets: log Z stays within 1e-6 relative at T = 4000."""
    g = torch.Generator().manual_seed(2)
    B, T, C = 2, 4000, 3
    scores = torch.randn(B, T, C, generator=g, dtype=torch.float64) * 3 + 2
    trans = torch.randn(C, C, generator=g, dtype=torch.float64)
    dur = torch.zeros(1, C, dtype=torch.float64)
    lengths = torch.tensor([T, T - 123])
    z64 = sf.SemiMarkovCRF(sf.SegmentPotentials(scores, transition=trans, duration=dur, lengths=lengths),
                           backend="torch").partition
    z32 = sf.SemiMarkovCRF(sf.SegmentPotentials(scores.float(), transition=trans.float(), duration=dur.float(),
                                                lengths=lengths), backend="torch").partition
    assert z32.dtype == torch.float32
    assert ((z32.double() - z64).abs() / z64.abs()).max() < 1e-6


def test_rejects_other_semirings_and_durations():
    pots = sf.SegmentPotentials(torch.randn(1, 3, 2), transition=torch.zeros(2, 2), duration=torch.zeros(2, 2))
    _, args = _engine_args(pots, sf.LogSemiring)
    with pytest.raises(ValueError, match="K = 1"):
        linear_chain.linear_chain_scan(sf.LogSemiring, *args)
    assert not linear_chain.supports(sf.EntropySemiring, torch.zeros(1, 1, 2))
    assert linear_chain.supports(sf.MaxSemiring, torch.zeros(1, 1, 2))


@pytest.mark.parametrize("case", ["finite", "grammar", "wide", "underflow"])
def test_each_log_path_matches_streaming_engine(case):
    """The scaled (probability-space) forward runs when transition columns span ≤ MAX_SPREAD (−inf
    entries are exact zeros); wider spreads, or a normaliser underflowing to 0 (a grammar forcing the
    path through labels of far worse emission), take the −inf-safe log-space loop. Both are exact."""
    g = torch.Generator().manual_seed(3)
    B, T, C = 3, 11, 4
    scores = torch.randn(B, T, C, generator=g, dtype=torch.float64)
    trans = torch.randn(C, C, generator=g, dtype=torch.float64)
    if case in ("grammar", "underflow"):
        trans[0, 1] = trans[2, 3] = -math.inf
    if case == "underflow":  # label 0 may not follow itself, and label 0 has by far the best emissions
        trans[0, 0] = -math.inf
        scores[..., 0] += 1000.0  # exp(-1000) underflows even in float64
    if case == "wide":
        trans[0] += linear_chain.MAX_SPREAD + 10
    assert linear_chain._scaled_ok(trans) == (case != "wide")
    pots = sf.SegmentPotentials(scores, transition=trans, duration=torch.randn(1, C, generator=g, dtype=torch.float64),
                                start=torch.randn(C, generator=g, dtype=torch.float64), lengths=torch.tensor([11, 6, 1]))
    inp, args = _engine_args(pots, sf.LogSemiring, leaves=True)
    w = inp.cum.diff(dim=1) + inp.duration[:, :1]
    scaled = linear_chain._log_scan_scaled(args[3][0], w, inp.transition, inp.end, inp.lengths, ragged=True)
    assert (scaled is None) == (case == "underflow")
    fast = linear_chain.linear_chain_scan(sf.LogSemiring, *args)
    ref = streaming.factored_scan(sf.LogSemiring, *args)
    assert torch.isfinite(ref).all()
    torch.testing.assert_close(fast, ref, rtol=1e-10, atol=1e-10)
    leaves = [inp.cum, inp.transition, inp.duration]
    for a, b in zip(torch.autograd.grad(fast.sum(), leaves, retain_graph=True), torch.autograd.grad(ref.sum(), leaves)):
        assert not torch.isnan(a).any()
        torch.testing.assert_close(a, b, rtol=1e-8, atol=1e-10)


@pytest.mark.parametrize("grammar", ["transition", "end"])
@pytest.mark.parametrize("gap", [90.0, 100.0, 103.0, 110.0])
def test_scaled_forward_never_drops_a_state_the_grammar_needs(grammar, gap):
    """fp32, log-softmax-like scores: a label `gap` nats behind the best at some token underflows in
    probability space (subnormal from ~87, zero from ~104). With −inf transitions or end weights the
    grammar can make that label the only way on: the call must then leave the scaled forward
    (it gave log Z = −120 for −110, a negative NLL and NaN gradients), with float64 values and
    gradients to fp32 precision."""
    inf = math.inf
    if grammar == "transition":  # labels A, B, X; A -> X, B -> B, X -> X only; the encoder says A, then B, B
        trans = torch.tensor([[-inf, -inf, 0.0], [-inf, 0.0, -inf], [-inf, -inf, 0.0]])
        scores = torch.tensor([[[0.0, -gap, -gap], [-60.0, 0.0, -60.0], [-60.0, 0.0, -60.0]]])
        end = None
    else:  # any transition; only label 1 may end the sequence, and the encoder says 0 to the end
        trans = torch.zeros(2, 2)
        scores = torch.tensor([[[0.0, -20.0], [0.0, -20.0], [0.0, -gap]]])
        end = torch.tensor([-inf, 0.0])

    def run(dtype, fast):
        leaves = [scores.to(dtype).requires_grad_(), trans.to(dtype).requires_grad_()]
        pots = sf.SegmentPotentials(leaves[0], transition=leaves[1], duration=torch.zeros(1, leaves[0].shape[-1], dtype=dtype),
                                    start=torch.zeros(leaves[0].shape[-1], dtype=dtype),
                                    end=None if end is None else end.to(dtype))
        inp, args = _engine_args(pots, sf.LogSemiring)
        z = (linear_chain.linear_chain_scan if fast else streaming.factored_scan)(sf.LogSemiring, *args)[0]
        return z, torch.autograd.grad(z.sum(), leaves)

    z32, g32 = run(torch.float32, fast=True)
    z64, g64 = run(torch.float64, fast=False)
    assert abs(z32.item() - z64.item()) <= 1e-6 * abs(z64.item())
    for a, b in zip(g32, g64):
        assert torch.isfinite(a).all()
        torch.testing.assert_close(a.double(), b, rtol=1e-4, atol=1e-5)
