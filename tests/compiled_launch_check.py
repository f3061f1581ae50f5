"""Compiled-mode launch check, run in its own process by test_triton_compiled.py:

    python tests/compiled_launch_check.py smoke|all

Every kernel variant (semiring x factored/edges x start bias x stored tape/checkpoints, the
Viterbi forward) is compiled for sm_90 (noop_gpu: real compiler, no GPU) and launched through
the launchers twice: Triton's generic path, then the direct one. Checks: each compiles (None
operands are constexpr Nones the kernels never offset), the direct launch hands the driver the
same arguments as the generic one, and no array is passed twice (no stand-in pointers).
"""

from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(1, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
import noop_gpu  # noqa: E402

noop_gpu.install()

import torch  # noqa: E402

import semiring_flash as sf  # noqa: E402
from semiring_flash.ops.dispatch import entry_value  # noqa: E402
from semiring_flash.ops.triton import edge_scan_triton, factored_scan_triton, launch, viterbi_triton  # noqa: E402
from semiring_flash.ops.triton.segment_scan import segment_scan_triton  # noqa: E402

B, T, K, C = 2, 16, 3, 4
SEMIRINGS = {"log": sf.LogSemiring, "max": sf.MaxSemiring, "entropy": sf.EntropySemiring, "kmax": sf.KMaxSemiring(2)}


def _factored(sr, sb, every):
    g = torch.Generator().manual_seed(0)
    cum = torch.cat([torch.zeros(B, 1, C, dtype=torch.float64), torch.randn(B, T, C, generator=g).double().cumsum(1)], 1)
    xs = [cum, torch.randn(B, C, C), torch.randn(B, K, C), torch.randn(B, C)]
    xs += [torch.randn(B, T, C)] if sb else []
    xs = [x.requires_grad_() for x in xs]
    tau0 = entry_value(sr, torch.randn(B, C, C), torch.float32).requires_grad_()
    lengths = torch.tensor([T, T - 5])

    def call():
        v = factored_scan_triton(sr, xs[0], xs[1], xs[2], tau0, xs[3], lengths,
                                 start_bias=xs[4] if sb else None, checkpoint_every=every)
        torch.autograd.grad(v, xs + [tau0], torch.ones_like(v))
    return call


def _edges(sr, every):
    e = torch.randn(B, T, K + 1, C, C, requires_grad=True)

    def call():
        v = edge_scan_triton(sr, e, torch.tensor([T, T - 5]), checkpoint_every=every)
        torch.autograd.grad(v, e, torch.ones_like(v))
    return call


def _viterbi():
    g = torch.Generator().manual_seed(0)
    cum = torch.cat([torch.zeros(B, 1, C, dtype=torch.float64), torch.randn(B, T, C, generator=g).double().cumsum(1)], 1)
    tau0 = entry_value(sf.MaxSemiring, torch.randn(B, C, C), torch.float32)
    return lambda: viterbi_triton(cum, torch.randn(B, C, C), torch.randn(B, K, C), tau0, torch.randn(B, C),
                                  torch.tensor([T, 3]))


def _segment(sr, option):
    """The one-node SegmentPotentials path: its glue kernels around the scan."""
    g = torch.Generator().manual_seed(0)
    d = dict(transition=torch.randn(C, C, generator=g), duration=torch.randn(B, K, C, generator=g),
             end=torch.randn(C, generator=g))
    if option == "cum":
        d["cum_scores"] = torch.randn(B, T + 1, C, generator=g).double().index_fill_(1, torch.tensor([0]), 0.0)
    else:
        d["scores"] = torch.randn(B, C, T, generator=g).transpose(1, 2)  # strided
    d.update(init=torch.randn(B, C, generator=g)) if option == "init" else None
    d.update(start=torch.randn(C, generator=g)) if option == "start" else None
    leaves = {k: v.requires_grad_() for k, v in d.items()}
    pots = sf.SegmentPotentials(**leaves, lengths=torch.tensor([T, T - 5]))

    def call():
        v = segment_scan_triton(sr, pots)
        torch.autograd.grad(v.sum(), list(leaves.values()))
    return call


#: launch flags of the register-ring paths (by default only at K >= 32, C <= 8), turned on for the
#: "-ring" variants; with checkpoints, the pipelined backward (one launch per block, I varying)
RING_FLAGS = ("RING_FORWARD", "RING_TAPES", "RING_RECOMPUTE", "RING_ADJOINT", "PIPELINE_BACKWARD")


def _flagged(call):
    """call with every RING_FLAGS flag on (the launcher's meta cache keys on them)."""
    def run():
        old = {f: getattr(launch, f) for f in RING_FLAGS}
        try:
            for f in RING_FLAGS:
                setattr(launch, f, True)
            call()
        finally:
            for f, v in old.items():
                setattr(launch, f, v)
    return run


def variants(which):
    for name, sr in SEMIRINGS.items():
        for every in (None, 4):  # whole tape kept / checkpoints every 4 steps (backward recomputes)
            mode = "stored" if every is None else "ckpt"
            for sb in (False, True):
                yield f"factored-{name}-{mode}{'-sb' if sb else ''}", _factored(sr, sb, every)
                if name in ("log", "max"):
                    yield f"factored-{name}-{mode}{'-sb' if sb else ''}-ring", _flagged(_factored(sr, sb, every))
            yield f"edges-{name}-{mode}", _edges(sr, every)
    yield "viterbi", _viterbi()
    for name in ("log", "max"):
        for option in ("init", "start", "cum"):
            yield f"segment-{name}-{option}", _segment(SEMIRINGS[name], option)


SMOKE = {"factored-log-stored", "factored-max-ckpt-sb", "edges-log-ckpt", "viterbi", "segment-log-init",
         "segment-max-start", "factored-log-ckpt-sb-ring", "factored-max-ckpt-ring"}


def _shape(x):
    return ("tensor", x.dtype, tuple(x.shape), x.stride()) if isinstance(x, torch.Tensor) else x


def _launched(call, direct):
    launch.DIRECT_LAUNCH = direct
    noop_gpu.launches.clear()
    call()
    return list(noop_gpu.launches)


def main(which):
    done = 0
    for name, call in variants(which):
        if which == "smoke" and name not in SMOKE:
            continue
        generic = _launched(call, False)  # compiles on the first call of a variant
        _launched(call, True)  # first direct call: fills the launch cache
        direct = _launched(call, True)
        assert generic and len(generic) == len(direct), (name, len(generic), len(direct))
        for (grid_g, args_g), (grid_d, args_d) in zip(generic, direct):
            assert grid_g == grid_d and [_shape(x) for x in args_g] == [_shape(x) for x in args_d], name
            ptrs = [x.data_ptr() for x in args_d if isinstance(x, torch.Tensor)]
            assert len(ptrs) == len(set(ptrs)), f"{name}: an array is passed twice"
        done += 1
    launch.DIRECT_LAUNCH = True
    print(f"compiled-launch check: {done} variants ok")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "smoke")
