"""After the detector: fusing prediction sets (TTA, ensembles) and the "No finding" filter."""

from __future__ import annotations

import numpy as np
from ensemble_boxes import weighted_boxes_fusion

from cxrdet.boxes import Content, clip, to_original, valid
from cxrdet.competition import add_no_finding, no_finding_as_image_label
from cxrdet.labels import NO_FINDING, NO_FINDING_BOX

Prediction = tuple[np.ndarray, np.ndarray, np.ndarray]  # boxes [N, 4], scores [N], classes [N]


def to_original_prediction(
    pred: Prediction, orig_hw, image_hw, content: Content | None = None
) -> Prediction:
    """A prediction on a prepared image as the submission writes it: boxes mapped back to
    original pixels and clipped to the image; a box that ends up under a pixel (one lying in
    the letterbox padding) is dropped; class-14 detections become one image-level line
    (:func:`cxrdet.competition.no_finding_as_image_label`).

    The content rectangle maps onto the original image, so clipping to the image clips to it.
    """
    boxes, scores, classes = pred
    boxes = clip(to_original(boxes, orig_hw, image_hw, content), orig_hw)
    boxes, scores, classes = no_finding_as_image_label(boxes, scores, classes)
    keep = valid(boxes)
    return boxes[keep], np.asarray(scores)[keep], np.asarray(classes)[keep]


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


def nofinding_filter(pred: Prediction, p_abnormal: float, low: float, high: float) -> Prediction:
    """The winners' "No finding" rule from an image-level classifier's P(abnormal).

    Below ``low``: only ``14 1 0 0 1 1``. From ``low`` to ``high``: the boxes plus
    ``14 <1 - p> 0 0 1 1``. From ``high`` up: the boxes unchanged.
    """
    boxes, scores, classes = pred
    if p_abnormal < low:
        return NO_FINDING_BOX[None].copy(), np.array([1.0]), np.array([NO_FINDING])
    if p_abnormal < high:
        return add_no_finding(boxes, scores, classes, 1.0 - p_abnormal)
    return pred
