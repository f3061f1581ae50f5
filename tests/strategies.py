"""Hypothesis strategies shared by the test-suite, and the CI settings profile.

Sizes, lengths and switches are drawn by hypothesis (so they shrink); tensor
values come from a torch.Generator seeded by a drawn integer (fast, and
shrinking the seed toward 0 still gives a valid model).

    from strategies import factored_models, edge_models, ci_settings, factored_example

    @ci_settings
    @given(factored_models(max_T=5))
    def test_x(m): ...

Profiles: "ci" (default; deterministic, ~30 examples, no deadline), "dev"
(~10 examples, fast iteration), "thorough" (~300 examples). Pick one with the
environment variable HYPOTHESIS_PROFILE. Importing this module loads it.
"""

from __future__ import annotations

import os

import torch
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st

NEG = float("-inf")

_common = dict(deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
settings.register_profile("ci", max_examples=30, derandomize=True, print_blob=True, **_common)
settings.register_profile("dev", max_examples=10, derandomize=True, **_common)
settings.register_profile("thorough", max_examples=300, derandomize=False, **_common)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))

#: Decorator with the CI settings, for tests that want them explicitly
#: (independent of the loaded profile).
ci_settings = settings(max_examples=30, derandomize=True, **_common)


def _uniform(g, shape, dtype, lo=-3.0, hi=3.0):
    return torch.rand(*shape, generator=g, dtype=dtype) * (hi - lo) + lo


def _structural_zeros(g, x, p):
    """Set each entry of x to −inf with probability p (in place)."""
    if p > 0 and x.numel():
        x[torch.rand(x.shape, generator=g) < p] = NEG
    return x


def _lengths(draw, B, T, min_len, mixed):
    if not mixed:
        return torch.full((B,), T, dtype=torch.long)
    ls = draw(st.lists(st.integers(min_len, T), min_size=B, max_size=B))
    ls[draw(st.integers(0, B - 1))] = T
    return torch.tensor(ls, dtype=torch.long)


@st.composite
def factored_models(
    draw,
    max_B: int = 3,
    max_T: int = 6,
    max_C: int = 3,
    max_K: int = 4,
    allow_neg_inf: bool = True,
    with_start: bool | None = None,
    with_init: bool | None = None,
    with_end: bool | None = None,
    per_batch: bool | None = None,
    mixed_lengths: bool = True,
    min_B: int = 1,
    min_T: int = 1,
    min_C: int = 1,
    min_K: int = 1,
    dtype: torch.dtype = torch.float64,
):
    """A factored semi-CRF batch (the SegmentPotentials fields) as a dict.

    Keys: B, T, C, K (ints), seed, scores (B, T, C) finite, transition (C, C),
    duration (K, C), init / start / end (None, (C,) or (B, C)), lengths (B,)
    long in tokens (1..T, at least one == T; all == T if not mixed_lengths),
    neg (bool: −inf structural zeros were put in transition/duration/start).

    with_start / with_init / with_end: True forces, False forbids, None draws.
    ``init`` and ``start`` are never both given (the library refuses that).
    per_batch: init/start/end shaped (B, C) instead of (C,); None draws.
    With −inf entries some examples may have no valid path at all (log Z =
    −inf); most have one.
    """
    if with_start and with_init:
        raise ValueError("init and start are exclusive (the library refuses both)")
    B = draw(st.integers(min_B, max_B))
    T = draw(st.integers(min_T, max_T))
    C = draw(st.integers(min_C, max_C))
    K = draw(st.integers(min_K, max_K))
    seed = draw(st.integers(0, 2**31 - 1))
    entries = ["free", "init", "start"]
    if with_start is not None:
        entries = ["start"] if with_start else [e for e in entries if e != "start"]
    if with_init is not None:
        entries = [e for e in entries if (e == "init") == bool(with_init)]
    entry = draw(st.sampled_from(entries))
    has_end = draw(st.booleans()) if with_end is None else bool(with_end)
    pb = draw(st.booleans()) if per_batch is None else bool(per_batch)
    neg = draw(st.booleans()) if allow_neg_inf else False
    lengths = _lengths(draw, B, T, 1, mixed_lengths)

    g = torch.Generator().manual_seed(seed)
    vshape = (B, C) if pb else (C,)
    scores = _uniform(g, (B, T, C), dtype)
    transition = _uniform(g, (C, C), dtype)
    duration = _uniform(g, (K, C), dtype)
    init = _uniform(g, vshape, dtype) if entry == "init" else None
    start = _uniform(g, vshape, dtype) if entry == "start" else None
    end = _uniform(g, vshape, dtype) if has_end else None
    if neg:
        _structural_zeros(g, transition, 0.2)
        _structural_zeros(g, duration, 0.15)
        if start is not None:
            _structural_zeros(g, start, 0.2)
    return dict(B=B, T=T, C=C, K=K, seed=seed, scores=scores, transition=transition, duration=duration,
                init=init, start=start, end=end, lengths=lengths, neg=neg)


def factored_example(m: dict, b: int) -> dict:
    """kwargs of ``naive.enumerate_factored_paths`` for example b of a factored model dict."""
    def pick(v):
        if v is None:
            return None
        return v[b] if v.dim() == 2 else v

    return dict(scores=m["scores"][b], transition=m["transition"], duration=m["duration"],
                init=pick(m["init"]), start=pick(m["start"]), end=pick(m["end"]),
                length=int(m["lengths"][b]))


def factored_kwargs(m: dict) -> dict:
    """kwargs of ``SegmentPotentials`` (scores positional as ``scores=``) for a model dict."""
    return {k: m[k] for k in ("scores", "transition", "duration", "init", "start", "end", "lengths")}


@st.composite
def edge_models(
    draw,
    max_B: int = 3,
    max_N: int = 7,
    max_C: int = 3,
    max_K: int = 4,
    allow_neg_inf: bool = True,
    mixed_lengths: bool = True,
    min_B: int = 1,
    min_N: int = 2,
    min_C: int = 1,
    min_K: int = 1,
    dtype: torch.dtype = torch.float64,
):
    """A torch-struct SemiMarkovCRF batch as a dict.

    Keys: B, N, C, K (longest duration; Kts = K+1), seed, edges (B, N-1, K+1, C, C)
    with ``edges[b, n, k, c, c_prev]`` (slice k = 0 holds junk: it must be ignored),
    lengths (B,) long in positions (2..N, max == N; all == N if not mixed_lengths),
    neg (bool: −inf entries were placed). Values in [-3, 3].
    """
    B = draw(st.integers(min_B, max_B))
    N = draw(st.integers(max(2, min_N), max_N))
    C = draw(st.integers(min_C, max_C))
    K = draw(st.integers(min_K, max_K))
    seed = draw(st.integers(0, 2**31 - 1))
    neg = draw(st.booleans()) if allow_neg_inf else False
    lengths = _lengths(draw, B, N, 2, mixed_lengths)
    g = torch.Generator().manual_seed(seed)
    edges = _uniform(g, (B, N - 1, K + 1, C, C), dtype)
    if neg:
        _structural_zeros(g, edges[:, :, 1:], 0.15)
    return dict(B=B, N=N, C=C, K=K, seed=seed, edges=edges, lengths=lengths, neg=neg)


def logprob_model(T: int, K: int, C: int, dtype: torch.dtype = torch.float64, seed: int = 0, B: int = 1) -> dict:
    """Uncentred, log-probability-like factored model (SegmentPotentials kwargs), fixed seed.

    Scores are log-softmax outputs of a random linear "encoder" (negative,
    magnitudes up to ~20), then label 0 shifted by +8 and label 1 scaled ×10;
    transition and duration hold −inf structural zeros. Such scores make the
    prefix sums grow like T·8 and the segment scores reach hundreds: the
    regime where float32 gradients used to drift at long T. Built in float64
    and rounded once to ``dtype``, so two dtypes give the same model.
    """
    g = torch.Generator().manual_seed(seed)
    feats = torch.randn(B, T, 16, generator=g, dtype=torch.float64)
    proj = 1.5 * torch.randn(16, C, generator=g, dtype=torch.float64)
    scores = torch.log_softmax(feats @ proj, -1)
    scores[..., 0] += 8.0
    scores[..., 1 % C] *= 10.0
    transition = torch.randn(C, C, generator=g, dtype=torch.float64)
    transition[0, C - 1] = NEG
    duration = torch.randn(K, C, generator=g, dtype=torch.float64)
    duration[(K + 1) // 2 :, C - 1] = NEG  # the last label has only short segments
    start = torch.randn(C, generator=g, dtype=torch.float64)
    end = torch.randn(C, generator=g, dtype=torch.float64)
    out = dict(scores=scores, transition=transition, duration=duration, start=start, end=end)
    return {k: v.to(dtype) for k, v in out.items()}
