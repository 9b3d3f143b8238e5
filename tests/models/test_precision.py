"""precision=auto: bf16 only where the GPU computes it natively, fp16 on older GPUs, fp32 on the
CPU; what the trainer config runs on (device, processes)."""

from __future__ import annotations

import logging

import pytest
import torch

from cxrdet.models.precision import autocast_dtype, choose_precision, resolve_precision
from cxrdet.training.devices import process_count, trainer_device

# (GPU, compute capability, what auto picks): Kaggle's P100 and T4, a V100, A100, H100.
GPUS = [
    ("Tesla P100-PCIE-16GB", (6, 0), "16-mixed"),
    ("Tesla V100-SXM2-32GB", (7, 0), "16-mixed"),
    ("Tesla T4", (7, 5), "16-mixed"),
    ("NVIDIA A100-SXM4-40GB", (8, 0), "bf16-mixed"),
    ("NVIDIA H100 80GB HBM3", (9, 0), "bf16-mixed"),
]


def _gpu(monkeypatch, name, capability):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda index=None: capability)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda index=None: name)
    # torch's own test counts emulation and says yes on every one of them: not the rule.
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)


@pytest.mark.parametrize(("name", "capability", "expected"), GPUS, ids=[g[0] for g in GPUS])
def test_auto_follows_the_gpu_s_compute_capability_and_says_so(
    monkeypatch, caplog, name, capability, expected
):
    _gpu(monkeypatch, name, capability)
    trainer = {"accelerator": "auto", "devices": 1, "precision": "auto"}
    with caplog.at_level(logging.INFO, logger="cxrdet.models.precision"):
        device = trainer_device(trainer)
        chosen = choose_precision(trainer["precision"], device, "trainer.precision")
    assert (device, chosen) == ("cuda", expected)
    line = f"precision: {expected} (trainer.precision=auto on {name}, compute capability "
    assert line + f"{capability[0]}.{capability[1]})" in caplog.text


def test_without_cuda_auto_is_full_precision(monkeypatch, caplog):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with caplog.at_level(logging.INFO, logger="cxrdet.models.precision"):
        device = trainer_device({"accelerator": "auto"})
        assert choose_precision("auto", device, "precision") == "32-true"
    assert device == "cpu" and "precision: 32-true (precision=auto on cpu)" in caplog.text
    for named in ("32-true", "16-mixed", "bf16-mixed"):
        assert resolve_precision(named, "cpu") == named  # an explicit choice is kept


def test_bf16_asked_for_on_a_gpu_without_it_is_kept_with_a_warning(monkeypatch, caplog):
    _gpu(monkeypatch, "Tesla T4", (7, 5))
    with caplog.at_level(logging.INFO, logger="cxrdet.models.precision"):
        assert choose_precision("bf16-mixed", "cuda", "precision") == "bf16-mixed"
    assert "no native bf16" in caplog.text and "16-mixed (or auto)" in caplog.text


def test_autocast_dtype_of_every_name_and_a_refusal_that_lists_them():
    assert autocast_dtype("32-true") is None and autocast_dtype("bf16-mixed") is torch.bfloat16
    with pytest.raises(ValueError, match="unknown precision 'fp8'.*bf16-mixed, auto"):
        autocast_dtype("fp8")


@pytest.mark.parametrize(
    ("trainer", "processes"),
    [
        ({"accelerator": "cpu", "devices": 2}, 2),  # what a 2xT4 user types: no strategy key
        ({"accelerator": "gpu", "devices": "auto"}, 2),  # every visible GPU (2 here)
        ({"accelerator": "gpu", "devices": -1}, 2),
        ({"accelerator": "gpu", "devices": [0, 1]}, 2),
        ({"accelerator": "gpu", "devices": "0,1"}, 2),
        ({"accelerator": "gpu", "devices": 1, "num_nodes": 2}, 2),
        ({"accelerator": "gpu", "devices": 1, "strategy": "ddp"}, 1),  # DDP by name, one process
        ({"accelerator": "cpu", "devices": "auto"}, 1),
    ],
)
def test_the_number_of_processes_decides_ddp_not_the_strategy_s_name(
    monkeypatch, trainer, processes
):
    _gpu(monkeypatch, "Tesla T4", (7, 5))
    assert process_count(trainer) == processes
