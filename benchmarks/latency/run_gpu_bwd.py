"""B=1 backward-scan latency of the real kernel per register-ring flag set (issue 11), on one GPU.

    python benchmarks/latency/run_gpu_bwd.py [--T 100000] [--reps 3] [--only off all ...]

Inputs: ``run_gpu.make_inputs`` (K=100, C=8, realistic log-prob scores), fp32 compute. For each
flag set of ``launch`` (FLAGS) and each backward mode ("stored": the forward keeps the whole tape,
the default at this size; "recompute": STORE_ALL_BYTES = 0, the backward recomputes each block
from checkpoints): the forward with its stores and the backward alone (autograd.grad with
retain_graph, warm-up call first; median of --reps), in µs/step; and every gradient against the
flags-off kernel's (max |diff| / max |ref|, bitwise equality) and against a float64 run of the
flags-off kernel (the accuracy reference; DESIGN.md: fp32 gradients within 1e-4). JSON to
$OUT/bwd_latency.json (OUT defaults to ./out) after every row, a table to stdout.
"""

from __future__ import annotations

import argparse
import json
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

from benchmarks.latency.run_gpu import C_, K_, make_inputs  # noqa: E402

#: launch flags per set (the rest off); "off" is the reference
FLAGS = {"off": (), "fwd": ("RING_FORWARD", "RING_TAPES"), "rc": ("RING_FORWARD", "RING_TAPES", "RING_RECOMPUTE"),
         "adj": ("RING_ADJOINT",), "all": ("RING_FORWARD", "RING_TAPES", "RING_RECOMPUTE", "RING_ADJOINT"),
         "pipe": ("RING_FORWARD", "RING_TAPES", "RING_RECOMPUTE", "RING_ADJOINT", "PIPELINE_BACKWARD")}
ALL_FLAGS = ("RING_FORWARD", "RING_TAPES", "RING_RECOMPUTE", "RING_ADJOINT", "PIPELINE_BACKWARD")
NAMES = ("cum", "trans", "dur", "tau0", "end")


def _set(flags, store_all):
    from semiring_flash.ops.triton import launch

    for f in ALL_FLAGS:
        setattr(launch, f, f in flags)
    launch.STORE_ALL_BYTES = store_all


def _sync():
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def _leaves(inputs, dtype):
    cum, trans, dur, tau0, end, lengths = inputs
    xs = [cum.clone()] + [x.to(dtype).clone() for x in (trans, dur, tau0, end)]
    return [x.requires_grad_() for x in xs], lengths


def _forward(xs, lengths):
    from semiring_flash import LogSemiring
    from semiring_flash.ops.triton import factored_scan_triton

    return factored_scan_triton(LogSemiring, *xs, lengths)


def _timed(fn, reps):
    fn()  # warm-up (compiles, allocator)
    ts = []
    for _ in range(reps):
        _sync()
        t0 = time.perf_counter()
        fn()
        _sync()
        ts.append(time.perf_counter() - t0)
    return statistics.median(ts), ts


def run_one(flags, store_all, inputs, T, reps, ref=None, ref64=None):
    """Times and gradients of one flag set / mode; ref (flags-off grads) and ref64 (float64) to compare."""
    from semiring_flash.ops.triton import launch

    default_store = launch.STORE_ALL_BYTES
    _set(flags, store_all)
    try:
        xs, lengths = _leaves(inputs, torch.float32)
        fwd_s, _ = _timed(lambda: _forward(xs, lengths), reps)
        v = _forward(xs, lengths)
        bwd_s, ts = _timed(lambda: torch.autograd.grad(v.sum(), xs, retain_graph=True), reps)
        grads = [g.detach() for g in torch.autograd.grad(v.sum(), xs)]
    finally:
        _set((), default_store)
    row = dict(fwd_us_per_step=1e6 * fwd_s / T, bwd_us_per_step=1e6 * bwd_s / T, bwd_times_s=ts,
               value=float(v.detach()[0, 0]))
    for name, g in zip(NAMES, grads):
        row[f"{name}_finite"] = bool(torch.isfinite(g).all())
        for tag, other in (("vs_off", ref), ("vs_f64", ref64)):
            if other is not None:
                o = other[NAMES.index(name)]
                row[f"{name}_{tag}"] = float((g.double() - o.double()).abs().max() / o.double().abs().max().clamp_min(1e-300))
        if ref is not None:
            row[f"{name}_bitwise_off"] = bool(torch.equal(g, ref[NAMES.index(name)]))
    return row, grads


def main(argv=None):
    """Runs the flag sets, then leaves launch's flags as it found them (tests call this in-process)."""
    from semiring_flash.ops.triton import launch

    saved = {f: getattr(launch, f) for f in ALL_FLAGS + ("STORE_ALL_BYTES",)}
    try:
        return _main(argv)
    finally:
        for f, v in saved.items():
            setattr(launch, f, v)


def _main(argv):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--T", type=int, default=100_000)
    ap.add_argument("--K", type=int, default=K_)
    ap.add_argument("--C", type=int, default=C_)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--only", nargs="*", default=list(FLAGS), help="flag sets (FLAGS); 'off' always runs")
    ap.add_argument("--modes", nargs="*", default=["stored", "recompute"])
    args = ap.parse_args(argv)
    out_dir = os.environ.get("OUT", "./out")
    os.makedirs(out_dir, exist_ok=True)
    import triton
    from semiring_flash.ops.triton import launch

    dev = "cuda" if torch.cuda.is_available() else "cpu"
    inputs = make_inputs(args.T, args.K, args.C, seed=1, device=dev)
    meta = dict(device=torch.cuda.get_device_name() if dev == "cuda" else "cpu", torch=torch.__version__,
                triton=triton.__version__, python=platform.python_version(), B=1, T=args.T, K=args.K, C=args.C,
                reps=args.reps, dtype="float32", ring_fold=launch.RING_FOLD)
    print(json.dumps(meta), flush=True)
    rows = []
    default_store = launch.STORE_ALL_BYTES
    for mode in args.modes:
        store_all = default_store if mode == "stored" else 0
        # float64 reference: the flags-off kernel in float64 (same mode)
        _set((), store_all)
        try:
            xs64, lengths = _leaves(inputs, torch.float64)
            ref64 = [g.detach() for g in torch.autograd.grad(_forward(xs64, lengths).sum(), xs64)]
        finally:
            _set((), default_store)
        ref = None
        for name in ["off"] + [n for n in args.only if n != "off"]:
            try:
                row, grads = run_one(FLAGS[name], store_all, inputs, args.T, args.reps, ref, ref64)
                ref = grads if name == "off" else ref
            except Exception as e:  # record and go on
                row = dict(error=f"{type(e).__name__}: {e}"[:2000], traceback=traceback.format_exc()[-4000:])
            row.update(flags=name, mode=mode)
            rows.append(row)
            if "error" in row:
                print(f"{mode:9s} {name:5s} ERROR {row['error'][:200]}", flush=True)
            else:
                worst_off = max((row.get(f"{n}_vs_off", 0.0) for n in NAMES), default=0.0)
                worst64 = max(row[f"{n}_vs_f64"] for n in NAMES)
                bitwise = all(row.get(f"{n}_bitwise_off", True) for n in NAMES)
                print(f"{mode:9s} {name:5s} fwd {row['fwd_us_per_step']:7.3f}  bwd {row['bwd_us_per_step']:7.3f} us/step"
                      f"  grads vs off {worst_off:.1e} (bitwise {bitwise})  vs f64 {worst64:.1e}", flush=True)
            with open(os.path.join(out_dir, "bwd_latency.json"), "w") as f:
                json.dump(dict(meta=meta, rows=rows), f, indent=1)
    return rows


if __name__ == "__main__":
    main()
