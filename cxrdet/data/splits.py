"""Train/validation splits by image id: the same ids for the same seed, everywhere.

Modes: ``all_train`` (no validation), ``valid20`` (a seeded random share of the images) and
``kfold`` (multilabel-stratified k-fold over the 15 classes, iterative-stratification).
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from iterstrat.ml_stratifiers import MultilabelStratifiedKFold

SPLIT_MODES = ("all_train", "valid20", "kfold")


def split_ids(
    labels: pd.DataFrame,
    mode: str = "valid20",
    val_fraction: float = 0.2,
    seed: int = 111,
    fold: int = 0,
    n_folds: int = 5,
) -> tuple[list[str], list[str]]:
    """Split the images of ``labels`` into (train ids, validation ids), both sorted.

    Args:
        labels: rows with ``image_id`` and ``class_id`` (train.csv).
        mode: ``all_train``, ``valid20`` or ``kfold``.
        val_fraction: share of images held out in ``valid20`` mode.
        seed: shuffling seed; the split depends only on the labels and the seed.
        fold: which fold validates in ``kfold`` mode (0..n_folds-1).
        n_folds: number of folds in ``kfold`` mode.
    """
    ids = np.array(sorted(set(labels["image_id"].astype(str))))
    if mode == "all_train":
        return ids.tolist(), []
    if mode == "valid20":
        if not 0.0 < val_fraction < 1.0:
            raise ValueError(f"val_fraction must be within (0, 1), got {val_fraction}")
        order = np.random.default_rng(seed).permutation(len(ids))
        n_val = max(1, int(round(len(ids) * val_fraction))) if len(ids) > 1 else 0
        return sorted(ids[order[n_val:]].tolist()), sorted(ids[order[:n_val]].tolist())
    if mode == "kfold":
        if not 0 <= fold < n_folds or n_folds < 2:
            raise ValueError(f"need 0 <= fold < n_folds and n_folds >= 2, got {fold}/{n_folds}")
        if len(ids) < n_folds:
            raise ValueError(f"{len(ids)} images cannot make {n_folds} folds")
        onehot = pd.crosstab(labels["image_id"].astype(str), labels["class_id"]).clip(upper=1)
        width = int(labels["class_id"].max()) + 1  # every id up to "No finding", the last
        onehot = onehot.reindex(index=ids, columns=range(width), fill_value=0)
        folds = MultilabelStratifiedKFold(n_splits=n_folds, shuffle=True, random_state=seed)
        train, val = list(folds.split(ids, onehot.to_numpy()))[fold]
        return sorted(ids[train].tolist()), sorted(ids[val].tolist())
    raise ValueError(f"unknown split mode {mode!r}; expected one of {SPLIT_MODES}")
