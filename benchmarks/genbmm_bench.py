"""Benchmark of semiring_flash.genbmm: logbmm against torch's broadcast, and torch-struct
structures with torch-struct's LogSemiring against semiring_flash.torch_struct.FastLogSemiring.

    python benchmarks/genbmm_bench.py                  # GPU sizes (CUDA), writes benchmarks/results/genbmm_bench.{json,png}
    python benchmarks/genbmm_bench.py --quick          # tiny CPU smoke run
    python benchmarks/genbmm_bench.py --parts bmm      # only logbmm (or: structs)

logbmm: a (B, S, S) x b (B, S, S), forward + backward (gradients of a and b), genbmm
(Triton on CUDA, chunked PyTorch on CPU) vs ``(a.unsqueeze(-1) + b.unsqueeze(-3)).logsumexp(-2)``.
Structures: ``torch_struct.LinearChain`` / ``torch_struct.DepTree`` ``.sum(potentials)`` +
backward (the gradient is the marginals), same potentials, both semirings; log Z of the two
is compared. Time: CUDA-synchronised wall time, median of ``--repeats`` runs after one
warm-up. Memory (CUDA only): peak allocation during the call minus what was allocated
before it. An out-of-memory error is caught and recorded as "OOM".
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import statistics
import sys
import time

import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from semiring_flash import genbmm  # noqa: E402

BMM_SIZES = {"gpu": [(8, 128), (8, 256), (8, 512), (8, 1024), (8, 2048), (64, 1024)], "quick": [(2, 16), (2, 32), (2, 64)]}
#: (structure, B, N, C): LinearChain edges (B, N-1, C, C); DepTree arcs (B, N, N), C unused
STRUCT_SIZES = {
    "gpu": [("LinearChain", 4, 256, 64), ("LinearChain", 4, 256, 128), ("LinearChain", 4, 256, 256),
            ("LinearChain", 4, 256, 512), ("DepTree", 4, 64, 0), ("DepTree", 4, 128, 0)],
    "quick": [("LinearChain", 2, 16, 8), ("DepTree", 2, 8, 0)],
}
#: on CPU, skip the broadcast above this many bytes rather than swap a shared machine
CPU_BROADCAST_LIMIT = 2 << 30


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def _is_oom(err: BaseException) -> bool:
    return isinstance(err, torch.cuda.OutOfMemoryError) or "out of memory" in str(err).lower()


def measure(fn, device, repeats):
    """{'seconds', 'extra_bytes'} of fn() (forward + backward), or {'status': 'OOM'}."""
    try:
        fn()  # warm-up (and Triton compilation)
        _sync(device)
        times, extra = [], None
        for _ in range(repeats):
            if device.type == "cuda":
                torch.cuda.reset_peak_memory_stats()
                base = torch.cuda.memory_allocated()
            t0 = time.perf_counter()
            fn()
            _sync(device)
            times.append(time.perf_counter() - t0)
            if device.type == "cuda":
                extra = max(extra or 0, torch.cuda.max_memory_allocated() - base)
        return {"status": "ok", "seconds": statistics.median(times), "extra_bytes": extra}
    except (RuntimeError, torch.cuda.OutOfMemoryError) as err:
        if not _is_oom(err):
            raise
        return {"status": "OOM"}
    finally:
        if device.type == "cuda":
            torch.cuda.empty_cache()


def broadcast_logbmm(a, b):
    return (a.unsqueeze(-1) + b.unsqueeze(-3)).logsumexp(-2)


def bench_bmm(sizes, device, repeats, progress):
    rows = []
    for B, S in progress(sizes, desc="logbmm"):
        g = torch.Generator(device=device).manual_seed(0)
        a = torch.randn(B, S, S, device=device, generator=g).requires_grad_()
        b = torch.randn(B, S, S, device=device, generator=g).requires_grad_()
        grad = torch.randn(B, S, S, device=device, generator=g)
        broadcast_bytes = 4 * B * S**3
        for impl, op in (("genbmm", genbmm.logbmm), ("broadcast", broadcast_logbmm)):
            def step(op=op):
                a.grad = b.grad = None
                op(a, b).backward(grad)

            if impl == "broadcast" and device.type == "cpu" and broadcast_bytes > CPU_BROADCAST_LIMIT:
                r = {"status": "skipped (CPU memory)"}
            else:
                r = measure(step, device, repeats)
            rows.append({"part": "logbmm", "impl": impl, "B": B, "S": S, "broadcast_tensor_bytes": broadcast_bytes, **r})
        try:  # agreement where both fit
            with torch.no_grad():
                diff = (genbmm.logbmm(a, b) - broadcast_logbmm(a, b)).abs().max().item()
            rows[-1]["max_abs_diff_vs_genbmm"] = diff
        except (RuntimeError, torch.cuda.OutOfMemoryError) as err:
            if not _is_oom(err):
                raise
        a = b = grad = None
        if device.type == "cuda":
            torch.cuda.empty_cache()
    return rows


#: (TILE_N, TILE_K, TILE_M, NUM_WARPS, FORWARD_K_AXIS) tried by --sweep
SWEEP = [(16, 16, 16, 4, 1), (16, 16, 16, 4, 2), (32, 8, 32, 4, 1), (32, 8, 32, 4, 2), (16, 8, 64, 4, 1),
         (16, 32, 16, 4, 1), (16, 32, 16, 4, 2), (16, 16, 32, 4, 2), (32, 16, 16, 4, 2),
         (16, 16, 16, 2, 1), (16, 16, 16, 8, 2), (8, 16, 16, 2, 2), (16, 8, 16, 2, 1)]
_TILE_NAMES = ("TILE_N", "TILE_K", "TILE_M", "NUM_WARPS", "FORWARD_K_AXIS")


def bench_sweep(B, S, device, repeats, progress):
    """logbmm forward and forward + backward time for each kernel tile configuration, and
    the largest difference of its output and gradients from the float64 kernels'."""
    from semiring_flash.ops.triton import bmm

    saved = tuple(getattr(bmm, n) for n in _TILE_NAMES)
    g = torch.Generator(device=device).manual_seed(0)
    a = torch.randn(B, S, S, device=device, generator=g).requires_grad_()
    b = torch.randn(B, S, S, device=device, generator=g).requires_grad_()
    grad = torch.randn(B, S, S, device=device, generator=g)
    a64, b64 = a.detach().double().requires_grad_(), b.detach().double().requires_grad_()
    out64 = genbmm.logbmm(a64, b64)
    want = (out64.detach(), *torch.autograd.grad(out64, (a64, b64), grad.double()))
    rows = []
    try:
        for cfg in progress(SWEEP, desc="sweep"):
            for name, value in zip(_TILE_NAMES, cfg):
                setattr(bmm, name, value)

            def fwd():
                with torch.no_grad():
                    genbmm.logbmm(a, b)

            def both():
                a.grad = b.grad = None
                genbmm.logbmm(a, b).backward(grad)

            f, fb = measure(fwd, device, repeats), measure(both, device, repeats)
            out = genbmm.logbmm(a, b)
            got = (out.detach(), *torch.autograd.grad(out, (a, b), grad))
            diff = max((x.double() - y).abs().max().item() for x, y in zip(got, want))
            rows.append({"part": "sweep", "impl": "tiles %dx%dx%d w%d kaxis%d" % cfg, "B": B, "S": S, "status": f["status"],
                         "seconds": f.get("seconds"), "fwd_bwd_seconds": fb.get("seconds"), "max_abs_diff_vs_float64": diff})
    finally:
        for name, value in zip(_TILE_NAMES, saved):
            setattr(bmm, name, value)
    return rows


def _struct_inputs(name, B, N, C, device):
    g = torch.Generator(device=device).manual_seed(1)
    if name == "LinearChain":
        return torch.randn(B, N - 1, C, C, device=device, generator=g)
    return torch.randn(B, N, N, device=device, generator=g)


def bench_structs(sizes, device, repeats, progress):
    try:
        import torch_struct
        from semiring_flash.torch_struct import FastLogSemiring
    except Exception as err:  # noqa: BLE001 (the shim, or torch-struct, is missing)
        print(f"skipping the torch-struct part: {type(err).__name__}: {err}")
        return []
    rows = []
    semirings = (("torch_struct.LogSemiring", torch_struct.LogSemiring), ("FastLogSemiring", FastLogSemiring))
    for name, B, N, C in progress(sizes, desc="torch-struct"):
        pots = _struct_inputs(name, B, N, C, device)
        log_z = {}  # label -> (log Z, marginals)
        for label, semiring in semirings:
            struct = getattr(torch_struct, name)(semiring)

            def step(struct=struct):
                x = pots.detach().requires_grad_()
                v = struct.sum(x)
                v.sum().backward()
                return v.detach(), x.grad

            r = measure(step, device, repeats)
            if r["status"] == "ok":
                log_z[label] = step()
            rows.append({"part": "torch-struct", "struct": name, "impl": label, "B": B, "N": N, "C": C, **r})
        if len(log_z) == 2:
            (za, ga), (zb, gb) = log_z.values()
            rows[-1]["max_abs_diff_logZ"] = (za - zb).abs().max().item()
            rows[-1]["max_abs_diff_marginals"] = (ga - gb).abs().max().item()
        pots = None
        if device.type == "cuda":
            torch.cuda.empty_cache()
    return rows


def _fmt(r):
    if r["status"] != "ok":
        return f"{r['status']:>22}"
    mem = "" if r.get("extra_bytes") is None else f"{r['extra_bytes'] / 2**20:10.1f} MiB"
    return f"{1e3 * r['seconds']:10.2f} ms {mem}"


def table(rows) -> str:
    lines = []
    for r in rows:
        if r["part"] == "sweep":
            ms = lambda x: "failed" if x is None else f"{1e3 * x:8.2f} ms"  # noqa: E731
            lines.append(f"sweep  B={r['B']} S={r['S']} {r['impl']:<28} fwd {ms(r['seconds'])}  fwd+bwd {ms(r['fwd_bwd_seconds'])}"
                         f"  max|diff| vs float64 {r['max_abs_diff_vs_float64']:.1e}")
            continue
        if r["part"] == "logbmm":
            head = f"logbmm B={r['B']:<3} S={r['S']:<5} {r['impl']:<26}"
        else:
            head = f"{r['struct']:<11} B={r['B']} N={r['N']:<4} C={r['C']:<4} {r['impl']:<26}"
        extra = "".join(f"  {k}={r[k]:.2e}" for k in ("max_abs_diff_vs_genbmm", "max_abs_diff_logZ", "max_abs_diff_marginals") if k in r)
        lines.append(head + _fmt(r) + extra)
    return "\n".join(lines)


def plot(rows, path, title):
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except Exception:  # noqa: BLE001 (no matplotlib: table and JSON only)
        return
    bmm = [r for r in rows if r["part"] == "logbmm"]
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
    for impl, marker in (("genbmm", "o"), ("broadcast", "s")):
        pts = [r for r in bmm if r["impl"] == impl and r["status"] == "ok"]
        labels = [f"B{r['B']} S{r['S']}" for r in bmm if r["impl"] == impl]
        xs = [labels.index(f"B{r['B']} S{r['S']}") for r in pts]
        axes[0].plot(xs, [r["seconds"] for r in pts], marker=marker, label=impl)
        if all(r.get("extra_bytes") is not None for r in pts):
            axes[1].plot(xs, [r["extra_bytes"] / 2**20 for r in pts], marker=marker, label=impl)
        for r in bmm:
            if r["impl"] == impl and r["status"] == "OOM":
                for ax in axes:
                    ax.annotate(f"{impl} OOM", (labels.index(f"B{r['B']} S{r['S']}"), 1), color="red")
    for ax, yl in zip(axes, ("seconds, forward + backward", "extra MiB")):
        ax.set_yscale("log")
        ax.set_xticks(range(len(labels)))
        ax.set_xticklabels(labels, rotation=30)
        ax.set_ylabel(yl)
        ax.legend()
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="tiny sizes (CPU smoke run)")
    p.add_argument("--parts", default="bmm,structs", help="comma list of: bmm, structs")
    p.add_argument("--sweep", action="store_true", help="also time logbmm (B=8, S=1024) for several kernel tile sizes (CUDA)")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--out", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "results"))
    p.add_argument("--name", default=None, help="file stem (default genbmm_bench, genbmm_bench_quick with --quick)")
    args = p.parse_args(argv)
    try:
        from tqdm import tqdm as progress
    except ImportError:  # progress bars are optional
        def progress(xs, **_):
            return xs
    device = torch.device("cuda" if torch.cuda.is_available() and not args.quick else "cpu")
    scale = "quick" if args.quick else "gpu"
    parts = set(args.parts.split(","))
    hardware = torch.cuda.get_device_name() if device.type == "cuda" else f"CPU ({os.cpu_count()} cores visible)"
    rows = []
    if args.sweep:
        rows += bench_sweep(8, 1024, device, args.repeats, progress)
    if "bmm" in parts:
        rows += bench_bmm(BMM_SIZES[scale], device, args.repeats, progress)
    if "structs" in parts:
        rows += bench_structs(STRUCT_SIZES[scale], device, args.repeats, progress)
    meta = {
        "command": "python benchmarks/genbmm_bench.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "hardware": hardware, "torch": torch.__version__,
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "dtype": "float32",
    }
    os.makedirs(args.out, exist_ok=True)
    stem = os.path.join(args.out, args.name or ("genbmm_bench_quick" if args.quick else "genbmm_bench"))
    with open(stem + ".json", "w") as f:
        json.dump({"meta": meta, "rows": rows}, f, indent=1)
    print(f"{meta['command']} | {hardware} | torch {torch.__version__} | {meta['date']}")
    print(table(rows))
    plot(rows, stem + ".png", f"genbmm.logbmm vs broadcast, fp32, {hardware}")
    return rows


if __name__ == "__main__":
    main()
