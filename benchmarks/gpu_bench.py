"""GPU benchmark of the Triton streaming kernels (issue 3's cases), log semiring, fp32.

    python benchmarks/gpu_bench.py --out benchmarks/results            # all cases
    python benchmarks/gpu_bench.py --cases small,mid --sweep            # subset, num_warps sweep
    python benchmarks/gpu_bench.py --cases api                          # the public API, small batch

For each case: forward + backward (gradients w.r.t. every potential) of this
kernel, and where it is affordable the PyTorch streaming engine and
torch-struct on the same inputs. Time is CUDA-synchronised wall time (median
over repeats for short cases, one timed run after a warm-up for long ones).
"Extra memory" is the peak allocation during the call minus what was
allocated before it (the inputs); ``extra_minus_grads`` also subtracts the
gradient tensors the call returns (outputs, same size as the inputs).
The ``api`` case times the public API instead (build SegmentPotentials,
SemiMarkovCRF(...).partition, gradients w.r.t. scores, transition, duration) per
validation mode, eager and as a CUDA-graph replay; "pipelined" is the time per
call when calls are queued back to back and synchronised once (a training loop).
Its ``public_api_host`` row breaks the host time of one call down (printed as a
table): enqueue time without any synchronisation, the Triton launches (direct and
Triton's generic path), and cProfile's cumulative time of the stages of the call.
Writes gpu_bench.json and gpu_bench.png under --out.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import semiring_flash as sf  # noqa: E402
from semiring_flash.ops import streaming  # noqa: E402
from semiring_flash.ops import triton as tk  # noqa: E402
from semiring_flash.ops.dispatch import entry_value  # noqa: E402
from semiring_flash.ops.triton import launch  # noqa: E402

DEV = "cuda"
CASES = {
    "small": dict(B=32, T=128, K=8, C=16, target_s=1e-3),
    "api": dict(B=32, T=128, K=8, C=16, target_s=0.5e-3),
    "mid": dict(B=16, T=1000, K=30, C=39, target_s=20e-3),
    "long": dict(B=1, T=100_000, K=100, C=8, target_s=1.0),
    "huge": dict(B=1, T=10_000_000, K=100, C=8, target_s=60.0),
    "viterbi": dict(B=1, T=1_000_000, K=100, C=8, target_s=2.0),
}


def make_inputs(B, T, K, C, seed=0):
    g = torch.Generator(device=DEV).manual_seed(seed)
    scores = torch.randn(B, T, C, generator=g, device=DEV)
    cum = torch.cat([torch.zeros(B, 1, C, dtype=torch.float64, device=DEV), scores.double().cumsum(1)], 1)
    trans = 0.5 * torch.randn(B, C, C, generator=g, device=DEV)
    dur = torch.randn(B, K, C, generator=g, device=DEV)
    entry = 0.5 * torch.randn(B, C, C, generator=g, device=DEV)
    end = torch.randn(B, C, generator=g, device=DEV)
    lengths = torch.full((B,), T, dtype=torch.int64, device=DEV)
    return cum, trans, dur, entry, end, lengths


def sync():
    torch.cuda.synchronize()


def _both_tape_variants(fn):
    """A warm-up that compiles both kernel variants (FULL: the whole tape kept, or the
    recompute backward): a short T alone takes the store-all one, while a long case may
    take the other, whose JIT compile (seconds) would then land inside the timed run."""
    def warm():
        fn()
        saved = launch.STORE_ALL_BYTES
        launch.STORE_ALL_BYTES = 0
        try:
            fn()
        finally:
            launch.STORE_ALL_BYTES = saved
    return warm


def measure(fn, reps, warm=None):
    """(median seconds, extra peak bytes, bytes of returned tensors) of fn().

    ``warm``: a cheaper call that compiles the same kernels (T is a runtime
    argument); then a single run is both timed and memory-profiled (long cases).
    """
    (warm or fn)()  # warm-up / compile
    sync()
    times = []
    for _ in range(reps if warm is None else 0):
        sync()
        t = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - t)
    sync()
    torch.cuda.empty_cache()
    base = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    t = time.perf_counter()
    out = fn()
    sync()
    last = time.perf_counter() - t
    peak = torch.cuda.max_memory_allocated() - base
    out_bytes = sum(x.numel() * x.element_size() for x in (out or []) if torch.is_tensor(x))
    del out
    if not times:
        times = [last]
    times.sort()
    return times[len(times) // 2], peak, out_bytes


def gpu_seconds(fn):
    """GPU (kernel) time of one call, from the profiler; None where it is unavailable."""
    try:
        from torch.profiler import ProfilerActivity, profile

        fn()
        sync()
        with profile(activities=[ProfilerActivity.CUDA]) as prof:
            fn()
            sync()
        return sum(e.self_device_time_total for e in prof.key_averages()) * 1e-6
    except Exception as err:  # noqa: BLE001
        print("profiler unavailable:", repr(err)[:200], flush=True)
        return None


def factored_fn(impl, cum, trans, dur, entry, end, lengths, backward=True):
    leaves = [cum, trans, dur, end]

    def run():
        xs = [x.detach().requires_grad_(backward) for x in leaves]
        c, tr, du, en = xs
        tau0 = entry_value(sf.LogSemiring, entry, torch.float32)
        if impl == "triton":
            v = tk.factored_scan_triton(sf.LogSemiring, c, tr, du, tau0, en, lengths)
        else:
            v = streaming.factored_scan(sf.LogSemiring, c, tr, du, tau0, en, lengths)
        if not backward:
            return [v]
        return list(torch.autograd.grad(v.sum(), xs))

    return run


def edge_fn(impl, edges, lengths):
    def run():
        e = edges.detach().requires_grad_()
        if impl == "triton":
            v = tk.edge_scan_triton(sf.LogSemiring, e, lengths)
        else:
            import torch_struct

            v = torch_struct.SemiMarkovCRF(e, lengths=lengths + 1).partition
        (g,) = torch.autograd.grad(v.sum(), e)
        return [g]

    return run


def api_fn(B, T, K, C, seed=0):
    """One public-API call: SegmentPotentials from (B, T, C) scores, partition, gradients."""
    g = torch.Generator(device=DEV).manual_seed(seed)
    scores = torch.randn(B, T, C, generator=g, device=DEV).requires_grad_()
    trans = (0.5 * torch.randn(C, C, generator=g, device=DEV)).requires_grad_()
    dur = torch.randn(K, C, generator=g, device=DEV).requires_grad_()
    lengths = torch.full((B,), T, dtype=torch.int64, device=DEV)
    leaves = [scores, trans, dur]

    def run():
        pots = sf.SegmentPotentials(scores, transition=trans, duration=dur, lengths=lengths)
        z = sf.SemiMarkovCRF(pots).partition
        return list(torch.autograd.grad(z.sum(), leaves))

    return run


def pipelined(fn, reps=200):
    """Seconds per call with calls queued back to back, one synchronisation at the end."""
    fn()
    sync()
    t = time.perf_counter()
    for _ in range(reps):
        fn()
    sync()
    return (time.perf_counter() - t) / reps


def cuda_graph(fn):
    """fn captured in a CUDA graph (after a warm-up on a side stream): a replay function."""
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(3):
            fn()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = fn()

    def replay():
        graph.replay()
        return out

    return replay


def bench_api(name, cfg, results):
    B, T, K, C = cfg["B"], cfg["T"], cfg["K"], cfg["C"]
    run = api_fn(B, T, K, C)
    dims = dict(B=B, T=T, K=K, C=C, target_s=cfg["target_s"])
    has_modes = hasattr(sf, "set_validation")  # absent before the validation policy existed
    for mode in ("auto", "full", "off") if has_modes else ("always (no policy)",):
        if has_modes:
            sf.set_validation(mode)
        s, ex, ob = measure(run, 200)
        results.append(row(name, f"public_api_eager[{mode}]", s, ex, ob, pipelined_seconds=pipelined(run),
                           gpu_seconds=gpu_seconds(run), **dims))
    if has_modes:
        sf.set_validation("auto")
    if hasattr(launch, "DIRECT_LAUNCH"):
        host_breakdown(name, run, dims, results)
    try:
        replay = cuda_graph(run)
        s, ex, ob = measure(replay, 200)
        results.append(row(name, "public_api_cuda_graph", s, ex, ob, pipelined_seconds=pipelined(replay), **dims))
    except Exception as err:  # noqa: BLE001  (the old host path syncs: capture fails)
        results.append(dict(case=name, impl="public_api_cuda_graph", error=repr(err)[:300], **dims))
        print(json.dumps(results[-1]), flush=True)


#: stages of one public-API call, as cProfile names them: (label, file suffix, function)
HOST_STAGES = [
    ("SegmentPotentials(...)", "semiring_flash/potentials.py", "__init__"),
    ("  .cum (prefix sums)", "semiring_flash/potentials.py", "cum"),
    (".partition (forward)", "semiring_flash/distribution.py", "partition"),
    ("  dispatch.value", "semiring_flash/ops/dispatch.py", "value"),
    ("  _FactoredScan.forward", "semiring_flash/ops/triton/launch.py", "forward"),
    ("  _SegmentScan.forward (one-node path)", "semiring_flash/ops/triton/segment_scan.py", "forward"),
    ("    _fwd (allocations + launch)", "semiring_flash/ops/triton/launch.py", "_fwd"),
    ("torch.autograd.grad (backward)", "torch/autograd/__init__.py", "grad"),
    ("  _FactoredScan.backward", "semiring_flash/ops/triton/launch.py", "backward"),
    ("  _SegmentScan.backward (one-node path)", "semiring_flash/ops/triton/segment_scan.py", "backward"),
    ("    _bwd (allocations + launch)", "semiring_flash/ops/triton/launch.py", "_bwd"),
    ("Triton launches (_launch)", "semiring_flash/ops/triton/launch.py", "_launch"),
    ("  Triton generic path (JITFunction.run)", "triton/runtime/jit.py", "run"),
]


def _enqueue_seconds(fn, calls=20):
    """Host seconds per call with nothing synchronised inside the timed region (few enough
    calls that the launch queue never fills, so the GPU cannot hold the host back)."""
    fn()
    sync()
    t = time.perf_counter()
    for _ in range(calls):
        fn()
    host = (time.perf_counter() - t) / calls
    sync()
    return host


def _set_direct(on):
    launch.DIRECT_LAUNCH = on


def host_breakdown(name, fn, dims, results, reps=100, rounds=5):
    """Host time of one API call: enqueue time with the direct launch and with Triton's generic
    one (best of interleaved rounds), and cProfile's cumulative time per stage (profiling
    inflates Python time: read the stages as shares)."""
    import cProfile
    import pstats

    best = {True: float("inf"), False: float("inf")}
    try:
        for _ in range(rounds):
            for on in (True, False):
                _set_direct(on)
                best[on] = min(best[on], _enqueue_seconds(fn))
    finally:
        _set_direct(True)
    direct, generic = best[True], best[False]
    fn()
    sync()
    prof = cProfile.Profile()
    prof.enable()
    for _ in range(reps):
        fn()
    prof.disable()
    sync()
    stats = pstats.Stats(prof).stats  # (file, line, function) -> (calls, primitive, tottime, cumtime, callers)
    stages = {}
    for label, suffix, func in HOST_STAGES:
        hits = [v for (f, _, fname), v in stats.items() if fname == func and f.endswith(suffix)]
        stages[label] = dict(us=1e6 * sum(v[3] for v in hits) / reps, calls=sum(v[0] for v in hits) / reps)
    r = dict(case=name, impl="public_api_host", host_enqueue_s=direct, host_enqueue_generic_launch_s=generic,
             profiled_call_us=1e6 * sum(v[2] for v in stats.values()) / reps, stages=stages, **dims)
    print(json.dumps(r), flush=True)
    print(f"host time per API call ({torch.cuda.get_device_name()}): {1e6 * direct:.0f} us enqueue "
          f"(direct launch), {1e6 * generic:.0f} us (Triton's generic launch)")
    print(f"{'stage (cProfile, cumulative)':44s} {'us/call':>9s} {'calls':>6s}")
    for label, v in stages.items():
        print(f"{label:44s} {v['us']:9.1f} {v['calls']:6.1f}")
    print(f"{'whole call under cProfile':44s} {r['profiled_call_us']:9.1f}", flush=True)
    top = sorted(stats.items(), key=lambda kv: -kv[1][2])[:25]  # where the time itself is spent
    r["top_tottime"] = [dict(where=f"{os.path.basename(f)}:{line} {fname}", us=1e6 * v[2] / reps, calls=v[0] / reps)
                        for (f, line, fname), v in top]
    print(f"{'top functions by own time (cProfile)':60s} {'us/call':>9s} {'calls':>6s}")
    for t in r["top_tottime"]:
        print(f"{t['where'][:60]:60s} {t['us']:9.1f} {t['calls']:6.1f}")
    results.append(r)


def row(name, impl, secs, extra, out_bytes, **kw):
    r = dict(case=name, impl=impl, seconds=secs, extra_bytes=extra, extra_minus_grads=extra - out_bytes, **kw)
    print(json.dumps(r), flush=True)
    return r


def bench_case(name, cfg, results, torch_engine=True):
    if name == "api":
        return bench_api(name, cfg, results)
    B, T, K, C = cfg["B"], cfg["T"], cfg["K"], cfg["C"]
    inp = make_inputs(B, T, K, C)
    long = T >= 100_000
    reps = 100  # short calls are host-bound and noisy on a virtualised host: a median of many
    # same kernels, short T: compiles them (T is a runtime argument) without a long warm-up run
    small_inp = make_inputs(B, 4 * K + 64, K, C) if long else None
    if name == "viterbi":
        cum, trans, dur, entry, end, lengths = inp
        tau0 = entry_value(sf.MaxSemiring, entry, torch.float32)
        w = small_inp
        wtau0 = entry_value(sf.MaxSemiring, w[3], torch.float32)
        s, ex, ob = measure(lambda: list(tk.viterbi_triton(cum, trans, dur, tau0, end, lengths)), 1,
                            warm=lambda: tk.viterbi_triton(w[0], w[1], w[2], wtau0, w[4], w[5]))
        results.append(row(name, "triton_viterbi_backtrace", s, ex, ob, target_s=cfg["target_s"], B=B, T=T, K=K, C=C))

        # the gradient route: max semiring forward + backward, start indicators
        def grad_path(c=cum, tr=trans, du=dur, t0=tau0, en=end, L=lengths):
            sb = torch.zeros(B, c.shape[1] - 1, C, device=DEV, requires_grad=True)
            v = tk.factored_scan_triton(sf.MaxSemiring, c, tr, du, t0, en, L, start_bias=sb)
            return list(torch.autograd.grad(v.sum(), sb))
        s, ex, ob = measure(grad_path, 1, warm=lambda: grad_path(w[0], w[1], w[2], wtau0, w[4], w[5]))
        results.append(row(name, "triton_max_gradient", s, ex, ob, B=B, T=T, K=K, C=C))
        return
    warm = _both_tape_variants(factored_fn("triton", *small_inp)) if long else None
    s, ex, ob = measure(factored_fn("triton", *inp), reps, warm=warm)
    m = launch._Meta(sf.LogSemiring, B, T, K, C, torch.float32, DEV, False, False)
    extra = dict(delta=m.delta, store_all=m.store_all, num_warps=m.num_warps)
    if not long:
        extra["gpu_seconds"] = gpu_seconds(factored_fn("triton", *inp))
    results.append(row(name, "triton_factored", s, ex, ob, target_s=cfg["target_s"], B=B, T=T, K=K, C=C, **extra))
    if T < 10**7:
        warm = factored_fn("triton", *small_inp, backward=False) if long else None
        s, ex, ob = measure(factored_fn("triton", *inp, backward=False), reps, warm=warm)
        extra = {"us_per_step": 1e6 * s / T}
        if not long:
            extra["gpu_seconds"] = gpu_seconds(factored_fn("triton", *inp, backward=False))
        results.append(row(name, "triton_factored_fwd_only", s, ex, ob, B=B, T=T, K=K, C=C, **extra))
    if torch_engine and T < 10**7:
        if T <= 1000:
            s, ex, ob = measure(factored_fn("torch", *inp), 1 if T > 200 else 3)
            results.append(row(name, "torch_engine", s, ex, ob, B=B, T=T, K=K, C=C))
        else:  # a prefix, extrapolated linearly in T (the engine is a Python loop per step)
            Tp = 2000
            sub = make_inputs(B, Tp, K, C)
            s, ex, ob = measure(factored_fn("torch", *sub), 1, warm=factored_fn("torch", *make_inputs(B, 50, K, C)))
            results.append(row(name, "torch_engine_extrapolated", s * T / Tp, ex, ob, measured_T=Tp,
                               measured_seconds=s, B=B, T=T, K=K, C=C))
    if name == "small":
        cum, trans, dur, entry, end, lengths = inp
        pots = sf.SegmentPotentials(cum_scores=cum.float().double(), transition=trans, duration=dur, end=end)
        edges = pots.to_edges().float().contiguous()
        del pots
        s, ex, ob = measure(edge_fn("triton", edges, lengths), reps)
        results.append(row(name, "triton_edges", s, ex, ob, B=B, T=T, K=K, C=C,
                           edge_bytes=edges.numel() * edges.element_size(),
                           gpu_seconds=gpu_seconds(edge_fn("triton", edges, lengths))))
        try:
            import torch_struct  # noqa: F401

            s, ex, ob = measure(edge_fn("torch_struct", edges, lengths), 3)
            results.append(row(name, "torch_struct", s, ex, ob, B=B, T=T, K=K, C=C))
        except Exception as err:  # noqa: BLE001
            results.append(dict(case=name, impl="torch_struct", error=repr(err)[:300]))
            print(results[-1], flush=True)
        del edges
    del inp
    torch.cuda.empty_cache()


def sweep(results):
    """Per-step latency vs num_warps, forward and forward+backward."""
    for (B, T, K, C) in [(1, 20_000, 100, 8), (32, 128, 8, 16), (16, 1000, 30, 39)]:
        inp = make_inputs(B, T, K, C)
        for nw in (1, 2, 4, 8):
            launch.NUM_WARPS_OVERRIDE = nw
            try:
                f, _, _ = measure(factored_fn("triton", *inp, backward=False), 3)
                fb, _, _ = measure(factored_fn("triton", *inp), 3)
            except Exception as err:  # noqa: BLE001
                print("sweep fail", nw, repr(err)[:200], flush=True)
                continue
            r = dict(case="sweep", B=B, T=T, K=K, C=C, num_warps=nw, fwd_s=f, fwdbwd_s=fb,
                     fwd_us_per_step=1e6 * f / T, fwdbwd_us_per_step=1e6 * fb / T)
            print(json.dumps(r), flush=True)
            results.append(r)
        launch.NUM_WARPS_OVERRIDE = None


def overhead_probe(results):
    """Host-side cost on this machine: one small torch CUDA op, and one whole (tiny) kernel call."""
    x = torch.zeros(4, device=DEV)
    for _ in range(10):
        x.add_(1)
    sync()
    t = time.perf_counter()
    for _ in range(200):
        x.add_(1)
    sync()
    op = (time.perf_counter() - t) / 200
    inp = make_inputs(1, 2, 2, 2)
    fwd = factored_fn("triton", *inp, backward=False)
    fb = factored_fn("triton", *inp)
    for f in (fwd, fb):
        f()
    sync()
    t = time.perf_counter()
    for _ in range(50):
        fwd()
    sync()
    tf = (time.perf_counter() - t) / 50
    t = time.perf_counter()
    for _ in range(50):
        fb()
    sync()
    tfb = (time.perf_counter() - t) / 50
    r = dict(case="overhead", torch_op_s=op, tiny_fwd_call_s=tf, tiny_fwd_bwd_call_s=tfb)
    print(json.dumps(r), flush=True)
    results.append(r)


def plot(results, path):
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except Exception:  # noqa: BLE001
        return
    rows = [r for r in results if r.get("case") in CASES and "seconds" in r]
    labels = sorted({r["impl"] for r in rows})
    cases = [c for c in CASES if any(r["case"] == c for r in rows)]
    fig, axes = plt.subplots(1, 2, figsize=(13, 4.5))
    width = 0.8 / max(1, len(labels))
    for i, impl in enumerate(labels):
        xs, ts, ms = [], [], []
        for j, c in enumerate(cases):
            for r in rows:
                if r["case"] == c and r["impl"] == impl:
                    xs.append(j + i * width)
                    ts.append(r["seconds"])
                    ms.append(max(r["extra_minus_grads"], 1))
        axes[0].bar(xs, ts, width, label=impl)
        axes[1].bar(xs, ms, width, label=impl)
    for ax, yl in zip(axes, ("seconds (fwd+bwd)", "extra bytes (minus gradient outputs)")):
        ax.set_yscale("log")
        ax.set_xticks([j + 0.4 for j in range(len(cases))])
        ax.set_xticklabels(cases)
        ax.set_ylabel(yl)
    axes[0].legend(fontsize=7)
    fig.suptitle(f"semiring_flash Triton kernels, log semiring fp32, {torch.cuda.get_device_name()}")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=os.environ.get("OUT", "benchmarks/results"))
    ap.add_argument("--cases", default=",".join(CASES))
    ap.add_argument("--sweep", action="store_true")
    ap.add_argument("--no-torch-engine", action="store_true")
    args = ap.parse_args()
    os.makedirs(args.out, exist_ok=True)
    results = [dict(meta=True, gpu=torch.cuda.get_device_name(), torch=torch.__version__,
                    triton=__import__("triton").__version__, date=time.strftime("%Y-%m-%d"))]
    overhead_probe(results)
    if args.sweep:
        sweep(results)
    for name in args.cases.split(","):
        if name:
            bench_case(name, CASES[name], results, torch_engine=not args.no_torch_engine)
        with open(os.path.join(args.out, "gpu_bench.json"), "w") as f:
            json.dump(results, f, indent=1)
    plot(results, os.path.join(args.out, "gpu_bench.png"))


if __name__ == "__main__":
    main()
