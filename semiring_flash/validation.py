"""Argument checks shared by every entry point: clear errors, never a kernel crash."""

from __future__ import annotations

import torch


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


def check_shape(name: str, x: torch.Tensor, expected: tuple, what: str) -> None:
    """``expected`` may hold None for a free dim; ``what`` names the dims, e.g. '(B, T, C)'."""
    ok = len(x.shape) == len(expected) and all(e is None or e == s for e, s in zip(expected, x.shape))
    if not ok:
        shown = tuple("?" if e is None else e for e in expected)
        raise ValueError(f"{name} must have shape {what} = {shown}, got {tuple(x.shape)}")


def check_no_nan(name: str, x: torch.Tensor) -> None:
    if torch.isnan(x.detach()).any():
        raise ValueError(f"{name} contains NaN (use -inf for a structural zero)")


def check_no_pos_inf(name: str, x: torch.Tensor) -> None:
    if torch.isposinf(x.detach()).any():
        raise ValueError(f"{name} contains +inf; scores must be finite or -inf")


def check_same_device(**tensors) -> torch.device:
    devices = {n: t.device for n, t in tensors.items() if t is not None}
    if len(set(devices.values())) > 1:
        listed = ", ".join(f"{n} on {d}" for n, d in devices.items())
        raise ValueError(f"all tensors must be on one device; got {listed}")
    return next(iter(devices.values()))


def check_lengths(name: str, lengths, batch: int, low: int, high: int, device) -> torch.Tensor:
    """Integer (B,) tensor with values in [low, high]; returns it as int64 on ``device``."""
    if lengths is None:
        return torch.full((batch,), high, dtype=torch.long, device=device)
    if not isinstance(lengths, torch.Tensor):
        lengths = torch.as_tensor(lengths)
    if lengths.is_floating_point() or lengths.dtype == torch.bool or lengths.is_complex():
        raise TypeError(f"{name} must be an integer tensor, got dtype {lengths.dtype}")
    if lengths.dim() != 1 or lengths.shape[0] != batch:
        raise ValueError(f"{name} must have shape (B,) = ({batch},), got {tuple(lengths.shape)}")
    if lengths.device != torch.device(device) and lengths.device.type != torch.device(device).type:
        raise ValueError(f"{name} is on {lengths.device} but the potentials are on {device}")
    lo, hi = int(lengths.min()), int(lengths.max())
    if lo < low or hi > high:
        raise ValueError(f"{name} must lie in [{low}, {high}], got values in [{lo}, {hi}]")
    return lengths.to(device=device, dtype=torch.long)
