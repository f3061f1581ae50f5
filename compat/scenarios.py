"""Named scenarios for the torch-struct conformance suite.

Sizes use this project's symbols: T tokens, K longest segment, C labels. In
torch-struct's layout that is an edge tensor (B, N-1, K+1, C, C) with N = T+1
positions, and position lengths = token lengths + 1.

Kept small on purpose: torch-struct's memory grows like T·(K·C)².

* ``lengths`` (tokens) may mix lengths: torch-struct 0.5 gets such batches
  wrong, so the suite runs torch-struct once per example (truncated to its
  length) and compares with our batched run.
* ``neg_inf`` puts −inf structural zeros in patterns torch-struct handles for
  partition / marginals / argmax / max / kmax / topk. Its entropy (NaN) and
  log_prob (0·−inf = NaN) are not usable there: those are compared against an
  independent reference built from torch-struct's marginals instead.
* ``factored`` scenarios build a :class:`semiring_flash.SegmentPotentials`,
  give torch-struct its ``to_edges()`` and compare our factored (compact)
  results with torch-struct's on the materialized edges.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

import semiring_flash as sf

NEG_INF = float("-inf")


@dataclass(frozen=True)
class Scenario:
    name: str
    B: int
    T: int  # tokens (torch-struct: N = T + 1 positions)
    K: int  # longest segment (torch-struct's K dim is K + 1)
    C: int
    dtype: torch.dtype = torch.float64
    lengths: tuple | None = None  # tokens per example; None = all T (lengths not passed)
    neg_inf: str | None = None  # None | "transition" | "duration"
    factored: bool = False
    factored_opts: tuple = ()  # subset of ("init", "start", "end") for factored scenarios
    k: int = 3  # for kmax / topk
    seed: int = 0
    note: str = ""
    tags: tuple = field(default=())

    @property
    def N(self) -> int:
        return self.T + 1

    @property
    def mixed(self) -> bool:
        return self.lengths is not None and len(set(self.lengths)) > 1

    @property
    def tol(self) -> tuple[float, float]:
        """(rtol, atol) for values compared with torch-struct."""
        return (1e-9, 1e-9) if self.dtype == torch.float64 else (2e-5, 2e-5)


SCENARIOS: list[Scenario] = [
    Scenario("base_f64", B=2, T=7, K=3, C=3),
    Scenario("base_f32", B=2, T=7, K=3, C=3, dtype=torch.float32),
    Scenario("lengths_full_explicit", B=2, T=7, K=3, C=3, lengths=(7, 7), seed=1,
             note="full lengths passed explicitly"),
    Scenario("k2_linear_chain", B=2, T=6, K=1, C=3, seed=2, note="torch-struct K=2: durations 1 only"),
    Scenario("c1_single_label", B=3, T=8, K=3, C=1, seed=3),
    Scenario("t1_single_token", B=3, T=1, K=2, C=2, k=2, seed=4, note="N=2"),
    Scenario("t2_k_longer_than_t", B=2, T=2, K=5, C=2, k=2, seed=5, note="K > T"),
    Scenario("wider_f32", B=3, T=13, K=4, C=4, dtype=torch.float32, k=4, seed=6),
    Scenario("mixed_lengths_f64", B=4, T=8, K=3, C=3, lengths=(8, 5, 2, 1), seed=7,
             note="torch-struct run per example"),
    Scenario("mixed_lengths_f32", B=3, T=10, K=4, C=2, lengths=(3, 10, 6), dtype=torch.float32, seed=8,
             note="longest not first; per example"),
    Scenario("neginf_transition", B=2, T=7, K=3, C=3, neg_inf="transition", seed=9,
             note="forbidden 0→1, 2→2"),
    Scenario("neginf_duration", B=2, T=7, K=3, C=3, neg_inf="duration", seed=10,
             note="forbidden durations; unused k=0 slice −inf"),
    Scenario("neginf_mixed_lengths", B=3, T=8, K=3, C=3, lengths=(8, 4, 6), neg_inf="transition", seed=11),
    Scenario("factored_f64", B=2, T=7, K=3, C=3, factored=True, factored_opts=("init", "end"), seed=12),
    Scenario("factored_start_mixed", B=3, T=8, K=3, C=2, lengths=(8, 5, 3), factored=True,
             factored_opts=("start", "end"), seed=13, note="start ⇒ −inf entry slots; per example"),
    Scenario("factored_f32", B=2, T=9, K=4, C=2, dtype=torch.float32, factored=True, seed=14),
]

BY_NAME = {s.name: s for s in SCENARIOS}


def _neg_inf_mask(sc: Scenario) -> torch.Tensor:
    """Boolean (T, K+1, C, C) mask of structural zeros (True = −inf)."""
    m = torch.zeros(sc.T, sc.K + 1, sc.C, sc.C, dtype=torch.bool)
    if sc.neg_inf == "transition":
        m[..., 1 % sc.C, 0] = True  # 0 → 1   (edge[..., c, c_prev])
        m[..., 2 % sc.C, 2 % sc.C] = True  # 2 → 2
        m[0] = False  # the free initial label may be anything
    elif sc.neg_inf == "duration":
        m[:, 0] = True  # the unused duration-0 slice
        if sc.K >= 3:
            m[:, 3, 0] = True  # label 0 never lasts 3
        m[:, 1, 2 % sc.C] = True  # label 2 never lasts 1
    return m


def _random_edges(sc: Scenario, g: torch.Generator) -> torch.Tensor:
    e = torch.randn(sc.B, sc.T, sc.K + 1, sc.C, sc.C, generator=g, dtype=torch.float64)
    if sc.neg_inf:
        e = e.masked_fill(_neg_inf_mask(sc), NEG_INF)
    return e.to(sc.dtype)


def _random_potentials(sc: Scenario, g: torch.Generator) -> sf.SegmentPotentials:
    r = lambda *s: torch.randn(*s, generator=g, dtype=torch.float64).to(sc.dtype)  # noqa: E731
    kw = {}
    if "init" in sc.factored_opts:
        kw["init"] = r(sc.C)
    if "start" in sc.factored_opts:
        kw["start"] = r(sc.B, sc.C)
    if "end" in sc.factored_opts:
        kw["end"] = r(sc.C)
    lengths = None if sc.lengths is None else torch.tensor(sc.lengths)
    return sf.SegmentPotentials(
        r(sc.B, sc.T, sc.C), transition=r(sc.C, sc.C), duration=r(sc.K, sc.C), lengths=lengths, **kw
    )


@dataclass
class Built:
    edges: torch.Tensor  # (B, T, K+1, C, C) torch-struct layout
    lengths: torch.Tensor | None  # positions (tokens + 1), as torch-struct takes them
    q_edges: torch.Tensor  # a second distribution (cross_entropy / kl)
    pots: sf.SegmentPotentials | None = None
    q_pots: sf.SegmentPotentials | None = None


def build(sc: Scenario) -> Built:
    """Deterministic inputs of a scenario."""
    g = torch.Generator().manual_seed(1000 + sc.seed)
    lengths = None if sc.lengths is None else torch.tensor(sc.lengths, dtype=torch.long) + 1
    if sc.factored:
        pots, q_pots = _random_potentials(sc, g), _random_potentials(sc, g)
        with torch.no_grad():
            return Built(pots.to_edges(), lengths, q_pots.to_edges(), pots, q_pots)
    return Built(_random_edges(sc, g), lengths, _random_edges(sc, g))
