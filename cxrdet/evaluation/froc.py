"""FROC: sensitivity against mean false positives per image, and the CPM (LUNA16, NODE21).

Detections are matched as the competition metric matches them (IoU >= 0.4 with the best box of
their image and class; a second detection on a taken box is a false positive,
:func:`cxrdet.evaluation.competition.match_detections`). Lowering the score threshold one
distinct score at a time traces the curve: sensitivity = true positives / ground-truth boxes,
FPs per image = false positives / scored images (normal images count). The sensitivity at a
rate is the highest reached with at most that many FPs per image; the CPM is the mean of the
sensitivities at 1/8, 1/4, 1/2, 1, 2, 4 and 8 FPs per image. A class is scored over its own
boxes; "all findings" pools the detections and boxes of classes 0-13 ("No finding", an
image-level label, has no lesion to find).
"""

from __future__ import annotations

import numpy as np

from cxrdet.data.labels import NUM_FINDINGS
from cxrdet.evaluation.competition import match_detections

FP_RATES = (0.125, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0)


def froc_curve(tp: np.ndarray, score: np.ndarray, n_gt: int, n_images: int):
    """(FPs per image, sensitivity) at every distinct score threshold, (0, 0) first."""
    order = np.argsort(-score, kind="stable")
    tp, score = tp[order], score[order]
    last_of_score = np.r_[score[1:] != score[:-1], True] if len(score) else np.zeros(0, bool)
    hits, false = np.cumsum(tp)[last_of_score], np.cumsum(1 - tp)[last_of_score]
    return np.r_[0.0, false / n_images], np.r_[0.0, hits / n_gt]


def sensitivity_at(fps: np.ndarray, sensitivity: np.ndarray, rates=FP_RATES) -> list[float]:
    """The highest sensitivity with at most each rate of FPs per image."""
    return [float(sensitivity[fps <= rate].max()) for rate in rates]


def froc(gt: dict, dets: dict, iou: float = 0.4, rates=FP_RATES) -> dict:
    """FROC per class and over all findings (see the module docstring).

    Args:
        gt, dets: as :func:`cxrdet.evaluation.competition.competition_map` takes them.

    Returns:
        ``{"rates": [...], "CPM": all findings' CPM, "sensitivity": [...],
        "curve": (fps, sensitivity), "per_class": {class id: {"CPM", "sensitivity"}}}``
        over the findings with ground truth; ``CPM`` is nan when no finding has any.
    """
    m = match_detections(gt, dets, iou)
    n_images = max(len(gt), 1)
    n_gt = m.n_gt
    out = {"rates": list(rates), "per_class": {}, "images": len(gt)}
    for c in range(min(m.n_cls, NUM_FINDINGS)):
        if n_gt[c]:
            part = slice(m.bounds[c], m.bounds[c + 1])
            s = sensitivity_at(*froc_curve(m.tp[part], m.score[part], n_gt[c], n_images), rates)
            out["per_class"][c] = {"CPM": float(np.mean(s)), "sensitivity": s}
    findings = m.cls < NUM_FINDINGS
    total = int(n_gt[:NUM_FINDINGS].sum())
    if total == 0:
        return {**out, "CPM": float("nan"), "sensitivity": [], "curve": ([], [])}
    curve = froc_curve(m.tp[findings], m.score[findings], total, n_images)
    s = sensitivity_at(*curve, rates)
    return {**out, "CPM": float(np.mean(s)), "sensitivity": s, "curve": curve}
