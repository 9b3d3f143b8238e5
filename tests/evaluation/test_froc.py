"""FROC counts lesions (LUNA16's protocol): the readers' marks fused per lesion, a second hit on
a found lesion no false positive, ignore regions, a class-agnostic "all findings"; the CPM
cross-checked against a plain per-threshold loop written here."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from cxrdet.data.boxes import pair_ious
from cxrdet.data.labels import CLASS_NAMES, LABEL_COLUMNS, ground_truth
from cxrdet.evaluation.froc import FP_RATES, froc
from cxrdet.evaluation.lesions import lesion_truth
from cxrdet.evaluation.radiology import radiology_scores

NODULE = 8
N1, N2 = [100, 100, 140, 140], [300, 300, 340, 340]


def _labels(rows):
    return pd.DataFrame(
        [[i, CLASS_NAMES[c], c, r, *(b or [np.nan] * 4)] for i, c, r, b in rows],
        columns=LABEL_COLUMNS,
    )


def _three_readers(*boxes, image="a"):
    """Each box marked by three readers, a little apart from each other."""
    rows = []
    for box in boxes:
        for k, reader in enumerate(("R1", "R2", "R3")):
            rows.append((image, NODULE, reader, [v + k for v in box]))
    return _labels(rows)


def _dets(boxes, scores, classes=None):
    classes = [NODULE] * len(boxes) if classes is None else classes
    return np.array(boxes, float).reshape(-1, 4), np.array(scores, float), np.array(classes)


def test_a_nodule_three_readers_marked_is_one_lesion_found_by_one_detection():
    """The issue's case: two nodules, each marked by three readers, each found once, and two
    duplicates of one find. Per reader (the old FROC) the CPM was 0.286: here 1.0, no FP."""
    labels = _three_readers(N1, N2)
    per_reader = ground_truth(labels, ["a"])
    dets = {"a": _dets([N1, N1, N1, N2], [0.9, 0.8, 0.7, 0.6])}  # duplicates before N2's find
    r = radiology_scores(per_reader, dets, labels, readers=False, errors=False)["froc"]
    assert r["lesions"] == 2 and r["CPM"] == 1.0
    assert r["sensitivity"] == [1.0] * len(FP_RATES)
    assert max(r["curve"][0]) == 0.0  # no false positive at any threshold
    assert r["per_class"][NODULE]["lesions"] == 2 and r["per_class"][NODULE]["CPM"] == 1.0
    # The readers' boxes as given would be six lesions.
    assert froc(per_reader, dets)["lesions"] == 6
    # The readers' boxes are fused: one lesion each, not three.
    lesions, ignore = lesion_truth(labels, ["a"])
    assert len(lesions["a"][0]) == 2 and not len(ignore["a"][0])


def test_a_false_positive_is_counted_once_and_a_miss_lowers_sensitivity():
    labels = _three_readers(N1, N2)
    lesions, _ = lesion_truth(labels, ["a", "b"])
    far = [600, 600, 620, 620]
    r = froc(lesions, {"a": _dets([N1, far], [0.9, 0.8]), "b": _dets([far], [0.7])})
    # .9 finds N1; .8 and .7 are FPs over 2 images: 1/2 at 0.5 FP/image, 1 FP/image after.
    assert r["sensitivity"] == [0.5] * len(FP_RATES)  # N2 is never found
    r = froc(lesions, {"a": _dets([far, N1], [0.9, 0.8])})
    assert r["sensitivity"][:4] == [0.0, 0.0, 0.5, 0.5]  # the FP comes first: 0.5 FP/image


def test_agreement_truth_ignores_what_one_reader_marked():
    rows = [("a", NODULE, r, N1) for r in ("R1", "R2")] + [("a", NODULE, "R3", N2)]
    labels = _labels(rows)
    lesions, ignore = lesion_truth(labels, ["a"], truth="agreement")
    assert len(lesions["a"][0]) == 1 and len(ignore["a"][0]) == 1
    dets = {"a": _dets([N2, N1], [0.9, 0.8])}  # the first on R3's mark alone
    agreed = froc(lesions, dets, ignore=ignore)
    assert agreed["sensitivity"][0] == 1.0  # N2's detection is no FP ...
    assert agreed["lesions"] == 1  # ... nor a lesion
    fused = radiology_scores(ground_truth(labels, ["a"]), dets, labels, False, True, False)
    assert fused["froc"]["lesions"] == 2 and fused["froc"]["sensitivity"][0] == 1.0
    with pytest.raises(ValueError, match="rad_id"):
        lesion_truth(labels.assign(rad_id=np.nan), ["a"], truth="agreement")


def test_all_findings_is_class_agnostic():
    """A detection of the wrong class on a lesion finds it for "all findings" and is a false
    positive of its own class."""
    lesions = {"a": (np.array([N1], float), np.array([NODULE]))}
    dets = {"a": _dets([N1], [0.9], [0])}  # "Aortic enlargement" on the nodule
    r = froc(lesions, dets)
    assert r["sensitivity"] == [1.0] * len(FP_RATES)
    assert r["per_class"][NODULE]["sensitivity"] == [0.0] * len(FP_RATES)
    # Class 0 has no lesion (no row), but its FP counts against class 0 only.
    assert 0 not in r["per_class"]


def _plain_cpm(lesions: dict, dets: dict, iou: float = 0.4) -> float:
    """The class-agnostic CPM the slow way: for every threshold, count the lesions some
    detection at or above it hits, and the detections at or above it that hit no lesion."""
    n_images = len(lesions)
    n_lesions = sum(len(b) for b, _ in lesions.values())
    thresholds = sorted({float(s) for _, scores, _ in dets.values() for s in scores}, reverse=True)
    points = [(0.0, 0.0)]
    for t in thresholds:
        found = fp = 0
        for image_id, (truth, _) in lesions.items():
            boxes, scores, _ = dets.get(image_id, (np.zeros((0, 4)), np.zeros(0), None))
            kept = boxes[scores >= t]
            for box in truth:
                if len(kept) and (pair_ious(kept, np.repeat(box[None], len(kept), 0)) >= iou).any():
                    found += 1
            for box in kept:
                if (
                    not len(truth)
                    or not (pair_ious(truth, np.repeat(box[None], len(truth), 0)) >= iou).any()
                ):
                    fp += 1
        points.append((fp / n_images, found / n_lesions))
    sens = [max(s for f, s in points if f <= rate) for rate in FP_RATES]
    return float(np.mean(sens))


def test_cpm_equals_a_plain_per_threshold_loop_on_random_cases():
    rng = np.random.default_rng(0)
    for _ in range(30):
        lesions, dets = {}, {}
        for k in range(rng.integers(1, 6)):
            n = rng.integers(0, 4)
            xy = rng.uniform(0, 200, (n, 2))
            truth = np.c_[xy, xy + rng.uniform(10, 40, (n, 2))]
            lesions[f"i{k}"] = (truth, np.full(n, NODULE))
            m = rng.integers(0, 6)
            near = (
                truth[rng.integers(0, n, m)] + rng.normal(0, 6, (m, 4)) if n else np.zeros((0, 4))
            )
            noise = rng.uniform(0, 200, (rng.integers(0, 3), 2))
            boxes = np.r_[near, np.c_[noise, noise + 20]]
            boxes[:, 2:] = np.maximum(boxes[:, 2:], boxes[:, :2] + 1)
            scores = rng.choice([0.2, 0.4, 0.5, 0.7, 0.9], len(boxes))  # ties included
            dets[f"i{k}"] = (boxes, scores, np.full(len(boxes), NODULE))
        if not sum(len(b) for b, _ in lesions.values()):
            continue
        assert froc(lesions, dets)["CPM"] == pytest.approx(_plain_cpm(lesions, dets))
