"""Naive references beside the fused kernels (flash-linear-attention style).

``factored_scan`` / ``edge_scan`` are the checkpointed PyTorch streaming
engine (same signatures as the Triton entry points); ``dense_factored`` /
``dense_edges`` keep every state and differentiate through the whole loop
with autograd: the oracles the kernels are tested against.
"""

from ..dense import dense_edges, dense_factored
from ..streaming import edge_scan, factored_scan

__all__ = ["factored_scan", "edge_scan", "dense_factored", "dense_edges"]
