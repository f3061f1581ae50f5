"""Viterbi at B=1, T=10^6, K=100, C=8 (GPU): the forward with backpointers and the device backtrace
timed apart, with the register-ring forward off and on (same path required, bitwise).

    OUT=out python benchmarks/latency/viterbi_split.py     # writes $OUT/viterbi_split.json
"""
import json, os, sys, time
import torch
ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..")
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "benchmarks"))
import semiring_flash as sf
from semiring_flash.ops.triton import launch, segments
from semiring_flash.ops.triton.kernels import backlink_kernel, backtrace_kernel
from semiring_flash.ops.dispatch import entry_value
from gpu_bench import make_inputs

def timed(fn, n=3):
    fn(); torch.cuda.synchronize()
    ts = []
    for _ in range(n):
        t0 = time.perf_counter(); fn(); torch.cuda.synchronize(); ts.append(time.perf_counter() - t0)
    return min(ts)

res = []
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
        labels = torch.full((B, T), -1, dtype=torch.int64, device="cuda")
        starts = torch.zeros(B, T, dtype=torch.int8, device="cuda")
        link = torch.empty(B, T + 1, C, dtype=torch.int32, device="cuda")

        def backtrace():
            backlink_kernel[(B, -(-(T + 1) * C // 1024))](bp.bpa, bp.bpt, link, T, C, BLOCK=1024)
            backtrace_kernel[(B,)](link, bp.fin, ops.lengths, labels, starts, T, C, KP=128, num_warps=1)
        t_bt = timed(backtrace, 2)
        nseg = int(out["r"][2].sum())
        if ring:
            same = bool(torch.equal(prev[1], out["r"][1]) and torch.equal(prev[2], out["r"][2]) and float(prev[0][0]) == float(out["r"][0][0]))
        else:
            prev = out["r"]; same = None
        r = dict(T=T, ring=ring, full_s=t_full, fwd_bp_s=t_fwd, fwd_nobp_s=t_nobp, backtrace_s=t_bt, segments=nseg,
                 score=float(out["r"][0][0]), same_as_ring_off=same)
        print(json.dumps(r), flush=True); res.append(r)
json.dump(res, open(os.path.join(os.environ.get("OUT", "."), "viterbi_split.json"), "w"), indent=1)
