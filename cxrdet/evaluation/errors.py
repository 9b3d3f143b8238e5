"""Where the errors are: a TIDE-style breakdown of the competition metric (Bolya et al., 2020).

Detections are matched as the competition matches them
(:func:`cxrdet.evaluation.competition.match_detections`). Each false positive gets the first
type that fits, in TIDE's order, with the foreground IoU ``iou`` (0.4) and the background IoU
``background`` (0.1):

- **localisation** (``Loc``): IoU with a box of its own class in [0.1, 0.4);
- **classification** (``Cls``): IoU >= 0.4 with a box of another class;
- **duplicate** (``Dupe``): IoU >= 0.4 with a box of its class already taken by a
  higher-scoring detection;
- **background** (``Bkg``): IoU <= 0.1 with every box of the image;
- **both** (``Both``): the rest (wrong class and poorly placed).

A ground-truth box that no true positive took is **missed** (``Miss``) unless a Cls or Loc error
points at it (it would be found if that error were fixed). The mAP40 an error type costs is the
gain if the oracle fixed every error of that type, all else kept: a Cls or Loc error becomes the
true positive of its box (the highest-scoring such error per box; the others are removed, as is
any aimed at a box already taken); Dupe, Bkg and Both errors are removed; missed boxes leave
the ground truth. The mean runs over the classes with ground truth, as mAP40's does, and every
fix keeps that class set: a class whose every box was missed scores 0 after the Miss fix (it
does not leave the mean, which would raise mAP40 for finding nothing).
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from cxrdet.data.boxes import iou_matrix
from cxrdet.data.labels import BOX_COLUMNS
from cxrdet.evaluation.competition import Matches, match_detections, voc_ap

ERROR_TYPES = ("Cls", "Loc", "Both", "Dupe", "Bkg", "Miss")
ERROR_NAMES = {
    "Cls": "classification",
    "Loc": "localisation",
    "Both": "both",
    "Dupe": "duplicate",
    "Bkg": "background",
    "Miss": "missed",
}


def classify_false_positives(m: Matches, iou: float, background: float) -> tuple:
    """Each detection's error type ("" for a true positive) and the ground-truth box a Cls or
    Loc error points at (-1 otherwise)."""
    kind = np.full(len(m.cls), "", dtype=object)
    target = np.full(len(m.cls), -1)
    taken = np.zeros(len(m.g_cls), bool)
    taken[m.best_gt[m.tp == 1]] = True
    # The false positives and the ground truth grouped by image once (index order within each).
    false = np.flatnonzero(m.tp == 0)
    false = false[np.argsort(m.image[false], kind="stable")]
    images, starts = np.unique(m.image[false], return_index=True)
    g_order = np.argsort(m.g_image, kind="stable")
    g_sorted = m.g_image[g_order]
    g_bounds = zip(
        np.searchsorted(g_sorted, images, "left"), np.searchsorted(g_sorted, images, "right")
    )
    for dets, (g_start, g_end) in zip(np.split(false, starts[1:]), g_bounds):
        gts = g_order[g_start:g_end]
        if len(gts) == 0:
            kind[dets] = "Bkg"
            continue
        ious = iou_matrix(m.box[dets], m.g_box[gts])
        same = m.cls[dets][:, None] == m.g_cls[gts][None, :]
        own, other = np.where(same, ious, 0.0), np.where(same, 0.0, ious)
        rows = np.arange(len(dets))
        best_own, best_other = own.argmax(1), other.argmax(1)
        own_iou, other_iou = own[rows, best_own], other[rows, best_other]
        loc = (background <= own_iou) & (own_iou < iou)
        cls = ~loc & (other_iou >= iou)
        dupe = ~loc & ~cls & (own_iou >= iou) & taken[gts[best_own]]
        bkg = ~loc & ~cls & ~dupe & (ious.max(1) <= background)
        kind[dets] = np.select([loc, cls, dupe, bkg], ["Loc", "Cls", "Dupe", "Bkg"], "Both")
        target[dets[loc]] = gts[best_own[loc]]
        target[dets[cls]] = gts[best_other[cls]]
    return kind, target, taken


def class_aps(cls, score, tp, n_gt: np.ndarray) -> dict:
    """VOC AP per class with ground truth, detections ranked by descending score (stable)."""
    order = np.lexsort((np.arange(len(cls)), -np.asarray(score), cls))
    cls, tp = np.asarray(cls)[order], np.asarray(tp)[order]
    return {c: voc_ap(tp[cls == c], int(n_gt[c])) for c in range(len(n_gt)) if n_gt[c] > 0}


def error_breakdown(gt: dict, dets: dict, iou: float = 0.4, background: float = 0.1) -> dict:
    """The error breakdown of a scored set (see the module docstring).

    Args:
        gt, dets: as :func:`cxrdet.evaluation.competition.competition_map` takes them.

    Returns:
        ``{"mAP40", "per_class", "counts": {type: {class: n}} (a Cls error under the class
        of the box it hit, whose AP fixing it raises), "dAP": {type: mAP40 gained},
        "dAP_per_class": {type: {class: AP gained}}, "errors": DataFrame}`` with one row per
        error: ``type``, ``image_id``, ``class_id``, ``score`` (nan for Miss), the box
        (``x_min``..``y_max``), and for Cls/Loc the class of the box it points at.
    """
    m = match_detections(gt, dets, iou)
    kind, target, taken = classify_false_positives(m, iou, background)
    pointed = np.zeros(len(m.g_cls), bool)
    pointed[target[target >= 0]] = True
    missed = ~taken & ~pointed
    n_gt = m.n_gt
    base = class_aps(m.cls, m.score, m.tp, n_gt)

    # The oracle's fix of one type at a time.
    fixable = np.flatnonzero(target >= 0)
    best = {}  # box -> its highest-scoring Cls/Loc error (ties: the first in rank order)
    for d in fixable[np.argsort(-m.score[fixable], kind="stable")]:
        best.setdefault(target[d], d)
    fixes = {}
    for t in ("Cls", "Loc"):
        cls, tp, keep = m.cls.copy(), m.tp.copy(), np.ones(len(m.cls), bool)
        for d in np.flatnonzero(kind == t):
            if taken[target[d]] or best[target[d]] != d:
                keep[d] = False
            else:
                cls[d], tp[d] = m.g_cls[target[d]], 1.0
        fixes[t] = class_aps(cls[keep], m.score[keep], tp[keep], n_gt)
    for t in ("Both", "Dupe", "Bkg"):
        keep = kind != t
        fixes[t] = class_aps(m.cls[keep], m.score[keep], m.tp[keep], n_gt)
    fewer = n_gt - np.bincount(m.g_cls[missed], minlength=m.n_cls)
    # Over the base's classes: one whose every box was missed keeps AP 0 (as tidecv scores a
    # class left without boxes), not leaving the mean (which would raise it for nothing found).
    fixes["Miss"] = {c: 0.0 for c in base} | class_aps(m.cls, m.score, m.tp, fewer)

    mean = lambda aps: float(np.mean(list(aps.values()))) if aps else float("nan")  # noqa: E731
    # One row per error: the false positives, then the missed boxes.
    fp, miss = np.flatnonzero(kind != ""), np.flatnonzero(missed)
    pointed_class = np.full(len(fp), -1)
    aimed = target[fp] >= 0
    pointed_class[aimed] = m.g_cls[target[fp][aimed]]
    errors = pd.DataFrame(
        {
            "type": np.r_[kind[fp].astype(str), np.full(len(miss), "Miss")],
            "image_id": np.asarray(m.image_ids, object)[np.r_[m.image[fp], m.g_image[miss]]],
            "class_id": np.r_[m.cls[fp], m.g_cls[miss]],
            "score": np.r_[m.score[fp], np.full(len(miss), np.nan)],
            **{c: np.r_[m.box[fp, k], m.g_box[miss, k]] for k, c in enumerate(BOX_COLUMNS)},
            "target_class": np.r_[pointed_class, np.full(len(miss), -1)],
        }
    )
    # Per class: where fixing them raises the AP. A Cls error counts under its box's class.
    counts = {}
    for t in ERROR_TYPES:
        rows_t = errors[errors.type == t]
        by = rows_t.target_class if t == "Cls" else rows_t.class_id
        counts[t] = {int(c): int(n) for c, n in by.value_counts().sort_index().items()}
    return {
        "mAP40": mean(base),
        "per_class": base,
        "counts": counts,
        "dAP": {t: mean(fixes[t]) - mean(base) for t in ERROR_TYPES},
        "dAP_per_class": {
            t: {c: fixes[t].get(c, np.nan) - ap for c, ap in base.items()} for t in ERROR_TYPES
        },
        "errors": errors,
    }
