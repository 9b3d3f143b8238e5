"""Both metrics of predictions in the submission's form (what ``cxrdet score`` reports), and
the validation evaluator that collects a model's outputs batch by batch and scores them so."""

from __future__ import annotations

import numpy as np
import torch.distributed as dist

from cxrdet.data.classes import KAGGLE14, ClassSet
from cxrdet.evaluation.coco import coco_ap
from cxrdet.evaluation.competition import competition_map
from cxrdet.evaluation.nofinding import with_no_finding
from cxrdet.evaluation.submission import as_read_back, predictions_of, to_original_prediction


def findings_only(table: dict, classes: ClassSet = KAGGLE14) -> dict:
    """image id → its rows (boxes, [scores,] classes) without "No finding" (``classes``'
    id): what AP40 scores."""
    return {
        i: tuple(np.asarray(a)[np.asarray(v[-1]) != classes.no_finding] for a in v)
        for i, v in table.items()
    }


def score_predictions(
    gt: dict, dets: dict, iou: float = 0.4, curves: bool = False, classes: ClassSet = KAGGLE14
) -> dict:
    """Both metrics of predictions in the submission's form, as ``cxrdet score``
    reports them.

    Args:
        gt: image id → (boxes, class ids 0..14), a normal image with its ``0 0 1 1`` class-14
            box (:func:`cxrdet.data.labels.ground_truth`); every scored image is a key, and ties
            between images rank in this order.
        dets: image id → (boxes, scores, class ids 0..14), "No finding" lines included.
        iou: the IoU threshold of both metrics.
        curves: also return the competition metric's precision-recall curves.
        classes: the class set of the ids (kaggle14: 0..13 findings, 14 "No finding").

    Returns:
        ``{"mAP40", "mAP40_per_class", "AP40", "AP40_per_class", "images"}`` (+
        ``"mAP40_curves"``): the competition mAP over the classes with ground truth, and the
        COCO-style AP over the findings 0-13 (class-14 boxes and lines left out).
    """
    competition = competition_map(gt, dets, iou, curves=curves)
    coco = coco_ap(
        findings_only(gt, classes), findings_only(dets, classes), classes.num_findings, iou
    )
    result = {
        "mAP40": competition["mAP"],
        "mAP40_per_class": competition["per_class"],
        "AP40": coco["AP"],
        "AP40_per_class": coco["per_class"],
        "images": len(gt),
    }
    if curves:
        result["mAP40_curves"] = competition["curves"]
    return result


def original_predictions(
    targets: list[dict], outputs: list[dict], classes: ClassSet = KAGGLE14
) -> list:
    """A batch's model outputs as the submission has them before its No-finding line: boxes
    mapped to original pixels and clipped, class ids of ``classes``, "No finding" as one
    line."""
    return [
        to_original_prediction(p, t["orig_hw"], t["image_hw"], t["content"], classes.no_finding)
        for t, p in zip(targets, predictions_of(outputs))
    ]


class DetectionEvaluator:
    """Validation scored as the submission of the same images would be (reset / process /
    evaluate): ``val/mAP40`` and ``val/AP40`` are what ``cxrdet score`` reports for
    the submission ``predict.py`` writes of those images with the model's own score threshold.

    Each detection set goes the submission's way: boxes mapped to original pixels and clipped
    (:func:`cxrdet.evaluation.submission.to_original_prediction`), the "No finding" line appended
    (:func:`cxrdet.evaluation.nofinding.with_no_finding`), then written and read back as a
    PredictionString (4-decimal scores, 0.1-px boxes). The ground truth is the targets'
    ``truth``: the validation labels in original pixels (:func:`cxrdet.data.labels.ground_truth`).
    """

    def __init__(self, iou: float = 0.4, class14_head: bool = False, classes: ClassSet = KAGGLE14):
        self.iou = iou
        self.class14_head = class14_head  # the model scores "No finding" itself
        self.classes = classes
        self.reset()

    def reset(self) -> None:
        self.gt: dict = {}
        self.dets: dict = {}

    def process(self, targets: list[dict], outputs: list[dict]) -> None:
        """Add one batch: targets as :class:`cxrdet.data.dataset.DetectionDataset` makes them
        (``image_id``, ``truth``, ``orig_hw``, ``image_hw``, ``content``) and the model's
        outputs on those images (torchvision's labels = class id + 1)."""
        for t, prediction in zip(targets, original_predictions(targets, outputs, self.classes)):
            self.add(t["image_id"], t["truth"], prediction)

    def add(self, image_id: str, truth, prediction) -> None:
        """One image: its ground truth and its prediction in original pixels (class 14 as one
        line, :func:`cxrdet.evaluation.submission.to_original_prediction`)."""
        no_finding = self.classes.no_finding
        line = with_no_finding(*prediction, class14_head=self.class14_head, no_finding=no_finding)
        self.dets[image_id] = as_read_back(*line, self.classes)
        self.gt[image_id] = truth

    def gather(self) -> None:
        """Under DDP, give every rank all ranks' images (each validated only its shard).

        Images a sampler repeated to even out the shards are counted once (keyed by image id).
        """
        if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
            return
        shards = [None] * dist.get_world_size()
        dist.all_gather_object(shards, (self.gt, self.dets))
        for gt, dets in shards:
            self.gt.update(gt)
            self.dets.update(dets)

    def evaluate(self, curves: bool = False) -> dict:
        """:func:`score_predictions` of everything processed, images in id order (as the
        scorer orders them)."""
        gt = dict(sorted(self.gt.items()))
        return score_predictions(gt, self.dets, self.iou, curves, self.classes)
