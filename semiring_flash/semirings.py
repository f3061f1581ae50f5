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

torch-struct's interface
------------------------
Every semiring also speaks torch-struct's semiring interface, on the same
channel-first values, so torch-struct's own structures (``LinearChain``,
``CKY``, ``DepTree``...) run on these objects: ``size()``, ``zero`` / ``one``
(per-channel 0̄ / 1̄, shape (S,)), ``sum(xs, dim=-1)``, ``plus``, ``mul``,
``times(*xs)``, ``prod``, ``dot``, ``matmul(a, b)`` (value × value batched
matrix product), ``convert`` / ``unconvert``, ``one_`` / ``zero_`` /
``zero_mask_`` (in place) and ``fill``; ``sparse_sum`` where torch-struct
has it. The semirings are instances, so class-style calls
(``LogSemiring.sum(x)``, ``SemiMarkov(MaxSemiring)``) work as they do on
torch-struct's classes, and ``KMaxSemiring(k)`` builds one like torch-struct's
factory does. Unlike torch-struct, 0̄ is −inf (torch-struct fills −1e5).
"""

from __future__ import annotations

import copy
import operator

import torch
from torch.utils.checkpoint import checkpoint

NEG_INF = float("-inf")

__all__ = [
    "Semiring", "LogSemiring", "MaxSemiring", "EntropySemiring", "KMaxSemiring", "CrossEntropySemiring",
    "KLDivergenceSemiring", "SampledSemiring", "MultiSampledSemiring", "StdSemiring", "SparseMaxSemiring",
    "TempMax", "GumbelMaxSemiring", "GumbelCRFSemiring", "CheckpointSemiring", "CheckpointShardSemiring",
    "FastLogSemiring", "FastMaxSemiring", "FastSampleSemiring", "logsumexp", "softmax_weights",
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
    Written out rather than torch.softmax: an all −inf row must give 0 with
    finite second derivatives (differentiable marginals), where softmax gives NaN.
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
        return LogSemiring.plus_grad(x, ctx.dim) * g.unsqueeze(ctx.dim), None


def _is_banded(x) -> bool:
    """A genbmm BandedMatrix (ours or genbmm's own): matched by its methods, not imported here."""
    return not isinstance(x, torch.Tensor) and hasattr(x, "multiply_log") and hasattr(x, "transpose")


def logsumexp(x: torch.Tensor, dim: int) -> torch.Tensor:
    """logsumexp whose gradient is finite (0) where every input is −inf.

    ``torch.logsumexp`` returns −inf there but its backward yields NaN, which
    poisons a whole DP through one structurally impossible cell.
    """
    if torch.is_grad_enabled() and x.requires_grad:
        return _SafeLogSumExp.apply(x, dim % x.dim())
    return torch.logsumexp(x, dim)


class Semiring:
    """Base class. Subclasses define the per-channel ``_zero`` / ``_one``, ``n_potentials`` and the ops."""

    name: str = "base"
    n_potentials: int = 1
    k: int = 1
    #: per-channel 0̄ and 1̄; their length is the channel count S = size()
    _zero: tuple = (NEG_INF,)
    _one: tuple = (0.0,)
    #: ⊗ adds scores and 0̄ is −inf, so the engines' log-space normaliser (``shift``) applies
    log_space: bool = True
    # Identity for the compiled engines. A subclass that changes ⊕ or its gradient
    # must reset these (the engines would otherwise run the parent's closed forms).
    #: id of this semiring's pieces in ops/triton/semiring.py; None: no Triton kernel
    triton_id: int | None = None
    #: closed-form gradient of ⊕ the engines may use instead of autograd:
    #: "softmax" (log), "argmax" (max), or None (autograd through ``sum``)
    plus_vjp: str | None = None
    #: the gradient of the value is piecewise constant (an indicator): marginals carry no graph
    indicator_gradient: bool = False

    # -- construction -------------------------------------------------------
    def size(self) -> int:
        """Number of channels S (torch-struct's ``size()``)."""
        return len(self._zero)

    @property
    def zero(self) -> float | torch.Tensor:
        """0̄ (torch-struct's ``zero``): a number for a one-channel semiring, as torch-struct code uses
        it (``torch.full(shape, sr.zero)``, ``x.masked_fill(mask, sr.zero)``); per channel, (S,), otherwise."""
        return self._zero[0] if len(self._zero) == 1 else torch.tensor(self._zero)

    @property
    def one(self) -> float | torch.Tensor:
        """1̄, like ``zero``: a number for a one-channel semiring, else (S,)."""
        return self._one[0] if len(self._one) == 1 else torch.tensor(self._one)

    @staticmethod
    def _filled(values, shape, dtype, device) -> torch.Tensor:
        out = torch.empty((len(values), *shape), dtype=dtype, device=device)
        return Semiring._fill_channels(out, values)

    @staticmethod
    def _fill_channels(xs, values, mask=None):
        for s, v in enumerate(values):  # Python scalars: no host-device copy
            if mask is None:
                xs[s].fill_(v)
            else:
                xs[s].masked_fill_(mask, v)
        return xs

    def zeros(self, shape, dtype=torch.float32, device=None) -> torch.Tensor:
        """0̄ of shape (S, *shape)."""
        return self._filled(self._zero, shape, dtype, device)

    def ones(self, shape, dtype=torch.float32, device=None) -> torch.Tensor:
        """1̄ of shape (S, *shape)."""
        return self._filled(self._one, shape, dtype, device)

    def zero_(self, xs: torch.Tensor) -> torch.Tensor:
        """Fill a value (S, ...) with 0̄ in place."""
        return self._fill_channels(xs, self._zero)

    def one_(self, xs: torch.Tensor) -> torch.Tensor:
        """Fill a value (S, ...) with 1̄ in place."""
        return self._fill_channels(xs, self._one)

    def zero_mask_(self, xs: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Set xs[:, mask] to 0̄ in place (mask broadcasts against xs[0])."""
        return self._fill_channels(xs, self._zero, mask)

    def fill(self, c: torch.Tensor, mask: torch.Tensor, v) -> torch.Tensor:
        """Out of place: channel vector v (S,) (or a number) where mask, c elsewhere (mask broadcasts against c[0])."""
        v = torch.as_tensor(v, dtype=c.dtype, device=c.device).view((-1,) + (1,) * (c.dim() - 1))
        return torch.where(mask.to(c.device), v, c)

    def convert(self, w: torch.Tensor) -> torch.Tensor:
        """Plain potential(s) (P, ...) -> semiring value (S, ...)."""
        w = self._as_potential(w)
        return self.mul_potential(self.ones(w.shape[1:], w.dtype, w.device), w)

    def unconvert(self, v: torch.Tensor) -> torch.Tensor:
        """Semiring value (S, ...) -> the score: torch-struct squeezes the channel dim (a no-op when
        it is not 1; the squeeze's backward is a view, where [0]'s fills zeros and copies)."""
        return v.squeeze(0)

    def _as_potential(self, w) -> torch.Tensor:
        if self.n_potentials == 1:
            return w.unsqueeze(0)
        return torch.stack(list(w)) if isinstance(w, (list, tuple)) else w  # torch-struct passes [p, q]

    # -- algebra ------------------------------------------------------------
    def mul_potential(self, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        """x ⊗ convert(w); w has leading dim P and broadcasts against x[0]."""
        return x + w

    def mul(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        """a ⊗ b on values (broadcasting)."""
        return a + b

    def times(self, *xs: torch.Tensor) -> torch.Tensor:
        """x1 ⊗ x2 ⊗ ... on values."""
        out = xs[0]
        for x in xs[1:]:
            out = self.mul(out, x)
        return out

    def prod(self, x: torch.Tensor, dim: int = -1) -> torch.Tensor:
        """⊗ over ``dim`` of scores: plain potentials, or values built by ``convert``.

        That is what torch-struct uses it for (scoring parts, its enumeration
        tests); on those ⊗ adds scores in every semiring here, KMax included.
        """
        return x.sum(dim)

    def sum(self, x: torch.Tensor, dim: int = -1) -> torch.Tensor:  # pragma: no cover
        """⊕ over ``dim`` (a dim of the full value; dim 0 is the channel)."""
        raise NotImplementedError

    def plus(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return self.sum(torch.stack([a, b], -1), -1)

    def plus_grad(self, x: torch.Tensor, dim: int, dtype: torch.dtype | None = None) -> torch.Tensor:
        """∂(⊕ x along dim)/∂x in closed form, for semirings whose ``plus_vjp`` is set.

        The engines' hand-written backward passes use it instead of autograd;
        ``dtype`` computes the weights in a wider type (float64 adjoints, see
        :func:`softmax_weights`). Semirings without ``plus_vjp`` raise.
        """
        if self.plus_vjp is None:
            raise NotImplementedError(f"{self!r} has no closed-form ⊕ gradient (plus_vjp is None)")
        return self._plus_grad(x, dim, dtype)

    def sum_dims(self, x: torch.Tensor, dims: tuple[int, ...]) -> torch.Tensor:
        """⊕ over several (adjacent or not) dims at once."""
        nd = x.dim()
        dims = sorted(d % nd for d in dims)
        assert 0 not in dims, "dim 0 is the semiring channel"
        keep = [d for d in range(nd) if d not in dims]
        x = x.permute(*keep, *dims)
        x = x.reshape(*x.shape[: len(keep)], -1)
        return self.sum(x, -1)

    def matmul(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        """Value × value matrix product: (S, ..., n, k) ⊗ (S, ..., k, m) -> (S, ..., n, m), batch dims broadcast;
        genbmm banded matrices take the semiring's banded product (subclasses override ``_dense_matmul``)."""
        if _is_banded(a):
            return self._banded_matmul(a, b)
        return self._dense_matmul(a, b)

    def _dense_matmul(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return self.sum(self.mul(a.unsqueeze(-1), b.unsqueeze(-3)), -2)

    #: the genbmm BandedMatrix product of this semiring (torch-struct's Log, Max and Std have one); None: none
    banded_product: str | None = None

    def _banded_matmul(self, a, b):
        """torch-struct's ``matmul`` of genbmm banded matrices (its Alignment): b.multiply_*(a.transpose())."""
        if self.banded_product is None:
            raise TypeError(f"{self!r} has no banded-matrix product (torch-struct's Log, Max and Std semirings have one)")
        return getattr(b, self.banded_product)(a.transpose())

    def dot(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        """⊕_i a[..., i] ⊗ b[..., i] (through ``matmul``, so its overrides apply)."""
        return self.matmul(a.unsqueeze(-2), b.unsqueeze(-1)).squeeze(-1).squeeze(-1)

    def matmul_potential(self, x: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
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
        stat = [z != NEG_INF for z in self._zero]  # statistic channels: their 0̄ is finite (host-side, no tensors)
        if not any(stat):  # log, max, kmax: one op (small GPU calls are host-bound)
            return torch.where(v == NEG_INF, NEG_INF, v)
        dead = v[0] == NEG_INF
        out = [torch.where(dead, 0.0, v[i]) if stat[i] else torch.where(v[i] == NEG_INF, NEG_INF, v[i])
               for i in range(len(stat))]
        return torch.stack(out, 0)

    # -- normalisation ------------------------------------------------------
    def shift(self, x: torch.Tensor) -> torch.Tensor:
        """Per-channel constants (S, B) to subtract from a state x (S, B, ...).

        Any constant works for exactness; it only keeps values O(1). −inf or
        NaN-free by construction (0 where a state is all 0̄).
        """
        m = _finite_or_zero(x[0].detach().flatten(1).amax(1))
        return m.unsqueeze(0).expand(self.size(), -1)

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


class _LogSemiring(Semiring):
    name = "log"
    triton_id = 0
    plus_vjp = "softmax"
    banded_product = "multiply_log"

    def sum(self, x, dim=-1):
        return logsumexp(x, dim)

    @staticmethod
    def _plus_grad(x, dim, dtype):
        return softmax_weights(x, dim, dtype)  # explicitly normalised: see its docstring


class _MaxSemiring(Semiring):
    name = "max"
    triton_id = 1
    plus_vjp = "argmax"
    indicator_gradient = True
    banded_product = "multiply_max"

    def sum(self, x, dim=-1):
        # torch.max routes the gradient to one index: the argmax indicator.
        return x.max(dim).values

    @staticmethod
    def _plus_grad(x, dim, dtype):
        idx = x.argmax(dim, keepdim=True)  # the one index torch.max routes the gradient to
        return torch.zeros(x.shape, dtype=dtype or x.dtype, device=x.device).scatter_(dim, idx, 1.0)

    def sparse_sum(self, x, dim=-1):
        """(max, (zeros, argmax)) like torch-struct's: the value and which input it came from."""
        m, a = x.max(dim)
        return m, (torch.zeros_like(a), a)


class KMaxSemiring(Semiring):
    """The k best scores: ⊕ = top-k of the union, ⊗ = top-k of pairwise sums.

    ``KMaxSemiring(k)`` is used like torch-struct's factory of the same name.
    """

    name = "kmax"
    triton_id = 3
    indicator_gradient = True

    def __init__(self, k: int):
        try:  # any integer (numpy ints, 0-d integer tensors: torch-struct takes them), not bool or float
            k_int = None if isinstance(k, bool) else operator.index(k)
        except TypeError:
            k_int = None
        if k_int is None or k_int < 1:
            raise ValueError(f"KMaxSemiring: k must be a positive int, got {k!r}")
        self.k = k = k_int
        self._zero = (NEG_INF,) * k
        self._one = (0.0,) + (NEG_INF,) * (k - 1)

    def unconvert(self, v: torch.Tensor) -> torch.Tensor:
        return v[0]  # the best score (torch-struct's KMax indexes too)

    def _top(self, x, dim):
        """(values, flat indices) of the k best over (channel, dim), channel-first."""
        k = self.k
        x = x.movedim(dim % x.dim(), -1)  # (k, ..., n)
        x = x.movedim(0, -1)  # (..., n, k): flat index = i * k + channel
        x = x.reshape(*x.shape[:-2], -1)
        if x.shape[-1] < k:
            pad = x.new_full((*x.shape[:-1], k - x.shape[-1]), NEG_INF)
            x = torch.cat([x, pad], -1)
        top = x.topk(k, dim=-1)  # sorted descending
        return top.values.movedim(-1, 0), top.indices.movedim(-1, 0)

    def sum(self, x, dim=-1):
        return self._top(x, dim)[0]

    def sparse_sum(self, x, dim=-1):
        """(top-k, (source channel, source index)) like torch-struct's."""
        values, flat = self._top(x, dim)
        return values, (flat % self.k, torch.div(flat, self.k, rounding_mode="floor"))

    def mul(self, a, b):
        k = self.k
        c = a.unsqueeze(1) + b.unsqueeze(0)  # (k, k, ...)
        c = c.reshape(k * k, *c.shape[2:])
        return c.topk(k, dim=0).values

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


class _StatisticSemiring(Semiring):
    """Base of the semirings whose value is P log-weights (one per distribution) then a statistic;
    potentials are (P, ...), P = ``n_potentials``."""

    def unconvert(self, v):
        return v[self.n_potentials]

    def mul_potential(self, x, w):
        head = x[: self.n_potentials] + w
        return torch.cat([head, x[self.n_potentials:].expand(-1, *head.shape[1:])], 0)

    def shift(self, x):
        P = self.n_potentials
        logs = [_finite_or_zero(x[i].detach().flatten(1).amax(1)) for i in range(P)]
        return torch.stack(logs + [_gather_at_argmax(x[P], x[0])], 0)


class _EntropySemiring(_StatisticSemiring):
    """(log-weight, entropy) pairs; equals torch-struct's EntropySemiring."""

    name = "entropy"
    triton_id = 2
    _zero = (NEG_INF, 0.0)
    _one = (0.0, 0.0)

    def sum(self, x, dim=-1):
        d = dim % x.dim() - 1
        part, log_p, p = _normalised(x[0], d)
        h = (p * (x[1] - log_p)).sum(d)
        return torch.stack([part, h], 0)


class _TwoDistributionSemiring(_StatisticSemiring):
    """Base of (log p, log q, statistic) semirings; potentials are (2, ...)."""

    n_potentials = 2
    _zero = (NEG_INF, NEG_INF, 0.0)
    _one = (0.0, 0.0, 0.0)

    def _stat(self, x2, log_p, p, log_q):  # pragma: no cover
        raise NotImplementedError

    def sum(self, x, dim=-1):
        d = dim % x.dim() - 1
        part_p, log_p, p = _normalised(x[0], d)
        part_q = logsumexp(x[1], d)
        log_q = x[1] - _finite_or_zero(part_q).unsqueeze(d)
        # where p = 0 the term vanishes whatever q is, and whatever the statistic so far (+inf
        # where p put mass on q's zeros): no 0·inf, forward or backward
        zero = torch.zeros((), dtype=x.dtype, device=x.device)
        log_q = torch.where(p > 0, log_q, zero)
        x2 = torch.where(p > 0, x[2], zero)
        stat = self._stat(x2, log_p, p, log_q).sum(d)
        return torch.stack([part_p, part_q, stat], 0)


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


def _child_probs(x: torch.Tensor, out: torch.Tensor, dim: int):
    """For the samplers' backward: x as rows (R, n) with ``dim`` last, that moved shape, and
    each row's draw weights exp(x − logsumexp) (uniform on all −inf rows, whose adjoint is 0)."""
    moved = x.movedim(dim, -1)
    rows = moved.reshape(-1, moved.shape[-1])
    probs = (rows - _finite_or_zero(out.reshape(-1, 1))).exp()
    probs = torch.where((probs.sum(-1) > 0).unsqueeze(-1), probs, torch.ones_like(probs))
    return rows, moved.shape, probs.float()


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
        flat, moved, probs = _child_probs(x, out, dim)
        pick = torch.multinomial(probs, 1, generator=ctx.generator).squeeze(-1)
        onehot = torch.zeros_like(flat).scatter_(1, pick.unsqueeze(1), 1.0)
        onehot = onehot.reshape(moved).movedim(-1, dim)
        return onehot * g.unsqueeze(dim), None, None


class _SampledSemiring(_LogSemiring):
    """Log semiring whose gradient is an exact sample instead of marginals.

    ``SampledSemiring.with_generator(generator)`` draws from that torch.Generator.
    """

    name = "sample"
    triton_id = None
    plus_vjp = None

    def __init__(self, generator: torch.Generator | None = None):
        self.generator = generator

    def with_generator(self, generator: torch.Generator | None) -> "_SampledSemiring":
        return _SampledSemiring(generator)

    def sum(self, x, dim=-1):
        return _SampleLSE.apply(x, dim % x.dim(), self.generator)


MULTI_SAMPLES = 16


class _MultiSampleLSE(_SampleLSE):
    """logsumexp forward; backward draws ``MULTI_SAMPLES`` children per parent, one per bit.

    The adjoint is an integer bit mask: bit i+1 set means sample i passes
    through this cell; bit 0 (the adjoint 1 that starts the backward) means
    every sample does. torch-struct's MultiSampledSemiring uses this encoding.
    """

    @staticmethod
    def backward(ctx, g):
        x, out = ctx.saved_tensors
        dim = ctx.dim
        rows, moved, probs = _child_probs(x, out, dim)
        picks = torch.multinomial(probs, MULTI_SAMPLES, replacement=True)  # (R, n_samples)
        mask = g.reshape(-1, 1).round().long()
        bit = torch.arange(1, MULTI_SAMPLES + 1, device=x.device)
        active = ((mask >> bit) & 1) | (mask & 1)  # (R, n_samples)
        grad = torch.zeros_like(rows)
        grad.scatter_add_(1, picks, (active << bit).to(rows.dtype))
        return grad.reshape(moved).movedim(-1, dim), None


class _MultiSampledSemiring(_LogSemiring):
    """Log semiring whose gradient encodes ``MULTI_SAMPLES`` exact samples as bits (see ``to_discrete``)."""

    name = "multisample"
    triton_id = None
    plus_vjp = None

    def sum(self, x, dim=-1):
        return _MultiSampleLSE.apply(x, dim % x.dim())

    @staticmethod
    def to_discrete(grad: torch.Tensor, j: int) -> torch.Tensor:
        """Indicator of sample j (bit j+1 of the marginals, or bit 0 meaning all)."""
        mask = grad.round().long()
        return (((mask >> (j + 1)) & 1) | (mask & 1)).to(grad.dtype)


class _StdSemiring(Semiring):
    """The counting semiring (+, ×, 0, 1) on plain (not log) weights."""

    name = "std"
    banded_product = "multiply"
    _zero = (0.0,)
    _one = (1.0,)
    log_space = False

    def mul_potential(self, x, w):
        return x * w

    def mul(self, a, b):
        return a * b

    def prod(self, x, dim=-1):
        return x.prod(dim)

    def sum(self, x, dim=-1):
        return x.sum(dim)

    def _dense_matmul(self, a, b):
        return torch.matmul(a, b)

    def shift(self, x):  # pragma: no cover - not log-space: the engines refuse it
        raise TypeError("StdSemiring is not log-space; it has no shift")


def _project_simplex(x: torch.Tensor) -> torch.Tensor:
    """Euclidean projection of each row (last dim) onto the probability simplex (sparsemax)."""
    srt = x.sort(-1, descending=True).values
    cum = srt.cumsum(-1) - 1
    rank = torch.arange(1, x.shape[-1] + 1, dtype=x.dtype, device=x.device)
    support = (srt - cum / rank > 0).sum(-1, keepdim=True)  # ≥ 1: the top entry always qualifies
    tau = cum.gather(-1, support - 1) / support.to(x.dtype)
    return (x - tau).clamp(min=0)


class _SparseMaxSemiring(Semiring):
    """⊕ = max_p <p, x> + ½(1 − ‖p‖²) over the simplex; its gradient is sparsemax(x).

    The constant ½ makes −inf the identity (x ⊕ 0̄ = x; one structure's value
    is its score), so max ≤ ⊕ ≤ max + ½. Written with differentiable torch
    ops, so marginals (its gradients) are differentiable too. −inf entries
    get p = 0; an all −inf row gives −inf.
    """

    name = "sparsemax"

    def sum(self, x, dim=-1):
        moved = x.movedim(dim % x.dim(), -1)
        top = moved.detach().amax(-1, keepdim=True)
        dead = top == NEG_INF
        # entries below max − 1 never enter the support: clamping −inf there changes nothing
        floor = torch.where(dead, torch.zeros((), dtype=x.dtype, device=x.device), top) - 2
        xs = torch.maximum(moved, floor)
        p = _project_simplex(xs)
        value = (p * xs).sum(-1) + 0.5 * (1 - (p * p).sum(-1))
        return torch.where(dead.squeeze(-1), torch.full((), NEG_INF, dtype=x.dtype, device=x.device), value)


class _MaxSoftBackward(torch.autograd.Function):
    """max forward, softmax(alpha · x) backward ("hot" softmax)."""

    @staticmethod
    def forward(ctx, x, dim, alpha):
        ctx.save_for_backward(x)
        ctx.dim, ctx.alpha = dim, alpha
        return x.max(dim).values

    @staticmethod
    def backward(ctx, g):
        (x,) = ctx.saved_tensors
        return softmax_weights(ctx.alpha * x, ctx.dim) * g.unsqueeze(ctx.dim), None, None


class TempMax(_MaxSemiring):
    """``TempMax(alpha)``: max forward, softmax(alpha · x) gradient (torch-struct's factory of the same name)."""

    name = "tempmax"
    triton_id = None
    plus_vjp = None
    indicator_gradient = False

    def __init__(self, alpha: float):
        self.alpha = float(alpha)

    def sum(self, x, dim=-1):
        return _MaxSoftBackward.apply(x, dim % x.dim(), self.alpha)

    def sparse_sum(self, x, dim=-1):
        m = x.max(dim).values
        return m, (torch.zeros(m.shape, dtype=torch.long, device=x.device), softmax_weights(self.alpha * x, dim))

    def __repr__(self):
        return f"TempMax({self.alpha})"


class _GumbelLSE(torch.autograd.Function):
    """logsumexp forward; backward picks argmax((x + Gumbel noise) / temp): an exact sample.

    With ``straight_through`` the one-hot pick carries the gradient of
    softmax((x + noise) / temp) when the backward is itself differentiated
    (``create_graph=True``): the Gumbel-CRF relaxation.
    """

    @staticmethod
    def forward(ctx, x, dim, temp, straight_through):
        ctx.save_for_backward(x)
        ctx.dim, ctx.temp, ctx.straight_through = dim, temp, straight_through
        return logsumexp(x, dim)

    @staticmethod
    def backward(ctx, g):
        (x,) = ctx.saved_tensors
        u = torch.rand_like(x).clamp(min=torch.finfo(x.dtype).tiny, max=1 - torch.finfo(x.dtype).eps)
        noisy = (x - (-u.log()).log()) / ctx.temp  # −inf stays −inf: never picked unless a row is all −inf
        pick = noisy.detach().argmax(ctx.dim, keepdim=True)
        hard = torch.zeros_like(x).scatter_(ctx.dim, pick, 1.0)
        if ctx.straight_through:
            soft = softmax_weights(noisy, ctx.dim)
            hard = hard + (soft - soft.detach())  # exactly the one-hot forward; softmax gradient
        return hard * g.unsqueeze(ctx.dim), None, None, None


class GumbelMaxSemiring(_LogSemiring):
    """``GumbelMaxSemiring(temp)``: log semiring whose gradient is a Gumbel-max sample (torch-struct's factory)."""

    name = "gumbelmax"
    triton_id = None
    plus_vjp = None
    _straight_through = False

    def __init__(self, temp: float = 1.0):
        if not float(temp) > 0:
            raise ValueError(f"{type(self).__name__}: temp must be > 0, got {temp!r}")
        self.temp = float(temp)

    def sum(self, x, dim=-1):
        return _GumbelLSE.apply(x, dim % x.dim(), self.temp, self._straight_through)

    def __repr__(self):
        return f"{type(self).__name__}({self.temp})"


class GumbelCRFSemiring(GumbelMaxSemiring):
    """``GumbelCRFSemiring(temp)``: Gumbel-max samples with a straight-through softmax((x + g) / temp) gradient."""

    name = "gumbelcrf"
    _straight_through = True


def _broadcast_rows(a: torch.Tensor, b: torch.Tensor):
    """a (..., n, k), b (..., k, m) -> (a3 (R, n, k), b3 (R, k, m), batch shape) over the broadcast batch dims."""
    batch = torch.broadcast_shapes(a.shape[:-2], b.shape[:-2])
    a3 = a.expand(*batch, *a.shape[-2:]).reshape(-1, *a.shape[-2:])
    b3 = b.expand(*batch, *b.shape[-2:]).reshape(-1, *b.shape[-2:])
    return a3, b3, batch


class _CheckpointMatmul:
    """Mixin: ``matmul`` recomputed in backward instead of storing its (..., n, k, m) product.

    With ``_max_size`` set, the product is also built in shards of at most
    about that many elements (torch-struct's CheckpointShardSemiring).
    """

    _min_size: int = 0
    _max_size: int | None = None

    def _dense_matmul(self, a, b):
        base = super()._dense_matmul
        a3, b3, batch = _broadcast_rows(a, b)
        n, k, m = a3.shape[1], a3.shape[2], b3.shape[2]
        if a3.shape[0] * n * k * m <= self._min_size:
            return base(a, b)
        # dim 0 is the semiring channel: keep it, and shard only the other batch rows
        S = batch[0] if batch else 1
        a4, b4 = a3.reshape(S, -1, n, k), b3.reshape(S, -1, k, m)
        rows = a4.shape[1] if self._max_size is None else max(1, self._max_size // (S * n * k * m))
        out = torch.cat(
            [checkpoint(base, a4[:, i : i + rows], b4[:, i : i + rows], use_reentrant=False) for i in range(0, a4.shape[1], rows)],
            1,
        )
        return out.reshape(*batch, n, m)

    def __repr__(self):
        return f"{self._wrapper}({self._base!r})"


def _wrap(semiring, mixin, label, **attrs):
    """A copy of ``semiring`` (same channels, same state) whose class adds ``mixin``'s methods."""
    if not isinstance(semiring, Semiring):
        raise TypeError(f"{label}: semiring must be a semiring_flash semiring (e.g. LogSemiring), got {semiring!r}")
    out = copy.copy(semiring)
    out.__class__ = type(f"{label}{type(semiring).__name__}", (mixin, type(semiring)), {})
    for key, value in attrs.items():
        setattr(out, key, value)
    out._base, out._wrapper = semiring, label
    return out


def CheckpointSemiring(semiring, min_size: int = 0) -> Semiring:
    """``semiring`` whose ``matmul`` is checkpointed above ``min_size`` elements (torch-struct's factory)."""
    return _wrap(semiring, _CheckpointMatmul, "CheckpointSemiring", _min_size=int(min_size))


def CheckpointShardSemiring(semiring, max_size: int, min_size: int = 0) -> Semiring:
    """``semiring`` whose ``matmul`` is checkpointed and built in shards of about ``max_size`` elements."""
    if int(max_size) < 1:
        raise ValueError(f"CheckpointShardSemiring: max_size must be >= 1, got {max_size!r}")
    return _wrap(semiring, _CheckpointMatmul, "CheckpointShardSemiring", _min_size=int(min_size), _max_size=int(max_size))


class _GenbmmMatmul:
    """Mixin: ``matmul`` through a fused kernel of :mod:`semiring_flash.genbmm` (``_kernel``: its name)."""

    _kernel: str = "logbmm"

    def _dense_matmul(self, a, b):
        from . import genbmm  # imported on use: the kernels are optional

        a3, b3, batch = _broadcast_rows(a, b)
        return getattr(genbmm, self._kernel)(a3.contiguous(), b3.contiguous()).reshape(*batch, a3.shape[1], b3.shape[2])

    def __repr__(self):
        return f"{self._wrapper}()"


LogSemiring = _LogSemiring()
MaxSemiring = _MaxSemiring()
EntropySemiring = _EntropySemiring()
CrossEntropySemiring = _CrossEntropySemiring()
KLDivergenceSemiring = _KLDivergenceSemiring()
SampledSemiring = _SampledSemiring()
MultiSampledSemiring = _MultiSampledSemiring()
StdSemiring = _StdSemiring()
SparseMaxSemiring = _SparseMaxSemiring()
#: Log / Max / Sampled semirings whose ``matmul`` runs semiring_flash.genbmm's fused kernels
FastLogSemiring = _wrap(LogSemiring, _GenbmmMatmul, "FastLogSemiring", _kernel="logbmm")
FastMaxSemiring = _wrap(MaxSemiring, _GenbmmMatmul, "FastMaxSemiring", _kernel="maxbmm")
FastSampleSemiring = _wrap(SampledSemiring, _GenbmmMatmul, "FastSampleSemiring", _kernel="samplebmm")
