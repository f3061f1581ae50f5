"""Broadcast references for the semiring batched matmuls (the oracles of ``semiring_flash.genbmm``).

Each builds the full (B, n, k, m) tensor of terms a[b, i, k] (+ or *) b[b, k, j] and
reduces over k: memory O(B·n·k·m), exactly what ``genbmm`` avoids. Tests call them in
float64. They follow torch's conventions at the edges (an all −inf row gives −inf; the
max's index is torch's), so tests compare values, not indices, where ties are possible.
"""

from __future__ import annotations

import torch


def _terms(a: torch.Tensor, b: torch.Tensor, product: bool = False) -> torch.Tensor:
    x, y = a.unsqueeze(-1), b.unsqueeze(-3)  # (B, n, k, 1), (B, 1, k, m)
    return x * y if product else x + y


def logbmm_reference(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """out[b, i, j] = logsumexp_k a[b, i, k] + b[b, k, j]."""
    return _terms(a, b).logsumexp(-2)


def maxbmm_reference(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """out[b, i, j] = max_k a[b, i, k] + b[b, k, j]."""
    return _terms(a, b).amax(-2)


def prodmaxbmm_reference(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """out[b, i, j] = max_k a[b, i, k] * b[b, k, j]."""
    return _terms(a, b, product=True).amax(-2)


def log_weights_reference(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """softmax over k of a + b, shape (B, n, k, m): the law samplebmm draws k from,
    and d logbmm[b, i, j] / d a[b, i, k]."""
    return _terms(a, b).softmax(-2)
