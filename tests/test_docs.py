"""The documentation runs: every Python block of docs/**/*.md, and the packaging facts the docs rely on.

The blocks of one page run in order in one namespace, as a reader would paste
them. A page must not need data downloads or a GPU; keep its sizes tiny.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"


def python_blocks(page: Path) -> list[str]:
    return re.findall(r"^```python\n(.*?)^```", page.read_text(encoding="utf-8"), flags=re.S | re.M)


PAGES = [p for p in sorted(DOCS.rglob("*.md")) if python_blocks(p)]


def test_doc_pages_with_examples_are_found():
    found = {p.relative_to(DOCS).as_posix() for p in PAGES}
    assert {"index.md", "head.md", "migrating.md", "distributed.md"} <= found, found


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.relative_to(DOCS).as_posix())
def test_doc_page_examples_run(page, monkeypatch):
    monkeypatch.chdir(ROOT)
    monkeypatch.syspath_prepend(str(ROOT))
    torch.manual_seed(0)
    namespace: dict = {"__name__": "__doc_example__"}
    for i, code in enumerate(python_blocks(page)):
        exec(compile(code, f"{page.relative_to(ROOT)} (python block {i + 1})", "exec"), namespace)  # noqa: S102


def test_readme_links_stay_readable_on_an_index_page():
    # PyPI shows README.md without the repository: a relative link must name its file in the text
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    for text, target in re.findall(r"\[([^\]]+)\]\(([^)]+)\)", readme):
        if "://" not in target:
            assert target in text or f"`{target}`" in text, (text, target)
            assert (ROOT / target).exists(), target


@pytest.mark.skipif(sys.version_info < (3, 11), reason="tomllib")
def test_version_has_one_source():
    import tomllib

    import semiring_flash

    meta = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert "version" not in meta["project"] and "version" in meta["project"]["dynamic"]
    assert meta["tool"]["setuptools"]["dynamic"]["version"] == {"attr": "semiring_flash.__version__"}
    assert re.fullmatch(r"\d+\.\d+\.\d+", semiring_flash.__version__)
    assert (ROOT / "LICENSE").exists() and (ROOT / "semiring_flash" / "py.typed").exists()
    assert meta["project"]["license-files"] == ["LICENSE"]


@pytest.mark.slow
def test_lightning_example_smoke_run():
    pytest.importorskip("lightning")
    import subprocess

    proc = subprocess.run([sys.executable, str(DOCS / "examples" / "lightning_gene.py"), "--fixture", "--smoke"],
                          capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "max_steps=2" in proc.stderr + proc.stdout and "decoded [(0," in proc.stdout


@pytest.mark.slow
def test_wheel_builds_offline_with_the_declared_backend(tmp_path):
    """pip builds the wheel from the sources alone (no network, no build isolation) with py.typed and LICENSE."""
    import shutil
    import subprocess
    import zipfile

    setuptools = pytest.importorskip("setuptools")
    assert int(setuptools.__version__.split(".")[0]) >= 77, "the test extra pins setuptools>=77 (the build floor)"
    import semiring_flash

    src = tmp_path / "src"
    shutil.copytree(ROOT / "semiring_flash", src / "semiring_flash", ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "README.md", "LICENSE"):
        shutil.copy(ROOT / name, src / name)
    proc = subprocess.run([sys.executable, "-m", "pip", "wheel", str(src), "--no-deps", "--no-build-isolation",
                           "--no-index", "-q", "-w", str(tmp_path / "dist")], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    (wheel,) = (tmp_path / "dist").glob("semiring_flash-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert "semiring_flash/py.typed" in names and any(n.endswith("licenses/LICENSE") for n in names)
    assert wheel.name.startswith(f"semiring_flash-{semiring_flash.__version__}-")
