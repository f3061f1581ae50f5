"""Issue 11's batched cases (B=16, T=1000, K=30, C=39 by default; --shape B T K C), split into
forward and backward, per launch setting: where do their milliseconds go, which setting is faster?

    python benchmarks/latency/mid_probe.py [--reps 20] [--only default w4 w16 fwd2 fwd4 bwd4 ringfwd] [--shape 32 10000 64 12]
    PYTHONPATH=<older checkout> python benchmarks/latency/mid_probe.py   # time that checkout's package

Inputs: 16 sequences of ``run_gpu.make_inputs`` (realistic log-softmax scores, forbidden
transitions), fp32 compute. Per variant (VARIANTS: statements on ``launch``'s tuning globals):
the forward with its tape stores (grad enabled) and the backward alone (autograd.grad with
retain_graph), median of --reps after a warm-up, in ms; every gradient against the float64 run
of the default settings (max |diff| / max |ref|). JSON to $OUT/mid_probe_B*_T*_K*_C*.json after every row.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
if ROOT not in sys.path:  # last: a semiring_flash on PYTHONPATH (an older checkout) is timed instead
    sys.path.append(ROOT)

import torch  # noqa: E402

from benchmarks.latency.run_gpu import make_inputs  # noqa: E402
from benchmarks.latency.run_gpu_bwd import _timed  # noqa: E402

B_, T_, K_, C_ = 16, 1000, 30, 39
NAMES = ("cum", "trans", "dur", "tau0", "end")
#: variant -> settings of launch's tuning globals (the rest at their defaults)
VARIANTS = {
    "default": {},
    "w4": dict(NUM_WARPS_OVERRIDE=4),
    "w16": dict(NUM_WARPS_OVERRIDE=16),
    "fwd2": dict(NUM_WARPS_OVERRIDE=2, bwd_warps=8),  # 2 warps in the forward, 8 in the backward
    "fwd4": dict(NUM_WARPS_OVERRIDE=4, bwd_warps=8),
    "bwd4": dict(bwd_warps=4),
    "bwd16": dict(bwd_warps=16),
    "ringfwd": dict(RING_FORWARD=True, RING_TAPES=True, RING_RECOMPUTE=False, RING_ADJOINT=False),
    "kept": dict(STORE_ALL_BYTES=1 << 40),  # the whole tape kept: no recompute
    "pull": dict(TAPE_PULL=True),  # the transposed transition pull beyond its measured regime
    "pull_kept": dict(TAPE_PULL=True, STORE_ALL_BYTES=1 << 40),
}


def batch_inputs(B, T, K, C, device):
    parts = [make_inputs(T, K, C, seed=s, device=device) for s in range(B)]
    cum, trans, dur, tau0, end, lengths = (torch.cat([p[i] for p in parts], dim=1 if i == 3 else 0)
                                           for i in range(6))
    return cum, trans, dur, tau0, end, lengths


def _median_s(fn, reps):
    return _timed(fn, reps)[0]  # after a warm-up call


def run(settings, inputs, reps, dtype=torch.float32):
    from semiring_flash import LogSemiring
    from semiring_flash.ops.triton import factored_scan_triton, launch

    settings = dict(settings)
    bwd_warps = settings.pop("bwd_warps", None)  # the backward's warps, whatever the forward's
    saved = {k: getattr(launch, k) for k in settings}
    saved_bwd_warps = launch._Meta.bwd_warps
    try:
        for k, v in settings.items():
            setattr(launch, k, v)
        if bwd_warps is not None:
            launch._Meta.bwd_warps = lambda self, recompute: bwd_warps
        *ops, lengths = inputs
        xs = [ops[0].clone().requires_grad_()] + [x.to(dtype).clone().requires_grad_() for x in ops[1:]]

        def fwd():
            return factored_scan_triton(LogSemiring, *xs, lengths)

        fwd_s = _median_s(fwd, reps)
        v = fwd()
        bwd_s = _median_s(lambda: torch.autograd.grad(v.sum(), xs, retain_graph=True), reps)
        both_s = _median_s(lambda: torch.autograd.grad(fwd().sum(), xs), reps)
        grads = [g.detach() for g in torch.autograd.grad(v.sum(), xs)]
    finally:
        for k, v_ in saved.items():
            setattr(launch, k, v_)
        launch._Meta.bwd_warps = saved_bwd_warps
    return dict(fwd_ms=1e3 * fwd_s, bwd_ms=1e3 * bwd_s, fwd_bwd_ms=1e3 * both_s), grads


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reps", type=int, default=20)
    ap.add_argument("--only", nargs="*", default=list(VARIANTS))
    ap.add_argument("--no-ref", action="store_true", help="no float64 reference run (profiling)")
    ap.add_argument("--shape", nargs=4, type=int, default=[B_, T_, K_, C_], metavar=("B", "T", "K", "C"))
    ap.add_argument("--save", help="torch.save the float64 reference's and each variant's gradients here")
    args = ap.parse_args(argv)
    B, T, K, C = args.shape
    out = os.environ.get("OUT", "./out")
    os.makedirs(out, exist_ok=True)
    import triton

    dev = "cuda" if torch.cuda.is_available() else "cpu"
    inputs = batch_inputs(B, T, K, C, dev)
    import semiring_flash

    meta = dict(device=torch.cuda.get_device_name() if dev == "cuda" else "cpu", torch=torch.__version__,
                package=os.path.dirname(semiring_flash.__file__),
                triton=triton.__version__, python=platform.python_version(), B=B, T=T, K=K, C=C,
                reps=args.reps, date=time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()))
    print(json.dumps(meta), flush=True)
    ref64 = None if args.no_ref else run({}, inputs, 1, torch.float64)[1]
    rows, saved = {}, {"f64": ref64}
    for name in args.only:
        try:
            row, grads = run(VARIANTS[name], inputs, args.reps)
            saved[name] = grads
            for n, g, o in zip(NAMES, grads, ref64 or ()):
                row[f"{n}_vs_f64"] = float((g.double() - o).abs().max() / o.abs().max().clamp_min(1e-300))
        except Exception as err:  # noqa: BLE001  (one failing variant must not hide the others)
            row = dict(error=repr(err)[:400])
        rows[name] = row
        print(name, json.dumps(row), flush=True)
        with open(os.path.join(out, f"mid_probe_B{B}_T{T}_K{K}_C{C}.json"), "w") as f:
            json.dump(dict(meta=meta, rows=rows), f, indent=1)
    if args.save:
        torch.save({k: [g.cpu() for g in v] for k, v in saved.items() if v is not None}, args.save)
    return rows


if __name__ == "__main__":
    main()
