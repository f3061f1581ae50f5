"""Drop-in replacement for the ``torch_struct`` module (torch-struct 0.5).

Switch existing code with one line::

    import semiring_flash.torch_struct as torch_struct      # was: import torch_struct
    from semiring_flash.torch_struct import SemiMarkovCRF, LinearChainCRF   # was: from torch_struct import ...

Every public name of torch-struct 0.5 is here:

* **Ours**: ``SemiMarkovCRF(log_potentials, lengths=None, args={})`` (extra
  keyword ``backend``; it also accepts a :class:`semiring_flash.SegmentPotentials`,
  the factored, streamed path), ``SemiMarkov(semiring)`` (``sum, marginals,
  score, logpartition, to_parts, from_parts, hsmm``) and the semirings
  ``Semiring, LogSemiring, MaxSemiring, EntropySemiring, KMaxSemiring(k),
  CrossEntropySemiring, KLDivergenceSemiring, SampledSemiring,
  MultiSampledSemiring, StdSemiring, SparseMaxSemiring, TempMax(alpha),
  GumbelMaxSemiring(temp), GumbelCRFSemiring(temp),
  CheckpointSemiring(sr, min_size), CheckpointShardSemiring(sr, max_size,
  min_size), FastLogSemiring, FastMaxSemiring, FastSampleSemiring`` (the
  ``Fast*`` ones run :mod:`semiring_flash.genbmm`). They speak torch-struct's
  semiring interface, so torch-struct's own structures run on them.
* **Re-exported** from the installed ``torch_struct`` (``pip install
  semiring_flash[torch-struct]``): every other structure and distribution
  (``LinearChain(CRF)``, ``HMM``, ``CKY``, ``TreeCRF``, ``SentCFG``,
  ``CKY_CRF``, ``DepTree``, ``DependencyCRF``, ``NonProjectiveDependencyCRF``,
  ``deptree_part``, ``deptree_nonproj``, ``Alignment(CRF)``,
  ``Autoregressive(Model)``, ``Chart``...),
  so a file that imports ``LinearChainCRF`` beside ``SemiMarkovCRF`` keeps
  working. Without torch-struct, touching one of them raises
  :class:`NotProvidedError` (an ``AttributeError``) naming the extra.
* ``StructDistribution``: ``isinstance(d, StructDistribution)`` is true for
  our ``SemiMarkovCRF`` and for every torch-struct distribution; subclassing it
  subclasses torch-struct's ``StructDistribution`` (needs torch-struct).

``SemiMarkov(semiring)`` also takes semirings the way torch-struct code gives
them: torch-struct's own semiring classes (mapped by name, ``KMaxSemiring(k)``
by its ``size()``); a semiring our engines do not run (counting, a user's own
torch-struct-style class) gets torch-struct's own ``SemiMarkov``.

Differences from torch-struct 0.5 (table in docs/migrating.md): mixed-length
batches are right (torch-struct 0.5 gets them wrong); inputs are never given
``requires_grad`` (torch-struct calls ``requires_grad_`` on them); 0̄ is −inf
(torch-struct: about −1e5), so no NaN; SparseMax's ⊕ is the smoothed max whose
gradient is sparsemax; ``argmax``/``topk``/``sample`` carry no graph.
"""

from __future__ import annotations

import torch as _torch

from . import distribution as _distribution
from . import semirings as _sr
from . import struct as _struct
from .ops import dispatch
from .potentials import SegmentPotentials

try:  # the real package, for the structures that are not ours
    import torch_struct as _ts
except ImportError:  # pragma: no cover - exercised by tests that hide torch_struct
    _ts = None


def _lend_banded_matrices() -> None:
    """torch-struct's Alignment builds ``genbmm.BandedMatrix`` and cannot run without genbmm (a CUDA
    build); where genbmm is not installed its module gets ours (semiring_flash.genbmm), whose banded
    products our Log/Max/Std semirings' ``matmul`` take, as torch-struct's do with genbmm's."""
    import importlib.util
    import sys

    alignment = sys.modules.get("torch_struct.alignment")
    if alignment is not None and not hasattr(alignment, "genbmm") and importlib.util.find_spec("genbmm") is None:
        from . import genbmm

        alignment.genbmm = genbmm


if _ts is not None:
    _lend_banded_matrices()

version = "0.5"  # the torch-struct API this module mirrors
EXTRA = "torch-struct"  # pyproject extra that installs the real package

from .semirings import (  # noqa: F401 (ours, under torch-struct's names; KMaxSemiring(k) builds a semiring)
    CheckpointSemiring, CheckpointShardSemiring, CrossEntropySemiring, EntropySemiring, FastLogSemiring,
    FastMaxSemiring, FastSampleSemiring, GumbelCRFSemiring, GumbelMaxSemiring, KLDivergenceSemiring, KMaxSemiring,
    LogSemiring, MaxSemiring, MultiSampledSemiring, SampledSemiring, Semiring, SparseMaxSemiring, StdSemiring,
    TempMax,
)

#: torch-struct's semiring classes that stand for one of our instances, by name
_BY_NAME = {name: getattr(_sr, name) for name in (
    "LogSemiring", "MaxSemiring", "EntropySemiring", "CrossEntropySemiring", "KLDivergenceSemiring",
    "SampledSemiring", "MultiSampledSemiring", "SparseMaxSemiring", "FastLogSemiring", "FastMaxSemiring",
    "FastSampleSemiring",
)}

#: torch-struct 0.5's public names that are not ours: taken from the installed package
REEXPORTED = (
    # structures, their distributions and helpers
    "LinearChain", "LinearChainCRF", "HMM", "CKY", "CKY_CRF", "TreeCRF", "SentCFG", "DepTree",
    "DependencyCRF", "NonProjectiveDependencyCRF", "deptree_part", "deptree_nonproj", "convert", "unconvert",
    "Alignment", "AlignmentCRF", "Autoregressive", "AutoregressiveModel", "Chart", "Distribution",
    # module-level helpers and submodules torch-struct happens to expose
    "A", "B", "C", "I", "L", "R", "Open", "Close", "Mid", "Up", "Down", "bits", "broadcast", "broadcast_size",
    "matmul", "matmul_size", "accumulate_", "unaccumulate_", "mind", "ones", "project_simplex",
    "sparsemax_grad", "has_genbmm", "lazy_property", "unwrap", "wrap", "math", "torch",
    "alignment", "autoregressive", "checkpoint", "cky", "cky_crf", "deptree", "distributions",
    "fast_semirings", "helpers", "linearchain", "sample", "semimarkov", "semirings", "sparse_max",
)


class NotProvidedError(AttributeError):
    """A torch-struct name that needs the real torch-struct, which is not installed."""


def as_semiring(semiring) -> _sr.Semiring:
    """Turn what torch-struct code passes as a semiring into a semiring_flash instance.

    Accepts semiring_flash instances, their classes (``type(LogSemiring)``),
    and torch-struct semiring classes (``torch_struct.MaxSemiring``, the class
    ``torch_struct.KMaxSemiring(k)`` returns, ...), matched by name.
    """
    ours = _mapped(semiring)
    if ours is None:
        supported = ", ".join(list(_BY_NAME) + ["KMaxSemiring(k)", "TempMax(alpha)", "Checkpoint(Shard)Semiring(...)"])
        raise TypeError(f"semiring {semiring!r} is not supported by semiring_flash's SemiMarkov; supported: {supported}")
    return ours


def _mapped(semiring) -> _sr.Semiring | None:
    """Our instance for what torch-struct code passes as a semiring; None for one we do not map."""
    if isinstance(semiring, _sr.Semiring):
        return semiring
    if isinstance(semiring, type):
        for ours in _BY_NAME.values():
            if semiring is type(ours):
                return ours
        if issubclass(semiring, _sr.KMaxSemiring):
            raise TypeError("pass KMaxSemiring(k) (an instance with its k), not the KMaxSemiring class")
        if not str(getattr(semiring, "__module__", "")).startswith("torch_struct"):
            return None  # a user's class, whatever its name: its own operations may differ from ours
        name = semiring.__name__
        if name == "KMaxSemiring" and callable(getattr(semiring, "size", None)):
            return _sr.KMaxSemiring(int(semiring.size()))  # torch-struct's KMaxSemiring(k) class
        return _BY_NAME.get(name)
    return None


class SemiMarkov(_struct.SemiMarkov):
    """torch-struct's ``SemiMarkov`` struct; ``semiring`` may be a class, as torch-struct code passes it.

    Two-distribution semirings (cross-entropy, KL) take ``[p_edges, q_edges]``,
    as torch-struct's distributions pass them. A semiring our engines do not run (not
    log-space like ``StdSemiring``, a torch-struct class we do not map such as
    ``GumbelCRFSemiring(t)`` or a ``CheckpointSemiring`` of one, or a user's own torch-struct-style
    semiring class) gets torch-struct's own ``SemiMarkov`` (materialized, with its mixed-length
    limitation) when torch-struct is installed, so such code keeps working; else a TypeError.
    """

    def __new__(cls, semiring=LogSemiring, backend: str = "auto"):
        ours = _mapped(semiring)
        if (ours is None or not ours.log_space) and _ts is not None and cls is SemiMarkov:
            return _ts.SemiMarkov(semiring)
        return super().__new__(cls)

    def __init__(self, semiring=LogSemiring, backend: str = "auto"):
        super().__init__(as_semiring(semiring), backend)


class _StructDistributionMeta(type):
    """``isinstance(x, StructDistribution)``: ours or torch-struct's distributions."""

    def __instancecheck__(cls, obj):
        if cls is not StructDistribution:
            return super().__instancecheck__(obj)
        return isinstance(obj, _distribution.SemiMarkovCRF) or (_ts is not None and isinstance(obj, _ts.StructDistribution))

    def __subclasscheck__(cls, sub):
        if cls is not StructDistribution:
            return super().__subclasscheck__(sub)
        return issubclass(sub, _distribution.SemiMarkovCRF) or (_ts is not None and issubclass(sub, _ts.StructDistribution))


if _ts is not None:

    class StructDistribution(_ts.StructDistribution, metaclass=_StructDistributionMeta):
        """torch-struct's ``StructDistribution`` (subclass it as with torch-struct); isinstance also accepts ours."""

else:

    class StructDistribution(metaclass=_StructDistributionMeta):
        """isinstance target for structured distributions (ours); subclassing it needs torch-struct."""

        def __init__(self, *args, **kwargs):
            raise NotProvidedError(_missing("StructDistribution (as a base class)"))


class SemiMarkovCRF(_distribution.SemiMarkovCRF):
    """torch-struct's ``SemiMarkovCRF`` signature (``args`` is accepted and ignored)."""

    struct = SemiMarkov

    def __init__(self, log_potentials, lengths=None, args=None, backend: str = "auto", validate_args=None):
        super().__init__(log_potentials, lengths=lengths, backend=backend, validate_args=validate_args)
        self.args = {} if args is None else args

    def _struct(self, sr=None):
        return SemiMarkov(LogSemiring if sr is None else sr, self.backend)

    @_distribution._lazy_property
    def count(self) -> _torch.Tensor:
        """Number of segmentations of nonzero weight, (B,) (torch-struct's ``count``; float, like theirs)."""
        if self.factored:
            raise TypeError("count needs torch-struct edges; for SegmentPotentials use pots.to_edges()")
        # counted in float64 by the counting semiring, like torch-struct (a log-space count is not an integer)
        return dispatch.count_edges(self.potentials.detach(), self.token_lengths).to(self.potentials.dtype)

    def gumbel_crf(self, temperature: float = 1.0):
        """One Gumbel-max sample per example, in the marginals' layout (torch-struct's ``gumbel_crf``)."""
        return self._struct(GumbelCRFSemiring(temperature)).marginals(self.log_potentials, self.lengths)


def _missing(name: str) -> str:
    return (
        f"semiring_flash.torch_struct takes {name} from torch-struct, which is not installed; "
        f"install it with `pip install 'semiring_flash[{EXTRA}]'` (torch-struct==0.5)"
    )


_OURS = ["SemiMarkovCRF", "SemiMarkov", "StructDistribution", "SegmentPotentials", "NotProvidedError", "version",
         *(n for n in _sr.__all__ if n[0].isupper())]  # every semiring (not the logsumexp helpers)
__all__ = _OURS + ([n for n in REEXPORTED if hasattr(_ts, n)] if _ts is not None else [])


def __getattr__(name):
    if name in REEXPORTED:
        if _ts is None:
            raise NotProvidedError(_missing(repr(name)))
        if hasattr(_ts, name):
            return getattr(_ts, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(__all__))
