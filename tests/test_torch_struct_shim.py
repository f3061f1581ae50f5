"""semiring_flash.torch_struct as a whole-module torch_struct replacement.

* names: every public name of torch-struct 0.5, ours or re-exported, and a
  clear error naming the extra when torch-struct is missing;
* StructDistribution: isinstance for ours and theirs, subclassing like theirs;
* the semiring interface: each operation against its definition and against
  torch-struct's semiring of the same name;
* the acid test: torch-struct's OWN structures (LinearChain, SemiMarkov,
  DepTree, CKY_CRF, CKY) run on our semiring objects and give torch-struct's
  numbers (sums and marginals);
* the semirings torch-struct has and we did not: Std, SparseMax,
  MultiSampled, TempMax, Checkpoint(Shard), Fast*.
"""

from __future__ import annotations

import importlib.util
import sys
import warnings

import pytest
import torch

torch_struct = pytest.importorskip("torch_struct")

import semiring_flash as sf  # noqa: E402
import semiring_flash.semirings as srs  # noqa: E402
import semiring_flash.torch_struct as sts  # noqa: E402
from semiring_flash import genbmm  # noqa: E402
from semiring_flash.ops.naive import count_edge_paths, enumerate_edge_paths, oracle_edge_marginals  # noqa: E402

warnings.filterwarnings("ignore", message=".*does not define `arg_constraints`.*")
F64 = torch.float64


def _close(a, b, tol=1e-9):
    torch.testing.assert_close(a, b, rtol=tol, atol=tol)


def _clone(x):
    # torch-struct calls requires_grad_ on what it is given: never hand it a shared tensor
    return tuple(t.clone() for t in x) if isinstance(x, tuple) else x.clone()


# ---------------------------------------------------------------------------- names
def test_every_torch_struct_name_is_provided():
    public = [n for n in dir(torch_struct) if not n.startswith("_")]
    missing = [n for n in public if not hasattr(sts, n)]
    assert not missing
    for name in public:
        if name in sts.REEXPORTED:
            assert getattr(sts, name) is getattr(torch_struct, name), name
        elif name != "version":
            assert getattr(sts, name) is not getattr(torch_struct, name), name  # ours
    assert sts.LogSemiring is sf.LogSemiring and sts.version == torch_struct.version
    assert set(sts.__all__) >= {"LinearChainCRF", "SemiMarkovCRF", "CheckpointSemiring", "FastLogSemiring"}


def test_unknown_name_is_a_plain_attribute_error():
    with pytest.raises(AttributeError, match="no attribute 'NoSuchThing'"):
        sts.NoSuchThing  # noqa: B018


def test_file_with_linear_chain_and_semimarkov_keeps_working():
    from semiring_flash.torch_struct import LinearChainCRF, SemiMarkovCRF

    g = torch.Generator().manual_seed(0)
    lc = torch.randn(2, 4, 3, 3, generator=g, dtype=F64)
    sm = torch.randn(2, 4, 3, 2, 2, generator=g, dtype=F64)
    _close(LinearChainCRF(lc).partition, torch_struct.LinearChainCRF(lc.clone()).partition)
    _close(LinearChainCRF(lc).marginals, torch_struct.LinearChainCRF(lc.clone()).marginals)
    ours = SemiMarkovCRF(sm)
    assert isinstance(ours, sf.SemiMarkovCRF)
    _close(ours.partition, torch_struct.SemiMarkovCRF(sm.clone()).partition)
    _close(ours.marginals, torch_struct.SemiMarkovCRF(sm.clone()).marginals)


def _shim_without_torch_struct(monkeypatch):
    """A fresh copy of the shim module imported while ``import torch_struct`` fails."""
    monkeypatch.setitem(sys.modules, "torch_struct", None)  # makes the import raise ImportError
    spec = importlib.util.spec_from_file_location("semiring_flash._shim_without_ts", sts.__file__)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_without_torch_struct_other_names_name_the_extra(monkeypatch):
    mod = _shim_without_torch_struct(monkeypatch)
    for name in ("LinearChainCRF", "TreeCRF", "DepTree", "deptree_part", "HMM", "Alignment"):
        with pytest.raises(mod.NotProvidedError, match=r"pip install 'semiring_flash\[torch-struct\]'"):
            getattr(mod, name)
        assert not hasattr(mod, name)  # NotProvidedError is an AttributeError
    assert "LinearChainCRF" not in mod.__all__
    # ours still work, and StructDistribution still recognises our distribution
    e = torch.randn(2, 4, 3, 2, 2)
    d = mod.SemiMarkovCRF(e)
    assert isinstance(d, mod.StructDistribution) and not isinstance(e, mod.StructDistribution)
    _close(d.partition, sf.SemiMarkovCRF(e).partition, 0)
    with pytest.raises(mod.NotProvidedError, match="torch-struct"):
        mod.StructDistribution(e)


def test_pyproject_has_the_extra_the_error_names():
    import tomllib
    from pathlib import Path

    meta = tomllib.loads((Path(sts.__file__).parents[1] / "pyproject.toml").read_text())
    assert meta["project"]["optional-dependencies"][sts.EXTRA] == ["torch-struct==0.5"]


# ----------------------------------------------------------------- StructDistribution
def test_struct_distribution_isinstance_ours_and_theirs():
    e = torch.randn(2, 4, 3, 2, 2)
    dists = [
        sts.SemiMarkovCRF(e),
        sf.SemiMarkovCRF(e),
        sts.LinearChainCRF(torch.randn(2, 4, 3, 3)),
        torch_struct.SemiMarkovCRF(e.clone()),
        torch_struct.DependencyCRF(torch.randn(2, 3, 3)),
    ]
    for d in dists:
        assert isinstance(d, sts.StructDistribution), type(d)
    assert not isinstance(e, sts.StructDistribution)
    assert not isinstance(torch.distributions.Normal(0.0, 1.0), sts.StructDistribution)
    assert issubclass(sf.SemiMarkovCRF, sts.StructDistribution)
    assert issubclass(torch_struct.TreeCRF, sts.StructDistribution)
    assert not issubclass(torch.distributions.Normal, sts.StructDistribution)


def test_struct_distribution_subclasses_like_torch_structs():
    class MyChain(sts.StructDistribution):
        struct = sts.LinearChain

    lp = torch.randn(2, 4, 3, 3, dtype=F64)
    mine, ref = MyChain(lp.clone()), torch_struct.LinearChainCRF(lp.clone())
    _close(mine.partition, ref.partition)
    _close(mine.argmax, ref.argmax)
    assert isinstance(mine, MyChain) and isinstance(mine, sts.StructDistribution)
    # the broad isinstance of the base does not leak into subclasses
    assert not isinstance(ref, MyChain) and not isinstance(sts.SemiMarkovCRF(torch.randn(1, 3, 2, 2, 2)), MyChain)


# ------------------------------------------------------------- semiring interface
OURS = {
    "log": srs.LogSemiring,
    "max": srs.MaxSemiring,
    "entropy": srs.EntropySemiring,
    "kmax3": srs.KMaxSemiring(3),
    "cross_entropy": srs.CrossEntropySemiring,
    "kl": srs.KLDivergenceSemiring,
    "sampled": srs.SampledSemiring,
    "multisampled": srs.MultiSampledSemiring,
    "sparsemax": srs.SparseMaxSemiring,
    "tempmax": srs.TempMax(3.0),
    "gumbelmax": srs.GumbelMaxSemiring(0.5),
    "gumbelcrf": srs.GumbelCRFSemiring(2.0),
    "std": srs.StdSemiring,
    "checkpoint_kmax2": srs.CheckpointSemiring(srs.KMaxSemiring(2)),
    "shard_entropy": srs.CheckpointShardSemiring(srs.EntropySemiring, 7),
    "fast_log": srs.FastLogSemiring,
    "fast_max": srs.FastMaxSemiring,
    "fast_sample": srs.FastSampleSemiring,
}
#: torch-struct's semiring of the same meaning (its 0̄ is −1e5 where ours is −inf)
THEIRS = {
    "log": torch_struct.LogSemiring,
    "max": torch_struct.MaxSemiring,
    "entropy": torch_struct.EntropySemiring,
    "kmax3": torch_struct.KMaxSemiring(3),
    "cross_entropy": torch_struct.CrossEntropySemiring,
    "kl": torch_struct.KLDivergenceSemiring,
    "std": torch_struct.StdSemiring,
    "checkpoint_kmax2": torch_struct.KMaxSemiring(2),
    "shard_entropy": torch_struct.EntropySemiring,
    "fast_log": torch_struct.LogSemiring,
    "fast_max": torch_struct.MaxSemiring,
}


def _values(sr, shape, seed):
    """Generic values (S, *shape) of sr: ⊕ of a few converted potentials (so every channel is live)."""
    g = torch.Generator().manual_seed(seed)
    P = () if sr.n_potentials == 1 else (2,)
    w = torch.rand(*P, 4, *shape, generator=g, dtype=F64) * 4 - 2
    if not sr.log_space:
        w = w.exp()
    v = sr.convert(w)  # (S, 4, *shape)
    return sr.sum(v.movedim(1, -1), -1)


@pytest.mark.parametrize("name", list(OURS))
def test_semiring_interface_against_definitions(name):
    sr = OURS[name]
    S = sr.size()
    a, b, c = (_values(sr, (2, 3, 4), seed) for seed in (1, 2, 3))
    assert a.shape == (S, 2, 3, 4)
    if S == 1:  # a number, as torch-struct code uses it
        assert isinstance(sr.zero, float) and isinstance(sr.one, float)
        assert torch.full((2,), sr.zero).tolist() == [sr._zero[0]] * 2
        assert torch.zeros(3).masked_fill(torch.tensor([True, False, True]), sr.zero)[0] == sr._zero[0]
    else:
        assert sr.zero.shape == sr.one.shape == (S,)
    zeros, ones = sr.zeros((2, 3, 4), F64), sr.ones((2, 3, 4), F64)
    _close(sr.zero_(torch.empty_like(a)), zeros, 0)
    _close(sr.one_(torch.empty_like(a)), ones, 0)
    # identities: x ⊕ 0̄ = x, x ⊗ 1̄ = x
    _close(sr.plus(a, zeros), a)
    _close(sr.mul(a, ones), a)
    _close(sr.times(a, b, c), sr.mul(sr.mul(a, b), c))
    _close(sr.times(a), a)
    # sum's default dim is the last one
    _close(sr.sum(a), sr.sum(a, a.dim() - 1))
    # prod of converted potentials = their ⊗
    w = torch.rand(*(() if sr.n_potentials == 1 else (2,)), 2, 5, dtype=F64) + 0.5
    cw = sr.convert(w)
    _close(sr.prod(cw, -1), sr.times(*cw.unbind(-1)))
    # matmul: ⊕_k a[..., i, k] ⊗ b[..., k, j], with broadcast batch dims; dot via matmul
    m1, m2 = a[..., :2], b[:, :1, :2, :]  # (S, 2, 3, 2) × (S, 1, 2, 4)
    got = sr.matmul(m1, m2)
    assert got.shape == (S, 2, 3, 4)
    for i in range(3):
        for j in range(4):
            terms = torch.stack([sr.mul(m1[..., i, k], m2[..., k, j]) for k in range(2)], -1)
            _close(got[..., i, j], sr.sum(terms, -1))
    _close(sr.dot(a, b), sr.sum(sr.mul(a, b), -1))
    # masks: zero_mask_ in place, fill out of place; both channel-wise
    mask = torch.rand(2, 3, 4, generator=torch.Generator().manual_seed(5)) < 0.5
    want = torch.where(mask, zeros, a)
    _close(sr.zero_mask_(a.clone(), mask), want, 0)
    _close(sr.fill(a, mask, sr.zero), want, 0)
    _close(sr.fill(a, ~mask, sr.one), torch.where(~mask, ones, a), 0)


@pytest.mark.parametrize("name", list(THEIRS))
def test_semiring_ops_match_torch_structs(name):
    """matmul, dot, sum, mul, convert and unconvert give torch-struct's numbers on finite values."""
    sr, ts_sr = OURS[name], THEIRS[name]
    a, b = _values(sr, (2, 3, 4), 1), _values(sr, (2, 4, 3), 2)
    if name.startswith(("kmax", "checkpoint_kmax")):  # torch-struct's k-max ⊕ only runs on dim -1
        a, b = a.clamp(min=-1e4), b.clamp(min=-1e4)
    _close(sr.matmul(a, b), ts_sr.matmul(a, b))
    _close(sr.dot(a, b.transpose(-1, -2)), ts_sr.dot(a, b.transpose(-1, -2)))
    _close(sr.sum(a), ts_sr.sum(a))
    _close(sr.mul(a, b.transpose(-1, -2)), ts_sr.mul(a, b.transpose(-1, -2)))
    assert sr.size() == ts_sr.size()
    w = torch.rand(*(() if sr.n_potentials == 1 else (2,)), 2, 3, dtype=F64) + 0.5
    ours_c, theirs_c = sr.convert(w), ts_sr.convert(w)
    _close(ours_c.clamp(min=-1e5), theirs_c)  # 0̄ channels: −inf here, −1e5 there
    _close(sr.unconvert(ours_c), ts_sr.unconvert(theirs_c))
    # unconvert of a tensor whose dim 0 is not a channel: torch-struct squeezes (a no-op), or indexes
    x = torch.rand(3, 2, dtype=F64)
    assert sr.unconvert(x).shape == ts_sr.unconvert(x).shape
    if sr.n_potentials == 2:  # the pair as torch-struct code passes it: a list [p, q]
        _close(sr.convert(list(w.unbind(0))), ts_sr.convert(list(w.unbind(0))))


@pytest.mark.parametrize("name", ["max", "kmax3"])
def test_sparse_sum_matches_torch_structs(name):
    sr, ts_sr = OURS[name], THEIRS[name]
    a = _values(sr, (2, 5), 3).clamp(min=-1e4)
    got, ref = sr.sparse_sum(a), ts_sr.sparse_sum(a)
    _close(got[0], ref[0])
    for x, y in zip(got[1], ref[1]):
        assert torch.equal(x.cpu(), y.cpu())


def test_kmax_factory_and_class_style_use():
    sr = sts.KMaxSemiring(4)
    assert sr.size() == 4 and sr == srs.KMaxSemiring(4) and sr != srs.KMaxSemiring(3)
    x = torch.randn(4, 3, 5)
    _close(sts.LogSemiring.sum(x), torch.logsumexp(x, -1), 1e-6)  # used like torch-struct's classes
    assert sts.SemiMarkov(sts.MaxSemiring).semiring is sf.MaxSemiring
    for bad in (0, -1, 2.0, True, torch.tensor(2.0), "2"):
        with pytest.raises(ValueError, match="k must be a positive int"):
            sts.KMaxSemiring(bad)
    np = pytest.importorskip("numpy")
    for k in (np.int64(3), torch.tensor(3)):  # any integer, as torch-struct takes
        assert sts.KMaxSemiring(k) == srs.KMaxSemiring(3)
    e = torch.randn(2, 4, 3, 2, 2, dtype=F64)
    _close(sts.SemiMarkovCRF(e).kmax(np.int64(3)), torch_struct.SemiMarkovCRF(e.clone()).kmax(3))


# ------------------------------------------------------ torch-struct's structures on ours
B, N, C, K, NT, T = 2, 4, 3, 3, 2, 3


def _inputs(structure, seed):
    g = torch.Generator().manual_seed(seed)

    def r(*shape):
        return torch.randn(*shape, generator=g, dtype=F64)

    return {
        "LinearChain": lambda: r(B, N, C, C),
        "SemiMarkov": lambda: r(B, N, K, C, C),
        "DepTree": lambda: r(B, N, N),
        "CKY_CRF": lambda: r(B, N, N, NT),
        "CKY": lambda: (r(B, N, T), r(B, NT, NT + T, NT + T), r(B, NT)),
    }[structure]()


def _value_and_marginals(struct_cls, sr, x, raw):
    s = struct_cls(sr)
    value = s.sum(_clone(x), _raw=raw)
    marg = s.marginals(_clone(x), _raw=raw)
    return value, marg


def _assert_same(got, want):
    _close(got[0], want[0])
    if isinstance(got[1], (tuple, list)):
        for g, w in zip(got[1], want[1]):
            _close(g, w)
    else:
        _close(got[1], want[1])


# (structure, our semiring, torch-struct's semiring); combinations torch-struct 0.5 itself runs
# on torch 2.x (its DepTree with Log/Max and its CKY(_CRF) with matmul-overriding semirings
# fail there with in-place autograd errors of its own).
ACID = [
    (s, ours, theirs)
    for s in ("LinearChain", "SemiMarkov", "CKY_CRF", "CKY")
    for ours, theirs in (
        ("log", "log"), ("max", "max"), ("kmax3", "kmax3"), ("fast_log", "log"), ("fast_max", "max"),
    )
] + [
    (s, ours, "entropy") for s in ("LinearChain", "SemiMarkov", "CKY_CRF", "DepTree") for ours in ("entropy",)
] + [
    (s, ours, theirs)
    for s in ("LinearChain", "SemiMarkov")
    for ours, theirs in (("std", "std"), ("checkpoint_kmax2", "checkpoint_kmax2"), ("shard_entropy", "shard_entropy"))
] + [("DepTree", "kmax3", "kmax3")]


@pytest.mark.parametrize("structure,ours,theirs", ACID, ids=["-".join(a) for a in ACID])
def test_torch_struct_structures_on_our_semirings(structure, ours, theirs):
    x = _inputs(structure, 0)
    sr = OURS[ours]
    if not sr.log_space:
        x = x.exp() * 0.3
    raw = sr.size() > 1 and ours not in ("entropy", "shard_entropy")
    struct_cls = getattr(torch_struct, structure)  # theirs (our SemiMarkov is tested in compat/)
    if structure in sts.REEXPORTED:
        assert getattr(sts, structure) is struct_cls
    got = _value_and_marginals(struct_cls, sr, x, raw)
    want = _value_and_marginals(struct_cls, THEIRS[theirs], x, raw)
    _assert_same(got, want)


def _dep_oracle(x, semiring):
    """torch-struct's DepTree with a semiring its DepTree can run on torch 2.x: channel 0 of
    Entropy is log Z, KMax(1) is max; marginals by autograd of that channel."""
    leaf = x.clone().requires_grad_()
    v = torch_struct.DepTree(semiring).sum(leaf, _raw=True)[0]
    return v.detach(), torch.autograd.grad(v.sum(), leaf)[0]


@pytest.mark.parametrize("ours,oracle", [("log", "entropy"), ("fast_log", "entropy"), ("max", "kmax1"), ("fast_max", "kmax1")])
def test_torch_struct_deptree_on_our_log_max(ours, oracle):
    x = _inputs("DepTree", 1)
    ts_sr = torch_struct.EntropySemiring if oracle == "entropy" else torch_struct.KMaxSemiring(1)
    got = _value_and_marginals(sts.DepTree, OURS[ours], x, False)
    _assert_same(got, _dep_oracle(x, ts_sr))
    # the distribution class on top of the struct, as torch-struct users write it
    dist = sts.DependencyCRF(x.clone())
    _close(dist._struct(OURS[ours]).sum(x.clone()), got[0])


def test_fast_semirings_call_genbmm(monkeypatch):
    calls = []
    for fn in ("logbmm", "maxbmm", "samplebmm"):
        real = getattr(genbmm, fn)
        monkeypatch.setattr(genbmm, fn, lambda a, b, _real=real, _fn=fn: calls.append(_fn) or _real(a, b))
    lp = _inputs("LinearChain", 2)
    for sr in (sts.FastLogSemiring, sts.FastMaxSemiring, sts.FastSampleSemiring):
        sts.LinearChain(sr).marginals(lp.clone())
    assert set(calls) == {"logbmm", "maxbmm", "samplebmm"}
    # value × value product with batch broadcast, the way torch-struct's structures call it
    a, b = torch.randn(1, 2, 1, 3, 4, dtype=F64), torch.randn(1, 1, 5, 4, 2, dtype=F64)
    _close(sts.FastLogSemiring.matmul(a, b), srs.LogSemiring.matmul(a, b))
    _close(sts.FastMaxSemiring.matmul(a, b), srs.MaxSemiring.matmul(a, b))


def _is_chain_indicator(m):
    """m (B, N, C, C) holds one label transition per position, chained (a LinearChain path)."""
    if not bool(((m == 0) | (m == 1)).all()) or not bool((m.sum((-1, -2)) == 1).all()):
        return False
    cur, prev = m.sum(-1), m.sum(-2)  # (B, N, C): label at n+1 and at n
    return bool((cur[:, :-1] == prev[:, 1:]).all())


def test_fast_sample_gives_linear_chain_samples():
    lp = _inputs("LinearChain", 3)
    torch.manual_seed(0)
    sample = sts.LinearChain(sts.FastSampleSemiring).marginals(lp.clone())
    assert _is_chain_indicator(sample)


# -------------------------------------------------------- the semirings that are new here
def test_std_counts_linear_chain_paths_and_is_refused_by_our_engine():
    ones = torch.ones(2, N, C, C, dtype=F64)
    _close(sts.LinearChain(sts.StdSemiring).sum(ones), torch.full((2,), float(C ** (N + 1)), dtype=F64))
    with pytest.raises(TypeError, match="log-space"):
        sf.SemiMarkov(srs.StdSemiring)


def test_shim_semimarkov_hands_semirings_we_do_not_run_to_torch_struct(monkeypatch):
    """Counting, torch-struct classes we do not map and a user's own torch-struct-style semiring:
    the shim's SemiMarkov is torch-struct's own for them (same numbers), so such code keeps working;
    without torch-struct, a TypeError."""

    class MyLog(torch_struct.Semiring):  # torch-struct style: class-level static operations
        zero = -1e5

        @staticmethod
        def sum(xs, dim=-1):
            return torch.logsumexp(xs, dim=dim)

        @staticmethod
        def mul(a, b):
            return a + b

        @staticmethod
        def zero_(xs):
            return xs.fill_(-1e5)

        @staticmethod
        def one_(xs):
            return xs.fill_(0.0)

    x = _inputs("SemiMarkov", 5)
    ones = torch.ones_like(x)
    for semiring, theirs, inp in [(srs.StdSemiring, torch_struct.StdSemiring, ones),
                                  (torch_struct.StdSemiring, torch_struct.StdSemiring, ones),
                                  (MyLog, MyLog, x), (torch_struct.GumbelMaxSemiring(1.0), None, x)]:
        struct = sts.SemiMarkov(semiring)
        assert isinstance(struct, torch_struct.SemiMarkov)
        if theirs is not None:
            _close(struct.sum(inp.clone()), torch_struct.SemiMarkov(theirs).sum(inp.clone()))
    _close(sts.SemiMarkov(MyLog).sum(x.clone()), sts.SemiMarkov(sts.LogSemiring).sum(x))
    assert type(sts.SemiMarkov(sts.LogSemiring)) is sts.SemiMarkov  # ours where our engines run it
    named = type("MaxSemiring", (MyLog,), {})  # a user's class named like one of torch-struct's: its own operations
    assert isinstance(sts.SemiMarkov(named), torch_struct.SemiMarkov)
    _close(sts.SemiMarkov(named).sum(x.clone()), sts.SemiMarkov(sts.LogSemiring).sum(x))
    monkeypatch.setattr(sts, "_ts", None)
    with pytest.raises(TypeError, match="not supported"):
        sts.SemiMarkov(MyLog)


def _sparsemax_kkt(x, p):
    """p = argmax_{p in simplex} <p, x> − ½‖p‖² ⟺ p ≥ 0, Σp = 1, x − p = τ on the support, x ≤ τ off it.

    Returns the value there, <p, x> + ½(1 − ‖p‖²)."""
    assert torch.all(p >= 0) and torch.allclose(p.sum(-1), torch.ones(()).to(p))
    supp = p > 0
    tau = ((x - p) * supp).sum(-1, keepdim=True) / supp.sum(-1, keepdim=True)
    assert torch.allclose(torch.where(supp, x - p, tau), tau.expand_as(x), atol=1e-9)
    assert torch.all(torch.where(supp, tau, x) <= tau + 1e-9)
    return (p * x).sum(-1) + 0.5 * (1 - (p * p).sum(-1))


def test_sparsemax_sum_is_the_smoothed_max_and_its_gradient_sparsemax():
    g = torch.Generator().manual_seed(4)
    x = (torch.randn(5, 6, generator=g, dtype=F64) * torch.tensor([0.1, 0.3, 1, 3, 10], dtype=F64).view(5, 1))
    x[0, :3] = float("-inf")
    leaf = x.clone().requires_grad_()
    v = srs.SparseMaxSemiring.sum(leaf.unsqueeze(0))[0]
    (p,) = torch.autograd.grad(v.sum(), leaf)
    fin = x > float("-inf")
    assert torch.all(p[~fin] == 0)
    _close(v, _sparsemax_kkt(torch.where(fin, x, x[fin].min() - 10), p))  # any value below the support
    assert torch.all(v >= x.max(-1).values) and torch.all(v <= x.max(-1).values + 0.5)
    dead = srs.SparseMaxSemiring.sum(torch.full((1, 2, 3), float("-inf"), dtype=F64, requires_grad=True))
    assert torch.all(dead == float("-inf"))


def test_sparsemax_marginals_are_a_distribution_over_paths():
    lp = _inputs("LinearChain", 5)
    m = sts.LinearChain(sts.SparseMaxSemiring).marginals(lp.clone())
    assert torch.all(m >= 0)
    _close(m.sum((-1, -2)), torch.ones(B, N, dtype=F64))
    assert (m == 0).any()  # sparse, unlike the log semiring's marginals
    # our own SemiMarkov runs it too, and its marginals are a distribution over segmentations
    e = _inputs("SemiMarkov", 6)
    sm = sf.SemiMarkov(srs.SparseMaxSemiring).marginals(e)
    assert torch.all(sm >= 0) and torch.all(sm[:, :, 0] == 0)


def test_tempmax_is_max_forward_with_a_softmax_gradient():
    x = torch.randn(1, 3, 5, dtype=F64, requires_grad=True)
    sr = sts.TempMax(2.5)
    v = sr.sum(x)
    _close(v, x.max(-1).values)
    (gx,) = torch.autograd.grad(v.sum(), x)
    _close(gx, torch.softmax(2.5 * x.detach(), -1))
    m, (zeros, soft) = sr.sparse_sum(x.detach())
    _close(m, x.detach().max(-1).values)
    _close(soft, torch.softmax(2.5 * x.detach(), -1))
    # on a structure: the max value, and a smoothed argmax that is a distribution per position
    lp = _inputs("LinearChain", 7)
    _close(sts.LinearChain(sr).sum(lp.clone()), sts.LinearChain(sts.MaxSemiring).sum(lp.clone()))
    _close(sts.LinearChain(sr).marginals(lp.clone()).sum((-1, -2)), torch.ones(B, N, dtype=F64))


@pytest.mark.parametrize("structure", ["LinearChain", "SemiMarkov"])
def test_multisampled_marginals_hold_sixteen_samples(structure):
    x = _inputs(structure, 8)
    torch.manual_seed(1)
    if structure == "LinearChain":
        marg = sts.LinearChain(sts.MultiSampledSemiring).marginals(x.clone())
        samples = [srs.MultiSampledSemiring.to_discrete(marg, j) for j in range(16)]
        assert all(_is_chain_indicator(s) for s in samples)
    else:
        marg = sf.SemiMarkov(sts.MultiSampledSemiring).marginals(x)
        samples = [srs.MultiSampledSemiring.to_discrete(marg, j) for j in range(16)]
        for s in samples:  # each one segmentation: from_parts / to_parts round trip
            seq, extra = sf.SemiMarkov.from_parts(s)
            assert torch.equal(sf.SemiMarkov.to_parts(seq, extra).to(s.dtype), s)
    assert len({tuple(s.flatten().tolist()) for s in samples}) > 1  # not one path repeated
    # the marginals are the union of the samples' bits
    assert torch.equal(((marg.round().long() >> 1) > 0).to(marg.dtype), torch.stack(samples).amax(0))


@pytest.mark.parametrize("name", ["checkpoint", "shard"])
def test_checkpoint_semirings_same_value_and_gradients(name):
    g = torch.Generator().manual_seed(9)
    for base in (srs.LogSemiring, srs.KMaxSemiring(2), srs.EntropySemiring):
        sr = srs.CheckpointSemiring(base) if name == "checkpoint" else srs.CheckpointShardSemiring(base, 10)
        a = base.sum(torch.randn(base.size(), 3, 2, 4, 5, 6, generator=g, dtype=F64), -1).requires_grad_()
        b = base.sum(torch.randn(base.size(), 1, 1, 5, 3, 6, generator=g, dtype=F64), -1).requires_grad_()
        want = base.matmul(a, b)
        got = sr.matmul(a, b)
        _close(got, want)
        w = torch.randn(want.shape, generator=g, dtype=F64)
        _close(torch.autograd.grad((got * w).sum(), (a, b)), torch.autograd.grad((want * w).sum(), (a, b)))
        assert repr(sr).startswith(("CheckpointSemiring(", "CheckpointShardSemiring("))
    with pytest.raises(TypeError, match="semiring_flash semiring"):
        srs.CheckpointSemiring(torch_struct.LogSemiring)
    with pytest.raises(ValueError, match="max_size"):
        srs.CheckpointShardSemiring(srs.LogSemiring, 0)


@pytest.mark.parametrize("cls", [srs.GumbelMaxSemiring, srs.GumbelCRFSemiring])
def test_gumbel_semirings_sample_and_relax(cls):
    sr = cls(0.7)
    x = torch.randn(1, 4, 6, dtype=F64)
    x[0, 0, :5] = float("-inf")
    leaf = x.clone().requires_grad_()
    v = sr.sum(leaf)
    _close(v, torch.logsumexp(x, -1))
    (g,) = torch.autograd.grad(v.sum(), leaf, create_graph=True)
    assert torch.equal(g.detach().sum(-1), torch.ones(1, 4, dtype=F64)) and set(g.detach().unique().tolist()) <= {0.0, 1.0}
    assert g[0, 0, 5] == 1  # the only finite entry
    w = torch.randn_like(x)
    if cls is srs.GumbelCRFSemiring:  # straight-through: d/dx of w·softmax((x + noise) / temp) — rows sum to 0
        (h,) = torch.autograd.grad((g * w).sum(), leaf)
        assert torch.isfinite(h).all() and h.abs().sum() > 0
        _close(h.sum(-1), torch.zeros(1, 4, dtype=F64))
    else:
        assert not g.requires_grad  # a hard sample, nothing to relax
    with pytest.raises(ValueError, match="temp must be > 0"):
        cls(0.0)


def test_gumbel_crf_draws_exact_samples():
    """Empirical edge frequencies of gumbel_crf over a replicated batch match the marginals."""
    g = torch.Generator().manual_seed(11)
    one = torch.rand(1, 3, 3, 2, 2, generator=g, dtype=F64) * 2 - 1
    n = 3000
    torch.manual_seed(12)
    samples = sts.SemiMarkovCRF(one.expand(n, -1, -1, -1, -1).clone()).gumbel_crf(1.0)
    for s in samples[:20]:  # each a segmentation
        seq, extra = sf.SemiMarkov.from_parts(s.unsqueeze(0))
        assert torch.equal(sf.SemiMarkov.to_parts(seq, extra).to(s.dtype), s.unsqueeze(0))
    freq, m = samples.mean(0), oracle_edge_marginals(one[0])
    assert torch.all((freq - m).abs() <= 5 * (m * (1 - m) / n).sqrt() + 1e-12)


def test_count_matches_torch_struct_and_enumeration():
    g = torch.Generator().manual_seed(13)
    e = torch.rand(3, 4, 3, 2, 2, generator=g, dtype=F64)
    e[1:, :, 1:][torch.rand(2, 4, 2, 2, 2, generator=g) < 0.3] = float("-inf")
    count = sts.SemiMarkovCRF(e).count
    _close(count, torch_struct.SemiMarkovCRF(e.clone()).count)
    _close(count[0], torch.tensor(float(count_edge_paths(4, 3, 2)), dtype=F64))
    for b in range(3):
        finite = int((enumerate_edge_paths(e[b]).scores > float("-inf")).sum())
        _close(count[b], torch.tensor(float(finite), dtype=F64))
    # exact integers where exp(log count) is not: 3 segmentations of N=4, K=3, C=1 came out 2.9999999999999996
    for N, K, C in [(4, 3, 1), (20, 4, 4), (12, 3, 3)]:
        ones = torch.zeros(1, N - 1, K, C, C, dtype=F64)
        assert sts.SemiMarkovCRF(ones).count.item() == torch_struct.SemiMarkovCRF(ones.clone()).count.item()
    assert sts.SemiMarkovCRF(torch.zeros(1, 3, 3, 1, 1, dtype=F64)).count.item() == count_edge_paths(3, 3, 1) == 3
    with pytest.raises(TypeError, match="count needs torch-struct edges"):
        sts.SemiMarkovCRF(sf.SegmentPotentials(torch.randn(1, 3, 2), transition=torch.zeros(2, 2), duration=torch.zeros(2, 2))).count  # noqa: B018


def test_gumbel_crf_straight_through_gradient_reaches_the_potentials():
    g = torch.Generator().manual_seed(14)
    e = (torch.rand(2, 3, 3, 2, 2, generator=g, dtype=F64) * 2 - 1).requires_grad_()
    torch.manual_seed(15)
    sample = sts.SemiMarkovCRF(e).gumbel_crf(0.5)
    assert set(sample.detach().unique().tolist()) <= {0.0, 1.0}
    (grad,) = torch.autograd.grad((sample * torch.randn(sample.shape, generator=g, dtype=F64)).sum(), e)
    assert torch.isfinite(grad).all() and grad.abs().sum() > 0
    assert e.grad is None  # nothing accumulated on the user's tensor by the sampling itself


@pytest.mark.parametrize("name", ["log", "max", "kmax3"])
@pytest.mark.parametrize("input_requires_grad", [False, True])
def test_logpartition_serves_torch_structs_marginals_recipe(name, input_requires_grad):
    """torch-struct's own marginals, written by hand: logpartition(x, force_grad=True) returns the
    converted edges (S, B, ...) the value depends on; grad(unconvert(v).sum(0), edges), unconvert.
    (It raised without requires_grad, and returned batch element 0 alone with it.) The input is
    never touched."""
    x = torch.randn(2, 5, 3, 3, 3, dtype=F64, generator=torch.Generator().manual_seed(4))
    if input_requires_grad:
        x.requires_grad_()

    def recipe(struct, sr, x):
        v, [edges] = struct(sr).logpartition(x, force_grad=True)
        (m,) = torch.autograd.grad(sr.unconvert(v).sum(0), edges)
        return v, edges, sr.unconvert(m)

    v, edges, m = recipe(sts.SemiMarkov, OURS[name], x)
    tv, tedges, tm = recipe(torch_struct.SemiMarkov, THEIRS[name], _clone(x))
    assert edges.shape == tedges.shape and m.shape == tm.shape == x.shape
    _close(v, tv)
    _close(m, tm)
    assert x.requires_grad == input_requires_grad and x.grad is None
    with torch.no_grad():  # no graph wanted: the value and the edges are plain
        v, [edges] = sts.SemiMarkov(OURS[name]).logpartition(x.detach(), force_grad=True)
    assert not v.requires_grad and edges.shape == tedges.shape
