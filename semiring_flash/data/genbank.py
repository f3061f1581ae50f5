"""A small GenBank reader for gene-structure loci (LOCUS + CDS joins + ORIGIN), and per-base gene labels.

Only what annotated-gene training sets such as AUGUSTUS's ``genes.gb`` use:
one or more ``CDS`` features per locus with locations like
``join(1001..1387,1563..1839)`` or ``complement(join(351..622,674..782))``.
Partial markers (``<``, ``>``) are accepted and ignored.
"""

from __future__ import annotations

import gzip
import re
import zlib
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import torch

__all__ = [
    "Locus", "CDS", "parse_genbank", "GENE_LABELS", "gene_transition_mask", "gene_segments",
    "encode_dna", "segments_to_genes",
]

# The label set of the gene-structure demo: coding exons (CDS parts) and introns per strand.
GENE_LABELS = ("intergenic", "exon+", "intron+", "exon-", "intron-")
IG, EXP, INP, EXM, INM = range(5)
_DNA = {c: i for i, c in enumerate("acgt")}


@dataclass
class CDS:
    """One coding sequence: exons as 0-based half-open (start, end), sorted by start; strand '+' or '-'."""

    exons: list[tuple[int, int]]
    strand: str
    gene: str = ""


@dataclass
class Locus:
    name: str
    seq: str  # lowercase; anything but a/c/g/t is unknown
    cds: list[CDS] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.seq)


_LOC_RANGE = re.compile(r"<?(\d+)\.\.>?(\d+)|^<?(\d+)>?$")


def _parse_location(loc: str) -> tuple[list, str]:
    loc = loc.replace(" ", "")
    strand = "+"
    if loc.startswith("complement(") and loc.endswith(")"):
        strand, loc = "-", loc[len("complement("):-1]
    if loc.startswith("join(") and loc.endswith(")"):
        loc = loc[len("join("):-1]
    if "complement" in loc or "order" in loc or ":" in loc:
        raise ValueError(f"unsupported GenBank location {loc!r}")
    exons = []
    for part in loc.split(","):
        m = re.fullmatch(r"<?(\d+)(?:\.\.>?(\d+))?>?", part)
        if not m:
            raise ValueError(f"cannot parse location part {part!r}")
        a = int(m.group(1))
        b = int(m.group(2) or a)
        if a < 1 or b < a:
            # GenBank writes minus-strand features as complement(a..b) with a <= b, never b..a
            raise ValueError(f"location part {part!r} is reversed or empty (need 1 <= start <= end)")
        exons.append((a - 1, b))  # 1-based inclusive -> 0-based half-open
    exons.sort()
    return exons, strand


def parse_genbank(path_or_text: str | Path) -> list[Locus]:
    """Parse a (possibly gzipped) GenBank flat file, or its text, into :class:`Locus` records.

    Raises ``ValueError`` for anything that is not GenBank text with at least one
    LOCUS record (an empty, binary or truncated file, a LOCUS line without its
    length, a CDS location that runs backwards or leaves the sequence).
    """
    if isinstance(path_or_text, (str, Path)) and "\n" not in str(path_or_text):
        try:  # every error names the file
            return _parse_text(_read_text(Path(path_or_text)))
        except ValueError as err:
            if str(path_or_text) in str(err):
                raise
            raise ValueError(f"{path_or_text}: {err}") from err
    if not isinstance(path_or_text, str):
        raise TypeError(f"parse_genbank takes a path or GenBank text, got {type(path_or_text).__name__}")
    return _parse_text(path_or_text)


def _parse_text(text: str) -> list[Locus]:
    loci = []
    for record in text.split("\n//"):
        lines = record.strip("\n").splitlines()
        if not any(ln.startswith("LOCUS") for ln in lines):
            continue
        name, length, cds, seq = None, None, [], []
        i = 0
        while i < len(lines):
            ln = lines[i]
            if ln.startswith("LOCUS"):
                parts = ln.split()
                if len(parts) < 3 or not parts[2].isdigit():
                    raise ValueError(f"LOCUS line without a name and a length in bases: {ln.strip()!r}")
                name, length = parts[1], int(parts[2])
            elif ln.startswith("     CDS "):
                loc = ln[21:].strip()
                quals = []
                while i + 1 < len(lines) and lines[i + 1].startswith(" " * 21):
                    cont = lines[i + 1][21:].strip()
                    if cont.startswith("/") or quals:
                        quals.append(cont)
                    else:
                        loc += cont
                    i += 1
                exons, strand = _parse_location(loc)
                gene = next((q.split("=", 1)[1].strip('"') for q in quals if q.startswith("/gene=")), "")
                cds.append(CDS(exons, strand, gene))
            elif ln.startswith("ORIGIN"):
                seq = ["".join(x.split()[1:]) for x in lines[i + 1:]]
                break
            i += 1
        s = "".join(seq).lower()
        if length is not None and len(s) != length:
            raise ValueError(f"locus {name}: sequence has {len(s)} bases, LOCUS line says {length}")
        for c in cds:
            if c.exons[0][0] < 0 or c.exons[-1][1] > len(s):
                raise ValueError(f"locus {name}: CDS {c.exons} outside the sequence (length {len(s)})")
        loci.append(Locus(name, s, cds))
    if not loci:
        raise ValueError("no LOCUS record found: not a GenBank flat file (or an empty one)")
    return loci


def _read_text(path: Path) -> str:
    raw = path.read_bytes()
    if raw[:2] == b"\x1f\x8b":  # gzip magic, whatever the suffix
        try:
            raw = gzip.decompress(raw)
        except (EOFError, OSError, zlib.error) as err:
            raise ValueError(f"{path}: corrupt or truncated gzip file ({err})") from err
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as err:
        raise ValueError(f"{path}: not a GenBank text file (binary data at byte {err.start})") from err
    if "\x00" in text:
        raise ValueError(f"{path}: not a GenBank text file (binary data)")
    return text


def gene_segments(locus: Locus) -> list[tuple[int, int, int]]:
    """Maximal labelled segments (start, end_exclusive, label) over GENE_LABELS tiling the locus.

    Bases outside every CDS are intergenic (UTRs included: the labels are
    coding-exon / intron / other). Overlapping CDS features raise ValueError.
    """
    labels = [IG] * len(locus)
    for c in locus.cds:
        ex, intr = (EXP, INP) if c.strand == "+" else (EXM, INM)
        spans = [(a, b, ex) for a, b in c.exons] + [(b, a2, intr) for (_, b), (a2, _) in zip(c.exons, c.exons[1:])]
        for a, b, label in spans:  # exons and introns alike: any base two CDS claim is an overlap, in either order
            for t in range(a, b):
                if labels[t] != IG:
                    raise ValueError(f"locus {locus.name}: overlapping CDS features (base {t + 1})")
                labels[t] = label
    segs, s = [], 0
    for t in range(1, len(labels) + 1):
        if t == len(labels) or labels[t] != labels[s] or (labels[t] in (EXP, EXM) and _exon_break(locus, t)):
            segs.append((s, t, labels[s]))
            s = t
    return segs


def _exon_break(locus: Locus, t: int) -> bool:
    # two exons that touch (0-length intron) stay separate segments
    return any(a == t for c in locus.cds for a, _ in c.exons[1:])


def gene_transition_mask() -> torch.Tensor:
    """Allowed transitions of the gene grammar (C×C bool, [prev, next]).

    intergenic → exon±; exon± → intron± | intergenic; intron± → exon± (same strand).
    A gene can start and end in any state at a locus border.
    """
    allowed = torch.zeros(5, 5, dtype=torch.bool)
    for a, b in [(IG, EXP), (IG, EXM), (EXP, INP), (EXP, IG), (INP, EXP), (EXM, INM), (EXM, IG), (INM, EXM)]:
        allowed[a, b] = True
    return allowed


def segments_to_genes(segments: Iterable[tuple[int, int, int]]) -> list[tuple[str, tuple[tuple[int, int], ...]]]:
    """Group (start, end, label) segments into genes: (strand, tuple of exons (start, end)).

    A gene is a maximal run of exon/intron segments of one strand; its exons are
    its exon segments (consecutive exon segments are separate exons).
    """
    genes, cur, strand = [], [], None
    for s, e, c in list(segments) + [(None, None, IG)]:
        st = "+" if c in (EXP, INP) else "-" if c in (EXM, INM) else None
        if st != strand and cur:
            genes.append((strand, tuple(cur)))
            cur = []
        strand = st
        if c in (EXP, EXM):
            cur.append((s, e))
    return [g for g in genes if g[1]]


def encode_dna(seq: str) -> torch.Tensor:
    """(L,) long: a, c, g, t -> 0..3, anything else (n, ambiguity codes) -> 4."""
    table = torch.full((256,), 4, dtype=torch.long)
    for ch, i in _DNA.items():
        table[ord(ch)] = i
        table[ord(ch.upper())] = i
    raw = torch.frombuffer(bytearray(seq.encode("ascii", "replace")), dtype=torch.uint8).long()
    return table[raw]
