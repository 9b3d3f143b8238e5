"""The typed settings of ``predict.py`` (its YAML, ``conf/predict.yaml``, extends this schema).

A mistyped key or a value of the wrong type in an override is refused when Hydra composes the
config, naming the key, before any model loads; :func:`cxrdet.inference.predictor.predict`
takes the composed settings as one object.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import MISSING


@dataclass
class SplitConfig:
    """Predict only the validation images of a training split (for local scoring)."""

    mode: str | None = None  # null (every image) | valid20 | kfold | from_checkpoint
    labels_csv: str = ""  # the labels the split is made from, as in training
    val_fraction: float = 0.2
    seed: int = 111
    fold: int = 0
    n_folds: int = 5


@dataclass
class NofindingConfig:
    """The winners' "No finding" filter from an image-level classifier's probabilities."""

    probs: str | None = None  # image_id,p_abnormal CSV
    ckpt_path: Any = None  # or classifier checkpoint(s), averaged, run in the prediction
    tta: str = "none"  # none | hflip for the classifiers
    low: float = 0.08
    high: float = 0.95


@dataclass
class ResultsConfig:
    """DICOM results for a PACS (:mod:`cxrdet.inference.dicom_results`); DICOM input only."""

    dicom: list[str] = field(default_factory=list)  # [sr, gsps]
    threshold: float = 0.3  # detections scoring at least this go into them
    folder: str | None = None  # null: <the submission's folder>/dicom
    stow: bool = False  # with source=dicomweb: store them back (STOW-RS)


@dataclass
class DicomwebConfig:
    """Where ``source=dicomweb`` reads its studies (:mod:`cxrdet.inference.dicomweb`)."""

    url: str | None = None  # the server's DICOMweb root, e.g. http://pacs:8042/dicom-web
    study: Any = None  # a StudyInstanceUID or a list; null: the query below
    modality: list[str] = field(default_factory=lambda: ["CR", "DX"])
    date: str | None = None  # a QIDO StudyDate: 20240101 or a range 20240101-20241231
    limit: int = 1000  # studies a query may return
    token_file: str | None = None  # a bearer token's file (else the environment's, see docs)
    timeout_s: float = 60.0
    retries: int = 3
    download_dir: str | None = None  # null: <the submission's folder>/dicomweb


@dataclass
class ProcessesConfig:
    """How many processes predict (:mod:`cxrdet.inference.processes`), named as training's."""

    devices: Any = 1  # processes per node (one per GPU)
    num_nodes: int = 1


@dataclass
class PredictConfig:
    ckpt_path: Any = MISSING  # one checkpoint or a list (a WBF ensemble)
    model_file: str | None = None  # or an exported .onnx / TorchScript file (cxrdet export)
    output: str = "submission.csv"
    ensemble_weights: list[float] | None = None
    prepared_size: int | None = None  # null: the size the (first) model trained at
    image_dir: str | None = None
    meta_csv: str | None = None
    dicom_dir: str | None = None
    manifest: str | None = None  # or a CSV/Parquet of DICOM paths (cxrdet.data.dicom_index)
    dicom_index: str | None = None  # the index's cache; null: <the submission's folder>/...
    source: str = "files"  # files (image_dir or dicom_dir) | dicomweb
    dicomweb: DicomwebConfig = field(default_factory=DicomwebConfig)
    results: ResultsConfig = field(default_factory=ResultsConfig)
    dicom_max_pixels: int = 50_000_000  # cxrdet.data.dicom.MAX_PIXELS (this module stays light)
    split: SplitConfig = field(default_factory=SplitConfig)
    keep_ratio: bool = False
    score_thresh: float | None = None
    max_detections: int | None = None
    tta: str = "none"
    fusion_iou: float = 0.55
    fusion_skip: float = 0.0
    nofinding_line: bool = True
    nofinding: NofindingConfig = field(default_factory=NofindingConfig)
    viz: int = 0
    batch_size: int = 4
    num_workers: Any = "auto"  # auto: the CPUs this process may use, at most 16 | a number
    device: str = "auto"
    trainer: ProcessesConfig = field(default_factory=ProcessesConfig)
    precision: str = "auto"
    progress: bool = True
    trust_checkpoint: bool = False  # load checkpoints that need full unpickling (running code)
    paths: Any = None  # conf/paths, for the interpolations


def missing_model(ckpt_path, model_file) -> str | None:
    """The first checkpoint (``ckpt_path``: a path or a list) or exported file that does not
    exist, said in one line; None when all are there."""
    paths = [] if ckpt_path is None else ckpt_path
    paths = [paths] if isinstance(paths, str | Path) or not isinstance(paths, Sequence) else paths
    for key, path in [*(("ckpt_path", p) for p in paths), ("model_file", model_file)]:
        if path and not Path(str(path)).is_file():
            return f"{key}: {path} not found"
    return None


def checkpoint_data(ckpt_path, trust: bool = False) -> dict | None:
    """The data settings train.py records in every checkpoint (labels, images, split), or
    None for a checkpoint that holds none."""
    from cxrdet.models.safe_load import safe_load

    return safe_load(ckpt_path, trust, mmap=True).get("datamodule_hyper_parameters") or None


def checkpoint_split(ckpt_path, trust: bool = False) -> SplitConfig | None:
    """The training split a checkpoint's run validated on, or None for a checkpoint that
    holds none."""
    return split_of(checkpoint_data(ckpt_path, trust))


def split_of(data: dict | None) -> SplitConfig | None:
    """:func:`checkpoint_data`'s split as a :class:`SplitConfig` (None without one)."""
    if not data or data.get("split") not in ("valid20", "kfold", "all_train"):
        return None
    return SplitConfig(
        mode=data["split"],
        labels_csv=str(data.get("labels_csv", "")),
        val_fraction=float(data.get("val_fraction", 0.2)),
        seed=int(data.get("split_seed", 111)),
        fold=int(data.get("fold") or 0),
        n_folds=int(data.get("n_folds", 5)),
    )
