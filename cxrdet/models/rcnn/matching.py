"""Ground truth padded into one tensor, and torchvision's ``Matcher`` for a whole batch.

Each image's boxes are padded to the batch's largest count, with a mask of the real ones; a
padded box overlaps nothing (IoU -1), so an image without boxes matches every anchor or
proposal as background, as torchvision's per-image code does. The arithmetic is torchvision's
(``box_iou``, ``Matcher``, ``set_low_quality_matches_``) element for element, so the matches are
the same, ties included (``max`` returns the first of equal values, in the ground truth's order).
"""

from __future__ import annotations

from itertools import accumulate
from typing import NamedTuple

import torch
from torch import Tensor
from torchvision.ops.boxes import box_area

BELOW_LOW_THRESHOLD = -1  # torchvision's Matcher codes
BETWEEN_THRESHOLDS = -2


class PaddedTargets(NamedTuple):
    """A batch's ground truth: ``boxes`` [N, G, 4], ``labels`` [N, G] (torchvision's, 1-based),
    ``valid`` [N, G] (False for padding); G >= 1."""

    boxes: Tensor
    labels: Tensor
    valid: Tensor


def pad_targets(targets: list[dict], dtype: torch.dtype, device: torch.device) -> PaddedTargets:
    """``targets`` (torchvision's list of dicts) padded to the largest box count of the batch.
    The counts are the tensors' shapes, known on the host; the mask is filled from them with
    Python numbers: nothing is copied from the host, nothing waits."""
    counts = [int(t["boxes"].shape[0]) for t in targets]
    size = max(1, *counts)
    boxes = torch.zeros((len(targets), size, 4), dtype=dtype, device=device)
    labels = torch.zeros((len(targets), size), dtype=torch.int64, device=device)
    valid = torch.zeros((len(targets), size), dtype=torch.bool, device=device)
    for i, (t, n) in enumerate(zip(targets, counts)):
        if n:
            boxes[i, :n] = t["boxes"].to(dtype)
            labels[i, :n] = t["labels"]
            valid[i, :n] = True
    return PaddedTargets(boxes, labels, valid)


def refuse_degenerate_boxes(targets: list[dict]) -> None:
    """Raise ``ValueError`` naming the image and the box when a ground-truth box has no width
    or height, or is inverted (x2 <= x1 or y2 <= y1), as torchvision's detector refuses it.

    The matcher would otherwise match such a box to nearly every anchor through the
    low-quality rule (its IoU with everything is 0, which is then its best). One look at the
    whole batch: one host wait. The datasets drop such boxes first and list them
    (``label_issues.csv``), so this fires only on boxes that came from elsewhere."""
    boxes = [t["boxes"].reshape(-1, 4) for t in targets]
    if not any(len(b) for b in boxes):
        return
    flat = torch.cat(boxes)
    bad = (flat[:, 2:] <= flat[:, :2]).any(dim=1)
    if not bad.any():  # the host waits: one flag for the batch
        return
    first = int(bad.nonzero()[0, 0])
    image = next(i for i, end in enumerate(accumulate(len(b) for b in boxes)) if first < end)
    name = targets[image].get("image_id", f"{image} of the batch")
    box = [round(v, 2) for v in flat[first].tolist()]
    raise ValueError(
        f"ground-truth box {box} (x1, y1, x2, y2) of image {name} has no width "
        f"or height ({int(bad.sum())} such box(es) in the batch): boxes must have x2 > x1 and "
        "y2 > y1; the dataset drops them and lists them in label_issues.csv"
    )


def batched_box_iou(boxes1: Tensor, boxes2: Tensor) -> Tensor:
    """IoU of ``boxes1`` [N, G, 4] with ``boxes2`` [N, M, 4] (or [M, 4], shared): [N, G, M],
    computed as ``torchvision.ops.box_iou`` computes it."""
    if boxes2.dim() == 2:
        boxes2 = boxes2[None]
    area1 = box_area(boxes1.reshape(-1, 4)).reshape(boxes1.shape[:2])
    area2 = box_area(boxes2.reshape(-1, 4)).reshape(boxes2.shape[:2])
    lt = torch.max(boxes1[:, :, None, :2], boxes2[:, None, :, :2])
    rb = torch.min(boxes1[:, :, None, 2:], boxes2[:, None, :, 2:])
    wh = (rb - lt).clamp(min=0)
    inter = wh[..., 0] * wh[..., 1]
    union = area1[:, :, None] + area2[:, None, :] - inter
    return inter / union


def match(iou: Tensor, valid: Tensor, high: float, low: float, allow_low_quality: bool) -> Tensor:
    """torchvision's ``Matcher`` over a batch: ``iou`` [N, G, M] of ground truth with
    anchors or proposals, ``valid`` [N, G]. Returns [N, M]: the matched box's index,
    ``BELOW_LOW_THRESHOLD`` or ``BETWEEN_THRESHOLDS``.

    With ``allow_low_quality``, every element whose IoU with some real box equals that box's
    best IoU keeps its best match (torchvision's ``set_low_quality_matches_``)."""
    iou = iou.masked_fill(~valid[:, :, None], -1.0)
    matched_vals, best = iou.max(dim=1)
    matches = torch.where(matched_vals < low, BELOW_LOW_THRESHOLD, best)
    between = (matched_vals >= low) & (matched_vals < high)
    matches = torch.where(between, BETWEEN_THRESHOLDS, matches)
    if allow_low_quality:
        highest = iou.max(dim=2, keepdim=True).values
        update = ((iou == highest) & valid[:, :, None]).any(dim=1)
        matches = torch.where(update, best, matches)
    return matches


def gather_rows(values: Tensor, index: Tensor) -> Tensor:
    """``values`` [N, K, ...] at ``index`` [N, M] along the second axis: [N, M, ...]."""
    shape = index.shape + values.shape[2:]
    flat = index.reshape(*index.shape, *([1] * (values.dim() - 2))).expand(shape)
    return values.gather(1, flat)
