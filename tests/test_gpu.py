"""CUDA and AMP paths (run by benchmarks/gpu_check.sh on a GPU machine; skipped without CUDA)."""

from __future__ import annotations

import numpy as np
import pytest
import pytorch_lightning as pl
import torch
from conftest import tiny_datamodule

from cxrdet.models.module import DetectorModule

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]

OPTIM = {"_target_": "torch.optim.SGD", "_partial_": True, "lr": 0.005, "momentum": 0.9}


def _data(tiny_data):
    return tiny_datamodule(tiny_data, seed=0)


@pytest.mark.parametrize("precision", ["32-true", "16-mixed", "bf16-mixed"])
def test_training_and_validation_on_cuda(tiny_data, tmp_path, precision):
    torch.manual_seed(0)
    module = DetectorModule(model={"num_classes": 14, "image_size": 64}, optim=OPTIM)
    trainer = pl.Trainer(
        accelerator="gpu",
        devices=1,
        precision=precision,
        max_steps=4,
        val_check_interval=4,
        check_val_every_n_epoch=None,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        default_root_dir=tmp_path,
    )
    trainer.fit(module, datamodule=_data(tiny_data))
    metrics = trainer.callback_metrics
    assert np.isfinite(float(metrics["train/loss"])) and np.isfinite(float(metrics["val/loss"]))
    assert "val/AP40" in metrics and float(metrics["val/images"]) > 0


def test_fp16_prediction_on_cuda_matches_fp32_on_cpu(tiny_data, tmp_path):
    from cxrdet.evaluation.submission import read_submission
    from cxrdet.inference.config import PredictConfig
    from cxrdet.inference.predictor import predict

    torch.manual_seed(0)
    module = DetectorModule(model={"num_classes": 14, "image_size": 64}, optim=OPTIM)
    ckpt = tmp_path / "model.ckpt"
    torch.save({"hyper_parameters": dict(module.hparams), "state_dict": module.state_dict()}, ckpt)
    common = {
        "ckpt_path": str(ckpt),
        "image_dir": str(tiny_data["prepared"] / "64" / "test"),
        "meta_csv": str(tiny_data["prepared"] / "64" / "test_meta.csv"),
        "progress": False,
    }
    cpu = predict(PredictConfig(output=str(tmp_path / "cpu.csv"), device="cpu", **common))
    gpu = predict(
        PredictConfig(
            output=str(tmp_path / "gpu.csv"), device="cuda", precision="16-mixed", **common
        )
    )
    assert gpu["device"].startswith("cuda")
    a, b = read_submission(tmp_path / "cpu.csv"), read_submission(tmp_path / "gpu.csv")
    assert a.keys() == b.keys() and cpu["images"] == gpu["images"]
    top = lambda sub: np.array([s.max(initial=0) for _, s, _ in sub.values()])  # noqa: E731
    np.testing.assert_allclose(top(a), top(b), atol=0.02)
