"""Shared by both metrics: prediction and ground-truth tables as flat arrays, and the
(detection, ground truth) pairs of the same image and class."""

from __future__ import annotations

import numpy as np


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
