"""No label changed in silence: every box that had to be clipped to its image or dropped is
counted and listed, and labels that do not belong with their meta CSV stop the run.

A box lying partly outside its image is clipped to it; one with less than a pixel left (or
none at all) is dropped. Real labels have some (readers' boxes past the image edge by a few
pixels). A meta CSV that does not belong with the labels shows as whole images whose boxes
lie mostly outside (dim0/dim1 hold another size than the original DICOM's), or whose boxes
all fit only with dim0 and dim1 swapped; those stop the run in one line instead.
"""

from __future__ import annotations

import logging
from collections import Counter

import numpy as np
import pandas as pd

from cxrdet.data.boxes import clip, valid
from cxrdet.data.labels import BOX_COLUMNS, NO_FINDING

log = logging.getLogger(__name__)
ISSUE_COLUMNS = ["image_id", "split", "class_id", *BOX_COLUMNS, "issue"]
MOSTLY_OUTSIDE = 0.5  # a box with more than this share of its area outside its image


def box_issues(
    image_id: str, split: str, classes, boxes, hw
) -> tuple[np.ndarray, np.ndarray, list[dict]]:
    """The boxes clipped to the image ``hw`` (rows, columns), which to keep (at least a pixel
    left), and one row per box changed: ``clipped`` or ``dropped``."""
    boxes = np.asarray(boxes, np.float64).reshape(-1, 4)
    clipped = clip(boxes, hw)
    keep = valid(clipped)
    changed = np.flatnonzero(~keep | np.any(clipped != boxes, axis=1))
    rows = [
        {
            "image_id": image_id,
            "split": split,
            "class_id": int(classes[k]),
            **dict(zip(BOX_COLUMNS, boxes[k].tolist())),
            "issue": "clipped" if keep[k] else "dropped",
        }
        for k in changed
    ]
    return clipped, keep, rows


def summary(issues: list[dict]) -> dict:
    """Counts of the issues: boxes clipped and dropped, images affected, the worst five."""
    per_image = Counter(row["image_id"] for row in issues)
    kinds = Counter(row["issue"] for row in issues)
    return {
        "boxes_clipped": kinds.get("clipped", 0),
        "boxes_dropped": kinds.get("dropped", 0),
        "images_affected": len(per_image),
        "worst_images": [i for i, _ in per_image.most_common(5)],
    }


def describe(issues: list[dict]) -> str:
    """One line for the log, per split."""
    parts = []
    for split in sorted({row["split"] for row in issues}):
        s = summary([row for row in issues if row["split"] == split])
        parts.append(
            f"{split}: {s['boxes_clipped']} box(es) clipped to their image, "
            f"{s['boxes_dropped']} dropped (under 1 px left), in {s['images_affected']} "
            f"image(s); most in {', '.join(s['worst_images'])}"
        )
    return "; ".join(parts)


def issues_frame(issues: list[dict]) -> pd.DataFrame:
    return pd.DataFrame(issues, columns=ISSUE_COLUMNS)


def mismatch(labels: pd.DataFrame, meta: pd.DataFrame, meta_csv) -> str | None:
    """One line when the labels' boxes and the meta's sizes cannot belong together: an image
    whose boxes all fit only with dim0 and dim1 swapped, or one whose boxes mostly lie mostly
    outside it. None when they agree (a few boxes past an edge are the readers' own)."""
    findings = labels[(labels["class_id"] != NO_FINDING) & labels["image_id"].isin(meta.index)]
    if findings.empty:
        return None
    joined = findings.join(meta[["dim0", "dim1"]], on="image_id")
    x0, y0, x1, y1 = (joined[c].to_numpy(np.float64) for c in BOX_COLUMNS)
    rows, cols = joined["dim0"].to_numpy(np.float64), joined["dim1"].to_numpy(np.float64)
    area = np.maximum(x1 - x0, 1e-9) * np.maximum(y1 - y0, 1e-9)
    inside_w = np.clip(np.minimum(x1, cols) - np.maximum(x0, 0), 0, None)
    inside_h = np.clip(np.minimum(y1, rows) - np.maximum(y0, 0), 0, None)
    outside = 1 - inside_w * inside_h / area
    tolerance = 0.02  # readers' boxes overrun an edge by a few pixels
    fits = (x1 <= cols * (1 + tolerance)) & (y1 <= rows * (1 + tolerance))
    fits_swapped = (x1 <= rows * (1 + tolerance)) & (y1 <= cols * (1 + tolerance))
    per_image = pd.DataFrame(
        {
            "image_id": joined["image_id"].to_numpy(),
            "mostly_outside": outside > MOSTLY_OUTSIDE,
            "fits": fits,
            "fits_swapped": fits_swapped,
        }
    ).groupby("image_id")
    swapped = per_image.apply(lambda g: (~g["fits"]).any() and g["fits_swapped"].all())
    lost = per_image["mostly_outside"].mean() > 0.5
    if swapped.any():
        first = swapped[swapped].index[0]
        return (
            f"image {first}: its boxes fit its image only with dim0 and dim1 swapped "
            f"({int(swapped.sum())} image(s) so in {meta_csv}): the meta CSV's sizes look "
            "swapped (dim0 = the original DICOM's rows, dim1 = its columns)"
        )
    if lost.any():
        first = lost[lost].index[0]
        h, w = meta.at[first, "dim0"], meta.at[first, "dim1"]
        return (
            f"image {first}: most of its boxes lie mostly outside the {h} x {w} image that "
            f"{meta_csv} gives it ({int(lost.sum())} image(s) so): the meta CSV does not hold "
            "the original DICOM sizes the boxes are in (a resized copy's, or another dataset's?)"
        )
    return None
