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
    fold: int = 0
    n_folds: int = 5
    fusion: str = "none"
    val_fusion: str = "none"
    fusion_iou: float = 0.4
    use_class14: bool = False
    empty_images: Any = "drop"  # drop | keep | a fraction: checked by the data module
    batch_size: int = 2
    val_batch_size: int = 4
    num_workers: Any = "auto"  # auto | a number: checked by the data module


INPUTS = (  # (key, what it is, the cure when it is missing)
    ("labels_csv", "labels file", "set paths.raw_dir or data.labels_csv"),
    ("image_dir", "image folder", "run cxrdet prepare, or set paths.prepared_dir"),
    ("meta_csv", "meta CSV", "run cxrdet prepare, or set paths.prepared_dir"),
)


def missing_input(data) -> str | None:
    """The first of a data config's input paths that does not exist, said in one line with its
    key and cure; None when all are there. train.py asks before it loads torch, so a wrong path
    fails in a second, not after the imports."""
    for key, what, cure in INPUTS:
        path = data.get(key)
        if path and not Path(str(path)).exists():
            return f"{what} not found: {path} (data.{key}; {cure})"
    return None
