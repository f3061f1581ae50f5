"""Host work of one public-API training step, on CPU (no GPU needed), in this tree and others.

    python benchmarks/host_overhead.py                        # this tree
    python benchmarks/host_overhead.py --against /work/main   # and another checkout (before / after)

One step = SegmentPotentials(scores, transition, duration, lengths) -> SemiMarkovCRF(...,
backend="triton").partition -> gradients w.r.t. scores, transition, duration (B=32, T=128,
K=8, C=16 unless given), the second call of a signature (value checks and compiles done).
Reported per step, each tree in its own processes:

* aten ops: ops dispatched (a TorchDispatchMode; views included) with the kernels interpreted
  (TRITON_INTERPRET=1) and every Triton launch counted and skipped; on a GPU every non-view op
  is an allocation or a small kernel of ~10 µs host time, and each launch ~10 µs more.
* host µs: CPU time per step (best of 40 rounds of 50) with the kernels compiled for sm_90 and launched through
  Triton's real launch path into a no-op driver (tests/noop_gpu.py): the Python, autograd
  and CPU aten work of the step, no kernel time (CPU tensors: the torch ops do compute them).
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import subprocess
import sys
import time

#: aten ops by what they cost on a GPU host (anything else launches a small kernel)
_KINDS = {**dict.fromkeys(["view", "t", "expand", "slice", "unsqueeze", "squeeze", "select", "unbind", "detach", "alias",
                           "transpose", "_unsafe_view", "split", "split_with_sizes", "as_strided"], "views"),
          **dict.fromkeys(["empty", "empty_like", "new_empty"], "allocations"),
          **dict.fromkeys(["_local_scalar_dense", "is_nonzero", "equal", "item"], "device reads")}
HERE = os.path.dirname(os.path.abspath(__file__))
TESTS = os.path.join(HERE, "..", "tests")  # noop_gpu lives in this tree's tests


def _setup(root, interpret):
    sys.path[:0] = [root, TESTS]
    import noop_gpu

    noop_gpu.cpu_calls(compiled=not interpret)
    import semiring_flash as sf

    return sf


def _step(sf, B, T, K, C):
    import torch

    g = torch.Generator().manual_seed(0)
    leaves = [torch.randn(B, T, C, generator=g, requires_grad=True),
              torch.randn(C, C, generator=g, requires_grad=True), torch.randn(K, C, generator=g, requires_grad=True)]
    lengths = torch.full((B,), T)

    def step():
        pots = sf.SegmentPotentials(leaves[0], transition=leaves[1], duration=leaves[2], lengths=lengths)
        z = sf.SemiMarkovCRF(pots, backend="triton").partition
        torch.autograd.grad(z.sum(), leaves)
    return step


def count_ops(root, B, T, K, C) -> dict:
    """aten ops and Triton launches of one step (kernels interpreted, launches skipped)."""
    sf = _setup(root, interpret=True)
    from torch.utils._python_dispatch import TorchDispatchMode
    from triton.runtime.interpreter import InterpretedFunction

    launches = []
    InterpretedFunction.run = lambda self, *args, **kwargs: launches.append(self.fn.__name__)

    class Count(TorchDispatchMode):
        ops: list = []

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            self.ops.append(str(func))
            return func(*args, **(kwargs or {}))

    step = _step(sf, B, T, K, C)
    step()
    launches.clear()
    with Count() as count:
        step()
    kind = collections.Counter(_KINDS.get(op.split(".")[1], "small kernels") for op in count.ops)
    return dict(aten_ops=len(count.ops), launches=len(launches), kernels=launches, by_kind=dict(kind))


def host_us(root, B, T, K, C, reps=50, rounds=40) -> dict:
    """Best-of-rounds CPU time per step (process time: other loads on the box count less), kernels
    launched into a no-op GPU."""
    sf = _setup(root, interpret=False)
    import noop_gpu
    import torch

    torch.set_num_threads(1)
    step = _step(sf, B, T, K, C)
    step()  # compiles (seconds; cached on disk afterwards)
    step()
    best = float("inf")
    for _ in range(rounds):
        t = time.process_time()
        for _ in range(reps):
            step()
        best = min(best, (time.process_time() - t) / reps)
        noop_gpu.launches.clear()
    return dict(host_us=1e6 * best)


def _child(args):
    fn = count_ops if args.child == "ops" else host_us
    print(json.dumps(fn(os.path.abspath(args.root), *args.shape)))


def _measure(root, shape, what=("ops", "time")) -> dict:
    res = {}
    for what in what:
        env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
        env.setdefault("OMP_NUM_THREADS", "1")
        out = subprocess.run([sys.executable, __file__, "--child", what, "--root", root, "--shape", *map(str, shape)],
                             env=env, capture_output=True, text=True, check=False)
        if out.returncode:
            raise RuntimeError(f"{root} ({what}):\n{out.stderr[-3000:]}")
        res.update(json.loads(out.stdout.strip().splitlines()[-1]))
    return res


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--against", nargs="*", default=[], help="other checkouts to measure (e.g. main before a change)")
    ap.add_argument("--shape", nargs=4, type=int, default=[32, 128, 8, 16], metavar=("B", "T", "K", "C"))
    ap.add_argument("--repeat", type=int, default=3, help="runs per tree (the best is reported)")
    ap.add_argument("--child", choices=["ops", "time"], help=argparse.SUPPRESS)
    ap.add_argument("--root", default=os.path.join(HERE, ".."), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        return _child(args)
    B, T, K, C = args.shape
    print(f"public-API step, B={B} T={T} K={K} C={C}: SegmentPotentials -> partition -> grads (CPU, no GPU)")
    print(f"{'tree':<40} {'aten ops':>9} {'launches':>9} {'host us/step':>13}")
    roots = [os.path.abspath(r) for r in [os.path.join(HERE, "..")] + args.against]
    runs = {root: [] for root in roots}
    for _ in range(args.repeat):  # the trees interleaved, best run each: the box's load changes
        for root in roots:
            runs[root].append(_measure(root, args.shape, ("time",) if runs[root] else ("ops", "time")))
    for root in roots:
        r = dict(runs[root][0], host_us=min(x["host_us"] for x in runs[root]))
        print(f"{root:<40} {r['aten_ops']:>9} {r['launches']:>9} {r['host_us']:>13.0f}")
        print(f"{'':<4}aten ops by kind: " + ", ".join(f"{n} {k}" for k, n in sorted(r["by_kind"].items())))


if __name__ == "__main__":
    main()
