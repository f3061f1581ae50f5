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

import torch

from ...validation import compute_dtype
from . import launch
from .launch import Operands, _aligned, _bwd, _eager, _fwd, _launch, _lengths, _pow2
from .segment_glue import segment_grads_kernel, segment_prep_kernel

#: the user's tensors, in the order the autograd node takes them
_INPUTS = ("scores", "cum_scores", "transition", "duration", "init", "start", "end")
#: the gradients the glue kernel after the backward scan writes, in the user's shapes
_GLUE_GRADS = ("scores", "transition", "duration", "init", "start", "end")
#: elements of a glue kernel's largest tile (its registers): rows per block follow from it
_TILE = 4096


def supports(semiring, pots) -> bool:
    """Whether ``segment_scan_triton`` handles these potentials (else: the general path)."""
    return semiring.plus_vjp is not None and semiring.n_potentials == 1 and pots.center is None


def _round(n: int) -> int:
    """Workspace pieces in multiples of 16 bytes (Triton specialises on aligned pointers)."""
    return -(-n // 4) * 4


class _Plan:
    """What one call signature fixes: the scan's _Meta, the workspace's pieces, the glue kernels'
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
        # the workspace: transition, duration, τ(0), end, the entry's weights (absent when start is given);
        # flat pieces of one allocation (the kernels index their operands themselves)
        self.sizes = [_round(n) for n in (B * C * C, B * K * C, B * C, B * C)] + [B * C * C] * self.entry
        self.n_cum = B * (T + 1) * C if sig["scores"] is not None else 0
        CP, KP = m.CP, m.KP
        sc, tr, du = (_strides(sig[k], 3) for k in ("scores", "transition", "duration"))
        ini, st, en = (_strides(sig[k], 2) for k in ("init", "start", "end"))
        strides = dict(SC_B=sc[0], SC_T=sc[1], SC_C=sc[2], TR_B=tr[0], TR_R=tr[1], TR_C=tr[2], DU_B=du[0],
                       DU_K=du[1], DU_C=du[2], IN_B=ini[0], IN_C=ini[1], ST_B=st[0], ST_C=st[1], EN_B=en[0], EN_C=en[1])
        BT = max(1, min(_pow2(T), _TILE // CP))  # rows per block of the prefix sums and their gradient
        BB = max(1, min(_pow2(B), _TILE // (CP * max(CP, KP))))  # sequences per chunk of the batch sums
        self.prep_kw = dict(T=T, C=C, K=K, **strides, SR=m.sr, CP=CP, KP=KP, BT=BT)
        self.grads_kw = dict(B=B, T=T, C=C, K=K, CP=CP, KP=KP, BT=BT, BB=BB,
                             **{f"SH_{n}": self.shared[k] for n, k in (("TR", "transition"), ("DU", "duration"),
                                                                       ("IN", "init"), ("ST", "start"), ("EN", "end"))})
        self.glue_warps = 4
        self.compiled = {}  # the glue kernels' direct launches (launch._launch)


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
    def forward(ctx, p, save, lengths, scores, cum_scores, transition, duration, init, start, end):
        m = p.m  # save: a backward will come (launch._wants_grad: needs_input_grad ignores no_grad)
        tape, grads = None, None
        if save and m.store_all:  # the workspace, prefix sums and the backward scan's gradients
            n_ws, cum64 = len(p.sizes), [p.n_cum] if p.n_cum else []  # join the (kept) tape's allocations
            tape, pieces, pieces64 = launch.tape_with(m, m.r_tape, p.sizes + p.sizes[:4], cum64 * 2)
            ws, cum = pieces[:n_ws], pieces64[:1]
            # gcum of a given cum_scores is returned as its gradient: a fresh one per backward
            grads = launch.Grads(pieces64[1] if p.n_cum else None, *pieces[n_ws:])
        else:
            ws = torch.empty(sum(p.sizes), dtype=m.dtype, device=m.device).split_with_sizes(p.sizes)
            cum = [torch.empty(p.n_cum, dtype=torch.float64, device=m.device)] if p.n_cum else []
        # a float64 contiguous cum_scores is the operand itself (saved: version-checked)
        cum = cum[0] if p.n_cum else cum_scores.to(torch.float64).contiguous()
        trans, dur, tau0, end_b, *entw = ws
        _launch(segment_prep_kernel, m, _aligned(scores, transition, duration, init, start, end), dict(
            sc_ptr=scores, tr_ptr=transition, du_ptr=duration, in_ptr=init, st_ptr=start, en_ptr=end,
            cum_ptr=cum if p.n_cum else None, trans_ptr=trans, dur_ptr=dur, tau0_ptr=tau0, end_ptr=end_b,
            entw_ptr=entw[0] if entw else None, **p.prep_kw), num_warps=p.glue_warps, cache=p.compiled)
        ops = Operands(cum=cum, trans=trans, dur=dur, tau0=tau0, end=end_b, lengths=lengths)
        value, (ck, tape) = _fwd(m, ops, save, tape=tape)
        ctx.p, ctx.full = p, tape is not None
        ctx.save_for_backward(entw[0] if entw else None, *ops, *ck, *(tape or ()), *(grads or ()))
        return value

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_value):
        p, m = ctx.p, ctx.p.m
        entw, *xs = ctx.saved_tensors
        n, c, t = len(Operands._fields), len(launch.Checkpoints._fields), len(launch.Tape._fields)
        ops = Operands(*xs[:n])
        saved = (launch.Checkpoints(*xs[n:n + c]), launch.Tape(*xs[n + c:n + c + t]) if ctx.full else None)
        grads = launch.Grads(*xs[n + c + t:]) if ctx.full else None
        if grads is not None and grads.gcum is None:
            grads = grads._replace(gcum=torch.empty_like(ops.cum))
        g = _bwd(m, grad_value, ops, saved, grads)
        need = dict(zip(_INPUTS, ctx.needs_input_grad[3:]))
        if not p.entry:
            need["init"] = False  # a given start replaces the entry: init plays no part
        out = {k: torch.empty(p.sig[k][0], dtype=p.sig[k][1], device=m.device) if need[k] else None
               for k in _GLUE_GRADS}
        wanted = tuple(need[k] for k in _GLUE_GRADS)
        if any(wanted):
            entw = entw if need["transition"] or need["init"] else None
            _launch(segment_grads_kernel, m, (*wanted, entw is not None), dict(
                gcum_ptr=g.gcum, gtr_ptr=g.gtr, gdur_ptr=g.gdur, gtau0_ptr=g.gtau0, gend_ptr=g.gend, entw_ptr=entw,
                osc_ptr=out["scores"], otr_ptr=out["transition"], odu_ptr=out["duration"], oin_ptr=out["init"],
                ost_ptr=out["start"], oen_ptr=out["end"], **p.grads_kw),
                num_warps=p.glue_warps, grid=m.B + 1, cache=p.compiled)
        g_cum = g.gcum.to(p.sig["cum_scores"][1]) if need["cum_scores"] else None
        return (None, None, None, out["scores"], g_cum, out["transition"], out["duration"], out["init"], out["start"],
                out["end"])


def _segment_scan(semiring, lengths, *tensors):
    base = tensors[0] if tensors[0] is not None else tensors[1]
    device = base.device
    p = _cached_plan(semiring, device, tuple(map(_signature, tensors)), (*launch.tuning(), _TILE))
    return _SegmentScan.apply(p, launch._wants_grad(*tensors), _lengths(lengths, device), *tensors)


_apply = _eager(_segment_scan)


def segment_scan_triton(semiring, pots):
    """Semiring value (S, B) of SegmentPotentials (``supports(semiring, pots)``), differentiable
    w.r.t. every tensor the potentials were built from."""
    return _apply(semiring, pots.lengths, pots.scores, pots.cum_scores, pots.transition, pots.duration,
                  pots.init, pots.start, pots.end)
