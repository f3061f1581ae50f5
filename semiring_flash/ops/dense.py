"""The dense DP: every state kept, autograd through the whole loop.

An oracle for the streaming engine and the kernels (same recurrences, no
ring, no checkpoints, no normaliser), written for clarity, not speed.
Potentials take the same layouts as ``ops.streaming``.
"""

from __future__ import annotations

import torch

from ..semirings import Semiring


def _p(semiring, x):
    return x.unsqueeze(0) if (x is not None and semiring.n_potentials == 1) else x


def _finals(semiring: Semiring, per_t: list, lengths: torch.Tensor) -> torch.Tensor:
    """Pick value[:, b] at t = lengths[b] from a list of (S, B) values indexed by t."""
    stacked = torch.stack(per_t, 0)  # (T+1, S, B)
    idx = lengths.view(1, 1, -1).expand(1, stacked.shape[1], -1)
    return stacked.gather(0, idx).squeeze(0)


def dense_factored(semiring, cum, transition, duration, tau0, end, lengths, start_bias=None):
    cum, transition, duration, end, start_bias = (_p(semiring, x) for x in (cum, transition, duration, end, start_bias))
    P, B, T1, C = cum.shape
    T, K = T1 - 1, duration.shape[-2]
    dtype = tau0.dtype
    tau = [semiring.mul_potential(tau0, start_bias[:, :, 0]) if start_bias is not None else tau0]
    finals = [semiring.zeros((B,), dtype, tau0.device)]
    for t in range(1, T + 1):
        terms = []
        for d in range(1, min(K, t) + 1):
            seg = (cum[:, :, t] - cum[:, :, t - d]).to(dtype) + duration[:, :, d - 1]
            terms.append(semiring.mul_potential(tau[t - d], seg))
        alpha = semiring.sum(torch.stack(terms, 2), 2)
        finals.append(semiring.sum(semiring.mul_potential(alpha, end), -1))
        nxt = semiring.matmul_potential(alpha, transition)
        if start_bias is not None and t < T:
            nxt = semiring.mul_potential(nxt, start_bias[:, :, t])
        tau.append(nxt)
    return _finals(semiring, finals, lengths)


def dense_edges(semiring, edges, lengths):
    edges = _p(semiring, edges)
    P, B, T, K1, C, _ = edges.shape
    K = K1 - 1
    alpha = [semiring.ones((B, C), edges.dtype, edges.device)]
    finals = [semiring.zeros((B,), edges.dtype, edges.device)]
    for t in range(1, T + 1):
        terms = []
        for d in range(1, min(K, t) + 1):
            x = semiring.mul_potential(alpha[t - d].unsqueeze(-2), edges[:, :, t - d, d])  # (S,B,C,C')
            terms.append(x)
        a = semiring.sum_dims(torch.stack(terms, 2), (2, 4))
        alpha.append(a)
        finals.append(semiring.sum(a, -1))
    return _finals(semiring, finals, lengths)
