import os
import sys

import pytest
import torch

# Without a GPU the Triton kernels run through the interpreter on CPU tensors; this must be set
# before triton is first imported.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

sys.path.insert(0, os.path.dirname(__file__))
# the engine runs many tiny ops: one thread avoids OpenMP barrier stalls on a busy 2-core box
torch.set_num_threads(1)


def _poison_fresh_buffers():
    """SF_POISON_EMPTY=1: every torch.empty / empty_like / new_empty comes back filled with NaN
    (integers: -7), so a read of memory no kernel wrote shows as a failure instead of passing on
    zeroed pages. A debugging lens for the whole suite, off by default."""
    def filled(make):
        def wrapper(*a, **kw):
            x = make(*a, **kw)
            if x.numel() and not x.is_meta:
                with torch.no_grad():
                    x.fill_(float("nan") if x.is_floating_point() or x.is_complex() else (-7 if x.dtype != torch.bool else True))
            return x
        return wrapper
    torch.empty = filled(torch.empty)
    torch.empty_like = filled(torch.empty_like)
    torch.Tensor.new_empty = filled(torch.Tensor.new_empty)


if os.environ.get("SF_POISON_EMPTY") == "1":
    _poison_fresh_buffers()


def dot(g, x):
    """Σ g·x where g != 0: a gradient paired with an input that may hold -inf (a structural zero)
    counts 0 there, not nan (0·-inf)."""
    return torch.where(g != 0, g * x, torch.zeros_like(x)).sum()


# -- module-level guards of the Triton suites (call them before importing the kernels) --------------------
def require_gpu_kernels():
    """Skip the calling module unless the kernels can run compiled on CUDA; returns triton."""
    if not torch.cuda.is_available():
        pytest.skip("needs CUDA", allow_module_level=True)
    if os.environ.get("TRITON_INTERPRET") == "1":
        pytest.skip("TRITON_INTERPRET=1 set", allow_module_level=True)
    return pytest.importorskip("triton")


def require_interpreter():
    """Skip the calling module unless the kernels can run through TRITON_INTERPRET=1; returns triton.

    The variable must be set before triton itself is first imported (later, nested jit functions fail
    with "Cannot call @triton.jit'd outside of the scope of a kernel"): this file sets it on machines
    without CUDA; elsewhere export it.
    """
    if "triton" in sys.modules and os.environ.get("TRITON_INTERPRET") != "1":
        pytest.skip("triton was imported before TRITON_INTERPRET=1 was set: export it (or set it in "
                    "tests/conftest.py) to run the interpreter tests", allow_module_level=True)
    return pytest.importorskip("triton")


def interpreter_marks(kernel) -> list:
    """pytestmark of an interpreter suite whose kernels include ``kernel``."""
    return [
        pytest.mark.triton_interpret,
        pytest.mark.filterwarnings("ignore::DeprecationWarning"),
        pytest.mark.filterwarnings("ignore::RuntimeWarning"),
        pytest.mark.skipif(type(kernel).__name__ != "InterpretedFunction",
                           reason="kernels compiled for a GPU (TRITON_INTERPRET unset at import)"),
    ]
