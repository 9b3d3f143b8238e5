"""Train/validation splits by image id: the same ids for the same seed, everywhere."""

from __future__ import annotations

import numpy as np

SPLIT_MODES = ("all_train", "valid20")


def split_ids(
    image_ids, mode: str = "valid20", val_fraction: float = 0.2, seed: int = 111
) -> tuple[list[str], list[str]]:
    """Split unique image ids into (train, validation).

    Args:
        image_ids: ids, duplicates allowed (e.g. one per CSV row).
        mode: ``all_train`` (everything trains, no validation) or ``valid20`` (a seeded random
            ``val_fraction`` of the images validates).
        val_fraction: share of images held out in ``valid20`` mode.
        seed: shuffling seed; the split depends only on the set of ids and the seed.
    """
    ids = sorted(set(map(str, image_ids)))
    if mode == "all_train":
        return ids, []
    if mode != "valid20":
        raise ValueError(f"unknown split mode {mode!r}; expected one of {SPLIT_MODES}")
    if not 0.0 < val_fraction < 1.0:
        raise ValueError(f"val_fraction must be within (0, 1), got {val_fraction}")
    order = np.random.default_rng(seed).permutation(len(ids))
    n_val = max(1, int(round(len(ids) * val_fraction))) if len(ids) > 1 else 0
    val = sorted(ids[i] for i in order[:n_val])
    train = sorted(ids[i] for i in order[n_val:])
    return train, val
