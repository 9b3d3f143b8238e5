"""The competition metric: mAP at IoU 0.4, PASCAL VOC 2010 style, written out (vectorised).

Per class, detections of all images are taken in descending score (ties in the order of the
ground truth's images, then as given within an image); each takes the ground-truth box of its
image and class with the highest IoU, and is a true positive when that IoU is >= 0.4 and no
earlier detection took the same box (a duplicate is a false positive). AP is the area under the
all-point interpolated precision-recall curve; the mean runs over the classes that have ground
truth. "No finding" (14) is an ordinary class whose boxes are ``0 0 1 1``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from cxrdet.data.boxes import pair_ious
from cxrdet.evaluation.pairs import flatten, same_group_pairs


def voc_ap(tp: np.ndarray, n_gt: int) -> float:
    """All-point interpolated AP of a TP/FP sequence (descending score) with ``n_gt`` positives."""
    if n_gt == 0:
        return float("nan")
    if len(tp) == 0:
        return 0.0
    ctp = np.cumsum(tp)
    recall = np.concatenate(([0.0], ctp / n_gt, [1.0]))
    precision = np.concatenate(([0.0], ctp / np.arange(1, len(tp) + 1), [0.0]))
    precision = np.maximum.accumulate(precision[::-1])[::-1]
    step = np.nonzero(recall[1:] != recall[:-1])[0]
    return float(np.sum((recall[step + 1] - recall[step]) * precision[step + 1]))


@dataclass
class Matches:
    """Every detection of a scored set, matched the competition's way (see the module docstring).

    Detection arrays (``image``, ``cls``, ``score``, ``box``, ``tp``, ``best_gt``, ``best_iou``)
    are in descending-score order within each class, classes ascending (``bounds[c]:bounds[c+1]``
    is class c); ``best_gt`` indexes the ground-truth arrays (``g_image``, ``g_cls``, ``g_box``),
    -1 where the image has no box of the class. ``image_ids`` maps image indices back to ids.
    """

    image_ids: list
    image: np.ndarray
    cls: np.ndarray
    score: np.ndarray
    box: np.ndarray
    tp: np.ndarray
    best_gt: np.ndarray
    best_iou: np.ndarray
    g_image: np.ndarray
    g_cls: np.ndarray
    g_box: np.ndarray
    n_cls: int
    bounds: np.ndarray

    @property
    def n_gt(self) -> np.ndarray:
        return np.bincount(self.g_cls, minlength=self.n_cls)


def match_detections(gt: dict, dets: dict, iou: float = 0.4) -> Matches:
    """Each detection's best ground-truth box of its image and class, and whether it is a true
    positive at ``iou`` (arguments as :func:`competition_map`)."""
    index = {image_id: i for i, image_id in enumerate(gt)}
    g_img, g_cls, g_box = flatten(gt, False, index)
    d_img, d_cls, d_score, d_box = flatten(dets, True, index)
    n_cls = int(max(g_cls.max(initial=0), d_cls.max(initial=0))) + 1

    # Every (detection, ground truth) pair of the same image and class.
    pair_det, pair_gt = same_group_pairs(d_img * n_cls + d_cls, g_img * n_cls + g_cls)
    pair_iou = pair_ious(d_box[pair_det], g_box[pair_gt])

    # Each detection's best ground truth (the first one on ties, like argmax).
    best_gt = np.full(len(d_cls), -1)
    best_iou = np.zeros(len(d_cls))
    if len(pair_det):
        order = np.lexsort((pair_gt, -pair_iou, pair_det))
        first = order[np.r_[True, pair_det[order][1:] != pair_det[order][:-1]]]
        best_gt[pair_det[first]] = pair_gt[first]
        best_iou[pair_det[first]] = pair_iou[first]
    hit = best_iou >= iou

    # Class by class, descending score; the first hit on a ground-truth box is a TP.
    order = np.lexsort((np.arange(len(d_cls)), -d_score, d_cls))
    hit_sorted, gt_sorted = hit[order], best_gt[order]
    tp = np.zeros(len(order))
    hit_pos = np.nonzero(hit_sorted)[0]
    _, first_hit = np.unique(gt_sorted[hit_pos], return_index=True)
    tp[hit_pos[first_hit]] = 1.0
    return Matches(
        image_ids=list(gt),
        image=d_img[order],
        cls=d_cls[order],
        score=d_score[order],
        box=d_box[order],
        tp=tp,
        best_gt=gt_sorted,
        best_iou=best_iou[order],
        g_image=g_img,
        g_cls=g_cls,
        g_box=g_box,
        n_cls=n_cls,
        bounds=np.searchsorted(d_cls[order], np.arange(n_cls + 1)),
    )


def competition_map(gt: dict, dets: dict, iou: float = 0.4, curves: bool = False) -> dict:
    """mAP@``iou`` as the competition computes it (see the module docstring).

    Args:
        gt: image id → (boxes [N, 4] xyxy, class ids [N]); every scored image is a key.
        dets: image id → (boxes [M, 4], scores [M], class ids [M]); other ids are ignored.
        iou: the IoU threshold (>=).
        curves: also return each class's precision-recall curve.

    Returns:
        ``{"mAP": float (nan without ground truth), "per_class": {class id: AP}}`` over the
        classes with ground truth, plus ``"curves": {class id: (recall, precision)}``.
    """
    return map_of(match_detections(gt, dets, iou), curves)


def map_of(m: Matches, curves: bool = False, n_gt: np.ndarray | None = None) -> dict:
    """:func:`competition_map` of matched detections (``n_gt``: other ground-truth counts per
    class, for an error analysis that removes missed boxes)."""
    n_gt = m.n_gt if n_gt is None else n_gt
    tp, bounds = m.tp, m.bounds
    per_class = {
        c: voc_ap(tp[bounds[c] : bounds[c + 1]], int(n_gt[c])) for c in range(m.n_cls) if n_gt[c]
    }
    mean = float(np.mean(list(per_class.values()))) if per_class else float("nan")
    out = {"mAP": mean, "per_class": per_class}
    if curves:
        out["curves"] = {}
        for c in per_class:
            hits = np.cumsum(tp[bounds[c] : bounds[c + 1]])
            ranks = np.arange(1, len(hits) + 1)
            out["curves"][c] = (hits / n_gt[c], hits / np.maximum(ranks, 1))
    return out
