"""Boxes drawn on images, one colour per class (the report's detection figures, predict.py's
``viz``)."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from cxrdet.data.boxes import to_prepared
from cxrdet.data.classes import KAGGLE14, NO_FINDING_NAME
from cxrdet.data.dataset import grey_pixels

# 23 distinguishable BGR colours (tab20-like, then darker ones): one per id of either class set.
COLOURS = [
    (180, 119, 31),
    (14, 127, 255),
    (44, 160, 44),
    (40, 39, 214),
    (189, 103, 148),
    (75, 86, 140),
    (194, 119, 227),
    (127, 127, 127),
    (34, 189, 188),
    (207, 190, 23),
    (232, 199, 174),
    (120, 187, 255),
    (138, 223, 152),
    (150, 152, 255),
    (213, 176, 197),
    (0, 0, 139),
    (0, 100, 0),
    (139, 0, 0),
    (0, 140, 255),
    (128, 0, 128),
    (0, 128, 128),
    (128, 128, 0),
    (203, 192, 255),
]


def draw_boxes(image: np.ndarray, boxes, classes, scores=None, min_score: float = 0.0, names=None):
    """A BGR copy of a grey or BGR image with labelled boxes scoring at least ``min_score``;
    ``names``: the class set's names by id (Kaggle's when None)."""
    names = KAGGLE14.names if names is None else names
    out = cv2.cvtColor(image, cv2.COLOR_GRAY2BGR) if image.ndim == 2 else image.copy()
    scores = np.ones(len(classes)) if scores is None else np.asarray(scores)
    thick = max(1, round(max(out.shape[:2]) / 400))
    for b, c, s in zip(np.asarray(boxes).reshape(-1, 4), classes, scores):
        if s < min_score or names[int(c)] == NO_FINDING_NAME:  # it has no place
            continue
        colour = COLOURS[int(c)]
        x0, y0, x1, y1 = (int(round(v)) for v in b)
        cv2.rectangle(out, (x0, y0), (x1, y1), colour, thick)
        label = names[int(c)] + (f" {s:.2f}" if s < 1 else "")
        cv2.putText(
            out,
            label,
            (x0, max(10, y0 - 3)),
            cv2.FONT_HERSHEY_SIMPLEX,
            0.3 * thick,
            colour,
            1,
            cv2.LINE_AA,
        )
    return out


def write_viz(
    dataset, results: dict, out_dir: Path, n: int, min_score: float = 0.3, names=None
) -> None:
    """The first ``n`` images with their predicted boxes (original-pixel boxes drawn to scale);
    ``names``: the class set's names by id."""
    out_dir.mkdir(parents=True, exist_ok=True)
    for i in range(min(n, len(dataset))):
        image, info = dataset[i]
        if info["image_id"] not in results:
            continue
        boxes, scores, classes = results[info["image_id"]]
        hw = tuple(image.shape[-2:])
        small = grey_pixels(image)
        drawn = draw_boxes(
            small,
            to_prepared(boxes, info["orig_hw"], hw, info["content"]),
            classes,
            scores,
            min_score,
            names,
        )
        cv2.imwrite(str(out_dir / f"{info['image_id']}.png"), drawn)
