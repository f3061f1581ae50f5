"""Brute-force oracles: enumerate every path of ONE example and summarize.

Part 1 (this section) is deliberately independent of the rest of the package:
plain torch and Python, no semiring classes, no prefix sums, no dynamic
programming over scores. Every path is listed explicitly, its score is the sum
of the potentials it touches (float64, differentiable), and every summary
(log Z, max, k-max, entropy, marginals, ...) is computed over that list.

Paths
-----
Materialized edges (torch-struct layout, ``edges[n, k, c, c_prev]``): a path
tiles tokens [0, L) with segments (n, k, c), 1 ≤ k ≤ Kts-1, and has a free
initial label c0 (the c_prev of the first segment). Every c0 is a distinct
path (torch-struct's convention), so with all-zero edges there are
C · Σ_segmentations C^{#segments} paths. ``parts`` = tuple of (n, k, c, c_prev).

Factored potentials (docs/index.md, ``to_edges()`` correspondence): ``parts`` =
tuple of (start, duration, label, c_prev) with c_prev = c0 for the first
segment (c0 = 0, and a single path per labelled segmentation, when ``start``
is given). The score of a path equals the score of the same parts in
``to_edges()``.

Enumeration results are :class:`PathList` objects: a ``list`` of
``(parts, score)`` pairs that also carries the stacked scores (``.scores``,
shape (P,), float64) so the summaries stay fast; a plain list of pairs is
accepted by every summary too.

Paths whose score is −inf (structural zeros) are kept in the list; every
summary treats them as having probability 0.
"""

from __future__ import annotations

import math
from typing import Iterable, Sequence

import torch

__all__ = [
    "PathList", "MAX_PATHS", "count_edge_paths", "count_factored_paths", "enumerate_edge_paths",
    "enumerate_factored_paths", "oracle_logZ", "oracle_max", "oracle_argmax", "oracle_kmax", "oracle_topk",
    "oracle_entropy", "oracle_cross_entropy", "oracle_kl", "edge_indicator", "oracle_part_marginals",
    "oracle_edge_marginals", "oracle_factored_marginals",
]

#: Enumeration refuses (AssertionError) beyond this many paths.
MAX_PATHS = 200_000

NEG_INF = float("-inf")


class PathList(list):
    """A list of ``(parts, score)`` with the scores also stacked in ``.scores`` (P,)."""

    def __init__(self, parts: Sequence[tuple], scores: torch.Tensor):
        assert scores.dim() == 1 and scores.shape[0] == len(parts)
        super().__init__(zip(parts, scores.unbind(0)) if len(parts) else [])
        self.scores = scores
        self.parts = list(parts)


# ---------------------------------------------------------------- enumeration
def _segmentations(length: int, max_dur: int) -> list[tuple[tuple[int, int], ...]]:
    """All tilings of [0, length) into (start, duration) with 1 ≤ duration ≤ max_dur."""
    out: list[tuple[tuple[int, int], ...]] = []

    def rec(pos: int, acc: list):
        if pos == length:
            out.append(tuple(acc))
            return
        for d in range(1, min(max_dur, length - pos) + 1):
            acc.append((pos, d))
            rec(pos + d, acc)
            acc.pop()

    if max_dur >= 1:
        rec(0, [])
    return out


def _count(length: int, max_dur: int, C: int, free_init: bool) -> int:
    """Number of labelled paths: (C if free_init) · Σ_seg C^{#segments}."""
    if max_dur < 1:
        return 0
    ways = [1] + [0] * length  # ways[t]: labelled tilings of [0, t)
    for t in range(1, length + 1):
        ways[t] = sum(ways[t - d] for d in range(1, min(max_dur, t) + 1)) * C
    return ways[length] * (C if free_init else 1)


def count_edge_paths(length: int, Kts: int, C: int) -> int:
    """Number of paths :func:`enumerate_edge_paths` lists (no scores needed)."""
    return _count(length, Kts - 1, C, True)


def count_factored_paths(length: int, K: int, C: int, start: bool = False) -> int:
    """Number of paths :func:`enumerate_factored_paths` lists."""
    return _count(length, K, C, not start)


def _labelled(segs, C: int, free_init: bool):
    """Yield parts (s, d, c, c_prev) for every labelling of a segmentation."""
    m = len(segs)
    c0s = range(C) if free_init else (0,)
    for c0 in c0s:
        # itertools.product over labels, in lexicographic order
        labels = [0] * m
        while True:
            prev = c0
            parts = []
            for (s, d), c in zip(segs, labels):
                parts.append((s, d, c, prev))
                prev = c
            yield tuple(parts)
            i = m - 1
            while i >= 0 and labels[i] == C - 1:
                labels[i] = 0
                i -= 1
            if i < 0:
                break
            labels[i] += 1


def _gather_scores(flat: torch.Tensor, index_rows: list[list[int]]) -> torch.Tensor:
    """scores[p] = Σ_j flat[index_rows[p][j]] (float64, differentiable)."""
    P = len(index_rows)
    if P == 0:
        return flat.new_zeros(0)
    W = max(len(r) for r in index_rows)
    pad = flat.shape[0]  # points at an appended 0
    idx = torch.tensor([r + [pad] * (W - len(r)) for r in index_rows], dtype=torch.long)
    ext = torch.cat([flat, flat.new_zeros(1)])
    vals = ext[idx.to(flat.device)]
    # −inf + x stays −inf; no +inf can appear from finite/−inf inputs.
    return vals.sum(-1)


def enumerate_edge_paths(edges: torch.Tensor, length: int | None = None) -> PathList:
    """All paths of one torch-struct example.

    edges: (N-1, Kts, C, C), ``edges[n, k, c, c_prev]``; slice k = 0 unused.
    length: tokens L (1 ≤ L ≤ N-1), default N-1. Note: torch-struct's
    ``lengths`` count positions, i.e. L = lengths[b] - 1.
    Returns a :class:`PathList` of (parts, score), parts = ((n, k, c, c_prev), ...),
    score = Σ edges[parts] in float64 (differentiable w.r.t. ``edges``).
    """
    assert edges.dim() == 4, f"one example (N-1, Kts, C, C), got {tuple(edges.shape)}"
    N1, Kts, C, C2 = edges.shape
    assert C == C2, "edges must be (N-1, Kts, C, C)"
    L = N1 if length is None else int(length)
    assert 1 <= L <= N1, f"length {L} must be in [1, {N1}]"
    n_paths = count_edge_paths(L, Kts, C)
    assert n_paths <= MAX_PATHS, f"{n_paths} paths: too many to enumerate"
    all_parts = []
    rows = []
    sk, sc, sp = Kts * C * C, C * C, C
    for segs in _segmentations(L, Kts - 1):
        for parts in _labelled(segs, C, True):
            all_parts.append(parts)
            rows.append([n * sk + k * sc + c * sp + cp for (n, k, c, cp) in parts])
    flat = edges.to(torch.float64).reshape(-1)
    return PathList(all_parts, _gather_scores(flat, rows))


def _vec(x, C, name, device):
    if x is None:
        return None
    x = torch.as_tensor(x)
    assert x.shape == (C,), f"{name} must be (C,) for one example, got {tuple(x.shape)}"
    return x.to(device=device, dtype=torch.float64)


def enumerate_factored_paths(
    scores: torch.Tensor,
    transition: torch.Tensor,
    duration: torch.Tensor,
    init: torch.Tensor | None = None,
    start: torch.Tensor | None = None,
    end: torch.Tensor | None = None,
    length: int | None = None,
) -> PathList:
    """All paths of one factored example (``SegmentPotentials.to_edges()`` semantics).

    scores (T, C); transition (C, C) [c_prev, c]; duration (K, C) [d-1, c];
    init/start/end (C,) optional; length: tokens L (default T).

    Score of a path with segments (s_i, d_i, c_i), initial label c0:
        first segment: start[c_1]               if ``start`` is given (c0 := 0, one path)
                       init[c0] + transition[c0, c_1] otherwise (one path per c0)
        every segment: Σ_{t=s}^{s+d-1} scores[t, c] + duration[d-1, c]
        later segments: transition[c_prev, c];  last segment: + end[c]
    (init, end default 0). Each term is read straight from the inputs (no prefix
    sums) and summed in float64; differentiable w.r.t. every input.
    """
    assert scores.dim() == 2, f"scores must be (T, C) for one example, got {tuple(scores.shape)}"
    T, C = scores.shape
    K = duration.shape[0]
    assert duration.shape == (K, C), f"duration must be (K, C), got {tuple(duration.shape)}"
    assert transition.shape == (C, C), f"transition must be (C, C), got {tuple(transition.shape)}"
    L = T if length is None else int(length)
    assert 1 <= L <= T, f"length {L} must be in [1, {T}]"
    dev = scores.device
    init, start, end = (_vec(v, C, n, dev) for v, n in ((init, "init"), (start, "start"), (end, "end")))
    n_paths = count_factored_paths(L, K, C, start is not None)
    assert n_paths <= MAX_PATHS, f"{n_paths} paths: too many to enumerate"

    pieces = [scores.to(torch.float64).reshape(-1), transition.to(torch.float64).reshape(-1),
              duration.to(torch.float64).reshape(-1)]
    o_tr = T * C
    o_du = o_tr + C * C
    off = o_du + K * C
    o = {}  # offset of init / start / end in ``flat``, for those given
    for name, v in (("init", init), ("start", start), ("end", end)):
        if v is not None:
            o[name] = off
            pieces.append(v)
            off += C
    flat = torch.cat(pieces)

    all_parts, rows = [], []
    for segs in _segmentations(L, K):
        for parts in _labelled(segs, C, start is None):
            r = []
            for i, (s, d, c, cp) in enumerate(parts):
                r.extend(t * C + c for t in range(s, s + d))  # segment sum, token by token
                r.append(o_du + (d - 1) * C + c)
                if i == 0 and start is not None:
                    r.append(o["start"] + c)
                else:
                    r.append(o_tr + cp * C + c)
                    if i == 0 and init is not None:
                        r.append(o["init"] + cp)
            if end is not None:
                r.append(o["end"] + parts[-1][2])
            all_parts.append(parts)
            rows.append(r)
    return PathList(all_parts, _gather_scores(flat, rows))


# ------------------------------------------------------------------ summaries
def _scores(paths) -> torch.Tensor:
    s = getattr(paths, "scores", None)
    if s is not None:
        return s
    if len(paths) == 0:
        return torch.zeros(0, dtype=torch.float64)
    return torch.stack([torch.as_tensor(sc) for _, sc in paths])


def _parts(paths) -> list:
    p = getattr(paths, "parts", None)
    return p if p is not None else [pt for pt, _ in paths]


def _finite(s: torch.Tensor) -> torch.Tensor:
    return s.detach() > NEG_INF


def oracle_logZ(paths) -> torch.Tensor:
    """log Σ_paths exp(score); −inf when no path has a finite score."""
    s = _scores(paths)
    fin = _finite(s)
    if not bool(fin.any()):
        return s.new_full((), NEG_INF)
    return torch.logsumexp(s[fin], 0)


def oracle_max(paths) -> torch.Tensor:
    """Best score (−inf when no finite path); gradient = indicator of one argmax."""
    s = _scores(paths)
    if s.numel() == 0:
        return s.new_full((), NEG_INF)
    return s.max()


def oracle_argmax(paths):
    """Parts of the best path (None when no finite path)."""
    s = _scores(paths)
    if s.numel() == 0 or not bool(_finite(s).any()):
        return None
    return _parts(paths)[int(s.detach().argmax())]


def oracle_kmax(paths, k: int) -> torch.Tensor:
    """Top-k scores (k,), sorted descending, padded with −inf (differentiable)."""
    s = _scores(paths)
    kk = min(k, s.numel())
    top = torch.topk(s, kk, sorted=True).values if kk else s.new_zeros(0)
    if kk < k:
        top = torch.cat([top, s.new_full((k - kk,), NEG_INF)])
    return top


def oracle_topk(paths, k: int) -> list:
    """Parts of the top-k finite-score paths, best first (fewer if fewer exist)."""
    s = _scores(paths).detach()
    n_fin = int(_finite(s).sum())
    kk = min(k, n_fin)
    if kk == 0:
        return []
    idx = torch.topk(s, kk, sorted=True).indices.tolist()
    parts = _parts(paths)
    return [parts[i] for i in idx]


def _log_probs(paths):
    """(log p over finite paths, finite mask); None when the support is empty."""
    s = _scores(paths)
    fin = _finite(s)
    if not bool(fin.any()):
        return None, fin
    sf = s[fin]
    return sf - torch.logsumexp(sf, 0), fin


def oracle_entropy(paths) -> torch.Tensor:
    """−Σ p log p of p ∝ exp(score); −inf paths have p = 0 and add 0.
    NaN when no path has a finite score (the distribution is undefined)."""
    lp, _ = _log_probs(paths)
    if lp is None:
        return _scores(paths).new_full((), float("nan"))
    return -(lp.exp() * lp).sum()


def _matched_log_q(paths_p, paths_q) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(log p, log q) over p's path order, log q matched by parts; plus p's finite mask."""
    parts_p, parts_q = _parts(paths_p), _parts(paths_q)
    assert len(parts_p) == len(parts_q) and set(parts_p) == set(parts_q), "p and q must list the same paths"
    sp, sq = _scores(paths_p), _scores(paths_q)
    where = {pt: i for i, pt in enumerate(parts_q)}
    perm = torch.tensor([where[pt] for pt in parts_p], dtype=torch.long, device=sq.device)
    sq = sq[perm]
    fin_q = _finite(sq)
    lq = torch.full_like(sq, NEG_INF)
    if bool(fin_q.any()):
        lq = torch.where(fin_q, sq - torch.logsumexp(sq[fin_q], 0), lq)
    fin_p = _finite(sp)
    lp = torch.full_like(sp, NEG_INF)
    if bool(fin_p.any()):
        lp = torch.where(fin_p, sp - torch.logsumexp(sp[fin_p], 0), lp)
    return lp, lq, fin_p


def oracle_cross_entropy(paths_p, paths_q) -> torch.Tensor:
    """H[p, q] = −Σ p log q over the same path set (matched by parts).
    +inf if p puts mass where q has none; NaN if p has empty support."""
    lp, lq, fin = _matched_log_q(paths_p, paths_q)
    if not bool(fin.any()):
        return lp.new_full((), float("nan"))
    return -(lp[fin].exp() * lq[fin]).sum()


def oracle_kl(paths_p, paths_q) -> torch.Tensor:
    """KL(p ‖ q) = Σ p (log p − log q) over the same path set (matched by parts)."""
    lp, lq, fin = _matched_log_q(paths_p, paths_q)
    if not bool(fin.any()):
        return lp.new_full((), float("nan"))
    lpf = lp[fin]
    return (lpf.exp() * (lpf - lq[fin])).sum()


# ------------------------------------------------------------------ marginals
def edge_indicator(parts: Iterable[tuple], shape, dtype=torch.float64, device=None) -> torch.Tensor:
    """One-hot edge tensor of ``shape`` (N-1, Kts, C, C) with 1 at each (n, k, c, c_prev).

    Works for factored parts too (start, duration, label, c_prev) with Kts = K+1."""
    out = torch.zeros(tuple(shape), dtype=dtype, device=device)
    for n, k, c, cp in parts:
        out[n, k, c, cp] += 1
    return out


def oracle_part_marginals(paths, shape) -> torch.Tensor:
    """Σ_paths p(path) · edge_indicator(path) (exact expected counts; differentiable)."""
    lp, fin = _log_probs(paths)
    s = _scores(paths)
    numel = math.prod(shape)
    out = s.new_zeros(numel)
    if lp is None:
        return out.view(tuple(shape))
    p = lp.exp()
    strides = torch.tensor(shape).flip(0).cumprod(0).flip(0).tolist()[1:] + [1]
    parts = _parts(paths)
    fin_idx = fin.nonzero().flatten().tolist()
    flat_idx, owner = [], []
    for j, i in enumerate(fin_idx):
        for pt in parts[i]:
            flat_idx.append(sum(a * b for a, b in zip(pt, strides)))
            owner.append(j)
    flat_idx = torch.tensor(flat_idx, dtype=torch.long, device=s.device)
    owner = torch.tensor(owner, dtype=torch.long, device=s.device)
    return out.index_add(0, flat_idx, p[owner]).view(tuple(shape))


def oracle_edge_marginals(edges: torch.Tensor, length: int | None = None) -> torch.Tensor:
    """Exact edge marginals of one torch-struct example: (N-1, Kts, C, C), float64."""
    return oracle_part_marginals(enumerate_edge_paths(edges, length), edges.shape)


def oracle_factored_marginals(paths, T: int, C: int, K: int, start: bool = False) -> dict:
    """Compact posteriors of one factored example (as ``FactoredMarginals``).

    token (T, C): P(token t in a segment of label c);  start (T,): P(a segment starts at t);
    start_label (T, C);  duration (K, C): E[#segments of duration d (index d-1), label c];
    transition (C, C): E[#c_prev → c boundaries], including the entry transition from
    the free initial label unless ``start`` (then the first segment has no transition);
    segment (T, K, C): P(segment (s, d, c)). Zero beyond the example's length.
    """
    seg = oracle_part_marginals(paths, (T, K + 1, C, C))  # [s, d, c, c_prev]
    segment = seg[:, 1:].sum(-1)  # (T, K, C)
    token = seg.new_zeros(T, C)
    for d in range(1, K + 1):
        for s in range(T):
            token[s : s + d] = token[s : s + d] + segment[s, d - 1]
    # segments at s = 0 are exactly the first ones; with ``start`` they carry no transition
    trans = (seg[1:] if start else seg).sum((0, 1)).transpose(0, 1)  # (c_prev, c)
    return dict(
        token=token,
        start=segment.sum((1, 2)),
        start_label=segment.sum(1),
        duration=segment.sum(0),
        transition=trans,
        segment=segment,
    )
