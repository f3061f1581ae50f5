"""The edges of the model: sequences without any segmentation, half-precision
edges, degenerate sizes and malformed values.

Conventions checked here (docs/numerics.md, "Impossible sequences"): where
log Z = −inf, partition/max/kmax are −inf, entropy/cross-entropy/KL are 0,
marginals are 0, argmax/topk/sample give the empty structure, log_prob is
−inf, and nothing is NaN (forward or backward). Possible sequences of a mixed
batch are bitwise unaffected. Oracles: brute-force enumeration and the dense DP.
"""

import pytest
import torch

import semiring_flash as sf
from semiring_flash.ops import naive
from semiring_flash.ops import dispatch
from semiring_flash.ops.dispatch import entry_value
from semiring_flash.ops.dense import dense_edges, dense_factored

NEG = float("-inf")
TOL = dict(rtol=1e-9, atol=1e-9)
F64 = torch.float64


def _rand(*shape, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=F64)


# ------------------------------------------------------------------ impossible models
def _odd_lengths():
    """Only duration 2 is allowed: odd lengths have no tiling."""
    dur = _rand(3, 2, seed=1)
    dur[0] = NEG
    dur[2] = NEG
    return dict(scores=_rand(3, 5, 2), transition=_rand(2, 2, seed=2), duration=dur, lengths=torch.tensor([5, 4, 3]))


def _forbidden_transitions():
    """No transition at all (fixed start): only sequences of one segment (L ≤ K = 2) exist."""
    trans = torch.full((2, 2), NEG, dtype=F64)
    return dict(scores=_rand(3, 5, 2), transition=trans, duration=_rand(2, 2, seed=3), start=torch.zeros(2, dtype=F64),
                lengths=torch.tensor([5, 2, 1]))


def _label_durations():
    """Labels alternate (0→1, 1→0 only); label 0 lasts 1 token, label 1 lasts 3: L = 2 or 6 do not fit."""
    trans = torch.full((2, 2), NEG, dtype=F64)
    trans[0, 1] = 0.3
    trans[1, 0] = -0.2
    dur = torch.full((3, 2), NEG, dtype=F64)
    dur[0, 0] = 0.1
    dur[2, 1] = -0.4
    return dict(scores=_rand(3, 6, 2), transition=trans, duration=dur, lengths=torch.tensor([6, 2, 5]))


def _start_forbids_all():
    start = _rand(3, 2, seed=4)
    start[1] = NEG
    return dict(scores=_rand(3, 4, 2), transition=_rand(2, 2, seed=5), duration=_rand(2, 2, seed=6), start=start,
                lengths=torch.tensor([4, 3, 2]))


def _end_forbids_all():
    end = _rand(3, 2, seed=7)
    end[0] = NEG
    return dict(scores=_rand(3, 4, 2), transition=_rand(2, 2, seed=8), duration=_rand(2, 2, seed=9), end=end,
                lengths=torch.tensor([4, 4, 1]))


CASES = {
    "odd_lengths": _odd_lengths,
    "forbidden_transitions": _forbidden_transitions,
    "label_durations": _label_durations,
    "start_forbids_all": _start_forbids_all,
    "end_forbids_all": _end_forbids_all,
}
KINDS = ["factored", "edges"]


def _pick(v, b):
    return None if v is None else (v[b] if v.dim() == 2 else v)


def _example(kw, b, scale=1.0):
    """kwargs of naive.enumerate_factored_paths for sequence b."""
    return dict(scores=kw["scores"][b] * scale, transition=kw["transition"], duration=kw["duration"],
                init=_pick(kw.get("init"), b), start=_pick(kw.get("start"), b), end=_pick(kw.get("end"), b),
                length=int(kw["lengths"][b]))


def _pots(kw, scale=1.0):
    kw = dict(kw)
    return sf.SegmentPotentials(kw.pop("scores") * scale, **kw)


def _dist(kw, kind, scale=1.0, backend="torch"):
    p = _pots(kw, scale)
    if kind == "factored":
        return sf.SemiMarkovCRF(p, backend=backend)
    return sf.SemiMarkovCRF(p.to_edges(), lengths=p.lengths + 1, backend=backend)


def _paths(kw, b, scale=1.0):
    return naive.enumerate_factored_paths(**_example(kw, b, scale))


def _impossible_by_brute_force(kw):
    return torch.tensor([naive.oracle_logZ(_paths(kw, b)) == NEG for b in range(len(kw["lengths"]))])


def _is_empty(structure, kind):
    """(..., B) bool: the empty structure (no segment)."""
    if kind == "factored":
        return structure.empty()
    return (structure == 0).flatten(-4).all(-1)


def _no_nan(*xs):
    for x in xs:
        assert not torch.isnan(x).any()


@pytest.mark.parametrize("case", list(CASES))
def test_cases_mix_possible_and_impossible_sequences(case):
    dead = _impossible_by_brute_force(CASES[case]())
    assert dead.any() and not dead.all()


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("case", list(CASES))
def test_values_of_impossible_sequences(case, kind):
    kw = CASES[case]()
    d, q = _dist(kw, kind), _dist(kw, kind, scale=-0.5)
    dead = _impossible_by_brute_force(kw)
    assert torch.equal(d.impossible, dead)
    Z, mx, H, km, ce, kl = d.partition, d.max, d.entropy, d.kmax(3), d.cross_entropy(q), d.kl(q)
    _no_nan(Z, mx, H, km, ce, kl)
    assert (Z[dead] == NEG).all() and (mx[dead] == NEG).all() and (km[:, dead] == NEG).all()
    assert (H[dead] == 0).all() and (ce[dead] == 0).all() and (kl[dead] == 0).all()
    for b in (~dead).nonzero().flatten().tolist():
        P, Q = _paths(kw, b), _paths(kw, b, scale=-0.5)
        torch.testing.assert_close(Z[b], naive.oracle_logZ(P), **TOL)
        torch.testing.assert_close(H[b], naive.oracle_entropy(P), **TOL)
        torch.testing.assert_close(ce[b], naive.oracle_cross_entropy(P, Q), **TOL)
        torch.testing.assert_close(kl[b], naive.oracle_kl(P, Q), **TOL)
        torch.testing.assert_close(km[:, b], naive.oracle_kmax(P, 3), **TOL)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("case", list(CASES))
def test_structures_of_impossible_sequences_are_empty(case, kind):
    kw = CASES[case]()
    d = _dist(kw, kind)
    dead = d.impossible
    am, tk, smp = d.argmax, d.topk(2), d.sample((3,))
    assert torch.equal(_is_empty(am, kind), dead)
    assert _is_empty(tk, kind)[:, dead].all() and not _is_empty(tk, kind)[0, ~dead].any()
    assert _is_empty(smp, kind)[:, dead].all() and not _is_empty(smp, kind)[:, ~dead].any()
    if kind == "factored":
        assert (am.labels[dead] == -1).all() and not am.starts[dead].any()
    for value in (am, tk, smp):
        lp = d.log_prob(value)
        _no_nan(lp)
        assert (lp[..., dead] == NEG).all()
        assert torch.isfinite(lp[..., ~dead][0]).all()  # the best / first structure is a real one
    # any well-formed structure has log-probability −inf where there is none at all
    one_label = sf.Segmentation.from_segments([[(t, t + 1, 0) for t in range(int(L))] for L in kw["lengths"]], T=d.event_shape[0])
    value = one_label if kind == "factored" else _one_hot_edges(one_label, d.potentials.shape)
    lp = d.log_prob(value)
    _no_nan(lp)
    assert (lp[dead] == NEG).all()


def _one_hot_edges(seg, shape):
    out = torch.zeros(shape, dtype=F64)
    for b, segs in enumerate(seg.segments()):
        prev = 0
        for s, e, c in segs:
            out[b, s, e - s, c, prev] = 1
            prev = c
    return out


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("case", list(CASES))
def test_marginals_and_gradients_of_impossible_sequences(case, kind):
    kw = {k: (v.clone().requires_grad_() if k == "scores" else v) for k, v in CASES[case]().items()}
    d = _dist(kw, kind)
    dead = d.impossible
    m = d.marginals
    parts = [m.token, m.start, m.start_label, m.duration, m.transition, d.segment_marginals()] if kind == "factored" else [m]
    for x in parts:
        _no_nan(x)
        assert (x[dead] == 0).all()
    for b in (~dead).nonzero().flatten().tolist():
        if kind == "factored":
            torch.testing.assert_close(m.token[b], naive.oracle_factored_marginals(
                _paths(kw, b), d.potentials.T, 2, d.potentials.K, start="start" in kw)["token"], **TOL)
        else:
            ref = naive.oracle_edge_marginals(d.potentials[b].detach(), int(d.token_lengths[b]))
            torch.testing.assert_close(m[b], ref, **TOL)
    for value in (d.partition, d.entropy, d.max):
        g = torch.autograd.grad(value.sum(), kw["scores"] if kind == "factored" else d.log_potentials, retain_graph=True)[0]
        _no_nan(g)
        assert (g[dead] == 0).all()


def _subset(kw, keep):
    """The model of the sequences selected by the (B,) bool ``keep``."""
    per_sequence = lambda k, v: k in ("scores", "lengths") or (k in ("init", "start", "end") and v.dim() == 2)  # noqa: E731
    return {k: v[keep] if per_sequence(k, v) else v for k, v in kw.items()}


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("case", list(CASES))
def test_possible_sequences_are_bitwise_unaffected(case, kind):
    kw = CASES[case]()
    d = _dist(kw, kind)
    keep = ~d.impossible
    alone = _dist(_subset(kw, keep), kind)
    for name in ("partition", "max", "entropy"):
        assert torch.equal(getattr(d, name)[keep], getattr(alone, name)), name
    if kind == "factored":
        assert torch.equal(d.marginals.token[keep], alone.marginals.token)
        assert torch.equal(d.argmax.labels[keep], alone.argmax.labels)
    else:
        assert torch.equal(d.marginals[keep], alone.marginals)


SEMIRINGS = [sf.LogSemiring, sf.MaxSemiring, sf.EntropySemiring, sf.KMaxSemiring(2)]


@pytest.mark.parametrize("case", list(CASES))
def test_streaming_engine_equals_dense_dp_on_impossible_sequences(case):
    """The dense DP keeps no normaliser: its entropy of 0̄ is 0 by the algebra alone."""
    pots = _pots(CASES[case]())
    inp = dispatch.inputs([pots])
    tokens = pots.lengths
    for sr in SEMIRINGS:
        tau0 = entry_value(sr, inp.entry, inp.transition.dtype)
        ref = dense_factored(sr, inp.cum, inp.transition, inp.duration, tau0, inp.end, inp.lengths)
        torch.testing.assert_close(dispatch.value(sr, inp, "torch"), ref, **TOL)
        torch.testing.assert_close(dispatch.value(sr, dispatch.EdgeInputs(pots.to_edges(), tokens), "torch"), dense_edges(sr, pots.to_edges(), tokens), **TOL)
    for sr in (sf.CrossEntropySemiring, sf.KLDivergenceSemiring):
        pair = dispatch.inputs([pots, _pots(CASES[case](), scale=-0.5)])
        tau0 = entry_value(sr, pair.entry, pair.transition.dtype)
        ref = dense_factored(sr, pair.cum, pair.transition, pair.duration, tau0, pair.end, pair.lengths)
        torch.testing.assert_close(dispatch.value(sr, pair, "torch"), ref, **TOL)


def test_cross_entropy_is_inf_where_q_forbids_what_p_allows():
    """Not a convention: the true value (p puts mass where q has none); never NaN."""
    kw = _odd_lengths()
    free = dict(kw, duration=_rand(3, 2, seed=1))
    p, q = _dist(free, "factored"), _dist(kw, "factored")
    assert (p.cross_entropy(q) == float("inf")).all() and (p.kl(q) == float("inf")).all()


# ------------------------------------------------------------------ degenerate sizes
@pytest.mark.parametrize("B,T,K,C,ones", [(1, 1, 1, 1, False), (1, 3, 1, 1, False), (2, 2, 4, 2, False),
                                          (2, 3, 2, 2, True), (1, 1, 3, 3, False)])
@pytest.mark.parametrize("kind", KINDS)
def test_degenerate_sizes_against_brute_force(B, T, K, C, ones, kind):
    """B = 1, T = 1, K = 1, C = 1, K > T and lengths of 1: every property against enumeration."""
    kw = dict(scores=_rand(B, T, C), transition=_rand(C, C, seed=1), duration=_rand(K, C, seed=2),
              lengths=torch.ones(B, dtype=torch.long) if ones else torch.full((B,), T))
    d = _dist(kw, kind)
    lp = d.log_prob(d.argmax)
    ent, km = d.entropy, d.kmax(2)
    smp = d.sample((2,))
    _no_nan(lp, ent, km, d.log_prob(smp))
    for b in range(B):
        P = _paths(kw, b)
        torch.testing.assert_close(d.partition[b], naive.oracle_logZ(P), **TOL)
        torch.testing.assert_close(d.max[b], naive.oracle_max(P), **TOL)
        torch.testing.assert_close(ent[b], naive.oracle_entropy(P), **TOL)
        torch.testing.assert_close(km[:, b], naive.oracle_kmax(P, 2), **TOL)
    if kind == "edges":
        torch.testing.assert_close(lp, d.max - d.partition, **TOL)  # edges carry the initial label


# ------------------------------------------------------------------ half-precision edges
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_edges_are_computed_in_float32(dtype):
    """log Z ≈ 8·10⁴ here overflows float16 (max 65504): inputs are upcast, results float32."""
    T, K, C = 2000, 2, 2
    edges = (_rand(1, T, K + 1, C, C) + 40.0).to(dtype).requires_grad_()
    Z = sf.SemiMarkovCRF(edges).partition
    ref = sf.SemiMarkovCRF(edges.detach().double()).partition  # the same (rounded) numbers in float64
    assert Z.dtype == torch.float32 and torch.isfinite(Z).all() and float(ref) > 65504
    torch.testing.assert_close(Z.detach().double(), ref, rtol=1e-6, atol=0)
    (g,) = torch.autograd.grad(Z.sum(), edges)
    assert g.dtype == dtype and torch.isfinite(g.float()).all()


def test_half_precision_small_edges_all_properties():
    e = _rand(2, 4, 3, 2, 2).half()
    d, ref = sf.SemiMarkovCRF(e), sf.SemiMarkovCRF(e.double())
    for name in ("partition", "max", "entropy", "marginals"):
        assert getattr(d, name).dtype == torch.float32
        torch.testing.assert_close(getattr(d, name).double(), getattr(ref, name), rtol=1e-5, atol=1e-5)
    assert torch.equal(d.argmax.double(), ref.argmax)
    torch.testing.assert_close(d.log_prob(d.argmax).double(), ref.log_prob(ref.argmax), rtol=1e-5, atol=1e-5)


# ------------------------------------------------------------------ clear errors and empty results
@pytest.mark.parametrize("kind", KINDS)
def test_sample_of_zero_draws_is_empty(kind):
    d = _dist(_odd_lengths(), kind)
    s = d.sample((0,))
    if kind == "factored":
        assert s.labels.shape == (0, 3, 5) and s.starts.shape == (0, 3, 5)
    else:
        assert s.shape == (0, *d.potentials.shape)
    assert d.sample((2, 0)).__class__ is s.__class__
    with pytest.raises(TypeError, match="sample_shape"):
        d.sample(3)
    with pytest.raises(ValueError, match="non-negative"):
        d.sample((-1,))


def test_to_parts_names_a_gap_longer_than_k():
    with pytest.raises(ValueError, match="gap of 4"):
        sf.SemiMarkov.to_parts(torch.tensor([[0, -1, -1, -1, 1]]), (2, 3))
    with pytest.raises(ValueError, match=r"\[-1, 2\)"):
        sf.SemiMarkov.to_parts(torch.tensor([[0, 2]]), (2, 3))
    with pytest.raises(TypeError, match="integer"):
        sf.SemiMarkov.to_parts(torch.tensor([[0.0, 1.0]]), (2, 3))
    parts = sf.SemiMarkov.to_parts(torch.tensor([[0, -1, 1, -1, 1]]), (2, 3))
    assert parts.sum() == 2 and parts[0, 0, 2, 1, 0] == 1 and parts[0, 2, 2, 1, 1] == 1


def _edge_case():
    e = _rand(2, 4, 3, 2, 2)
    d = sf.SemiMarkovCRF(e, lengths=torch.tensor([5, 4]))
    return d, d.argmax.clone()


@pytest.mark.parametrize("edit,match", [
    (lambda v: v * 0.5, "0 or 1"),
    (lambda v: v * 2, "0 or 1"),
    (lambda v: v.index_put_((torch.tensor(0), torch.tensor(0), torch.tensor(1), torch.tensor(1), torch.tensor(1)),
                            torch.tensor(1.0, dtype=F64)), "several segments"),
    (lambda v: v.index_put_((torch.tensor(1), torch.tensor(3), torch.tensor(1), torch.tensor(0), torch.tensor(0)),
                            torch.tensor(1.0, dtype=F64)), "past its length|tile"),
])
def test_edge_log_prob_rejects_malformed_values(edit, match):
    d, v = _edge_case()
    with pytest.raises(ValueError, match=match):
        d.log_prob(edit(v))


def test_edge_log_prob_rejects_broken_chains():
    d, v = _edge_case()
    # move sequence 0's first segment to duration 1: the next one no longer starts where it ends
    n, k, c, cp = v[0].nonzero()[0].tolist()
    if k != 1:
        w = v.clone()
        w[0, n, k, c, cp] = 0
        w[0, n, 1, c, cp] = 1
        with pytest.raises(ValueError, match="tile"):
            d.log_prob(w)
    # a wrong previous label on the second segment
    segs = v[0].nonzero().tolist()
    if len(segs) > 1:
        w = v.clone()
        n, k, c, cp = segs[1]
        w[0, n, k, c, cp] = 0
        w[0, n, k, c, 1 - cp] = 1
        with pytest.raises(ValueError, match="previous label"):
            d.log_prob(w)
    w = v.clone()
    n, k, c, cp = segs[0]
    w[0, n, k, c, cp] = 0
    w[0, n, 0, c, cp] = 1
    with pytest.raises(ValueError, match="duration index 0"):
        d.log_prob(w)


def test_log_prob_of_the_empty_structure_is_minus_inf():
    d, v = _edge_case()
    lp = d.log_prob(torch.zeros_like(v))
    assert (lp == NEG).all()
    f = _dist(_odd_lengths(), "factored")
    empty = f.sample((0,))  # shapes only; build an empty segmentation of the batch
    seg = sf.Segmentation(torch.full((3, 5), -1), torch.zeros(3, 5, dtype=torch.bool), f.token_lengths)
    assert empty.labels.shape[1:] == seg.labels.shape
    assert (f.log_prob(seg) == NEG).all()
    bad = sf.Segmentation(torch.zeros(3, 5, dtype=torch.long), torch.zeros(3, 5, dtype=torch.bool), f.token_lengths)
    with pytest.raises(ValueError, match="starts"):
        f.log_prob(bad)


# ------------------------------------------------------------------ Triton kernels (interpreter on CPU, or CUDA)
def _kernel_device() -> str:
    """'cuda', or 'cpu' when the kernels run in the Triton interpreter; else skip."""
    pytest.importorskip("triton")
    if torch.cuda.is_available():
        return "cuda"
    pytest.importorskip("semiring_flash.ops.triton")
    from semiring_flash.ops.triton.kernels import scan_fwd_kernel

    if type(scan_fwd_kernel).__name__ != "InterpretedFunction":
        pytest.skip("Triton kernels compiled for a GPU but no CUDA device (TRITON_INTERPRET unset at import)")
    return "cpu"


def _to(kw, device):
    return {k: v.to(device) for k, v in kw.items()}


def _same(a, b):
    """Equal values, −inf and 0 at the same places (tolerance for the finite ones)."""
    a, b = a.detach().double().cpu(), b.detach().double().cpu()
    _no_nan(a)
    assert torch.equal(a == NEG, b == NEG)
    torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-9)


@pytest.mark.triton_interpret
@pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore::RuntimeWarning")
@pytest.mark.parametrize("case,kind", [("odd_lengths", "factored"), ("end_forbids_all", "factored"),
                                       ("label_durations", "edges")])
def test_triton_kernels_follow_the_conventions(case, kind):
    dev = _kernel_device()
    kw = _to(CASES[case](), dev)
    tri, ref = _dist(kw, kind, backend="triton"), _dist(kw, kind, backend="torch")
    for name in ("partition", "max", "entropy"):
        _same(getattr(tri, name), getattr(ref, name))
    _same(tri.kmax(2), ref.kmax(2))
    dead = ref.impossible
    if kind == "factored":
        am = tri.argmax  # the Viterbi kernel with its device backtrace
        assert torch.equal(am.labels.cpu(), ref.argmax.labels.cpu()) and torch.equal(am.starts.cpu(), ref.argmax.starts.cpu())
        assert am.empty().cpu().eq(dead.cpu()).all()
        _same(tri.marginals.token, ref.marginals.token)
    else:
        assert torch.equal(tri.argmax.cpu(), ref.argmax.cpu())
        _same(tri.marginals, ref.marginals)
    assert (tri.log_prob(tri.argmax)[dead] == NEG).all()
    alone = _dist(_subset(kw, ~dead), kind, backend="triton")
    assert torch.equal(tri.partition[~dead], alone.partition)  # possible sequences: bitwise unaffected
    tk = tri.topk(2)  # the k-max kernel's backward; ties (d1, d2 vs d2, d1) may swap equal-score channels
    assert _is_empty(tk, kind)[:, dead.to(dev)].all()
    _same(ref.log_prob(tk), ref.log_prob(ref.topk(2)))


@pytest.mark.triton_interpret
@pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore::RuntimeWarning")
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("seed,exact", [(1, False), (0, True)], ids=["random", "quarter_steps"])
def test_triton_argmax_never_uses_a_forbidden_duration(seed, exact, kind):
    """Per-label forbidden durations and transitions: every segment of the kernel's
    argmax (the Viterbi kernel for factored input, the max kernel's gradient for
    edges) is allowed and it scores the max. With scores on a grid of 1/4 the
    arithmetic is exact, so adjacent same-label segments tie exactly (d1, d2 vs
    d2, d1): the kernels then break ties as the torch engine does."""
    dev = _kernel_device()
    B, T, K, C = 3, 7, 3, 3
    grid = (lambda x: (x * 4).round() / 4) if exact else (lambda x: x)
    dur = grid(_rand(K, C, seed=seed))
    dur[torch.rand(K, C, generator=torch.Generator().manual_seed(seed)) < 0.4] = NEG
    dur[0, 0] = 0.0  # one duration-1 label keeps most lengths possible
    trans = grid(_rand(C, C, seed=seed + 10))
    trans[1, 2] = NEG
    kw = _to(dict(scores=grid(_rand(B, T, C, seed=seed + 20)), transition=trans, duration=dur,
                  lengths=torch.tensor([7, 5, 2])), dev)
    tri, ref = _dist(kw, kind, backend="triton"), _dist(kw, kind, backend="torch")
    a, r = tri.argmax, ref.argmax
    if kind == "factored":
        used = [(e - s, c) for segs in a.segments() for s, e, c in segs]
        same = torch.equal(a.labels.cpu(), r.labels.cpu()) and torch.equal(a.starts.cpu(), r.starts.cpu())
    else:
        used = [(d, c) for _, _, d, c, _ in a.nonzero().tolist()]
        same = torch.equal(a.cpu(), r.cpu())
    assert used and all(1 <= d <= K and dur[d - 1, c] > NEG for d, c in used)
    _same(ref.log_prob(a), ref.log_prob(r))
    assert same or not exact
