"""LightningDataModule over the prepared layout and a train.csv-format labels file."""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader, DistributedSampler
from torchdata.stateful_dataloader import StatefulDataLoader

from cxrdet.data.config import class14_problem, fold_problem
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
from cxrdet.data.meta import read_meta
from cxrdet.data.splits import split_ids

log = logging.getLogger(__name__)


MAX_AUTO_WORKERS = 16


def usable_cpus() -> int:
    """The CPUs this process may run on (its affinity: a SLURM job's allocation), else all."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        return os.cpu_count() or 1


def cpus_per_process(processes: int = 1) -> int:
    """The CPUs one training process may give its loader workers.

    Under SLURM with one task per training process (``srun``, ``SLURM_NTASKS`` > 1), each task
    has its own allocation (``--cpus-per-task``): all of it. Otherwise the CPUs this process
    may run on (its affinity: a container's or a one-task job's allocation) are shared
    between the ``processes`` that Lightning starts on this machine. Divided once, either way.
    """
    cpus = usable_cpus()
    per_task = os.environ.get("SLURM_CPUS_PER_TASK", "")
    if per_task.isdigit():
        cpus = min(cpus, int(per_task))
    if int(os.environ.get("SLURM_NTASKS", "1") or 1) > 1:
        return cpus
    return max(1, cpus // max(processes, 1))


def worker_count(num_workers, processes: int = 1, key: str = "data.num_workers") -> int:
    """``data.num_workers`` (or ``key``) as a number: ``auto`` is :func:`cpus_per_process`,
    capped at 16 (a number passes through)."""
    if str(num_workers) == "auto":
        return max(1, min(MAX_AUTO_WORKERS, cpus_per_process(processes)))
    try:
        workers = int(num_workers)
    except (TypeError, ValueError):
        workers = -1
    if workers < 0 or str(workers) != str(num_workers).strip():
        raise ValueError(f"{key}={num_workers!r}: expected auto or a number >= 0")
    return workers


def check_shared_memory(workers: int, batch_bytes: int, prefetch: int = 2, path="/dev/shm"):
    """Batches travel from the loader's workers through shared memory (``/dev/shm``); Docker
    gives a container 64 MB of it, and workers that cannot place a batch there die with a bus
    error that names nothing. When ``workers x prefetch`` batches of ``batch_bytes`` would take
    more than half of what is free, tensors go through files instead (torch's ``file_system``
    sharing), and one line says why and how to give the container more."""
    if workers <= 0:
        return
    try:
        stat = os.statvfs(path)
    except OSError:  # no /dev/shm (macOS): torch shares another way
        return
    free, need = stat.f_bavail * stat.f_frsize, workers * prefetch * batch_bytes
    if need <= free / 2:
        return
    torch.multiprocessing.set_sharing_strategy("file_system")
    log.warning(
        "%s has %d MB free; %d loader workers x %d batches in flight need about %d MB: batches "
        "now go through files (slower); give the container more shared memory (docker run "
        "--shm-size=8g, or a Kubernetes emptyDir medium: Memory) or lower data.num_workers",
        path,
        free // 2**20,
        workers,
        prefetch,
        need // 2**20,
    )


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


def images_per_epoch(normal: Sequence[bool], share: float) -> int:
    """Every image with a finding plus ``share`` of the normal ones (rounded)."""
    n_normal = int(np.sum(normal))
    return len(normal) - n_normal + round(share * n_normal)


class EpochSampler(DistributedSampler):
    """The training order, shuffled from (seed, epoch), this rank's share under DDP; it yields
    ``(epoch, index)`` so that the dataset seeds each sample's augmentation from both.

    ``normal`` marks the images without a finding; each epoch takes every other image and a
    ``normal_share`` of these, drawn anew from (seed, epoch) (Detectron2 drops them all by
    default: share 0). ``epoch_source`` (the trainer's epoch counter) is read when an epoch's
    iteration starts: Lightning creates a resumed run's first iterator before it calls
    ``set_epoch``. One process: ``num_replicas=1, rank=0``; Lightning keeps a DistributedSampler
    as it is under DDP.
    """

    def __init__(
        self,
        dataset,
        *args,
        epoch_source: Callable[[], int] | None = None,
        normal: Sequence[bool] | None = None,
        normal_share: float = 1.0,
        **kwargs,
    ):
        super().__init__(dataset, *args, **kwargs)
        self.epoch_source = epoch_source
        self.normal = np.zeros(len(dataset), bool) if normal is None else np.asarray(normal, bool)
        self.normal_share = normal_share
        pool = images_per_epoch(self.normal, normal_share)
        self.n_normal = pool - int((~self.normal).sum())
        if self.drop_last and pool % self.num_replicas:  # as DistributedSampler counts
            self.num_samples = math.ceil((pool - self.num_replicas) / self.num_replicas)
        else:
            self.num_samples = math.ceil(pool / self.num_replicas)
        self.total_size = self.num_samples * self.num_replicas

    def _indices(self) -> list[int]:
        if self.n_normal == int(self.normal.sum()):  # every image: DistributedSampler's order
            return list(super().__iter__())
        g = torch.Generator().manual_seed(self.seed + self.epoch)
        normal = np.flatnonzero(self.normal)
        chosen = normal[torch.randperm(len(normal), generator=g)[: self.n_normal].numpy()]
        pool = np.sort(np.concatenate([np.flatnonzero(~self.normal), chosen]))
        if self.shuffle:
            pool = pool[torch.randperm(len(pool), generator=g).numpy()]
        indices = pool.tolist()
        if len(indices) < self.total_size:  # pad by repeating, as DistributedSampler does
            indices += (indices * math.ceil(self.total_size / max(len(indices), 1)))[
                : self.total_size - len(indices)
            ]
        return indices[: self.total_size][self.rank : self.total_size : self.num_replicas]

    def __iter__(self):
        if self.epoch_source is not None:
            self.set_epoch(self.epoch_source())
        epoch = self.epoch
        return ((epoch, i) for i in self._indices())


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
            (:func:`worker_count`). Workers persist across epochs; batches go to pinned memory
            when training on CUDA.
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

    def train_dataloader(self) -> StatefulDataLoader:
        """Stateful (torchdata): a checkpoint records how far into the epoch it got, so a resumed
        run goes on with the next batch. The loader's own generator keeps the global RNG (ROI
        sampling) untouched. Batches are
        always full, like Detectron2's training sampler: a one-image batch would send small
        feature maps through PyTorch's CPU convolution fallback, whose weight gradient is not
        reproducible with several threads."""
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
        return StatefulDataLoader(
            self.train_set,
            batch_size=self.batch_size,
            sampler=sampler,
            collate_fn=collate,
            drop_last=True,
            generator=torch.Generator().manual_seed(self.seed),
            **self.loader_options(log_it=True),  # persistent: the epoch travels with each index
        )

    def val_dataloader(self):
        if self.val_set is None:
            return []
        return DataLoader(
            self.val_set,
            batch_size=self.val_batch_size,
            collate_fn=collate,
            generator=torch.Generator(),  # not the global one: validating leaves it untouched
            **self.loader_options(),
        )
