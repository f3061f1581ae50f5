"""float32 vs float64 at long T on uncentred, log-probability-like scores (docs/numerics.md).

    python benchmarks/numerics_long.py --T 100000                      # torch engine, CPU
    python benchmarks/numerics_long.py --T 1000000 --device cuda       # Triton kernels
    python benchmarks/numerics_long.py --T 20000 --json out.json
    python benchmarks/numerics_long.py --T 4000 --K 8 --C 4 --offset -1000   # a common score offset

The model is ``tests/strategies.py::logprob_model`` (log-softmax scores of a random
encoder, one label shifted by +8, another scaled ×10, −inf structural zeros), built
once in float64 and rounded to float32: the float64 run of the same model, through
the same engine, is the reference. Reported, per gradient: max|g32 − g64| / max|g64|;
for the score gradients (token marginals) also the per-position error max_c |Δ| /
max|g64| by tenth of T (drift in the backward shows as an error growing towards
t = 0) and the token mass error max_t |Σ_c g32[t, c] − 1| (exactly 0 in exact
arithmetic, for any model); for log Z the relative error. Time: one forward +
backward per dtype (not a benchmark: no warm-up, no repeats). ``--offset``: a constant added
to every score (in float64, before rounding), which leaves the model unchanged.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "tests"))

import semiring_flash as sf  # noqa: E402
from strategies import logprob_model  # noqa: E402


def run(T, K, C, dtype, device, backend, seed=0, offset=0.0):
    base = logprob_model(T, K, C, torch.float64, seed)
    base["scores"] = base["scores"] + offset
    model = {k: v.to(device=device, dtype=dtype).requires_grad_() for k, v in base.items()}
    if device == "cuda":
        torch.cuda.synchronize()
    t0 = time.time()
    logz = sf.SemiMarkovCRF(sf.SegmentPotentials(**model), backend=backend).partition
    grads = torch.autograd.grad(logz.sum(), list(model.values()))
    if device == "cuda":
        torch.cuda.synchronize()
    return logz.detach().double().cpu(), {k: g.double().cpu() for k, g in zip(model, grads)}, time.time() - t0


def compare(T, K, C, device="cpu", backend="torch", seed=0, offset=0.0):
    z32, g32, s32 = run(T, K, C, torch.float32, device, backend, seed, offset)
    z64, g64, s64 = run(T, K, C, torch.float64, device, backend, seed, offset)
    out = {"T": T, "K": K, "C": C, "offset": offset, "device": device, "backend": backend, "seconds_fp32": round(s32, 2),
           "seconds_fp64": round(s64, 2), "logZ": float((z32 - z64).abs().max() / z64.abs().max())}
    for name in g64:
        out[name] = float((g32[name] - g64[name]).abs().max() / g64[name].abs().max())
    a, b = g32["scores"][0], g64["scores"][0]
    per = (a - b).abs().amax(-1) / b.abs().max()
    n = max(1, T // 10)
    out["scores_by_tenth"] = [float(per[i * n:(i + 1) * n].max()) for i in range(10)]
    out["token_mass_fp32"] = float((a.sum(-1) - 1).abs().max())
    out["token_mass_fp64"] = float((b.sum(-1) - 1).abs().max())
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--T", type=int, default=100_000)
    ap.add_argument("--K", type=int, default=32)
    ap.add_argument("--C", type=int, default=8)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--backend", default=None, help="torch | triton (default: torch on CPU, triton on CUDA)")
    ap.add_argument("--json", default=None, help="write the result here too")
    ap.add_argument("--offset", type=float, default=0.0, help="a constant added to every score (model unchanged)")
    args = ap.parse_args()
    torch.set_num_threads(1)
    backend = args.backend or ("triton" if args.device == "cuda" else "torch")
    res = compare(args.T, args.K, args.C, args.device, backend, offset=args.offset)
    res["semiring_flash"] = os.path.dirname(sf.__file__)
    print(json.dumps(res, indent=1))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(res, f, indent=1)


if __name__ == "__main__":
    main()
