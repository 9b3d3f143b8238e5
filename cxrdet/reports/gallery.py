"""The report's radiology figures: the FROC curve and the gallery of errors drawn on images."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pandas as pd

from cxrdet.data.boxes import to_prepared
from cxrdet.data.classes import KAGGLE14, ClassSet
from cxrdet.data.labels import BOX_COLUMNS
from cxrdet.evaluation.errors import ERROR_NAMES
from cxrdet.reports.draw import draw_boxes
from cxrdet.reports.figures import plt, save_figure

RED = (40, 39, 214)  # BGR
PANEL = 256  # gallery panel height in pixels


def froc_figure(f: dict, out: Path) -> Path | None:
    """Lesions found against mean FPs per image over all findings (any class), the CPM's
    rates marked."""
    if not f["sensitivity"]:
        return None
    fps, sensitivity = f["curve"]
    fig, ax = plt.subplots(figsize=(7, 4))
    label = f"all findings, {f.get('lesions', '?')} lesions (CPM {f['CPM']:.3f})"
    ax.step(fps, sensitivity, where="post", label=label)
    ax.plot(f["rates"], f["sensitivity"], "o")
    ax.set_xscale("log", base=2)
    ax.set_xlim(1 / 16, 16)
    ax.set_ylim(0, 1.02)
    ax.set_xlabel("mean false positives per image")
    ax.set_ylabel("sensitivity (share of lesions found)")
    ax.set_title("FROC at IoU 0.4, validation split")
    ax.legend(loc="lower right")
    return save_figure(fig, out / "froc.png")


def chosen_errors(
    errors: pd.DataFrame, per_class: int = 2, classes: ClassSet = KAGGLE14
) -> pd.DataFrame:
    """Per finding class, the ``per_class`` highest-scoring false positives and the first
    ``per_class`` missed boxes."""
    errors = errors[errors["class_id"] < classes.num_findings]
    false = errors[errors["type"] != "Miss"].sort_values("score", ascending=False, kind="stable")
    missed = errors[errors["type"] == "Miss"]
    parts = [false.groupby("class_id").head(per_class), missed.groupby("class_id").head(per_class)]
    return pd.concat(parts).sort_values(["class_id", "type"], kind="stable")


def panel(image: np.ndarray) -> np.ndarray:
    scale = PANEL / image.shape[0]
    return cv2.resize(image, (max(1, round(image.shape[1] * scale)), PANEL))


def gallery_items(
    errors: pd.DataFrame, load, classes: ClassSet = KAGGLE14, per_class: int = 2
) -> list[tuple[np.ndarray, str]]:
    """(ground truth | prediction image, caption) per chosen error.

    Args:
        errors: :func:`cxrdet.evaluation.errors.error_breakdown`'s rows (original pixels).
        load: image id → (grey uint8 image as prepared, its ground-truth boxes and class ids on
            it, orig_hw, image_hw, content), or None when the image is not at hand.
        classes: the class set of the ids.
    """
    items, names = [], classes.names
    for row in chosen_errors(errors, per_class, classes).itertuples(index=False):
        loaded = load(row.image_id)
        if loaded is None:
            continue
        image, gt_boxes, gt_classes, orig_hw, image_hw, content = loaded
        box = to_prepared(
            np.array([[getattr(row, c) for c in BOX_COLUMNS]]), orig_hw, image_hw, content
        )[0]
        left = draw_boxes(image, gt_boxes, gt_classes, names=names)
        right = cv2.cvtColor(image, cv2.COLOR_GRAY2BGR)
        x0, y0, x1, y1 = (int(round(v)) for v in box)
        cv2.rectangle(right, (x0, y0), (x1, y1), RED, max(1, round(max(image.shape) / 300)))
        pair = np.hstack([panel(left), np.full((PANEL, 4, 3), 255, np.uint8), panel(right)])
        name = names[int(row.class_id)]
        if row.type == "Miss":
            caption = f"missed: {name}"
        else:
            caption = f"{ERROR_NAMES[row.type]}: {name} {row.score:.2f}"
            if row.target_class >= 0 and row.type == "Cls":
                caption += f" (the box is {names[int(row.target_class)]})"
        items.append((pair, caption))
    return items
