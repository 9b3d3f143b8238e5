"""Validation scoring as Lightning callbacks, chosen by the ``evaluation`` config group.

The detector's validation step returns each image's id, original size, ground truth and
prediction (original pixels, class 14 as one line); these callbacks collect them over the
epoch, give every DDP rank all ranks' images, score them and log:

- :class:`CompetitionEvaluation` (``evaluation=competition``, the default): ``val/AP40``,
  ``val/mAP40`` and their per-class values, as ``cxrdet score`` scores the submission of the
  same images (:class:`cxrdet.evaluation.evaluator.DetectionEvaluator`);
- :class:`CocoEvaluation` (``evaluation=coco``, which adds it to the competition set):
  COCO's ``val/AP``, ``val/AP50``, ``val/AP75``, ``val/APs``, ``val/APm``, ``val/APl`` by
  pycocotools (:mod:`cxrdet.evaluation.coco_eval`).
- :class:`RadiologyEvaluation` (``evaluation=radiology``, which adds it to the competition
  set): ``val/CPM`` (FROC, :mod:`cxrdet.evaluation.froc`), ``val/mAP40_vs_readers`` and
  ``val/readers_mAP40`` (the readers' baseline, :mod:`cxrdet.evaluation.readers`).

Each callback names what it logs (``LOGS``), so ``train.py`` can refuse at start a checkpoint
monitor that no chosen evaluation logs.
"""

from __future__ import annotations

import logging

import pytorch_lightning as pl
import torch.distributed as dist

from cxrdet.data.classes import KAGGLE14, NO_FINDING_NAME, ClassSet
from cxrdet.evaluation.coco_eval import STATS, coco_stats
from cxrdet.evaluation.evaluator import DetectionEvaluator
from cxrdet.evaluation.froc import froc
from cxrdet.evaluation.lesions import lesion_truth
from cxrdet.evaluation.readers import leave_one_out, readers_baseline

log = logging.getLogger(__name__)


def all_ranks(table: dict) -> dict:
    """``table`` (image id → value) merged over every DDP rank (each validated its shard);
    an image a sampler repeated to even out the shards counts once."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return table
    shards = [None] * dist.get_world_size()
    dist.all_gather_object(shards, table)
    merged = {}
    for shard in shards:
        merged.update(shard)
    return merged


class ValidationScores(pl.Callback):
    """Collects the validation step's outputs each epoch; subclasses score and log them."""

    LOGS: tuple[str, ...] = ()  # the metrics logged (a name ending in "/": a family of them)
    KEYS = ("truths", "predictions", "orig_hws")  # what each image keeps of the step's outputs

    def __init__(self):
        self.outputs: dict = {}

    def on_validation_epoch_start(self, trainer, pl_module) -> None:
        self.outputs = {}

    def on_validation_batch_end(
        self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0
    ) -> None:
        if not isinstance(outputs, dict) or "predictions" not in outputs:
            return  # not a detector's validation step (the "No finding" classifier's)
        for k, image_id in enumerate(outputs["image_ids"]):
            self.outputs[image_id] = tuple(outputs[key][k] for key in self.KEYS)

    def on_validation_epoch_end(self, trainer, pl_module) -> None:
        self.outputs = all_ranks(self.outputs)
        if not self.outputs:
            return
        # The values are global and equal on every rank: no sync_dist needed.
        for name, value in self.scores(pl_module).items():
            pl_module.log(name, value, prog_bar=name in ("val/AP40", "val/mAP40"))

    def scores(self, pl_module) -> dict[str, float]:
        raise NotImplementedError


def class_set_of(pl_module) -> ClassSet:
    """The class set of the module being validated (``DetectorModule.classes``; Kaggle's for
    a module without one)."""
    return getattr(pl_module, "classes", KAGGLE14)


def submission_of(outputs: dict, pl_module, iou: float) -> DetectionEvaluator:
    """The validation images' ground truth and detections as the submission of those images
    would have them (``evaluator.gt``, ``evaluator.dets``)."""
    classes = class_set_of(pl_module)
    class14_head = NO_FINDING_NAME in getattr(pl_module, "class_names", ())
    evaluator = DetectionEvaluator(iou, class14_head, classes)
    for image_id, (truth, prediction, _) in outputs.items():
        evaluator.add(image_id, truth, prediction)
    return evaluator


class CompetitionEvaluation(ValidationScores):
    """``val/AP40``, ``val/mAP40`` and per class, as the submission of the images scores.

    Args:
        iou: the IoU threshold of both metrics (the competition's 0.4).
    """

    LOGS = ("val/AP40", "val/mAP40", "val/images", "val/AP40/", "val/mAP40/")

    def __init__(self, iou: float = 0.4):
        super().__init__()
        self.iou = iou
        self.evaluator = DetectionEvaluator(iou)  # kept after scoring, for the W&B overlays

    def scores(self, pl_module) -> dict[str, float]:
        self.evaluator = submission_of(self.outputs, pl_module, self.iou)
        result = self.evaluator.evaluate()
        names = self.evaluator.classes.names
        logged = {"val/images": float(result["images"])}
        for metric in ("AP40", "mAP40"):
            value = result[metric]
            logged[f"val/{metric}"] = nan_as_zero(value)
            for c, v in result[f"{metric}_per_class"].items():
                logged[f"val/{metric}/{names[c]}"] = v
        return logged


class CocoEvaluation(ValidationScores):
    """COCO's six AP figures of the findings, by pycocotools (or faster-coco-eval, the same
    numbers, with ``backend=faster_coco_eval``), in original pixels.

    Args:
        backend: ``pycocotools`` or ``faster_coco_eval``.
    """

    LOGS = tuple(f"val/{name}" for name in STATS)

    def __init__(self, backend: str = "pycocotools"):
        super().__init__()
        self.backend = backend

    def scores(self, pl_module) -> dict[str, float]:
        ids = sorted(self.outputs)
        gt = {i: self.outputs[i][0] for i in ids}
        dets = {i: self.outputs[i][1] for i in ids}
        sizes = {i: tuple(self.outputs[i][2]) for i in ids}
        stats = coco_stats(gt, dets, sizes, self.backend, class_set_of(pl_module))
        return {f"val/{name}": value for name, value in stats.items()}


class RadiologyEvaluation(ValidationScores):
    """``val/CPM`` (the mean share of lesions found at 1/8 … 8 false positives per image over
    all findings, the lesions being the readers' boxes fused with ``readers_fusion``:
    :mod:`cxrdet.evaluation.lesions`), ``val/mAP40_vs_readers`` (the model's mAP40 against
    each reader's leave-one-out truth) and ``val/readers_mAP40`` (the readers' own, the
    baseline), on the submission of the validation images. The readers' figures need the
    labels before fusion (the datamodule's ``val_labels``) and images read by two or more
    radiologists; without them only ``val/CPM`` is logged.

    Args:
        iou: the metrics' IoU threshold (the competition's 0.4).
        readers_fusion: how the other readers' boxes are fused into a reader's truth, and
            all readers' boxes into lesions.
        fusion_iou: the IoU at which they merge.
    """

    LOGS = ("val/CPM", "val/mAP40_vs_readers", "val/readers_mAP40")

    def __init__(self, iou: float = 0.4, readers_fusion: str = "wbf", fusion_iou: float = 0.4):
        super().__init__()
        self.iou, self.readers_fusion, self.fusion_iou = iou, readers_fusion, fusion_iou
        self._sets: tuple | None = None  # (image ids, leave_one_out's result), made once

    def reader_sets(self, pl_module, gt: dict) -> tuple[dict, dict]:
        """The readers' leave-one-out sets and the lesions (FROC's truth) of the validation
        images, made once: from the labels before fusion, else the validation truth."""
        ids = frozenset(gt)
        if self._sets is None or self._sets[0] != ids:
            datamodule = getattr(pl_module.trainer, "datamodule", None)
            labels = getattr(datamodule, "val_labels", None)
            sets, lesions = {}, gt
            if labels is not None:
                labels = labels[labels["image_id"].isin(ids)]
                sets = leave_one_out(labels, self.readers_fusion, self.fusion_iou)
                lesions, _ = lesion_truth(labels, list(gt), self.readers_fusion, self.fusion_iou)
            if not sets:
                log.warning(
                    "evaluation=radiology: no validation image has two readers' labels: "
                    "val/CPM only, no readers' baseline"
                )
            self._sets = (ids, sets, lesions)
        return self._sets[1], self._sets[2]

    def scores(self, pl_module) -> dict[str, float]:
        evaluator = submission_of(self.outputs, pl_module, self.iou)
        gt = dict(sorted(evaluator.gt.items()))
        sets, lesions = self.reader_sets(pl_module, gt)
        classes = evaluator.classes
        found = froc(lesions, evaluator.dets, self.iou, no_finding=classes.no_finding)
        logged = {"val/CPM": nan_as_zero(found["CPM"])}
        if sets:
            r = readers_baseline(sets, evaluator.dets, self.iou, classes)
            logged["val/mAP40_vs_readers"] = nan_as_zero(r["mAP40_vs_readers"])
            logged["val/readers_mAP40"] = nan_as_zero(r["readers_mAP40"])
        return logged


def nan_as_zero(value: float) -> float:
    """A figure a monitor can compare (nan: nothing to score yet)."""
    return value if value == value else 0.0


def unlogged_monitor(monitor: str | None, logs: set[str]) -> bool:
    """Whether ``monitor`` is none of ``logs`` (a name ending in "/" covers its family)."""
    if not monitor:
        return False
    families = tuple(name for name in logs if name.endswith("/"))
    return monitor not in logs and not (families and monitor.startswith(families))
