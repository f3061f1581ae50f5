"""Viterbi segmentations on the device: one max-semiring forward pass that keeps
backpointers, then a device-side backtrace (no per-position host round trip).

The backtrace is parallel: a chain of one dependent load per segment took a third of
the call at T = 10^6 (0.24 s for 0.94 M segments, H100). One pass links every state to its
segment's predecessor (``backlink_kernel``); the states (t, c) are cut into blocks of
``CHAIN_BLOCK``, and pointer jumping inside each block links every state to its chain's exit
below the block (``backjump_kernel``); one program follows the exits from the final state,
one load per block (``backentry_kernel``); then every block writes its own segments
(``backwalk_kernel``).

Memory: the backpointers are two (B, T+1, C) int16 arrays (the exits overwrite them once the
links are made) and the links one int32 array, O(T·C) like the output itself; the scan state
stays O(K·C). The path is the one the
max-semiring gradient of the torch engine selects (exact ties go to the
longest duration, then the first label).
"""

from __future__ import annotations

import torch
import triton

from ...semirings import MaxSemiring
from .kernels import backentry_kernel, backjump_kernel, backlink_kernel, backwalk_kernel
from .launch import Backpointers, _fwd, _meta, _operands, _pow2

__all__ = ["viterbi_triton"]

#: states per block of the parallel backtrace (a power of two)
CHAIN_BLOCK = 4096


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
        routes = torch.empty(2, B, T1, C, dtype=torch.int16, device=dev)  # one int32 per state: the exits' too
        bp = Backpointers(bpa=routes[0], bpt=routes[1], fin=torch.empty(B, dtype=torch.int32, device=dev))
        value, _ = _fwd(m, ops, False, bp)
        fin = torch.where(value[0] == float("-inf"), -1, bp.fin)  # the backtrace skips these sequences
        labels, starts = backtrace(bp, fin, ops.lengths, B, T, C, K, exits=routes.view(-1).view(torch.int32))
    return value[0], labels, starts.bool()


def backtrace(bp: Backpointers, fin, lengths, B: int, T: int, C: int, K: int, block: int | None = None,
              exits=None):
    """Labels (B, T) int64 (−1 past L) and segment starts (B, T) int8 of the chains the
    backpointers ``bp`` hold from (L, fin); fin −1: no segmentation (nothing written).
    ``exits``: B·(T+1)·C int32 of scratch (may be the backpointers' own memory: they are read
    only before it is written); None: allocated."""
    block = block or CHAIN_BLOCK
    dev, n = bp.bpa.device, (T + 1) * C
    nb = triton.cdiv(n, block)
    labels = torch.full((B, T), -1, dtype=torch.int64, device=dev)
    starts = torch.zeros(B, T, dtype=torch.int8, device=dev)
    link = torch.empty(B, n, dtype=torch.int32, device=dev)
    exits = torch.empty(B, n, dtype=torch.int32, device=dev) if exits is None else exits
    entry = torch.full((B, nb), -1, dtype=torch.int32, device=dev)
    rounds = max(1, (block // C + 1).bit_length())  # 2^rounds > the states of a chain in a block
    backlink_kernel[(B, nb)](bp.bpa, bp.bpt, link, T, C, BLOCK=block)
    backjump_kernel[(B, nb)](link, exits, T, C, BLOCK=block, ROUNDS=rounds)
    backentry_kernel[(B,)](exits, fin, lengths, entry, T, C, nb, BLOCK=block, num_warps=1)
    backwalk_kernel[(B, nb)](link, entry, labels, starts, T, C, nb, BLOCK=block, KP=max(2, _pow2(K)), num_warps=1)
    return labels, starts
