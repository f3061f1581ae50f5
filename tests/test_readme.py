"""The README's Python examples run as written (in order, one namespace)."""

import re
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"


@pytest.mark.slow
def test_readme_python_blocks_run():
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(encoding="utf-8"), flags=re.S)
    assert len(blocks) >= 3
    namespace: dict = {}
    for code in blocks:
        exec(compile(code, str(README), "exec"), namespace)  # noqa: S102 - our own README
    dist, head = namespace["dist"], namespace["head"]
    assert dist.marginals.token.shape == (2, 1000, 5)
    assert (dist.kl(namespace["other"]) >= -1e-4).all()
    assert namespace["loss"].ndim == 0 and namespace["loss"].item() >= 0
    assert [s[-1][1] for s in namespace["segments"]] == [50, 32]
    assert hasattr(namespace["torch_struct"], "SemiMarkovCRF")
    assert head.num_labels == 5
