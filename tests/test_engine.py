"""The streaming engine (ring + checkpoints + normaliser) against the dense DP, every semiring."""

import pytest
import torch
from hypothesis import given, settings, strategies as st

import semiring_flash as sf
from semiring_flash.ops.dispatch import entry_value
from semiring_flash.ops.dense import dense_edges, dense_factored
from semiring_flash.ops.streaming import edge_scan, factored_scan
from conftest import dot as _dot

SEMIRINGS = [sf.LogSemiring, sf.MaxSemiring, sf.EntropySemiring, sf.KMaxSemiring(3), sf.CrossEntropySemiring, sf.KLDivergenceSemiring]
NEG = float("-inf")


def _factored_case(sr, B, T, K, C, seed, neg_inf):
    g = torch.Generator().manual_seed(seed)
    pre = (sr.n_potentials,) if sr.n_potentials > 1 else ()
    r = lambda *s: torch.randn(*pre, *s, generator=g, dtype=torch.float64)  # noqa: E731
    cum = torch.cat([torch.zeros(*pre, B, 1, C, dtype=torch.float64), r(B, T, C).cumsum(-2)], -2)
    trans, dur, entry, end = r(B, C, C), r(B, K, C), r(B, C, C), r(B, C)
    if neg_inf:
        trans[..., 0, C - 1] = NEG
        dur[..., K - 1, 0] = NEG
    lengths = torch.randint(1, T + 1, (B,), generator=g)
    lengths[0] = T
    tau0 = entry_value(sr, entry, torch.float64)
    return [x.requires_grad_() for x in (cum, trans, dur, tau0.detach(), end)], lengths


def _check_euler(value, inputs):
    """Max/KMax values are positively homogeneous in the potentials, so each finite channel
    equals Σ input · gradient for ANY optimal path the gradient selects (robust to ties,
    which make the argmax itself ambiguous). The gradient must also be a 0/1 path indicator
    in the potentials that enter once per segment."""
    for k in range(value.shape[0]):
        for b in range(value.shape[1]):
            v = value[k, b]
            if not torch.isfinite(v):
                continue
            gs = torch.autograd.grad(v, inputs, retain_graph=True, allow_unused=True)
            total = sum(_dot(g, x) for g, x in zip(gs, inputs) if g is not None)
            torch.testing.assert_close(total, v.detach(), rtol=1e-9, atol=1e-9)


@settings(max_examples=30, deadline=None, derandomize=True)
@given(
    si=st.integers(0, len(SEMIRINGS) - 1), B=st.integers(1, 3), T=st.integers(1, 9), K=st.integers(1, 4),
    C=st.integers(1, 3), seed=st.integers(0, 2**16), every=st.integers(1, 5), neg=st.booleans(),
)
def test_factored_matches_dense(si, B, T, K, C, seed, every, neg):
    sr = SEMIRINGS[si]
    (cum, trans, dur, tau0, end), L = _factored_case(sr, B, T, K, C, seed, neg)
    sb = torch.zeros(B, T, C, dtype=torch.float64, requires_grad=True)
    sbp = sb if sr.n_potentials == 1 else sb.unsqueeze(0).expand(2, -1, -1, -1)
    args = (cum, trans, dur, tau0, end, L)
    a = factored_scan(sr, *args, start_bias=sbp, checkpoint_every=every)
    b = dense_factored(sr, *args, start_bias=sbp)
    torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)
    assert not torch.isnan(a).any()
    w = torch.randn(a.shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    w = torch.where(torch.isfinite(a), w, torch.zeros_like(w))
    ins = [cum, trans, dur, tau0, end, sb]
    if sr.name in ("max", "kmax"):
        _check_euler(a, ins)
        return
    ga = torch.autograd.grad((a.nan_to_num(0, 0, 0) * w).sum(), ins, allow_unused=True)
    gb = torch.autograd.grad((b.nan_to_num(0, 0, 0) * w).sum(), ins, allow_unused=True)
    for x, y in zip(ga, gb):
        if x is None or y is None:
            assert (x is None or not x.any()) and (y is None or not y.any())
            continue
        assert not torch.isnan(x).any()
        torch.testing.assert_close(x, y, rtol=1e-9, atol=1e-9)


@settings(max_examples=25, deadline=None, derandomize=True)
@given(
    si=st.integers(0, len(SEMIRINGS) - 1), B=st.integers(1, 3), T=st.integers(1, 8), K=st.integers(1, 4),
    C=st.integers(1, 3), seed=st.integers(0, 2**16), every=st.integers(1, 5), neg=st.booleans(),
)
def test_edges_match_dense(si, B, T, K, C, seed, every, neg):
    sr = SEMIRINGS[si]
    g = torch.Generator().manual_seed(seed)
    pre = (sr.n_potentials,) if sr.n_potentials > 1 else ()
    E = torch.randn(*pre, B, T, K + 1, C, C, generator=g, dtype=torch.float64)
    if neg:
        E[..., 1, 0, :] = NEG  # duration-1 segments of label 0 forbidden
    E.requires_grad_()
    L = torch.randint(1, T + 1, (B,), generator=g)
    a = edge_scan(sr, E, L, checkpoint_every=every)
    b = dense_edges(sr, E, L)
    torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)
    if sr.name in ("max", "kmax"):
        _check_euler(a, [E])
        return
    w = torch.where(torch.isfinite(a), torch.ones_like(a), torch.zeros_like(a))
    ga = torch.autograd.grad((a.nan_to_num(0, 0, 0) * w).sum(), E)[0]
    gb = torch.autograd.grad((b.nan_to_num(0, 0, 0) * w).sum(), E)[0]
    assert not torch.isnan(ga).any()
    torch.testing.assert_close(ga, gb, rtol=1e-9, atol=1e-9)


def test_all_paths_forbidden_gives_neg_inf_and_zero_grads():
    """A sequence with no valid segmentation: −inf value, zero (not NaN) gradients."""
    B, T, K, C = 2, 5, 2, 2
    scores = torch.randn(B, T, C, dtype=torch.float64, requires_grad=True)
    dur = torch.zeros(K, C, dtype=torch.float64)
    dur[:] = NEG  # no duration allowed at all
    dur.requires_grad_()
    trans = torch.zeros(C, C, dtype=torch.float64, requires_grad=True)
    for sr in SEMIRINGS[:4]:
        pots = sf.SegmentPotentials(scores, transition=trans, duration=dur)
        v = sf.SemiMarkov(sr).sum(pots, _raw=True)
        assert torch.isneginf(v[0]).all()
        gs = torch.autograd.grad(v[0].nan_to_num(0, 0, 0).sum(), [scores, trans, dur], allow_unused=True)
        for g in gs:
            assert g is None or not torch.isnan(g).any()


@pytest.mark.parametrize("every", [0, -3, 2.5, True, "4"])
def test_bad_checkpoint_interval_is_refused(every):
    """0 and negative intervals were silently replaced (by the default on the torch engine, by K
    on the kernels); a float was truncated."""
    from semiring_flash.ops.streaming import edge_scan
    from semiring_flash.validation import checkpoint_interval

    sr = sf.LogSemiring
    (cum, trans, dur, tau0, end), L = _factored_case(sr, 2, 8, 3, 2, 1, False)
    with pytest.raises(ValueError, match="checkpoint_every"):
        factored_scan(sr, cum, trans, dur, tau0, end, L, checkpoint_every=every)
    with pytest.raises(ValueError, match="checkpoint_every"):
        edge_scan(sr, torch.zeros(2, 8, 4, 2, 2, dtype=torch.float64), L, checkpoint_every=every)
    with pytest.raises(ValueError, match="checkpoint_every"):
        checkpoint_interval(every)
    assert checkpoint_interval(None) is None and checkpoint_interval(4) == 4


@pytest.mark.parametrize("sr", SEMIRINGS[:4], ids=lambda s: s.name)
def test_checkpoint_interval_does_not_change_results(sr):
    (cum, trans, dur, tau0, end), L = _factored_case(sr, 2, 40, 5, 3, 7, True)
    ref = factored_scan(sr, cum, trans, dur, tau0, end, L, checkpoint_every=40)
    g_ref = torch.autograd.grad(ref[0].sum(), [cum, trans, dur])
    for every in (1, 3, 7, 13):
        v = factored_scan(sr, cum, trans, dur, tau0, end, L, checkpoint_every=every)
        torch.testing.assert_close(v, ref, rtol=1e-12, atol=1e-12)
        for x, y in zip(torch.autograd.grad(v[0].sum(), [cum, trans, dur]), g_ref):
            torch.testing.assert_close(x, y, rtol=1e-10, atol=1e-10)
