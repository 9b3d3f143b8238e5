"""A validating reader for box labels in either layout: Kaggle's ``train.csv`` (``class_id``,
the 14 findings of ``kaggle14``) or the VinDr-CXR release's ``annotations_train.csv`` /
``annotations_test.csv`` (``class_name``, no ``class_id``; the 22 findings of ``local22``; the
test file has no ``rad_id``: its boxes are the consensus of five radiologists)."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from cxrdet.data.classes import KAGGLE14, LOCAL22, NO_FINDING_NAME, ClassSet, class_set
from cxrdet.data.csv_format import separator_note

log = logging.getLogger(__name__)

CLASS_NAMES = KAGGLE14.names  # Kaggle's train.csv: ids 0..13 findings, 14 "No finding"
NO_FINDING = KAGGLE14.no_finding
NUM_FINDINGS = KAGGLE14.num_findings  # classes 0..13 have boxes; class 14 ("No finding") has none
LABEL_COLUMNS = ["image_id", "class_name", "class_id", "rad_id", "x_min", "y_min", "x_max", "y_max"]
RELEASE_COLUMNS = ["image_id", "rad_id", "class_name", "x_min", "y_min", "x_max", "y_max"]
BOX_COLUMNS = ["x_min", "y_min", "x_max", "y_max"]
NO_FINDING_BOX = np.array([0.0, 0.0, 1.0, 1.0])  # the competition's box for a normal image


def is_no_finding(labels: pd.DataFrame) -> pd.Series:
    """The "No finding" rows, by name: the same in every class set (:mod:`cxrdet.data.classes`;
    :func:`read_labels` writes each row's ``class_name`` as its set spells it)."""
    return labels["class_name"] == NO_FINDING_NAME


def names_of(labels: pd.DataFrame) -> dict[int, str]:
    """Class id → name, as the rows spell them (:func:`read_labels` writes each set's)."""
    return dict(zip(labels["class_id"].astype(int), labels["class_name"]))


def normal_image_ids(labels: pd.DataFrame) -> set[str]:
    """The images no reader marked a finding on: cxrdet's one meaning of a normal image.

    A reader's "No finding" beside another reader's box does not make an image normal; an image
    is normal when every row it has is "No finding". Training, fusion, scoring and EDA all use
    this.
    """
    finding = ~is_no_finding(labels)
    return set(labels["image_id"]) - set(labels.loc[finding, "image_id"])


def ground_truth(labels: pd.DataFrame, image_ids) -> dict:
    """What a submission is scored against: image id → (boxes in original pixels, class ids),
    the findings as labelled plus one ``0 0 1 1`` "No finding" box (its set's id) per normal
    image (:func:`normal_image_ids`); ids without label rows get nothing. Keyed in
    ``image_ids`` order.
    """
    gt = {i: (np.zeros((0, 4)), np.zeros(0, np.int64)) for i in image_ids}
    normal = normal_image_ids(labels)
    for image_id, rows in labels[labels["image_id"].isin(gt)].groupby("image_id"):
        finding = ~is_no_finding(rows).to_numpy()
        boxes = rows.loc[finding, BOX_COLUMNS].to_numpy(np.float64)
        classes = rows.loc[finding, "class_id"].to_numpy(np.int64)
        if image_id in normal:
            boxes = np.vstack([boxes, NO_FINDING_BOX])
            classes = np.append(classes, int(rows["class_id"].iloc[0]))
        gt[image_id] = (boxes, classes)
    return gt


@dataclass
class LabelReport:
    """What :func:`read_labels` dropped, by reason, with the first offending CSV rows."""

    path: str
    rows: int = 0
    skipped: dict[str, list[int]] = field(default_factory=dict)
    readers: bool = True  # the file has a rad_id column
    layout: str = "kaggle"  # kaggle (train.csv) or release (VinDr-CXR's annotations_*.csv)
    classes: ClassSet = KAGGLE14  # the class set its ids are of
    # findings' boxes dropped for no area or a missing coordinate, as label_issues.csv rows
    unusable: list[dict] = field(default_factory=list)

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


def label_layout(path: Path, columns) -> str:
    """``kaggle`` (a ``class_id`` column) or ``release`` (``class_name`` without ``class_id``),
    told by the columns; anything else is refused naming the columns of both."""
    columns = set(columns)
    if {"image_id", *BOX_COLUMNS} <= columns:
        if "class_id" in columns:
            return "kaggle"
        if "class_name" in columns:
            return "release"
    raise ValueError(
        f"{path}: not a labels file: expected Kaggle's train.csv columns {LABEL_COLUMNS} or "
        f"the VinDr-CXR release's annotations_*.csv columns {RELEASE_COLUMNS} (rad_id "
        f"optional), found {sorted(columns)}" + separator_note(list(columns))
    )


def labels_class_set(path: str | Path, classes: str | ClassSet | None = None) -> ClassSet:
    """The class set :func:`read_labels` will read ``path`` with, from its header alone (the
    model's head is sized before the labels load)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"labels file not found: {path}")
    return layout_class_set(path, label_layout(path, pd.read_csv(path, nrows=0).columns), classes)


def layout_class_set(path: Path, layout: str, classes: str | ClassSet | None) -> ClassSet:
    """``classes`` for a file of ``layout``: its own set (None), or refused when another."""
    own = KAGGLE14 if layout == "kaggle" else LOCAL22
    chosen = class_set(classes, own)
    if chosen is not own:  # no source says how one set maps onto the other
        what = "Kaggle's train.csv" if layout == "kaggle" else "the VinDr-CXR release's file"
        raise ValueError(
            f"{path}: {what} is labelled with the {own.name} classes, not {chosen.name}; "
            f"cxrdet does not map one set onto the other (set data.classes={own.name}, or "
            "null for the file's own)"
        )
    return chosen


def read_labels(
    path: str | Path, classes: str | ClassSet | None = None
) -> tuple[pd.DataFrame, LabelReport]:
    """Read a labels file in either layout (:func:`label_layout`) and drop the rows that cannot
    be used.

    ``classes`` (``kaggle14``, ``local22``; None: the layout's own) must be the layout's own:
    Kaggle's ``class_id`` are ``kaggle14``'s, the release's names ``local22``'s, and no source
    says how one set maps onto the other, so any other is refused. A release file's
    ``class_name`` is looked up in its set (case aside); a name outside it is dropped and
    counted.
    Boxes stay in original DICOM pixels. Rows with an unknown class or, for a finding, a missing
    or zero-area box are dropped and reported (never raised halfway through training).

    Returns:
        The clean rows (``class_name`` as the set spells it, ``class_id`` int64, ``rad_id``;
        box columns float) and a report of what was dropped, the layout and the class set.

    Raises:
        FileNotFoundError: the file does not exist.
        ValueError: the file is neither layout, or the class set does not fit it.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"labels file not found: {path}")
    df = pd.read_csv(path, dtype={"image_id": str, "rad_id": str, "class_name": str})
    layout = label_layout(path, df.columns)
    classes = layout_class_set(path, layout, classes)
    report = LabelReport(path=str(path), rows=len(df), layout=layout, classes=classes)
    csv_line = df.index.to_numpy() + 2  # 1-based, after the header

    n = len(classes.names)
    if layout == "kaggle":
        class_id = pd.to_numeric(df["class_id"], errors="coerce")
        bad_class = ~class_id.isin(range(n))
        report.skip(f"an unknown class_id (expected 0..{n - 1})", csv_line[bad_class.to_numpy()])
    else:
        ids = {name.lower(): i for i, name in enumerate(classes.names)}
        class_id = df["class_name"].str.strip().str.lower().map(ids)
        bad_class = class_id.isna()
        report.skip(f"a class_name outside {classes.name}", csv_line[bad_class.to_numpy()])

    boxes = df[BOX_COLUMNS].apply(pd.to_numeric, errors="coerce")
    finding = class_id.between(0, classes.num_findings - 1) & ~bad_class
    no_box = finding & boxes.isna().any(axis=1)
    report.skip("a missing box", csv_line[no_box.to_numpy()])
    empty = (
        finding
        & ~no_box
        & ((boxes["x_max"] <= boxes["x_min"]) | (boxes["y_max"] <= boxes["y_min"]))
    )
    report.skip("a zero-area box (x_max <= x_min or y_max <= y_min)", csv_line[empty.to_numpy()])

    for mask, issue in ((no_box, "missing box"), (empty, "no area")):
        report.unusable += [
            {
                "image_id": str(image_id),
                "class_id": int(c),
                **dict(zip(BOX_COLUMNS, box)),
                "issue": issue,
            }
            for image_id, c, box in zip(
                df.loc[mask, "image_id"], class_id[mask], boxes[mask].to_numpy().tolist()
            )
        ]
    keep = ~(bad_class | no_box | empty)
    out = df.loc[keep].copy()
    out["class_id"] = class_id[keep].astype(np.int64)
    out["class_name"] = np.array(classes.names, object)[out["class_id"]]  # one spelling an id
    out[BOX_COLUMNS] = boxes[keep].astype(float)
    if "rad_id" not in out.columns:  # the readers' figures need it: say so once
        out["rad_id"] = pd.Series(np.nan, index=out.index, dtype=object)
        report.readers = False
        if layout == "release":  # annotations_test.csv: the consensus, one reader by design
            log.info("%s has no rad_id column: one reader, the consensus of five", path)
        else:
            log.warning(
                "%s has no rad_id column (which radiologist drew each box): every box counts "
                "as one reader's, and the per-reader figures and the readers' baseline are not "
                "made",
                path,
            )
    report.log()
    return out.reset_index(drop=True), report
