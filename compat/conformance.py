"""torch-struct conformance: every scenario through torch-struct and semiring_flash.

    python compat/conformance.py            # full table, exit status 1 on any mismatch
    python compat/conformance.py -q         # failures and the summary only
    python compat/conformance.py -s base_f64 -s wider_f32 --samples 4000

Our side always goes through the drop-in shim ``semiring_flash.torch_struct``
(what migrated code runs). References:

* ``ts``      torch-struct 0.5 on the same tensor (a clone: it calls ``requires_grad_``);
* ``ts/ex``   torch-struct once per example, truncated to its length (mixed-length
              batches, which torch-struct 0.5 gets wrong when batched);
* ``ref:m``   an independent reference built from torch-struct's marginals and
              partition, where torch-struct itself is unusable: H[p] = log Z − Σ m·θ
              (its entropy is NaN with −inf potentials), log p(z) = Σ z·θ − log Z with
              0·(−inf) = 0 (its log_prob is NaN there), and cross-entropy / KL
              (broken for SemiMarkov in torch-struct 0.5):
              H[p, q] = log Z_q − Σ m_p·θ_q,  KL[p‖q] = H[p, q] − H[p];
* ``stat``    sampling: empirical edge frequencies of n samples vs torch-struct's
              marginals: every |f − m| ≤ 6·sqrt(m(1−m)/n) + 1/n (exactly 0 where m = 0),
              and mean z² ≤ 1 + 6·sqrt(2/M) over the M entries with 0 < m < 1;
* ``self``    properties of our own outputs (round trips, no mutation).
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import traceback
import warnings
from dataclasses import dataclass

import torch

if __package__ in (None, ""):
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch_struct  # noqa: E402

import semiring_flash as sf  # noqa: E402
import semiring_flash.torch_struct as sts  # noqa: E402
from compat.scenarios import BY_NAME, SCENARIOS, Built, Scenario, build  # noqa: E402

warnings.filterwarnings("ignore", message=".*does not define `arg_constraints`.*")

KMAX_SENTINEL = -1e4  # torch-struct pads missing k-best scores with about -1e5


@dataclass
class Check:
    scenario: str
    prop: str
    ref: str
    err: float  # max abs error over finite entries (inf: pattern/shape mismatch, nan: exception)
    ok: bool
    detail: str = ""


# -- comparison helpers ------------------------------------------------------------


def compare(ours: torch.Tensor, ref: torch.Tensor, rtol: float, atol: float, exact: bool = False):
    """(max abs error, ok, detail); ±inf entries must match exactly, NaN never passes."""
    ours = ours.detach().to(torch.float64)
    ref = ref.detach().to(torch.float64)
    if ours.shape != ref.shape:
        return math.inf, False, f"shape {tuple(ours.shape)} vs reference {tuple(ref.shape)}"
    if torch.isnan(ours).any():
        return math.nan, False, "NaN in ours"
    if torch.isnan(ref).any():
        return math.nan, False, "NaN in the reference"
    inf_o, inf_r = torch.isinf(ours), torch.isinf(ref)
    if not torch.equal(inf_o, inf_r) or not torch.equal(ours[inf_o], ref[inf_r]):
        return math.inf, False, f"±inf pattern differs ({int((inf_o != inf_r).sum())} entries)"
    fin = ~inf_o
    diff = (ours[fin] - ref[fin]).abs()
    err = float(diff.max()) if diff.numel() else 0.0
    ok = err == 0.0 if exact else bool((diff <= atol + rtol * ref[fin].abs()).all())
    return err, ok, ""


def masked_dot(parts: torch.Tensor, theta: torch.Tensor) -> torch.Tensor:
    """Σ parts·θ over the last 4 dims, in float64, with 0·(−inf) = 0 (independent of the library)."""
    parts = parts.detach().to(torch.float64)
    theta = theta.detach().to(torch.float64)
    prod = torch.where(parts != 0, parts * theta, torch.zeros((), dtype=torch.float64))
    return prod.flatten(-4).sum(-1)


def fix_kmax(v: torch.Tensor) -> torch.Tensor:
    """torch-struct's ≈−1e5 'no such structure' sentinel → −inf."""
    v = v.detach()
    return torch.where(v < KMAX_SENTINEL, torch.full_like(v, -math.inf), v)


def frequency_test(f: torch.Tensor, m: torch.Tensor, n: int):
    """Empirical frequencies f of n samples vs probabilities m: (max |f-m|, ok, detail).

    Two tests: every entry within 6σ + 1/n (exactly 0 where m = 0), and the mean of
    z² = (f-m)² / (m(1-m)/n) over entries with 0 < m < 1 (≈ 1 under the null) below
    1 + 6·sqrt(2/M), which catches a global mismatch that no single entry shows.
    """
    f, m = f.double(), m.double().clamp(0, 1)
    m = torch.where(m < 1e-12, torch.zeros_like(m), m)
    var = m * (1 - m) / n
    bound = 6 * var.sqrt() + torch.where(m > 0, 1.0 / n, 0.0)
    dev = (f - m).abs()
    ok_entry = bool((dev <= bound).all())
    sel = var > 0
    M = int(sel.sum())
    z2 = float(((f - m)[sel] ** 2 / var[sel]).mean()) if M else 0.0
    lim = 1 + 6 * math.sqrt(2 / max(M, 1))
    worst = float((dev / bound.clamp(min=1e-300)).max())
    detail = f"n={n}, max |f-m|/bound={worst:.2f}, mean z²={z2:.2f} (≤{lim:.2f}, M={M})"
    return float(dev.max()), ok_entry and z2 <= lim, detail


# -- torch-struct, batched or per example -------------------------------------------


class _Group:
    def __init__(self, b: slice, edges: torch.Tensor, lengths, npos: int):
        self.b, self._edges, self.lengths, self.npos = b, edges, lengths, npos

    @property
    def edges(self) -> torch.Tensor:
        return self._edges.clone()  # torch-struct calls requires_grad_ on what it gets

    def crf(self, edges: torch.Tensor | None = None):
        return torch_struct.SemiMarkovCRF(self.edges if edges is None else edges.clone(), lengths=self.lengths)

    def struct(self, sr):
        return torch_struct.SemiMarkov(sr)


class TSRef:
    """Runs torch-struct on the whole batch, or per example for mixed lengths, and reassembles."""

    def __init__(self, edges: torch.Tensor, lengths: torch.Tensor | None):
        B, T = edges.shape[:2]
        self.T = T
        self.per_example = lengths is not None and bool((lengths != T + 1).any())
        if self.per_example:
            self.groups = [
                _Group(slice(b, b + 1), edges[b : b + 1, : int(lengths[b]) - 1], None, int(lengths[b]) - 1)
                for b in range(B)
            ]
        else:
            self.groups = [_Group(slice(0, B), edges, lengths, T)]
        self.name = "ts/ex" if self.per_example else "ts"

    def map(self, fn, bdim: int = 0, pdim: int | None = None) -> torch.Tensor:
        outs = []
        for g in self.groups:
            with torch.enable_grad():
                out = fn(g)
            out = out.detach()
            if pdim is not None and out.shape[pdim] < self.T:
                shape = list(out.shape)
                shape[pdim] = self.T - out.shape[pdim]
                out = torch.cat([out, out.new_zeros(shape)], pdim)
            outs.append(out)
        return torch.cat(outs, bdim)


def per_example_slice(value: torch.Tensor, g: _Group, bdim: int) -> torch.Tensor:
    """value[..., g.b, :g.npos, ...] with the batch at ``bdim`` and positions right after it."""
    v = value.narrow(bdim, g.b.start, g.b.stop - g.b.start)
    return v.narrow(bdim + 1, 0, g.npos).contiguous()


# -- random structures in torch-struct's compact form ---------------------------------


def random_sequences(sc: Scenario, lengths_pos, R: int, seed: int) -> torch.Tensor:
    """(R, B, N) compact sequences: label at each segment end, −1 elsewhere."""
    g = torch.Generator().manual_seed(seed)
    N = sc.T + 1
    seq = torch.full((R, sc.B, N), -1, dtype=torch.long)
    for r in range(R):
        for b in range(sc.B):
            L = N if lengths_pos is None else int(lengths_pos[b])
            seq[r, b, 0] = int(torch.randint(sc.C, (1,), generator=g))
            pos = 0
            while pos < L - 1:
                d = int(torch.randint(1, min(sc.K, L - 1 - pos) + 1, (1,), generator=g))
                pos += d
                seq[r, b, pos] = int(torch.randint(sc.C, (1,), generator=g))
    return seq


# -- the checks ----------------------------------------------------------------------


class Runner:
    def __init__(self, sc: Scenario):
        self.sc = sc
        self.rows: list[Check] = []

    def check(self, prop: str, ref: str, fn, exact: bool = False, tol_scale: float = 1.0):
        """fn() -> (ours, reference) or (err, ok, detail)."""
        rtol, atol = self.sc.tol
        try:
            out = fn()
            if isinstance(out[0], torch.Tensor):
                err, ok, detail = compare(out[0], out[1], rtol * tol_scale, atol * tol_scale, exact)
            else:
                err, ok, detail = out
        except Exception as e:  # a crash is a failed check, not an aborted run
            err, ok, detail = math.nan, False, f"{type(e).__name__}: {e}"
            if os.environ.get("CONFORMANCE_TRACEBACK"):
                traceback.print_exc()
        self.rows.append(Check(self.sc.name, prop, ref, err, ok, detail))


def _not_mutated(x: torch.Tensor, copy: torch.Tensor, requires_grad: bool):
    same = torch.equal(x.detach(), copy) and x.requires_grad == requires_grad and x.grad is None and x.is_leaf
    detail = "" if same else f"requires_grad={x.requires_grad} grad={'set' if x.grad is not None else None} equal={torch.equal(x.detach(), copy)}"
    return 0.0 if same else math.inf, same, detail


def check_edges(sc: Scenario, b: Built, n_samples: int) -> list[Check]:
    run = Runner(sc)
    E, L = b.edges, b.lengths
    E_copy = E.clone()
    k = sc.k
    ts = TSRef(E, L)
    R = ts.name
    neg = sc.neg_inf is not None
    ours = sts.SemiMarkovCRF(E, lengths=L)  # the original tensor: it must not be touched

    ts_part = ts.map(lambda g: g.crf().partition)
    ts_marg = ts.map(lambda g: g.crf().marginals, pdim=1)
    ts_argmax = ts.map(lambda g: g.crf().argmax, pdim=1)
    ts_kmax = fix_kmax(ts.map(lambda g: g.crf().kmax(k), bdim=1))
    valid_k = torch.isfinite(ts_kmax)  # (k, B): channels that are real structures
    ts_topk = ts.map(lambda g: g.crf().topk(k), bdim=1, pdim=2)

    run.check("partition", R, lambda: (ours.partition, ts_part))
    run.check("marginals", R, lambda: (ours.marginals, ts_marg))
    run.check("argmax", R, lambda: (ours.argmax, ts_argmax), exact=True)
    run.check("max", R, lambda: (ours.max, ts.map(lambda g: g.crf().max)))
    if neg:
        run.check("entropy", "ref:m", lambda: (ours.entropy, ts_part.double() - masked_dot(ts_marg, E)))
    else:
        run.check("entropy", R, lambda: (ours.entropy, ts.map(lambda g: g.crf().entropy)))
    run.check(f"kmax({k})", R, lambda: (ours.kmax(k), ts_kmax))
    run.check(f"topk({k})", R, lambda: (ours.topk(k)[valid_k], ts_topk[valid_k]), exact=True)

    def log_prob(value, sample_dims):
        bdim = sample_dims
        if neg:
            return ours.log_prob(value), masked_dot(value, E) - ts_part.double()
        ref = ts.map(lambda g: g.crf().log_prob(per_example_slice(value, g, bdim)), bdim=bdim)
        return ours.log_prob(value), ref

    lp_ref = "ref:m" if neg else R
    run.check("log_prob(argmax)", lp_ref, lambda: log_prob(ts_argmax, 0))

    def lp_topk():
        a, r = log_prob(ts_topk, 1)
        return a[valid_k], r[valid_k]

    run.check(f"log_prob(topk({k}))", lp_ref, lp_topk)
    seqs = random_sequences(sc, L, R=4, seed=sc.seed)
    extra = (sc.C, sc.K + 1)
    random_parts = torch.stack([torch_struct.SemiMarkov.to_parts(s, extra) for s in seqs]).to(E.dtype)
    run.check("log_prob(random to_event)", lp_ref, lambda: log_prob(random_parts, 1))

    # events and parts
    ts_dist = torch_struct.SemiMarkovCRF(E.clone())

    def to_event():
        return torch.stack([ours.to_event(s, extra) for s in seqs]), torch.stack([ts_dist.to_event(s, extra) for s in seqs])

    def from_event():
        errs = 0
        for i in range(seqs.shape[0]):
            ev = ts_dist.to_event(seqs[i], extra)
            (s1, x1), (s2, x2) = ours.from_event(ev), ts_dist.from_event(ev)
            back = ours.from_event(ours.to_event(seqs[i], extra))[0]
            errs += int(not torch.equal(s1, s2)) + int(tuple(x1) != tuple(x2)) + int(not torch.equal(back, seqs[i]))
        return float(errs), errs == 0, "" if errs == 0 else f"{errs} mismatches"

    run.check("to_event", "ts", to_event, exact=True)
    run.check("from_event + round trip", "ts", from_event)

    # the struct surface, semirings passed the torch-struct way (classes / KMaxSemiring(k))
    def ts_struct(sr, fn_name, raw=False, **kw):
        return lambda g: getattr(torch_struct.SemiMarkov(sr), fn_name)(g.edges, g.lengths, **({"_raw": True} if raw else {}), **kw)

    run.check("struct.sum[Log]", R, lambda: (sts.SemiMarkov(sts.LogSemiring).sum(E, L), ts.map(ts_struct(torch_struct.LogSemiring, "sum"))))
    run.check("struct.sum[Max]", R, lambda: (sts.SemiMarkov(sts.MaxSemiring).sum(E, L), ts.map(ts_struct(torch_struct.MaxSemiring, "sum"))))
    if neg:
        run.check("struct.sum[Entropy]", "ref:m", lambda: (sts.SemiMarkov(sts.EntropySemiring).sum(E, L), ts_part.double() - masked_dot(ts_marg, E)))
    else:
        run.check("struct.sum[Entropy]", R, lambda: (sts.SemiMarkov(sts.EntropySemiring).sum(E, L), ts.map(ts_struct(torch_struct.EntropySemiring, "sum"))))
    run.check(f"struct.sum[KMax({k}), raw]", R, lambda: (
        sts.SemiMarkov(sts.KMaxSemiring(k)).sum(E, L, _raw=True),
        fix_kmax(ts.map(ts_struct(torch_struct.KMaxSemiring(k), "sum", raw=True), bdim=1))))
    run.check("struct.marginals[Log]", R, lambda: (sts.SemiMarkov(sts.LogSemiring).marginals(E, L), ts_marg))
    run.check("struct.marginals[Max]", R, lambda: (sts.SemiMarkov(sts.MaxSemiring).marginals(E, L), ts_argmax), exact=True)
    run.check(f"struct.marginals[KMax({k}), raw]", R, lambda: (
        sts.SemiMarkov(sts.KMaxSemiring(k)).marginals(E, L, _raw=True)[valid_k],
        ts.map(ts_struct(torch_struct.KMaxSemiring(k), "marginals", raw=True), bdim=1, pdim=2)[valid_k]), exact=True)
    run.check("struct.logpartition", R, lambda: (
        sts.SemiMarkov().logpartition(E, L)[0], ts.map(lambda g: torch_struct.SemiMarkov().logpartition(g.edges, g.lengths)[0], bdim=1)))

    def score():
        parts = torch.stack([ts_argmax, random_parts[0]])  # (2, B, ...): batch_dims (0, 1)
        ours_s = sts.SemiMarkov().score(E, parts, batch_dims=[0, 1])
        if neg:
            return ours_s, masked_dot(parts, E)
        return ours_s, torch_struct.SemiMarkov().score(E.clone(), parts.clone(), batch_dims=[0, 1])

    run.check("struct.score", "ref:m" if neg else "ts", score)

    def parts_round_trip():
        errs = 0
        for s in seqs:
            p1, p2 = sts.SemiMarkov.to_parts(s, extra), torch_struct.SemiMarkov.to_parts(s, extra)
            errs += int(not torch.equal(p1, p2))
            (s1, x1), (s2, x2) = sts.SemiMarkov.from_parts(p2), torch_struct.SemiMarkov.from_parts(p2)
            errs += int(not torch.equal(s1, s2)) + int(tuple(x1) != tuple(x2))
        return float(errs), errs == 0, "" if errs == 0 else f"{errs} mismatches"

    run.check("struct.to_parts/from_parts", "ts", parts_round_trip)

    def ts_classes():
        # code that still passes torch-struct's own semiring classes to the shim
        a = sts.SemiMarkov(torch_struct.MaxSemiring).sum(E, L)
        c = sts.SemiMarkov(torch_struct.KMaxSemiring(k)).sum(E, L, _raw=True)
        e = sts.SemiMarkov(torch_struct.EntropySemiring).sum(E, L)
        ref = (sts.SemiMarkov(sts.MaxSemiring).sum(E, L), sts.SemiMarkov(sts.KMaxSemiring(k)).sum(E, L, _raw=True),
               sts.SemiMarkov(sts.EntropySemiring).sum(E, L))
        return torch.cat([a.flatten(), c.flatten(), e.flatten()]), torch.cat([r.flatten() for r in ref])

    run.check("shim: torch-struct semiring classes", "self", ts_classes, exact=True)

    # gradients
    def grad_partition():
        leaf = E.clone().requires_grad_()
        sts.SemiMarkovCRF(leaf, lengths=L).partition.sum().backward()
        return leaf.grad, ts_marg

    run.check("grad(partition)", R, grad_partition)
    if not neg:
        def grad_entropy():
            leaf = E.clone().requires_grad_()
            (g_ours,) = torch.autograd.grad(sts.SemiMarkovCRF(leaf, lengths=L).entropy.sum(), leaf)

            def ts_grad(g):
                d = g.crf()
                return torch.autograd.grad(d.entropy.sum(), d.log_potentials)[0]

            return g_ours, ts.map(ts_grad, pdim=1)

        run.check("grad(entropy)", R, grad_entropy, tol_scale=10.0)

    # sampling: empirical frequencies against torch-struct's marginals
    def sample():
        torch.manual_seed(sc.seed)
        S = ours.sample((n_samples,))
        if S.shape != (n_samples, *E.shape):
            return math.inf, False, f"shape {tuple(S.shape)}"
        if not bool(((S == 0) | (S == 1)).all()):
            return math.inf, False, "samples are not 0/1"
        err, ok, detail = frequency_test(S.mean(0), ts_marg, n_samples)
        # every sample is a structure: finite log_prob, and events round-trip
        few = S[:8]
        finite = bool(torch.isfinite(ours.log_prob(few)).all())
        rt = all(torch.equal(ours.to_event(ours.from_event(few[i])[0], extra).to(few.dtype), few[i]) for i in range(few.shape[0]))
        detail += ("" if finite else ", impossible sample") + ("" if rt else ", round trip fails")
        return err, ok and finite and rt, detail

    run.check("sample", "stat", sample)

    # cross-entropy and KL: torch-struct 0.5's are broken for SemiMarkov
    q = sts.SemiMarkovCRF(b.q_edges, lengths=L)
    tsq = TSRef(b.q_edges, L)
    q_part = tsq.map(lambda g: g.crf().partition).double()
    h_pq = q_part - masked_dot(ts_marg, b.q_edges)
    h_p = ts_part.double() - masked_dot(ts_marg, E)
    try:
        torch_struct.SemiMarkovCRF(E.clone()).cross_entropy(torch_struct.SemiMarkovCRF(b.q_edges.clone()))
        ts_note = "ts runs"
    except Exception as e:  # expected with torch-struct 0.5
        ts_note = f"ts raises {type(e).__name__}"
    run.check("cross_entropy", "ref:m", lambda: (ours.cross_entropy(q), h_pq), tol_scale=10.0)
    run.rows[-1].detail = run.rows[-1].detail or ts_note
    run.check("kl", "ref:m", lambda: (ours.kl(q), h_pq - h_p), tol_scale=10.0)
    run.rows[-1].detail = run.rows[-1].detail or ts_note

    # our library never touches its inputs
    run.check("input not mutated", "self", lambda: _not_mutated(E, E_copy, False))

    def leaf_untouched():
        leaf = E.clone().requires_grad_()
        d = sts.SemiMarkovCRF(leaf, lengths=L)
        for name in ("partition", "marginals", "argmax", "max", "entropy"):
            getattr(d, name)
        d.kmax(k), d.topk(k), d.sample((2,)), d.log_prob(ts_argmax), d.cross_entropy(q), d.kl(q)
        return _not_mutated(leaf, E_copy, True)

    run.check("requires_grad input untouched", "self", leaf_untouched)
    return run.rows


def check_factored(sc: Scenario, b: Built, n_samples: int) -> list[Check]:
    """SegmentPotentials (compact outputs) against torch-struct on ``to_edges()``."""
    run = Runner(sc)
    pots, E, L = b.pots, b.edges, b.lengths
    tensors = {n: getattr(pots, n) for n in ("scores", "transition", "duration", "init", "start", "end") if getattr(pots, n) is not None}
    copies = {n: t.clone() for n, t in tensors.items()}
    ts = TSRef(E, L)
    R = ts.name
    B, T, K, C = pots.shape
    ours = sts.SemiMarkovCRF(pots)
    has_start = "start" in sc.factored_opts

    ts_part = ts.map(lambda g: g.crf().partition)
    ts_marg = ts.map(lambda g: g.crf().marginals, pdim=1).double()  # (B, T, K+1, C, C')
    ts_argmax = ts.map(lambda g: g.crf().argmax, pdim=1)

    run.check("partition", R, lambda: (ours.partition, ts_part))
    run.check("max", R, lambda: (ours.max, ts.map(lambda g: g.crf().max)))

    def argmax():
        # Factored models have exact ties (consecutive segments of one label can trade
        # durations at equal score), so a different segmentation of equal score also passes.
        ref = [[] for _ in range(B)]
        for bb, n, d, c, _ in ts_argmax.nonzero().tolist():
            ref[bb].append((n, n + d, c))
        seg = ours.argmax
        got = seg.segments()
        score = (ours.log_prob(seg) + ours.partition).double()
        ts_max = ts.map(lambda g: g.crf().max).double()
        rtol, atol = sc.tol
        bad = ties = 0
        for i, (r, s) in enumerate(zip(ref, got)):
            if sorted(r) == sorted(map(tuple, s)):
                continue
            if abs(float(score[i] - ts_max[i])) <= atol + rtol * abs(float(ts_max[i])):
                ties += 1
            else:
                bad += 1
        detail = (f"{bad} sequences differ" if bad else "") + (f"{ties} tie(s): other segmentation, equal score" if ties else "")
        return float(bad), bad == 0, detail

    run.check("argmax (segments)", R, argmax)

    m = ts_marg[:, :, 1:]  # (B, T, K, C, C'): duration d at index d-1
    fm = ours.marginals
    run.check("marginals.start_label", R, lambda: (fm.start_label, m.sum((2, 4))))
    run.check("marginals.duration", R, lambda: (fm.duration, m.sum((1, 4))))
    trans_ref = (m if not has_start else m[:, 1:]).sum((1, 2)).transpose(-1, -2)  # [c', c]
    run.check("marginals.transition", R, lambda: (fm.transition, trans_ref))

    def token():
        tok = torch.zeros(B, T, C, dtype=torch.float64)
        per = m.sum(-1)  # (B, T, K, C)
        for n in range(T):
            for d in range(1, K + 1):
                if n + d <= T:
                    tok[:, n : n + d] += per[:, n, d - 1].unsqueeze(1)
        return fm.token, tok

    run.check("marginals.token", R, token)

    # entropy and k-best count the free initial label as part of the structure, like
    # torch-struct on the materialized tensor
    ts_kmax = fix_kmax(ts.map(lambda g: g.crf().kmax(sc.k), bdim=1))
    run.check(f"kmax({sc.k})", R, lambda: (ours.kmax(sc.k), ts_kmax))
    if has_start:  # the −inf entry slots make torch-struct's entropy NaN
        run.check("entropy", "ref:m", lambda: (ours.entropy, ts_part.double() - masked_dot(ts_marg, E)))
    else:
        run.check("entropy", R, lambda: (ours.entropy, ts.map(lambda g: g.crf().entropy)))

    if has_start:  # one fixed initial label: segmentations ↔ edge structures one to one
        run.check("log_prob(argmax)", "ref:m", lambda: (ours.log_prob(ours.argmax), masked_dot(ts_argmax, E) - ts_part.double()))

        def topk():
            k = sc.k
            ts_top = ts.map(lambda g: g.crf().topk(k), bdim=1, pdim=2)  # (k, B, T, K+1, C, C)
            seg = ours.topk(k)  # Segmentation (k, B, T)
            got = seg.segments()  # k·B lists
            score = (ours.log_prob(seg) + ours.partition).double()  # (k, B)
            rtol, atol = sc.tol
            bad = ties = 0
            for j in range(k):
                for bb in range(B):
                    if not torch.isfinite(ts_kmax[j, bb]):
                        continue
                    ref = sorted((n, n + d, c) for n, d, c, _ in ts_top[j, bb].nonzero().tolist())
                    if ref == sorted(map(tuple, got[j * B + bb])):
                        continue
                    want = float(ts_kmax[j, bb])
                    if abs(float(score[j, bb]) - want) <= atol + rtol * abs(want):
                        ties += 1
                    else:
                        bad += 1
            dup = 0  # with ties allowed, the k segmentations must still be distinct
            for bb in range(B):
                finite = [j for j in range(k) if torch.isfinite(ts_kmax[j, bb])]
                lists = {tuple(sorted(map(tuple, got[j * B + bb]))) for j in finite}
                dup += len(finite) - len(lists)
            bad += dup
            detail = (f"{bad} differ ({dup} duplicates)" if bad else "") + (f"{ties} tie(s): other segmentation, equal score" if ties else "")
            return float(bad), bad == 0, detail

        run.check(f"topk({sc.k}) (segments)", R, topk)

    def sample():
        torch.manual_seed(sc.seed)
        S = ours.sample((n_samples,))  # Segmentation (n, B, T)
        onehot = torch.nn.functional.one_hot(S.labels.clamp(min=0), C).double() * S.starts.unsqueeze(-1).double()
        err, ok, detail = frequency_test(onehot.mean(0), m.sum((2, 4)), n_samples)
        finite = bool(torch.isfinite(ours.log_prob(S[:8])).all())
        return err, ok and finite, detail + ("" if finite else ", impossible sample")

    run.check("sample (start_label freq)", "stat", sample)

    def untouched():
        bad = [n for n, t in tensors.items() if not _not_mutated(t, copies[n], False)[1]]
        return (0.0, True, "") if not bad else (math.inf, False, f"mutated: {bad}")

    run.check("inputs not mutated", "self", untouched)
    return run.rows


def run_scenario(sc: Scenario, n_samples: int = 2000) -> list[Check]:
    torch.manual_seed(sc.seed)
    b = build(sc)
    return (check_factored if sc.factored else check_edges)(sc, b, n_samples)


def format_table(rows: list[Check], only_failures: bool = False) -> str:
    head = f"{'scenario':<24} {'property':<34} {'ref':<6} {'max err':>9}  {'status':<6} detail"
    lines = [head, "-" * len(head)]
    last = None
    for r in rows:
        if only_failures and r.ok:
            continue
        name = r.scenario if r.scenario != last else ""
        last = r.scenario
        lines.append(f"{name:<24} {r.prop:<34} {r.ref:<6} {r.err:>9.2e}  {'ok' if r.ok else 'FAIL':<6} {r.detail}")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("-s", "--scenario", action="append", help="run only these scenarios (repeatable)")
    ap.add_argument("--samples", type=int, default=2000, help="samples for the statistical sampling check")
    ap.add_argument("-q", "--quiet", action="store_true", help="print failures and the summary only")
    args = ap.parse_args(argv)
    torch.set_num_threads(min(2, torch.get_num_threads()))
    chosen = [BY_NAME[n] for n in args.scenario] if args.scenario else SCENARIOS
    rows: list[Check] = []
    for sc in chosen:
        rows += run_scenario(sc, args.samples)
    print(f"semiring_flash {sf.__version__} vs torch-struct {torch_struct.version} (torch {torch.__version__})")
    print(format_table(rows, only_failures=args.quiet))
    failed = [r for r in rows if not r.ok]
    print(f"\n{len(rows)} checks over {len(chosen)} scenarios: {len(rows) - len(failed)} ok, {len(failed)} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
