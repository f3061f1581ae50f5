"""The B=1 latency experiments' forward variants (benchmarks/latency/fwd_variants.py) on CPU
through TRITON_INTERPRET=1, against the float64 dense DP (tiny sizes: T <= 16, K <= 4, C <= 4).

Variants differing only in num_warps run the same code in the interpreter, so each distinct
compile-time configuration is tested once. Gluon kernels (explicit layouts) cannot run in the
interpreter; they are checked on the GPU only (benchmarks/latency/run_gpu.py).
"""

import os
import sys

import pytest
import torch

from conftest import interpreter_marks, require_interpreter

triton = require_interpreter()

import semiring_flash as sf  # noqa: E402
from semiring_flash.ops.dispatch import entry_value  # noqa: E402
from semiring_flash.ops.dense import dense_factored  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from benchmarks.latency import fwd_variants as fv  # noqa: E402
from benchmarks.latency.ptx_proxy import loop_body  # noqa: E402

pytestmark = interpreter_marks(fv.regring_kernel)

NEG = float("-inf")


def _distinct_configs():
    """One variant name per distinct (kernel options minus num_warps), plus the baseline."""
    seen, names = set(), ["baseline"]
    for name, f in fv.VARIANTS.items():
        if name == "baseline":
            continue
        key = tuple(sorted((k, v) for k, v in f.keywords.items() if k != "num_warps"))
        if key not in seen:
            seen.add(key)
            names.append(name)
    return names


CONFIGS = _distinct_configs()


def _inputs(B, T, K, C, seed, neg=True, cum_offset=0.0):
    g = torch.Generator().manual_seed(seed)
    r = lambda *s: torch.randn(*s, generator=g, dtype=torch.float64)  # noqa: E731
    cum = torch.cat([torch.zeros(B, 1, C, dtype=torch.float64), r(B, T, C).cumsum(1)], 1) + cum_offset
    trans, dur, entry, end = r(B, C, C), r(B, K, C), r(B, C, C), r(B, C)
    if neg:
        trans[:, 0, C - 1] = NEG  # forbidden transition
        trans[:, 1, :] = NEG  # label 1 can never be left
        dur[:, K - 1, 0] = NEG  # forbidden duration
        end[:, 0] = NEG
    lengths = torch.randint(1, T + 1, (B,), generator=g)
    lengths[0] = T
    lengths[-1] = 1
    tau0 = entry_value(sf.LogSemiring, entry, torch.float64)
    return cum, trans, dur, tau0, end, lengths


def _oracle(cum, trans, dur, tau0, end, lengths):
    return dense_factored(sf.LogSemiring, cum, trans, dur, tau0, end, lengths)[0]


def test_configs_cover_every_option():
    """The deduplication keeps every kernel option on and off somewhere (a test that covers them)."""
    kws = [fv.VARIANTS[n].keywords for n in CONFIGS[1:]]
    for opt in ("lanes", "online", "trt"):
        assert any(k.get(opt) for k in kws) and any(not k.get(opt) for k in kws), opt
    assert any(k.get("prefetch") is False for k in kws)


# (B, T, K, C): padded labels and slots (C=3 -> CP=4; K=4 -> KP=8), an unpadded ring that wraps
# every 4 steps (K=3 -> KP=4), K=1, and C=1
SIZES = [(4, 12, 4, 3), (3, 16, 3, 4), (2, 9, 1, 2), (2, 7, 2, 1)]


@pytest.mark.parametrize("name", CONFIGS)
@pytest.mark.parametrize("size", SIZES, ids=lambda s: "B{}T{}K{}C{}".format(*s))
def test_variant_matches_dense_oracle(name, size):
    B, T, K, C = size
    ins = _inputs(B, T, K, C, seed=hash(size) % 1000, neg=C > 1)
    ref = _oracle(*ins)
    got = fv.VARIANTS[name](*ins)
    assert got.dtype == torch.float64 and got.shape == (B,)
    torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("name", CONFIGS)
def test_prefix_difference_taken_in_float64(name):
    """Prefix sums offset by 1e9: a difference taken in fp32 would be off by ~10^2."""
    ins = _inputs(2, 10, 3, 2, seed=3, cum_offset=1e9)
    ref = _oracle(*_inputs(2, 10, 3, 2, seed=3))
    torch.testing.assert_close(fv.VARIANTS[name](*ins), ref, rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("name", CONFIGS)
def test_impossible_sequence_is_minus_inf_not_nan(name):
    """Every transition forbidden: only single-segment paths (d <= K) remain; longer sequences
    have no segmentation and give −inf, never NaN; inputs are not mutated."""
    cum, trans, dur, tau0, end, lengths = _inputs(3, 8, 3, 2, seed=5)
    trans[:] = NEG
    lengths = torch.tensor([8, 3, 2])
    ins = (cum, trans, dur, tau0, end, lengths)
    before = [x.clone() for x in ins]
    got = fv.VARIANTS[name](*ins)
    ref = _oracle(*ins)
    assert not got.isnan().any()
    assert got[0] == NEG and torch.isfinite(got[1:]).all()
    torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-4)
    for x, y in zip(ins, before):
        assert torch.equal(x, y)


@pytest.mark.parametrize("arg, bad", [("duration", torch.zeros(1, 3, 3)), ("lengths", torch.zeros(2, dtype=torch.long)),
                                      ("tau0", torch.zeros(1, 1, 2, 2))])
def test_bad_shapes_name_the_argument(arg, bad):
    cum, trans, dur, tau0, end, lengths = _inputs(1, 6, 3, 2, seed=0)
    kw = dict(cum=cum, transition=trans, duration=dur, tau0=tau0, end=end, lengths=lengths)
    kw[arg] = bad
    with pytest.raises(ValueError, match=arg):
        fv.VARIANTS["regring_w4"](**kw)


def test_rotated_durations_index_rule():
    """E[c, ((-t) mod KP) + j] = dur[d-1, c] for d = (t - j) mod KP in 1..K, −inf otherwise."""
    K, C, KP, CP = 3, 2, 4, 4
    dur = torch.arange(K * C, dtype=torch.float32).view(1, K, C)
    E = fv.rotated_durations(dur, KP, CP)[0]
    for t in range(1, 9):
        for j in range(KP):
            d = (t - j) % KP
            for c in range(CP):
                want = dur[0, d - 1, c].item() if (1 <= d <= K and c < C) else NEG
                assert E[c, (-t) % KP + j].item() == want


def test_loop_body_is_the_longest_back_edge_region():
    ptx = "\n".join(["a", "$L__BB0_1:", "bar.sync 0;", "$L__BB0_2:", "bar.sync 0;", "@%p1 bra $L__BB0_2;",
                     "shfl.sync.bfly", "@%p2 bra $L__BB0_1;", "bar.sync 0;", "bra.uni $L__BB0_3;", "$L__BB0_3:"])
    body = loop_body(ptx)
    assert body.count("bar.sync") == 2 and "shfl.sync" in body and body.startswith("$L__BB0_1:")


def test_loop_body_follows_llvm_loop_comments():
    """With LLVM's loop comments the body is every block of the largest loop, wherever laid out
    (here the latch block comes before the header, and a long label puts its comment on the next line)."""
    ptx = "\n".join(["$L__BB0_1:", "bar.sync 0;",  # before the loop
                     "$L__BB0_5:                // %x.exit", "   //   in Loop: Header=BB0_2 Depth=1", "shfl.sync.bfly",
                     "@%p1 bra $L__BB0_2;", "bra.uni $L__BB0_6;",
                     "$L__BB0_2:                // =>This Inner Loop Header: Depth=1", "bar.sync 0;", "ex2.approx.f32",
                     "// %bb.3:                 //   in Loop: Header=BB0_2 Depth=1", "bar.sync 0;", "bra.uni $L__BB0_5;",
                     "$L__BB0_6:                // %._crit_edge", "bar.sync 0;"])
    body = loop_body(ptx)
    assert body.count("bar.sync") == 2 and "shfl.sync" in body and "ex2" in body


def _proxy_rows(mode, *args):
    """ptx_proxy.py's rows for the real kernels (``mode``: --real or --real-bwd; its ``args``),
    compiled for sm_90 in a subprocess without TRITON_INTERPRET."""
    import json
    import subprocess
    import tempfile

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    with tempfile.TemporaryDirectory() as d:
        out = os.path.join(d, "rows.json")
        subprocess.run([sys.executable, os.path.join(root, "benchmarks", "latency", "ptx_proxy.py"), mode, *args,
                        "--json", out], check=True, env=env, cwd=root, capture_output=True)
        with open(out) as f:
            return json.load(f)["rows"]


@pytest.mark.slow
def test_real_forward_kernel_sm90_barriers():
    """The real forward kernel compiled for sm_90 (in a process without the interpreter): the
    register ring keeps at most 2 CTA barriers per step under every option set, the exchange of
    α (the tape step had 10-22; stores from the transition tile's layout or a reduction of a
    loop-carried BASE after the loop: 6-8), and nothing spills."""
    rows = _proxy_rows("--real")
    assert set(rows) >= {"log", "log+ck", "log+full", "max", "max+bp", "max+ck", "max+full"}
    for name, row in rows.items():
        assert row["bar_loop"] <= 2 and row["local"] == 0, (name, row)
        assert row["bar_sass"] == row["bar_loop"], (name, row)  # the SASS's step loop: as many BARs
        # step 1's terms are read after the barrier that completes the rotated duration table
        # (read before it, step 1 took stale memory on the GPU; the interpreter cannot show it)
        if "full" not in name:  # FULL stores tape row 0 first: the count is not the table's there
            assert row["ld32_after_first_store"] == 0, (name, row)


@pytest.mark.slow
def test_real_backward_kernel_sm90_barriers():
    """The real backward compiled for sm_90 (ptx_proxy.py --real-bwd): with the register-ring
    flags, at most 2 CTA barriers per recompute step and 4 per adjoint step (one of them the
    duration-adjoint fold, every RING_FOLD steps), fewer than on the tape; no local spills; the
    same in the pipelined backward (PIPE); the SASS's step loops hold as many barriers as the PTX's."""
    rows = _proxy_rows("--real-bwd")
    for sr in ("log", "max"):
        for part, most in (("recompute", 2), ("adjoint", 4)):
            ring, tape = rows[f"{sr}+rc ring_rc+adj: {part}"], rows[f"{sr}+rc: {part}"]
            assert ring["bar_loop"] <= most < tape["bar_loop"] and ring["local"] == 0, (sr, part, ring, tape)
            pipe = rows[f"{sr}+rc pipe: {part}"]  # the pipelined backward's steps: the same loops
            assert pipe["bar_loop"] == ring["bar_loop"] and pipe["local"] == 0, (sr, part, pipe, ring)
            assert pipe["bar_sass"] == pipe["bar_loop"] and ring["bar_sass"] == ring["bar_loop"], (pipe, ring)
        assert rows[f"{sr} ring_adj: adjoint"]["bar_loop"] <= 4 < rows[f"{sr}: adjoint"]["bar_loop"]


@pytest.mark.slow
def test_tape_adjoint_sums_labels_without_shuffle_trees():
    """The tape adjoint (issue 11's batched case, K=30, C=39, compiled for sm_90) with TAPE_PULL: the
    transition pull reads a transposed copy, so c' lies on the lanes as c does in the window pull, and the
    sum over c needs no float64 shuffle tree per c' (166 shuffles and 1376 SASS instructions a
    step with the plain pull, 8 and about 940 with TAPE_PULL); the softmax divisions run once per row."""
    on = _proxy_rows("--real-bwd", "--K", "30", "--C", "39", "--only", "log", "max", "--tape-pull")
    off = _proxy_rows("--real-bwd", "--K", "30", "--C", "39", "--only", "log")
    for sr in ("log", "max"):
        row = on[f"{sr}: adjoint"]
        assert row["shfl_sass"] <= 16 and row["bar_sass"] <= 9, (sr, row)
    assert on["log: adjoint"]["sass_n"] < 1100 < off["log: adjoint"]["sass_n"], (on, off)
    assert off["log: adjoint"]["shfl_sass"] > 100, off


@pytest.mark.slow
def test_backward_recompute_sums_in_the_forwards_order():
    """The backward's recompute must give the forward's rows bit for bit, and on a GPU a sum's
    order follows its layout, which the interpreter cannot show (H100: gradients 3e-5 from float64
    instead of 1e-6, twice). sum_order.py compiles the real calls for sm_90 (ring with the backward
    in one program and pipelined, tape with and without TAPE_PULL, entropy, edges) and compares
    the forward step's sums with the backward's: it reports c371bd4's TAPE_PULL and fc99a89's ring
    stores, the two cases the H100 found."""
    from benchmarks.latency import sum_order

    results = sum_order.check()
    assert [r["case"] for r in results] == list(sum_order.CASES)
    assert all(r["forward_sums"] >= 2 for r in results), results
    assert all(r["ok"] for r in results), [r for r in results if not r["ok"]]


def test_sum_order_compares_layouts_and_axes_of_float_sums_only():
    """sum_order.loop_sums on a hand-written module: per loop, its f32 sums (layout written out,
    axis) in order; a max, an f64 sum and a sum outside the loop are not listed."""
    from benchmarks.latency.sum_order import loop_sums

    def red(var, op, ty, axis):
        return [f'      %{var} = "tt.reduce"(%x) <{{axis = {axis} : i32}}> ({{',
                "      ^bb0(%a: f32, %b: f32):", f"        %c = {op} %a, %b : f32",
                "        tt.reduce.return %c : f32",
                f"      }}) : (tensor<{ty}, #blocked>) -> tensor<8xf32, #ttg.slice<{{dim = 1, parent = #blocked}}>>"]

    head = ["#blocked = #ttg.blocked<{sizePerThread = [1, 1], threadsPerWarp = [4, 8], warpsPerCTA = [8, 1], order = [1, 0]}>",
            "module {"]
    loop = ["    %r = scf.for %i = %c0 to %n step %c1 iter_args(%x = %y) -> (f32) : i32 {",
            *red("s", "arith.addf", "8x8xf32", 1), *red("m", "arith.maxnumf", "8x8xf32", 1),
            *red("d", "arith.addf", "8x8xf64", 0), *red("t", "arith.addf", "8x8xf32", 0), "    }"]
    text = "\n".join(head + red("o", "arith.addf", "8x8xf32", 1) + loop + ["}"])
    layout = "#ttg.blocked<{sizePerThread = [1, 1], threadsPerWarp = [4, 8], warpsPerCTA = [8, 1], order = [1, 0]}>"
    assert loop_sums(text) == [[(1, f"tensor<8x8xf32, {layout}>"), (0, f"tensor<8x8xf32, {layout}>")]]
    other = text.replace("threadsPerWarp = [4, 8]", "threadsPerWarp = [8, 4]")
    assert loop_sums(other) != loop_sums(text)


@pytest.mark.slow
def test_gpu_backward_script_runs_and_checks_its_gradients(tmp_path, monkeypatch):
    """run_gpu_bwd.py on CPU (interpreter, tiny sizes): every flag set and mode runs, and its
    gradients match the flags-off kernel's and the float64 run's."""
    import json

    from benchmarks.latency import run_gpu_bwd

    monkeypatch.setenv("OUT", str(tmp_path))
    run_gpu_bwd.main(["--T", "10", "--K", "3", "--C", "3", "--reps", "1", "--only", "off", "all"])
    rows = json.loads((tmp_path / "bwd_latency.json").read_text())["rows"]
    assert [(r["mode"], r["flags"]) for r in rows] == [(m, f) for m in ("stored", "recompute") for f in ("off", "all")]
    for r in rows:
        assert "error" not in r and r["bwd_us_per_step"] > 0, r
        for name in run_gpu_bwd.NAMES:
            assert r[f"{name}_finite"] and r.get(f"{name}_vs_off", 0.0) < 1e-5 and r[f"{name}_vs_f64"] < 1e-4, (name, r)


@pytest.mark.slow
def test_mid_probe_runs_and_restores_the_launch_settings(tmp_path, monkeypatch):
    """mid_probe.py on CPU (interpreter, tiny sizes): each variant runs, its gradients match
    the float64 run, and launch's settings (and the backward's warps) are restored after it."""
    import json

    from benchmarks.latency import mid_probe
    from semiring_flash.ops.triton import launch

    before = (launch.NUM_WARPS_OVERRIDE, launch._Meta.bwd_warps)
    monkeypatch.setenv("OUT", str(tmp_path))
    mid_probe.main(["--reps", "1", "--only", "default", "fwd4", "--shape", "2", "9", "3", "5"])
    rows = json.loads((tmp_path / "mid_probe_B2_T9_K3_C5.json").read_text())["rows"]
    assert set(rows) == {"default", "fwd4"}
    for name, row in rows.items():
        assert "error" not in row and row["fwd_bwd_ms"] > 0, (name, row)
        for n in mid_probe.NAMES:
            assert row[f"{n}_vs_f64"] < 1e-5, (name, n, row)
    assert (launch.NUM_WARPS_OVERRIDE, launch._Meta.bwd_warps) == before


def test_gpu_script_reference_matches_dense_oracle():
    """run_gpu.py's float64 reference (what every variant is judged against on the GPU)."""
    from benchmarks.latency.run_gpu import make_inputs, reference_logz

    ins = make_inputs(14, K=4, C=3, seed=2, device="cpu")
    torch.testing.assert_close(reference_logz(*ins), _oracle(*ins), rtol=1e-12, atol=1e-12)
    cum, trans, dur, tau0, end, lengths = _inputs(3, 11, 3, 4, seed=9)
    torch.testing.assert_close(reference_logz(cum, trans, dur, tau0, end, lengths),
                               _oracle(cum, trans, dur, tau0, end, lengths), rtol=1e-12, atol=1e-12)


def test_gluon_redux_needs_whole_warps_on_the_reduced_axis():
    from benchmarks.latency.gluon_variants import gluon_ring

    with pytest.raises(ValueError, match="label_lanes"):
        gluon_ring(*_inputs(1, 6, 3, 2, seed=0), num_warps=2, label_lanes=2, redux=True)


@pytest.mark.slow
def test_gluon_sm90_loop_barriers():
    """The layouts do what they are for (Gluon cannot run here, but it compiles for sm_90 on CPU,
    in a process without the interpreter: under it triton's own reductions are interpreted
    functions a Gluon kernel cannot call): at most one cross-warp exchange per step (two
    barriers), none with one warp; no spills."""
    rows = _proxy_rows("--gluon")
    most_barriers = dict(gluon_w8=2, gluon_w1_l8=0, gluon_w8_redux=2)
    assert set(rows) >= set(most_barriers), rows
    for name, most in most_barriers.items():
        assert rows[name].get("bar_loop", 99) <= most and rows[name]["local"] == 0, (name, rows[name])
