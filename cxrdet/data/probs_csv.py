"""``nofinding_probs.csv``: one ``image_id,p_abnormal`` row per image, the classifiers'
P(abnormal) that predict.py writes beside a submission and that ``nofinding.probs=``,
``cxrdet score --probs`` and ``cxrdet cv`` read back."""

from __future__ import annotations

from pathlib import Path

import pandas as pd


def read_probs(path: str, image_ids: list[str] | None) -> dict[str, float]:
    """``image_id,p_abnormal`` CSV → dict, checked to cover every one of ``image_ids`` (all
    its rows when None) with p in [0, 1]."""
    df = pd.read_csv(path, dtype={"image_id": str})
    if not {"image_id", "p_abnormal"} <= set(df.columns):
        raise ValueError(f"{path}: expected columns image_id,p_abnormal")
    probs = dict(zip(df["image_id"], df["p_abnormal"].astype(float)))
    image_ids = list(probs) if image_ids is None else image_ids
    missing = [i for i in image_ids if i not in probs]
    if missing:
        raise ValueError(f"{path}: no p_abnormal for {len(missing)} image(s), e.g. {missing[0]}")
    bad = [i for i in image_ids if not 0.0 <= probs[i] <= 1.0]
    if bad:
        raise ValueError(f"{path}: p_abnormal outside [0, 1] for {bad[0]}")
    return probs


def write_probs(probs: dict[str, float], path: str | Path) -> Path:
    """Write ``image_id,p_abnormal`` (6 decimals)."""
    path = Path(path)
    frame = pd.DataFrame({"image_id": list(probs), "p_abnormal": list(probs.values())})
    frame.to_csv(path, index=False, float_format="%.6f")
    return path
