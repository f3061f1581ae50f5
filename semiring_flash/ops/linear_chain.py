"""K = 1 fast path: with one-token segments the semi-CRF is a linear-chain CRF.

At max duration 1 the factored recurrence (DESIGN.md) collapses to

    α(1, c) = τ(0, c) ⊗ w(0, c)
    α(t, c) = [⊕_{c'} α(t-1, c') ⊗ transition[c', c]] ⊗ w(t-1, c)
    Z       = ⊕_c α(L_b, c) ⊗ end[c]

with w(t, c) = S[t+1, c] − S[t, c] + duration[0, c] (+ start_bias[t, c]). One
(B, C, C) ⊕-reduction per token and no ring, checkpoints or duration loop:
plain autograd through it keeps O(T·C) memory, which is what the linear chain
costs anyway, and gives exact gradients. ``viterbi`` adds backpointers for a
decode without the max-semiring gradient.

These functions take the streaming engine's arguments (``factored_scan``),
so ``ops/autograd.py`` can route K = 1 calls here for the Log and Max
semirings; the streaming engine stays the reference they are tested against.
"""

from __future__ import annotations

import torch

from ..semirings import Semiring

__all__ = ["supports", "linear_chain_scan", "viterbi"]

# fp32 states are re-centred this often (the offsets accumulate in float64), so
# they stay O(RENORM_EVERY · |score|) at any T; shift-equivariance keeps it exact.
RENORM_EVERY = 16


def supports(semiring: Semiring, duration: torch.Tensor) -> bool:
    """Whether the linear-chain path computes this call: K = 1, Log or Max semiring."""
    return duration.shape[-2] == 1 and semiring.name in ("log", "max")


def _emissions(cum, duration, start_bias, dtype):
    """(B, T, C) per-token weights w(t, c): the float64 prefix-sum difference, then rounded."""
    w = cum.diff(dim=1).to(dtype) + duration[:, :1]
    return w if start_bias is None else w + start_bias


def _finite(x: torch.Tensor) -> torch.Tensor:
    return torch.where(torch.isfinite(x), x, torch.zeros((), dtype=x.dtype, device=x.device))


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
    alpha = tau0[0] + w[:, 0]  # (B, C)
    offset = torch.zeros(alpha.shape[0], dtype=torch.float64, device=alpha.device)
    for t in range(1, t_max):
        if t % RENORM_EVERY == 0:
            m = _finite(alpha.detach().amax(-1))
            alpha = alpha - m.unsqueeze(-1)
            offset = offset + m.to(torch.float64)
        step = semiring.sum(alpha.unsqueeze(-1) + transition, -2) + w[:, t]
        alpha = torch.where((t < lengths).unsqueeze(-1), step, alpha)
    value = semiring.sum(alpha + end, -1)
    return (value + offset.to(value.dtype)).unsqueeze(0)


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
    alpha = tau0[0] + w[:, 0]
    back = torch.zeros(B, T, C, dtype=torch.long, device=w.device)  # back[b, t, c]: best c' before (t, c)
    for t in range(1, t_max):
        best, arg = (alpha.unsqueeze(-1) + transition).max(-2)
        active = (t < lengths).unsqueeze(-1)
        alpha = torch.where(active, best + w[:, t], alpha)
        back[:, t] = arg
    score, last = (alpha + end).max(-1)
    labels = torch.full((B, T), -1, dtype=torch.long, device=w.device)
    cur = last
    for t in range(t_max - 1, -1, -1):
        here = t < lengths  # sequences whose token t exists; each walks back from its own last token
        at_end = t == lengths - 1
        cur = torch.where(at_end, last, cur)
        labels[:, t] = torch.where(here, cur, labels[:, t])
        if t > 0:
            cur = torch.where(here, back[:, t].gather(1, cur.unsqueeze(1)).squeeze(1), cur)
    labels = torch.where(torch.isfinite(score).unsqueeze(-1), labels, torch.full_like(labels, -1))
    return score, labels, labels >= 0
