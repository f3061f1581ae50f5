"""The register-ring forward's tape and checkpoint stores (launch.RING_TAPES) against the tape step (GPU):
value and every gradient of forward + backward, B=1, T=10^5, K=100, C=8 (whole tape kept, and
recomputed from checkpoints) and B=16, T=1000, K=30, C=39; times of both.

    OUT=out python benchmarks/latency/ring_tapes_check.py  # writes $OUT/gradcmp.json

H100, 2026-12-07: values agree (2e-7) but gradients differ by up to 5e-2 of the largest, which is
why RING_TAPES is off (benchmarks/results/2026-12-07/gradcmp.json, docs/gpu.md)."""
import json, os, sys, time
import torch
ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..")
sys.path.insert(0, ROOT); sys.path.insert(0, os.path.join(ROOT, "benchmarks"))
import semiring_flash as sf
from semiring_flash.ops.triton import launch
from semiring_flash.ops import triton as tk
from semiring_flash.ops.dispatch import entry_value
from gpu_bench import make_inputs
res = []
for (B, T, K, C) in [(1, 100_000, 100, 8), (16, 1000, 30, 39)]:
    cum, trans, dur, entry, end, lengths = make_inputs(B, T, K, C)
    tau0 = entry_value(sf.LogSemiring, entry, torch.float32)
    for store in (launch.STORE_ALL_BYTES, 0):
        outs = {}
        for ring in (False, True):
            launch.RING_FORWARD = launch.RING_TAPES = ring; launch.STORE_ALL_BYTES = store
            xs = [x.detach().clone().requires_grad_(True) for x in (cum, trans, dur, tau0, end)]
            def f():
                v = tk.factored_scan_triton(sf.LogSemiring, *xs, lengths)
                return [v] + list(torch.autograd.grad(v.sum(), xs))
            f(); torch.cuda.synchronize()
            ts = []
            for _ in range(3):
                t0 = time.perf_counter(); o = f(); torch.cuda.synchronize(); ts.append(time.perf_counter() - t0)
            outs[ring] = (o, min(ts))
        diffs = [float(((a.double() - b.double()).abs().max() / b.double().abs().max().clamp_min(1e-30))) for a, b in zip(outs[True][0], outs[False][0])]
        bitwise = all(torch.equal(a, b) for a, b in zip(outs[True][0], outs[False][0]))
        r = dict(B=B, T=T, K=K, C=C, store_all_bytes=store, fwdbwd_s_ring_off=outs[False][1], fwdbwd_s_ring_on=outs[True][1],
                 max_rel_diff=diffs, bitwise=bitwise)
        print(json.dumps(r), flush=True); res.append(r)
        if T < 10000:
            break
    launch.STORE_ALL_BYTES = 128 << 20
json.dump(res, open(os.path.join(os.environ.get("OUT", "."), "gradcmp.json"), "w"), indent=1)
