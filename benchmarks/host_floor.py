"""Host-time floors of one small-batch step on this GPU host (issue 9, part 3), per call:
one small torch op, one caching-allocator allocation, one direct Triton launch of an empty
kernel, and torch.autograd.grad through a Python autograd.Function that does nothing (the
autograd engine's round trip to its device thread). What the public API's eager step
(benchmarks/gpu_bench.py --cases api) cannot go below without fewer of each.

    python benchmarks/host_floor.py            # a GPU; prints one JSON line and a table
"""

from __future__ import annotations

import json
import os
import sys
import time

import torch
import triton

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)


@triton.jit
def _empty_kernel(x_ptr, n):
    pass


class _Nothing(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        return x.new_empty(())  # one allocation, no kernel

    @staticmethod
    def backward(ctx, g):
        return None


def per_call(fn, n=2000, rounds=5):
    """Best-of-rounds host seconds per call, nothing synchronised inside a round."""
    fn()
    torch.cuda.synchronize()
    best = float("inf")
    for _ in range(rounds):
        t = time.perf_counter()
        for _ in range(n):
            fn()
        best = min(best, (time.perf_counter() - t) / n)
        torch.cuda.synchronize()
    return best


def main():
    from semiring_flash.ops.triton import launch
    from semiring_flash.semirings import LogSemiring

    dev = "cuda"
    x = torch.zeros(64, device=dev)
    leaf = torch.zeros(4, device=dev, requires_grad=True)
    m = launch._meta(LogSemiring, 1, 4, 2, 2, torch.float32, torch.device(dev), False, False, None)
    kw = dict(x_ptr=x, n=64)
    cache = {}

    def launch_once():
        launch._launch(_empty_kernel, m, (), kw, num_warps=1, grid=1, cache=cache)

    def grad_once():
        torch.autograd.grad(_Nothing.apply(leaf), leaf, allow_unused=True)

    r = dict(device=torch.cuda.get_device_name(),
             torch_op_us=1e6 * per_call(lambda: x.add_(1)),
             empty_alloc_us=1e6 * per_call(lambda: torch.empty(4096, device=dev)),
             direct_launch_us=1e6 * per_call(launch_once),
             generic_launch_us=1e6 * per_call(lambda: _empty_kernel[(1,)](x, 64, num_warps=1), n=500),
             autograd_grad_us=1e6 * per_call(grad_once, n=500))
    print(json.dumps(r), flush=True)
    for k, v in r.items():
        print(f"{k:22s} {v if isinstance(v, str) else f'{v:8.1f}'}")


if __name__ == "__main__":
    main()
