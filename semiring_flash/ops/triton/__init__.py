"""Fused Triton streaming kernels for semi-CRF scans, compiled per semiring.

    factored_scan_triton(semiring, cum, transition, duration, tau0, end, lengths, start_bias=None)
    edge_scan_triton(semiring, edges, lengths)
    viterbi_triton(cum, transition, duration, tau0, end, lengths)  -> (score, labels, starts)

Same signatures and numbers as ``semiring_flash.ops.streaming`` (the PyTorch
reference engine; ``ops.dense`` is the autograd-through-everything oracle);
semirings log, max, entropy, kmax(k), forward and backward all in Triton. Importing this module imports triton: an
ImportError here means "no Triton". With ``TRITON_INTERPRET=1`` set before
this module is first imported, the kernels run on CPU tensors (slowly; that is
how CI checks them).
"""

import triton  # noqa: F401  (fail early and clearly when Triton is missing)

from .launch import checkpoint_every, edge_scan_triton, factored_scan_triton
from .segments import viterbi_triton

__all__ = ["factored_scan_triton", "edge_scan_triton", "checkpoint_every", "viterbi_triton"]
