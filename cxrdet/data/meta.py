"""The prepared meta CSV: ``image_id,dim0,dim1`` (original rows, columns), plus the letterbox
content rectangle ``content_x0,content_y0,content_w,content_h`` when ``prepare --keep-ratio``
wrote it."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from cxrdet.data.boxes import CONTENT_COLUMNS, Content
from cxrdet.data.csv_format import separator_note


def content_of(meta: pd.DataFrame, image_id: str) -> Content | None:
    """The letterbox rectangle recorded for ``image_id``, or None for a squashed image."""
    if not set(CONTENT_COLUMNS) <= set(meta.columns):
        return None
    rect = meta.loc[image_id, CONTENT_COLUMNS].to_numpy(np.float64)
    return None if np.isnan(rect).any() else tuple(rect.tolist())


def read_meta(path: str | Path) -> pd.DataFrame:
    """Read ``image_id,dim0,dim1`` into a frame indexed by image id, with a clear error."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"meta CSV not found: {path} (run cxrdet prepare)")
    meta = pd.read_csv(path, dtype={"image_id": str})
    missing = {"image_id", "dim0", "dim1"} - set(meta.columns)
    if missing:
        raise ValueError(
            f"{path}: missing column(s) {sorted(missing)}; need image_id,dim0,dim1"
            + separator_note(meta.columns)
        )
    return meta.drop_duplicates("image_id").set_index("image_id")
