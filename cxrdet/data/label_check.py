"""No label changed in silence: every box that had to be clipped to its image or dropped is
counted and listed, and labels that do not belong with their meta CSV stop the run.

A box lying partly outside its image is clipped to it; one with less than a pixel left (or
none at all) is dropped. Real labels have some (readers' boxes past the image edge by a few
pixels). A finding's box that has no area as given (``x_max <= x_min`` or ``y_max <= y_min``)
or misses a coordinate is dropped when the labels are read
(:func:`cxrdet.data.labels.read_labels`) and listed here too, as ``no area`` or ``missing
box``: the detector's matcher must never see it.

A meta CSV that does not belong with the labels shows as whole images whose boxes lie mostly
outside (dim0/dim1 hold another size than the original DICOM's), or whose boxes all fit only
with dim0 and dim1 swapped; those stop the run in one line instead.
"""

from __future__ import annotations

import logging
from collections import Counter

import numpy as np
import pandas as pd

from cxrdet.data.boxes import clip, valid
from cxrdet.data.labels import BOX_COLUMNS, is_no_finding

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
    unusable = kinds.get("no area", 0) + kinds.get("missing box", 0)
    return {
        "boxes_clipped": kinds.get("clipped", 0),
        "boxes_dropped": kinds.get("dropped", 0) + unusable,
        "boxes_unusable": unusable,
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
            f"{s['boxes_dropped']} dropped (under 1 px left, or {s['boxes_unusable']} with "
            f"no area or a missing coordinate as given), in {s['images_affected']} "
            f"image(s); most in {', '.join(s['worst_images'])}"
        )
    return "; ".join(parts)


def unusable_box_issues(report, val_ids: set[str]) -> list[dict]:
    """:func:`box_issues`' rows for the boxes ``read_labels`` dropped (its report's
    ``unusable``), each in the split its image went to."""
    return [
        {**row, "split": "validation" if row["image_id"] in val_ids else "train"}
        for row in report.unusable
    ]


def issues_frame(issues: list[dict]) -> pd.DataFrame:
    return pd.DataFrame(issues, columns=ISSUE_COLUMNS)


MISMATCH_COLUMNS = ["image_id", "problem", "dim0", "dim1"]
LABEL_ISSUES = ("stop", "drop")  # data.label_issues


class LabelMismatch(ValueError):
    """Labels whose boxes cannot belong with the meta CSV's sizes; ``images`` lists them all
    (:data:`MISMATCH_COLUMNS`)."""

    def __init__(self, message: str, images: pd.DataFrame):
        super().__init__(message)
        self.images = images


def mismatched_images(labels: pd.DataFrame, meta: pd.DataFrame) -> pd.DataFrame:
    """Every image whose boxes all fit only with dim0 and dim1 swapped (``swapped``), or whose
    boxes mostly lie mostly outside it (``outside``), with the meta's sizes
    (:data:`MISMATCH_COLUMNS`). A few boxes past an edge are the readers' own: not listed."""
    findings = labels[~is_no_finding(labels) & labels["image_id"].isin(meta.index)]
    if findings.empty:
        return pd.DataFrame(columns=MISMATCH_COLUMNS)
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
            "misfits": ~fits,
            "fits_swapped": fits_swapped,
        }
    ).groupby("image_id", sort=True)
    swapped = per_image["misfits"].any() & per_image["fits_swapped"].all()
    lost = (per_image["mostly_outside"].mean() > 0.5) & ~swapped
    problem = pd.Series(np.where(swapped, "swapped", np.where(lost, "outside", "")), swapped.index)
    problem = problem[problem != ""]
    out = meta.loc[problem.index, ["dim0", "dim1"]].assign(problem=problem)
    return out.rename_axis("image_id").reset_index()[MISMATCH_COLUMNS]


def mismatch(labels: pd.DataFrame, meta: pd.DataFrame, meta_csv) -> str | None:
    """One line when the labels' boxes and the meta's sizes cannot belong together
    (:func:`mismatched_images`), naming the first images and how many there are; None when
    they agree."""
    bad = mismatched_images(labels, meta)
    return mismatch_message(bad, meta_csv) if len(bad) else None


def mismatch_message(bad: pd.DataFrame, meta_csv) -> str:
    """What :func:`mismatch` says of ``bad`` (:func:`mismatched_images`)."""
    swapped = bad[bad["problem"] == "swapped"]
    lost = bad[bad["problem"] == "outside"]
    parts = []
    if len(swapped):
        parts.append(
            f"{len(swapped)} image(s) whose boxes fit only with dim0 and dim1 swapped (e.g. "
            f"{', '.join(swapped['image_id'][:3])}): the meta CSV's sizes look swapped (dim0 = "
            "the original DICOM's rows, dim1 = its columns)"
        )
    if len(lost):
        first = lost.iloc[0]
        parts.append(
            f"{len(lost)} image(s) whose boxes mostly lie mostly outside the image that "
            f"{meta_csv} gives them (e.g. {', '.join(lost['image_id'][:3])}: "
            f"{first.dim0} x {first.dim1}): the meta CSV does not hold the original DICOM sizes "
            "the boxes are in (a resized copy's, or another dataset's?)"
        )
    return "; ".join(parts)
