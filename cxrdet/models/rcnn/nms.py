"""Greedy NMS within groups of boxes, at a cost per group that does not depend on the batch.

The batched detector suppresses within groups: each (image, FPN level) of the RPN's
proposals, each (image, class) of the detections. Putting every group into one
``torchvision.ops.nms`` call (coordinates offset per group) is quadratic in the whole call:
torchvision's kernels compare every pair of boxes, and on CUDA the kernel copies its
n x n/64 suppression bitmask to the host and suppresses there. At 512 px in training a batch of
8 puts ~56,000 proposals into one call: a ~390 MB copy every step, and on the CPU 20x the time
of one call per image. Here the groups never share a comparison. Boxes come padded,
``[G, K, 4]`` with a validity mask ``[G, K]``; groups of another size (FPN levels with fewer
anchors) come as another block. Two methods give torchvision's greedy result exactly (the
IoU computed as its kernels compute it, ``> iou_threshold`` suppressing):

- ``matrix`` (on a GPU; ``auto`` there): each block's boxes are sorted by score, the
  boolean matrix "i suppresses j" (IoU above the threshold, i before j) is built for every
  group at once, and the greedy result is reached as the fixed point of
  ``keep[j] = valid[j] and no kept i < j suppresses j`` (Cluster-NMS, Zheng et al. 2020), one
  batched matrix-vector product per iteration. Greedy NMS is that equation's only solution,
  and iterating from "everything kept" reaches it. The device is asked whether the last
  iteration changed anything once every :data:`ROUND` iterations: **one wait and one byte
  copied per call** while the suppression chains are shorter than :data:`ROUND` (5-9
  iterations on the RPN's proposals at 512 px), one more per further round. Cost: memory of
  G x K x K half floats (at 512 px, training, batch 8: 3 levels x 8 images x 2,000² = 192 MB;
  the IoU is built in chunks of :data:`CHUNK_PAIRS` pairs), work linear in the batch.
- ``per_group`` (on the CPU; ``auto`` there): one ``torchvision.ops.nms`` per group on its
  valid boxes. Where nothing waits (the CPU) this is the fastest exact method; on a GPU it
  would wait once per group.
"""

from __future__ import annotations

import torch
from torch import Tensor
from torchvision.ops import nms

METHODS = ("auto", "matrix", "per_group")
ROUND = 16  # matrix iterations between two looks at whether the result still changes
CHUNK_PAIRS = 1 << 24  # box pairs whose IoU is computed at once (a few 64 MB temporaries)


def resolve_method(method: str, device: torch.device) -> str:
    """``auto`` → ``per_group`` on the CPU, ``matrix`` on any other device."""
    if method not in METHODS:
        raise ValueError(f"NMS method {method!r}: expected one of {', '.join(METHODS)}")
    if method == "auto":
        return "per_group" if device.type == "cpu" else "matrix"
    return method


def grouped_nms(
    boxes: list[Tensor],
    scores: list[Tensor],
    valid: list[Tensor],
    iou_threshold: float,
    method: str = "auto",
) -> list[Tensor]:
    """Greedy NMS within each group of each block.

    Args:
        boxes: per block, ``[G, K, 4]`` boxes (x1, y1, x2, y2); blocks may differ in K.
        scores: per block, ``[G, K]``.
        valid: per block, ``[G, K]``: False boxes neither are kept nor suppress others.
        iou_threshold: a box is suppressed by a kept, better-scored box of its group whose
            IoU with it is above this.
        method: ``auto``, ``matrix`` or ``per_group`` (module docstring).

    Returns:
        Per block, the kept boxes' mask ``[G, K]``.
    """
    if not boxes:
        return []
    if resolve_method(method, boxes[0].device) == "per_group":
        return [_per_group(b, s, v, iou_threshold) for b, s, v in zip(boxes, scores, valid)]
    return _matrix(boxes, scores, valid, iou_threshold)


def _per_group(boxes: Tensor, scores: Tensor, valid: Tensor, iou_threshold: float) -> Tensor:
    keep = torch.zeros_like(valid)
    for g in range(boxes.shape[0]):
        index = valid[g].nonzero().squeeze(1)
        if index.numel():
            keep[g, index[nms(boxes[g, index], scores[g, index], iou_threshold)]] = True
    return keep


def suppression(boxes: Tensor, iou_threshold: float, dtype: torch.dtype) -> Tensor:
    """``[G, K, K]`` in ``dtype``: 1 where box i's IoU with box j is above the threshold and
    i < j (boxes sorted best first), computed as torchvision's NMS kernels compute it."""
    g, k, _ = boxes.shape
    out = torch.zeros((g, k, k), dtype=dtype, device=boxes.device)
    above = torch.ones((k, k), dtype=torch.bool, device=boxes.device).triu(1)
    step = max(1, CHUNK_PAIRS // max(1, k * k))
    for start in range(0, g, step):
        b = boxes[start : start + step]
        x1, y1, x2, y2 = b.unbind(-1)
        area = (x2 - x1) * (y2 - y1)
        w = torch.minimum(x2[:, :, None], x2[:, None]) - torch.maximum(x1[:, :, None], x1[:, None])
        h = torch.minimum(y2[:, :, None], y2[:, None]) - torch.maximum(y1[:, :, None], y1[:, None])
        inter = w.clamp_(min=0) * h.clamp_(min=0)
        iou = inter / (area[:, :, None] + area[:, None] - inter)
        out[start : start + step] = (iou > iou_threshold) & above
    return out


def _matrix(boxes, scores, valid, iou_threshold) -> list[Tensor]:
    # float32 on the CPU (its half-precision products are slow); half on a GPU. Sums of 0/1
    # products are exact up to 2,048 terms in half, and a positive sum never rounds to 0.
    dtype = torch.float32 if boxes[0].device.type == "cpu" else torch.float16
    orders, matrices, allowed, keeps = [], [], [], []
    for b, s, v in zip(boxes, scores, valid):
        order = torch.where(v, s, float("-inf")).argsort(dim=1, descending=True, stable=True)
        orders.append(order)
        matrices.append(
            suppression(b.gather(1, order[..., None].expand(-1, -1, 4)), iou_threshold, dtype)
        )
        allowed.append(v.gather(1, order))
        keeps.append(allowed[-1].clone())
    while True:
        for _ in range(ROUND):
            previous = keeps
            keeps = [
                a & (torch.bmm(k.to(dtype)[:, None, :], m)[:, 0] == 0)
                for a, k, m in zip(allowed, previous, matrices)
            ]
        changed = torch.stack([(k != p).any() for k, p in zip(keeps, previous)]).any()
        if not changed.item():  # the host waits: one byte
            break
    return [torch.zeros_like(k).scatter_(1, order, k) for k, order in zip(keeps, orders)]
