"""A GPU for Triton that compiles for real (sm_90, Triton's own compiler and ptxas) and launches
nothing: the compiled-mode kernels and Triton's real launch path run on a machine without a GPU.

Call ``install()`` before any ``@triton.jit`` function is defined, in a process where
TRITON_INTERPRET is unset (it makes the kernels interpreted). ``launches`` records what each
launch hands to the driver: (grid, the kernel's arguments in signature order).
"""

from __future__ import annotations

import os

launches: list = []


def install():
    os.environ.pop("TRITON_INTERPRET", None)
    import torch
    from triton.backends.compiler import GPUTarget
    from triton.runtime.driver import driver

    class Utils:
        def load_binary(self, name, kernel, shared, device):
            return 1, 1, 0, 0, 1024  # module, function, registers, spills, max threads per block

        def get_device_properties(self, device):
            return {"max_shared_mem": 232448, "multiprocessor_count": 132}

    class NoOpGPU:
        utils = Utils()

        def get_current_device(self):
            return 0

        def get_current_stream(self, device=None):
            return 0

        def get_current_target(self):
            return GPUTarget("cuda", 90, 32)

        def launcher_cls(self, src, metadata):
            # the launcher's arguments: grid x, y, z, stream, function, packed metadata,
            # launch metadata, enter hook, exit hook, then the kernel's arguments
            return lambda gx, gy, gz, stream, function, *args: launches.append(((gx, gy, gz), args[4:]))

        def get_active_torch_device(self):
            return torch.device("cpu")

    driver.set_active(NoOpGPU())


def cpu_calls(compiled: bool = True):
    """Make the public API's Triton calls run on CPU tensors, the kernels compiled for sm_90
    (``compiled``: ``install()`` first, launches reach no GPU) or interpreted: every kernel of
    semiring_flash.ops.triton is defined now, then TRITON_INTERPRET=1 lets backend="triton"
    take CPU tensors, and the value checks follow the GPU policy (once per signature). The
    caller puts the package to use first on sys.path."""
    import importlib
    import pkgutil

    if compiled:
        install()  # before any kernel is defined: they compile for sm_90
    else:
        os.environ["TRITON_INTERPRET"] = "1"
    import semiring_flash.ops.triton as kernels
    from semiring_flash import validation

    for mod in pkgutil.iter_modules(kernels.__path__):
        importlib.import_module(f"{kernels.__name__}.{mod.name}")
    os.environ["TRITON_INTERPRET"] = "1"
    validation._on_host = lambda device: False
