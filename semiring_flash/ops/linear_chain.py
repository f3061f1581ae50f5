"""K = 1 fast path: with one-token segments the semi-CRF is a linear-chain CRF.

At max duration 1 the factored recurrence (docs/index.md) collapses to

    α(1, c) = τ(0, c) ⊗ w(0, c)
    α(t, c) = [⊕_{c'} α(t-1, c') ⊗ transition[c', c]] ⊗ w(t-1, c)
    Z       = ⊕_c α(L_b, c) ⊗ end[c]

with w(t, c) = S[t+1, c] − S[t, c] + duration[0, c] (+ start_bias[t, c]): one
⊕ over c' per token and no ring, checkpoints or duration loop, with exact
gradients by plain autograd. The Log semiring runs the scaled forward algorithm
in probability space (one small matmul per token, O(T·C) saved memory) and
falls back to a −inf-safe log-space loop where that could underflow; the Max
semiring runs the log-space loop. ``viterbi`` adds backpointers for a decode
without the max-semiring gradient.

These functions take the streaming engine's arguments (``factored_scan``),
so ``ops/dispatch.py`` can route K = 1 calls here for the Log and Max
semirings; the streaming engine stays the reference they are tested against.
"""

from __future__ import annotations

import torch

from ..semirings import Semiring, _finite_or_zero as _finite

__all__ = ["supports", "linear_chain_scan", "viterbi"]

# log-space loop: fp32 states are re-centred this often (the offsets accumulate in float64),
# so they stay O(RENORM_EVERY · |score|) at any T; shift-equivariance keeps it exact.
RENORM_EVERY = 16
# the scaled forward needs the finite entries of each transition column to span at most
# this (fp32 exp underflows near −87)
MAX_SPREAD = 50.0


def supports(semiring: Semiring, duration: torch.Tensor) -> bool:
    """Whether the linear-chain path computes this call: K = 1, Log or Max semiring."""
    return duration.shape[-2] == 1 and semiring.plus_vjp is not None


def _emissions(cum, duration, start_bias, dtype):
    """(B, T, C) per-token weights w(t, c): the float64 prefix-sum difference, then rounded."""
    w = cum.diff(dim=1).to(dtype) + duration[:, :1]
    return w if start_bias is None else w + start_bias


def _active(lengths: torch.Tensor, t_max: int):
    """Per step t, a (B, 1) mask of the sequences still running (None when all have length t_max)."""
    if int(lengths.min()) == t_max:
        return None
    return (torch.arange(t_max, device=lengths.device).unsqueeze(1) < lengths).unsqueeze(-1).unbind(0)


def linear_chain_scan(
    semiring: Semiring,
    cum: torch.Tensor,
    transition: torch.Tensor,
    duration: torch.Tensor,
    tau0: torch.Tensor,
    end: torch.Tensor,
    lengths: torch.Tensor,
    start_bias: torch.Tensor | None = None,
) -> torch.Tensor:
    """Semiring value (1, B) of a K = 1 factored model; arguments as ``streaming.factored_scan``.

    cum (B, T+1, C) float64; transition (B, C, C) [c', c]; duration (B, 1, C);
    tau0 (1, B, C); end (B, C); lengths (B,) tokens; start_bias (B, T, C) or None.
    """
    if not supports(semiring, duration):
        raise ValueError(f"the linear-chain path needs K = 1 and the Log or Max semiring, got K={duration.shape[-2]}, {semiring!r}")
    w = _emissions(cum, duration, start_bias, tau0.dtype)
    t_max = int(lengths.max())
    if semiring.plus_vjp == "softmax" and _scaled_ok(transition):
        value = _log_scan_scaled(tau0[0], w[:, :t_max], transition, end, lengths, ragged=int(lengths.min()) < t_max)
        if value is not None:
            return semiring.settle_impossible(value.unsqueeze(0))
    alpha, offset = _scan(semiring, tau0[0] + w[:, 0], w[:, :t_max], transition, _active(lengths, t_max))
    value = semiring.sum(alpha + end, -1)
    # as every engine: −inf values (impossible sequences) are constants, so no gradient reaches a forbidden path
    return semiring.settle_impossible((value + offset.to(value.dtype)).unsqueeze(0))


def _scan(semiring, alpha, w, transition, active):
    """α over the tokens with the semiring's own (−inf-safe) ⊕ over the (B, C, C) broadcast.

    fp32 states are re-centred every RENORM_EVERY steps; (α, float64 offset) is returned.
    """
    ws = w.unbind(1)  # one backward for all slices (indexing w[:, t] costs a (B, T, C) zero-fill each)
    offset = torch.zeros(alpha.shape[0], dtype=torch.float64, device=alpha.device)
    for t in range(1, len(ws)):
        if t % RENORM_EVERY == 0:
            m = _finite(alpha.detach().amax(-1))
            alpha = alpha - m.unsqueeze(-1)
            offset = offset + m.to(torch.float64)
        step = semiring.sum(alpha.unsqueeze(-1) + transition, -2) + ws[t]
        alpha = step if active is None else torch.where(active[t], step, alpha)
    return alpha, offset


def _scaled_ok(transition: torch.Tensor) -> bool:
    """Whether the finite entries of every transition column span ≤ MAX_SPREAD (−inf entries are exact
    zeros in probability space)."""
    tr = transition.detach()
    finite = torch.isfinite(tr)
    hi = torch.where(finite, tr, float("-inf")).amax(-2)
    lo = torch.where(finite, tr, float("inf")).amin(-2)
    return float(torch.where(finite.any(-2), hi - lo, 0.0).max()) <= MAX_SPREAD


def _log_scan_scaled(entry, w, transition, end, lengths, ragged: bool):
    """log Z (B,) by the scaled forward algorithm, or None when a normaliser underflowed to 0.

    States are probability vectors p(t) (B, 1, C), one (B, 1, C) × (B, C, C) matmul per token,
    renormalised every step; log Z = Σ log(normalisers) + shifts:

        q(t) = p(t−1) @ exp(transition − top) · exp(w(t) + top − r(t)),   s(t) = Σ_c q(t),  p(t) = q(t) / s(t)

    top[c] = max_{c'} transition[c', c] and r(t) = max_c (w(t, c) + top[c]) are constants to autograd
    (shift-equivariance keeps values and gradients exact); −inf potentials are exact zeros. Shorter
    rows run on over the padding and are read out at their own last token. With all potentials finite
    and every transition column spanning ≤ MAX_SPREAD, the label with the best shifted emission gets
    q ≥ exp(−MAX_SPREAD) / C, so s cannot underflow; with −inf entries it can (a grammar forcing a
    path through labels of far worse emission, or no path at all), which is detected, and the caller
    falls back to the log-space loop. With finite transitions and end weights a label whose weight
    underflows carries a posterior below fp32 resolution (every continuation of it is open to the best
    label at most MAX_SPREAD worse); with −inf ones the grammar can make that label the only way on,
    so a state it can reach that fell below the dtype's smallest normal number sends the call to the
    log-space loop too (``_lost_reachable_state``). Four autograd nodes and O(C) saved memory per
    token, instead of the (B, C, C) log-sum-exp; the normalisers and shifts add up in float64.
    """
    B, T, C = w.shape
    top = _finite(transition.detach().amax(-2, keepdim=True))  # (B, 1, C)
    weights = torch.exp(transition - top)
    first = entry + w[:, 0]
    m0 = _finite(first.detach().amax(-1, keepdim=True))
    p = torch.exp(first - m0)
    s0 = p.sum(-1, keepdim=True)
    p = (p / s0).unsqueeze(1)
    shifted = w[:, 1:] + top  # (B, T-1, C)
    r = _finite(shifted.detach().amax(-1, keepdim=True))
    emit = torch.exp(shifted - r).unsqueeze(2).unbind(1)  # per token (B, 1, C)
    states, norms = [p], [s0.unsqueeze(1)]
    for t in range(1, T):  # every row runs to T; shorter rows are read out at their own end below
        q = torch.bmm(p, weights) * emit[t - 1]
        s = q.sum(-1, keepdim=True)
        p = q / s
        states.append(p)
        norms.append(s)
    if ragged:
        p = torch.stack(states, 0)[lengths - 1, torch.arange(B, device=w.device)]
    top_end = _finite(end.detach().amax(-1, keepdim=True))
    last = (p.squeeze(1) * torch.exp(end - top_end)).sum(-1)
    norms = torch.cat(norms, 1).flatten(1)  # (B, T): s0, s(1), ..., s(T-1)
    failed = (norms == 0).any() | (last == 0).any()
    if not (torch.isfinite(transition).all() & torch.isfinite(end).all()):
        failed = failed | _lost_reachable_state(states, transition, first, w, lengths)
    if bool(failed):
        return None
    total = torch.log(last).double() + (m0 + top_end).squeeze(-1).double()
    valid = torch.arange(T, device=w.device) < lengths.unsqueeze(1)  # tokens 0..L-1 count
    log_norms = torch.log(norms) + torch.cat([r.new_zeros(B, 1, 1), r], 1).squeeze(-1)
    return (total + torch.where(valid, log_norms, 0.0).double().sum(1)).to(w.dtype)


@torch.no_grad()
def viterbi(
    cum: torch.Tensor,
    transition: torch.Tensor,
    duration: torch.Tensor,
    tau0: torch.Tensor,
    end: torch.Tensor,
    lengths: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Best path of a K = 1 model with backpointers: (score (B,), labels (B, T), starts (B, T)).

    labels are −1 at t ≥ lengths[b]; every valid token starts a segment. A
    sequence with no finite path (score −inf) gets an empty structure (labels
    −1, no starts), as the max-semiring gradient gives it.
    """
    w = _emissions(cum, duration, None, tau0.dtype)
    B, T, C = w.shape
    t_max = int(lengths.max())
    ws = w.unbind(1)
    alpha = tau0[0] + ws[0]
    alphas, back = [alpha], []  # back[t - 1][b, c]: the best label before (t, c)
    for t in range(1, t_max):  # every row runs to t_max; shorter rows are read out at their own end
        best, arg = (alpha.unsqueeze(-1) + transition).max(-2)
        alpha = best + ws[t]
        alphas.append(alpha)
        back.append(arg)
    rows = torch.arange(B, device=w.device)
    if int(lengths.min()) < t_max:
        alpha = torch.stack(alphas, 0)[lengths - 1, rows]
    score, cur = (alpha + end).max(-1, keepdim=True)
    path = [cur]
    if back:
        pointers = torch.stack(back, 1)  # (B, t_max - 1, C)
        # past its end a row points at its own best last label, so one backtrace from t_max serves all
        beyond = torch.arange(1, t_max, device=w.device) >= lengths.unsqueeze(1)
        pointers = torch.where(beyond.unsqueeze(-1), cur.unsqueeze(-1), pointers)
        for arg in reversed(pointers.unbind(1)):
            cur = arg.gather(1, cur)
            path.append(cur)
    labels = torch.cat(path[::-1], 1)
    if t_max < T:
        labels = torch.cat([labels, labels.new_full((B, T - t_max), -1)], 1)
    valid = torch.arange(T, device=w.device) < lengths.unsqueeze(1)
    score = score.squeeze(-1)
    labels = torch.where(valid & torch.isfinite(score).unsqueeze(1), labels, -1)  # no finite path: empty
    return score, labels, labels >= 0


@torch.no_grad()
def _lost_reachable_state(states, transition, first, w, lengths) -> torch.Tensor:
    """Whether a state the grammar reaches from a live one fell below the smallest normal number
    (its mass is gone or inexact), at a token inside its sequence: a 0-d bool tensor.

    By induction the first loss is at a state reachable in one step from states that are still
    live (> 0), so one batched matmul over all tokens finds it; −inf potentials are the exact zeros
    of ``isfinite``, so the check is structural, not numerical.
    """
    p = torch.cat(states, 1)  # (B, T, C), each row normalised
    live = (p[:, :-1] > 0).to(p.dtype)
    allowed = torch.isfinite(transition).to(p.dtype)
    reach = torch.cat([torch.isfinite(first).unsqueeze(1),
                       (torch.bmm(live, allowed) > 0) & torch.isfinite(w[:, 1:])], 1)
    inside = (torch.arange(p.shape[1], device=p.device) < lengths.unsqueeze(1)).unsqueeze(-1)
    return (reach & inside & (p < torch.finfo(p.dtype).tiny)).any()
