"""After the detector: fusing prediction sets (TTA views, ensemble members) with WBF."""

from __future__ import annotations

import numpy as np
from ensemble_boxes import weighted_boxes_fusion

from cxrdet.evaluation.nofinding import Prediction


def hflip_boxes(boxes: np.ndarray, width: float) -> np.ndarray:
    """Mirror xyxy boxes in an image of ``width`` pixels."""
    b = np.asarray(boxes, np.float64).reshape(-1, 4)
    return np.stack([width - b[:, 2], b[:, 1], width - b[:, 0], b[:, 3]], axis=1)


def fuse_predictions(
    sets: list[Prediction],
    hw: tuple[float, float],
    weights: list[float] | None = None,
    iou: float = 0.55,
    skip: float = 0.0,
) -> Prediction:
    """Weighted boxes fusion (ensemble-boxes) of several predictions of one image.

    Args:
        sets: one prediction per model / TTA view, boxes in the same pixel space.
        hw: that space's height and width (ensemble-boxes works in [0, 1]).
        weights: one weight per set (default equal).
        iou: boxes of one class overlapping at least this much are fused.
        skip: boxes scoring below this are dropped first.

    A single set is returned as it is.
    """
    if len(sets) == 1:
        return sets[0]
    h, w = hw
    scale = np.array([w, h, w, h], np.float64)
    boxes = [np.clip(np.asarray(b, np.float64).reshape(-1, 4) / scale, 0, 1) for b, _, _ in sets]
    boxes, scores, classes = weighted_boxes_fusion(
        boxes,
        [np.asarray(s, np.float64) for _, s, _ in sets],
        [np.asarray(c) for _, _, c in sets],
        weights=weights,
        iou_thr=iou,
        skip_box_thr=skip,
    )
    return boxes.reshape(-1, 4) * scale, scores, classes.astype(np.int64)
