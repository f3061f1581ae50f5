"""Viterbi at B=1, T=10^6, K=100, C=8 (GPU): the forward with backpointers and the device backtrace
timed apart, with the register-ring forward off and on (same path required, bitwise). The
backtrace: the parallel one of segments.backtrace per block size, and the sequential chain it
replaced (one program walks every segment; defined here as the reference), same labels required.

    OUT=out python benchmarks/latency/viterbi_split.py     # writes $OUT/viterbi_split.json
"""
import json, os, sys, time
import torch
ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..")
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "benchmarks"))
import semiring_flash as sf
from semiring_flash.ops.triton import kernels, launch, segments
import triton
import triton.language as tl
from semiring_flash.ops.dispatch import entry_value
from gpu_bench import make_inputs

@triton.jit
def sequential_backtrace_kernel(link_ptr, fin_ptr, len_ptr, labels_ptr, starts_ptr, T, C, KP: tl.constexpr):
    """The chain walked by one program from (L, fin): one dependent load per segment (the
    backtrace before 2026-12-07's parallel one; link from segments.backtrace's first pass)."""
    b = tl.cast(tl.program_id(0), tl.int64)
    L = tl.load(len_ptr + b).to(tl.int32)
    c = tl.load(fin_ptr + b).to(tl.int32)
    o = tl.arange(0, KP)
    t = tl.where(c >= 0, L, 0)
    while t > 0:
        v = tl.load(link_ptr + (b * (T + 1) + t) * C + c)
        d = v >> 16
        ok = o < d
        tl.store(labels_ptr + b * T + t - d + o, (c + o * 0).to(tl.int64), mask=ok)
        tl.store(starts_ptr + b * T + t - d + o, (o == 0).to(tl.int8), mask=ok)
        t = t - d
        c = v & 0xFFFF


def timed(fn, n=3):
    fn(); torch.cuda.synchronize()
    ts = []
    for _ in range(n):
        t0 = time.perf_counter(); fn(); torch.cuda.synchronize(); ts.append(time.perf_counter() - t0)
    return min(ts)

res, prev = [], None
B, K, C = 1, 100, 8
for T in (1_000_000,):
    cum, trans, dur, entry, end, lengths = make_inputs(B, T, K, C)
    tau0 = entry_value(sf.MaxSemiring, entry, torch.float32)
    for ring in (False, True):
        launch.RING_FORWARD = ring
        w = make_inputs(B, 500, K, C)
        segments.viterbi_triton(w[0], w[1], w[2], entry_value(sf.MaxSemiring, w[3], torch.float32), w[4], w[5])
        out = {}
        def full():
            out["r"] = segments.viterbi_triton(cum, trans, dur, tau0, end, lengths)
        t_full = timed(full, 2)
        m = launch._meta(sf.MaxSemiring, B, T, K, C, torch.float32, cum.device, False, False, None)
        ops = launch._operands(m, cum, trans, dur, tau0, end, None, lengths)
        bp = launch.Backpointers(bpa=torch.empty(B, T + 1, C, dtype=torch.int16, device="cuda"),
                                 bpt=torch.empty(B, T + 1, C, dtype=torch.int16, device="cuda"),
                                 fin=torch.empty(B, dtype=torch.int32, device="cuda"))
        t_fwd = timed(lambda: launch._fwd(m, ops, False, bp), 2)
        t_nobp = timed(lambda: launch._fwd(m, ops, False), 2)
        bts = {}
        for block in (1024, 4096, 16384):
            bts[f"backtrace_block{block}_s"] = timed(lambda: segments.backtrace(bp, bp.fin, ops.lengths, B, T, C, K, block), 2)
        par = segments.backtrace(bp, bp.fin, ops.lengths, B, T, C, K)
        link = torch.empty(B, T + 1, C, dtype=torch.int32, device="cuda")
        kernels.backlink_kernel[(B, -(-(T + 1) * C // 4096))](bp.bpa, bp.bpt, link, T, C, BLOCK=4096)
        labels = torch.full((B, T), -1, dtype=torch.int64, device="cuda")
        starts = torch.zeros(B, T, dtype=torch.int8, device="cuda")
        bts["backtrace_sequential_s"] = timed(lambda: sequential_backtrace_kernel[(B,)](
            link, bp.fin, ops.lengths, labels, starts, T, C, KP=128, num_warps=1), 2)
        bts["parallel_equals_sequential"] = bool(torch.equal(par[0], labels) and torch.equal(par[1], starts))
        t_bt = bts["backtrace_block4096_s"]
        nseg = int(out["r"][2].sum())
        if ring:
            same = bool(torch.equal(prev[1], out["r"][1]) and torch.equal(prev[2], out["r"][2]) and float(prev[0][0]) == float(out["r"][0][0]))
        else:
            prev = out["r"]; same = None
        r = dict(T=T, ring=ring, full_s=t_full, fwd_bp_s=t_fwd, fwd_nobp_s=t_nobp, backtrace_s=t_bt, **bts, segments=nseg,
                 score=float(out["r"][0][0]), same_as_ring_off=same)
        print(json.dumps(r), flush=True); res.append(r)
json.dump(res, open(os.path.join(os.environ.get("OUT", "."), "viterbi_split.json"), "w"), indent=1)
