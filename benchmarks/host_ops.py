"""Host work of one public-API call, counted on CPU (no GPU needed).

    python benchmarks/host_ops.py            # aten ops by kind, B=32, T=128, K=8, C=16
    python benchmarks/host_ops.py --launch   # microseconds of the Triton launch path

One call = SegmentPotentials(scores, transition, duration, lengths), SemiMarkovCRF(...,
backend="triton").partition, gradients w.r.t. scores, transition, duration.

Default: the Triton kernels are stubbed (their launches are not aten ops); value checks get
the GPU policy (once per signature), and the count is taken on the second call (the count of
benchmarks/host_overhead.py, by kind). On a GPU every non-view op is a kernel launch or an
allocation, and every device read a synchronisation.

--launch: the kernels are compiled for a GPU target (sm_90, Triton's own compiler, no GPU
needed) and launched through Triton's real launch path into a no-op driver, so the Python
binder and launcher code runs exactly as on a GPU host; the times are that Python code
(the C launcher and the CUDA driver call are not included). Reported: microseconds per
forward + backward of ``factored_scan_triton`` with the direct launch and with Triton's
generic one (``launch.DIRECT_LAUNCH``), interleaved in one process (this box is noisy).
"""

from __future__ import annotations

import argparse
import os
import sys
import time

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
sys.path[:0] = [ROOT, os.path.join(ROOT, "tests"), os.path.dirname(os.path.abspath(__file__))]


def count_ops(B=32, T=128, K=8, C=16):
    """aten ops of one step by kind (host_overhead.count_ops, this tree)."""
    import host_overhead

    r = host_overhead.count_ops(ROOT, B, T, K, C)
    kinds = ", ".join(f"{n} {k}" for k, n in sorted(r["by_kind"].items()))
    print(f"aten ops {r['aten_ops']}: {kinds} (+ {r['launches']} Triton launches)")


def launch_us(B=32, T=128, K=8, C=16, reps=300, rounds=5):
    import noop_gpu

    noop_gpu.install()
    import torch

    import semiring_flash as sf
    from semiring_flash.ops.dispatch import entry_value
    from semiring_flash.ops.triton import factored_scan_triton, launch

    g = torch.Generator().manual_seed(0)
    cum = torch.cat([torch.zeros(B, 1, C, dtype=torch.float64), torch.randn(B, T, C, generator=g).double().cumsum(1)], 1)
    leaves = [cum, torch.randn(B, C, C, generator=g), torch.randn(B, K, C, generator=g), torch.randn(B, C, generator=g)]
    tau0 = entry_value(sf.LogSemiring, torch.randn(B, C, C, generator=g), torch.float32)
    lengths = torch.full((B,), T)
    xs = [x.requires_grad_() for x in leaves]

    def call():
        v = factored_scan_triton(sf.LogSemiring, xs[0], xs[1], xs[2], tau0, xs[3], lengths)
        torch.autograd.grad(v, xs, torch.ones_like(v))
        noop_gpu.launches.clear()

    def per_call(direct):
        launch.DIRECT_LAUNCH = direct
        call()
        t = time.perf_counter()
        for _ in range(reps):
            call()
        return 1e6 * (time.perf_counter() - t) / reps

    t = time.time()
    call()  # compiles both kernels (seconds; cached on disk afterwards)
    print(f"first call (compile) {time.time() - t:.1f} s")
    res = {True: [], False: []}
    for _ in range(rounds):
        for direct in (False, True):
            res[direct].append(per_call(direct))
    launch.DIRECT_LAUNCH = True
    best = {k: min(v) for k, v in res.items()}
    print(f"factored_scan_triton fwd+bwd, B={B} T={T} K={K} C={C}, CPU tensors, no-op GPU: "
          f"{best[False]:.0f} us/call generic launch, {best[True]:.0f} us/call direct launch "
          f"(best of {rounds} rounds of {reps}; ratio {best[False] / best[True]:.2f})")


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--launch", action="store_true", help="time the launch path (kernels compiled, not run)")
    if ap.parse_args().launch:
        launch_us()
    else:
        count_ops()
