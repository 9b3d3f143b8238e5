"""W&B's own box overlays of validation images: after each validation, a Table of the same
validation images, each a ``wandb.Image`` with a ``ground_truth`` and a ``predictions`` box
group, so classes can be toggled, a score threshold slid, and steps compared. It runs after
the competition evaluation (:class:`cxrdet.training.evaluation.CompetitionEvaluation`) and
draws what that scored.

Only with ``logger.wandb.log_images=true`` (chest X-rays are patient data). The boxes are the
validation's own (:class:`cxrdet.evaluation.evaluator.DetectionEvaluator`): the labels and the
predictions as the submission writes them, in original pixels (the captions show them so),
drawn on the prepared PNG. "No finding" is image-level: its score goes in the image caption.
"""

from __future__ import annotations

import numpy as np
import pytorch_lightning as pl
from pytorch_lightning.loggers import WandbLogger

from cxrdet.data.boxes import to_prepared
from cxrdet.data.classes import KAGGLE14, ClassSet
from cxrdet.data.dataset import load_png
from cxrdet.training.evaluation import CompetitionEvaluation


def box_group(
    boxes, classes, scores, orig_hw, image_hw, content, class_set: ClassSet = KAGGLE14
) -> dict:
    """One W&B box group: the class set's findings as fractions of the PNG, captions in
    original pixels."""
    names = class_set.names
    boxes = np.asarray(boxes, np.float64).reshape(-1, 4)
    on_png = to_prepared(boxes, orig_hw, image_hw, content) / np.tile(image_hw[::-1], 2)
    data = []
    for k in np.flatnonzero(np.asarray(classes) < class_set.num_findings):
        x0, y0, x1, y1 = on_png[k].clip(0, 1).tolist()
        c = int(classes[k])
        box = {"position": {"minX": x0, "minY": y0, "maxX": x1, "maxY": y1}, "class_id": c}
        score = "" if scores is None else f" {scores[k]:.2f}"
        box["box_caption"] = f"{names[c]}{score} [{', '.join(f'{v:.0f}' for v in boxes[k])}]"
        if scores is not None:
            box["scores"] = {"score": float(scores[k])}
        data.append(box)
    labels = {c: names[c] for c in range(class_set.num_findings)}
    return {"box_data": data, "class_labels": labels}


class WandbBoxOverlays(pl.Callback):
    """Logs ``val/boxes``, a W&B Table of the first ``n_images`` validation images (by id, the
    same ones every time) with their ground-truth and predicted boxes, after each validation."""

    def __init__(self, n_images: int = 16):
        self.n_images = n_images

    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        loggers = [lg for lg in trainer.loggers if isinstance(lg, WandbLogger)]
        val_set = getattr(trainer.datamodule, "val_set", None)
        evaluator = next(
            (c.evaluator for c in trainer.callbacks if isinstance(c, CompetitionEvaluation)), None
        )
        if trainer.sanity_checking or not loggers or val_set is None or evaluator is None:
            return
        import wandb

        records = {r.image_id: r for r in val_set.records}
        rows = []
        for image_id in sorted(i for i in evaluator.dets if i in records)[: self.n_images]:
            r, (gt_boxes, gt_classes) = records[image_id], evaluator.gt[image_id]
            boxes, scores, classes = evaluator.dets[image_id]
            image = load_png(val_set.image_dir / f"{image_id}.png")
            no_finding = scores[classes == evaluator.classes.no_finding]
            caption = (
                f"{image_id}  No finding {no_finding.max():.2f}" if len(no_finding) else image_id
            )
            groups = {
                "ground_truth": box_group(
                    gt_boxes, gt_classes, None, r.orig_hw, image.shape, r.content, evaluator.classes
                ),
                "predictions": box_group(
                    boxes, classes, scores, r.orig_hw, image.shape, r.content, evaluator.classes
                ),
            }
            rows.append([image_id, wandb.Image(image, boxes=groups, caption=caption)])
        if not rows:
            return
        for logger in loggers:
            logger.log_table(key="val/boxes", columns=["image_id", "image"], data=rows)
