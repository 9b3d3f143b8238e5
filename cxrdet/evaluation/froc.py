"""FROC: lesions found against mean false positives per image, and the CPM (LUNA16's protocol,
as NODE21 uses it for chest X-rays).

The truth is **lesions**, not readers' marks (:func:`cxrdet.evaluation.lesions.lesion_truth`:
the readers' boxes fused per lesion, or only those at least two readers marked). A detection
**hits** a lesion of its image when their IoU is at least 0.4; a lesion is found at a threshold
when any detection hitting it scores at least that; a detection that hits no lesion is a false
positive, unless it hits an *ignore* region (a mark fewer readers agreed on: neither hit nor
false positive). A second detection on a found lesion is therefore no false positive (LUNA16
ignores it), and one detection can find two lesions it overlaps.

Per class, lesions and detections of that class. **All findings** is class-agnostic: every
finding detection against every lesion whatever the classes (a box of the wrong class on a
lesion finds it for "all findings" and is a false positive of its own class). "No finding", an
image-level label, has no lesion and is left out.

The curve steps through every distinct score: sensitivity = lesions found / lesions, FPs per
image = false positives / scored images (normal images count). The sensitivity at a rate is the
curve's at the lowest threshold with no more than that many FPs per image (the step at or
below the rate; no interpolation); the CPM is the mean over 1/8, 1/4, 1/2, 1, 2, 4 and 8 FPs
per image.
"""

from __future__ import annotations

import numpy as np

from cxrdet.data.boxes import pair_ious
from cxrdet.data.labels import NO_FINDING  # kaggle14's: the default of no_finding below
from cxrdet.evaluation.pairs import flatten, same_group_pairs

FP_RATES = (0.125, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0)


def froc_curve(lesion_score: np.ndarray, fp_score: np.ndarray, n_images: int):
    """(FPs per image, sensitivity) at every distinct threshold, (0, 0) first.
    ``lesion_score``: each lesion's best hitting score (-inf when never hit);
    ``fp_score``: the false positives' scores."""
    found = lesion_score[np.isfinite(lesion_score)]
    thresholds = np.unique(np.r_[found, fp_score])[::-1]
    hits = np.searchsorted(np.sort(-found), -thresholds, side="right")
    false = np.searchsorted(np.sort(-fp_score), -thresholds, side="right")
    n = max(len(lesion_score), 1)
    return np.r_[0.0, false / n_images], np.r_[0.0, hits / n]


def sensitivity_at(fps: np.ndarray, sensitivity: np.ndarray, rates=FP_RATES) -> list[float]:
    """The sensitivity at the lowest threshold with at most each rate of FPs per image."""
    return [float(sensitivity[fps <= rate].max()) for rate in rates]


def hits(
    truth: dict, dets: dict, index: dict, iou: float, agnostic: bool, no_finding: int = NO_FINDING
):
    """Which (detection, truth box) pairs of the same image (and class, unless ``agnostic``)
    overlap at ``iou``; with the flat detection and truth arrays. The findings are the ids under
    ``no_finding`` (the class set's "No finding" id, its last)."""
    g_img, g_cls, g_box = flatten(truth, False, index)
    d_img, d_cls, d_score, d_box = flatten(dets, True, index)
    keep_d, keep_g = d_cls < no_finding, g_cls < no_finding
    d_img, d_cls, d_score, d_box = d_img[keep_d], d_cls[keep_d], d_score[keep_d], d_box[keep_d]
    g_img, g_cls, g_box = g_img[keep_g], g_cls[keep_g], g_box[keep_g]
    d_key = d_img if agnostic else d_img * no_finding + d_cls
    g_key = g_img if agnostic else g_img * no_finding + g_cls
    pair_d, pair_g = same_group_pairs(d_key, g_key)
    hit = pair_ious(d_box[pair_d], g_box[pair_g]) >= iou
    return (d_img, d_cls, d_score), (g_img, g_cls), pair_d[hit], pair_g[hit]


def lesion_scores(
    truth: dict, ignore: dict, dets: dict, iou: float, agnostic: bool, no_finding: int = NO_FINDING
):
    """Each lesion's best hitting score, class and image index, each false positive's score,
    class and image index (images in ``truth``'s order)."""
    index = {image_id: i for i, image_id in enumerate(truth)}
    (d_img, d_cls, d_score), (g_img, g_cls), pair_d, pair_g = hits(
        truth, dets, index, iou, agnostic, no_finding
    )
    best = np.full(len(g_cls), -np.inf)
    np.maximum.at(best, pair_g, d_score[pair_d])
    neutral = np.zeros(len(d_cls), bool)
    neutral[pair_d] = True
    if ignore:
        _, _, ignored_d, _ = hits(ignore, dets, index, iou, agnostic, no_finding)
        neutral[ignored_d] = True
    fp = ~neutral
    return (best, g_cls, g_img), (d_score[fp], d_cls[fp], d_img[fp])


def froc(
    truth: dict,
    dets: dict,
    iou: float = 0.4,
    rates=FP_RATES,
    ignore: dict | None = None,
    no_finding: int = NO_FINDING,
):
    """FROC per class and over all findings (see the module docstring).

    Args:
        truth: image id → (lesion boxes, class ids), every scored image a key (class 14 rows,
            if any, are left out).
        dets: image id → (boxes, scores, class ids).
        ignore: image id → (boxes, class ids) of marks neither hit nor false positive.
        no_finding: the class set's "No finding" id (the findings are the ids under it).

    Returns:
        ``{"rates", "images", "lesions", "CPM", "sensitivity", "curve",
        "per_class": {class id: {"CPM", "sensitivity", "lesions"}}}``; the top level is the
        class-agnostic pool, ``CPM`` nan without any lesion.
    """
    n_images = max(len(truth), 1)
    ignore = ignore or {}
    out = {"rates": list(rates), "per_class": {}, "images": len(truth)}
    (best, g_cls, _), (fp_score, fp_cls, _) = lesion_scores(
        truth, ignore, dets, iou, False, no_finding
    )
    for c in np.unique(g_cls):
        curve = froc_curve(best[g_cls == c], fp_score[fp_cls == c], n_images)
        s = sensitivity_at(*curve, rates)
        lesions = int((g_cls == c).sum())
        out["per_class"][int(c)] = {"CPM": float(np.mean(s)), "sensitivity": s, "lesions": lesions}
    (best, _, _), (fp_score, _, _) = lesion_scores(truth, ignore, dets, iou, True, no_finding)
    out["lesions"] = len(best)
    if not len(best):
        return {**out, "CPM": float("nan"), "sensitivity": [], "curve": ([], [])}
    curve = froc_curve(best, fp_score, n_images)
    s = sensitivity_at(*curve, rates)
    return {**out, "CPM": float(np.mean(s)), "sensitivity": s, "curve": curve}
