"""Torch datasets over prepared PNGs: detection samples for training, bare images for predicting.

Samples follow torchvision's detection convention: ``(image, {"boxes": float32 [N, 4] xyxy,
"labels": int64 [N], ...})`` with labels = class id + 1 (0 is torchvision's background). The
image is the PNG's grey pixels as read, uint8 ``[1, H, W]``: a twelfth of the bytes of a float
three-channel image to copy between processes and to the GPU; the models scale, normalise and
expand it on their device (:func:`unit_float`, :mod:`cxrdet.models.rcnn.transform`). Boxes are
kept in original DICOM pixels and scaled to the loaded image at load time, so any prepared size
(or a public PNG dataset) works.
"""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import torch
from torch.utils.data import DataLoader, Dataset

from cxrdet.data.boxes import Content, clip, letterbox_content, to_prepared, valid
from cxrdet.data.dicom import MAX_PIXELS, DicomError, read_dicom
from cxrdet.data.label_check import box_issues
from cxrdet.data.labels import (
    BOX_COLUMNS,
    NO_FINDING_BOX,
    ground_truth,
    is_no_finding,
    normal_image_ids,
)
from cxrdet.data.meta import content_of, read_meta
from cxrdet.data.prepare import find_dicoms, resize

log = logging.getLogger(__name__)


@dataclass
class Record:
    """One image: its id, original size and boxes (original pixels) with class ids."""

    image_id: str
    orig_hw: tuple[int, int]
    boxes: np.ndarray  # [N, 4] xyxy, original pixels
    classes: np.ndarray  # [N] class ids of its class set ("No finding" the last)
    content: Content | None = None  # letterbox rectangle in the PNG; None = squashed
    normal: bool = False  # no reader marked a finding (cxrdet.data.labels.normal_image_ids)
    truth: tuple[np.ndarray, np.ndarray] | None = None  # what the scorer scores this image
    # against: (boxes as labelled, class ids), cxrdet.data.labels.ground_truth
    diagnoses: np.ndarray | None = None  # the release's 6 diagnoses, 0/1 (data.global_labels)

    @property
    def has_finding(self) -> bool:
        """Some reader marked a finding on this image."""
        return not self.normal


def load_png(path: Path) -> np.ndarray:
    """Read an 8-bit grey PNG; a missing or unreadable file raises naming the file."""
    image = cv2.imread(str(path), cv2.IMREAD_GRAYSCALE)
    if image is None:
        raise FileNotFoundError(f"cannot read image {path}")
    return image


def to_tensor(image: np.ndarray) -> torch.Tensor:
    """uint8 [H, W] → uint8 [1, H, W], owning its memory (a CUDA loader pins each batch into
    page-locked memory of the same strides: an expanded view could not be written there)."""
    return torch.from_numpy(np.array(image, dtype=np.uint8, copy=True)).unsqueeze(0)


def unit_float(images: torch.Tensor) -> torch.Tensor:
    """Images as the loader ships them (uint8) as float32 in [0, 1] (``x / 255``, what the
    loader computed before it shipped uint8); float images are returned as they are."""
    return images if images.is_floating_point() else images.to(torch.float32).div(255.0)


def grey_pixels(image: torch.Tensor) -> np.ndarray:
    """The grey uint8 pixels [H, W] of a loader image (uint8, or float in [0, 1])."""
    if image.is_floating_point():
        return (image[0] * 255).round().clamp(0, 255).to(torch.uint8).cpu().numpy()
    return image[0].cpu().numpy()


def build_records(
    labels: pd.DataFrame,
    meta: pd.DataFrame,
    image_dir: str | Path,
    image_ids: list[str],
    use_class14: bool = False,
    split: str = "train",
    issues: list | None = None,
) -> list[Record]:
    """Group label rows into per-image records, skipping (with a logged count) what cannot load.

    Images without a meta row or PNG are skipped; boxes are clipped to the original image and
    dropped when nothing is left, each such box appended to ``issues``
    (:func:`cxrdet.data.label_check.box_issues`, ``split`` naming where it was). A normal image
    (no reader marked a finding) gets one ``0 0 1 1`` "No finding" box (prepared pixels, as the
    seed did) when ``use_class14`` is set, none otherwise.
    """
    image_dir = Path(image_dir)
    grouped = dict(tuple(labels.groupby("image_id", sort=False)))
    normal = normal_image_ids(labels)
    truth = ground_truth(labels, image_ids)
    records, no_image = [], []
    for image_id in image_ids:
        if image_id not in meta.index or not (image_dir / f"{image_id}.png").is_file():
            no_image.append(image_id)
            continue
        hw = (int(meta.at[image_id, "dim0"]), int(meta.at[image_id, "dim1"]))
        rows = grouped.get(image_id, labels.iloc[:0])
        finding = ~is_no_finding(rows).to_numpy()
        classes = rows.loc[finding, "class_id"].to_numpy(np.int64)
        raw = rows.loc[finding, BOX_COLUMNS].to_numpy(np.float64)
        boxes, keep, changed = box_issues(image_id, split, classes, raw, hw)
        if issues is not None:
            issues.extend(changed)
        boxes, classes = boxes[keep], classes[keep]
        if use_class14 and image_id in normal:  # its box is set when loaded (image-level):
            boxes = np.vstack([boxes, [[np.nan] * 4]])  # NaN marks it, its set's id with it
            classes = np.append(classes, rows["class_id"].iloc[0])
        content = content_of(meta, image_id)
        records.append(
            Record(
                image_id,
                hw,
                boxes.reshape(-1, 4),
                classes,
                content,
                image_id in normal,
                truth[image_id],
            )
        )
    if no_image:
        log.warning(
            "skipped %d image(s) listed in the labels with no PNG or meta row in %s (e.g. %s)",
            len(no_image),
            image_dir,
            ", ".join(no_image[:3]),
        )
    return records


def sample_seed(seed: int, epoch: int, index: int) -> int:
    """The augmentation seed of one sample in one epoch: the same wherever and whenever it loads."""
    return int(np.random.SeedSequence([seed, epoch, index]).generate_state(1)[0])


class DetectionDataset(Dataset):
    """Prepared PNGs with their boxes, optionally through an Albumentations pipeline.

    Items are indexed by ``i`` or by ``(epoch, i)`` (what
    :class:`cxrdet.data.datamodule.EpochSampler` yields; a bare ``i`` is epoch 0). With a
    ``seed``, the item is augmented with ``sample_seed(seed, epoch, i)``, so its augmentation
    does not depend on the worker that loads it, on the order of loading or on a resumed run;
    without one, Albumentations draws its own.
    """

    def __init__(
        self, image_dir: str | Path, records: list[Record], transform=None, seed: int | None = None
    ):
        self.image_dir = Path(image_dir)
        self.records = records
        self.transform = transform
        self.seed = seed

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, key: int | tuple[int, int]):
        epoch, i = key if isinstance(key, tuple) else (0, key)
        r = self.records[i]
        image = load_png(self.image_dir / f"{r.image_id}.png")
        # "No finding" is an image-level label: its 0 0 1 1 box is added after the augmentation,
        # which must neither move nor drop it.
        no_finding = np.isnan(r.boxes[:, 0])  # build_records' mark
        boxes = to_prepared(r.boxes[~no_finding], r.orig_hw, image.shape, r.content)
        boxes = clip(boxes, image.shape)
        keep = valid(boxes, min_size=0.5)
        boxes, classes = boxes[keep], r.classes[~no_finding][keep]
        if self.transform is not None:
            if self.seed is not None and hasattr(self.transform, "set_random_seed"):
                self.transform.set_random_seed(sample_seed(self.seed, epoch, i))
            out = self.transform(image=image, bboxes=boxes, labels=classes)
            image, boxes, classes = out["image"], out["bboxes"], out["labels"]
            # What torchvision's training would refuse (the batched model reads no flag back
            # from the device to check it): a box the transform left without width or height.
            boxes = np.asarray(boxes, np.float64).reshape(-1, 4)
            keep = (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])
            boxes, classes = boxes[keep], np.asarray(classes, np.int64).reshape(-1)[keep]
        if no_finding.any():
            boxes = np.vstack([np.asarray(boxes, np.float64).reshape(-1, 4), NO_FINDING_BOX])
            classes = np.append(np.asarray(classes, np.int64), r.classes[no_finding][0])
        target = {
            "boxes": torch.as_tensor(np.asarray(boxes, np.float32).reshape(-1, 4)),
            "labels": torch.as_tensor(np.asarray(classes, np.int64).reshape(-1)) + 1,
            "image_id": r.image_id,
            "normal": r.normal,  # no reader marked a finding (the "No finding" classifier's label)
            "diagnoses": r.diagnoses,  # the 6 diagnoses (model.targets=global6), or None
            # For validation scored as the submission (cxrdet.evaluation.coco.DetectionEvaluator):
            "orig_hw": r.orig_hw,
            "image_hw": tuple(image.shape[:2]),
            "content": r.content,
            "truth": r.truth,
        }
        return to_tensor(image), target


class ImageDataset(Dataset):
    """Prepared PNGs listed in a meta CSV (or only ``image_ids`` of them), for prediction.

    Samples are ``(image, {"image_id", "orig_hw", "content"})``.
    """

    def __init__(
        self, image_dir: str | Path, meta_csv: str | Path, image_ids: list[str] | None = None
    ):
        self.image_dir = Path(image_dir)
        self.meta = read_meta(meta_csv)
        if image_ids is not None:
            unknown = [i for i in image_ids if i not in self.meta.index]
            if unknown:
                raise ValueError(
                    f"{len(unknown)} image(s) to predict are not in {meta_csv} "
                    f"(e.g. {', '.join(unknown[:3])})"
                )
            self.meta = self.meta.loc[list(image_ids)]
        missing = [i for i in self.meta.index if not (self.image_dir / f"{i}.png").is_file()]
        if missing:
            raise FileNotFoundError(
                f"{len(missing)} image(s) in {meta_csv} have no PNG in {self.image_dir} "
                f"(e.g. {', '.join(missing[:3])}); run cxrdet prepare first"
            )
        self.ids = list(self.meta.index)

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, i: int):
        image_id = self.ids[i]
        image = load_png(self.image_dir / f"{image_id}.png")
        hw = (int(self.meta.at[image_id, "dim0"]), int(self.meta.at[image_id, "dim1"]))
        content = content_of(self.meta, image_id)
        info = {"image_id": image_id, "orig_hw": hw, "content": content, "error": None}
        return to_tensor(image), info


def collate(batch):
    """Detection batches are tuples: (images, targets), images of any size."""
    return tuple(zip(*batch))


def prediction_loader(
    dataset, batch_size: int, num_workers: int, device, batches: list | None = None
) -> DataLoader:
    """Batches of ``dataset`` in its order for prediction, pinned in memory for a CUDA device;
    or, given ``batches`` (lists of indices), those batches."""
    return DataLoader(
        dataset,
        **({"batch_size": batch_size} if batches is None else {"batch_sampler": batches}),
        num_workers=num_workers,
        collate_fn=collate,
        pin_memory=torch.device(device).type == "cuda",
    )


def batch_size(batch) -> int:
    """Images in a collated batch."""
    return len(batch[0])


class DicomDataset(Dataset):
    """DICOMs converted on the fly exactly as ``prepare`` does, for prediction.

    The files are those under ``dicom_dir``, or an ``index``'s (``files`` and ``ids``).
    Samples are ``(image, {"image_id", "orig_hw", "content", "error"})``; an unreadable file,
    or one whose header declares more than ``max_pixels``, gives a blank image and its error
    message instead of stopping the run.
    """

    def __init__(
        self,
        dicom_dir: str | Path,
        size: int,
        keep_ratio: bool = False,
        max_pixels: int = MAX_PIXELS,
        index=None,
    ):
        if index is not None:  # an archive's list (cxrdet.data.dicom_index)
            self.files, self.ids = list(index.files), list(index.ids)
        else:
            self.files = find_dicoms(Path(dicom_dir))
            self.ids = [f.stem for f in self.files]
        if not self.files:
            raise FileNotFoundError(f"no .dicom/.dcm files under {dicom_dir}")
        dup = sorted(k for k, n in Counter(self.ids).items() if n > 1)
        if dup:
            raise ValueError(f"{dicom_dir}: image ids occur twice in nested folders: {dup[:3]}")
        self.size, self.keep_ratio, self.max_pixels = size, keep_ratio, max_pixels

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int):
        info = {"image_id": self.ids[i], "error": None}
        try:
            image = read_dicom(self.files[i], max_pixels=self.max_pixels, key="dicom_max_pixels")
        except DicomError as e:
            blank = np.zeros((self.size, self.size), np.uint8)
            return to_tensor(blank), {
                **info,
                "orig_hw": blank.shape,
                "content": None,
                "error": str(e),
            }
        content = letterbox_content(image.shape, self.size) if self.keep_ratio else None
        info.update(orig_hw=image.shape, content=content)
        return to_tensor(resize(image, self.size, self.keep_ratio)), info
