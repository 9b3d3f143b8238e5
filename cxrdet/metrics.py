"""AP40: COCO-style 101-point AP at IoU 0.4 only, 100 detections per image and class (the
seed's metric), and the validation evaluator that reports it next to the competition's mAP40,
both as the scorer computes them for a submission.

The COCO rules are written out here, vectorised with numpy, because faster-coco-eval needs
1.45 s on 3,000 images x 100 detections (building 310k annotation dicts plus its Python
preparation) against a 1 s budget; this takes about 0.2 s. ``tests/test_metrics.py`` checks it
against faster-coco-eval on random data, ties and crowded images included. The rules, as in
pycocotools' ``evaluateImg``/``accumulate`` with one area range ("all") and no crowd boxes:

- per image and class, detections in descending score (stable), the first ``max_dets`` kept;
- each in turn takes the not yet matched ground-truth box with the highest IoU >= the threshold
  (the later box on equal IoU);
- per class, detections of all images in descending score (stable, images in order); precision
  made non-increasing; read at the 101 recall points 0, 0.01, ..., 1 (0 past the last recall);
  AP = their mean.

Boxes may be in any pixel space as long as ground truth and detections share it: IoU does not
change when both are scaled by the same factors.
"""

from __future__ import annotations

import logging
import math

import numpy as np
import torch.distributed as dist

from cxrdet.competition import (
    competition_map,
    flatten,
    pair_ious,
    same_group_pairs,
    with_no_finding,
)
from cxrdet.labels import NO_FINDING, NUM_FINDINGS
from cxrdet.postprocess import to_original_prediction
from cxrdet.submission import as_read_back

log = logging.getLogger(__name__)

RECALL_POINTS = np.linspace(0.0, 1.0, 101)


def _rank_in_group(key: np.ndarray, score: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Order by (key, descending score, input order) and each item's rank within its key."""
    order = np.lexsort((np.arange(len(key)), -score, key))
    k = key[order]
    starts = np.flatnonzero(np.r_[True, k[1:] != k[:-1]]) if len(k) else np.zeros(0, int)
    rank = np.arange(len(k)) - np.repeat(starts, np.diff(np.r_[starts, len(k)]))
    return order, rank


def _greedy_match(rank, pair_det, pair_gt, pair_iou, n_dets: int, n_gt: int) -> np.ndarray:
    """COCO matching: the ground-truth index each detection takes (-1: none).

    All groups (image, class) advance together, one detection rank per step; within a step every
    detection belongs to a different group, so their choices cannot collide.
    """
    d_gt = np.full(n_dets, -1)
    if not len(pair_det):
        return d_gt
    taken = np.zeros(n_gt, bool)
    p_rank = rank[pair_det]
    # Within a detection: highest IoU first, the later ground truth on ties.
    order = np.lexsort((-pair_gt, -pair_iou, pair_det, p_rank))
    pair_det, pair_gt, p_rank = pair_det[order], pair_gt[order], p_rank[order]
    bounds = np.searchsorted(p_rank, np.arange(p_rank[-1] + 2))
    for r in range(p_rank[-1] + 1):
        det, gt = pair_det[bounds[r] : bounds[r + 1]], pair_gt[bounds[r] : bounds[r + 1]]
        free = ~taken[gt]
        det, gt = det[free], gt[free]
        first = np.r_[True, det[1:] != det[:-1]] if len(det) else np.zeros(0, bool)
        taken[gt[first]] = True
        d_gt[det[first]] = gt[first]
    return d_gt


def _interpolated_ap(tp: np.ndarray, n_gt: int) -> float:
    """Mean precision at the 101 recall points of a TP/FP sequence in descending score."""
    if not len(tp):
        return 0.0
    tps, fps = np.cumsum(tp), np.cumsum(~tp)  # tps + fps >= 1: no epsilon needed
    recall = tps / n_gt
    precision = tps / (tps + fps)
    precision = np.maximum.accumulate(precision[::-1])[::-1]
    at = np.searchsorted(recall, RECALL_POINTS, side="left")
    q = np.where(at < len(tp), precision[np.minimum(at, len(tp) - 1)], 0.0)
    return float(q.mean())


def coco_ap(
    gt: dict[str, tuple[np.ndarray, np.ndarray]],
    dets: dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]],
    num_classes: int,
    iou: float = 0.4,
    max_dets: int = 100,
) -> dict:
    """COCO-style AP at a single IoU threshold (the rules are in the module docstring).

    Args:
        gt: image id → (boxes [N, 4] xyxy, class ids [N]); every evaluated image must be a key,
            including images without boxes.
        dets: image id → (boxes [M, 4] xyxy, scores [M], class ids [M]); missing ids = nothing,
            ids not in ``gt`` and classes outside 0..num_classes-1 are ignored.
        num_classes: class ids run 0..num_classes-1.
        iou: the IoU threshold.
        max_dets: detections kept per image and class (highest scores).

    Returns:
        ``{"AP": mean over classes with ground truth (nan if none), "per_class": {id: AP}}``;
        classes without ground truth are left out of both.
    """
    index = {image_id: i for i, image_id in enumerate(gt)}
    g_img, g_cls, g_box = flatten(gt, False, index)
    d_img, d_cls, d_score, d_box = flatten(dets, True, index)
    g_in = (g_cls >= 0) & (g_cls < num_classes)
    g_img, g_cls, g_box = g_img[g_in], g_cls[g_in], g_box[g_in]
    with_gt = sorted(set(g_cls.tolist()))
    if not with_gt:
        log.warning("no ground-truth boxes: AP is undefined")
        return {"AP": math.nan, "per_class": {}}

    d_in = (d_cls >= 0) & (d_cls < num_classes)
    order, rank = _rank_in_group((d_img * num_classes + d_cls)[d_in], d_score[d_in])
    keep = order[rank < max_dets]
    rank = rank[rank < max_dets]
    d_img, d_cls, d_score, d_box = (x[d_in][keep] for x in (d_img, d_cls, d_score, d_box))

    pair_det, pair_gt = same_group_pairs(d_img * num_classes + d_cls, g_img * num_classes + g_cls)
    pair_iou = pair_ious(d_box[pair_det], g_box[pair_gt])
    hit = pair_iou >= min(iou, 1 - 1e-10)
    d_gt = _greedy_match(rank, pair_det[hit], pair_gt[hit], pair_iou[hit], len(d_cls), len(g_cls))

    # Per class: all images' detections by descending score, ties in image then rank order.
    order = np.lexsort((rank, d_img, -d_score, d_cls))
    tp = d_gt[order] >= 0
    bounds = np.searchsorted(d_cls[order], np.arange(num_classes + 1))
    n_gt = np.bincount(g_cls, minlength=num_classes)
    per_class = {c: _interpolated_ap(tp[bounds[c] : bounds[c + 1]], n_gt[c]) for c in with_gt}
    return {"AP": float(np.mean(list(per_class.values()))), "per_class": per_class}


def score_predictions(gt: dict, dets: dict, iou: float = 0.4, curves: bool = False) -> dict:
    """Both metrics of predictions in the submission's form, as ``python -m cxrdet.score``
    reports them.

    Args:
        gt: image id → (boxes, class ids 0..14), a normal image with its ``0 0 1 1`` class-14
            box (:func:`cxrdet.labels.ground_truth`); every scored image is a key, and ties
            between images rank in this order.
        dets: image id → (boxes, scores, class ids 0..14), "No finding" lines included.
        iou: the IoU threshold of both metrics.
        curves: also return the competition metric's precision-recall curves.

    Returns:
        ``{"mAP40", "mAP40_per_class", "AP40", "AP40_per_class", "images"}`` (+
        ``"mAP40_curves"``): the competition mAP over the classes with ground truth, and the
        COCO-style AP over the findings 0-13 (class-14 boxes and lines left out).
    """
    competition = competition_map(gt, dets, iou, curves=curves)
    findings = lambda *arrays: tuple(a[arrays[-1] != NO_FINDING] for a in arrays)  # noqa: E731
    coco = coco_ap(
        {i: findings(*g) for i, g in gt.items()},
        {i: findings(*d) for i, d in dets.items()},
        NUM_FINDINGS,
        iou,
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


class DetectionEvaluator:
    """Validation scored as the submission of the same images would be (reset / process /
    evaluate): ``val/mAP40`` and ``val/AP40`` are what ``python -m cxrdet.score`` reports for
    the submission ``predict.py`` writes of those images with the model's own score threshold.

    Each detection set goes the submission's way: boxes mapped to original pixels and clipped
    (:func:`cxrdet.postprocess.to_original_prediction`), the "No finding" line appended
    (:func:`cxrdet.competition.with_no_finding`), then written and read back as a
    PredictionString (4-decimal scores, 0.1-px boxes). The ground truth is the targets'
    ``truth``: the validation labels in original pixels (:func:`cxrdet.labels.ground_truth`).
    """

    def __init__(self, iou: float = 0.4):
        self.iou = iou
        self.reset()

    def reset(self) -> None:
        self.gt: dict = {}
        self.dets: dict = {}

    def process(self, targets: list[dict], outputs: list[dict]) -> None:
        """Add one batch: targets as :class:`cxrdet.dataset.DetectionDataset` makes them
        (``image_id``, ``truth``, ``orig_hw``, ``image_hw``, ``content``) and the model's
        outputs on those images (torchvision's labels = class id + 1)."""
        for t, o in zip(targets, outputs):
            pred = (
                o["boxes"].detach().float().cpu().numpy(),
                o["scores"].detach().float().cpu().numpy(),
                o["labels"].cpu().numpy() - 1,
            )
            pred = to_original_prediction(pred, t["orig_hw"], t["image_hw"], t["content"])
            self.dets[t["image_id"]] = as_read_back(*with_no_finding(*pred))
            self.gt[t["image_id"]] = t["truth"]

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
        return score_predictions(gt, self.dets, self.iou, curves)
