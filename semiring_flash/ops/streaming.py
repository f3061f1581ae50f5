"""Checkpointed streaming semi-CRF engine in PyTorch, for any semiring.

Forward keeps a ring of the last K states, (S, B, K, C), and stores it (with
the float64 running normaliser) every Δ steps (``default_checkpoint_every``).
Backward walks the blocks in reverse: it recomputes one block's steps under
autograd, starting from its checkpoint, and back-propagates the adjoint of the
ring carried over from the block after it. Gradients are therefore exactly
autograd's through the dense DP, while memory is O((T/Δ)·K·C + Δ·K·C)
instead of O(T·K·C).

Second derivatives (differentiable marginals, ``backward(create_graph=True)``)
take another route through the same step code: one block, no checkpoints,
autograd recording every step (``create_graph`` / ``_recorded_value``), so
the gradient is itself differentiable; memory O(T·K·C) (edges: O(T·K·C²)).

Two input kinds share the machinery (``_Recurrence`` subclasses):

* factored: ring = τ(t-K..t-1); α(t) = ⊕_d τ(t-d) ⊗ w(t, d) where
  w = S[t]-S[t-d] (float64 difference, then rounded) ⊗ duration[d-1];
  τ(t) = α(t) ⊗ transition. Cost O(K·C + C²) per step.
* edges (torch-struct layout): ring = α(t-K..t-1);
  α(t) = ⊕_{d,c'} α(t-d, c') ⊗ edge[t-d, d, :, c']. Cost O(K·C²) per step.

Ring slot j holds position t-K+j, i.e. duration d = K-j.

These functions are also the reference the Triton kernels are tested against.
Potentials carry no leading P dim for one-distribution semirings and a
leading P = 2 dim for the cross-entropy/KL semirings.
"""

from __future__ import annotations

import math

import torch

from ..semirings import Semiring
from ..validation import checkpoint_interval, compute_dtype

__all__ = ["factored_scan", "edge_scan", "default_checkpoint_every"]


def default_checkpoint_every(T: int, K: int) -> int:
    """Steps between checkpoints: Δ ≈ √(T·K) (docs/index.md, "The recurrence").

    Checkpoints then cost (T/Δ)·K·C = √(T·K)·C. The block being recomputed
    under autograd keeps a few K·C-sized intermediates per step (Δ·K·C); the
    Triton kernels, which store only C-sized states, stay at O(√(T·K)·C).
    """
    return max(1, min(T, int(math.ceil(math.sqrt(T * K)))))


def _pad_window(x: torch.Tensor, dim: int, lo: int, hi: int, fill: float) -> torch.Tensor:
    """x[lo:hi] along dim, padding with ``fill`` where lo < 0 or hi > size."""
    a, b = max(lo, 0), min(hi, x.shape[dim])
    core = x.narrow(dim, a, max(b - a, 0))
    if a == lo and b == hi:
        return core

    def pad(n):
        return x.new_full((*x.shape[:dim], n, *x.shape[dim + 1:]), fill)

    return torch.cat([pad(a - lo), core, pad(hi - b)], dim)


class _Recurrence:
    """What one block of steps (t0, t1] reads, and how it runs.

    ``inputs`` are the differentiable tensors handed to the autograd Function.
    Subclasses define ``window(i, t0, t1)``, the [lo, hi) time range of input i
    a block reads (None: the whole tensor; blocks get those slices, clipped to
    the tensor, and pad them themselves, so backward can make the slices
    leaves), ``prologue(views)``, the ring at t = 0, and ``steps``, the block.
    """

    time_dims: tuple  # per input: the dim indexing time, or None

    def __init__(self, semiring: Semiring, lengths: torch.Tensor, K: int, C: int, B: int, dtype, shapes: list):
        self.sr = semiring
        self.lengths = lengths
        self.K, self.C, self.B, self.dtype = K, C, B, dtype
        self.inputs_shapes = shapes
        self.t_max = int(lengths.max())
        self.record_set = set(int(v) for v in lengths.tolist())

    def clip(self, i, t0, t1):
        w = self.window(i, t0, t1)
        if w is None:
            return None
        size = self.inputs_shapes[i][self.time_dims[i]]
        return max(w[0], 0), min(w[1], size)

    def views(self, inputs, t0, t1):
        out = []
        for i, x in enumerate(inputs):
            c = self.clip(i, t0, t1)
            out.append(x if c is None else x.narrow(self.time_dims[i], c[0], c[1] - c[0]))
        return out

    def push(self, ring, new, shifts):
        """Append the newest state, drop the oldest, renormalise (in place of the ring)."""
        s = self.sr.shift(new)  # (S, B), detached
        ring = torch.cat([ring[:, :, 1:], new.unsqueeze(2)], 2)
        shifts.append(s)
        return ring - s.to(ring.dtype).view(*s.shape, 1, 1)


class _FactoredRecurrence(_Recurrence):
    # inputs: cum (P,B,T+1,C) f64, trans (P,B,C,C), dur (P,B,K,C), tau0 (S,B,C), end (P,B,C),
    #         [start_bias (P,B,T,C)], [seg_bias (P,B,T,K,C)]
    def __init__(self, semiring, lengths, K, C, B, dtype, has_start_bias, has_seg_bias, shapes):
        super().__init__(semiring, lengths, K, C, B, dtype, shapes)
        self.has_start_bias, self.has_seg_bias = has_start_bias, has_seg_bias
        self.T = shapes[0][2] - 1
        self.time_dims = (2, None, None, None, None) + ((2,) if has_start_bias else ()) + ((2,) if has_seg_bias else ())

    def window(self, i, t0, t1):
        K = self.K
        if i == 0:
            return (t0 + 1 - K, t1 + 1)
        if i == 5 and self.has_start_bias:
            return (0 if t0 == 0 else t0 + 1, t1 + 1)
        if i >= 5:
            return (t0 + 1 - K, t1)
        return None

    def _start_bias(self, views):
        return views[5] if self.has_start_bias else None

    def prologue(self, views):
        sr, K = self.sr, self.K
        tau0 = views[3]
        sb = self._start_bias(views)
        if sb is not None:
            tau0 = sr.mul_potential(tau0, sb[:, :, 0])
        ring = sr.zeros((self.B, K - 1, self.C), self.dtype, tau0.device)
        return torch.cat([ring, tau0.unsqueeze(2)], 2)

    def block_inputs(self, views, t0, t1):
        """Per-step potentials of steps t0+1..t1, computed vectorised for the block.

        Returns (w, sb): w[i] (P,B,K,C) is slot j's segment + duration (+ bias)
        score at step t0+1+i; sb[i] (P,B,C) the start bias of τ(t0+1+i) or None.
        """
        K = self.K
        cum, dur = views[0], views[2]
        nb = t1 - t0
        lo, _ = self.clip(0, t0, t1)
        cw = _pad_window(cum, 2, (t0 + 1 - K) - lo, (t1 + 1) - lo, 0.0)  # (P,B,nb+K,C)
        seg = cw[:, :, K:].unsqueeze(-1) - cw.unfold(2, K, 1)[:, :, :nb]  # (P,B,nb,C,K) float64
        w = seg.to(self.dtype).transpose(-1, -2) + dur.flip(2).unsqueeze(2)  # (P,B,nb,K,C)
        if self.has_seg_bias:
            sgb = views[-1]
            lo_s, _ = self.clip(len(views) - 1, t0, t1)
            sgb = _pad_window(sgb, 2, (t0 + 1 - K) - lo_s, t1 - lo_s, 0.0)  # (P,B,nb+K-1,K,C) by start
            # step i, slot j: start n = t-K+j -> row i+j, duration K-j -> column K-1-j
            ii = torch.arange(nb, device=w.device).view(nb, 1)
            jj = torch.arange(K, device=w.device).view(1, K)
            w = w + sgb[:, :, ii + jj, K - 1 - jj]
        sb = self._start_bias(views)
        if sb is not None:
            lo_b, _ = self.clip(5, t0, t1)
            sb = _pad_window(sb, 2, (t0 + 1) - lo_b, (t1 + 1) - lo_b, 0.0)  # (P,B,nb,C)
        return w, sb

    def steps(self, ring, views, t0, t1, records, shifts, trace=None, inputs=None):
        sr = self.sr
        trans, end = views[1], views[4]
        w, sb = inputs if inputs is not None else self.block_inputs(views, t0, t1)
        # unbind once: indexing w[:, :, i] per step would make autograd zero-fill
        # a whole-block gradient at every step (quadratic in the block length)
        w = w.unbind(2)
        sb = sb.unbind(2) if sb is not None else None
        for i in range(t1 - t0):
            t = t0 + 1 + i
            alpha = sr.sum(sr.mul_potential(ring, w[i]), -2)  # (S,B,C)
            if t in self.record_set:
                records[t] = sr.sum(sr.mul_potential(alpha, end), -1)
            if trace is not None:
                trace.append((ring, alpha))
            if t == t1 and t == self.t_max:
                break  # nothing after the last length needs τ
            tau = sr.matmul_potential(alpha, trans)
            if sb is not None:
                tau = sr.mul_potential(tau, sb[i])
            ring = self.push(ring, tau, shifts)
        return ring

    # -- hand-written reverse sweep (Log and Max, one distribution) ------------------
    def has_fast_backward(self):
        return self.sr.plus_vjp is not None and self.sr.n_potentials == 1 and not self.has_seg_bias

    def fast_backward(self, ring_in, views, t0, t1, adj_ring, grad_value):
        """Adjoints of (w, sb, trans, end, ring_in) for one block, without autograd.

        Recomputes the block's states (rings and α), then sweeps t = t1..t0+1:
        G is the adjoint of the ring after step t; τ(t) sits in its last slot.
        ⊕'s local gradients (the semiring's ``plus_grad``) and the adjoints are
        float64: the recursion multiplies one weight set per position, so a
        weight sum off 1 by ε compounds to T·ε at position 0 (float32 gradients
        of uncentred scores drifted by 2e-4 at T = 2·10^4). The ring's adjoint
        is returned in float64 too, to carry full precision across blocks.
        """
        K, plus_grad = self.K, self.sr.plus_grad
        acc = torch.float64
        trans, end = views[1][0].detach(), views[4][0].detach()
        with torch.no_grad():
            detached = [v.detach() for v in views]
            w, sb = self.block_inputs(detached, t0, t1)
            trace = []
            self.steps(ring_in.detach(), detached, t0, t1, {}, [], trace, inputs=(w, sb))
        w = w[0]  # (B,nb,K,C)
        B, C = self.B, self.C
        G = adj_ring[0].to(acc) if adj_ring is not None else torch.zeros(B, K, self.C, dtype=acc, device=w.device)
        gw = torch.zeros_like(w)
        gsb = torch.zeros(B, t1 - t0, C, dtype=self.dtype, device=w.device) if sb is not None else None
        g_trans = torch.zeros(trans.shape, dtype=acc, device=w.device)
        g_end = torch.zeros(end.shape, dtype=acc, device=w.device)
        gv = grad_value[0].to(acc)
        for i in range(len(trace) - 1, -1, -1):
            t = t0 + 1 + i
            ring, alpha = trace[i]
            ring, alpha = ring[0], alpha[0]  # (B,K,C), (B,C)
            g_alpha = torch.zeros(alpha.shape, dtype=acc, device=w.device)
            if not (t == t1 and t == self.t_max):
                g_tau = G[:, K - 1]
                if gsb is not None:
                    gsb[:, i] = g_tau
                # the same x as the forward computed (bitwise): the weights are its exact softmax
                P = plus_grad(alpha.unsqueeze(-1) + trans, 1, acc) * g_tau.unsqueeze(1)  # (B,C',C)
                g_trans += P
                g_alpha += P.sum(-1)
                G = torch.cat([torch.zeros_like(G[:, :1]), G[:, : K - 1]], 1)
            if t in self.record_set:
                sel = (self.lengths == t).to(acc) * gv
                Q = plus_grad(alpha + end, 1, acc) * sel.unsqueeze(1)
                g_end += Q
                g_alpha += Q
            q = plus_grad(ring + w[:, i], 1, acc) * g_alpha.unsqueeze(1)  # (B,K,C)
            gw[:, i] = q
            G = G + q
        dt = self.dtype
        return (gw.unsqueeze(0), (gsb.unsqueeze(0) if gsb is not None else None), g_trans.to(dt).unsqueeze(0),
                g_end.to(dt).unsqueeze(0), G.unsqueeze(0))


class _EdgeRecurrence(_Recurrence):
    # inputs: edges (P, B, T, K+1, C, C)
    time_dims = (2,)

    def window(self, i, t0, t1):
        return (t0 + 1 - self.K, t1)

    def prologue(self, views):
        ring = self.sr.zeros((self.B, self.K - 1, self.C), self.dtype, views[0].device)
        one = self.sr.ones((self.B, 1, self.C), self.dtype, views[0].device)
        return torch.cat([ring, one], 2)

    def steps(self, ring, views, t0, t1, records, shifts):
        sr, K = self.sr, self.K
        edges = views[0]
        lo, _ = self.clip(0, t0, t1)
        nb = t1 - t0
        dev = edges.device
        t = torch.arange(t0 + 1, t1 + 1, device=dev).view(nb, 1)
        j = torch.arange(K, device=dev).view(1, K)
        n = t - K + j  # segment start for slot j
        valid = n >= 0
        e = edges[:, :, (n - lo).clamp(min=0), (K - j).expand(nb, K)]  # (P,B,nb,K,C,C')
        e = torch.where(valid.view(1, 1, nb, K, 1, 1), e, torch.full((), float("-inf"), dtype=e.dtype, device=dev))
        e = e.unbind(2)  # see _FactoredRecurrence.steps
        for i in range(nb):
            tt = t0 + 1 + i
            x = sr.mul_potential(ring.unsqueeze(-2), e[i])  # (S,B,K,C,C')
            alpha = sr.sum_dims(x, (2, 4))  # (S,B,C)
            if tt in self.record_set:
                records[tt] = sr.sum(alpha, -1)
            ring = self.push(ring, alpha, shifts)
        return ring


def _scan_forward(rec: _Recurrence, every: int, inputs) -> tuple:
    """Run the recurrence block by block: (value (S, B) float64, blocks, checkpoints).

    Inside ``_StreamingScan.forward`` autograd records nothing; called directly
    (``create_graph``) autograd records every step.
    """
    B = rec.B
    S = rec.sr.size()
    dev = inputs[0].device
    norm = torch.zeros(S, B, dtype=torch.float64, device=dev)
    blocks = [(t0, min(t0 + every, rec.t_max)) for t0 in range(0, rec.t_max, every)]
    checkpoints = []
    value = torch.zeros(S, B, dtype=torch.float64, device=dev)
    ring = rec.prologue(rec.views(inputs, 0, blocks[0][1]))
    for t0, t1 in blocks:
        checkpoints.append(ring if t0 > 0 else None)
        records, shifts = {}, []
        ring = rec.steps(ring, rec.views(inputs, t0, t1), t0, t1, records, shifts)
        # norm after step t = norm at t0 + shifts of steps up to t
        running = norm
        step_norm = {}
        for i, s in enumerate(shifts):
            running = running + s.double()
            step_norm[t0 + 1 + i] = running
        for t, v in records.items():
            # the record at step t is taken before that step's shift
            base = step_norm.get(t - 1, norm)
            sel = (rec.lengths == t).view(1, B)
            value = torch.where(sel, v.double() + base, value)
        norm = running
    return value, blocks, checkpoints


def _recorded_value(rec: _Recurrence, inputs) -> torch.Tensor:
    """The value with autograd recording every step (one block, no checkpoints):
    its gradient is itself differentiable, at O(T·K·C) memory for the graph."""
    return _scan_forward(rec, rec.t_max, inputs)[0].to(rec.dtype)


class _StreamingScan(torch.autograd.Function):
    """value (S, B) of a recurrence; backward by block-wise recomputation."""

    @staticmethod
    def forward(ctx, rec: _Recurrence, every: int, *inputs):
        value, blocks, checkpoints = _scan_forward(rec, every, inputs)
        ctx.rec, ctx.every, ctx.blocks, ctx.checkpoints = rec, every, blocks, checkpoints
        ctx.save_for_backward(*inputs)
        return value.to(rec.dtype)

    @staticmethod
    def backward(ctx, grad_value):
        rec, blocks, checkpoints = ctx.rec, ctx.blocks, ctx.checkpoints
        inputs = ctx.saved_tensors
        if torch.is_grad_enabled():  # create_graph=True: a gradient that is itself differentiable
            value = _recorded_value(rec, inputs)
            wrt = [x for x, n in zip(inputs, ctx.needs_input_grad[2:]) if n]
            gs = iter(torch.autograd.grad(value, wrt, grad_value, create_graph=True, allow_unused=True))
            return (None, None, *(next(gs) if n else None for n in ctx.needs_input_grad[2:]))
        return _StreamingScan._blockwise_backward(ctx, grad_value, rec, blocks, checkpoints, inputs)

    @staticmethod
    def _blockwise_backward(ctx, grad_value, rec, blocks, checkpoints, inputs):
        need = ctx.needs_input_grad[2:]
        grads = [torch.zeros_like(x) if n else None for x, n in zip(inputs, need)]
        adj_ring = None
        fast = getattr(rec, "has_fast_backward", lambda: False)()
        for (t0, t1), ck in zip(reversed(blocks), reversed(checkpoints)):
            views = rec.views(inputs, t0, t1)
            with torch.enable_grad():
                leaves = [v.detach().requires_grad_(n) for v, n in zip(views, need)]
                ring_in = ck.detach().requires_grad_() if ck is not None else rec.prologue(leaves)
                wrt = [l for l, n in zip(leaves, need) if n]
                if ck is not None:
                    wrt.append(ring_in)
                if fast:
                    gw, gsb, g_trans, g_end, g_ring = rec.fast_backward(ring_in, leaves, t0, t1, adj_ring, grad_value)
                    w, sb = rec.block_inputs(leaves, t0, t1)
                    outs, gouts = [w, leaves[1], leaves[4]], [gw, g_trans, g_end]
                    if sb is not None:
                        outs.append(sb)
                        gouts.append(gsb)
                    if ck is None:  # the ring at t = 0 is built from tau0 (and the start bias)
                        outs.append(ring_in)
                        gouts.append(g_ring.to(ring_in.dtype))
                    outs_needing = [(o, g) for o, g in zip(outs, gouts) if o.requires_grad]
                    params = [x for x in wrt if x is not ring_in]
                    gs = list(torch.autograd.grad([o for o, _ in outs_needing], params, [g for _, g in outs_needing],
                                                  allow_unused=True)) if outs_needing and params else []
                    if ck is not None:
                        gs.append(g_ring)
                else:
                    records = {}
                    ring_out = rec.steps(ring_in, leaves, t0, t1, records, [])
                    outs, gouts = [], []
                    if adj_ring is not None:
                        outs.append(ring_out)
                        gouts.append(adj_ring)
                    for t, v in records.items():
                        sel = (rec.lengths == t).view(1, -1).to(grad_value.dtype)
                        outs.append(v)
                        gouts.append((grad_value * sel).to(v.dtype))
                    gs = torch.autograd.grad(outs, wrt, gouts, allow_unused=True) if wrt else []
            gs = list(gs)
            if ck is not None:
                adj_ring = gs.pop()
                if adj_ring is None:
                    adj_ring = torch.zeros_like(ring_in)
            for i, g in zip([i for i, n in enumerate(need) if n], gs):
                if g is None:
                    continue
                c = rec.clip(i, t0, t1)
                if c is None:
                    grads[i] += g
                else:
                    grads[i].narrow(rec.time_dims[i], c[0], c[1] - c[0]).add_(g)
        return (None, None, *grads)


def _run(rec: _Recurrence, every: int, inputs: list, create_graph: bool) -> torch.Tensor:
    return _recorded_value(rec, inputs) if create_graph else _StreamingScan.apply(rec, every, *inputs)


def _with_p(semiring: Semiring, x: torch.Tensor | None) -> torch.Tensor | None:
    if x is None:
        return None
    return x.unsqueeze(0) if semiring.n_potentials == 1 else x


def factored_scan(
    semiring: Semiring,
    cum: torch.Tensor,
    transition: torch.Tensor,
    duration: torch.Tensor,
    tau0: torch.Tensor,
    end: torch.Tensor,
    lengths: torch.Tensor,
    start_bias: torch.Tensor | None = None,
    seg_bias: torch.Tensor | None = None,
    checkpoint_every: int | None = None,
    create_graph: bool = False,
) -> torch.Tensor:
    """Semiring value (S, B) of the factored recurrence (see module docstring).

    cum (B, T+1, C) float64; transition (B, C, C); duration (B, K, C);
    tau0 (S, B, C) the entry value τ(0); end (B, C); lengths (B,) tokens;
    start_bias (B, T, C) ⊗-ed into τ(t); seg_bias (B, T, K, C) ⊗-ed into the
    segment starting at t with duration d (index d-1). One-distribution
    semirings take these without a P dim; two-distribution ones with P = 2.
    ``create_graph``: no checkpointed autograd Function; autograd records the
    steps, so gradients of the value can be differentiated again (O(T·K·C) memory).
    """
    cum, transition, duration, end, start_bias, seg_bias = (
        _with_p(semiring, x) for x in (cum, transition, duration, end, start_bias, seg_bias))
    P, B, T1, C = cum.shape
    K = duration.shape[-2]
    inputs = [x for x in (cum, transition, duration, tau0, end, start_bias, seg_bias) if x is not None]
    rec = _FactoredRecurrence(
        semiring, lengths, K, C, B, tau0.dtype, start_bias is not None, seg_bias is not None,
        [x.shape for x in inputs],
    )
    every = checkpoint_interval(checkpoint_every) or default_checkpoint_every(rec.t_max, K)
    return semiring.settle_impossible(_run(rec, every, inputs, create_graph))


def edge_scan(
    semiring: Semiring,
    edges: torch.Tensor,
    lengths: torch.Tensor,
    checkpoint_every: int | None = None,
    create_graph: bool = False,
) -> torch.Tensor:
    """Semiring value (S, B) over torch-struct edges (B, T, K+1, C, C); lengths in tokens.

    ``create_graph`` as in :func:`factored_scan`.
    """
    edges = _with_p(semiring, edges).to(compute_dtype(edges.dtype))  # half precision: computed in float32
    P, B, T, K1, C, _ = edges.shape
    K = K1 - 1
    rec = _EdgeRecurrence(semiring, lengths, K, C, B, edges.dtype, [edges.shape])
    every = checkpoint_interval(checkpoint_every) or default_checkpoint_every(rec.t_max, K)
    return semiring.settle_impossible(_run(rec, every, [edges], create_graph))
