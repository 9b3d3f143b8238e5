"""The 15 VinBigData classes and a validating reader for Kaggle's ``train.csv`` layout."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from cxrdet.data.csv_format import separator_note

log = logging.getLogger(__name__)

CLASS_NAMES = [
    "Aortic enlargement",
    "Atelectasis",
    "Calcification",
    "Cardiomegaly",
    "Consolidation",
    "ILD",
    "Infiltration",
    "Lung Opacity",
    "Nodule/Mass",
    "Other lesion",
    "Pleural effusion",
    "Pleural thickening",
    "Pneumothorax",
    "Pulmonary fibrosis",
    "No finding",
]
NO_FINDING = 14
NUM_FINDINGS = 14  # classes 0..13 have boxes; class 14 ("No finding") has none
LABEL_COLUMNS = ["image_id", "class_name", "class_id", "rad_id", "x_min", "y_min", "x_max", "y_max"]
BOX_COLUMNS = ["x_min", "y_min", "x_max", "y_max"]
NO_FINDING_BOX = np.array([0.0, 0.0, 1.0, 1.0])  # the competition's box for a normal image


def normal_image_ids(labels: pd.DataFrame) -> set[str]:
    """The images no reader marked a finding on: cxrdet's one meaning of a normal image.

    A reader's "No finding" beside another reader's box does not make an image normal; an image
    is normal when every row it has is class 14. Training, fusion, scoring and EDA all use this.
    """
    finding = labels["class_id"] != NO_FINDING
    return set(labels["image_id"]) - set(labels.loc[finding, "image_id"])


def ground_truth(labels: pd.DataFrame, image_ids) -> dict:
    """What a submission is scored against: image id → (boxes in original pixels, class ids),
    the findings as labelled plus one ``0 0 1 1`` class-14 box per normal image
    (:func:`normal_image_ids`); ids without label rows get nothing. Keyed in ``image_ids`` order.
    """
    gt = {i: (np.zeros((0, 4)), np.zeros(0, np.int64)) for i in image_ids}
    normal = normal_image_ids(labels)
    for image_id, rows in labels[labels["image_id"].isin(gt)].groupby("image_id"):
        finding = rows["class_id"].to_numpy() != NO_FINDING
        boxes = rows.loc[finding, BOX_COLUMNS].to_numpy(np.float64)
        classes = rows.loc[finding, "class_id"].to_numpy(np.int64)
        if image_id in normal:
            boxes = np.vstack([boxes, NO_FINDING_BOX])
            classes = np.append(classes, NO_FINDING)
        gt[image_id] = (boxes, classes)
    return gt


@dataclass
class LabelReport:
    """What :func:`read_labels` dropped, by reason, with the first offending CSV rows."""

    path: str
    rows: int = 0
    skipped: dict[str, list[int]] = field(default_factory=dict)
    readers: bool = True  # the file has a rad_id column

    def skip(self, reason: str, rows: np.ndarray) -> None:
        if len(rows):
            self.skipped.setdefault(reason, []).extend(int(r) for r in rows)

    @property
    def n_skipped(self) -> int:
        return sum(len(v) for v in self.skipped.values())

    def log(self) -> None:
        for reason, rows in self.skipped.items():
            first = ", ".join(str(r) for r in rows[:5])
            log.warning(
                "%s: skipped %d row(s) with %s (CSV line(s) %s%s)",
                self.path,
                len(rows),
                reason,
                first,
                ", ..." if len(rows) > 5 else "",
            )


def read_labels(path: str | Path) -> tuple[pd.DataFrame, LabelReport]:
    """Read a train.csv-format file and drop the rows that cannot be used.

    Boxes stay in original DICOM pixels. Rows with an unknown class id or, for classes 0..13,
    a missing or zero-area box are dropped and reported (never raised halfway through training).

    Returns:
        The clean rows (``class_id`` int64; box columns float) and a report of what was dropped.

    Raises:
        FileNotFoundError: the file does not exist.
        ValueError: the file lacks required columns.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"labels file not found: {path}")
    df = pd.read_csv(path, dtype={"image_id": str, "rad_id": str})
    missing = [c for c in ("image_id", "class_id", *BOX_COLUMNS) if c not in df.columns]
    if missing:
        raise ValueError(
            f"{path}: missing column(s) {missing}; expected {LABEL_COLUMNS}"
            + separator_note(df.columns)
        )
    report = LabelReport(path=str(path), rows=len(df))
    csv_line = df.index.to_numpy() + 2  # 1-based, after the header

    class_id = pd.to_numeric(df["class_id"], errors="coerce")
    bad_class = ~class_id.isin(range(len(CLASS_NAMES)))
    report.skip("an unknown class_id (expected 0..14)", csv_line[bad_class.to_numpy()])

    boxes = df[BOX_COLUMNS].apply(pd.to_numeric, errors="coerce")
    finding = class_id.between(0, NUM_FINDINGS - 1) & ~bad_class
    no_box = finding & boxes.isna().any(axis=1)
    report.skip("a missing box", csv_line[no_box.to_numpy()])
    empty = (
        finding
        & ~no_box
        & ((boxes["x_max"] <= boxes["x_min"]) | (boxes["y_max"] <= boxes["y_min"]))
    )
    report.skip("a zero-area box (x_max <= x_min or y_max <= y_min)", csv_line[empty.to_numpy()])

    keep = ~(bad_class | no_box | empty)
    out = df.loc[keep].copy()
    out["class_id"] = class_id[keep].astype(np.int64)
    out[BOX_COLUMNS] = boxes[keep].astype(float)
    if "rad_id" not in out.columns:  # the readers' figures need it: say so once
        out["rad_id"] = pd.Series(np.nan, index=out.index, dtype=object)
        report.readers = False
        log.warning(
            "%s has no rad_id column (which radiologist drew each box): every box counts as "
            "one reader's, and the per-reader figures and the readers' baseline are not made",
            path,
        )
    report.log()
    return out.reset_index(drop=True), report
