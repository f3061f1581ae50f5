"""Dataset plumbing: GenBank parsing on the committed AUGUSTUS slice, gene labels and grammar, .deb unpacking.

No network: the fetchers are exercised on a synthetic .deb and a failing apt.
"""

from __future__ import annotations

import io
import os
import tarfile
from pathlib import Path

import pytest

from semiring_flash.data import (
    GENE_LABELS,
    DataUnavailable,
    encode_dna,
    gene_segments,
    gene_transition_mask,
    parse_genbank,
    segments_to_genes,
)
from semiring_flash.data._fetch import extract_deb_members, fetch_deb
from semiring_flash.data.peoples_daily import POS_GROUPS, coarse_pos

FIXTURE = Path(__file__).parent / "fixtures" / "augustus_genes_slice.gb"


def test_parse_fixture():
    loci = parse_genbank(FIXTURE)
    assert [l.name for l in loci][:2] == ["chr2R_547836-549752", "chr2R_555285-556437"]
    assert len(loci) == 7
    first = loci[0]
    assert len(first) == 1917 and set(first.seq) <= set("acgtn")
    assert first.cds[0].strand == "-" and first.cds[0].exons == [(353, 911), (968, 1598)]
    # a location split across lines in the middle of a number ("1894." / ".2442")
    last = loci[-1]
    assert last.cds[0].exons[4] == (1893, 2442) and len(last.cds[0].exons) == 9
    assert parse_genbank(FIXTURE.read_text())[3].cds[0].exons == loci[3].cds[0].exons


def test_gene_segments_tile_and_follow_grammar():
    allowed = gene_transition_mask()
    for locus in parse_genbank(FIXTURE):
        segs = gene_segments(locus)
        assert segs[0][0] == 0 and segs[-1][1] == len(locus)
        assert all(a[1] == b[0] for a, b in zip(segs, segs[1:]))
        assert segs[0][2] == 0 and segs[-1][2] == 0  # loci start and end intergenic
        for (_, _, a), (_, _, b) in zip(segs, segs[1:]):
            assert allowed[a, b], (GENE_LABELS[a], GENE_LABELS[b])
        genes = segments_to_genes(segs)
        assert genes == [(locus.cds[0].strand, tuple(locus.cds[0].exons))]
        coding = sum(e - s for s, e, c in segs if GENE_LABELS[c].startswith("exon"))
        assert coding == sum(b - a for a, b in locus.cds[0].exons)


def test_segments_to_genes_splits_strands_and_genes():
    segs = [(0, 10, 0), (10, 20, 1), (20, 30, 2), (30, 40, 1), (40, 50, 0), (50, 60, 3), (60, 70, 0), (70, 80, 1)]
    assert segments_to_genes(segs) == [("+", ((10, 20), (30, 40))), ("-", ((50, 60),)), ("+", ((70, 80),))]


def test_encode_dna():
    assert encode_dna("acgtNAcGTx").tolist() == [0, 1, 2, 3, 4, 0, 1, 2, 3, 4]


def test_location_errors():
    bad = FIXTURE.read_text().split("//")[0].replace("complement(join(354..911,969..1598))", "order(1..5,8..9)") + "//\n"
    with pytest.raises(ValueError, match="unsupported"):
        parse_genbank(bad)


def _fake_deb(path: Path, files: dict):
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:xz") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo("./" + name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    members = [("debian-binary", b"2.0\n"), ("control.tar.xz", b""), ("data.tar.xz", buf.getvalue())]
    out = bytearray(b"!<arch>\n")
    for name, data in members:
        out += f"{name:<16}{0:<12}{0:<6}{0:<6}{100644:<8}{len(data):<10}`\n".encode()
        out += data + (b"\n" if len(data) % 2 else b"")
    path.write_bytes(bytes(out))


def test_extract_deb_members(tmp_path):
    deb = tmp_path / "pkg_1.0_all.deb"
    _fake_deb(deb, {"usr/share/doc/x/a.txt": b"hello", "usr/share/doc/x/b.txt": b"world!"})
    extract_deb_members(deb, {"usr/share/doc/x/b.txt": tmp_path / "out" / "b.txt"})
    assert (tmp_path / "out" / "b.txt").read_bytes() == b"world!"
    with pytest.raises(DataUnavailable, match="lacks"):
        extract_deb_members(deb, {"usr/share/doc/x/missing": tmp_path / "m"})


def test_fetch_deb_fails_with_clear_message(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))  # no apt-get
    with pytest.raises(DataUnavailable, match="apt-get update"):
        fetch_deb("augustus-doc", tmp_path / "deb", fallback_urls=(f"file://{tmp_path}/nope.deb",))
    _fake_deb(tmp_path / "deb" / "augustus-doc_9_all.deb", {})
    assert fetch_deb("augustus-doc", tmp_path / "deb").name == "augustus-doc_9_all.deb"  # cached


def test_pos_groups_partition_tags():
    tags = [t for ts in POS_GROUPS.values() for t in ts]
    assert len(tags) == len(set(tags))
    assert coarse_pos("nr") == "n" and coarse_pos("Vg") == "v" and coarse_pos("???") == "x"


@pytest.mark.skipif(not os.environ.get("SF_TEST_DOWNLOADS"), reason="set SF_TEST_DOWNLOADS=1 to test the real downloads")
def test_real_downloads():
    from semiring_flash.data import load_augustus_genes, load_peoples_daily

    assert len(load_augustus_genes("train")) == 486 and len(load_augustus_genes("test")) == 100
    assert len(load_peoples_daily()) == 19484
