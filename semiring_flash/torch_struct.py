"""Drop-in replacement for torch-struct's semi-Markov part.

Switch existing code with one line::

    import semiring_flash.torch_struct as torch_struct      # was: import torch_struct
    from semiring_flash.torch_struct import SemiMarkovCRF  # was: from torch_struct import SemiMarkovCRF

What is provided (same names, same call signatures, same tensor layouts):

* ``SemiMarkovCRF(log_potentials, lengths=None, args={})`` (extra keyword
  ``backend``), with ``partition, marginals, argmax, mode, max, entropy,
  kmax(k), topk(k), log_prob, sample, cross_entropy, kl, to_event,
  from_event``. It also accepts a :class:`semiring_flash.SegmentPotentials`
  (the factored, streamed path).
* ``SemiMarkov(semiring)`` with ``sum, marginals, score, logpartition,
  to_parts, from_parts`` (and ``hsmm``). ``semiring`` may be given the way
  torch-struct code gives it — a class such as ``MaxSemiring``, the result
  of ``KMaxSemiring(k)``, or even torch-struct's own classes (mapped by name)
  — or as a semiring_flash instance.
* ``LogSemiring, MaxSemiring, EntropySemiring, KMaxSemiring,
  CrossEntropySemiring, KLDivergenceSemiring, SampledSemiring, Semiring``.
* ``StructDistribution``: an alias of :class:`semiring_flash.SemiMarkovCRF`,
  so ``isinstance(d, torch_struct.StructDistribution)`` keeps working for
  semi-Markov CRFs. It is not a base class for other structures.

What is *not* provided: every other structure (``LinearChainCRF``,
``TreeCRF``/``CKY``, ``DependencyCRF``, ``AlignmentCRF``, ``Autoregressive``,
``HMM``...), the other semirings (``StdSemiring``, ``MultiSampledSemiring``,
``SparseMaxSemiring``, ``GumbelCRFSemiring``, checkpoint/fast semirings...) and
the ``count`` / ``gumbel_crf`` properties. Touching one of those names raises
:class:`NotProvidedError` (an ``AttributeError``) saying so; keep
``import torch_struct`` for them.

Known differences from torch-struct 0.5 (see docs/migrating.md): any lengths
in [2, N] are accepted (torch-struct 0.5 needs max(lengths) == N and gets
mixed-length batches wrong); −inf is a true structural zero (no NaN in
entropy or log_prob); ``argmax``/``topk`` carry no graph (``marginals``
are differentiable on the torch engine); ``cross_entropy``/``kl`` work; inputs
are never modified (torch-struct calls ``requires_grad_`` on them); ``kmax``
pads with −inf (torch-struct: about −1e5) when k exceeds the number of
structures.
"""

from __future__ import annotations

from . import distribution as _distribution
from . import semirings as _sr
from . import struct as _struct
from .potentials import SegmentPotentials

__all__ = [
    "SemiMarkovCRF",
    "SemiMarkov",
    "StructDistribution",
    "Semiring",
    "LogSemiring",
    "MaxSemiring",
    "EntropySemiring",
    "KMaxSemiring",
    "CrossEntropySemiring",
    "KLDivergenceSemiring",
    "SampledSemiring",
    "SegmentPotentials",
    "NotProvidedError",
]

version = "0.5"  # the torch-struct API this module mirrors

Semiring = _sr.Semiring
LogSemiring = _sr.LogSemiring
MaxSemiring = _sr.MaxSemiring
EntropySemiring = _sr.EntropySemiring
CrossEntropySemiring = _sr.CrossEntropySemiring
KLDivergenceSemiring = _sr.KLDivergenceSemiring
SampledSemiring = _sr.SampledSemiring
KMaxSemiring = _sr.KMaxSemiring  # KMaxSemiring(k) -> an instance, as torch-struct's call returns a semiring

_BY_NAME = {
    "LogSemiring": LogSemiring,
    "MaxSemiring": MaxSemiring,
    "EntropySemiring": EntropySemiring,
    "CrossEntropySemiring": CrossEntropySemiring,
    "KLDivergenceSemiring": KLDivergenceSemiring,
    "SampledSemiring": SampledSemiring,
}
_BY_CLASS = {type(s): s for s in _BY_NAME.values()}


class NotProvidedError(AttributeError):
    """A torch-struct name that semiring_flash does not implement."""


def as_semiring(semiring) -> _sr.Semiring:
    """Turn what torch-struct code passes as a semiring into a semiring_flash instance.

    Accepts semiring_flash instances, their classes (``type(LogSemiring)``),
    and torch-struct semiring classes (``torch_struct.MaxSemiring``, the class
    ``torch_struct.KMaxSemiring(k)`` returns, ...), matched by name.
    """
    if isinstance(semiring, _sr.Semiring):
        return semiring
    if isinstance(semiring, type):
        if semiring in _BY_CLASS:
            return _BY_CLASS[semiring]
        if issubclass(semiring, _sr.KMaxSemiring):
            raise TypeError("pass KMaxSemiring(k) (an instance with its k), not the KMaxSemiring class")
        name = semiring.__name__
        if name == "KMaxSemiring" and callable(getattr(semiring, "size", None)):
            return _sr.KMaxSemiring(int(semiring.size()))  # torch-struct's KMaxSemiring(k) class
        if name in _BY_NAME:
            return _BY_NAME[name]
    supported = ", ".join(list(_BY_NAME) + ["KMaxSemiring(k)"])
    raise TypeError(f"semiring {semiring!r} is not supported by semiring_flash; supported: {supported}")


class SemiMarkov(_struct.SemiMarkov):
    """torch-struct's ``SemiMarkov`` struct; ``semiring`` may be a class, as torch-struct code passes it."""

    def __init__(self, semiring=LogSemiring, backend: str = "auto"):
        super().__init__(as_semiring(semiring), backend)


class SemiMarkovCRF(_distribution.SemiMarkovCRF):
    """torch-struct's ``SemiMarkovCRF`` signature (``args`` is accepted and ignored)."""

    struct = SemiMarkov

    def __init__(self, log_potentials, lengths=None, args=None, backend: str = "auto", validate_args=None):
        super().__init__(log_potentials, lengths=lengths, backend=backend, validate_args=validate_args)
        self.args = {} if args is None else args

    def _struct(self, sr=None):
        return SemiMarkov(LogSemiring if sr is None else sr, self.backend)


StructDistribution = _distribution.SemiMarkovCRF

_NOT_PROVIDED = {
    # structures and their distributions
    "LinearChain", "LinearChainCRF", "HMM", "CKY", "CKY_CRF", "TreeCRF", "SentCFG", "DepTree",
    "DependencyCRF", "NonProjectiveDependencyCRF", "deptree_part", "deptree_nonproj", "Alignment",
    "AlignmentCRF", "Autoregressive", "AutoregressiveModel",
    # semirings
    "StdSemiring", "MultiSampledSemiring", "SparseMaxSemiring", "GumbelMaxSemiring", "GumbelCRFSemiring",
    "TempMax", "CheckpointSemiring", "CheckpointShardSemiring", "FastLogSemiring", "FastMaxSemiring",
    "FastSampleSemiring",
}


def __getattr__(name):
    if name in _NOT_PROVIDED:
        raise NotProvidedError(
            f"semiring_flash.torch_struct provides only the semi-Markov part of torch-struct; "
            f"{name!r} is not provided. Keep `import torch_struct` for it."
        )
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(__all__))

