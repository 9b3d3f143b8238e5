"""Validate a checkpoint on the tiny data with N CPU processes (DDP, gloo); rank 0 prints JSON.

    python tests/training/ddp_validate.py CKPT PREPARED_DIR RAW_DIR DEVICES

Run as a script (not imported by pytest): Lightning's DDP launcher starts the other ranks by
running this same command again.
"""

from __future__ import annotations

import json
import sys

import pytorch_lightning as pl

from cxrdet.data.datamodule import CXRDataModule
from cxrdet.models.module import load_detector
from cxrdet.training.evaluation import CompetitionEvaluation


def validate(ckpt: str, prepared: str, raw: str, devices: int) -> dict | None:
    """The validation metrics of ``ckpt`` on ``devices`` CPU processes (None off rank 0)."""
    data = CXRDataModule(
        f"{raw}/train.csv",
        f"{prepared}/64/train",
        f"{prepared}/64/train_meta.csv",
        image_size=64,
        val_fraction=0.5,  # 8 validation images: 4 per rank
        num_workers=0,
        val_batch_size=3,  # batches that do not divide the shards evenly
    )
    module = load_detector(ckpt)
    module.model.roi_heads.score_thresh = 0.0  # an untrained model: keep every detection
    trainer = pl.Trainer(
        accelerator="cpu",
        devices=devices,
        strategy="ddp" if devices > 1 else "auto",
        callbacks=[CompetitionEvaluation()],  # evaluation=competition, as train.py adds it
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    (metrics,) = trainer.validate(module, datamodule=data, verbose=False)
    keys = ("val/images", "val/AP40", "val/mAP40", "val/loss")
    return {k: float(metrics[k]) for k in keys} if trainer.is_global_zero else None


def main() -> None:
    ckpt, prepared, raw, devices = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
    metrics = validate(ckpt, prepared, raw, devices)
    if metrics is not None:
        print("METRICS " + json.dumps(metrics))


if __name__ == "__main__":
    main()
