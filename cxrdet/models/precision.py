"""Numeric precision by Lightning's names, with ``auto``: mixed precision where the GPU computes it.

``auto`` is ``bf16-mixed`` on a CUDA GPU that computes bf16 natively (compute capability 8.0 and
up: A100, RTX 30xx/40xx, L4, H100), ``16-mixed`` on older CUDA GPUs (P100 6.0, V100 7.0, T4
7.5), and ``32-true`` on the CPU. ``torch.cuda.is_bf16_supported()`` is not the test: by default
it counts emulation and answers yes on a T4, where bf16 convolutions have no cuDNN kernels. bf16
autocast runs on the CPU too, but its speed depends on the CPU: a choice to make knowingly
(``bf16-mixed``). Whatever the precision, box geometry stays in float32
(:mod:`cxrdet.models.fp32_boxes`).
"""

from __future__ import annotations

import logging

import torch

log = logging.getLogger(__name__)

AUTOCAST = {"32": None, "32-true": None, "16-mixed": torch.float16, "bf16-mixed": torch.bfloat16}
NATIVE_BF16 = (8, 0)  # the first compute capability with bf16 tensor cores (Ampere)


def native_bf16(index: int | None = None) -> bool:
    """Whether CUDA device ``index`` (default: the current one) computes bf16 natively."""
    return tuple(torch.cuda.get_device_capability(index)) >= NATIVE_BF16


def resolve_precision(precision, device_type: str, index: int | None = None) -> str:
    """``auto`` → the precision for ``device_type`` (``cuda`` or ``cpu``; ``index`` the CUDA
    device); any other name passes through."""
    precision = str(precision)
    if precision != "auto":
        return precision
    if device_type != "cuda":
        return "32-true"
    return "bf16-mixed" if native_bf16(index) else "16-mixed"


def describe_device(device_type: str, index: int | None = None) -> str:
    """``cpu``, or the GPU's name and compute capability (``NVIDIA T4, compute capability 7.5``)."""
    if device_type != "cuda":
        return "cpu"
    major, minor = torch.cuda.get_device_capability(index)
    return f"{torch.cuda.get_device_name(index)}, compute capability {major}.{minor}"


def choose_precision(precision, device_type: str, key: str, index: int | None = None) -> str:
    """:func:`resolve_precision`, logging the device, its capability and the choice (``key``
    names the setting, e.g. ``trainer.precision``); a bf16 choice on a GPU without native bf16
    is kept, with a warning."""
    chosen = resolve_precision(precision, device_type, index)
    device = describe_device(device_type, index)
    log.info("precision: %s (%s=%s on %s)", chosen, key, precision, device)
    if chosen == "bf16-mixed" and device_type == "cuda" and not native_bf16(index):
        log.warning(
            "%s=bf16-mixed on %s: this GPU has no native bf16 (compute capability < 8.0), so it "
            "is emulated and slow; 16-mixed (or auto) is the fast choice here",
            key,
            device,
        )
    return chosen


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
