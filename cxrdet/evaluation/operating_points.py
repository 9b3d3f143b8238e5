"""The radiologists at their operating points, and the model at the same false-positive rates.

A reader marks boxes without scores: one operating point, (share of lesions found, false
positives per image), not a ranking. Each reader is scored that way on their leave-one-out
test (:func:`cxrdet.evaluation.readers.leave_one_out`: the other readers' boxes fused are the
lesions), with FROC's rules (:mod:`cxrdet.evaluation.froc`: IoU 0.4, a second mark on a found
lesion no false positive). The model is read on its FROC curve through the same lesions at
the reader's rate of false positives per image, and the difference (model - reader) gets a
paired 95 % bootstrap interval over the images: **above** when the interval lies above 0,
**below** when under it, **within** otherwise.

Rows: each reader over all findings (class-agnostic), then per class the readers pooled (every
reader's leave-one-out images side by side, so a class is judged on all its lesions).
"""

from __future__ import annotations

import numpy as np

from cxrdet.data.labels import NO_FINDING  # kaggle14's: the default of no_finding
from cxrdet.evaluation.bootstrap import (
    RESAMPLES,
    image_weights,
    interval,
    resampled_curves,
    sensitivity_at_rates,
)
from cxrdet.evaluation.froc import lesion_scores

EMPTY = (np.zeros((0, 4)), np.zeros(0), np.zeros(0, np.int64))


def reader_point(found: np.ndarray, lesion_image, fp_image, weights: np.ndarray):
    """Each resample's (sensitivity, FPs per image) of marks without scores."""
    drawn = weights[:, lesion_image].astype(np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        sens = (drawn * found).sum(axis=1) / drawn.sum(axis=1)
    return sens, weights[:, fp_image].sum(axis=1, dtype=np.float64) / weights.shape[1]


def compare(
    truth: dict, marks: dict, dets: dict, iou: float, resamples: int, seed: int, no_finding: int
):
    """The reader's point and the model at the reader's FP rate on ``truth`` (lesions; the
    class-agnostic pool when ``truth``'s classes are all the same class as the marks')."""
    ids = list(truth)
    (human, _, human_image), (_, _, human_fp) = lesion_scores(
        truth, {}, marks, iou, True, no_finding
    )
    (best, _, image), (fp, _, fp_image) = lesion_scores(truth, {}, dets, iou, True, no_finding)
    if not len(best):
        return None
    found = np.isfinite(human).astype(np.float64)
    ones = np.ones((1, len(ids)), np.float32)
    weights = np.r_[ones, image_weights(len(ids), resamples, seed)] if resamples else ones
    sens, fps = reader_point(found, human_image, human_fp, weights)
    model = np.empty(len(weights))
    for rows, curve_sens, curve_fps in resampled_curves(best, image, fp, fp_image, weights):
        model[rows] = sensitivity_at_rates(curve_sens, curve_fps, fps[rows])
    low, high = interval(model[1:] - sens[1:]) if resamples else (np.nan, np.nan)
    verdict = "above" if low > 0 else "below" if high < 0 else "within"
    return {
        "lesions": len(best),
        "images": len(ids),
        "reader_sensitivity": float(sens[0]),
        "reader_fps": float(fps[0]),
        "model_sensitivity": float(model[0]),
        "difference_ci": [low, high],
        "verdict": verdict if resamples else None,
    }


def one_class(table: dict, c: int) -> dict:
    """``table`` (image id → (boxes, [scores,] classes)) with class ``c``'s rows only."""
    out = {}
    for image_id, value in table.items():
        keep = np.asarray(value[-1]) == c
        out[image_id] = tuple(np.asarray(a)[keep] for a in value)
    return out


def operating_points(
    sets: dict,
    dets: dict,
    iou: float = 0.4,
    resamples: int = RESAMPLES,
    seed: int = 0,
    no_finding: int = NO_FINDING,
) -> dict:
    """``{"readers": [{"reader", ...compare's keys}], "per_class": {class id: {...}}}`` (see
    the module docstring); ``sets``: :func:`cxrdet.evaluation.readers.leave_one_out`'s;
    ``no_finding``: the class set's "No finding" id."""
    out = {"readers": [], "per_class": {}}
    pooled_truth, pooled_marks, pooled_dets = {}, {}, {}
    for reader, (truth, marks) in sets.items():
        model = {i: dets.get(i, EMPTY) for i in truth}
        row = compare(truth, marks, model, iou, resamples, seed, no_finding)
        if row is not None:
            out["readers"].append({"reader": reader, **row})
        for i in truth:
            key = f"{reader}\t{i}"
            pooled_truth[key], pooled_dets[key] = truth[i], model[i]
            pooled_marks[key] = marks.get(i, EMPTY)
    classes = sorted({int(c) for _, cls in pooled_truth.values() for c in cls})
    for c in classes:
        row = compare(
            one_class(pooled_truth, c),
            one_class(pooled_marks, c),
            one_class(pooled_dets, c),
            iou,
            resamples,
            seed,
            no_finding,
        )
        if row is not None:
            out["per_class"][c] = row
    return out
