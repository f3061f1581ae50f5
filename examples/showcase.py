"""A short CPU showcase: exact semi-CRF inference, checked against torch-struct, then at a length torch-struct cannot hold.

    python examples/showcase.py       (the main job, scripts/demo.sh, is examples/gene_structure.py)
"""

from __future__ import annotations

import argparse
import time
import warnings

import torch

import semiring_flash as sf

# torch-struct 0.5 (the oracle here) warns about its own missing arg_constraints on every distribution
warnings.filterwarnings("ignore", message=".*does not define `arg_constraints`")


def progress(iterable, **kwargs):
    """tqdm's bar when installed (the demo and bench extras); plain iteration otherwise."""
    try:
        from tqdm import tqdm
    except ImportError:
        return iterable
    return tqdm(iterable, **kwargs)


def parity(B=4, T=64, K=8, C=6, seed=0):
    try:
        import torch_struct
    except ImportError as err:
        raise SystemExit(f"{err}: the parity check needs torch-struct 0.5 (pip install torch-struct==0.5)") from err

    g = torch.Generator().manual_seed(seed)
    edges = torch.randn(B, T, K + 1, C, C, generator=g, dtype=torch.float64)
    ours = sf.SemiMarkovCRF(edges)
    theirs = torch_struct.SemiMarkovCRF(edges.clone())
    rows = []
    checks = {
        "partition": lambda d: d.partition,
        "marginals": lambda d: d.marginals,
        "argmax": lambda d: d.argmax,
        "entropy": lambda d: d.entropy,
        "kmax(3)": lambda d: d.kmax(3),
    }
    for name, fn in progress(checks.items(), desc="torch-struct parity"):
        t0 = time.perf_counter()
        a = fn(ours)
        t1 = time.perf_counter()
        b = fn(theirs)
        t2 = time.perf_counter()
        rows.append((name, float((a - b).detach().abs().max()), t1 - t0, t2 - t1))
    print(f"\nParity with torch-struct 0.5 on edges B={B}, T={T}, K={K}, C={C} (float64)")
    print(f"{'property':<12}{'max |diff|':>12}{'ours (s)':>10}{'t-struct (s)':>14}")
    for name, diff, ta, tb in rows:
        print(f"{name:<12}{diff:>12.2e}{ta:>10.3f}{tb:>14.3f}")


def long_sequence(T=50_000, K=32, C=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    # a sequence with real regimes: label c is favoured on long stretches
    regime = torch.randint(0, C, (T // 500 + 1,), generator=g).repeat_interleave(500)[:T]
    scores = torch.randn(1, T, C, generator=g) + 2.0 * torch.nn.functional.one_hot(regime, C).unsqueeze(0)
    scores.requires_grad_()
    # a label switch costs 4, a segment continuing its label nothing, and longer segments score a
    # little more: the decoded segments follow the regimes (noise alone would cut them up)
    transition = torch.full((C, C), -4.0).fill_diagonal_(0.0).requires_grad_()
    duration = (0.05 * torch.arange(1, K + 1, dtype=torch.float32)).unsqueeze(1).repeat(1, C).requires_grad_()
    pots = sf.SegmentPotentials(scores, transition=transition, duration=duration)
    dist = sf.SemiMarkovCRF(pots, backend="torch")
    t0 = time.perf_counter()
    logz = dist.partition
    logz.sum().backward()
    t1 = time.perf_counter()
    best = dist.argmax.segments()[0]
    t2 = time.perf_counter()
    edge_bytes = T * (K + 1) * C * C * 4
    print(f"\nFactored semi-CRF, B=1, T={T:,}, K={K}, C={C} (float32, float64 prefix sums)")
    print(f"  log Z = {logz.item():.4f}; forward+backward {t1 - t0:.1f} s; Viterbi {t2 - t1:.1f} s")
    print(f"  the materialized edge tensor would take {edge_bytes / 2**20:,.0f} MiB; never built here")
    print(f"  gradient norms: scores {scores.grad.norm():.3f}, transition {transition.grad.norm():.3f}")
    labels = torch.tensor([c for s, e, c in best for _ in range(s, e)])
    print(f"  Viterbi: {len(best)} segments; first five (start, end, label): {best[:5]}")
    print(f"  decoded labels agree with the hidden regime on {float((labels == regime).float().mean()):.1%} of the tokens")


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--T", type=int, default=50_000)
    args = ap.parse_args()
    torch.set_num_threads(max(1, torch.get_num_threads()))
    parity()
    long_sequence(T=args.T)


if __name__ == "__main__":
    main()
