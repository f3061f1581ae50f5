"""semiring_flash: exact semi-Markov CRF inference without materialized edges.

    import semiring_flash as sf
    dist = sf.SemiMarkovCRF(sf.SegmentPotentials(scores, transition=A, duration=D))
    dist.partition, dist.marginals, dist.argmax.segments()

    head = sf.nn.SemiCRFHead(in_features, num_labels, max_duration)   # on top of an encoder
"""

from .distribution import SemiMarkovCRF
from .edges import EdgePotentials
from .potentials import SegmentPotentials
from .segmentation import FactoredMarginals, Segmentation
from .semirings import (
    CrossEntropySemiring, EntropySemiring, KLDivergenceSemiring, KMaxSemiring, LogSemiring, MaxSemiring,
    SampledSemiring, Semiring,
)
from .struct import SemiMarkov
from .validation import get_validation, set_validation, validation_mode
from . import nn, tags  # noqa: E402  (submodules: sf.nn.SemiCRFHead, sf.tags.segments_to_tags)

__version__ = "0.1.0"

__all__ = [
    "SemiMarkovCRF", "SemiMarkov", "SegmentPotentials", "EdgePotentials", "Segmentation", "FactoredMarginals",
    "Semiring", "LogSemiring", "MaxSemiring", "EntropySemiring", "KMaxSemiring", "CrossEntropySemiring",
    "KLDivergenceSemiring", "SampledSemiring", "set_validation", "get_validation", "validation_mode", "nn", "tags",
]
