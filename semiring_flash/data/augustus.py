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

import warnings
from pathlib import Path

from ._fetch import DataUnavailable, cache_dir, extract_deb_members, fetch_deb, sha256
from .genbank import Locus, parse_genbank

__all__ = ["fetch_augustus_tutorial", "load_augustus_genes", "AUGUSTUS_FILES"]

_INNER = "usr/share/doc/augustus/tutorial/results/"
AUGUSTUS_FILES = {
    "train": ("genes.gb.train", "e401b3fe83568b5337e9f501dfa3291c8deea44ebbaf20d62a1e3ed308cea0a1"),
    "test": ("genes.gb.test", "d279fdf4c1e952fb2109bc559d269cb71590be618a6a7b6fa98730e631edd050"),
}
# used only when apt-get is unavailable (e.g. not a Debian system)
_FALLBACK = (
    "https://deb.debian.org/debian/pool/main/a/augustus/augustus-doc_3.5.0+dfsg-2_all.deb",
    "https://snapshot.debian.org/file/dd68a0b07c748c501b3ff8df3268c0ab68e9be37",  # the same file, archived
)
_DEB_SHA256 = "8427ef32b4f345dc336066215390572f242c79818bcb6a709df87b4be43fc71b"


def fetch_augustus_tutorial(root: Path | None = None) -> dict[str, Path]:
    """Paths of ``genes.gb.train`` / ``genes.gb.test``, downloading ``augustus-doc`` once into the cache.

    The .deb is fetched with ``apt-get download`` (no installation, no root) and
    unpacked in Python. Raises :class:`DataUnavailable` with a fix if it cannot be.
    """
    root = Path(root) if root is not None else cache_dir("augustus")
    paths = {split: root / name for split, (name, _) in AUGUSTUS_FILES.items()}
    if not all(p.exists() for p in paths.values()):
        deb = fetch_deb("augustus-doc", root / "deb", _FALLBACK, _DEB_SHA256)
        try:
            extract_deb_members(deb, {_INNER + name: root / name for name, _ in AUGUSTUS_FILES.values()})
        except DataUnavailable:
            raise
        except Exception as err:  # noqa: BLE001  # corrupt download
            deb.unlink(missing_ok=True)
            raise DataUnavailable(f"could not unpack {deb}: {err}; it was removed, run again") from err
        for split, (name, digest) in AUGUSTUS_FILES.items():
            got = sha256(paths[split])
            if got != digest:
                warnings.warn(f"{name}: sha256 {got[:12]}… differs from the augustus-doc 3.5.0+dfsg-2 copy "
                              "(another package version?); results may differ from the docs", stacklevel=2)
        for p in (root / "deb").glob("*.deb"):  # 24 MB; only the two GenBank files are kept
            p.unlink()
    return paths


def load_augustus_genes(split: str = "train", root: Path | None = None) -> list[Locus]:
    """The tutorial loci of ``split`` ("train": 486, "test": 100) as :class:`Locus` records."""
    if split not in AUGUSTUS_FILES:
        raise ValueError(f"split must be one of {sorted(AUGUSTUS_FILES)}, got {split!r}")
    return parse_genbank(fetch_augustus_tutorial(root)[split])
