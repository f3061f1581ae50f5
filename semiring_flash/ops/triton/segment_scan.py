"""The Triton scan of SegmentPotentials as one autograd node (the small-batch path).

A small batch on a GPU costs its host work, not its kernels: every torch op of the glue
around the scan (prefix sums, broadcasts, the entry τ(0), the gradients' cumulative and
batch sums) is ~10 µs of host time, more than its GPU work. Here the user's tensors go
into one ``autograd.Function``; the glue is two small kernels (``segment_glue``: one before
the forward scan, one after the backward scan), and everything a call's signature fixes
(shapes, dtypes, strides, device, which inputs are given) is worked out once, in a cached
``_Plan``: a call allocates a workspace, carves the operands out of it and launches.
Same kernels, same numbers as the general path.

It covers the semirings with a closed-form ⊕ gradient (log, max) and SegmentPotentials
without centring; everything else takes the general path.
"""

from __future__ import annotations

import functools
import itertools

import torch

from ...validation import compute_dtype
from . import launch
from .launch import Operands, _aligned, _bwd, _eager, _fwd, _launch, _lengths, _pow2
from .segment_glue import segment_grads_kernel, segment_prep_kernel

#: the user's tensors, in the order the autograd node takes them
_INPUTS = ("scores", "cum_scores", "transition", "duration", "init", "start", "end")
#: elements of a glue kernel's largest tile (its registers): rows per block follow from it
_TILE = 4096


def supports(semiring, pots) -> bool:
    """Whether ``segment_scan_triton`` handles these potentials (else: the general path)."""
    return semiring.plus_vjp is not None and semiring.n_potentials == 1 and pots.center is None


def _round(n: int) -> int:
    """Workspace offsets in multiples of 16 bytes (Triton specialises on aligned pointers)."""
    return -(-n // 4) * 4


class _Plan:
    """What one call signature fixes: the scan's _Meta, the workspace layout (offsets of the
    per-batch transition, duration, entry τ(0), end and entry weights), the glue kernels'
    constant arguments, and a cache of their compiled forms (they specialise on strides)."""

    def __init__(self, semiring, device, sigs, tuning):
        sig = dict(zip(_INPUTS, sigs))
        base = sig["scores"] or sig["cum_scores"]
        B, T, C = base[0][0], base[0][1] - (sig["scores"] is None), base[0][2]
        K = sig["duration"][0][-2]
        self.m = m = launch._meta(semiring, B, T, K, C, compute_dtype(base[1]), device, False, False, None)
        self.sig = sig
        self.shared = {k: s is not None and len(s[0]) < (3 if k in ("transition", "duration") else 2)
                       for k, s in sig.items()}
        self.entry = sig["start"] is None
        # the kernels index their operands themselves: flat pieces of the workspace do (one split, no views)
        names = ("tr", "du", "t0", "en", "w")
        self.sizes = [_round(n) for n in (B * C * C, B * K * C, B * C, B * C, B * C * C if self.entry else 0)]
        offsets = dict(zip(names, itertools.accumulate([0] + self.sizes)))
        self.ws_numel = sum(self.sizes)
        CP, KP = m.CP, m.KP
        sc, tr, du = (_strides(sig[k], 3) for k in ("scores", "transition", "duration"))
        ini, st, en = (_strides(sig[k], 2) for k in ("init", "start", "end"))
        strides = dict(SC_B=sc[0], SC_T=sc[1], SC_C=sc[2], TR_B=tr[0], TR_R=tr[1], TR_C=tr[2], DU_B=du[0],
                       DU_K=du[1], DU_C=du[2], IN_B=ini[0], IN_C=ini[1], ST_B=st[0], ST_C=st[1], EN_B=en[0], EN_C=en[1])
        self.prep_kw = dict(T=T, C=C, K=K, O_TR=offsets["tr"], O_DU=offsets["du"], O_T0=offsets["t0"],
                            O_EN=offsets["en"], O_W=offsets["w"], **strides, SR=m.sr, CP=CP, KP=KP,
                            BT=max(1, min(_pow2(T), _TILE // CP)), WEIGHTS=self.entry)
        bb = max(1, min(_pow2(B), _TILE // (CP * max(CP, KP))))
        self.grads_kw = dict(B=B, T=T, C=C, K=K, O_W=offsets["w"], CP=CP, KP=KP,
                             BT=max(1, min(_pow2(T), _TILE // CP)), BB=bb,
                             **{f"SH_{n}": self.shared[k] for n, k in (("TR", "transition"), ("DU", "duration"),
                                                                       ("IN", "init"), ("ST", "start"), ("EN", "end"))})
        self.glue_warps = 4
        self.compiled = {}  # the glue kernels' direct launches (launch._launch)

    def carve(self, ws):
        """The operands in the workspace, flat: transition, duration, τ(0), end (and the entry weights)."""
        return ws.split_with_sizes(self.sizes)


@functools.lru_cache(maxsize=256)
def _cached_plan(semiring, device, sigs, tuning):
    return _Plan(semiring, device, sigs, tuning)


def _strides(sig, dims):
    """Strides of a ``dims``-D per-batch tensor (a shared one: batch stride 0; absent: zeros)."""
    return (0,) * dims if sig is None else (0,) * (dims - len(sig[2])) + tuple(sig[2])


def _signature(x):
    return None if x is None else (x.shape, x.dtype, x.stride())


class _SegmentScan(torch.autograd.Function):
    """value (S, B) of SegmentPotentials; inputs: the user's tensors (None where not given)."""

    @staticmethod
    def forward(ctx, p, lengths, scores, cum_scores, transition, duration, init, start, end):
        m = p.m
        ws = torch.empty(p.ws_numel, dtype=m.dtype, device=m.device)
        if scores is not None:
            cum = torch.empty(m.B, m.T + 1, m.C, dtype=torch.float64, device=m.device)
        else:  # a float64 contiguous cum_scores is the operand itself (saved: version-checked)
            cum = cum_scores.to(torch.float64).contiguous()
        users = (scores, transition, duration, init, start, end)
        _launch(segment_prep_kernel, m, _aligned(*users), dict(
            sc_ptr=scores, tr_ptr=transition, du_ptr=duration, in_ptr=init, st_ptr=start, en_ptr=end,
            cum_ptr=None if scores is None else cum, ws_ptr=ws, **p.prep_kw),
            num_warps=p.glue_warps, cache=p.compiled)
        trans, dur, tau0, end_b, _ = p.carve(ws)
        ops = Operands(cum=cum, trans=trans, dur=dur, tau0=tau0, end=end_b, lengths=lengths)
        value, (ck, tape) = _fwd(m, ops, any(ctx.needs_input_grad))
        ctx.p, ctx.full = p, tape is not None
        ctx.save_for_backward(ws, *ops, *ck, *(tape or ()))
        return value

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_value):
        p, m = ctx.p, ctx.p.m
        ws, *xs = ctx.saved_tensors
        n, c = len(Operands._fields), len(launch.Checkpoints._fields)
        ops = Operands(*xs[:n])
        saved = (launch.Checkpoints(*xs[n:n + c]), launch.Tape(*xs[n + c:]) if ctx.full else None)
        g = _bwd(m, grad_value, ops, saved)
        need = dict(zip(_INPUTS, ctx.needs_input_grad[2:]))
        out = {k: torch.empty(p.sig[k][0], dtype=p.sig[k][1], device=m.device) if need[k] else None
               for k in ("scores", "transition", "duration", "init", "start", "end")}
        if not p.entry:
            out["init"] = None  # a given start replaces the entry: init plays no part
        wanted = tuple(x is not None for x in out.values())
        if any(wanted):
            entry = p.entry and (need["transition"] or need["init"])
            _launch(segment_grads_kernel, m, wanted + (entry,), dict(
                gcum_ptr=g.gcum, gtr_ptr=g.gtr, gdur_ptr=g.gdur, gtau0_ptr=g.gtau0, gend_ptr=g.gend, ws_ptr=ws,
                osc_ptr=out["scores"], otr_ptr=out["transition"], odu_ptr=out["duration"], oin_ptr=out["init"],
                ost_ptr=out["start"], oen_ptr=out["end"], **p.grads_kw,
                ENTRY=entry),
                num_warps=p.glue_warps, grid=m.B + 1, cache=p.compiled)
        g_cum = g.gcum.to(p.sig["cum_scores"][1]) if need["cum_scores"] else None
        return (None, None, out["scores"], g_cum, out["transition"], out["duration"], out["init"], out["start"],
                out["end"])


def _segment_scan(semiring, lengths, *tensors):
    base = tensors[0] if tensors[0] is not None else tensors[1]
    device = base.device
    p = _cached_plan(semiring, device, tuple(map(_signature, tensors)), (*launch.tuning(), _TILE))
    return _SegmentScan.apply(p, _lengths(lengths, device), *tensors)


_apply = _eager(_segment_scan)


def segment_scan_triton(semiring, pots):
    """Semiring value (S, B) of SegmentPotentials (``supports(semiring, pots)``), differentiable
    w.r.t. every tensor the potentials were built from."""
    return _apply(semiring, pots.lengths, pots.scores, pots.cum_scores, pots.transition, pots.duration,
                  pots.init, pots.start, pots.end)
