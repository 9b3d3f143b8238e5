"""Write a Kaggle submission: python predict.py ckpt_path=PATH [image_size=512] [key=value ...].

Boxes come back in original DICOM pixels; every image gets exactly one row. Prepared PNGs or
DICOMs (``dicom_dir=``), one checkpoint or a WBF ensemble (``ckpt_path=[a,b]``), ``tta=hflip``,
and the "No finding" line or classifier filter. See conf/predict.yaml.
"""

from __future__ import annotations

import sys

import hydra
from omegaconf import DictConfig, OmegaConf

import cxrdet  # noqa: F401  (sets NO_ALBUMENTATIONS_UPDATE before albumentations loads)
from cxrdet.data.labels import read_labels
from cxrdet.data.splits import split_ids
from cxrdet.inference.predictor import predict


@hydra.main(version_base="1.3", config_path="conf", config_name="predict")
def main(cfg: DictConfig) -> None:
    if OmegaConf.is_missing(cfg, "ckpt_path"):
        sys.exit(
            "error: pass the checkpoint to predict with: python predict.py ckpt_path="
            "outputs/train/<run>/checkpoints/last.ckpt (or a list: ckpt_path=[a.ckpt,b.ckpt])"
        )
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
    ckpt = cfg.ckpt_path
    image_ids = None
    if cfg.split.mode:  # the validation images of a training split, as train.py made it
        if cfg.dicom_dir:
            raise ValueError("split.mode works on prepared PNGs, not with dicom_dir")
        s = cfg.split
        labels, _ = read_labels(s.labels_csv)
        _, image_ids = split_ids(labels, s.mode, s.val_fraction, s.seed, s.fold, s.n_folds)
    return predict(
        ckpt_path=ckpt if isinstance(ckpt, str) else list(ckpt),
        output=cfg.output,
        image_dir=cfg.image_dir,
        meta_csv=cfg.meta_csv,
        dicom_dir=cfg.dicom_dir,
        keep_ratio=cfg.keep_ratio,
        score_thresh=cfg.score_thresh,
        max_detections=cfg.max_detections,
        batch_size=cfg.batch_size,
        num_workers=cfg.num_workers,
        device=cfg.device,
        precision=str(cfg.precision),
        tta=cfg.tta,
        weights=list(cfg.weights) if cfg.weights else None,
        fusion_iou=cfg.fusion_iou,
        fusion_skip=cfg.fusion_skip,
        nofinding_line=cfg.nofinding_line,
        nofinding_probs=cfg.nofinding.probs,
        nofinding_low=cfg.nofinding.low,
        nofinding_high=cfg.nofinding.high,
        viz=cfg.viz,
        image_ids=image_ids,
    )


if __name__ == "__main__":
    main()
