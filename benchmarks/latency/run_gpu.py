"""B=1 forward-scan latency of every variant in fwd_variants.py (issue 11), on one GPU.

    python benchmarks/latency/run_gpu.py [--only NAME ...] [--reps 5] [--T 100000 10000]

For each variant: log Z at T=1e4, K=100, C=8 (realistic scores: log-softmax emissions,
forbidden transitions, a log-softmax duration prior) against an exact float64 evaluation
(``reference_logz``: plain torch, float64, no normaliser); then the forward wall time at
each T (warm-up call first so no JIT compile is timed; median of --reps runs), reported
in µs/step. A variant that fails to compile or run is recorded and skipped. Results go to
$OUT/latency_results.json (OUT defaults to ./out) and a table to stdout.

Order: the baseline and the leading plain-Triton candidates, then the Gluon variants (not
runnable in the CPU interpreter, so checked here first), then the other plain variants. A
faulting kernel can poison the CUDA context and fail every variant after it: re-run those
with --only. Past --budget seconds the remaining variants are skipped (recorded as such).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import statistics
import sys
import time
import traceback

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

import torch  # noqa: E402

K_, C_ = 100, 8
REL_TOL = 1e-6  # DESIGN.md "Numerics": log Z relative error vs a float64 reference
#: run first (fewest barriers in the sm_90 proxy, and the warp-count sweep of the register ring)
LEADING = ["baseline", "baseline_full", "baseline_ck", "regring_w4", "regring_w2", "regring_w1", "lanesk_trt_w8", "lanesk_trt_w4"]


def make_inputs(T: int, K: int = K_, C: int = C_, seed: int = 0, device="cuda"):
    """B=1 factored inputs with realistic scores, as the real kernel takes them (float64 cum)."""
    g = torch.Generator().manual_seed(seed)
    r = lambda *s: torch.randn(*s, generator=g, dtype=torch.float64)  # noqa: E731
    emis = torch.log_softmax(2.0 * r(T, C), -1)
    cum = torch.cat([torch.zeros(1, C, dtype=torch.float64), emis.cumsum(0)], 0)[None]
    trans = torch.log_softmax(r(C, C), -1)
    trans[torch.rand(C, C, generator=g) < 0.25] = float("-inf")  # forbidden transitions
    trans.fill_diagonal_(math.log(0.5))  # every label can continue
    d = torch.arange(1, K + 1, dtype=torch.float64)[:, None]
    dur = torch.log_softmax(-0.05 * d + 0.5 * r(K, C), 0)
    tau0 = torch.log_softmax(r(C), -1)[None, None]
    end = torch.zeros(1, C, dtype=torch.float64)
    end[0, 0] = float("-inf")
    lengths = torch.tensor([T])
    return [x.to(device) for x in (cum, trans[None], dur[None], tau0, end, lengths)]


def reference_logz(cum, trans, dur, tau0, end, lengths):
    """Exact float64 log Z per sequence (CPU; absolute values, no normaliser, no ring tricks)."""
    cum, trans, dur, tau0, end = (x.detach().double().cpu() for x in (cum, trans, dur, tau0, end))
    out = []
    for b, L in enumerate(lengths.tolist()):
        K = dur.shape[1]
        taus = [tau0[0, b]]  # τ(p), p = 0..t-1
        alpha = torch.full_like(tau0[0, b], float("-inf"))
        for t in range(1, L + 1):
            lo = max(0, t - K)
            prev = torch.stack(taus[lo:t])  # rows p = lo..t-1, d = t - p
            seg = cum[b, t] - cum[b, lo:t] + dur[b, : t - lo].flip(0)  # d = t - p: index d-1
            alpha = torch.logsumexp(prev + seg, 0)
            taus.append(torch.logsumexp(alpha[:, None] + trans[b], 0))
        out.append(torch.logsumexp(alpha + end[b], 0))
    return torch.stack(out)


def _sync():
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def _time(fn, args, reps: int) -> list[float]:
    ts = []
    for _ in range(reps):
        _sync()
        t0 = time.perf_counter()
        fn(*args)
        _sync()
        ts.append(time.perf_counter() - t0)
    return ts


def run_variant(name, fn, ref_inputs, ref, long_inputs, reps):
    res = dict(name=name)
    try:
        t0 = time.perf_counter()
        fn(*ref_inputs)  # compile (T is not specialised: one compile serves every T)
        _sync()
        res["first_call_s"] = time.perf_counter() - t0
        z = float(fn(*ref_inputs)[0])
        res.update(logz=z, ref=ref, abs_err=abs(z - ref), rel_err=abs(z - ref) / max(abs(ref), 1e-300))
        res["correct"] = bool(math.isfinite(z) and res["rel_err"] <= REL_TOL)
        for T, args in long_inputs.items():
            probe = _time(fn, args, 1)[0]  # warm-up at this size (allocator, caches), untimed
            n = reps if probe * reps < 20 else 1  # a pathological variant must not eat the budget
            ts = _time(fn, args, n)
            res[f"T{T}"] = dict(times_s=ts, median_s=statistics.median(ts), us_per_step=1e6 * statistics.median(ts) / T)
    except Exception as e:  # record and go on: one variant's failure is a result
        res["error"] = f"{type(e).__name__}: {e}"[:2000]
        res["traceback"] = traceback.format_exc()[-4000:]
    return res


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only", nargs="*", help="variant names (default: all)")
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--T", type=int, nargs="*", default=[100_000, 10_000])
    ap.add_argument("--Tref", type=int, default=10_000)
    ap.add_argument("--K", type=int, default=K_)
    ap.add_argument("--C", type=int, default=C_)
    ap.add_argument("--budget", type=float, default=170.0, help="seconds; later variants are skipped")
    ap.add_argument("--ring", choices=["on", "off"],
                    help="the baselines (the real kernel) with the register-ring forward on (RING_FORWARD and "
                         "RING_TAPES: the tape and checkpoint stores too) or off; default: the library's setting")
    args = ap.parse_args(argv)
    if args.ring:
        from semiring_flash.ops.triton import launch

        launch.RING_FORWARD = launch.RING_TAPES = args.ring == "on"
    out_dir = os.environ.get("OUT", "./out")
    os.makedirs(out_dir, exist_ok=True)

    from benchmarks.latency.fwd_variants import VARIANTS
    try:  # Gluon variants are optional (a triton without Gluon, or not written yet)
        from benchmarks.latency.gluon_variants import GLUON_VARIANTS
    except Exception as e:  # noqa: BLE001
        GLUON_VARIANTS, gluon_error = {}, f"{type(e).__name__}: {e}"
    else:
        gluon_error = None
    variants = dict(VARIANTS) | dict(GLUON_VARIANTS)
    first = [n for n in LEADING if n in variants] + list(GLUON_VARIANTS)
    names = args.only or first + [n for n in variants if n not in first]

    t0 = time.perf_counter()
    # without CUDA (a smoke test under TRITON_INTERPRET=1, tiny sizes) the same flow runs on CPU
    dev = "cuda" if torch.cuda.is_available() else "cpu"
    ref_inputs = make_inputs(args.Tref, args.K, args.C, device=dev)
    ref = float(reference_logz(*ref_inputs)[0])
    ref_s = time.perf_counter() - t0
    long_inputs = {T: make_inputs(T, args.K, args.C, seed=1, device=dev) for T in args.T}
    import triton
    meta = dict(device=torch.cuda.get_device_name() if dev == "cuda" else "cpu", torch=torch.__version__,
                triton=triton.__version__, python=platform.python_version(), K=args.K, C=args.C, B=1, Tref=args.Tref, T=args.T, reps=args.reps,
                ref_logz=ref, ref_seconds=ref_s, gluon_import_error=gluon_error)
    print(json.dumps(meta))
    rows = []
    for name in names:
        if time.perf_counter() - t0 > args.budget:
            rows.append(dict(name=name, error="skipped: time budget"))
            continue
        r = run_variant(name, variants[name], ref_inputs, ref, long_inputs, args.reps)
        rows.append(r)
        cells = [f"{r.get(f'T{T}', {}).get('us_per_step', float('nan')):8.3f}" for T in args.T]
        status = r.get("error", "")[:90] if "error" in r else f"rel_err {r['rel_err']:.1e} {'ok' if r['correct'] else 'WRONG'}"
        print(f"{name:24s} " + " ".join(cells) + f"  us/step (T={args.T})  {status}", flush=True)
        with open(os.path.join(out_dir, "latency_results.json"), "w") as f:  # after each: a crash keeps the rest
            json.dump(dict(meta=meta, rows=rows), f, indent=1)
    return rows


if __name__ == "__main__":
    main()
