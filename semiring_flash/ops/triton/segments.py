"""Viterbi segmentations on the device: one max-semiring forward pass that keeps
backpointers, then a device-side backtrace (no per-position host round trip).

Memory: the backpointers are two (B, T+1, C) int16 arrays and their links one int32
array (duration and previous label per state, so the backtrace's chain has one dependent
load per segment), O(T·C) like the output itself; the scan state stays O(K·C). The path is the one the
max-semiring gradient of the torch engine selects (exact ties go to the
longest duration, then the first label).
"""

from __future__ import annotations

import torch
import triton

from ...semirings import MaxSemiring
from .kernels import backlink_kernel, backtrace_kernel
from .launch import Backpointers, _fwd, _meta, _operands, _pow2

__all__ = ["viterbi_triton"]

_LINK_BLOCK = 1024


def viterbi_triton(cum, transition, duration, tau0, end, lengths, start_bias=None):
    """Best segmentation of factored potentials.

    Same inputs as ``factored_scan_triton`` (tau0 (1, B, C) in the max semiring).
    Returns ``(score (B,), labels (B, T) int64 with -1 past L, starts (B, T) bool)``.
    A sequence with no segmentation (score −inf) gets the empty one: labels −1,
    no starts (its backpointers route through 0̄ states and mean nothing).
    Not differentiable (use the max-semiring gradient for that).
    """
    B, T1, C = cum.shape
    T, K = T1 - 1, duration.shape[-2]
    if K > 32767 or C > 32767:
        raise ValueError("viterbi_triton stores int16 backpointers: K and C must be < 32768")
    dev, dtype = cum.device, tau0.dtype
    m = _meta(MaxSemiring, B, T, K, C, dtype, dev, False, start_bias is not None, None)
    with torch.no_grad():
        ops = _operands(m, cum, transition, duration, tau0, end, start_bias, lengths)
        bp = Backpointers(bpa=torch.empty(B, T1, C, dtype=torch.int16, device=dev),
                          bpt=torch.empty(B, T1, C, dtype=torch.int16, device=dev),
                          fin=torch.empty(B, dtype=torch.int32, device=dev))
        value, _ = _fwd(m, ops, False, bp)
        fin = torch.where(value[0] == float("-inf"), -1, bp.fin)  # the backtrace skips these sequences
        labels = torch.full((B, T), -1, dtype=torch.int64, device=dev)
        starts = torch.zeros(B, T, dtype=torch.int8, device=dev)
        link = torch.empty(B, T1, C, dtype=torch.int32, device=dev)
        backlink_kernel[(B, triton.cdiv(T1 * C, _LINK_BLOCK))](bp.bpa, bp.bpt, link, T, C, BLOCK=_LINK_BLOCK)
        backtrace_kernel[(B,)](link, fin, ops.lengths, labels, starts, T, C, KP=max(2, _pow2(K)), num_warps=1)
    return value[0], labels, starts.bool()
