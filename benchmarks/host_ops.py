"""Host work of one public-API call, counted on CPU (no GPU needed): aten ops by kind.

    python benchmarks/host_ops.py            # B=32, T=128, K=8, C=16

One call = SegmentPotentials(scores, transition, duration, lengths), SemiMarkovCRF(...,
backend="triton").partition, gradients w.r.t. scores, transition, duration. The Triton
kernels are stubbed (their launches are not aten ops); value checks get the GPU policy
(once per signature), and the count is taken on the second call. On a GPU every
non-view op is a kernel launch or an allocation, and every device read a synchronisation.
"""

from __future__ import annotations

import os
import sys

os.environ.setdefault("TRITON_INTERPRET", "1")  # lets backend="triton" take CPU tensors
ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
sys.path[:0] = [ROOT, os.path.join(ROOT, "tests")]

import torch  # noqa: E402

import semiring_flash as sf  # noqa: E402
from semiring_flash import validation  # noqa: E402
from semiring_flash.ops.triton import launch  # noqa: E402
from test_host_path import DEVICE_READS, CountOps  # noqa: E402

VIEWS = {"view", "t", "expand", "slice", "unsqueeze", "squeeze", "select", "unbind", "detach", "alias",
         "transpose", "_unsafe_view"}
ALLOCATIONS = {"empty", "empty_like", "new_empty"}


class _NoLaunch:
    def __getitem__(self, grid):
        return lambda *args, **kwargs: None


def main(B=32, T=128, K=8, C=16):
    launch.scan_fwd_kernel = launch.scan_bwd_kernel = _NoLaunch()
    if hasattr(validation, "_on_host"):
        validation._on_host = lambda device: False
    leaves = [torch.randn(B, T, C, requires_grad=True), torch.randn(C, C, requires_grad=True),
              torch.randn(K, C, requires_grad=True)]
    lengths = torch.full((B,), T)

    def call():
        pots = sf.SegmentPotentials(leaves[0], transition=leaves[1], duration=leaves[2], lengths=lengths)
        z = sf.SemiMarkovCRF(pots, backend="triton").partition
        torch.autograd.grad(z.sum(), leaves)

    call()
    with CountOps() as count:
        call()
    kind = lambda op: op.split(".")[1]  # noqa: E731
    views = sum(n for op, n in count.ops.items() if kind(op) in VIEWS)
    allocs = sum(n for op, n in count.ops.items() if kind(op) in ALLOCATIONS)
    total = sum(count.ops.values())
    print(f"aten ops {total}: {total - views - allocs - count.reads} small kernels, {count.reads} device reads, "
          f"{allocs} allocations, {views} views (+ 2 Triton launches)")


if __name__ == "__main__":
    main()
