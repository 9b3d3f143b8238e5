"""The VinDr-CXR release's image-level labels: the 6 diagnoses (:data:`GLOBAL6`) of each image.

``annotations/image_labels_train.csv`` has one row per image and reader (a reader column,
``rad_id`` or ``rad_ID``), ``image_labels_test.csv`` one row per image (the consensus); both
hold a 0/1 column per label, the 22 local ones too. The test file spells "Other diseases" as
"Other disease" (:data:`cxrdet.data.classes.GLOBAL_SPELLINGS`): both read the same. An image's
label is its readers' majority: positive when more than half of them marked it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from cxrdet.data.classes import GLOBAL6, GLOBAL_SPELLINGS
from cxrdet.data.csv_format import separator_note


@dataclass
class GlobalLabels:
    """Per image (``labels.index``), each diagnosis 0/1 (``labels``, columns :data:`GLOBAL6`),
    from ``readers`` readers per image at most (1: the consensus file)."""

    path: str
    labels: pd.DataFrame
    readers: int


def reader_column(columns) -> str | None:
    """The reader column (``rad_id``, any case), or None."""
    return next((c for c in columns if c.lower() == "rad_id"), None)


def read_global_labels(path: str | Path) -> GlobalLabels:
    """Read ``image_labels_train.csv`` or ``image_labels_test.csv`` (see the module docstring).

    Raises:
        FileNotFoundError: the file does not exist.
        ValueError: a diagnosis column is missing, or a value is not 0 or 1 (the first such
            line named).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"image labels file not found: {path}")
    df = pd.read_csv(path, dtype={"image_id": str}).rename(columns=GLOBAL_SPELLINGS)
    missing = [c for c in ("image_id", *GLOBAL6) if c not in df.columns]
    if missing:
        raise ValueError(
            f"{path}: missing column(s) {missing}; expected image_id, a reader column (rad_id, "
            f"train only) and one 0/1 column per label, {list(GLOBAL6)} among them"
            + separator_note(df.columns)
        )
    values = df[list(GLOBAL6)].apply(pd.to_numeric, errors="coerce")
    bad = ~values.isin([0, 1]).all(axis=1)
    if bad.any():
        line = int(np.flatnonzero(bad.to_numpy())[0]) + 2  # 1-based, after the header
        raise ValueError(f"{path}, line {line}: a label that is not 0 or 1 ({bad.sum()} rows)")
    values["image_id"] = df["image_id"]
    reader = reader_column(df.columns)
    grouped = values.groupby("image_id", sort=True)
    majority = (grouped[list(GLOBAL6)].mean() > 0.5).astype(np.int64)
    readers = int(grouped.size().max()) if reader and len(values) else 1
    return GlobalLabels(str(path), majority, readers)
