"""The competition metric against hand-computed cases and the map-boxes reference."""

from __future__ import annotations

import math

import numpy as np
import pytest

from cxrdet.evaluation.competition import competition_map, voc_ap

BOX = np.array([[10.0, 10, 50, 50]])


def _gt(**images):
    return {k: (np.array(v[0], float).reshape(-1, 4), np.array(v[1])) for k, v in images.items()}


def _dets(**images):
    return {
        k: (np.array(v[0], float).reshape(-1, 4), np.array(v[1], float), np.array(v[2]))
        for k, v in images.items()
    }


def test_one_true_positive():
    r = competition_map(_gt(a=(BOX, [3])), _dets(a=(BOX, [0.7], [3])))
    assert r == {"mAP": 1.0, "per_class": {3: 1.0}}


def test_duplicate_is_a_false_positive():
    # Two detections on one box: TP then FP -> precision 1 at recall 1 still, AP 1.
    r = competition_map(_gt(a=(BOX, [3])), _dets(a=([BOX[0], BOX[0]], [0.9, 0.8], [3, 3])))
    assert r["per_class"][3] == 1.0
    # The duplicate ranked first among other images' boxes costs precision: TP, FP(dup), TP.
    gt = _gt(a=(BOX, [3]), b=(BOX, [3]))
    dets = _dets(a=([BOX[0], BOX[0]], [0.9, 0.8], [3, 3]), b=(BOX, [0.7], [3]))
    assert competition_map(gt, dets)["per_class"][3] == pytest.approx(0.5 * 1 + 0.5 * 2 / 3)


def test_miss_and_iou_threshold_at_04():
    gt = _gt(a=([BOX[0], [100, 100, 140, 140]], [0, 0]))
    # IoU exactly 0.4: 40x40 GT vs 40x16 detection inside it: 640 / 1600.
    dets = _dets(a=([[10, 10, 50, 26]], [0.5], [0]))
    assert competition_map(gt, dets)["per_class"][0] == pytest.approx(0.5)
    dets = _dets(a=([[10, 10, 50, 25.9]], [0.5], [0]))  # IoU just under 0.4: a miss
    assert competition_map(gt, dets)["per_class"][0] == 0.0


def test_classes_without_ground_truth_are_left_out_and_no_finding_is_a_class():
    nf = [[0, 0, 1, 1]]
    gt = _gt(a=(BOX, [8]), b=(nf, [14]))
    dets = _dets(a=([BOX[0], BOX[0]], [0.9, 0.8], [8, 5]), b=(nf, [1.0], [14]))
    r = competition_map(gt, dets)
    assert r == {"mAP": 1.0, "per_class": {8: 1.0, 14: 1.0}}  # class 5 has no GT: not counted
    assert math.isnan(competition_map({}, dets)["mAP"])


def test_ties_rank_in_the_ground_truth_s_image_order_whatever_the_row_order():
    # Equal scores: image a's false positive ranks before image b's hit, as a comes first in
    # the ground truth; a submission listing b first scores the same.
    gt = _gt(a=(BOX, [1]), b=(BOX, [1]))
    dets = _dets(a=([[200, 200, 240, 240]], [0.5], [1]), b=(BOX, [0.5], [1]))
    assert competition_map(gt, dets)["per_class"][1] == pytest.approx(0.5 * 0.5)
    dets = _dets(b=(BOX, [0.5], [1]), a=([[200, 200, 240, 240]], [0.5], [1]))
    assert competition_map(gt, dets)["per_class"][1] == pytest.approx(0.5 * 0.5)
    gt = _gt(b=(BOX, [1]), a=(BOX, [1]))
    assert competition_map(gt, dets)["per_class"][1] == pytest.approx(0.5)


def test_voc_ap_all_point_interpolation():
    # TP FP TP with 3 positives: recall .33 @ 1, .67 @ .67 -> 1/3 * 1 + 1/3 * 2/3
    assert voc_ap(np.array([1.0, 0, 1]), 3) == pytest.approx(1 / 3 + 2 / 9)
    assert voc_ap(np.array([]), 2) == 0.0 and math.isnan(voc_ap(np.array([1.0]), 0))


def test_matches_map_boxes_on_random_data():
    import map_boxes  # a declared dev dependency: missing, the test fails, it does not skip

    rng = np.random.default_rng(0)
    gt, dets, ann, pred = {}, {}, [], []
    for i in range(60):
        n, m = rng.integers(1, 4), rng.integers(0, 12)  # map-boxes skips images without GT
        g_xy = rng.uniform(0, 400, (n, 2))
        g = np.hstack([g_xy, g_xy + rng.uniform(20, 120, (n, 2))])
        gc = rng.integers(0, 5, n)
        base = g[rng.integers(0, n, m)]
        d = base + rng.normal(0, 15, (m, 4))
        d[:, 2:] = np.maximum(d[:, 2:], d[:, :2] + 1)
        dc = np.where(
            rng.random(m) < 0.8, gc[rng.integers(0, n, m)] if n else 0, rng.integers(0, 5, m)
        )
        ds = rng.random(m)
        order = np.argsort(-ds, kind="stable")  # map-boxes matches in the given order
        gt[f"i{i}"], dets[f"i{i}"] = (g, gc), (d[order], ds[order], dc[order])
        ann += [[f"i{i}", str(c), b[0], b[2], b[1], b[3]] for b, c in zip(g, gc)]
        pred += [
            [f"i{i}", str(c), s, b[0], b[2], b[1], b[3]]
            for b, c, s in zip(d[order], dc[order], ds[order])
        ]
    ref, ref_per_class = map_boxes.mean_average_precision_for_boxes(
        np.array(ann, dtype=object), np.array(pred, dtype=object), iou_threshold=0.4, verbose=False
    )
    ours = competition_map(gt, dets)
    assert ours["mAP"] == pytest.approx(ref, abs=1e-9)
    for c, ap in ours["per_class"].items():
        assert ap == pytest.approx(ref_per_class[str(c)][0], abs=1e-9)


def test_no_finding_line_from_detector_scores():
    from cxrdet.evaluation.nofinding import with_no_finding

    boxes, scores, classes = with_no_finding(np.array([BOX[0]]), np.array([0.3]), np.array([2]))
    assert list(classes) == [2, 14] and scores[-1] == pytest.approx(0.7)
    np.testing.assert_allclose(boxes[-1], [0, 0, 1, 1])
    _, scores, classes = with_no_finding(np.zeros((0, 4)), np.zeros(0), np.zeros(0))
    assert list(classes) == [14] and list(scores) == [1.0]


def _target(image_id, boxes, classes, hw=(100, 100)):
    """A validation target as DetectionDataset makes it: an unscaled, squashed image whose
    scorer's ground truth is ``boxes``/``classes`` (class ids, original pixels)."""
    import torch

    truth = (np.array(boxes, float).reshape(-1, 4), np.array(classes, np.int64))
    return {
        "image_id": image_id,
        "boxes": torch.as_tensor(truth[0], dtype=torch.float32),
        "labels": torch.as_tensor(truth[1]) + 1,
        "orig_hw": hw,
        "image_hw": hw,
        "content": None,
        "truth": truth,
    }


def _output(boxes, scores, classes):
    import torch

    return {
        "boxes": torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4),
        "scores": torch.tensor(scores, dtype=torch.float32),
        "labels": torch.tensor(classes) + 1,
    }


def test_evaluator_reports_both_metrics_with_no_finding_images():
    from cxrdet.evaluation.evaluator import DetectionEvaluator

    ev = DetectionEvaluator()
    ev.process(
        [_target("a", BOX, [3]), _target("b", [[0, 0, 1, 1]], [14])],
        [_output(BOX, [0.9], [3]), _output(BOX, [0.2], [3])],
    )
    r = ev.evaluate()
    assert r["AP40"] == 1.0 and r["AP40_per_class"] == {3: 1.0}
    # Class 14: image b (score 0.8) is right, image a (0.1) is a false positive ranked last.
    assert r["mAP40_per_class"] == {3: 1.0, 14: 1.0} and r["mAP40"] == 1.0


def test_validation_scores_the_submission_in_original_pixels_as_written():
    """Prepared-pixel detections are mapped to original pixels and rounded to 0.1 px as the
    submission writes them: a box that misses by a hair before that rounding and hits after it
    counts, as it does in the scored submission."""
    from cxrdet.evaluation.evaluator import DetectionEvaluator

    ev = DetectionEvaluator()
    target = _target("a", [[0, 0, 100, 40.0]], [3], hw=(400, 200))
    target["image_hw"] = (100, 100)  # the model saw the 400 x 200 image squashed to 100 x 100
    # 0 0 50 3.99 prepared = 0 0 100 15.96 original: IoU 0.399 with the 100 x 40 box, a miss;
    # written as 0 0 100 16.0: IoU 0.4, a hit.
    ev.process([target], [_output([[0, 0, 50, 3.99]], [0.91234], [3])])
    boxes, scores, classes = ev.dets["a"]
    assert boxes.tolist() == [[0, 0, 100, 16.0], [0, 0, 1, 1]] and classes.tolist() == [3, 14]
    assert scores.tolist() == [0.9123, 0.0877]  # 4 decimals, the No-finding line 1 - top
    assert ev.evaluate()["mAP40_per_class"] == {3: 1.0}


def test_class_14_detections_are_one_image_level_line():
    from cxrdet.evaluation.nofinding import no_finding_as_image_label, with_no_finding

    boxes = np.array([[10.0, 10, 50, 50], [300, 200, 340, 260], [5, 5, 9, 9]])
    scores, classes = np.array([0.9, 0.6, 0.3]), np.array([3, 14, 14])
    b, s, c = no_finding_as_image_label(boxes, scores, classes)
    assert c.tolist() == [3, 14] and s.tolist() == [0.9, 0.6]
    np.testing.assert_array_equal(b[1], [0, 0, 1, 1])  # wherever the detector put it
    b2, s2, c2 = with_no_finding(b, s, c, class14_head=True)  # its own line, not doubled
    assert c2.tolist() == [3, 14] and s2.tolist() == [0.9, 0.6]


def test_one_source_for_the_no_finding_line_in_a_submission():
    from cxrdet.evaluation.nofinding import nofinding_filter, with_no_finding

    box = np.array([[10.0, 10, 50, 50]])
    # A detector with a class-14 head that gave none here: the head's score fell under its
    # threshold, so the line is 0, not 1 - the top finding score (another scale).
    _, s, c = with_no_finding(box, np.array([0.3]), np.array([3]), class14_head=True)
    assert c.tolist() == [3, 14] and s.tolist() == [0.3, 0.0]
    # Without that head a stray class-14 line is replaced: one line, 1 - top.
    both = np.vstack([box, [[0, 0, 1, 1]]]), np.array([0.3, 0.9]), np.array([3, 14])
    _, s, c = with_no_finding(*both)
    assert c.tolist() == [3, 14] and s.tolist() == pytest.approx([0.3, 0.7])
    # The classifier's filter replaces the detector's class-14 line; it never adds a second.
    for p, expected in ((0.05, [14]), (0.4, [3, 14]), (0.99, [3, 14])):
        _, s, c = nofinding_filter(both, p, low=0.08, high=0.95)
        assert c.tolist() == expected and (c == 14).sum() == 1, p
        if 0.08 <= p < 0.95:
            assert s.tolist() == pytest.approx([0.3, 1 - p])


def test_validation_scores_class_14_as_the_competition_does():
    from cxrdet.evaluation.evaluator import DetectionEvaluator

    ev = DetectionEvaluator(class14_head=True)
    ev.process(
        [_target("n", [[0, 0, 1, 1]], [14])],
        [_output([[40.0, 30, 90, 80], [0, 0, 3, 3]], [0.7, 0.2], [14, 14])],
    )
    result = ev.evaluate()
    assert result["mAP40_per_class"] == {14: 1.0}


def test_each_class_is_ranked_on_its_own_detections_and_its_curve_is_exact():
    """Two classes side by side: class 3's ranking must not take class 4's hits (a slice one
    class too long), and the precision-recall curve is the running hits over recall and rank.
    (Added for mutants that survived: the class slice's end, the curve's ranks.)"""
    gt = _gt(a=([BOX[0], [60.0, 60, 90, 90]], [3, 4]), b=(BOX, [3]))
    dets = _dets(
        a=([BOX[0], [60.0, 60, 90, 90], [0.0, 0, 5, 5]], [0.9, 0.8, 0.95], [3, 4, 3]),
        b=([[200.0, 200, 220, 220]], [0.5], [3]),
    )
    r = competition_map(gt, dets, curves=True)
    # Class 3, by score: FP 0.95, TP 0.9, FP 0.5 -> recall 0, 1/2, 1/2; precision 0, 1/2, 1/3.
    assert r["per_class"] == {3: pytest.approx(0.25), 4: 1.0}
    recall, precision = r["curves"][3]
    np.testing.assert_allclose(recall, [0.0, 0.5, 0.5])
    np.testing.assert_allclose(precision, [0.0, 0.5, 1 / 3])
    np.testing.assert_allclose(r["curves"][4][0], [1.0])


def test_a_detection_without_a_box_of_its_class_has_no_best_box_and_empty_boxes_no_iou():
    """-1 is the "no ground truth" mark FROC and the error breakdown read; two boxes without
    area overlap by 0, not by 0/0."""
    from cxrdet.data.boxes import pair_ious
    from cxrdet.evaluation.competition import match_detections

    m = match_detections(_gt(a=(BOX, [3])), _dets(a=([BOX[0], BOX[0]], [0.9, 0.8], [3, 5])))
    assert m.best_gt[m.cls == 5].tolist() == [-1] and m.best_gt[m.cls == 3].tolist() == [0]
    flat = np.array([[5.0, 5, 5, 9]])
    assert pair_ious(flat, flat).tolist() == [0.0]
