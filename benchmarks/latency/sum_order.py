"""Does the backward's recompute sum in the forward's order? A CPU check of what only a GPU shows.

    python benchmarks/latency/sum_order.py            # every case of CASES; exit 1 on a mismatch
    python benchmarks/latency/sum_order.py --case "tape K=64 C=12 TAPE_PULL"

The backward rebuilds each block's rows from the forward's checkpoints, and the rows must be
the forward's bit for bit: the adjoints of a recomputed block meet the forward's checkpoint and
log Z at its borders. A GPU sums a reduction in an order set by the tensor's layout (registers
first, then lanes, then warps), and Triton picks a kernel's layouts from all of its loads and
stores. A change elsewhere in the backward kernel can so move the recompute's sums to another
layout: same values in the interpreter (numpy sums one way), other roundings on the GPU, and
gradients 20x further from float64 (H100: 3.0e-5 instead of 1.1e-6 after fc99a89; 3.3e-5
instead of 1.6e-6 with c371bd4's TAPE_PULL on the recompute path).

Here each case runs the real public API (SegmentPotentials or edges -> partition/entropy ->
gradients, ``STORE_ALL_BYTES = 0`` so the backward recomputes) with the kernels compiled for
sm_90 and launched into a no-op driver (tests/noop_gpu.py), and compares the order-sensitive
reductions (floating-point sums in the compute dtype: operand type, layout and axis, in program
order) of the forward's step loop with those of each loop of the backward. The check passes
when one backward loop sums exactly as the forward's step does, and the forward that keeps the
whole tape (the call again, STORE_ALL_BYTES unlimited) sums as the checkpointing one. Maxima are
exact in any order and are not compared.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

#: name -> (semiring property, B, T, K, C, input kind, launch settings)
CASES = {
    "ring K=100 C=8": ("partition", 1, 3000, 100, 8, "segments", {}),  # one backward program (CPU tensors)
    "ring K=100 C=8 pipelined": ("partition", 1, 3000, 100, 8, "segments", {"PIPELINE_BACKWARD": True}),
    "tape K=64 C=12": ("partition", 2, 600, 64, 12, "segments", {}),
    "tape K=64 C=12 TAPE_PULL": ("partition", 2, 600, 64, 12, "segments", {"TAPE_PULL": True}),
    "tape K=30 C=39 TAPE_PULL": ("partition", 2, 300, 30, 39, "segments", {"TAPE_PULL": True}),
    "entropy K=8 C=4": ("entropy", 2, 200, 8, 4, "segments", {}),
    "edges K=8 C=4": ("partition", 2, 200, 8, 4, "edges", {}),
}


def _aliases(ttgir: str) -> dict:
    return dict(re.findall(r"^(#\w+) = (#ttg\.\w+<.*>)$", ttgir, re.M))


def _expand(ty: str, aliases: dict) -> str:
    """A type with its layout aliases written out (two modules' aliases differ)."""
    for name in sorted(aliases, key=len, reverse=True):
        ty = re.sub(re.escape(name) + r"(?!\w)", aliases[name], ty)
    return ty


def _loops(lines) -> list:
    """(first, last) line of each scf.for region, by brace depth."""
    out = []
    for i, line in enumerate(lines):
        if "scf.for" in line and line.rstrip().endswith("{"):
            depth = 0
            for j in range(i, len(lines)):
                depth += lines[j].count("{") - lines[j].count("}")
                if depth == 0:
                    out.append((i, j))
                    break
    return out


def loop_sums(ttgir: str, dtype: str = "f32") -> list:
    """Per scf.for loop, its floating-point sum reductions over ``dtype`` operands, in program
    order: (axis, operand type with its layout). Nested loops' sums count in both."""
    lines, aliases = ttgir.splitlines(), _aliases(ttgir)
    sums = []
    for first, last in _loops(lines):
        found, i = [], first
        while i <= last:
            m = re.search(r'"tt\.reduce"\(([^)]*)\) <\{axis = (\d+)', lines[i])
            if m:
                j = i + 1
                while "tt.reduce.return" not in lines[j]:
                    j += 1
                combine = " ".join(lines[i + 1:j])
                ty = re.search(r"\}\) : \((.*?)\) ->", lines[j + 1]).group(1)
                if "arith.addf" in combine and re.search(rf"x{dtype}, ", ty):
                    found.append((int(m.group(2)), _expand(ty, aliases)))
                i = j
            i += 1
        sums.append(found)
    return sums


def _compiled(fn) -> list:
    return [k for cache in fn.device_caches.values() for k in cache[0].values()]


def _call(name: str, store_all_bytes: int) -> tuple:
    """The case's call (value and gradients) with ``launch.STORE_ALL_BYTES``; the compiled
    (forward, backward kernels) it launched."""
    prop, B, T, K, C, kind, settings = CASES[name]
    import torch

    import semiring_flash as sf
    from semiring_flash.ops.triton import kernels, launch

    for fn in (kernels.scan_fwd_kernel, kernels.scan_bwd_kernel):
        for cache in fn.device_caches.values():
            cache[0].clear()
    old = {k: getattr(launch, k) for k in ["STORE_ALL_BYTES", *settings]}
    try:
        launch.STORE_ALL_BYTES = store_all_bytes
        for k, v in settings.items():
            setattr(launch, k, v)
        g = torch.Generator().manual_seed(0)
        if kind == "edges":
            leaves = [torch.randn(B, T, K, C, C, generator=g, requires_grad=True)]
            dist = sf.SemiMarkovCRF(leaves[0], lengths=torch.full((B,), T + 1), backend="triton")
        else:
            leaves = [torch.randn(B, T, C, generator=g, requires_grad=True),
                      torch.randn(C, C, generator=g, requires_grad=True), torch.randn(K, C, generator=g, requires_grad=True)]
            pots = sf.SegmentPotentials(leaves[0], transition=leaves[1], duration=leaves[2], lengths=torch.full((B,), T))
            dist = sf.SemiMarkovCRF(pots, backend="triton")
        torch.autograd.grad(getattr(dist, prop).sum(), leaves)
    finally:
        for k, v in old.items():
            setattr(launch, k, v)
    (fwd,) = _compiled(kernels.scan_fwd_kernel)
    return fwd, _compiled(kernels.scan_bwd_kernel)


def _step_sums(fwd, name) -> list:
    sums = [s for s in loop_sums(fwd.asm["ttgir"]) if s]
    assert len(sums) == 1, f"{name}: the forward should have one step loop with sums, has {len(sums)}"
    return sums[0]


def run_case(name: str) -> dict:
    """Compile the case's kernels (this process: no-op GPU installed first) and compare: the
    checkpointing forward's step with each loop of the recomputing backward, and with the
    forward that keeps the whole tape (kept and recomputed gradients are to agree bit for bit)."""
    fwd, bwd = _call(name, 0)  # the backward recomputes from checkpoints
    ck = _step_sums(fwd, name)
    bsums = [s for k in bwd for s in loop_sums(k.asm["ttgir"])]
    match = any(s == ck for s in bsums)
    kept = _step_sums(_call(name, 1 << 40)[0], name)  # the forward keeps the tape (FULL)
    return dict(case=name, ok=match and kept == ck, forward_sums=len(ck), backward_loops=len(bsums),
                first_difference=(None if match else _difference(ck, bsums)) or
                (None if kept == ck else "kept-tape forward: " + _difference(ck, [kept])))


def _difference(fwd, loops) -> str:
    """The forward's sum that the most similar backward loop makes otherwise."""
    best = max(loops, key=lambda s: sum(a == b for a, b in zip(s, fwd)) - abs(len(s) - len(fwd)))
    for i, (a, b) in enumerate(zip(fwd, best)):
        if a != b:
            return f"sum {i}: forward axis {a[0]} {a[1]}\n       backward axis {b[0]} {b[1]}"
    return f"forward {len(fwd)} sums, closest backward loop {len(best)}"


def _child(names, root):
    sys.path[:0] = [root, os.path.join(ROOT, "tests")]
    import noop_gpu

    noop_gpu.cpu_calls()
    for name in names:
        print(json.dumps(run_case(name)), flush=True)


def check(names=None, root=ROOT) -> list:
    """Results of the named cases (all by default), run in a child process on the package of the
    tree at ``root`` (an older checkout: before and after a change)."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    out = subprocess.run([sys.executable, os.path.abspath(__file__), "--root", root, "--child", *(names or list(CASES))],
                         env=env, capture_output=True, text=True, check=False)
    if out.returncode:
        raise RuntimeError(out.stdout[-2000:] + out.stderr[-4000:])
    return [json.loads(line) for line in out.stdout.splitlines() if line.startswith("{")]


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--case", nargs="*", choices=list(CASES), help="these cases only")
    ap.add_argument("--root", default=ROOT, help="the tree to check (e.g. an older checkout)")
    ap.add_argument("--child", nargs="*", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child is not None:
        return _child(args.child, os.path.abspath(args.root))
    bad = 0
    for r in check(args.case, args.root):
        bad += not r["ok"]
        print(f"{'same order' if r['ok'] else 'DIFFERENT':<11} {r['case']:<28} forward step: {r['forward_sums']} sums")
        if not r["ok"]:
            print("    " + r["first_difference"])
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
