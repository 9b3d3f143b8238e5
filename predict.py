"""Write a Kaggle submission: python predict.py ckpt_path=PATH [image_size=512] [key=value ...].

Boxes come back in original DICOM pixels (via the meta CSV); every image in the meta CSV gets
exactly one row, ``14 1 0 0 1 1`` when nothing was detected. See conf/predict.yaml.
"""

from __future__ import annotations

import sys

import hydra
from omegaconf import DictConfig

import cxrdet  # noqa: F401  (sets NO_ALBUMENTATIONS_UPDATE before albumentations loads)
from cxrdet.predictor import predict


@hydra.main(version_base="1.3", config_path="conf", config_name="predict")
def main(cfg: DictConfig) -> None:
    try:
        summary = run(cfg)
    except (FileNotFoundError, ValueError) as e:  # bad input: say what and where, no traceback
        sys.exit(f"error: {e}")
    print(
        f"submission: {summary['submission']} ({summary['images']} images, "
        f"{summary['images_per_s']} images/s on {summary['device']})"
    )


def run(cfg: DictConfig) -> dict:
    """Predict with the settings in ``cfg`` (conf/predict.yaml)."""
    return predict(
        ckpt_path=cfg.ckpt_path,
        image_dir=cfg.image_dir,
        meta_csv=cfg.meta_csv,
        output=cfg.output,
        score_thresh=cfg.score_thresh,
        max_detections=cfg.max_detections,
        batch_size=cfg.batch_size,
        num_workers=cfg.num_workers,
        device=cfg.device,
        nofinding_line=cfg.nofinding_line,
    )


if __name__ == "__main__":
    main()
