"""semiring_flash: exact semi-Markov CRF inference without materialized edges.

    import semiring_flash as sf
    dist = sf.SemiMarkovCRF(sf.SegmentPotentials(scores, transition=A, duration=D))
    dist.partition, dist.marginals, dist.argmax.segments()
"""

from .distribution import SemiMarkovCRF
from .potentials import SegmentPotentials
from .segmentation import FactoredMarginals, Segmentation
from .semirings import (
    CrossEntropySemiring,
    EntropySemiring,
    KLDivergenceSemiring,
    KMaxSemiring,
    LogSemiring,
    MaxSemiring,
    SampledSemiring,
    Semiring,
)
from .struct import SemiMarkov

__version__ = "0.1.0"

__all__ = [
    "SemiMarkovCRF",
    "SemiMarkov",
    "SegmentPotentials",
    "Segmentation",
    "FactoredMarginals",
    "Semiring",
    "LogSemiring",
    "MaxSemiring",
    "EntropySemiring",
    "KMaxSemiring",
    "CrossEntropySemiring",
    "KLDivergenceSemiring",
    "SampledSemiring",
]
