"""The Drosophila gene set of the AUGUSTUS tutorial, from Debian's ``augustus-doc`` package.

``genes.gb.train`` (486 loci) and ``genes.gb.test`` (100 loci): real
D. melanogaster genomic loci with one annotated coding gene each (CDS joins
give the exon/intron structure), up to 1000 bp of flank on each side.
AUGUSTUS (© 2004-2016 Stanke et al.) is distributed under the Artistic
License; the files are fetched at run time, never committed (a small slice
lives in ``tests/fixtures`` with attribution).

    from semiring_flash.data import load_augustus_genes
    train = load_augustus_genes("train")     # list[Locus]
"""

from __future__ import annotations

from pathlib import Path

from ._fetch import cache_dir, fetch_deb_members, verified
from .genbank import Locus, parse_genbank

__all__ = ["fetch_augustus_tutorial", "load_augustus_genes", "AUGUSTUS_FILES"]

_INNER = "usr/share/doc/augustus/tutorial/results/"
AUGUSTUS_FILES = {
    "train": ("genes.gb.train", "e401b3fe83568b5337e9f501dfa3291c8deea44ebbaf20d62a1e3ed308cea0a1"),
    "test": ("genes.gb.test", "d279fdf4c1e952fb2109bc559d269cb71590be618a6a7b6fa98730e631edd050"),
}
# tried after `apt-get download` (not a Debian system, empty package lists, another version)
_DEB_URLS = (
    "https://deb.debian.org/debian/pool/main/a/augustus/augustus-doc_3.5.0+dfsg-2_all.deb",
    "https://snapshot.debian.org/file/dd68a0b07c748c501b3ff8df3268c0ab68e9be37",  # the same file, archived
)
_DEB_SHA256 = "8427ef32b4f345dc336066215390572f242c79818bcb6a709df87b4be43fc71b"


def fetch_augustus_tutorial(root: Path | None = None) -> dict[str, Path]:
    """Paths of ``genes.gb.train`` / ``genes.gb.test``, fetched once from ``augustus-doc`` into the cache.

    The cached files are checked against their sha256 on every call; missing
    or corrupt ones are fetched again: the .deb comes from ``apt-get download``
    (no installation, no root) or a pinned Debian mirror URL, and is unpacked
    in Python, then deleted. Raises :class:`DataUnavailable` with a fix if it cannot be.
    """
    root = Path(root) if root is not None else cache_dir("augustus")
    paths = {split: root / name for split, (name, _) in AUGUSTUS_FILES.items()}
    if not all(verified(paths[split], digest) for split, (_, digest) in AUGUSTUS_FILES.items()):
        wanted = {_INNER + name: (paths[split], digest) for split, (name, digest) in AUGUSTUS_FILES.items()}
        fetch_deb_members("augustus-doc", wanted, root / "deb", _DEB_URLS, _DEB_SHA256)
    return paths


def load_augustus_genes(split: str = "train", root: Path | None = None) -> list[Locus]:
    """The tutorial loci of ``split`` ("train": 486, "test": 100) as :class:`Locus` records."""
    if split not in AUGUSTUS_FILES:
        raise ValueError(f"split must be one of {sorted(AUGUSTUS_FILES)}, got {split!r}")
    return parse_genbank(fetch_augustus_tutorial(root)[split])
