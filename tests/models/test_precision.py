"""precision=auto: mixed precision on CUDA (bf16 where supported), full precision on the CPU."""

from __future__ import annotations

import pytest
import torch

from cxrdet.models.precision import autocast_dtype, resolve_precision


def test_auto_is_full_precision_on_the_cpu_and_mixed_on_cuda(monkeypatch):
    assert resolve_precision("auto", "cpu") == "32-true"
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    assert resolve_precision("auto", "cuda") == "bf16-mixed"
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)
    assert resolve_precision("auto", "cuda") == "16-mixed"
    for named in ("32-true", "16-mixed", "bf16-mixed"):
        assert resolve_precision(named, "cpu") == named  # an explicit choice is kept


def test_autocast_dtype_of_every_name_and_a_refusal_that_lists_them():
    assert autocast_dtype("32-true") is None and autocast_dtype("bf16-mixed") is torch.bfloat16
    with pytest.raises(ValueError, match="unknown precision 'fp8'.*bf16-mixed, auto"):
        autocast_dtype("fp8")
