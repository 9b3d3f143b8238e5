"""Bootstrap intervals: a resample's weighted figure equals the metric computed on the images
actually copied that many times, for mAP40 and the CPM; seeded; in cxrdet score."""

from __future__ import annotations

import numpy as np
import pytest

from cxrdet.evaluation.bootstrap import bootstrap_cpm, bootstrap_map, image_weights, interval
from cxrdet.evaluation.competition import competition_map, match_detections
from cxrdet.evaluation.froc import froc, lesion_scores


def _scene(seed: int, images: int = 7):
    """Random boxes of 4 classes (14, "No finding", as 0 0 1 1 on some images) and
    detections near them and elsewhere, with distinct scores."""
    rng = np.random.default_rng(seed)
    gt, dets = {}, {}
    scores = iter(rng.permutation(1000) / 1000)
    for i in range(images):
        n = int(rng.integers(0, 4))
        xy = rng.uniform(0, 200, (n, 2))
        boxes = np.c_[xy, xy + rng.uniform(10, 40, (n, 2))]
        classes = rng.integers(0, 3, n)
        if n == 0:
            boxes, classes = np.array([[0.0, 0, 1, 1]]), np.array([14])
        gt[f"i{i}"] = (boxes, classes)
        m = int(rng.integers(0, 6))
        pick = rng.integers(0, len(boxes), m)
        near = boxes[pick] + rng.normal(0, 5, (m, 4))
        near[:, 2:] = np.maximum(near[:, 2:], near[:, :2] + 1)
        dets[f"i{i}"] = (near, np.array([next(scores) for _ in range(m)]), classes[pick])
    return gt, dets


def _copied(table: dict, counts) -> dict:
    """Each image as many times as drawn, under new names (in the original order)."""
    return {f"{k}#{j}": v for (k, v), n in zip(table.items(), counts) for j in range(int(n))}


@pytest.mark.parametrize("seed", range(8))
def test_a_resample_scores_as_the_images_copied_that_many_times(seed):
    gt, dets = _scene(seed)
    weights = image_weights(len(gt), 5, seed)
    resampled = bootstrap_map(match_detections(gt, dets), weights)
    (best, _, image), (fp, _, fp_image) = lesion_scores(gt, {}, dets, 0.4, True)
    cpms = bootstrap_cpm(best, image, fp, fp_image, weights)
    for row, ap, cpm in zip(weights, resampled, cpms):
        copied_gt, copied_dets = _copied(gt, row), _copied(dets, row)
        assert ap == pytest.approx(competition_map(copied_gt, copied_dets)["mAP"], nan_ok=True)
        assert cpm == pytest.approx(froc(copied_gt, copied_dets)["CPM"], nan_ok=True)
    ones = np.ones((1, len(gt)), np.float32)
    assert bootstrap_map(match_detections(gt, dets), ones)[0] == pytest.approx(
        competition_map(gt, dets)["mAP"]
    )


def test_intervals_are_seeded_and_hold_the_figure():
    gt, dets = _scene(0, images=60)
    m = match_detections(gt, dets)
    a = interval(bootstrap_map(m, image_weights(len(gt), 200, 1)))
    assert a == interval(bootstrap_map(m, image_weights(len(gt), 200, 1)))
    assert a != interval(bootstrap_map(m, image_weights(len(gt), 200, 2)))
    assert a[0] < competition_map(gt, dets)["mAP"] < a[1]


def test_a_paired_gain_says_when_its_interval_holds_zero():
    from cxrdet.evaluation.bootstrap import difference_text, paired_difference

    gt, dets = _scene(3, images=60)
    weights = image_weights(len(gt), 300, 0)
    same = paired_difference(gt, dets, dets, weights)
    assert same == (0.0, (0.0, 0.0))
    assert difference_text(*same) == "+0.000 [0.000, 0.000]: no evidence of a difference"
    # Every box found at the top score: a gain the resamples all agree on.
    perfect = {i: (b, np.full(len(c), 2.0), c) for i, (b, c) in gt.items()}
    better = {i: tuple(np.r_[p, d] for p, d in zip(perfect[i], dets[i])) for i in gt}
    gain, (low, high) = paired_difference(gt, dets, better, weights)
    assert gain == pytest.approx(1 - competition_map(gt, dets)["mAP"]) and 0 < low <= gain <= high
    assert "no evidence" not in difference_text(gain, (low, high))


def test_the_resampled_auc_is_scikit_learn_s_on_the_copied_images():
    from sklearn.metrics import roc_auc_score

    from cxrdet.evaluation.bootstrap import bootstrap_auc

    rng = np.random.default_rng(0)
    scores = rng.choice([0.1, 0.3, 0.5, 0.8], 30)  # ties included
    positive = rng.random(30) < 0.5
    weights = image_weights(30, 6, 0)
    for row, auc in zip(weights, bootstrap_auc(scores, positive, weights)):
        copies = np.repeat(np.arange(30), row.astype(int))
        assert auc == pytest.approx(roc_auc_score(positive[copies], scores[copies]))
    ones = np.ones((1, 30), np.float32)
    assert bootstrap_auc(scores, positive, ones)[0] == pytest.approx(
        roc_auc_score(positive, scores)
    )


@pytest.mark.parametrize("seed", range(4))
def test_a_resample_s_ap40_is_coco_s_on_the_copied_images(seed):
    from cxrdet.evaluation.bootstrap import bootstrap_ap40
    from cxrdet.evaluation.coco import coco_ap, coco_matches

    gt, dets = _scene(seed)
    weights = image_weights(len(gt), 5, seed)
    for row, ap in zip(weights, bootstrap_ap40(coco_matches(gt, dets, 14), weights)):
        expected = coco_ap(_copied(gt, row), _copied(dets, row), 14)["AP"]
        assert ap == pytest.approx(expected, nan_ok=True)


def test_the_interval_is_bias_corrected_toward_the_figure():
    """Resampled values that sit mostly above the figure (a statistic that resamples
    optimistically) move both ends down: the quantiles read are Φ(2·z0 ± 1.96) with z0 from
    the share below the figure; without the figure, the plain percentiles. Fails if the
    correction is dropped or goes the wrong way."""
    from statistics import NormalDist

    values = np.linspace(0, 1, 10001)
    plain = interval(values)
    assert plain == pytest.approx((0.025, 0.975))
    low, high = interval(values, 0.3)  # 30 % of the resamples below the figure
    z0 = NormalDist().inv_cdf(0.3)
    expected = [NormalDist().cdf(2 * z0 + z) for z in (-1.959964, 1.959964)]
    assert (low, high) == pytest.approx(expected, abs=1e-4)
    assert low < plain[0] and high < plain[1]
    assert interval(values, 0.5) == pytest.approx(plain, abs=1e-4)  # unbiased: unchanged


def test_a_mean_over_classes_has_its_interval_over_the_classes_with_five_boxes():
    """Fails if a class with fewer boxes enters the interval's mean or the text hides which
    classes it covers."""
    from cxrdet.evaluation.bootstrap import MIN_BOXES, ci_text, class_interval

    boxes = {0: 40, 1: 5, 2: 4, 3: 1}
    per_class = {0: 0.8, 1: 0.4, 2: 0.9, 3: 1.0}
    seen = []

    def resample(classes):
        seen.append(classes)
        return np.linspace(0.5, 0.7, 101)

    ci = class_interval(boxes, per_class, resample, 300)
    assert MIN_BOXES == 5 and seen == [[0, 1]] and ci["class_ids"] == [0, 1]
    assert ci["value"] == pytest.approx(0.6) and (ci["classes"], ci["fewer"]) == (2, 2)
    assert ci_text(ci).startswith(" (over the 2 classes with >= 5 boxes: 0.600 [")
    assert ci_text(ci).endswith("]; 2 with fewer)")
    none = class_interval({0: 4}, {0: 0.5}, resample, 300)
    assert ci_text(none) == " (interval not shown: 1 class with < 5 boxes)"
    every = class_interval({0: 9}, {0: 0.6}, resample, 300)
    assert ci_text(every) == f" [{every['low']:.3f}, {every['high']:.3f}]"
    few = class_interval({0: 9}, {0: 0.6}, resample, 299)
    assert ci_text(few) == " (interval not shown: 299 images, fewer than 300)" and len(seen) == 2


def test_a_figure_on_too_few_images_has_no_interval():
    """Below 300 images no interval tried held the simulated world's value 93 % of the time
    (benchmarks/interval_coverage.py): none is given, and the text says why."""
    from cxrdet.evaluation.bootstrap import MIN_IMAGES, ci_text, figure_interval

    values = np.linspace(0.5, 0.7, 101)
    assert MIN_IMAGES == 300
    assert (
        ci_text(figure_interval(values, 0.6, 50))
        == " (interval not shown: 50 images, fewer than 300)"
    )
    shown = figure_interval(values, 0.6, 300)
    assert ci_text(shown) == f" [{shown['low']:.3f}, {shown['high']:.3f}]" and shown["low"] < 0.6
