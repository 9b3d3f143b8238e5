"""AP40: COCO-style 101-point AP at IoU 0.4 only, 100 detections per image (the seed's metric),
and the validation evaluator that reports it next to the competition's mAP40.

Computed by faster-coco-eval (same numbers as pycocotools, several times faster). Boxes may be in
any pixel space as long as ground truth and detections share it: IoU does not change when both
are scaled by the same factors.
"""

from __future__ import annotations

import logging
import math

import numpy as np
from faster_coco_eval import COCO, COCOeval_faster

from cxrdet.competition import NO_FINDING_BOX, competition_map, flatten, with_no_finding
from cxrdet.labels import NO_FINDING

log = logging.getLogger(__name__)


def _annotations(images, classes, boxes, scores=None) -> list[dict]:
    """COCO annotation dicts (xywh boxes, ids from 1) from flat arrays."""
    xywh = np.column_stack([boxes[:, :2], boxes[:, 2:] - boxes[:, :2]]).tolist()
    out = [
        {
            "id": k,
            "image_id": image,
            "category_id": cls,
            "bbox": box,
            "area": box[2] * box[3],
            "iscrowd": 0,
        }
        for k, (image, cls, box) in enumerate(zip(images.tolist(), classes.tolist(), xywh), 1)
    ]
    if scores is not None:
        for a, score in zip(out, scores.tolist()):
            a["score"] = score
    return out


def coco_ap(
    gt: dict[str, tuple[np.ndarray, np.ndarray]],
    dets: dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]],
    num_classes: int,
    iou: float = 0.4,
    max_dets: int = 100,
) -> dict:
    """COCO-style AP at a single IoU threshold.

    Args:
        gt: image id → (boxes [N, 4] xyxy, class ids [N]); every evaluated image must be a key,
            including images without boxes.
        dets: image id → (boxes [M, 4] xyxy, scores [M], class ids [M]); missing ids = nothing.
        num_classes: class ids run 0..num_classes-1.
        iou: the IoU threshold.
        max_dets: detections per image kept (highest scores).

    Returns:
        ``{"AP": mean over classes with ground truth (nan if none), "per_class": {id: AP}}``;
        classes without ground truth are left out of both.
    """
    index = {image_id: i + 1 for i, image_id in enumerate(gt)}
    g_img, g_cls, g_box = flatten(gt, False, index)
    d_img, d_cls, d_score, d_box = flatten(dets, True, index)
    with_gt = sorted(set(g_cls.tolist()))
    if not with_gt:
        log.warning("no ground-truth boxes: AP is undefined")
        return {"AP": math.nan, "per_class": {}}
    if not len(d_img):
        return {"AP": 0.0, "per_class": dict.fromkeys(with_gt, 0.0)}
    frame = {
        "images": [{"id": i} for i in index.values()],
        "categories": [{"id": c} for c in range(num_classes)],
    }
    # Both sides are built as datasets: COCO.loadRes would redo this row by row, much slower.
    coco_gt = COCO({**frame, "annotations": _annotations(g_img, g_cls, g_box)})
    coco_dt = COCO({**frame, "annotations": _annotations(d_img, d_cls, d_box, d_score)})
    ev = COCOeval_faster(coco_gt, coco_dt, iouType="bbox", print_function=log.debug)
    ev.params.iouThrs = np.array([iou])
    ev.params.maxDets = [max_dets]
    ev.params.areaRng = [[0, 1e10]]
    ev.params.areaRngLbl = ["all"]
    ev.evaluate()
    ev.accumulate()
    precision = ev.eval["precision"][0, :, :, 0, 0]  # [recall points, classes]
    per_class = {}
    for k, c in enumerate(ev.params.catIds):
        if c in with_gt:
            p = precision[:, k]
            per_class[int(c)] = float(p[p > -1].mean()) if (p > -1).any() else 0.0
    return {"AP": float(np.mean(list(per_class.values()))), "per_class": per_class}


class DetectionEvaluator:
    """Collects predictions batch by batch and scores them (reset / process / evaluate).

    ``evaluate`` returns the seed's AP40 over the trained classes and the competition mAP40,
    for which an image without ground-truth boxes has a "No finding" box and every image a
    "No finding" detection scored as predict.py writes it
    (:func:`cxrdet.competition.with_no_finding`).
    """

    def __init__(self, num_classes: int, iou: float = 0.4, max_dets: int = 100):
        self.num_classes, self.iou, self.max_dets = num_classes, iou, max_dets
        self.reset()

    def reset(self) -> None:
        self.gt: dict = {}
        self.dets: dict = {}

    def process(self, targets: list[dict], outputs: list[dict]) -> None:
        """Add one batch: torchvision targets and outputs (labels = class id + 1)."""
        for t, o in zip(targets, outputs):
            image_id = t["image_id"]
            self.gt[image_id] = (t["boxes"].cpu().numpy(), t["labels"].cpu().numpy() - 1)
            self.dets[image_id] = (
                o["boxes"].detach().float().cpu().numpy(),
                o["scores"].detach().float().cpu().numpy(),
                o["labels"].cpu().numpy() - 1,
            )

    def evaluate(self, curves: bool = False) -> dict:
        """``{"AP40", "AP40_per_class", "mAP40", "mAP40_per_class"}`` (+ ``"mAP40_curves"``:
        class id → (recall, precision) with ``curves``)."""
        coco = coco_ap(self.gt, self.dets, self.num_classes, self.iou, self.max_dets)
        gt = {
            i: (b, c) if len(c) else (NO_FINDING_BOX[None], np.array([NO_FINDING]))
            for i, (b, c) in self.gt.items()
        }
        dets = {i: with_no_finding(*d) for i, d in self.dets.items()}
        competition = competition_map(gt, dets, self.iou, curves=curves)
        result = {
            "AP40": coco["AP"],
            "AP40_per_class": coco["per_class"],
            "mAP40": competition["mAP"],
            "mAP40_per_class": competition["per_class"],
        }
        if curves:
            result["mAP40_curves"] = competition["curves"]
        return result
