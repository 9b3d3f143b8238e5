"""The competition metric: mAP at IoU 0.4, PASCAL VOC 2010 style, written out (vectorised).

Per class, detections of all images are taken in descending score (ties in the order of the
ground truth's images, then as given within an image); each takes the ground-truth box of its
image and class with the highest IoU, and is a true positive when that IoU is >= 0.4 and no
earlier detection took the same box (a duplicate is a false positive). AP is the area under the
all-point interpolated precision-recall curve; the mean runs over the classes that have ground
truth. "No finding" (14) is an ordinary class whose boxes are ``0 0 1 1``.
"""

from __future__ import annotations

import numpy as np

from cxrdet.labels import NO_FINDING_BOX


def flatten(table: dict, with_scores: bool, index: dict[str, int]):
    """dict image → arrays  ⇒  flat arrays (image index, class, [score], box), images in
    ``index`` order (so a submission's row order never changes its score), rows as given."""
    imgs, classes, scores, boxes = [], [], [], []
    for image_id in index:
        value = table.get(image_id)
        if value is None:
            continue
        b = np.asarray(value[0], np.float64).reshape(-1, 4)
        imgs.append(np.full(len(b), index[image_id]))
        boxes.append(b)
        if with_scores:
            scores.append(np.asarray(value[1], np.float64).reshape(-1))
        classes.append(np.asarray(value[-1]).reshape(-1).astype(np.int64))
    cat = lambda parts, shape: np.concatenate(parts) if parts else np.zeros(shape)  # noqa: E731
    out = (cat(imgs, 0).astype(np.int64), cat(classes, 0).astype(np.int64))
    return (*out, cat(scores, 0), cat(boxes, (0, 4))) if with_scores else (*out, cat(boxes, (0, 4)))


def same_group_pairs(d_key: np.ndarray, g_key: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Every (detection, ground truth) index pair whose keys (image and class) are equal.

    Pairs come grouped by detection in input order, ground truth in input order within each.
    """
    g_order = np.argsort(g_key, kind="stable")
    g_sorted = g_key[g_order]
    start = np.searchsorted(g_sorted, d_key, "left")
    count = np.searchsorted(g_sorted, d_key, "right") - start
    pair_det = np.repeat(np.arange(len(d_key)), count)
    offsets = np.arange(len(pair_det)) - np.repeat(np.cumsum(count) - count, count)
    return pair_det, g_order[np.repeat(start, count) + offsets]


def pair_ious(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU of ``a[i]`` with ``b[i]`` (xyxy rows); 0 where the union is empty."""
    inter = np.prod(
        np.clip(np.minimum(a[:, 2:], b[:, 2:]) - np.maximum(a[:, :2], b[:, :2]), 0, None), axis=1
    )
    area = lambda x: (x[:, 2] - x[:, 0]) * (x[:, 3] - x[:, 1])  # noqa: E731
    union = area(a) + area(b) - inter
    return np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)


def voc_ap(tp: np.ndarray, n_gt: int) -> float:
    """All-point interpolated AP of a TP/FP sequence (descending score) with ``n_gt`` positives."""
    if n_gt == 0:
        return float("nan")
    if len(tp) == 0:
        return 0.0
    ctp = np.cumsum(tp)
    recall = np.concatenate(([0.0], ctp / n_gt, [1.0]))
    precision = np.concatenate(([0.0], ctp / np.arange(1, len(tp) + 1), [0.0]))
    precision = np.maximum.accumulate(precision[::-1])[::-1]
    step = np.nonzero(recall[1:] != recall[:-1])[0]
    return float(np.sum((recall[step + 1] - recall[step]) * precision[step + 1]))


def competition_map(gt: dict, dets: dict, iou: float = 0.4, curves: bool = False) -> dict:
    """mAP@``iou`` as the competition computes it (see the module docstring).

    Args:
        gt: image id → (boxes [N, 4] xyxy, class ids [N]); every scored image is a key.
        dets: image id → (boxes [M, 4], scores [M], class ids [M]); other ids are ignored.
        iou: the IoU threshold (>=).
        curves: also return each class's precision-recall curve.

    Returns:
        ``{"mAP": float (nan without ground truth), "per_class": {class id: AP}}`` over the
        classes with ground truth, plus ``"curves": {class id: (recall, precision)}``.
    """
    index = {image_id: i for i, image_id in enumerate(gt)}
    g_img, g_cls, g_box = flatten(gt, False, index)
    d_img, d_cls, d_score, d_box = flatten(dets, True, index)
    n_cls = int(max(g_cls.max(initial=0), d_cls.max(initial=0))) + 1

    # Every (detection, ground truth) pair of the same image and class.
    pair_det, pair_gt = same_group_pairs(d_img * n_cls + d_cls, g_img * n_cls + g_cls)
    pair_iou = pair_ious(d_box[pair_det], g_box[pair_gt])

    # Each detection's best ground truth (the first one on ties, like argmax).
    best_gt = np.full(len(d_cls), -1)
    best_iou = np.zeros(len(d_cls))
    if len(pair_det):
        order = np.lexsort((pair_gt, -pair_iou, pair_det))
        first = order[np.r_[True, pair_det[order][1:] != pair_det[order][:-1]]]
        best_gt[pair_det[first]] = pair_gt[first]
        best_iou[pair_det[first]] = pair_iou[first]
    hit = best_iou >= iou

    # Class by class, descending score; the first hit on a ground-truth box is a TP.
    order = np.lexsort((np.arange(len(d_cls)), -d_score, d_cls))
    hit_sorted, gt_sorted = hit[order], best_gt[order]
    tp = np.zeros(len(order))
    hit_pos = np.nonzero(hit_sorted)[0]
    _, first_hit = np.unique(gt_sorted[hit_pos], return_index=True)
    tp[hit_pos[first_hit]] = 1.0

    cls_sorted = d_cls[order]
    bounds = np.searchsorted(cls_sorted, np.arange(n_cls + 1))
    n_gt = np.bincount(g_cls, minlength=n_cls)
    per_class = {
        c: voc_ap(tp[bounds[c] : bounds[c + 1]], int(n_gt[c])) for c in range(n_cls) if n_gt[c]
    }
    mean = float(np.mean(list(per_class.values()))) if per_class else float("nan")
    out = {"mAP": mean, "per_class": per_class}
    if curves:
        out["curves"] = {}
        for c in per_class:
            hits = np.cumsum(tp[bounds[c] : bounds[c + 1]])
            ranks = np.arange(1, len(hits) + 1)
            out["curves"][c] = (hits / n_gt[c], hits / np.maximum(ranks, 1))
    return out


def no_finding_as_image_label(boxes: np.ndarray, scores: np.ndarray, classes: np.ndarray):
    """A detector's class-14 detections as the competition reads "No finding": one line at the
    highest of their scores, box ``0 0 1 1`` (wherever the detector put it)."""
    is14 = np.asarray(classes) == 14
    if not is14.any():
        return boxes, scores, classes
    first = np.flatnonzero(is14)[np.argmax(np.asarray(scores)[is14])]
    keep = ~is14
    keep[first] = True
    boxes = np.array(boxes, np.float64).reshape(-1, 4)
    boxes[first] = NO_FINDING_BOX
    return boxes[keep], np.asarray(scores)[keep], np.asarray(classes)[keep]


def with_no_finding(boxes: np.ndarray, scores: np.ndarray, classes: np.ndarray):
    """Append a "No finding" detection scored from the detector's own confidence, unless the
    detector (trained with class 14) gave one itself.

    Its score is 1 - the highest finding score (1 when nothing was found); its box ``0 0 1 1``.
    An extra low-score line never lowers the other classes' AP, and it lets class 14 score.
    """
    if (np.asarray(classes) == 14).any():
        return boxes, scores, classes
    finding = np.asarray(classes) != 14
    top = float(np.max(np.asarray(scores)[finding])) if finding.any() else 0.0
    return add_no_finding(boxes, scores, classes, 1.0 - top)


def add_no_finding(boxes: np.ndarray, scores: np.ndarray, classes: np.ndarray, score: float):
    """The prediction with one more line: "No finding" at ``score``, box ``0 0 1 1``."""
    return (
        np.vstack([np.asarray(boxes, np.float64).reshape(-1, 4), NO_FINDING_BOX]),
        np.append(np.asarray(scores, np.float64), score),
        np.append(np.asarray(classes, np.int64), 14),
    )
