"""A simulated world of chest X-rays and a detector of known behaviour, to check that the
figures' 95 % intervals cover what they claim to.

The 14 findings come at the competition's frequencies (its train.csv rows over 3 readers and
15,000 images: Aortic enlargement on one image in six, Pneumothorax on one in 200), 70 % of
images normal. Each finding's box is found with a class's own probability, its detection
scored from a higher distribution than the false positives each class makes on every image.
A set of ``n`` images is drawn with :func:`draw`; the world's value of a figure is the figure
on a large set (:func:`population`); :func:`covers` says whether one set's intervals hold it.
Nothing here reads data: ``tests/evaluation/test_coverage.py`` and
``benchmarks/interval_coverage.py`` use it.
"""

from __future__ import annotations

import numpy as np

SIDE = 1000.0  # image side in px
NORMAL_SHARE = 0.7
# train.csv rows per finding (kaggle14 ids 0..13) over 3 readers and 15,000 images
ROWS = (7162, 279, 960, 5427, 556, 1000, 1247, 2483, 2580, 2203, 2476, 4842, 226, 4655)
BOXES_PER_IMAGE = np.array(ROWS) / 3 / 15000
FOUND = np.array([0.9, 0.5, 0.55, 0.9, 0.6, 0.65, 0.6, 0.7, 0.65, 0.5, 0.8, 0.6, 0.55, 0.7])
FALSE_PER_IMAGE = np.array([0.1, 0.05, 0.08, 0.06, 0.06, 0.05, 0.08, 0.1, 0.15, 0.1, 0.06,
                            0.12, 0.03, 0.1])  # fmt: skip
HIT_SCORE, FALSE_SCORE = (4.0, 2.0), (2.0, 4.0)  # Beta(a, b) of true and false detections


def _boxes(rng, n: int) -> np.ndarray:
    wh = rng.uniform(60, 300, (n, 2))
    xy = rng.uniform(0, 1, (n, 2)) * (SIDE - wh)
    return np.c_[xy, xy + wh]


def _jittered(rng, boxes: np.ndarray) -> np.ndarray:
    """The found boxes, each corner moved by up to 5 % of its side (IoU above 0.7)."""
    wh = np.tile(boxes[:, 2:] - boxes[:, :2], 2)
    return boxes + rng.uniform(-0.05, 0.05, boxes.shape) * wh


def draw(n: int, seed: int) -> tuple[dict, dict]:
    """``n`` images of the world: (truth, detections) as the metrics take them (image id →
    (boxes, classes); image id → (boxes, scores, classes))."""
    rng = np.random.default_rng(seed)
    rate = BOXES_PER_IMAGE / (1 - NORMAL_SHARE)  # boxes of each finding on an abnormal image
    truth, dets = {}, {}
    for i in range(n):
        counts = rng.poisson(rate) * (rng.uniform() > NORMAL_SHARE)
        classes = np.repeat(np.arange(len(rate)), counts)
        boxes = _boxes(rng, len(classes))
        found = rng.uniform(size=len(classes)) < FOUND[classes]
        false = np.repeat(np.arange(len(rate)), rng.poisson(FALSE_PER_IMAGE))
        truth[f"img{i}"] = (boxes, classes)
        dets[f"img{i}"] = (
            np.r_[_jittered(rng, boxes[found]), _boxes(rng, len(false))].reshape(-1, 4),
            np.r_[rng.beta(*HIT_SCORE, found.sum()), rng.beta(*FALSE_SCORE, len(false))],
            np.r_[classes[found], false].astype(np.int64),
        )
    return truth, dets


def population(n: int = 20000, seed: int = 12345) -> dict:
    """The world's figures on ``n`` images: ``{"AP": per-class competition AP, "AP40":
    per-class COCO-style AP, "CPM": the class-agnostic CPM}``."""
    from cxrdet.evaluation.coco import coco_ap
    from cxrdet.evaluation.competition import competition_map
    from cxrdet.evaluation.froc import froc

    truth, dets = draw(n, seed)
    n_classes = len(ROWS)
    return {
        "AP": competition_map(truth, dets)["per_class"],
        "AP40": coco_ap(truth, dets, n_classes)["per_class"],
        "CPM": froc(truth, dets, no_finding=n_classes)["CPM"],
    }


def covers(world: dict, n_images: int, seed: int, resamples: int, method: str = "project"):
    """Whether the 95 % intervals of mAP40, AP40 and the CPM on one set of ``n_images`` (drawn
    with ``seed``) hold the world's values (``world``: :func:`population`); None for an
    interval not shown (no class with enough boxes). ``method``:
    ``project`` (:mod:`cxrdet.evaluation.bootstrap`'s intervals, also on sets it gives none
    for having fewer than 300 images; a mean over classes judged against the world's mean
    over the classes its interval counts) or ``percentile`` (the
    plain percentile interval of the mean over every class present, judged against the
    world's mean over those)."""
    from cxrdet.evaluation.bootstrap import (
        ap40_interval,
        bootstrap_ap40,
        bootstrap_cpm,
        bootstrap_map,
        image_weights,
        interval,
        map_interval,
    )
    from cxrdet.evaluation.coco import coco_ap, coco_matches
    from cxrdet.evaluation.competition import map_of, match_detections
    from cxrdet.evaluation.froc import froc, lesion_scores

    n_classes = len(ROWS)
    truth, dets = draw(n_images, seed)
    weights = image_weights(n_images, resamples, seed)
    matches = coco_matches(truth, dets, n_classes)
    ap40 = coco_ap(truth, dets, n_classes)["per_class"]
    if method == "project":
        cis = {
            "AP": map_interval(truth, dets, weights, min_images=0),
            "AP40": ap40_interval(matches, ap40, weights, min_images=0),
        }
        spans = {k: (ci["low"], ci["high"], ci["class_ids"]) for k, ci in cis.items()}
    else:
        m = match_detections(truth, dets)
        spans = {
            "AP": (*interval(bootstrap_map(m, weights)), list(map_of(m)["per_class"])),
            "AP40": (*interval(bootstrap_ap40(matches, weights)), list(ap40)),
        }
    out = {}
    for key, name in (("AP", "mAP40"), ("AP40", "AP40")):
        low, high, classes = spans[key]
        if not classes:
            out[name] = None
            continue
        target = np.mean([world[key][c] for c in classes])
        out[name] = bool(low <= target <= high)
    (best, _, image), (fp, _, fp_image) = lesion_scores(truth, {}, dets, 0.4, True, n_classes)
    cpm = froc(truth, dets, no_finding=n_classes)["CPM"]
    resampled = bootstrap_cpm(best, image, fp, fp_image, weights)
    low, high = interval(resampled, cpm if method == "project" else None)
    out["CPM"] = bool(low <= world["CPM"] <= high)
    return out
