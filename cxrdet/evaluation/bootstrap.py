"""95 % bootstrap intervals over images for the competition's mAP40, AP40 and the CPM.

Each resample draws the scored images with replacement (seeded); an image drawn k times counts
k times, its detections and boxes alike, so a resample's figure is the metric's own formula
with each image weighted by its draw count. Detections keep the match they have on the whole
set (a detection's box is in its own image, drawn with it), which makes every resample one
weighted pass over arrays sorted once, vectorised over resamples.

What the intervals promise is coverage: in 95 of 100 test sets drawn from the same population
they hold the population's value. Two things broke it, measured on a simulated world
(:mod:`cxrdet.evaluation.simulation`, ``benchmarks/interval_coverage.py``): the percentile interval
inherits the statistic's bias (a finite set's AP is optimistic), and a mean over "the classes
present" changes meaning when a resample loses a rare class, whose AP from one or two boxes the
resamples cannot vary as test sets do. So:

- every interval is the **bias-corrected percentile** interval (Efron 1982): the share of
  resampled values below the figure moves the two quantiles read (:func:`interval`);
- a mean over classes (mAP40, AP40) has its interval over the classes with at least
  :data:`MIN_BOXES` boxes, and says so (:func:`class_interval`, :func:`ci_text`): "over the 9
  classes with >= 5 boxes: 0.498 [0.452, 0.541]; 5 with fewer", or "interval not shown: 14
  classes with < 5 boxes";
- a figure on fewer than :data:`MIN_IMAGES` images has none: "interval not shown: 50 images,
  fewer than 300" (:func:`figure_interval`); below that no method tried covered.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable
from statistics import NormalDist

import numpy as np

from cxrdet.evaluation.competition import Matches, map_of, match_detections
from cxrdet.evaluation.froc import FP_RATES

RESAMPLES = 1000  # cxrdet score --bootstrap
CHUNK = 64  # resamples computed together (memory: CHUNK x detections of a class)
MIN_BOXES = 5  # a class enters a mean's interval with at least this many boxes
MIN_IMAGES = 300  # fewer images get no interval (benchmarks/interval_coverage.py: 200 cover 90 %)
_NORMAL = NormalDist()


def image_weights(n_images: int, resamples: int = RESAMPLES, seed: int = 0) -> np.ndarray:
    """``resamples`` x ``n_images`` draw counts (each row sums to ``n_images``)."""
    rng = np.random.default_rng(seed)
    draws = rng.multinomial(n_images, np.full(n_images, 1 / n_images), size=resamples)
    return draws.astype(np.float32)  # counts: exact in float32, half the memory traffic


def interval(values: np.ndarray, estimate: float | None = None) -> tuple[float, float]:
    """The 95 % interval of resampled ``values``: bias-corrected percentile when the figure's
    own ``estimate`` is given (the quantiles Φ(2·z0 ± 1.96), z0 = Φ⁻¹(share of values below
    the estimate)), else the 2.5th and 97.5th percentiles."""
    values = values[np.isfinite(values)]
    if not len(values):
        return float("nan"), float("nan")
    if estimate is None or not math.isfinite(estimate):
        low, high = np.percentile(values, [2.5, 97.5])
        return float(low), float(high)
    below = float(np.mean(values < estimate) + 0.5 * np.mean(values == estimate))
    z0 = _NORMAL.inv_cdf(min(max(below, 1e-3), 1 - 1e-3))
    q = [_NORMAL.cdf(2 * z0 + z) for z in (-1.959964, 1.959964)]
    low, high = np.quantile(values, q)
    return float(low), float(high)


def figure_interval(values: np.ndarray, estimate: float, n_images: int) -> dict:
    """The interval of one figure (the CPM) on ``n_images``: ``{"low", "high", "value",
    "images", "min_images"}``; none (nan) below :data:`MIN_IMAGES` images."""
    out = {"value": float(estimate), "images": int(n_images), "min_images": MIN_IMAGES}
    if n_images < MIN_IMAGES:
        return {**out, "low": float("nan"), "high": float("nan")}
    low, high = interval(values, estimate)
    return {**out, "low": low, "high": high}


def class_interval(
    boxes: dict[int, int],
    per_class: dict[int, float],
    resample: Callable[[list[int]], np.ndarray],
    n_images: int,
    min_images: int = MIN_IMAGES,
) -> dict:
    """The interval of a mean over classes, over the classes with at least :data:`MIN_BOXES`
    boxes (``boxes``: class → its boxes; ``per_class``: class → the figure's value;
    ``resample(classes)``: the resampled means over those classes), on ``n_images`` (none
    below ``min_images``: :data:`MIN_IMAGES`; 0 in the coverage benchmark, to see why).

    Returns ``{"low", "high", "value": the mean over those classes, "classes": how many,
    "class_ids": which, "fewer": how many classes of the figure had fewer boxes,
    "min_boxes", "images", "min_images"}``; low and high nan where not shown."""
    classes = [int(c) for c in per_class if boxes.get(c, 0) >= MIN_BOXES]
    out = {
        "classes": len(classes),
        "class_ids": classes,
        "fewer": len(per_class) - len(classes),
        "min_boxes": MIN_BOXES,
        "images": int(n_images),
        "min_images": min_images,
    }
    value = float(np.mean([per_class[c] for c in classes])) if classes else float("nan")
    if not classes or n_images < min_images:
        return {**out, "low": float("nan"), "high": float("nan"), "value": value}
    low, high = interval(resample(classes), value)
    return {**out, "low": low, "high": high, "value": value}


def ci_text(ci) -> str:
    """`` [0.101, 0.153]``, or '' without an interval; an interval of
    :func:`figure_interval` or :func:`class_interval` says why it is not shown, and one over
    fewer classes than its figure says over which."""
    if isinstance(ci, dict):
        if ci["images"] < ci["min_images"]:
            return f" (interval not shown: {ci['images']} images, fewer than {ci['min_images']})"
        if "classes" in ci and not ci["classes"]:
            return f" (interval not shown: {_classes(ci['fewer'])} with < {ci['min_boxes']} boxes)"
        text = f" [{ci['low']:.3f}, {ci['high']:.3f}]"
        if ci.get("fewer"):
            return (
                f" (over the {_classes(ci['classes'])} with >= {ci['min_boxes']} boxes: "
                f"{ci['value']:.3f}{text}; {ci['fewer']} with fewer)"
            )
        return text
    if not ci or ci[0] != ci[0]:
        return ""
    return f" [{ci[0]:.3f}, {ci[1]:.3f}]"


def _classes(n: int) -> str:
    return f"{n} class" if n == 1 else f"{n} classes"


def class_mean(aps: np.ndarray) -> np.ndarray:
    """Each resample's mean over the classes it holds (rows of ``aps``; nan, not a warning,
    for a resample without any)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return np.nanmean(aps, axis=1)


def weighted_voc_ap(tp: np.ndarray, w: np.ndarray, n_gt: np.ndarray) -> np.ndarray:
    """All-point interpolated AP of one class's ranked detections under each row of weights
    ``w`` (resamples x detections); ``n_gt``: the weighted box count per resample (nan where
    0: the class is absent from that resample).

    Only the true positives' ranks are needed: recall rises there, and the precision envelope
    (the highest precision at or after a rank) peaks at a true positive, since precision only
    falls between them."""
    at = np.flatnonzero(tp)
    if not len(at):
        return np.where(n_gt > 0, 0.0, np.nan)
    ranked = np.cumsum(w, axis=1, dtype=np.float32)[:, at]
    hits = w[:, at]
    found = np.cumsum(hits, axis=1, dtype=np.float32)
    precision = np.divide(found, ranked, out=np.zeros_like(found), where=ranked > 0)
    envelope = np.maximum.accumulate(precision[:, ::-1], axis=1)[:, ::-1]
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(n_gt > 0, (hits * envelope).sum(axis=1, dtype=np.float64) / n_gt, np.nan)


def bootstrap_map(m: Matches, weights: np.ndarray, classes: list[int] | None = None):
    """mAP40 of each resample (rows of ``weights``, one column per image of ``m``): the mean
    AP over ``classes`` (default: all) that have a box in that resample."""
    classes = list(range(m.n_cls)) if classes is None else classes
    out = np.empty(len(weights))
    for start in range(0, len(weights), CHUNK):
        w = weights[start : start + CHUNK]
        aps = np.full((len(w), m.n_cls), np.nan)
        for c in classes:
            boxes = m.g_image[m.g_cls == c]
            if not len(boxes):
                continue
            n_gt = w[:, boxes].sum(axis=1)
            part = slice(m.bounds[c], m.bounds[c + 1])
            if m.bounds[c + 1] == m.bounds[c]:
                aps[:, c] = np.where(n_gt > 0, 0.0, np.nan)
                continue
            aps[:, c] = weighted_voc_ap(m.tp[part], w[:, m.image[part]], n_gt)
        out[start : start + len(w)] = class_mean(aps)
    return out


def resampled_curves(lesion_score, lesion_image, fp_score, fp_image, weights: np.ndarray):
    """For each chunk of resamples (rows of ``weights``): its row slice and, at every
    distinct threshold, the share of lesions found and the mean FPs per image, from every
    lesion's best hitting score (-inf: never found) and every false positive's score, each
    with its image's index (:func:`cxrdet.evaluation.froc.lesion_scores`); nan sensitivity
    in a resample without lesions."""
    n_images = weights.shape[1]
    found = np.isfinite(lesion_score)
    score = np.r_[lesion_score[found], fp_score]
    image = np.r_[lesion_image[found], fp_image].astype(np.int64)
    is_hit = np.r_[np.ones(found.sum()), np.zeros(len(fp_score))]
    order = np.argsort(-score, kind="stable")
    score, image, is_hit = score[order], image[order], is_hit[order]
    last = np.r_[score[1:] != score[:-1], True] if len(score) else np.zeros(0, bool)
    for start in range(0, len(weights), CHUNK):
        rows = slice(start, start + CHUNK)
        w = weights[rows]
        lesions = w[:, np.asarray(lesion_image, np.int64)].sum(axis=1)
        drawn = w[:, image]
        sens = np.cumsum(drawn * is_hit, axis=1)[:, last]
        fps = np.cumsum(drawn * (1 - is_hit), axis=1)[:, last] / n_images
        with np.errstate(invalid="ignore", divide="ignore"):
            sens /= lesions[:, None]  # nan rows where a resample drew no lesion
        yield rows, sens, fps


def sensitivity_at_rates(sens: np.ndarray, fps: np.ndarray, rates: np.ndarray) -> np.ndarray:
    """Per row, the sensitivity at the lowest threshold with at most that row's rate of FPs
    per image (``rates``: one per row, or a scalar; equal rates summed another way compare
    equal)."""
    rates = np.asarray(rates, np.float64).reshape(-1, 1) + 1e-9
    return np.where(fps <= rates, sens, 0.0).max(axis=1, initial=0.0)


def bootstrap_cpm(
    lesion_score: np.ndarray,
    lesion_image: np.ndarray,
    fp_score: np.ndarray,
    fp_image: np.ndarray,
    weights: np.ndarray,
    rates=FP_RATES,
) -> np.ndarray:
    """The CPM of each resample (arguments as :func:`resampled_curves`), read as
    :func:`cxrdet.evaluation.froc.froc` reads the curve."""
    out = np.empty(len(weights))
    curves = resampled_curves(lesion_score, lesion_image, fp_score, fp_image, weights)
    for rows, sens, fps in curves:
        cpm = np.mean([sensitivity_at_rates(sens, fps, rate) for rate in rates], axis=0)
        out[rows] = cpm
    return out


def paired_difference(gt: dict, dets_a: dict, dets_b: dict, weights: np.ndarray, iou=0.4):
    """mAP40 of ``dets_b`` less that of ``dets_a`` on the same images, and its 95 % interval
    over the same resamples (paired: each resample scores both on the same draw)."""
    a, b = match_detections(gt, dets_a, iou), match_detections(gt, dets_b, iou)
    difference = map_of(b)["mAP"] - map_of(a)["mAP"]  # each set matched once
    return difference, interval(bootstrap_map(b, weights) - bootstrap_map(a, weights))


def difference_text(difference: float, ci: tuple[float, float]) -> str:
    """``+0.006 [-0.012, 0.025]: no evidence of a difference`` when the interval holds 0."""
    text = f"{difference:+.3f}{ci_text(ci)}"
    if ci[0] <= 0 <= ci[1]:
        return text + ": no evidence of a difference"
    return text


def bootstrap_auc(scores: np.ndarray, positive: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """ROC AUC of each resample (rows of ``weights``, one column per image): the chance that
    a drawn positive scores above a drawn negative, ties counting a half (Mann-Whitney); nan
    in a resample without both kinds."""
    order = np.argsort(scores, kind="stable")
    scores, positive = np.asarray(scores)[order], np.asarray(positive, bool)[order]
    starts = np.flatnonzero(np.r_[True, scores[1:] != scores[:-1]]) if len(scores) else []
    out = np.empty(len(weights))
    for start in range(0, len(weights), CHUNK):
        w = weights[start : start + CHUNK][:, order].astype(np.float64)
        pos = np.add.reduceat(w * positive, starts, axis=1)  # per tied group of scores
        neg = np.add.reduceat(w * ~positive, starts, axis=1)
        below = np.cumsum(neg, axis=1) - neg
        with np.errstate(invalid="ignore", divide="ignore"):
            auc = (pos * (below + neg / 2)).sum(axis=1) / (pos.sum(axis=1) * neg.sum(axis=1))
        out[start : start + len(w)] = auc
    return out


def bootstrap_ap40(m: dict, weights: np.ndarray, classes: list[int] | None = None):
    """COCO-style AP40 of each resample from :func:`cxrdet.evaluation.coco.coco_matches`'
    result (the findings' matches): per class the 101-point interpolated precision of the
    weighted ranking, the mean over ``classes`` (default: those with ground truth) that have
    a box in that resample."""
    from cxrdet.evaluation.coco import RECALL_POINTS

    classes = m["with_gt"] if classes is None else classes
    out = np.empty(len(weights))
    for start in range(0, len(weights), CHUNK):
        w = weights[start : start + CHUNK].astype(np.float64)
        aps = np.full((len(w), len(classes)), np.nan)
        for k, c in enumerate(classes):
            n_gt = w[:, m["g_img"][m["g_cls"] == c]].sum(axis=1)
            part = slice(m["bounds"][c], m["bounds"][c + 1])
            tp = m["tp"][part]
            if not len(tp):
                aps[:, k] = np.where(n_gt > 0, 0.0, np.nan)
                continue
            drawn = w[:, m["image"][part]]
            hits, misses = np.cumsum(drawn * tp, axis=1), np.cumsum(drawn * ~tp, axis=1)
            with np.errstate(invalid="ignore", divide="ignore"):
                recall = hits / n_gt[:, None]
                precision = np.where(hits + misses > 0, hits / (hits + misses), 0.0)
            envelope = np.maximum.accumulate(precision[:, ::-1], axis=1)[:, ::-1]
            for row in range(len(w)):
                if n_gt[row] == 0:
                    continue
                at = np.searchsorted(recall[row], RECALL_POINTS, side="left")
                inside = at < len(tp)
                aps[row, k] = np.where(inside, envelope[row, np.minimum(at, len(tp) - 1)], 0).mean()
        out[start : start + len(w)] = class_mean(aps)
    return out


def map_interval(
    gt: dict, dets: dict, weights: np.ndarray, iou: float = 0.4, min_images: int = MIN_IMAGES
) -> dict:
    """:func:`class_interval` of the competition's mAP40 of ``dets`` on ``gt``."""
    m = match_detections(gt, dets, iou)
    boxes = dict(enumerate(m.n_gt.tolist()))
    per_class = map_of(m)["per_class"]
    resample = lambda classes: bootstrap_map(m, weights, classes)  # noqa: E731
    return class_interval(boxes, per_class, resample, weights.shape[1], min_images)


def ap40_interval(
    matches: dict, per_class: dict, weights: np.ndarray, min_images: int = MIN_IMAGES
) -> dict:
    """:func:`class_interval` of COCO-style AP40 (``matches``: the findings'
    :func:`cxrdet.evaluation.coco.coco_matches`, ``per_class``: its per-class AP40)."""
    boxes = dict(enumerate(np.bincount(matches["g_cls"]).tolist()))
    resample = lambda classes: bootstrap_ap40(matches, weights, classes)  # noqa: E731
    return class_interval(boxes, per_class, resample, weights.shape[1], min_images)
