"""CPU-side latency proxy: compile each Triton variant for sm_90 without a GPU and count
what costs latency inside the scan loop — CTA barriers (``bar.sync``), warp shuffles,
shared-memory traffic — plus registers, spills and the layouts Triton chose.

    python benchmarks/latency/ptx_proxy.py [--K 100] [--C 8] [--json out.json] [--dump DIR]
    python benchmarks/latency/ptx_proxy.py --real [--K 100] [--C 8]   # the real kernel's options only
    python benchmarks/latency/ptx_proxy.py --real-bwd [--K 100] [--C 8]   # the real backward, per flag set

``triton.compile(ASTSource(fn, signature, constexprs), target=GPUTarget("cuda", 90, 32))``
needs no driver: the NVIDIA backend ships ptxas, so the cubin (and its resource usage)
comes too. The loop is found in the PTX as the longest back-edge region (label ... bra label).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

import triton  # noqa: E402
from triton.backends.compiler import GPUTarget  # noqa: E402
from triton.compiler import ASTSource  # noqa: E402

from benchmarks.latency import fwd_variants  # noqa: E402
from benchmarks.latency.fwd_variants import _pow2  # noqa: E402

TARGET = GPUTarget("cuda", 90, 32)
_BIN = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin")

#: pointer dtypes by argument name (the rest of the *_ptr arguments are fp32 tapes/outputs)
_PTR_TYPES = {"cum_ptr": "*fp64", "len_ptr": "*i64", "tb_ptr": "*fp64", "ckb_ptr": "*fp64", "ckn_ptr": "*fp64",
              "out_ptr": "*fp64", "taz_ptr": "*fp64", "ttz_ptr": "*fp64", "lengths_ptr": "*i64", "bpa_ptr": "*i16",
              "bpt_ptr": "*i16", "fin_ptr": "*i32", "tra_ptr": "*i32", "trt_ptr": "*i32", "ta_ptr": "*fp64",
              "gcum_ptr": "*fp64", "gsc_ptr": "*fp64", "link_ptr": "*i32", "exit_ptr": "*i32", "entry_ptr": "*i32",
              "len_ptr": "*i64", "labels_ptr": "*i64", "starts_ptr": "*i8", "bl_ptr": "*fp64"}


def signature(fn, constexprs: dict) -> dict:
    """Signature of a @triton.jit function from its argument names (robust to added arguments)."""
    sig = {}
    for name in fn.arg_names:
        if name in constexprs:
            sig[name] = "constexpr"
        elif name.endswith("_ptr"):
            sig[name] = _PTR_TYPES.get(name, "*fp32")
        else:
            sig[name] = "i32"
    return sig


def compile_sm90(fn, constexprs: dict, num_warps: int):
    source = ASTSource
    if getattr(fn, "is_gluon", lambda: False)():
        from triton.experimental.gluon._runtime import GluonASTSource as source
    return triton.compile(source(fn, signature(fn, constexprs), constexprs), target=TARGET,
                          options={"num_warps": num_warps, "num_stages": 1})


def loops_at_depth(ptx: str, depth: int) -> dict:
    """header -> PTX lines of each loop at nesting depth ``depth``, its own blocks only (not
    those of loops inside it: a fold every GM steps is no step), in the order of the headers."""
    loops = _loop_blocks(ptx)
    depths = dict(re.findall(r"^\$L__(BB\w+):.*\n.*?(?:\n.*?)?Loop Header: Depth=(\d+)", ptx, re.M))
    return {h: body for h, body in loops.items() if int(depths.get(h, 0)) == depth}


def _loop_blocks(ptx: str) -> dict:
    """header -> the PTX lines of the blocks whose innermost loop it heads."""
    lines = ptx.splitlines()
    starts = [i for i, ln in enumerate(lines) if re.match(r"^(\$L__BB\w+:|// %bb\.\d+:)", ln)]
    loops: dict = {}
    for a, b in zip(starts, starts[1:] + [len(lines)]):
        # long label comments push "in Loop" / a nested header's "Loop Header" down a line or two
        head = " ".join(lines[a:min(a + 3, b)])
        m = re.search(r"Header=(BB\w+)", head)
        h = m.group(1) if m else (re.match(r"^\$L__(BB\w+):", head).group(1) if "Loop Header" in head else None)
        if h:
            loops.setdefault(h, []).extend(lines[a:b])
    return loops


def inner_loops(ptx: str) -> dict:
    """header -> PTX lines of each innermost loop, in the order the headers' first blocks come:
    the blocks LLVM's comments put in that loop ("This Inner Loop Header" / "in Loop:
    Header=BBx"), wherever they are laid out (a branch inside the loop may put its latch
    before the header)."""
    loops = _loop_blocks(ptx)
    outer = set(re.findall(r"Parent Loop (BB\w+)", ptx))  # an outer loop's own blocks are no step
    return {h: body for h, body in loops.items() if h not in outer}


def loop_body(ptx: str) -> str:
    """The PTX lines of the scan loop: the largest innermost loop (``inner_loops``); without
    LLVM's loop comments, the longest back-edge region (label ... bra label)."""
    lines = ptx.splitlines()
    loops = inner_loops(ptx)
    if loops:
        return "\n".join(max(loops.values(), key=len))
    where = {m.group(1): i for i, ln in enumerate(lines) if (m := re.match(r"^\s*(\$L__\w+):", ln))}
    best = (0, 0)
    for i, ln in enumerate(lines):
        m = re.search(r"\bbra(?:\.uni)?\s+(\$L__\w+);", ln)
        if m and where.get(m.group(1), i + 1) <= i and i - where[m.group(1)] > best[1] - best[0]:
            best = (where[m.group(1)], i)
    return "\n".join(lines[best[0]:best[1] + 1])


def resources(cubin: bytes) -> dict:
    """REG / LOCAL (spills) / SHARED from cuobjdump's resource usage of the cubin."""
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(cubin)
        f.flush()
        out = subprocess.run([os.path.join(_BIN, "cuobjdump"), "-res-usage", f.name], capture_output=True,
                             text=True).stdout
    return {k.lower(): int(v) for k, v in re.findall(r"\b(REG|LOCAL|SHARED|STACK):(\d+)", out)}


def sass_loops(cubin: bytes) -> list:
    """The loops of the cubin's SASS (``cuobjdump -sass``; a loop is a back edge ``BRA`` to an
    earlier address), each with its extent, nesting depth (1: outermost) and the CTA barriers
    (``BAR``) and warp shuffles (``SHFL``) of its body, outermost first, by address."""
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(cubin)
        f.flush()
        out = subprocess.run([os.path.join(_BIN, "cuobjdump"), "-sass", f.name], capture_output=True,
                             text=True).stdout
    ins = [(int(a, 16), text.strip()) for a, text in re.findall(r"/\*([0-9a-f]{4,})\*/\s+([^;]*);", out)]
    loops = [(int(m.group(1), 16), a) for a, text in ins
             if (m := re.search(r"\bBRA\s+(0x[0-9a-f]+)", text)) and int(m.group(1), 16) < a]
    rows = []
    for lo, hi in loops:
        body = [text for a, text in ins if lo <= a <= hi]
        op = lambda t: re.sub(r"^@!?U?P\w+\s+", "", t)  # noqa: E731  (predicate off)
        rows.append(dict(start=lo, end=hi, n=len(body), bar=sum(op(t).startswith("BAR") for t in body),
                         shfl=sum(op(t).startswith("SHFL") for t in body),
                         depth=1 + sum(a <= lo and hi <= b and (a, b) != (lo, hi) for a, b in loops)))
    return sorted(rows, key=lambda r: (r["depth"], r["start"]))


def sass_step_loops(cubin: bytes, depth: int, count: int) -> list:
    """The ``count`` largest SASS loops at nesting ``depth`` (the steps' loops), in address order."""
    loops = [r for r in sass_loops(cubin) if r["depth"] == depth]
    return sorted(sorted(loops, key=lambda r: r["n"])[-count:], key=lambda r: r["start"])


def measure(kernel) -> dict:
    row = measure_body(loop_body(kernel.asm["ptx"]), kernel)
    (sass,) = sass_step_loops(kernel.asm["cubin"], 1, 1) or [dict(bar="", shfl="", n="")]
    row.update(bar_sass=sass["bar"], shfl_sass=sass["shfl"], sass_n=sass["n"])
    row.update(resources(kernel.asm["cubin"]))
    row["ld32_after_first_store"] = loads_after_first_store(kernel.asm["ptx"])
    return row


def loads_after_first_store(ptx: str) -> int:
    """32-bit global loads between the kernel's first global store and the next CTA barrier.
    In the register-ring forward without FULL, the first stores are the rotated duration table
    (float32), which other threads read: any such load there races with the table's writers."""
    lines = ptx.splitlines()
    first = next((i for i, line in enumerate(lines) if re.search(r"\bst\.global", line)), None)
    if first is None:
        return 0
    n = 0
    for line in lines[first:]:
        if re.search(r"\bbar\.sync\b|\bbarrier\.sync\b", line):
            break
        n += bool(re.search(r"\bld\.global(\.\w+)*\.(b32|f32)\b", line))
    return n


def measure_body(body: str, kernel) -> dict:
    """Counts of one loop's PTX lines (and the kernel's layouts)."""
    ptx = kernel.asm["ptx"]
    count = lambda pat, s: len(re.findall(pat, s))  # noqa: E731
    row = dict(
        bar_loop=count(r"\bbar\.sync\b|\bbarrier\.sync\b", body),
        bar_total=count(r"\bbar\.sync\b|\bbarrier\.sync\b", ptx),
        shfl_loop=count(r"\bshfl\.sync", body),
        st_shared_loop=count(r"\bst\.shared", body),
        ld_shared_loop=count(r"\bld\.shared|\bldmatrix", body),
        ld_global_loop=count(r"\bld\.global", body),
        st_global_loop=count(r"\bst\.global", body),
        ex2_loop=count(r"\bex2\.approx", body),
        loop_lines=len(body.splitlines()),
        layouts=re.findall(r"^#\w+ = (#ttg\.\w+<.*>)$", kernel.asm["ttgir"], re.M),
    )
    return row


def real_config(K: int, C: int, sr: int = 0, save_ck: bool = False, backptr: bool = False, full: bool = False):
    """The real forward kernel as ``launch._fwd`` launches it (factored, no start bias): semiring id
    ``sr`` (0 log, 1 max), options SAVE_CK / BACKPTR / FULL; constexprs the kernel lacks are dropped."""
    from semiring_flash.ops.triton import kernels, launch

    KP, CP = max(2, _pow2(K)), max(2, _pow2(C))
    consts = dict(SR=sr, KK=1, S=1, CP=CP, KP=KP, KR=max(2, _pow2(K + 1)), SP=1, EDGES=False, HAS_SB=False,
                  SAVE_CK=save_ck, BACKPTR=backptr, FULL=full, USE_RING=True)
    # arrays the launcher passes as None for these options (constexpr None, as in launch._fwd)
    unused = ["edges_ptr", "sb_ptr", "tp_ptr"] + ([] if backptr else ["bpa_ptr", "bpt_ptr", "fin_ptr"])
    unused += [] if save_ck else ["ckv_ptr", "ckb_ptr", "ckn_ptr"]
    unused += [] if full else ["tra_ptr", "trt_ptr", "tam_ptr", "taz_ptr", "ttm_ptr", "ttz_ptr"]
    unused += ["tam_ptr", "taz_ptr", "ttm_ptr", "ttz_ptr"] if sr == 1 else ["tra_ptr", "trt_ptr"]
    if "rot_ptr" in kernels.scan_fwd_kernel.arg_names and not full:
        unused += ["tv_ptr", "to_ptr", "tb_ptr"]  # the register ring keeps no tape
    consts |= dict.fromkeys(unused)
    consts = {k: v for k, v in consts.items() if k in kernels.scan_fwd_kernel.arg_names}
    ring = hasattr(launch, "_ring_warps")  # False: a checkout from before the register ring
    return kernels.scan_fwd_kernel, consts, launch._ring_warps(CP, _pow2(K + 1)) if ring else launch._num_warps(KP * CP)


def baseline_config(K: int, C: int):
    """The real forward kernel as the baseline launches it: log, factored, plain forward."""
    return real_config(K, C)


#: name -> options of the real kernel's forward compiled by ``real_rows``
REAL = {"log": dict(sr=0), "log+ck": dict(sr=0, save_ck=True), "log+full": dict(sr=0, full=True),
        "max": dict(sr=1), "max+bp": dict(sr=1, backptr=True), "max+ck": dict(sr=1, save_ck=True),
        "max+full": dict(sr=1, full=True)}


def real_rows(K: int = 100, C: int = 8) -> dict:
    """Proxy rows of the real forward kernel under each option set of ``REAL``."""
    rows = {}
    for name, kw in REAL.items():
        fn, consts, nw = real_config(K, C, **kw)
        rows[name] = dict(num_warps=nw, **measure(compile_sm90(fn, consts, nw)))
    return rows


def real_bwd_config(K: int, C: int, sr: int = 0, recompute: bool = False, flags=()):
    """The real backward kernel as ``launch._bwd`` launches it for B=1 (factored, no start bias, fp32):
    semiring id ``sr``, RECOMPUTE, and the launch flags ``flags`` (e.g. "RING_RECOMPUTE") on, the
    backward's other ring flags off (whatever the library's default); "PIPE": the pipelined
    backward (launch.PIPELINE_BACKWARD, with both ring flags)."""
    import torch

    import semiring_flash as sf
    from semiring_flash.ops.triton import kernels, launch

    switches = _RING + (("TAPE_PULL",) if hasattr(launch, "TAPE_PULL") else ())
    old = {f: getattr(launch, f) for f in switches}
    try:
        for f in switches:
            setattr(launch, f, f in flags)
        m = launch._Meta(sf.MaxSemiring if sr else sf.LogSemiring, 1, 100_000, K, C, torch.float32, "cpu", False, False)
    finally:
        for f, v in old.items():
            setattr(launch, f, v)
    fn = kernels.scan_bwd_kernel
    ring = m.bwd_ring(recompute) if hasattr(m, "bwd_ring") else {}
    consts = dict(m.consts(), RECOMPUTE=recompute, KR=m.KR, GM=getattr(m, "fold", None), PIPE="PIPE" in flags,
                  TAPE_PULL=getattr(m, "tape_pull", False), **ring)
    unused = ["edges_ptr", "gedge_ptr", "sb_ptr", "gsb_ptr", "tp_ptr"]
    unused += ["tam_ptr", "taz_ptr", "ttm_ptr", "ttz_ptr"] if sr == 1 else ["tra_ptr", "trt_ptr"]
    unused += [] if recompute else ["ckv_ptr", "ckb_ptr", "ckn_ptr"]
    unused += [] if any(ring.values()) else ["rot_ptr"]
    unused += ["ta_ptr"] if ring.get("USE_RING_ADJOINT") else ["gsc_ptr"]
    consts |= dict.fromkeys(unused)
    nw = m.bwd_warps(recompute) if ring else m.num_warps
    return fn, {k: v for k, v in consts.items() if k in fn.arg_names}, nw
#: name -> (semiring id, RECOMPUTE, launch flags) of the real backward compiled by ``real_bwd_rows``
_RING = ("RING_RECOMPUTE", "RING_ADJOINT")
REAL_BWD = {f"{sr}{'+rc' if rc else ''}{' ' + tag if tag else ''}": (i, rc, flags)
            for i, sr in enumerate(["log", "max"])
            for rc in (False, True)
            for tag, flags in [("", ()), ("ring_rc", _RING[:1]), ("ring_adj", _RING[1:]), ("ring_rc+adj", _RING),
                               ("pipe", _RING + ("PIPE",))]
            if rc or ("rc" not in tag and tag != "pipe")}


def real_bwd_rows(K: int = 100, C: int = 8, only=None, extra=()) -> dict:
    """Proxy rows of the real backward per ``REAL_BWD`` entry, one row per per-step loop:
    "name: recompute" (RECOMPUTE) and "name: adjoint" (the two largest loops inside the loop
    over blocks, in the order the kernel runs them; their own blocks: RING_ADJ's fold every
    RING_FOLD steps is a loop of its own, its barrier is counted, once)."""
    rows = {}
    for name, (sr, recompute, flags) in REAL_BWD.items():
        if only and name not in only:
            continue
        fn, consts, nw = real_bwd_config(K, C, sr, recompute, tuple(flags) + tuple(extra))
        k = compile_sm90(fn, consts, nw)
        loops = loops_at_depth(k.asm["ptx"], 2)  # the steps' loops, inside the loop over blocks
        big = sorted(sorted(loops, key=lambda h: len(loops[h]))[-(1 + recompute):], key=list(loops).index)
        res = resources(k.asm["cubin"])
        sass = sass_step_loops(k.asm["cubin"], 2, 1 + recompute)
        for part, h, sl in zip(["recompute", "adjoint"][1 - recompute:], big, sass):
            rows[f"{name}: {part}"] = dict(num_warps=nw, **measure_body("\n".join(loops[h]), k),
                                           bar_sass=sl["bar"], shfl_sass=sl["shfl"], sass_n=sl["n"], **res)
    return rows


def configs():
    """name -> config(K, C) -> (kernel, constexprs, num_warps), for every variant (Gluon ones if importable)."""
    out = {name: fwd_variants.kernel_config for name in fwd_variants.VARIANTS}
    out["baseline"] = baseline_config
    out["baseline_full"] = lambda K, C: real_config(K, C, full=True)
    out["baseline_ck"] = lambda K, C: real_config(K, C, save_ck=True)
    return {**out, **gluon_configs()}


def gluon_configs():
    """name -> config of the Gluon variants ({} for a triton without Gluon: the table says so)."""
    try:
        from benchmarks.latency import gluon_variants
    except Exception as e:  # noqa: BLE001
        print(f"no Gluon variants: {type(e).__name__}: {e}")
        return {}
    return {name: gluon_variants.kernel_config for name in gluon_variants.GLUON_VARIANTS}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--K", type=int, default=100)
    ap.add_argument("--C", type=int, default=8)
    ap.add_argument("--json", help="write the table as JSON here")
    ap.add_argument("--dump", help="write each variant's ttgir/ptx here")
    ap.add_argument("--real", action="store_true", help="only the real forward kernel, per option set (REAL)")
    ap.add_argument("--real-bwd", action="store_true", help="only the real backward kernel, per flag set (REAL_BWD)")
    ap.add_argument("--gluon", action="store_true", help="only the Gluon variants")
    ap.add_argument("--only", nargs="*", help="--real-bwd: only these REAL_BWD rows (e.g. log max)")
    ap.add_argument("--tape-pull", action="store_true", help="--real-bwd: launch.TAPE_PULL on in every row")
    args = ap.parse_args(argv)
    if args.real_bwd:
        rows = real_bwd_rows(args.K, args.C, args.only, ("TAPE_PULL",) if args.tape_pull else ())
        return _table(rows, args, "real backward kernel, per step loop" + (", TAPE_PULL" * args.tape_pull))
    if args.real:
        return _table(real_rows(args.K, args.C), args, "real forward kernel")
    rows = {}
    for name, config in (gluon_configs() if args.gluon else configs()).items():
        try:
            fn, consts, nw = config(args.K, args.C) if name.startswith("baseline") else config(name, args.K, args.C)
            k = compile_sm90(fn, consts, nw)
            rows[name] = dict(num_warps=nw, **measure(k))
            if args.dump:
                os.makedirs(args.dump, exist_ok=True)
                for ext in ("ttgir", "ptx"):
                    with open(os.path.join(args.dump, f"{name}.{ext}"), "w") as f:
                        f.write(k.asm[ext])
        except Exception as e:  # a variant that does not compile is a result too
            rows[name] = dict(error=f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}")
    return _table(rows, args, "variant")


def _table(rows: dict, args, what: str) -> dict:
    """Print the proxy table (and the layouts), write --json; returns rows."""
    cols = ["num_warps", "bar_loop", "bar_sass", "shfl_loop", "shfl_sass", "st_shared_loop", "ld_shared_loop",
            "ld_global_loop", "st_global_loop", "ex2_loop", "sass_n", "reg", "local", "stack", "shared"]
    print(f"sm_90 PTX and SASS of the scan loop, K={args.K}, C={args.C} (bar: CTA barriers per step, PTX;"
          f" bar_sass: in the SASS); rows: {what}")
    print(f"{'variant':26s} " + " ".join(f"{c.replace('_loop', ''):>9s}" for c in cols))
    for name, r in rows.items():
        if "error" in r:
            print(f"{name:26s} ERROR {r['error']}")
        else:
            print(f"{name:26s} " + " ".join(f"{r.get(c, ''):>9}" for c in cols))
    print("layouts (ttgir):")
    for name, r in rows.items():
        for lay in r.get("layouts", [])[:3]:
            print(f"  {name:20s} {lay}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(dict(K=args.K, C=args.C, rows=rows), f, indent=1)
    return rows


if __name__ == "__main__":
    main()
