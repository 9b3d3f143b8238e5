"""The typed ``data`` config group: the keys and types of
:class:`cxrdet.data.datamodule.CXRDataModule`.

``conf/data/*.yaml`` extend this schema (registered by :func:`cxrdet.config.register_configs`),
so ``data.batch_sise=4`` or ``data.batch_size=four`` is refused when the config is composed,
naming the key, before anything loads. Values and their comments live in ``conf/data/512.yaml``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from omegaconf import MISSING


@dataclass
class DataConfig:
    _target_: str = "cxrdet.data.datamodule.CXRDataModule"
    labels_csv: str = MISSING
    image_dir: str = MISSING
    meta_csv: str = MISSING
    image_size: int = 512
    split: str = "valid20"
    val_fraction: float = 0.2
    split_seed: int = 111
    fold: int | None = None  # kfold only (null: fold 0); refused with another split
    n_folds: int = 5
    fusion: str = "none"
    val_fusion: str = "none"
    fusion_iou: float = 0.4
    use_class14: bool = False
    classes: str | None = None  # kaggle14 | local22 | null: the labels file's own
    global_labels: str | None = None  # the release's image_labels_train.csv (model.targets=global6)
    empty_images: Any = "drop"  # drop | keep | a fraction: checked by the data module
    label_issues: str = "stop"  # stop | drop: images whose boxes cannot fit their meta sizes
    batch_size: int = 2
    val_batch_size: int = 4
    num_workers: Any = "auto"  # auto | a number: checked by the data module


INPUTS = (  # (key, what it is, the cure when it is missing)
    ("labels_csv", "labels file", "set paths.raw_dir or data.labels_csv"),
    ("image_dir", "image folder", "run cxrdet prepare, or set paths.prepared_dir"),
    ("meta_csv", "meta CSV", "run cxrdet prepare, or set paths.prepared_dir"),
)


def fold_index(data) -> int:
    """The validation fold of a kfold data config (``data.fold``; null means fold 0)."""
    return 0 if data.get("fold") is None else int(data.fold)


def fold_problem(data) -> str | None:
    """A fold given for a split that has none (``data.fold=3`` with ``data.split=valid20``
    would train the same split five times over), said in one line; else None."""
    if data.get("fold") is not None and data.get("split") != "kfold":
        return (
            f"data.fold={data.fold} needs data.split=kfold (data.split={data.get('split')} has "
            "no folds, so every fold would train on the same split): add data.split=kfold"
        )
    return None


def class14_problem(data) -> str | None:
    """``data.use_class14=true`` with no normal image to train it on (``empty_images: drop``,
    or a share of 0): the class-14 head would learn from no positive example."""
    empty = str(data.get("empty_images", "drop"))
    if data.get("use_class14") and (empty == "drop" or _is_zero(empty)):
        return (
            f"data.use_class14=true trains 'No finding' on the normal images, and "
            f"data.empty_images={empty} trains on none of them: set data.empty_images=keep "
            "(or a share of them, e.g. 0.25)"
        )
    return None


def _is_zero(text: str) -> bool:
    try:
        return float(text) == 0.0
    except ValueError:
        return False


def input_problem(data) -> str | None:
    """What stops a data config before anything loads, said in one line with its key and cure:
    a fold without kfold (:func:`fold_problem`), class 14 without normal images
    (:func:`class14_problem`), or the first input path that does not exist; None when all is
    well. train.py asks before it loads torch, so it fails in a second."""
    problem = fold_problem(data) or class14_problem(data)
    if problem:
        return problem
    for key, what, cure in INPUTS:
        path = data.get(key)
        if path and not Path(str(path)).exists():
            return f"{what} not found: {path} (data.{key}; {cure})"
    return None
