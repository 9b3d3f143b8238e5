"""AP40 (COCO-style, one IoU threshold): hand cases and a cross-check against faster-coco-eval."""

from __future__ import annotations

import math

import numpy as np
import pytest

from cxrdet.evaluation.coco import coco_ap


def reference_ap(gt, dets, num_classes, iou=0.4, max_dets=100):
    """The same AP40 through faster-coco-eval (pycocotools' rules in C++)."""
    from faster_coco_eval import COCO, COCOeval_faster

    index = {image_id: i + 1 for i, image_id in enumerate(gt)}

    def annotations(table, scored):
        out = []
        for image_id, value in table.items():
            if image_id not in index:
                continue
            boxes, classes = np.asarray(value[0], float).reshape(-1, 4), value[-1]
            for k, (box, cls) in enumerate(zip(boxes, classes)):
                x0, y0, x1, y1 = box.tolist()
                a = {"id": len(out) + 1, "image_id": index[image_id], "category_id": int(cls)}
                a.update(bbox=[x0, y0, x1 - x0, y1 - y0], area=(x1 - x0) * (y1 - y0), iscrowd=0)
                if scored:
                    a["score"] = float(value[1][k])
                out.append(a)
        return out

    frame = {
        "images": [{"id": i} for i in index.values()],
        "categories": [{"id": c} for c in range(num_classes)],
    }
    coco_gt = COCO({**frame, "annotations": annotations(gt, False)})
    coco_dt = COCO({**frame, "annotations": annotations(dets, True)})
    ev = COCOeval_faster(coco_gt, coco_dt, iouType="bbox", print_function=lambda *a: None)
    ev.params.iouThrs = np.array([iou])
    ev.params.maxDets = [max_dets]
    ev.params.areaRng = [[0, 1e10]]
    ev.params.areaRngLbl = ["all"]
    ev.evaluate()
    ev.accumulate()
    precision = ev.eval["precision"][0, :, :, 0, 0]
    return {
        int(c): float(precision[:, k].mean())
        for k, c in enumerate(ev.params.catIds)
        if (precision[:, k] > -1).all()
    }


def random_case(seed, images=60, classes=6, dets=25):
    """Crowded random boxes with repeated scores and repeated ground-truth boxes (IoU ties)."""
    rng = np.random.default_rng(seed)
    gt, det = {}, {}
    for i in range(images):
        n = int(rng.integers(0, 8))
        xy = rng.uniform(0, 300, (n, 2))
        g = np.hstack([xy, xy + rng.uniform(20, 120, (n, 2))])
        if n > 1:
            g[-1] = g[0]  # a duplicate box: equal IoU with every detection near it
        gc = rng.integers(0, classes - 1, n)  # the last class never has ground truth
        m = int(rng.integers(0, dets))
        if n:
            pick = rng.integers(0, n, m)
            d = g[pick] + rng.normal(0, 15, (m, 4))
            dc = np.where(rng.random(m) < 0.7, gc[pick], rng.integers(0, classes, m))
        else:
            xy = rng.uniform(0, 300, (m, 2))
            d, dc = np.hstack([xy, xy + 50]), rng.integers(0, classes, m)
        d[:, 2:] = np.maximum(d[:, 2:], d[:, :2] + 1)
        gt[f"img{i}"] = (g, gc)
        det[f"img{i}"] = (d, np.round(rng.random(m), 1), dc)  # rounded: many equal scores
    det["not-scored"] = det["img0"]  # ignored: not in the ground truth
    return gt, det


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("max_dets", [100, 3])
def test_matches_faster_coco_eval_on_random_data(seed, max_dets):
    gt, det = random_case(seed)
    ours = coco_ap(gt, det, 6, max_dets=max_dets)
    ref = reference_ap(gt, det, 6, max_dets=max_dets)
    assert set(ours["per_class"]) == set(ref) and 5 not in ref
    for c in ref:
        assert ours["per_class"][c] == pytest.approx(ref[c], abs=1e-15), c
    assert ours["AP"] == pytest.approx(np.mean(list(ref.values())), abs=1e-15)


@pytest.mark.parametrize("iou", [0.3, 0.5, 0.75])
def test_matches_faster_coco_eval_at_other_thresholds(iou):
    gt, det = random_case(7)
    ours, ref = coco_ap(gt, det, 6, iou=iou)["per_class"], reference_ap(gt, det, 6, iou=iou)
    assert ours == pytest.approx(ref, abs=1e-15)


def test_a_matched_box_is_not_taken_twice_but_the_next_best_is():
    # Two ground-truth boxes; both detections overlap the first best. COCO lets the second
    # detection take the other box (VOC would call it a duplicate).
    gt = {"a": (np.array([[0, 0, 10, 10], [0, 0, 10, 8]]), np.array([0, 0]))}
    det = {"a": (np.array([[0, 0, 10, 10], [0, 0, 10, 9.5]]), np.array([0.9, 0.8]), [0, 0])}
    assert coco_ap(gt, det, 1)["AP"] == 1.0
    assert reference_ap(gt, det, 1) == {0: 1.0}


def test_equal_iou_goes_to_the_later_ground_truth_box():
    # The first detection overlaps both halves equally (IoU 0.5) and takes the later one, which
    # leaves the top half to the second detection: two true positives.
    gt = {"a": (np.array([[0, 0, 10, 5], [0, 5, 10, 10]]), np.array([0, 0]))}
    det = {"a": (np.array([[0, 0, 10, 10], [0, 0, 10, 5]]), np.array([0.9, 0.8]), [0, 0])}
    assert coco_ap(gt, det, 1)["AP"] == 1.0
    assert reference_ap(gt, det, 1) == {0: 1.0}


def test_ap40_hand_cases():
    gt = {
        "a": (np.array([[0, 0, 10, 10], [20, 20, 40, 40]]), np.array([0, 1])),
        "b": (np.zeros((0, 4)), np.zeros(0, np.int64)),
    }
    perfect = {"a": (gt["a"][0], np.array([0.9, 0.8]), gt["a"][1])}
    assert coco_ap(gt, perfect, 14) == {"AP": 1.0, "per_class": {0: 1.0, 1: 1.0}}
    # IoU 0.45 counts at 0.4; a higher-scored miss on an empty image halves class 0's precision.
    dets = {
        "a": (
            np.array([[0, 0, 10, 4.5], [20, 20, 40, 40]]),
            np.array([0.5, 0.8]),
            np.array([0, 1]),
        ),
        "b": (np.array([[0, 0, 5, 5]]), np.array([0.9]), np.array([0])),
    }
    assert coco_ap(gt, dets, 14) == {"AP": 0.75, "per_class": {0: 0.5, 1: 1.0}}
    assert coco_ap(gt, {}, 14)["AP"] == 0.0
    assert math.isnan(coco_ap({"b": gt["b"]}, dets, 14)["AP"])


def test_val_ap40_is_over_the_findings_also_when_no_finding_is_trained():
    from test_competition import _output, _target

    from cxrdet.evaluation.evaluator import DetectionEvaluator

    ev = DetectionEvaluator(class14_head=True)  # use_class14=true: 14 findings + "No finding"
    box = [[10.0, 10, 50, 50]]
    targets = [_target("a", box, [3]), _target("b", [[0, 0, 1, 1]], [14])]
    # image b: a class-14 detection away from its 0 0 1 1 box
    outputs = [_output(box, [0.9], [3]), _output([[60.0, 60, 90, 90]], [0.8], [14])]
    ev.process(targets, outputs)
    result = ev.evaluate()
    assert set(result["AP40_per_class"]) == {3} and result["AP40"] == 1.0
