"""SemiCRFHead: the loss is a proper NLL (checked by brute-force enumeration), constraints, decoding."""

from __future__ import annotations

import itertools
import math

import pytest
import torch

import semiring_flash as sf
from semiring_flash.nn import DurationModel, SemiCRFHead
from semiring_flash.tags import explode_segments, merge_runs

torch.set_default_dtype(torch.float32)


def compositions(n):
    """All ordered tuples of positive ints summing to n."""
    if n == 0:
        yield ()
        return
    for first in range(1, n + 1):
        for rest in compositions(n - first):
            yield (first,) + rest


def all_segmentations(L, C):
    for comp in compositions(L):
        for labels in itertools.product(range(C), repeat=len(comp)):
            segs, s = [], 0
            for d, c in zip(comp, labels):
                segs.append((s, s + d, c))
                s += d
            yield segs


def reference_score(head, scores, segs):
    """Score of a user segmentation computed from the head's parameters, independently of the core.

    Σ token scores + duration term + transition[prev, c] (+ start[c] for the first, + end[c] for the last),
    with long segments as m chunks of L_c plus a tail (module doc of semiring_flash.nn).
    """
    lay = head.layout
    dur = head.durations().double()
    trans = torch.where(head.allowed_transitions, head.transition, torch.tensor(-math.inf)).double()
    start = torch.where(head.allowed_start, head.start, torch.tensor(-math.inf)).double()
    end = torch.where(head.allowed_end, head.end, torch.tensor(-math.inf)).double()
    total = torch.zeros((), dtype=torch.float64)
    C = head.num_labels
    for i, (s, e, c) in enumerate(segs):
        n = e - s
        if head.first_token:  # the first token emits its own channel
            total = total + scores[s, C + c].double() + scores[s + 1:e, c].double().sum()
        else:
            total = total + scores[s:e, c].double().sum()
        if n <= lay.max_d[c]:
            total = total + dur[n - 1, c]
        elif lay.long[c]:
            body = n - 1 if head.first_token else n  # the chained part
            m = (body - lay.body_lo[c]) // lay.chunk_len[c]
            r = n - m * lay.chunk_len[c]  # the user-level length without the chunks
            total = total + m * head.chunk[c].double() + dur[r - 1, c]
        else:
            return torch.tensor(-math.inf, dtype=torch.float64)
        total = total + (start[c] if i == 0 else trans[segs[i - 1][2], c])
    return total + end[segs[-1][2]]


CONFIGS = [
    dict(max_duration=3, duration="table"),
    dict(max_duration=2, duration="geometric", long_segments=True),
    dict(max_duration=3, duration="poisson", min_duration=[1, 2, 1], long_segments=[False, True, True]),
    dict(max_duration=[2, 3, 1], duration="negbin", long_segments=[True, False, True]),
    dict(max_duration=3, duration="table", min_duration=2, long_segments=True,
         allowed_transitions=[[False, True, True], [True, False, False], [True, True, True]],
         allowed_start=[True, False, True], allowed_end=[False, True, True]),
    dict(max_duration=1, duration="table"),  # linear chain
    dict(max_duration=3, duration="negbin", first_token=True, min_duration=[1, 2, 1]),
    dict(max_duration=[2, 3, 2], duration="table", first_token=True, long_segments=[True, False, True],
         min_duration=[1, 1, 2], allowed_transitions=[[True, True, False], [True, False, True], [True, True, True]],
         allowed_end=[True, True, False]),
]


def make_head(cfg, seed=0):
    torch.manual_seed(seed)
    head = SemiCRFHead(4, 3, **cfg)
    assert head.proj.out_features == (6 if cfg.get("first_token") else 3)
    with torch.no_grad():  # random, non-trivial parameters
        for name, p in head.named_parameters():
            if name != "proj.bias":
                p.copy_(torch.randn_like(p) * 0.7)
    return head


@pytest.mark.parametrize("cfg", CONFIGS, ids=lambda c: "-".join(f"{k}={v}" for k, v in c.items())[:60])
def test_brute_force_normalisation_and_partition(cfg):
    head = make_head(cfg)
    B, T, C = 2, 6, 3
    lengths = torch.tensor([6, 4])
    feats = torch.randn(B, T, 4)
    dist = head(feats, lengths)
    scores = head.scores(feats).detach()
    logz = dist.partition.detach().double()
    for b in range(B):
        L = int(lengths[b])
        segs = list(all_segmentations(L, C))
        ref = torch.stack([reference_score(head, scores[b], s) for s in segs]).detach()
        # log_prob of every segmentation through the head, as one (N, B, T) Segmentation
        filler = _any_valid(head, int(lengths[1 - b]))
        rows = [[s if i == b else filler for i in range(B)] for s in segs]
        flat = sf.Segmentation.from_segments([r for row in rows for r in row], T=T)
        value = sf.Segmentation(flat.labels.view(-1, B, T), flat.starts.view(-1, B, T), lengths)
        lp = dist.log_prob(value)[:, b].double().detach()
        # 1) the core's gold scoring equals the reference (same convention)
        finite = torch.isfinite(ref)
        assert torch.equal(finite, torch.isfinite(lp)), "forbidden structures must get -inf log_prob, others finite"
        assert torch.allclose(lp[finite] + logz[b], ref[finite], atol=1e-4, rtol=1e-5)
        # 2) the partition is the log-sum over all segmentations; probabilities sum to one
        assert torch.allclose(torch.logsumexp(ref, 0), logz[b], atol=1e-4)
        assert abs(float(torch.logsumexp(lp, 0))) < 1e-4
        # 3) NLL >= 0
        assert (-lp[finite] >= -1e-5).all()


def _any_valid(head, L):
    """Some valid segmentation of length L under the head's constraints (brute force)."""
    scores = torch.zeros(L, head.num_channels)
    for s in all_segmentations(L, head.num_labels):
        if torch.isfinite(reference_score(head, scores, s)):
            return s
    raise AssertionError("no valid segmentation")


@pytest.mark.parametrize("cfg", CONFIGS[1:5] + CONFIGS[6:], ids=str)
def test_brute_force_argmax_topk_marginals(cfg):
    head = make_head(cfg, seed=1)
    T, C = 5, 3
    feats = torch.randn(1, T, 4)
    dist = head(feats)
    scores = head.scores(feats).detach()[0]
    segs = list(all_segmentations(T, C))
    ref = torch.stack([reference_score(head, scores, s) for s in segs]).detach()
    order = torch.argsort(ref, descending=True)
    best = float(ref[order[0]])
    for found in (dist.argmax.segments()[0], head.decode(feats)[0]):  # ties allowed
        assert math.isclose(float(reference_score(head, scores, found).detach()), best, rel_tol=1e-5, abs_tol=1e-4)
    assert math.isclose(float(dist.max.detach()), best, rel_tol=1e-5, abs_tol=1e-4)
    top = dist.topk(3).segments()
    n_finite = int(torch.isfinite(ref).sum())
    for i in range(min(3, n_finite)):
        assert math.isclose(float(reference_score(head, scores, top[i]).detach()), float(ref[order[i]]), rel_tol=1e-5, abs_tol=1e-4)
    # user-level marginals: token posteriors, segment starts (chunk continuations are not starts), transitions
    p = torch.softmax(ref, 0)
    tok = torch.zeros(T, C, dtype=torch.float64)
    start = torch.zeros(T, dtype=torch.float64)
    start_label = torch.zeros(T, C, dtype=torch.float64)
    trans = torch.zeros(C, C, dtype=torch.float64)
    for w, s in zip(p, segs):
        for i, (a, e, c) in enumerate(s):
            tok[a:e, c] += w
            start[a] += w
            start_label[a, c] += w
            if i:
                trans[s[i - 1][2], c] += w
    m = dist.marginals
    assert torch.allclose(m.token[0].double(), tok, atol=1e-4)
    assert torch.allclose(m.start[0].double(), start, atol=1e-4)
    assert torch.allclose(m.start_label[0].double(), start_label, atol=1e-4)
    assert torch.allclose(m.transition[0].double(), trans, atol=1e-4)
    # entropy of the segmentation distribution
    H = -(p[p > 0] * p[p > 0].log()).sum()
    assert math.isclose(float(dist.entropy.detach()), float(H), rel_tol=1e-4, abs_tol=1e-4)


def test_gold_formats_agree_and_loss_is_differentiable():
    head = make_head(dict(max_duration=3, long_segments=True))
    feats = torch.randn(2, 7, 4, requires_grad=True)
    lengths = torch.tensor([7, 5])
    gold = [[(0, 5, 0), (5, 7, 2)], [(0, 1, 1), (1, 2, 1), (2, 5, 0)]]
    seg = sf.Segmentation.from_segments(gold, T=7)
    l1 = head.loss(feats, lengths, gold)
    l2 = head.loss(feats, lengths, seg)
    l3 = head.loss(feats, lengths, (seg.labels, seg.starts))
    assert torch.allclose(l1, l2) and torch.allclose(l1, l3)
    assert torch.allclose(head.loss(feats, lengths, gold, reduction="sum"), 2 * l1)
    l1.backward()
    for name, p in [("features", feats)] + list(head.named_parameters()):
        if p.grad is not None:
            assert torch.isfinite(p.grad).all(), name


def test_constraints_no_nan_and_forbidden_gold():
    allowed = torch.tensor([[False, True, False], [False, False, True], [True, False, False]])  # 0 -> 1 -> 2 -> 0
    head = SemiCRFHead(4, 3, 4, duration="negbin", min_duration=[2, 1, 3], allowed_transitions=allowed,
                       allowed_start=[True, False, False], allowed_end=[False, False, True], long_segments=True)
    feats = torch.randn(3, 12, 4, requires_grad=True)
    lengths = torch.tensor([12, 9, 6])
    good = [[(0, 2, 0), (2, 3, 1), (3, 12, 2)], [(0, 5, 0), (5, 6, 1), (6, 9, 2)], [(0, 2, 0), (2, 3, 1), (3, 6, 2)]]
    loss = head.loss(feats, lengths, good)
    loss.backward()
    assert torch.isfinite(loss)
    for p in [feats] + [p for p in head.parameters() if p.grad is not None]:
        assert torch.isfinite(p.grad).all()
    dist = head(feats, lengths)
    assert torch.isfinite(dist.partition).all() and torch.isfinite(dist.entropy).all()
    m = dist.marginals
    assert torch.isfinite(m.token).all() and torch.allclose(m.token.sum(-1)[0], torch.ones(12), atol=1e-4)
    bad = [
        [(0, 2, 0), (2, 12, 2)],  # forbidden transition 0 -> 2
        [(0, 1, 0), (1, 2, 1), (2, 9, 2)],  # label 0 shorter than its min duration
        [(0, 2, 1), (2, 4, 2), (4, 6, 0)],  # forbidden start and end
    ]
    lp = dist.log_prob(bad)
    assert torch.isneginf(lp).all()
    for segs in head.decode(feats, lengths):  # decoding respects the grammar
        assert segs[0][2] == 0 and segs[-1][2] == 2
        for (_, _, a), (_, _, b) in zip(segs, segs[1:]):
            assert allowed[a, b]


def test_impossible_gold_raises_in_loss_with_reason():
    head = SemiCRFHead(4, 2, 3, min_duration=[1, 2], allowed_transitions=[[True, False], [True, True]])
    x = torch.randn(1, 5, 4)
    assert torch.isneginf(head(x).log_prob([[(0, 5, 0)]])).all()
    with pytest.raises(ValueError, match="long_segments"):
        head.loss(x, None, [[(0, 5, 0)]])
    with pytest.raises(ValueError, match="min_duration"):
        head.loss(x, None, [[(0, 3, 1), (3, 4, 1), (4, 5, 0)]])
    with pytest.raises(ValueError, match="transition 0 -> 1"):
        head.loss(x, None, [[(0, 2, 0), (2, 5, 1)]])
    assert torch.isinf(head.loss(x, None, [[(0, 2, 0), (2, 5, 1)]], check_gold=False))


@pytest.mark.parametrize("family", ["geometric", "poisson", "negbin"])
def test_parametric_durations_are_truncated_pmfs(family):
    dm = DurationModel(3, 20, family, min_duration=[1, 3, 5], max_durations=[20, 10, 7], init_mean=[2.0, 5.0, 6.0])
    logp = dm()
    assert torch.allclose(logp.exp().sum(0), torch.ones(3), atol=1e-5)
    assert torch.isneginf(logp[10:, 1]).all() and torch.isneginf(logp[:2, 1]).all() and torch.isneginf(logp[:4, 2]).all()
    un = DurationModel(1, 400, family, normalize=False, init_mean=7.0)()
    d = torch.arange(1, 401, dtype=torch.float64)
    mean = float((un.detach().exp().double()[:, 0] * d).sum())
    assert abs(un.exp().sum() - 1) < 1e-3 and abs(mean - 7.0) < 0.05, mean


def test_linear_chain_baseline_matches_runs():
    """K = 1 head on exploded gold: a linear-chain CRF; decoding merges runs back."""
    head = make_head(dict(max_duration=1))
    feats = torch.randn(1, 6, 4)
    gold = [(0, 3, 1), (3, 4, 0), (4, 6, 2)]
    loss = head.loss(feats, None, [explode_segments(gold)])
    assert torch.isfinite(loss) and loss >= 0
    segs = head.decode(feats)[0]
    assert all(e - s == 1 for s, e, _ in segs)
    assert merge_runs(segs) == merge_runs(segs)  # idempotent
    assert [c for s, e, c in merge_runs(segs) for _ in range(s, e)] == [c for _, _, c in segs]


def test_long_sequence_long_segments_finite():
    """T = 3000 with segments far longer than K: exact loss and gradients stay finite."""
    torch.manual_seed(0)
    head = SemiCRFHead(8, 3, 16, duration="negbin", long_segments=True, min_duration=[4, 1, 1])
    feats = torch.randn(2, 3000, 8)
    gold = [[(0, 1000, 0), (1000, 1010, 1), (1010, 3000, 2)], [(0, 7, 2), (7, 2500, 0)]]
    loss = head.loss(feats, torch.tensor([3000, 2500]), gold)
    loss.backward()
    assert torch.isfinite(loss) and loss > 0
    assert all(torch.isfinite(p.grad).all() for p in head.parameters() if p.grad is not None)
    seg = head(feats, torch.tensor([3000, 2500])).argmax
    assert all(s[-1][1] == L for s, L in zip(seg.segments(), [3000, 2500]))


@pytest.mark.parametrize("cfg", [pytest.param(CONFIGS[2], marks=pytest.mark.slow), CONFIGS[4], CONFIGS[7]],
                         ids=["poisson-long", "grammar", "first-token"])
def test_window_conditional_likelihood_is_exact(cfg):
    """prev/next labels: the loss on a window = −log p(window segments | segments outside), by brute force."""
    head = make_head(cfg, seed=3)
    T, C = 7, 3
    feats = torch.randn(1, T, 4)
    scores = head.scores(feats).detach()[0]
    segs_all = list(all_segmentations(T, C))
    ref = torch.stack([reference_score(head, scores, s) for s in segs_all]).detach()
    # a valid gold with >= 3 segments
    gold = next(s for s, r in zip(segs_all, ref) if torch.isfinite(r) and len(s) >= 3)
    for i, j in [(1, len(gold)), (0, len(gold) - 1), (1, len(gold) - 1)]:
        inner = gold[i:j]
        if not inner:
            continue
        a, b = inner[0][0], inner[-1][1]
        outside = gold[:i] + gold[j:]
        agree = torch.tensor([[x for x in s if x[1] <= a or x[0] >= b] == outside and
                              any(x[0] == a for x in s) and any(x[1] == b for x in s) for s in segs_all])
        cond = float(torch.logsumexp(ref[agree], 0)) - float(ref[segs_all.index(gold)])  # −log p(inner | outside)
        prev = torch.tensor([gold[i - 1][2] if i > 0 else -1])
        nxt = torch.tensor([gold[j][2] if j < len(gold) else -1])
        window = [[(s - a, e - a, c) for s, e, c in inner]]
        nll = head.loss(feats[:, a:b], None, window, reduction="none", prev_labels=prev, next_labels=nxt)
        assert math.isclose(float(nll.detach()), cond, rel_tol=1e-5, abs_tol=1e-4)


@pytest.mark.parametrize("features, lengths, error, match", [
    (torch.randn(2, 10), [10, 5], ValueError, r"features must be \(B, T, 8\)"),
    (torch.randn(2, 10, 7), [10, 5], ValueError, r"features must be \(B, T, 8\).*\(2, 10, 7\)"),
    (torch.ones(2, 10, 8, dtype=torch.long), [10, 5], TypeError, "floating-point"),
    (torch.randn(2, 10, 8), torch.tensor([10.0, 5.0]), TypeError, "lengths must be an integer"),
    (torch.randn(2, 10, 8), [11, 5], ValueError, "lengths must lie in"),
])
def test_head_bad_inputs_get_clear_errors(features, lengths, error, match):
    head = SemiCRFHead(8, 3, 4)
    with pytest.raises(error, match=match):
        head(features, lengths).partition
