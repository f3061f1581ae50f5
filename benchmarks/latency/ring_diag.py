"""The register-ring forward's stored tape (launch.RING_TAPES) against the tape step's, field by field
(GPU): both tapes start NaN-filled, so unwritten rows show; the gradients from each tape against a
float64 run; and each field swapped between the two tapes. This run located the ring's GPU fault
(2026-12-07: wrong from row 1 = step 1's race on the rotated duration table; docs/gpu.md).

    OUT=out python benchmarks/latency/ring_diag.py      # writes $OUT/ringdiag.json (~1 min on an H100)
"""
import json, os, sys, torch
sys.path.insert(0, os.getcwd())
import semiring_flash as sf
from semiring_flash.ops.triton import launch
from semiring_flash.ops.dispatch import entry_value
dev = "cuda" if torch.cuda.is_available() else "cpu"
out = []
def emit(r):
    print(json.dumps(r), flush=True); out.append(r)
launch.RING_TAPES = True
shapes = [(1, 2000, 100, 8), (1, 20000, 100, 8), (1, 20000, 32, 4)] if dev == "cuda" else [(1, 30, 6, 3)]
for (B, T, K, C) in shapes:
    g = torch.Generator().manual_seed(0)
    scores = torch.randn(B, T, C, generator=g)
    cum = torch.cat([torch.zeros(B, 1, C, dtype=torch.float64), scores.double().cumsum(1)], 1).to(dev)
    trans = (0.5 * torch.randn(B, C, C, generator=g)).to(dev); dur = torch.randn(B, K, C, generator=g).to(dev)
    tau0 = entry_value(sf.LogSemiring, 0.5 * torch.randn(B, C, C, generator=g), torch.float32).to(dev)
    end = torch.randn(B, C, generator=g).to(dev); lengths = torch.full((B,), T, device=dev)
    res = {}
    for ring, dt in ((False, torch.float64), (False, torch.float32), (True, torch.float32)):
        launch.RING_FORWARD = ring
        m = launch._meta(sf.LogSemiring, B, T, K, C, dt, cum.device, False, False, None)
        ops = launch._operands(m, cum, trans.to(dt), dur.to(dt), tau0.to(dt), end.to(dt), None, lengths)
        tape = launch.tape_with(m, m.r_tape)[0]
        for f in tape._fields:
            x = getattr(tape, f)
            if x is not None:
                x.fill_(float("nan"))
        v, (ck, tp) = launch._fwd(m, ops, True, tape=tape)
        tp = launch.Tape(**{f: (None if getattr(tp, f) is None else getattr(tp, f).clone()) for f in tp._fields})
        gv = torch.ones(m.S, B, dtype=dt, device=dev)
        gr = launch._bwd(m, gv, ops, (ck, tp))
        res[(ring, dt)] = (m, ops, v.clone(), ck, tp, gr)
        emit(dict(B=B, T=T, K=K, C=C, ring=ring, ring_used=m.ring, dtype=str(dt), value=float(v[0, 0]), store_all=m.store_all))
    ref = res[(False, torch.float64)][5]
    def gdiff(gr):
        return {f: float((getattr(gr, f).double() - getattr(ref, f).double()).abs().max() / getattr(ref, f).double().abs().max())
                for f in ("gcum", "gtr", "gdur", "gtau0", "gend")}
    A, Bt = res[(False, torch.float32)][4], res[(True, torch.float32)][4]
    emit(dict(B=B, T=T, K=K, C=C, what="grad_vs_f64", ring_off=gdiff(res[(False, torch.float32)][5]), ring_on=gdiff(res[(True, torch.float32)][5])))
    for f in A._fields:
        x, y = getattr(A, f), getattr(Bt, f)
        if x is None:
            continue
        xn, yn = x.isnan(), y.isnan()
        both = ~xn & ~yn
        d = torch.where(both & (x != y), (x.double() - y.double()).abs() / (1 + x.double().abs()), 0.0)
        R = m.r_tape; per = x.numel() // (B * m.rows(R))
        bad = (d > 1e-5) | (xn != yn)
        idx = bad.nonzero().flatten()[:10].tolist()
        emit(dict(B=B, T=T, K=K, C=C, field=f, maxreldiff=float(d.max()), n_bad=int(bad.sum()), n_nan_off_only=int((xn & ~yn).sum()),
                  n_nan_on_only=int((~xn & yn).sum()), first_bad_row_col=[(i // per, i % per) for i in idx],
                  first_vals=[(float(x.flatten()[i]), float(y.flatten()[i])) for i in idx[:5]]))
    m, ops = res[(False, torch.float32)][0], res[(False, torch.float32)][1]
    ck = res[(False, torch.float32)][3]
    gv = torch.ones(m.S, B, dtype=torch.float32, device=dev)
    for f in A._fields:
        if getattr(A, f) is None:
            continue
        hy = Bt._replace(**{f: getattr(A, f).clone()})   # ring tape, this field from the tape step
        hy2 = A._replace(**{f: getattr(Bt, f).clone()})  # tape-step tape, this field from the ring
        launch.RING_FORWARD = False
        emit(dict(B=B, T=T, K=K, C=C, swap=f, ring_but_this_from_off=gdiff(launch._bwd(m, gv, ops, (ck, hy))),
                  off_but_this_from_ring=gdiff(launch._bwd(m, gv, ops, (ck, hy2)))))
json.dump(out, open(os.path.join(os.environ.get("OUT", "/tmp"), "ringdiag.json"), "w"), indent=1)
