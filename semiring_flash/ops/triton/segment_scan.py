"""The Triton scan of SegmentPotentials as one autograd node (the small-batch path).

``factored_scan_triton`` takes engine inputs (float64 prefix sums, per-batch
transition/duration, the entry value τ(0)) that the dispatch builds with
ordinary autograd ops: about 60 small ops and five autograd nodes per
training step, each a few microseconds of host time, which is the whole cost
of a small batch on a GPU (its kernels take a fraction of it). Here the same
preparation and its vector-Jacobian product are written out by hand inside
one ``autograd.Function``: the user's tensors go in, the value comes out, and
the backward returns the gradients in the user's shapes (a shared transition's
gradient summed over the batch, the scores' gradient as the reverse cumulative
sum of the prefix sums'). Same kernels, same numbers as the general path.

It covers the semirings with a closed-form ⊕ gradient (log, max) and
SegmentPotentials without centring; everything else takes the general path.
"""

from __future__ import annotations

import torch

from ...validation import compute_dtype
from .launch import Operands, _bwd, _eager, _fwd, _lengths, _meta, _save, _saved


def supports(semiring, pots) -> bool:
    """Whether ``segment_scan_triton`` handles these potentials (else: the general path)."""
    return semiring.plus_vjp is not None and semiring.n_potentials == 1 and pots.center is None


def _batched(x, B, dims, dtype):
    """(B, ...) contiguous in the compute dtype from a shared (``dims``-D) or per-batch tensor."""
    x = x.detach().to(dtype)
    return (x if x.dim() > dims else x.expand(B, *x.shape)).contiguous()


def _entry_weights(semiring, entry):
    """∂τ(0, c)/∂entry[c', c]: the semiring's closed-form ⊕ gradient over c'. For log, torch.softmax
    in one kernel (not ``softmax_weights``' seven: no second derivative is taken here, so its NaN on
    an all −inf column, a label no sequence can start with, is simply mapped to 0)."""
    if semiring.plus_vjp == "softmax":
        return torch.softmax(entry, -2).nan_to_num_(nan=0.0)
    return semiring.plus_grad(entry, -2)


class _SegmentScan(torch.autograd.Function):
    """value (S, B) of SegmentPotentials; inputs: the user's tensors (None where not given)."""

    @staticmethod
    def forward(ctx, semiring, m, lengths, scores, cum_scores, transition, duration, init, start, end):
        B, C, dt = m.B, m.C, m.dtype
        if scores is not None:
            cum = torch.zeros(B, m.T + 1, C, dtype=torch.float64, device=m.device)  # one op (a zero row: three)
            torch.cumsum(scores.detach(), 1, dtype=torch.float64, out=cum[:, 1:])
        else:
            cum = cum_scores.detach().to(torch.float64).contiguous()
        trans, dur = _batched(transition, B, 2, dt), _batched(duration, B, 2, dt)
        end_b = torch.zeros(B, C, dtype=dt, device=m.device) if end is None else _batched(end, B, 1, dt)
        # the entry τ(0, c) = ⊕_{c'} init[c'] ⊗ transition[c', c], or start[c] (c' fixed)
        if start is not None:
            entry = None
            tau0 = _batched(start, B, 1, dt)
        else:
            entry = trans if init is None else trans + _batched(init, B, 1, dt).unsqueeze(-1)
            tau0 = semiring.sum(entry, -2)
        ops = Operands(cum=cum, trans=trans, dur=dur, tau0=tau0.unsqueeze(0), end=end_b, lengths=lengths)
        value, saved = _fwd(m, ops, any(ctx.needs_input_grad))
        _save(ctx, m, ops, saved)
        ctx.semiring, ctx.entry = semiring, entry
        ctx.shapes = [None if x is None else (x.shape, x.dtype) for x in
                      (scores, cum_scores, transition, duration, init, start, end)]
        return value

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_value):
        ops, saved = _saved(ctx)
        g = _bwd(ctx.m, grad_value, ops, saved)
        need = ctx.needs_input_grad[3:]
        s_scores, s_cum, s_trans, s_dur, s_init, s_start, s_end = ctx.shapes

        def fit(grad, shape_dtype):  # a shared (...) input gets the batch sum of its per-batch gradient
            shape, dtype = shape_dtype
            return (grad if grad.dim() == len(shape) else grad.sum(0)).to(dtype)

        out = [None] * 7
        if need[0]:  # ∂/∂scores[j] = Σ_{t > j} ∂/∂S[t], summed in float64 before rounding
            out[0] = g.gcum[:, 1:].flip(1).cumsum(1).flip(1).to(s_scores[1])
        if need[1]:
            out[1] = g.gcum.to(s_cum[1])
        gtau0 = g.gtau0[0]  # (B, C)
        g_trans = g.gtr
        if ctx.entry is not None and (need[2] or need[4]):
            g_entry = _entry_weights(ctx.semiring, ctx.entry) * gtau0.unsqueeze(-2)  # (B, C', C)
            g_trans = g_trans + g_entry
            if need[4]:
                out[4] = fit(g_entry.sum(-1), s_init)
        if need[2]:
            out[2] = fit(g_trans, s_trans)
        if need[3]:
            out[3] = fit(g.gdur, s_dur)
        if need[5]:
            out[5] = fit(gtau0, s_start)
        if need[6]:
            out[6] = fit(g.gend, s_end)
        return (None, None, None, *out)


_apply = _eager(_SegmentScan.apply)


def segment_scan_triton(semiring, pots):
    """Semiring value (S, B) of SegmentPotentials (``supports(semiring, pots)``), differentiable
    w.r.t. every tensor the potentials were built from."""
    B, T, K, C = pots.shape
    base = pots.scores if pots.scores is not None else pots.cum_scores
    m = _meta(semiring, B, T, K, C, compute_dtype(base.dtype), pots.device, False, False, None)
    return _apply(semiring, m, _lengths(pots.lengths, pots.device), pots.scores, pots.cum_scores,
                  pots.transition, pots.duration, pots.init, pots.start, pots.end)
