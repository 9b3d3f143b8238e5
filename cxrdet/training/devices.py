"""What a ``trainer`` config will run on: the device type and the number of processes.

Lightning builds DDP from ``devices=2`` alone (no ``strategy`` key), from ``num_nodes`` > 1,
or from an explicit DDP strategy; what changes behaviour is how many processes train, so that
is what cxrdet asks, not the strategy's name.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch


def trainer_device(trainer_cfg) -> str:
    """``cuda`` when the trainer will use CUDA GPUs (``accelerator`` gpu/cuda, or auto with
    CUDA present), else ``cpu``."""
    accelerator = str(trainer_cfg.get("accelerator", "auto"))
    auto_cuda = accelerator == "auto" and torch.cuda.is_available()
    return "cuda" if accelerator in ("gpu", "cuda") or auto_cuda else "cpu"


def device_count(trainer_cfg) -> int:
    """The devices one node trains on, read as Lightning reads ``devices``: a number (-1 or
    ``auto``: every visible GPU, one process on the CPU), a list of GPU ids, or ``"0,1"``."""
    devices = trainer_cfg.get("devices", "auto")
    cuda = trainer_device(trainer_cfg) == "cuda"
    if isinstance(devices, Sequence) and not isinstance(devices, str):
        return len(devices)
    text = str(devices).strip()
    if "," in text:
        return len([d for d in text.split(",") if d.strip()])
    if text in ("auto", "-1", "None", ""):
        return torch.cuda.device_count() if cuda else 1
    return int(text)


def process_count(trainer_cfg) -> int:
    """How many processes the trainer will run: devices per node x ``num_nodes``."""
    return device_count(trainer_cfg) * int(trainer_cfg.get("num_nodes", 1) or 1)
