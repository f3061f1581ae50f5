"""torch-struct edge potentials (B, N-1, K+1, C, C): validation, structures and their helpers.

``EdgePotentials`` answers the same methods as :class:`SegmentPotentials`
(shape, lengths in tokens, ``tensors``, ``detach``, ``map_tensors``,
``score``, ``check_value``, ``empty``), so the struct and the distribution never
branch on the input kind.
"""

from __future__ import annotations

import copy

import torch

from .validation import check_lengths, check_tensor, check_values, compute_dtype, no_nan_or_pos_inf, signature

__all__ = ["EdgePotentials", "to_parts", "from_parts", "hsmm"]


class EdgePotentials:
    """torch-struct edges and their lengths, validated once.

    ``edge[b, n, k, c, c_prev]`` scores a segment starting at position n with
    duration k (1..K; slice k = 0 is ignored), label c, after label c_prev.

    Args:
        log_potentials: (B, N-1, K+1, C, C) floating edges.
        lengths: (B,) positions per sequence (tokens + 1) as in torch-struct,
            2 ≤ lengths ≤ N (default N; any batch in range, torch-struct further
            insists on max(lengths) == N).

    Holds ``edges`` in the compute dtype (float16/bfloat16 become float32, a
    differentiable cast: half precision overflows log Z at a few thousand
    tokens) and ``lengths`` in *tokens* (positions - 1), int64.
    Inputs are never modified.
    """

    def __init__(self, log_potentials: torch.Tensor, lengths: torch.Tensor | None = None):
        edges = log_potentials
        check_tensor("log_potentials", edges, 5)
        B, N1, K1, C, C2 = edges.shape
        if C != C2:
            raise ValueError(f"log_potentials must have shape (B, N-1, K+1, C, C) with equal label dims, got {tuple(edges.shape)}")
        if K1 < 2:
            raise ValueError(f"log_potentials dim 2 (K, durations 0..K-1) must be >= 2, got shape {tuple(edges.shape)}")
        if B < 1 or N1 < 1 or C < 1:
            raise ValueError(f"log_potentials needs B, N-1, C >= 1, got shape {tuple(edges.shape)}")
        check_values(signature(log_potentials=edges), edges.device, lambda: [no_nan_or_pos_inf("log_potentials", edges)])
        positions = check_lengths("lengths", lengths, B, 2, N1 + 1, edges.device)
        self.edges = edges.to(compute_dtype(edges.dtype))
        self.lengths = positions - 1
        self.batch, self.T, self.K, self.C = B, N1, K1 - 1, C
        self.device, self.dtype = edges.device, self.edges.dtype

    @property
    def shape(self) -> tuple[int, int, int, int]:
        """(B, T, K, C), T = N-1 tokens, durations 1..K."""
        return (self.batch, self.T, self.K, self.C)

    @property
    def event_shape(self) -> torch.Size:
        """One structure's shape: (N-1, K+1, C, C) one-hot edges."""
        return self.edges.shape[1:]

    def public(self) -> torch.Tensor:
        """What the torch-struct surface shows for these potentials: the edges (compute dtype)."""
        return self.edges

    def tensors(self) -> list:
        return [self.edges, self.lengths]

    def map_tensors(self, fn) -> "EdgePotentials":
        """The same model with ``fn`` (keeping shape, dtype and device: clone, detach) applied to its edges
        and lengths; already validated: no checks, no sync."""
        out = copy.copy(self)
        out.edges, out.lengths = fn(self.edges), fn(self.lengths)
        return out

    def detach(self) -> "EdgePotentials":
        """The same potentials cut from the autograd graph."""
        return self.map_tensors(torch.Tensor.detach)

    # -- structures ---------------------------------------------------------------
    def score(self, parts: torch.Tensor) -> torch.Tensor:
        """Σ edges · parts over each structure (..., B, N-1, K+1, C, C) -> (..., B); 0 · −inf counts as 0."""
        parts = parts.to(self.dtype)
        prod = torch.where(parts != 0, parts * self.edges, torch.zeros((), dtype=self.dtype, device=self.device))
        return prod.flatten(-4).sum(-1)

    def check_value(self, value) -> torch.Tensor:
        """Validate a structure for log_prob; returns the (..., B) mask of empty structures."""
        if not isinstance(value, torch.Tensor) or value.shape[-5:] != self.edges.shape:
            raise ValueError(f"value must be one-hot edges of shape (..., {', '.join(map(str, self.edges.shape))})")
        return check_parts(value, self.lengths)

    def structures(self, indicators: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """Structures from the indicator gradients (..., B, N-1, K+1, C, C): the one-hot edges themselves."""
        return indicators

    def marginals(self, grads: list) -> torch.Tensor:
        """Edge marginals from the gradient of the value w.r.t. the edges."""
        return grads[0]

    def empty(self, shape: torch.Size) -> torch.Tensor:
        """``shape`` empty structures: all-zero edges (*shape, B, N-1, K+1, C, C)."""
        return self.edges.new_zeros(*shape, *self.edges.shape)

    def __repr__(self):
        return f"edges{tuple(self.edges.shape)}"


def _first_bad(bad: torch.Tensor, lead: tuple, B: int) -> str:
    """'sequence b' (with the leading index, if any) of the first row of bad (R·B, ...) holding a True."""
    r, b = divmod(int(bad.reshape(bad.shape[0], -1).any(1).nonzero()[0, 0]), B)
    return f"sequence {b}" + (f" at leading index {tuple(int(i) for i in torch.unravel_index(torch.tensor(r), lead))}" if lead else "")


def check_parts(parts: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """Check that ``parts`` (..., B, N-1, K, C, C) are one-hot edges of segmentations.

    Each sequence b must hold 0/1 entries forming one chain of segments
    (n, d, c, c') with 1 ≤ d that tiles [0, tokens[b]): a segment starts at
    0 and wherever the previous one ended, and its c' is the previous
    segment's label. An all-zero sequence is the *empty* structure (what
    argmax/topk/sample give where there is none); ValueError otherwise.
    Returns the (..., B) bool mask of empty sequences.
    """
    if not isinstance(parts, torch.Tensor) or parts.dim() < 5:
        raise ValueError("value must be one-hot edges (..., B, N-1, K, C, C)")
    lead = tuple(parts.shape[:-5])
    B, N1, K1, C, _ = parts.shape[-5:]
    v = parts.detach().reshape(-1, N1, K1 * C * C)
    M = v.shape[0]
    where = lambda bad: _first_bad(bad, lead, B)  # noqa: E731
    if ((v != 0) & (v != 1)).any():
        raise ValueError(f"value must be one-hot edges with entries 0 or 1; {where((v != 0) & (v != 1))} has others")
    on = v != 0
    count = on.sum(-1)  # (M, N-1): segments starting at n
    if (count > 1).any():
        raise ValueError(f"value must be one-hot edges: {where(count > 1)} has several segments starting at one position")
    idx = on.to(torch.uint8).argmax(-1)  # the segment at n, if any
    d, c, cp = idx // (C * C), (idx // C) % C, idx % C
    has = count == 1
    if (has & (d == 0)).any():
        raise ValueError(f"value must be one-hot edges: {where(has & (d == 0))} uses duration index 0 (durations are 1..K-1)")
    L = tokens.to(parts.device).repeat(M // B).view(M, 1)
    n = torch.arange(N1, device=parts.device).view(1, N1)
    end = n + d
    if (has & (end > L)).any():
        raise ValueError(f"value must be one-hot edges: {where(has & (end > L))} has a segment past its length")
    # reached[m, p]: position p is 0 or the end of a segment; label_at[m, p]: that segment's label
    dump = N1 + K1  # scatter slot for positions without a segment
    slot = torch.where(has, end, dump)
    reached = torch.zeros(M, dump + 1, dtype=torch.bool, device=parts.device).scatter_(1, slot, True)
    label_at = torch.full((M, dump + 1), -1, dtype=torch.long, device=parts.device).scatter_(1, slot, c)
    empty = ~has.any(-1)
    reached[:, 0] = True
    inside = n < L
    gap = ~empty.view(M, 1) & inside & (has != reached[:, :N1])
    gap |= ~empty.view(M, 1) & (n == 0) & ~has
    bad = gap.any(-1) | (~empty & ~reached.gather(1, L).squeeze(1))  # a hole, or the last segment ends short
    if bad.any():
        raise ValueError(f"value must be one-hot edges of a segmentation: in {where(bad)} the segments do not tile [0, length) end to end")
    chain = has & (n > 0) & (cp != label_at[:, :N1])
    if chain.any():
        raise ValueError(f"value must be one-hot edges: in {where(chain)} a segment's previous label (dim 4) is not the label of the segment before it")
    return empty.view(*lead, B)


def to_parts(sequence: torch.Tensor, extra: tuple[int, int], lengths: torch.Tensor | None = None) -> torch.Tensor:
    """torch-struct's sequence form (B, N) in [-1, 0..C-1], extra = (C, K+1) → one-hot edges (B, N-1, K+1, C, C).

    sequence[b, n] is the label of the segment ending at position n (−1:
    no segment ends there); sequence[b, 0] is the initial label. Two
    labels must be at most K positions apart (durations 1..K).
    """
    C, K = extra
    check_tensor("sequence", sequence, 2, floating=False)
    if sequence.is_floating_point() or sequence.dtype == torch.bool or sequence.is_complex():
        raise TypeError(f"sequence must be an integer tensor, got dtype {sequence.dtype}")
    B, N = sequence.shape
    if ((sequence < -1) | (sequence >= C)).any():
        raise ValueError(f"sequence entries must lie in [-1, {C}) (C = {C} labels, -1 for no segment end)")
    parts = torch.zeros(B, N - 1, K, C, C, dtype=torch.long, device=sequence.device)
    seq = sequence.tolist()
    for b in range(B):
        last, c = None, None
        for n in range(N):
            if seq[b][n] == -1:
                if n == 0:
                    raise ValueError("sequence[:, 0] must hold the initial label, not -1")
                continue
            if n != 0:
                if n - last >= K:
                    raise ValueError(f"sequence {b}: a gap of {n - last} positions between labels at {last} and {n} "
                                     f"is a segment longer than K - 1 = {K - 1}")
                parts[b, last, n - last, seq[b][n], c] = 1
            last, c = n, seq[b][n]
    return parts


def from_parts(edge: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int]]:
    """One-hot edges (B, N-1, K+1, C, C) → (sequence (B, N), (C, K+1)) like torch-struct."""
    B, N1, K, C, _ = edge.shape
    labels = torch.full((B, N1 + 1), -1, dtype=torch.long, device=edge.device)
    on = edge.nonzero()
    for b, n, k, c, cp in on.tolist():
        if n == 0:
            labels[b, 0] = cp
        labels[b, n + k] = c
    return labels, (C, K)


def hsmm(init_z_1: torch.Tensor, transition_z_to_z: torch.Tensor, transition_z_to_l: torch.Tensor,
         emission_n_l_z: torch.Tensor) -> torch.Tensor:
    """HSMM log-probabilities → edges (B, N, K, C, C), K = durations + 1 (torch-struct's convention).

    init_z_1 (C,) or (B, C): log P(z_{-1}); transition_z_to_z (C, C):
    log P(z_{n+1}=j | z_n=i) at [i, j]; transition_z_to_l (C, K): log P(l | z);
    emission_n_l_z (B, N, K, C): log P(x_{n:n+l} | z, l).
    """
    check_tensor("emission_n_l_z", emission_n_l_z, 4)
    B, N, K, C = emission_n_l_z.shape
    init = init_z_1 if init_z_1.dim() == 2 else init_z_1.unsqueeze(0).expand(B, C)
    edges = emission_n_l_z.unsqueeze(-1) + transition_z_to_z.transpose(0, 1).view(1, 1, 1, C, C)
    edges = edges + transition_z_to_l.transpose(0, 1).view(1, 1, K, C, 1)
    first = edges[:, :1] + init.view(B, 1, 1, 1, C)
    return torch.cat([first, edges[:, 1:]], 1)
