"""Argument checks shared by every entry point: clear errors, never a kernel crash.

Two kinds of checks:

* **structure** (type, dtype, ndim, shape, device): host metadata only, always run;
* **values** (NaN, +inf, lengths in range, ...): they read the data, so on a GPU
  each one is a device→host synchronisation. Their policy is set by
  :func:`set_validation`:

  ``"auto"`` (default)
      CPU tensors: checked on every call (on the host, where the data is: no sync).
      Accelerator tensors: checked on the first call of each input signature
      (shapes, dtypes, device, optional arguments), with one synchronisation for
      all the checks of that call; later calls with the same signature skip them
      (no sync, so a training step can run ahead of the GPU or be captured in a
      CUDA graph).
  ``"full"``
      Every call, every device (one synchronisation per call on a GPU).
  ``"off"``
      Structure checks only. Out-of-range lengths are clamped into range by the
      Triton kernels (never an out-of-bounds access); NaN inputs give NaN results.

Whatever the mode, value checks are skipped while a CUDA graph is being captured or
torch.compile is tracing (a sync is impossible there): do an eager warm-up call first,
as CUDA-graph capture requires anyway.
"""

from __future__ import annotations

import contextlib
import numbers
from typing import Callable, Iterable, Union

import torch

VALIDATION_MODES = ("auto", "full", "off")
_mode = "auto"
_checked_signatures: set = set()
_MAX_SIGNATURES = 4096  # bound the memory of "auto" (then forget and re-check)

#: one value check: a 0-d bool tensor that is True when the input is bad, and its message
#: (a callable is only evaluated on failure: it may sync to say what is wrong)
Check = tuple[torch.Tensor, Union[str, Callable[[], str]]]


def set_validation(mode: str) -> str:
    """Choose when input *values* are checked: ``"auto"`` | ``"full"`` | ``"off"``; returns the old mode.

    See the module docstring (``semiring_flash.validation``); shapes, dtypes and devices
    are always checked.
    """
    global _mode
    if mode not in VALIDATION_MODES:
        raise ValueError(f"validation mode must be one of {VALIDATION_MODES}, got {mode!r}")
    old, _mode = _mode, mode
    _checked_signatures.clear()
    return old


def get_validation() -> str:
    return _mode


@contextlib.contextmanager
def validation_mode(mode: str):
    """``with sf.validation_mode("full"): ...`` — :func:`set_validation` for a block."""
    old = set_validation(mode)
    try:
        yield
    finally:
        set_validation(old)


def _on_host(device: torch.device) -> bool:
    """Data the host can read without waiting for a device."""
    return device.type == "cpu"


def _tracing(device: torch.device) -> bool:
    if torch.compiler.is_compiling():
        return True
    return device.type == "cuda" and torch.cuda.is_current_stream_capturing()


def signature(**tensors) -> tuple:
    """Hashable description of the inputs (shape, dtype, device; None for absent ones)."""
    return tuple((n, None) if t is None else (n, tuple(t.shape), t.dtype, t.device) for n, t in tensors.items())


def check_values(sig: tuple, device: torch.device, checks: Callable[[], Iterable[Check]]) -> None:
    """Run the value checks built by ``checks()`` when the policy asks for it.

    All flags are read back at once (one synchronisation on a GPU); the first failing
    check raises ValueError with its message.
    """
    if _mode == "off" or _tracing(device):
        return
    once = _mode == "auto" and not _on_host(device)
    if once and sig in _checked_signatures:
        return
    listed = list(checks())
    if listed and torch.stack([bad for bad, _ in listed]).any():  # the one read when all is well
        for bad, message in listed:
            if bad:
                raise ValueError(message() if callable(message) else message)
    if once:
        if len(_checked_signatures) >= _MAX_SIGNATURES:
            _checked_signatures.clear()
        _checked_signatures.add(sig)


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """Half-precision inputs are computed (and results returned) in float32; float64 stays float64."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def check_tensor(name: str, x, ndims, *, floating: bool = True) -> torch.Tensor:
    """Type, dtype and ndim of one argument; ``ndims`` is an int or a tuple of ints."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    ndims = (ndims,) if isinstance(ndims, int) else tuple(ndims)
    if x.dim() not in ndims:
        want = " or ".join(f"{n}-D" for n in ndims)
        raise ValueError(f"{name} must be {want}, got shape {tuple(x.shape)}")
    if floating and not x.is_floating_point():
        raise TypeError(f"{name} must be a floating-point tensor, got dtype {x.dtype}")
    return x


def checkpoint_interval(every) -> int | None:
    """``checkpoint_every`` of the engines: None (the default Δ ≈ √(T·K)) or a positive integer
    number of steps between checkpoints (0 or a negative one was silently replaced before)."""
    if every is None:
        return None
    if isinstance(every, bool) or not isinstance(every, numbers.Integral) or every < 1:
        raise ValueError(f"checkpoint_every must be None or a positive integer (steps between "
                         f"checkpoints), got {every!r}")
    return int(every)


def check_shape(name: str, x: torch.Tensor, expected: tuple, what: str) -> None:
    """``expected`` may hold None for a free dim; ``what`` names the dims, e.g. '(B, T, C)'."""
    ok = len(x.shape) == len(expected) and all(e is None or e == s for e, s in zip(expected, x.shape))
    if not ok:
        shown = tuple("?" if e is None else e for e in expected)
        raise ValueError(f"{name} must have shape {what} = {shown}, got {tuple(x.shape)}")


def _nan_or_posinf_message(name: str, x: torch.Tensor, lengths: torch.Tensor | None = None) -> Callable[[], str]:
    def message():
        if lengths is not None and x.dim() == 3:  # (B, T, C): say so when only the padding is bad
            bad = ~torch.isfinite(x).all(-1)
            inside = torch.arange(x.shape[1], device=x.device) < lengths.to(x.device).unsqueeze(1)
            if not (bad & inside).any():
                return (f"{name} is NaN or infinite only past the lengths (padding, e.g. fully masked attention rows): "
                        "zero it there (x.masked_fill(~mask[..., None], 0)); a NaN in the encoder's output also "
                        "reaches its gradients")
        if torch.isnan(x).any():
            return f"{name} contains NaN (use -inf for a structural zero)"
        if torch.isposinf(x).any():
            return f"{name} contains +inf; scores must be finite or -inf"
        return f"{name} must be finite (put structural zeros in transition/duration/start/end)"

    return message


def no_nan_or_pos_inf(name: str, x: torch.Tensor) -> Check:
    """Potentials may hold −inf (a structural zero), never NaN or +inf."""
    x = x.detach()
    return ~(x.amax() < float("inf")), _nan_or_posinf_message(name, x)  # amax propagates NaN


def all_finite(name: str, x: torch.Tensor, lengths: torch.Tensor | None = None) -> Check:
    """Every entry finite; ``lengths`` (B,) of a (B, T, C) x: the message says when only padding is bad."""
    x = x.detach()
    return ~(x.abs().amax() < float("inf")), _nan_or_posinf_message(name, x, lengths)


def lengths_in_range(name: str, lengths: torch.Tensor, low: int, high: int) -> Check:
    def message():
        lo, hi = int(lengths.min()), int(lengths.max())
        return f"{name} must lie in [{low}, {high}], got values in [{lo}, {hi}]"

    return ((lengths < low) | (lengths > high)).any(), message


def check_same_device(**tensors) -> torch.device:
    devices = {n: t.device for n, t in tensors.items() if t is not None}
    if len(set(devices.values())) > 1:
        listed = ", ".join(f"{n} on {d}" for n, d in devices.items())
        raise ValueError(f"all tensors must be on one device; got {listed}")
    return next(iter(devices.values()))


def lengths_tensor(name: str, lengths, batch: int, high: int, device) -> torch.Tensor:
    """Structure of ``lengths`` (integer, (B,)); returns the tensor as given (default: all ``high``).

    CPU lengths are accepted for GPU potentials: their range check then runs on the
    host (no sync) before they are copied over.
    """
    device = torch.device(device)
    if lengths is None:
        return torch.full((batch,), high, dtype=torch.long, device=device)
    if not isinstance(lengths, torch.Tensor):
        lengths = torch.as_tensor(lengths)
    if lengths.is_floating_point() or lengths.dtype == torch.bool or lengths.is_complex():
        raise TypeError(f"{name} must be an integer tensor, got dtype {lengths.dtype}")
    if lengths.dim() != 1 or lengths.shape[0] != batch:
        raise ValueError(f"{name} must have shape (B,) = ({batch},), got {tuple(lengths.shape)}")
    if lengths.device.type not in (device.type, "cpu"):
        raise ValueError(f"{name} is on {lengths.device} but the potentials are on {device}")
    return lengths


def check_lengths(name: str, lengths, batch: int, low: int, high: int, device) -> torch.Tensor:
    """Integer (B,) lengths with values in [low, high] (checked under the
    :func:`set_validation` policy); returns them as int64 on ``device``."""
    given = lengths is not None
    lengths = lengths_tensor(name, lengths, batch, high, device)
    if given:
        check_values(signature(**{name: lengths}) + (low, high), lengths.device,
                     lambda: [lengths_in_range(name, lengths, low, high)])
    return lengths.to(device=device, dtype=torch.long)
