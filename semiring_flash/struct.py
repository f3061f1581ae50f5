"""``SemiMarkov``: torch-struct's struct surface, for edges and factored potentials."""

from __future__ import annotations

from contextlib import contextmanager

import torch

from .ops.autograd import check_backend, edge_value, factored_inputs, factored_value
from .potentials import SegmentPotentials
from .segmentation import FactoredMarginals, Segmentation
from .semirings import LogSemiring, Semiring, logsumexp
from .validation import check_lengths, check_tensor, check_values, compute_dtype, no_nan_or_pos_inf, signature

__all__ = ["SemiMarkov", "check_edges", "score_segmentation"]


def check_edges(edges, lengths=None) -> tuple[torch.Tensor, torch.Tensor]:
    """Validate torch-struct edges (B, N-1, K+1, C, C) and position lengths.

    Returns the edges in the compute dtype (float16/bfloat16 become float32, a
    differentiable cast: half precision overflows log Z at a few thousand
    tokens) and lengths in *tokens* (positions - 1), int64. torch-struct counts
    positions: lengths[b] = L_b + 1 with 1 ≤ L_b ≤ N-1 (it further insists on
    max(lengths) == N; we accept any batch in range).
    """
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
    return edges.to(compute_dtype(edges.dtype)), positions - 1


def _first_bad(bad: torch.Tensor, lead: tuple, B: int) -> str:
    """'sequence b' (with the leading index, if any) of the first row of bad (R·B, ...) holding a True."""
    r, b = divmod(int(bad.reshape(bad.shape[0], -1).any(1).nonzero()[0, 0]), B)
    return f"sequence {b}" + (f" at leading index {tuple(int(i) for i in torch.unravel_index(torch.tensor(r), lead))}" if lead else "")


def check_edge_parts(parts: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
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
    if gap.any() or (~empty & ~reached.gather(1, L).squeeze(1)).any():
        bad = gap.any(-1) | (~empty & ~reached.gather(1, L).squeeze(1))
        raise ValueError(f"value must be one-hot edges of a segmentation: in {where(bad)} the segments do not tile [0, length) end to end")
    chain = has & (n > 0) & (cp != label_at[:, :N1])
    if chain.any():
        raise ValueError(f"value must be one-hot edges: in {where(chain)} a segment's previous label (dim 4) is not the label of the segment before it")
    return empty.view(*lead, B)


def score_segmentation(pots: SegmentPotentials, seg: Segmentation) -> torch.Tensor:
    """Score of segmentations (..., B, T) under ``pots``; −inf where impossible.

    Shares the partition's convention exactly: segment sums of the (centred)
    scores, duration[d-1, c], transition between consecutive segments, the
    entry term (start[c], or ⊕_{c'} init[c'] ⊗ transition[c', c]) and end[c].
    """
    B, T, K, C = pots.shape
    if seg.labels.shape[-2:] != (B, T):
        raise ValueError(f"value must be a Segmentation of shape (..., B, T) = (..., {B}, {T}), got {tuple(seg.labels.shape)}")
    lead = seg.labels.shape[:-2]
    seg_lengths = seg.lengths.expand(seg.labels.shape[:-1])
    if not torch.equal(seg_lengths, pots.lengths.expand_as(seg_lengths)):
        raise ValueError("value.lengths must equal the potentials' lengths")
    seg.check(C)
    labels = seg.labels.reshape(-1, B, T).clamp(min=0)
    starts = seg.starts.reshape(-1, B, T)
    R = labels.shape[0]
    dev = labels.device
    L = pots.lengths.view(1, B, 1)
    t = torch.arange(T, device=dev).view(1, 1, T)
    valid = t < L

    tok = pots.token_scores().unsqueeze(0).expand(R, B, T, C)
    total = torch.where(valid, tok.gather(-1, labels.unsqueeze(-1)).squeeze(-1), tok.new_zeros(())).sum(-1)

    # duration of the segment starting at t: next start (or L) - t
    pos = torch.where(starts & valid, t.expand(R, B, T), torch.full_like(labels, T))
    after = torch.cat([pos[..., 1:], torch.full_like(pos[..., :1], T)], -1)
    nxt = after.flip(-1).cummin(-1).values.flip(-1)
    nxt = torch.minimum(nxt, L.expand(R, B, T))
    is_start = starts & valid
    d = (nxt - t).clamp(min=1)
    dur = pots.duration_b().to(torch.float64)  # (B, K, C)
    dur_term = dur.view(1, B, K * C).expand(R, B, K * C).gather(-1, (d.clamp(max=K) - 1) * C + labels)
    dur_term = torch.where(d > K, torch.full_like(dur_term, float("-inf")), dur_term)
    total = total + torch.where(is_start, dur_term, dur_term.new_zeros(())).sum(-1)

    trans = pots.transition_b().to(torch.float64)  # (B, C, C)
    prev = torch.cat([labels[..., :1], labels[..., :-1]], -1)
    tr = trans.view(1, B, C * C).expand(R, B, C * C).gather(-1, prev * C + labels)
    inner = is_start & (t > 0)
    total = total + torch.where(inner, tr, tr.new_zeros(())).sum(-1)

    entry = logsumexp(pots.entry_potential().to(torch.float64), 1)  # (B, C)
    total = total + entry.unsqueeze(0).expand(R, B, C).gather(-1, labels[..., :1]).squeeze(-1)
    last = labels.gather(-1, (L.expand(R, B, 1) - 1))
    total = total + pots.end_b().to(torch.float64).unsqueeze(0).expand(R, B, C).gather(-1, last).squeeze(-1)
    total = torch.where(seg.empty().reshape(R, B), float("-inf"), total)  # the empty segmentation: weight 0̄
    return total.to(pots.dtype).reshape(*lead, B)


def _masked_dot(parts: torch.Tensor, potentials: torch.Tensor, dims: int) -> torch.Tensor:
    prod = torch.where(parts != 0, parts * potentials, torch.zeros((), dtype=potentials.dtype, device=potentials.device))
    return prod.flatten(-dims).sum(-1)


def _drop_empty_channels(grads: torch.Tensor, value: torch.Tensor) -> torch.Tensor:
    """Zero the indicators of channels whose value is −inf (k beyond the number of
    structures, or a sequence without any structure).

    Their gradient would otherwise point at an arbitrary (repeated) structure:
    the max of all-−inf candidates still routes its gradient to one of them.
    """
    alive = value > float("-inf")
    alive = alive.reshape(alive.shape + (1,) * (grads.dim() - alive.dim()))
    return torch.where(alive, grads, torch.zeros((), dtype=grads.dtype, device=grads.device))


@contextmanager
def _autograd_on():
    """Marginals, argmax, topk and samples are gradients of the DP's value:
    autograd runs even under torch.no_grad() and torch.inference_mode()
    (Lightning's validate/predict). Inputs made under inference mode go
    through :func:`_recordable` first."""
    with torch.inference_mode(False), torch.enable_grad():
        yield


def _recordable(x):
    """Inference tensors (made under torch.inference_mode) cannot enter an
    autograd graph: clone them into normal tensors (inside ``_autograd_on``)."""
    if isinstance(x, SegmentPotentials):
        return x.map_tensors(torch.Tensor.clone) if any(t.is_inference() for t in x.tensors()) else x
    return x.clone() if x is not None and x.is_inference() else x


def _wants_graph(potentials) -> bool:
    """Differentiable marginals: grad mode on and some potential requires grad."""
    tensors = potentials.tensors() if isinstance(potentials, SegmentPotentials) else [potentials]
    return torch.is_grad_enabled() and any(t.requires_grad for t in tensors)


class SemiMarkov:
    """Semi-Markov struct over a semiring (torch-struct's ``SemiMarkov``).

    Works on torch-struct edge tensors (B, N-1, K+1, C, C) with position
    lengths, and on :class:`SegmentPotentials` (lengths inside).
    """

    def __init__(self, semiring: Semiring = LogSemiring, backend: str = "auto"):
        if not isinstance(semiring, Semiring):
            raise TypeError(f"semiring must be a semiring_flash semiring instance (e.g. sf.LogSemiring), got {semiring!r}")
        if not semiring.log_space:
            raise TypeError(f"SemiMarkov runs log-space semirings (0̄ = −inf, ⊗ = +); {semiring!r} is not one")
        self.semiring = semiring
        self.backend = check_backend(backend)

    # -- the value -------------------------------------------------------------
    def logpartition(self, log_potentials: torch.Tensor | SegmentPotentials, lengths: torch.Tensor | None = None,
                     force_grad: bool = False) -> tuple[torch.Tensor, list]:
        """(value (S, B), [potentials]) like torch-struct; never mutates inputs."""
        if isinstance(log_potentials, SegmentPotentials):
            if lengths is not None:
                raise ValueError("lengths go inside SegmentPotentials, not to logpartition")
            return factored_value(self.semiring, factored_inputs([log_potentials]), self.backend), [log_potentials]
        edges, tokens = check_edges(log_potentials, lengths)
        return edge_value(self.semiring, edges, tokens, self.backend), [edges]

    def sum(self, log_potentials: torch.Tensor | SegmentPotentials, lengths: torch.Tensor | None = None,
            _raw: bool = False) -> torch.Tensor:
        v = self.logpartition(log_potentials, lengths)[0]
        return v if _raw else self.semiring.unconvert(v)

    # -- gradients of the value -------------------------------------------------
    def marginals(self, log_potentials: torch.Tensor | SegmentPotentials, lengths: torch.Tensor | None = None,
                  _raw: bool = False) -> torch.Tensor | FactoredMarginals | list[FactoredMarginals]:
        """Gradient of the value w.r.t. the potentials.

        Edges: (B, N-1, K+1, C, C) like torch-struct (with ``_raw``, (S, ...) one
        per channel). Factored: a :class:`FactoredMarginals` (per channel a
        list with ``_raw``). Works under torch.no_grad() and inference mode.

        When grad mode is on and the potentials require grad, the marginals
        are differentiable (they carry a graph to the potentials, like
        torch-struct's): the torch engine then runs without checkpoints,
        O(T·K·C) memory for factored input (O(T·K·C²) for edges);
        backend="triton" raises. Otherwise the fast path builds no graph.
        """
        # argmax indicators (max) are piecewise constant: no graph for them
        create_graph = not _raw and not self.semiring.indicator_gradient and _wants_graph(log_potentials)
        if create_graph and self.backend == "triton":
            raise NotImplementedError(
                "differentiable marginals (potentials that require grad, grad mode on) need backend='torch' "
                "(or 'auto'): the Triton backward has no double backward. Use backend='torch', or detach the "
                "potentials / wrap in torch.no_grad() for marginals without a graph."
            )
        with _autograd_on():
            if isinstance(log_potentials, SegmentPotentials):
                return self._factored_marginals(_recordable(log_potentials), _raw, create_graph)
            edges, tokens = check_edges(_recordable(log_potentials), lengths)
            return self._edge_marginals(edges, tokens, _raw, create_graph)

    def _edge_marginals(self, edges, tokens, raw: bool, create_graph: bool):
        sr = self.semiring
        if create_graph:
            v = edge_value(sr, edges, tokens, self.backend, create_graph=True)
            return torch.autograd.grad(sr.unconvert(v).sum(), edges, create_graph=True)[0]
        leaf = edges.detach().requires_grad_()
        with torch.enable_grad():
            v = edge_value(sr, leaf, tokens, self.backend)
            objs = [v[k].sum() for k in range(v.shape[0])] if raw else [sr.unconvert(v).sum()]
            grads = [torch.autograd.grad(o, leaf, retain_graph=True)[0] for o in objs]
        if raw:
            return _drop_empty_channels(torch.stack(grads, 0), v)
        return grads[0]

    def _factored_marginals(self, pots: SegmentPotentials, raw: bool, create_graph: bool = False):
        sr = self.semiring
        # with create_graph, the inputs that require grad stay attached to the user's potentials
        inp = factored_inputs([pots], leaves=True, keep_graph=create_graph)
        start_bias = torch.zeros(pots.batch, pots.T, pots.C, dtype=pots.dtype, device=pots.device, requires_grad=True)
        with torch.enable_grad():
            v = factored_value(sr, inp, self.backend, start_bias=start_bias, create_graph=create_graph)
            objs = [v[k].sum() for k in range(v.shape[0])] if raw else [sr.unconvert(v).sum()]
            outs = []
            for o in objs:
                g_cum, g_tr, g_dur, g_sb = torch.autograd.grad(
                    o, [inp.cum, inp.transition, inp.duration, start_bias], retain_graph=True, allow_unused=True,
                    create_graph=create_graph,
                )
                g_cum = torch.zeros_like(inp.cum) if g_cum is None else g_cum
                token = g_cum.flip(1).cumsum(1).flip(1)[:, 1:]  # ∂/∂scores[j] = Σ_{t>j} ∂/∂S[t]
                outs.append(FactoredMarginals(
                    token=token.to(pots.dtype),
                    start=g_sb.sum(-1),
                    start_label=g_sb,
                    duration=torch.zeros_like(inp.duration) if g_dur is None else g_dur,
                    transition=torch.zeros_like(inp.transition) if g_tr is None else g_tr,
                ))
        return outs if raw else outs[0]

    def start_indicators(self, pots: SegmentPotentials, channels: int | None = None, batch_repeat: int = 1):
        """(channels, R·B, T, C) gradients of each value channel w.r.t. a start bias.

        For Max/KMax/Sampled semirings these are 0/1 indicators of "a segment
        of label c starts at t" on the selected path(s): a segmentation.
        """
        with _autograd_on():
            return self._start_indicators(_recordable(pots), channels, batch_repeat)

    def _start_indicators(self, pots: SegmentPotentials, channels: int | None, batch_repeat: int):
        sr = self.semiring
        inp = factored_inputs([pots])
        if batch_repeat > 1:
            rep = lambda x: x.repeat_interleave(batch_repeat, 0) if x.dim() else x  # noqa: E731
            inp = type(inp)(*(rep(x) for x in (inp.cum, inp.transition, inp.duration, inp.end, inp.entry, inp.lengths)))
        B = inp.cum.shape[0]
        start_bias = torch.zeros(B, pots.T, pots.C, dtype=pots.dtype, device=pots.device, requires_grad=True)
        with torch.enable_grad():
            v = factored_value(sr, inp, self.backend, start_bias=start_bias)
            n = v.shape[0] if channels is None else channels
            grads = [torch.autograd.grad(v[k].sum(), start_bias, retain_graph=k + 1 < n)[0] for k in range(n)]
        return _drop_empty_channels(torch.stack(grads, 0), v[:n]), inp.lengths

    def segment_marginals(self, pots: SegmentPotentials) -> torch.Tensor:
        """(B, T, K, C): P(segment starting at t, duration d (index d-1), label c). O(T·K·C) memory."""
        with _autograd_on():
            inp = factored_inputs([_recordable(pots)])
            bias = torch.zeros(pots.batch, pots.T, pots.K, pots.C, dtype=pots.dtype, device=pots.device, requires_grad=True)
            v = factored_value(self.semiring, inp, "torch", seg_bias=bias)
            return torch.autograd.grad(self.semiring.unconvert(v).sum(), bias)[0]

    # -- structures ---------------------------------------------------------------
    def score(self, potentials: torch.Tensor | SegmentPotentials, parts: torch.Tensor | Segmentation,
              batch_dims=(0,)) -> torch.Tensor:
        """Σ potentials · parts (edge layout; 0 · −inf counts as 0) or a Segmentation's score."""
        if isinstance(potentials, SegmentPotentials):
            return score_segmentation(potentials, parts)
        event_dims = parts.dim() - len(tuple(batch_dims))
        return _masked_dot(parts.to(potentials.dtype), potentials, event_dims)

    @staticmethod
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

    @staticmethod
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

    @staticmethod
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
