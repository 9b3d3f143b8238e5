"""The radiologists as a baseline: each reader scored against the others, and the model beside.

Every image read by at least two radiologists gives each of its readers a leave-one-out test:
the reader's own marks are the submission (every box with score 1; "No finding" as the
``0 0 1 1`` line where the reader marked nothing), the other readers' boxes, fused as training
fuses them (WBF at IoU 0.4 by default), are the ground truth. A reader is scored on all the
images they read, with the competition's code (mAP40, AP40 and per class); the model is scored
against the same ground truths on the same images, so the two stand on equal terms.

With every box at score 1 a reader has one operating point, not a ranking: a reader's AP is
scored as one tied block (:func:`tied_map`: the precision-recall curve is the single point all
marks make, AP = precision x recall per class), so the order of the images (their names) never
changes it. That is AP of a different construct from the model's ranked AP; the readers at
their operating points (:mod:`cxrdet.evaluation.operating_points`) compare like with like. The
readers' mean and the model's figure under this protocol (``mAP40_vs_readers``) are means over
the readers weighted by the images each read, over the same classes (those with ground truth
in the reader's test).
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from cxrdet.data.classes import KAGGLE14, ClassSet
from cxrdet.data.fusion import fuse_readers
from cxrdet.data.labels import BOX_COLUMNS, NO_FINDING_BOX, ground_truth, is_no_finding
from cxrdet.evaluation.competition import competition_map, match_detections
from cxrdet.evaluation.evaluator import score_predictions

EMPTY = (np.zeros((0, 4)), np.zeros(0), np.zeros(0, np.int64))


def reader_marks(rows: pd.DataFrame) -> tuple:
    """One reader's rows of one image as a submission line: findings at score 1, or the
    "No finding" box when there is none."""
    finding = rows[~is_no_finding(rows)]
    if finding.empty:  # every row is "No finding": its set's id
        return NO_FINDING_BOX[None, :].copy(), np.ones(1), rows["class_id"].to_numpy()[:1]
    boxes = finding[BOX_COLUMNS].to_numpy(np.float64)
    return boxes, np.ones(len(boxes)), finding["class_id"].to_numpy(np.int64)


def leave_one_out(labels: pd.DataFrame, fusion: str = "wbf", fusion_iou: float = 0.4) -> dict:
    """reader id → (ground truth from the other readers, the reader's marks), over the images
    the reader read that have at least one other reader (see the module docstring)."""
    labels = labels.assign(rad_id=labels["rad_id"].fillna("?").astype(str))
    readers_of = labels.groupby("image_id")["rad_id"].nunique()
    shared = labels[labels["image_id"].isin(readers_of.index[readers_of >= 2])]
    out = {}
    for reader, own in shared.groupby("rad_id", sort=True):
        ids = sorted(own["image_id"].unique())
        others = shared[shared["image_id"].isin(ids) & (shared["rad_id"] != reader)]
        gt = ground_truth(fuse_readers(others, fusion, fusion_iou), ids)
        marks = {i: reader_marks(rows) for i, rows in own.groupby("image_id")}
        out[reader] = (gt, marks)
    return out


def scored(gt: dict, dets: dict, iou: float, classes: ClassSet = KAGGLE14) -> dict:
    """:func:`score_predictions`, AP40 nan without a finding in ``gt`` (a reader whose
    colleagues saw only normal images) instead of a warning per reader."""
    if any((c != classes.no_finding).any() for _, c in gt.values()):
        return score_predictions(gt, dets, iou, classes=classes)
    competition = competition_map(gt, dets, iou)
    return {
        "mAP40": competition["mAP"],
        "mAP40_per_class": competition["per_class"],
        "AP40": float("nan"),
    }


def tied_map(gt: dict, marks: dict, iou: float) -> dict:
    """The competition's mAP of marks that all score the same, as one threshold: per class
    with ground truth, AP = precision x recall of all its marks (a true positive is a mark
    whose best box of its class is at IoU >= ``iou``, each box taken once: a count no order
    changes), 0 without marks; the mean over those classes. AP40 (COCO's) is not given."""
    m = match_detections(gt, marks, iou)
    n_gt = m.n_gt
    per_class = {}
    for c in np.flatnonzero(n_gt):
        marked = m.bounds[c + 1] - m.bounds[c]
        hits = float(m.tp[m.bounds[c] : m.bounds[c + 1]].sum())
        per_class[int(c)] = (hits / marked) * (hits / n_gt[c]) if marked else 0.0
    mean = float(np.mean(list(per_class.values()))) if per_class else float("nan")
    return {"mAP40": mean, "mAP40_per_class": per_class, "AP40": float("nan")}


def weighted(values: list[float], weights: list[int]) -> float:
    """The mean of the non-nan values, weighted; nan when there are none."""
    v, w = np.asarray(values, float), np.asarray(weights, float)
    ok = ~np.isnan(v)
    return float(np.average(v[ok], weights=w[ok])) if ok.any() else float("nan")


def readers_baseline(
    sets: dict, dets: dict, iou: float = 0.4, classes: ClassSet = KAGGLE14
) -> dict:
    """Each reader and the model scored on the reader's leave-one-out test.

    Args:
        sets: :func:`leave_one_out`'s result.
        dets: the model's submission, image id → (boxes, scores, class ids), original pixels.
        classes: the class set of the ids.

    Returns:
        ``{"readers": [{"reader", "images", "reader_mAP40", "model_mAP40", "reader_AP40",
        "model_AP40", "reader_per_class", "model_per_class"}], "readers_mAP40",
        "mAP40_vs_readers", "readers_AP40", "AP40_vs_readers", "per_class": {class id:
        (readers' mean AP, the model's)}, "images"}``; nan figures when no image has two readers.
    """
    rows = []
    for reader, (gt, marks) in sets.items():
        human = tied_map(gt, marks, iou)
        model = scored(gt, {i: dets.get(i, EMPTY) for i in gt}, iou, classes)
        rows.append(
            {
                "reader": reader,
                "images": len(gt),
                "reader_mAP40": human["mAP40"],
                "model_mAP40": model["mAP40"],
                "reader_AP40": human["AP40"],
                "model_AP40": model["AP40"],
                "reader_per_class": human["mAP40_per_class"],
                "model_per_class": model["mAP40_per_class"],
            }
        )
    images = [r["images"] for r in rows]
    classes = sorted({c for r in rows for c in r["reader_per_class"]})
    per_class = {}
    for c in classes:
        having = [r for r in rows if c in r["reader_per_class"]]
        w = [r["images"] for r in having]
        per_class[c] = (
            weighted([r["reader_per_class"][c] for r in having], w),
            weighted([r["model_per_class"][c] for r in having], w),
        )
    figure = lambda key: weighted([r[key] for r in rows], images)  # noqa: E731
    return {
        "readers": rows,
        "readers_mAP40": figure("reader_mAP40"),
        "mAP40_vs_readers": figure("model_mAP40"),
        "readers_AP40": figure("reader_AP40"),
        "AP40_vs_readers": figure("model_AP40"),
        "per_class": per_class,
        "images": len({i for gt, _ in sets.values() for i in gt}),
    }
