"""The kernels in compiled mode, without a GPU: compiled for sm_90 by Triton's own compiler and
launched into a no-op driver (tests/noop_gpu.py), in a subprocess (TRITON_INTERPRET must be
unset when triton is imported there). What the interpreter tests cannot see: that every
variant compiles with its unused operands passed as None, and that the direct launch of a
cached compiled kernel hands the driver exactly what Triton's generic launch does."""

import os
import subprocess
import sys

import pytest

pytest.importorskip("triton")
CHECK = os.path.join(os.path.dirname(os.path.abspath(__file__)), "compiled_launch_check.py")


def _run(which):
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    out = subprocess.run([sys.executable, CHECK, which], env=env, capture_output=True, text=True, timeout=1800)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert "variants ok" in out.stdout


def test_kernel_variants_compile_and_launch_directly_smoke():
    _run("smoke")


@pytest.mark.slow
def test_every_kernel_variant_compiles_and_launches_directly():
    _run("all")
