"""Numeric precision by Lightning's names, with ``auto``: mixed precision wherever it pays.

``auto`` is ``bf16-mixed`` on a CUDA GPU that supports bf16 (Ampere and newer), ``16-mixed`` on
an older CUDA GPU, and ``32-true`` on the CPU (bf16 autocast runs there too, but is a choice to
make knowingly: ``bf16-mixed``).
"""

from __future__ import annotations

import torch

AUTOCAST = {"32": None, "32-true": None, "16-mixed": torch.float16, "bf16-mixed": torch.bfloat16}


def resolve_precision(precision, device_type: str) -> str:
    """``auto`` → the precision for ``device_type`` (``cuda`` or ``cpu``); others pass through."""
    precision = str(precision)
    if precision != "auto":
        return precision
    if device_type != "cuda":
        return "32-true"
    return "bf16-mixed" if torch.cuda.is_bf16_supported() else "16-mixed"


def autocast_dtype(precision: str) -> torch.dtype | None:
    """The autocast dtype of a precision named as Lightning's ``trainer.precision`` names it
    (None: full precision); an unknown name is a ValueError."""
    if str(precision) not in AUTOCAST:
        names = ", ".join([*AUTOCAST, "auto"])
        raise ValueError(f"unknown precision {precision!r}; expected one of {names}")
    return AUTOCAST[str(precision)]


def autocast(device: torch.device, precision: str):
    """The forward pass's precision context on ``device``."""
    dtype = autocast_dtype(precision)
    return torch.autocast(device.type, dtype=dtype, enabled=dtype is not None)
