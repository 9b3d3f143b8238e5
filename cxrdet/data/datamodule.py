"""LightningDataModule over the prepared layout and a train.csv-format labels file."""

from __future__ import annotations

import logging
from functools import partial
from pathlib import Path

import numpy as np
import pandas as pd
import pytorch_lightning as pl
import torch

from cxrdet.data.config import class14_problem, fold_problem
from cxrdet.data.cpus import check_shared_memory, usable_cpus, worker_count
from cxrdet.data.dataset import DetectionDataset, build_records, collate, load_png
from cxrdet.data.fusion import fuse_readers
from cxrdet.data.global_labels import read_global_labels
from cxrdet.data.label_check import (
    LABEL_ISSUES,
    MISMATCH_COLUMNS,
    LabelMismatch,
    describe,
    mismatch_message,
    mismatched_images,
    unusable_box_issues,
)
from cxrdet.data.labels import read_labels
from cxrdet.data.loaders import (
    EpochSampler,
    TrainLoader,
    WorkerSignalsLoader,
    images_per_epoch,
    shift_epoch_progress,
)
from cxrdet.data.meta import read_meta
from cxrdet.data.splits import split_ids

log = logging.getLogger(__name__)


def normal_share(empty_images) -> float:
    """``data.empty_images`` as the share of no-finding images each epoch trains on:
    ``drop`` → 0, ``keep`` → 1, a fraction in [0, 1] → itself."""
    named = {"drop": 0.0, "keep": 1.0}
    if str(empty_images) in named:
        return named[str(empty_images)]
    try:
        share = float(empty_images)
    except (TypeError, ValueError):
        share = -1.0
    if not 0.0 <= share <= 1.0:
        raise ValueError(
            f"data.empty_images={empty_images!r}: expected drop, keep or a fraction in [0, 1]"
        )
    return share


def add_diagnoses(records: list, path: str) -> None:
    """Give each record its diagnoses from the release's image labels file."""
    table = read_global_labels(path).labels
    missing = [r.image_id for r in records if r.image_id not in table.index]
    if missing:
        raise ValueError(
            f"{path}: no diagnoses for {len(missing)} of the {len(records)} images (e.g. "
            f"{missing[0]}): data.global_labels must label every image of data.labels_csv"
        )
    values = table.loc[[r.image_id for r in records]].to_numpy(np.float32)
    for r, diagnoses in zip(records, values):
        r.diagnoses = diagnoses


class CXRDataModule(pl.LightningDataModule):
    """Train/validation detection data from ``labels_csv`` + ``image_dir`` + ``meta_csv``.

    Args:
        labels_csv: Kaggle's train.csv or the VinDr-CXR release's annotations_train.csv
            (:func:`cxrdet.data.labels.read_labels`; boxes in original pixels).
        image_dir: folder of ``<image_id>.png`` (e.g. ``prepared/512/train``).
        meta_csv: ``image_id,dim0,dim1`` with the original sizes.
        image_size: side of the prepared PNGs the model is built for; a mismatch is logged.
        split: ``all_train``, ``valid20`` or ``kfold`` (see :func:`cxrdet.data.splits.split_ids`).
        val_fraction: held-out share for ``valid20``.
        split_seed: seed of the split.
        fold: the validation fold for ``kfold`` (None: 0); refused with another split.
        n_folds: folds for ``kfold``.
        fusion: fuse the readers' training boxes: ``none``, ``wbf`` or ``nms``.
        val_fusion: the same for the validation ground truth.
        fusion_iou: IoU threshold of the fusion.
        use_class14: train "No finding" as a class with a ``0 0 1 1`` box.
        classes: the class set, ``kaggle14`` or ``local22`` (None: the labels file's own;
            :mod:`cxrdet.data.classes`).
        global_labels: the release's ``image_labels_train.csv``: each image's 6 diagnoses (the
            readers' majority) in its target as ``diagnoses``, for ``model.targets=global6``;
            an image it lacks is refused, naming it. None: no diagnoses.
        label_issues: images whose boxes cannot fit the sizes ``meta_csv`` gives them: ``stop``
            (raise :class:`cxrdet.data.label_check.LabelMismatch`, listing them all) or
            ``drop`` (leave them out, with a count; ``mismatched`` lists them either way).
        empty_images: training images without a finding: ``drop`` (train on the others only,
            as Detectron2 and the report did), ``keep`` (train on all), or a fraction of them
            drawn anew each epoch beside every image with a finding. Validation scores all.
        batch_size: images per training batch.
        val_batch_size: images per validation batch.
        num_workers: DataLoader worker processes per training process, or ``auto``
            (:func:`cxrdet.data.cpus.worker_count`). Workers persist across epochs; batches go
            to pinned memory when training on CUDA.
        augment: training transform called as ``augment(image=, bboxes=, labels=)`` (an
            ``albumentations.Compose`` with pascal_voc bbox params), or None.
        seed: seeds the training order and each sample's augmentation (per epoch), so a run
            repeats and resumes exactly; train.py passes its ``seed``.
    """

    def __init__(
        self,
        labels_csv: str,
        image_dir: str,
        meta_csv: str,
        image_size: int = 512,
        split: str = "valid20",
        val_fraction: float = 0.2,
        split_seed: int = 111,
        fold: int | None = None,
        n_folds: int = 5,
        fusion: str = "none",
        val_fusion: str = "none",
        fusion_iou: float = 0.4,
        use_class14: bool = False,
        classes: str | None = None,
        global_labels: str | None = None,
        empty_images: str | float = "keep",
        label_issues: str = "stop",
        batch_size: int = 2,
        val_batch_size: int = 4,
        num_workers: int | str = "auto",
        augment=None,
        seed: int = 0,
    ):
        super().__init__()
        # In every checkpoint (datamodule_hyper_parameters): predict.py split.mode=from_checkpoint
        # takes the validation images the run validated on from there.
        self.save_hyperparameters(ignore=["augment"])
        self.labels_csv, self.image_dir, self.meta_csv = labels_csv, image_dir, meta_csv
        self.image_size = image_size
        self.split, self.val_fraction, self.split_seed = split, val_fraction, split_seed
        self.fold, self.n_folds = fold, n_folds
        self.fusion, self.val_fusion, self.fusion_iou = fusion, val_fusion, fusion_iou
        self.use_class14 = use_class14
        self.classes = classes  # the class set's name (None: the labels file's own)
        self.global_labels = global_labels  # image_labels_train.csv: each record's diagnoses
        self.empty_images = empty_images
        if label_issues not in LABEL_ISSUES:
            raise ValueError(
                f"data.label_issues={label_issues!r}: expected one of {', '.join(LABEL_ISSUES)}"
            )
        self.label_issues_mode = label_issues
        self.normal_share = 1.0  # set by setup() from empty_images
        self.batch_size, self.val_batch_size = batch_size, val_batch_size
        worker_count(num_workers)  # a bad value is refused here, before any data loads
        self.num_workers = num_workers
        self.augment = augment
        self.seed = seed
        self.train_set: DetectionDataset | None = None
        self.normal: list[bool] = []  # per training image: no finding
        self.val_set: DetectionDataset | None = None
        self.val_labels = None  # the validation images' label rows before fusion (setup)
        self.label_issues: list[dict] = []  # boxes clipped or dropped (label_check.box_issues)
        self.mismatched = pd.DataFrame(columns=MISMATCH_COLUMNS)  # images refused or left out

    def setup(self, stage: str | None = None) -> None:
        if self.train_set is not None:
            return
        if not Path(self.image_dir).is_dir():
            raise FileNotFoundError(
                f"image folder not found: {self.image_dir} (run cxrdet prepare)"
            )
        settings = {"fold": self.fold, "split": self.split, "use_class14": self.use_class14}
        problem = fold_problem(settings) or class14_problem(
            {**settings, "empty_images": self.empty_images}
        )
        if problem:
            raise ValueError(problem)
        labels, report = read_labels(self.labels_csv, self.classes)
        meta = read_meta(self.meta_csv)
        self.mismatched = mismatched_images(labels, meta)
        if len(self.mismatched):  # labels and sizes that cannot belong together
            message = mismatch_message(self.mismatched, self.meta_csv)
            if self.label_issues_mode == "stop":
                raise LabelMismatch(message, self.mismatched)
            labels = labels[~labels["image_id"].isin(set(self.mismatched["image_id"]))]
            log.warning("data.label_issues=drop: left out %s", message)
        fold = 0 if self.fold is None else self.fold
        train_ids, val_ids = split_ids(
            labels, self.split, self.val_fraction, self.split_seed, fold, self.n_folds
        )
        in_val = labels["image_id"].isin(set(val_ids))
        self.val_labels = labels[in_val]  # every reader's rows, for the readers' baseline
        train_labels = fuse_readers(labels[~in_val], self.fusion, self.fusion_iou)
        val_labels = fuse_readers(labels[in_val], self.val_fusion, self.fusion_iou)
        self.label_issues = unusable_box_issues(report, set(val_ids))
        train = build_records(
            train_labels,
            meta,
            self.image_dir,
            train_ids,
            self.use_class14,
            "train",
            self.label_issues,
        )
        val = build_records(
            val_labels,
            meta,
            self.image_dir,
            val_ids,
            self.use_class14,
            "validation",
            self.label_issues,
        )
        if self.label_issues:
            log.warning("labels changed to fit their images: %s", describe(self.label_issues))
        if self.global_labels:
            add_diagnoses([*train, *val], self.global_labels)
        if not train:
            raise ValueError(
                f"no usable training images: {self.labels_csv} and {self.image_dir} share no ids"
            )
        self.normal_share = normal_share(self.empty_images)
        self.normal = [not r.has_finding for r in train]
        n_normal = sum(self.normal)
        per_epoch = images_per_epoch(self.normal, self.normal_share)
        if per_epoch < self.batch_size:
            raise ValueError(
                f"{per_epoch} training image(s) per epoch in {self.image_dir} "
                f"({len(train) - n_normal} with a finding, {n_normal} without, "
                f"data.empty_images keeps {self.normal_share:g} of those), fewer than one batch "
                f"(data.batch_size={self.batch_size})"
            )
        self.train_set = DetectionDataset(self.image_dir, train, self.augment, seed=self.seed)
        self.val_set = DetectionDataset(self.image_dir, val) if val else None
        log.info(
            "data: %d train images (%d with a finding, %d without; an epoch trains on %d) / "
            "%d validation images",
            len(train),
            len(train) - n_normal,
            n_normal,
            per_epoch,
            len(val),
        )
        shape = load_png(Path(self.image_dir) / f"{train[0].image_id}.png").shape
        if max(shape) != self.image_size:
            log.warning(
                "%s holds %dx%d images but data.image_size=%d: the model rescales them to %d",
                self.image_dir,
                shape[0],
                shape[1],
                self.image_size,
                self.image_size,
            )

    def loader_options(self, log_it: bool = False) -> dict:
        """Worker processes (``auto`` resolved for this machine and the trainer's processes on
        it), kept across epochs, and pinned memory when the trainer runs on CUDA."""
        trainer = getattr(self, "trainer", None)
        workers = worker_count(self.num_workers, trainer.num_devices if trainer else 1)
        cuda = trainer is not None and trainer.strategy.root_device.type == "cuda"
        if log_it:  # the training loader's: check shared memory for it and validation's once
            images = self.batch_size + self.val_batch_size  # uint8, one channel, + targets
            check_shared_memory(workers, int(1.2 * images * self.image_size**2))
            log.info(
                "data loader: %d worker process(es) (data.num_workers=%s; %d CPUs usable)%s",
                workers,
                self.num_workers,
                usable_cpus(),
                ", pinned memory" if cuda else "",
            )
        return {"num_workers": workers, "persistent_workers": workers > 0, "pin_memory": cuda}

    def train_dataloader(self) -> TrainLoader:
        """The training loader (:class:`cxrdet.data.loaders.TrainLoader`): full batches, like
        Detectron2's training sampler (a one-image batch would send small feature maps through
        PyTorch's CPU convolution fallback, whose weight gradient is not reproducible with
        several threads); a checkpoint records how far into the epoch's order it got, so a
        resumed run goes on with the next sample, on any number of workers or processes. The
        loader's own generator keeps the global RNG (ROI sampling) untouched."""
        trainer = getattr(self, "trainer", None)
        sampler = EpochSampler(
            self.train_set,
            num_replicas=trainer.world_size if trainer else 1,
            rank=trainer.global_rank if trainer else 0,
            shuffle=True,
            seed=self.seed,
            epoch_source=(lambda: trainer.fit_loop.epoch_progress.current.processed)
            if trainer
            else None,
            normal=self.normal,
            normal_share=self.normal_share,
        )
        return TrainLoader(
            self.train_set,
            batch_size=self.batch_size,
            sampler=sampler,
            on_resume=partial(shift_epoch_progress, trainer) if trainer else None,
            collate_fn=collate,
            generator=torch.Generator().manual_seed(self.seed),
            rank=trainer.global_rank if trainer else 0,
            **self.loader_options(log_it=True),  # persistent: the epoch travels with each index
        )

    def val_dataloader(self):
        if self.val_set is None:
            return []
        trainer = getattr(self, "trainer", None)
        return WorkerSignalsLoader(
            self.val_set,
            batch_size=self.val_batch_size,
            collate_fn=collate,
            generator=torch.Generator(),  # not the global one: validating leaves it untouched
            rank=trainer.global_rank if trainer else 0,
            **self.loader_options(),
        )
