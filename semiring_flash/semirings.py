"""Semirings: one definition each, shared by every DP in the package.

Channel layout
--------------
A semiring *value* is a tensor whose leading dimension holds the semiring's
``size`` channels, followed by the ordinary dims (batch, labels, ...):

=================  ======  ==================================================
semiring           size S  channels
=================  ======  ==================================================
LogSemiring        1       log-weight
MaxSemiring        1       best score
EntropySemiring    2       (log-weight, entropy of the normalised weights)
KMaxSemiring(k)    k       the k best scores, sorted descending
CrossEntropy...    3       (log-weight p, log-weight q, cross-entropy H[p,q])
KLDivergence...    3       (log-weight p, log-weight q, KL[p||q])
=================  ======  ==================================================

A *potential* is a plain score tensor with a leading dim of ``n_potentials``
(P = 1, or 2 for the two-distribution semirings, which read p's and q's
scores side by side). ``mul_potential(x, w)`` is ``x ⊗ convert(w)`` without
building ``convert(w)``: every DP multiplies by potentials far more often
than by full values, so this is the hot operation.

0̄ is −inf. Every operation here is NaN-free on −inf inputs, in forward and
in backward (a −inf potential is a legal structural zero).

Normalisation: all of these semirings are shift-equivariant per channel
group (adding a constant c to a channel of every operand adds c to that
channel of the result). The streaming engine uses ``shift(x)`` to keep its
states O(1) and accumulates the shifts in float64.
"""

from __future__ import annotations

import torch

NEG_INF = float("-inf")

__all__ = [
    "Semiring",
    "LogSemiring",
    "MaxSemiring",
    "EntropySemiring",
    "KMaxSemiring",
    "CrossEntropySemiring",
    "KLDivergenceSemiring",
    "SampledSemiring",
    "logsumexp",
    "softmax_weights",
]


def _finite_or_zero(x: torch.Tensor) -> torch.Tensor:
    return x.nan_to_num(nan=0.0, posinf=0.0, neginf=0.0)  # one kernel (where(isfinite) takes six)


def softmax_weights(x: torch.Tensor, dim: int, dtype: torch.dtype | None = None) -> torch.Tensor:
    """∂ logsumexp(x) / ∂x, normalised explicitly: exp(x - max) / Σ exp(x - max); 0 on all −inf rows.

    Not exp(x - logsumexp(x)): those weights sum to 1 only up to the rounding
    of the logsumexp (an error of ε·|x| per call, with a bias from exp/log),
    and an adjoint recursion multiplies one weight set per position, so the
    error compounds over T steps (~1e-8 per step in float32: 1e-2 at T = 10^6).
    ``dtype`` computes the weights in a wider type (e.g. float64) from x as it is.
    """
    if dtype is not None:
        x = x.to(dtype)
    e = (x - _finite_or_zero(x.amax(dim, keepdim=True))).exp()
    z = e.sum(dim, keepdim=True)
    return e / torch.where(z > 0, z, 1.0)


class _SafeLogSumExp(torch.autograd.Function):
    """torch.logsumexp forward; backward softmax that is 0 (not NaN) on all −inf rows."""

    @staticmethod
    def forward(ctx, x, dim):
        out = torch.logsumexp(x, dim, keepdim=True)
        ctx.save_for_backward(x, out)
        ctx.dim = dim
        return out.squeeze(dim)

    @staticmethod
    def backward(ctx, g):
        x, _ = ctx.saved_tensors
        return softmax_weights(x, ctx.dim) * g.unsqueeze(ctx.dim), None


def logsumexp(x: torch.Tensor, dim: int) -> torch.Tensor:
    """logsumexp whose gradient is finite (0) where every input is −inf.

    ``torch.logsumexp`` returns −inf there but its backward yields NaN, which
    poisons a whole DP through one structurally impossible cell.
    """
    if torch.is_grad_enabled() and x.requires_grad:
        return _SafeLogSumExp.apply(x, dim % x.dim())
    return torch.logsumexp(x, dim)


def _move_to_last(x: torch.Tensor, dim: int) -> torch.Tensor:
    return x.movedim(dim, -1)


class Semiring:
    """Base class. Subclasses define ``size``, ``n_potentials`` and the ops."""

    name: str = "base"
    size: int = 1
    n_potentials: int = 1
    k: int = 1
    #: channels that hold log-weights (shifted by the normaliser of channel 0/1)
    differentiable_sum: bool = True

    # -- construction -------------------------------------------------------
    def zero(self, shape, dtype=torch.float32, device=None) -> torch.Tensor:
        return torch.full((self.size, *shape), NEG_INF, dtype=dtype, device=device)

    def one(self, shape, dtype=torch.float32, device=None) -> torch.Tensor:
        return torch.zeros((self.size, *shape), dtype=dtype, device=device)

    def convert(self, w: torch.Tensor) -> torch.Tensor:
        """Plain potential(s) (P, ...) -> semiring value (S, ...)."""
        w = self._as_potential(w)
        return self.mul_potential(self.one(w.shape[1:], w.dtype, w.device), w)

    def unconvert(self, v: torch.Tensor) -> torch.Tensor:
        return v[0]

    def _as_potential(self, w: torch.Tensor) -> torch.Tensor:
        if self.n_potentials == 1:
            return w.unsqueeze(0)
        return w

    # -- algebra ------------------------------------------------------------
    def mul_potential(self, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        """x ⊗ convert(w); w has leading dim P and broadcasts against x[0]."""
        return x + w

    def times(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return a + b

    def sum(self, x: torch.Tensor, dim: int) -> torch.Tensor:  # pragma: no cover
        raise NotImplementedError

    def sum_dims(self, x: torch.Tensor, dims: tuple[int, ...]) -> torch.Tensor:
        """⊕ over several (adjacent or not) dims at once."""
        nd = x.dim()
        dims = sorted(d % nd for d in dims)
        assert 0 not in dims, "dim 0 is the semiring channel"
        keep = [d for d in range(nd) if d not in dims]
        x = x.permute(*keep, *dims)
        x = x.reshape(*x.shape[: len(keep)], -1)
        return self.sum(x, -1)

    def matmul(self, x: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
        """⊕_{c'} x[..., c'] ⊗ m[..., c', c]: value (S, ..., C') × potential (P, ..., C', C)."""
        return self.sum(self.mul_potential(x.unsqueeze(-1), m), -2)

    def settle_impossible(self, v: torch.Tensor) -> torch.Tensor:
        """Final values (S, B) of a DP: −inf entries are constants; where p's log-weight
        (channel 0) is −inf, statistic channels are 0.

        A sequence with no structure has the value 0̄ = (−inf, ..., 0): its
        entropy / cross-entropy / KL channels are 0, as the dense DP gives.
        The streaming engines keep statistics relative to running
        normalisers, which are meaningless there; this puts 0̄'s value back.
        A −inf value gets a zero gradient (a max over only −inf candidates
        would otherwise route its gradient to an arbitrary, forbidden one).
        """
        stat = self.__dict__.get("_stat_channels")
        if stat is None:  # channels whose 0̄ is finite; found once, on the host (no device sync)
            stat = self.__dict__["_stat_channels"] = torch.isfinite(self.zero((1,))).view(-1).tolist()
        if not any(stat):  # log, max, kmax: one op (small GPU calls are host-bound)
            return torch.where(v == NEG_INF, NEG_INF, v)
        dead = v[0] == NEG_INF
        out = [torch.where(dead, 0.0, v[i]) if stat[i] else torch.where(v[i] == NEG_INF, NEG_INF, v[i])
               for i in range(self.size)]
        return torch.stack(out, 0)

    # -- normalisation ------------------------------------------------------
    def shift(self, x: torch.Tensor) -> torch.Tensor:
        """Per-channel constants (S, B) to subtract from a state x (S, B, ...).

        Any constant works for exactness; it only keeps values O(1). −inf or
        NaN-free by construction (0 where a state is all 0̄).
        """
        m = _finite_or_zero(x[0].detach().flatten(1).amax(1))
        return m.unsqueeze(0).expand(self.size, -1)

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


class _LogSemiring(Semiring):
    name = "log"

    def sum(self, x, dim):
        return logsumexp(x, dim)


class _MaxSemiring(Semiring):
    name = "max"

    def sum(self, x, dim):
        # torch.max routes the gradient to one index: the argmax indicator.
        return x.max(dim).values


class KMaxSemiring(Semiring):
    """The k best scores: ⊕ = top-k of the union, ⊗ = top-k of pairwise sums."""

    name = "kmax"

    def __init__(self, k: int):
        if not isinstance(k, int) or isinstance(k, bool) or k < 1:
            raise ValueError(f"KMaxSemiring: k must be a positive int, got {k!r}")
        self.k = k
        self.size = k

    def one(self, shape, dtype=torch.float32, device=None):
        v = self.zero(shape, dtype, device)
        v[0] = 0
        return v

    def sum(self, x, dim):
        k = self.k
        nd = x.dim()
        dim = dim % nd
        x = _move_to_last(x, dim)  # (k, ..., n)
        x = x.movedim(0, -1)  # (..., n, k)
        x = x.reshape(*x.shape[:-2], -1)
        if x.shape[-1] < k:
            pad = x.new_full((*x.shape[:-1], k - x.shape[-1]), NEG_INF)
            x = torch.cat([x, pad], -1)
        top = x.topk(k, dim=-1).values  # sorted descending
        return top.movedim(-1, 0)

    def times(self, a, b):
        k = self.k
        c = a.unsqueeze(1) + b.unsqueeze(0)  # (k, k, ...)
        c = c.reshape(k * k, *c.shape[2:])
        return c.topk(k, dim=0).values

    def shift(self, x):
        m = _finite_or_zero(x[0].detach().flatten(1).amax(1))
        return m.unsqueeze(0).expand(self.k, -1)

    def __repr__(self):
        return f"KMaxSemiring({self.k})"

    def __eq__(self, other):
        return isinstance(other, KMaxSemiring) and other.k == self.k

    def __hash__(self):
        return hash(("kmax", self.k))


def _normalised(x0: torch.Tensor, dim: int):
    """(log Z, log p, p) of the weights x0 along dim, −inf safe."""
    part = logsumexp(x0, dim)
    log_p = x0 - _finite_or_zero(part).unsqueeze(dim)
    p = log_p.exp()
    # log p is −inf exactly where p = 0; replace it so p·log p has finite grads
    log_p = torch.where(p > 0, log_p, torch.zeros((), dtype=x0.dtype, device=x0.device))
    return part, log_p, p


def _gather_at_argmax(x: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
    """x[b, argmax ref[b]] over the flattened trailing dims (B,)."""
    ref = ref.detach().flatten(1)
    idx = ref.argmax(1, keepdim=True)
    return _finite_or_zero(x.detach().flatten(1).gather(1, idx).squeeze(1))


class _EntropySemiring(Semiring):
    """(log-weight, entropy) pairs; equals torch-struct's EntropySemiring."""

    name = "entropy"
    size = 2

    def unconvert(self, v):
        return v[1]

    def mul_potential(self, x, w):
        head = x[:1] + w
        return torch.cat([head, x[1:].expand(-1, *head.shape[1:])], 0)

    def times(self, a, b):
        return a + b

    def zero(self, shape, dtype=torch.float32, device=None):
        v = torch.zeros((2, *shape), dtype=dtype, device=device)
        v[0] = NEG_INF
        return v

    def sum(self, x, dim):
        if dim < 0:
            dim = x.dim() + dim
        d = dim - 1
        part, log_p, p = _normalised(x[0], d)
        h = (p * (x[1] - log_p)).sum(d)
        return torch.stack([part, h], 0)

    def shift(self, x):
        m0 = _finite_or_zero(x[0].detach().flatten(1).amax(1))
        m1 = _gather_at_argmax(x[1], x[0])
        return torch.stack([m0, m1], 0)


class _TwoDistributionSemiring(Semiring):
    """Base of (log p, log q, statistic) semirings; potentials are (2, ...)."""

    size = 3
    n_potentials = 2

    def unconvert(self, v):
        return v[2]

    def mul_potential(self, x, w):
        head = x[:2] + w
        return torch.cat([head, x[2:].expand(-1, *head.shape[1:])], 0)

    def zero(self, shape, dtype=torch.float32, device=None):
        v = torch.zeros((3, *shape), dtype=dtype, device=device)
        v[:2] = NEG_INF
        return v

    def _stat(self, x2, log_p, p, log_q):  # pragma: no cover
        raise NotImplementedError

    def sum(self, x, dim):
        if dim < 0:
            dim = x.dim() + dim
        d = dim - 1
        part_p, log_p, p = _normalised(x[0], d)
        part_q = logsumexp(x[1], d)
        log_q = x[1] - _finite_or_zero(part_q).unsqueeze(d)
        # where p = 0 the term vanishes whatever q is (no 0·inf)
        log_q = torch.where(p > 0, log_q, torch.zeros((), dtype=x.dtype, device=x.device))
        stat = self._stat(x[2], log_p, p, log_q).sum(d)
        return torch.stack([part_p, part_q, stat], 0)

    def shift(self, x):
        m0 = _finite_or_zero(x[0].detach().flatten(1).amax(1))
        m1 = _finite_or_zero(x[1].detach().flatten(1).amax(1))
        m2 = _gather_at_argmax(x[2], x[0])
        return torch.stack([m0, m1, m2], 0)


class _CrossEntropySemiring(_TwoDistributionSemiring):
    """H[p, q] = −Σ_z p(z) log q(z)."""

    name = "cross_entropy"

    def _stat(self, x2, log_p, p, log_q):
        return p * (x2 - log_q)


class _KLDivergenceSemiring(_TwoDistributionSemiring):
    """KL[p || q] = Σ_z p(z) (log p(z) − log q(z))."""

    name = "kl"

    def _stat(self, x2, log_p, p, log_q):
        return p * (x2 + log_p - log_q)


class _SampleLSE(torch.autograd.Function):
    """logsumexp forward; backward draws one child per selected parent.

    Running the DP's backward with this ⊕ is ancestral sampling from the
    Gibbs distribution (the adjoint that flows is a path indicator).
    """

    @staticmethod
    def forward(ctx, x, dim, generator=None):
        out = logsumexp(x, dim)
        ctx.save_for_backward(x, out)
        ctx.dim, ctx.generator = dim, generator
        return out

    @staticmethod
    def backward(ctx, g):
        x, out = ctx.saved_tensors
        dim = ctx.dim
        logits = x.movedim(dim, -1)
        flat = logits.reshape(-1, logits.shape[-1])
        probs = (flat - _finite_or_zero(out.reshape(-1, 1))).exp()
        dead = probs.sum(-1) <= 0
        probs = torch.where(dead.unsqueeze(-1), torch.ones_like(probs), probs)
        pick = torch.multinomial(probs.float(), 1, generator=ctx.generator).squeeze(-1)
        onehot = torch.zeros_like(flat).scatter_(1, pick.unsqueeze(1), 1.0)
        onehot = onehot.reshape(logits.shape).movedim(-1, dim)
        return onehot * g.unsqueeze(dim), None, None


class _SampledSemiring(_LogSemiring):
    """Log semiring whose gradient is an exact sample instead of marginals.

    ``SampledSemiring.with_generator(generator)`` draws from that torch.Generator.
    """

    name = "sample"

    def __init__(self, generator: torch.Generator | None = None):
        self.generator = generator

    def with_generator(self, generator: torch.Generator | None) -> "_SampledSemiring":
        return _SampledSemiring(generator)

    def sum(self, x, dim):
        return _SampleLSE.apply(x, dim % x.dim(), self.generator)


LogSemiring = _LogSemiring()
MaxSemiring = _MaxSemiring()
EntropySemiring = _EntropySemiring()
CrossEntropySemiring = _CrossEntropySemiring()
KLDivergenceSemiring = _KLDivergenceSemiring()
SampledSemiring = _SampledSemiring()
