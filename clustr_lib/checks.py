"""Input validation shared by the library: clear errors before any work starts."""

from __future__ import annotations

import os

import torch


def progress_enabled() -> bool:
    """Progress bars on, unless ``CLUSTR_PROGRESS=0`` (the batch runner sets it off the
    terminal, so executed notebooks keep no bar residue)."""
    return os.environ.get("CLUSTR_PROGRESS", "1") != "0"


def as_float_tensor(value, name: str, ndim: int) -> torch.Tensor:
    """Return ``value`` as a floating tensor with ``ndim`` dimensions, or raise."""
    tensor = torch.as_tensor(value)
    if not tensor.is_floating_point():
        tensor = tensor.float()
    if tensor.ndim != ndim:
        raise ValueError(f"{name} must be {ndim}-D, got shape {tuple(tensor.shape)}")
    return tensor


def as_label_tensor(value, name: str, length: int | None = None) -> torch.Tensor:
    """Return ``value`` as a 1-D int64 tensor (of ``length`` entries if given), or raise."""
    tensor = torch.as_tensor(value)
    if tensor.is_floating_point() or tensor.is_complex() or tensor.dtype == torch.bool:
        raise TypeError(f"{name} must hold integers, got dtype {tensor.dtype}")
    if tensor.ndim != 1:
        raise ValueError(f"{name} must be 1-D, got shape {tuple(tensor.shape)}")
    if length is not None and tensor.numel() != length:
        raise ValueError(f"{name} has {tensor.numel()} entries, expected {length}")
    if tensor.numel() and int(tensor.min()) < 0:
        raise ValueError(f"{name} must be non-negative")
    return tensor.long()


def check_positive(value: float, name: str, allow_zero: bool = False) -> float:
    """Raise unless ``value`` is a finite number > 0 (or >= 0 with ``allow_zero``)."""
    value = float(value)
    ok = value >= 0 if allow_zero else value > 0
    if not ok or value != value or value == float("inf"):
        bound = ">= 0" if allow_zero else "> 0"
        raise ValueError(f"{name} must be finite and {bound}, got {value}")
    return value


def check_choice(value: str, name: str, choices) -> str:
    """Raise unless ``value`` is one of ``choices``."""
    if value not in choices:
        raise ValueError(f"unknown {name} {value!r}; choose one of {sorted(choices)}")
    return value
