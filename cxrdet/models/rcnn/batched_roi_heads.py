"""torchvision's box head (``RoIHeads``), batched: fixed-size ROI samples, masked losses and
per-(image, class) NMS over fixed-size candidates.

Training: the padded proposals and the padded ground truth (added as proposals, as
torchvision adds them) are matched and sampled for the whole batch; each image's sampled ROIs
fill ``batch_size_per_image`` slots in index order (torchvision's order), a mask marking the
slots an image could not fill; the losses are sums over that mask divided by the number
sampled (torchvision's means).

Inference: every proposal's per-class boxes and scores, the score and small-box filters as a
mask; each image's best ``candidates_per_class`` per class (all of them when None) become a
fixed-size block ``[N x classes, K]`` for :func:`.nms.grouped_nms`, and each image keeps its
best ``detections_per_img`` of what survives.

Where the host waits (``benchmarks/syncs.py`` counts them): ROI pooling, once per call
(:mod:`.roi_align`); at inference also the NMS (once on a GPU) and the number of detections of
each image (one read for the batch).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor
from torchvision.models.detection.roi_heads import RoIHeads

from cxrdet.models.rcnn.batched_rpn import Proposals, clip_to_images, image_sizes_tensor
from cxrdet.models.rcnn.box_coder import HostFreeBoxCoder
from cxrdet.models.rcnn.matching import (
    BELOW_LOW_THRESHOLD,
    BETWEEN_THRESHOLDS,
    batched_box_iou,
    gather_rows,
    match,
    pad_targets,
)
from cxrdet.models.rcnn.nms import grouped_nms
from cxrdet.models.rcnn.roi_align import LevelSortedRoIAlign
from cxrdet.models.rcnn.sampling import BalancedSampler

MIN_BOX = 1e-2  # torchvision's smallest detection side (remove_small_boxes)


class BatchedRoIHeads(RoIHeads):
    """torchvision's ``RoIHeads`` (same children, settings and state-dict keys) over
    :class:`Proposals`, with batched sampling, losses and post-processing.

    Args:
        candidates_per_class: at inference, each image keeps at most this many boxes per class
            (the best by score) for NMS; None keeps all (torchvision's behaviour).
        nms_method: :func:`.nms.grouped_nms`'s method.
    """

    def __init__(
        self,
        *args,
        candidates_per_class: int | None = None,
        nms_method: str = "auto",
        **kwargs,
    ):
        super().__init__(*args, **kwargs)
        sampler = self.fg_bg_sampler
        self.fg_bg_sampler = BalancedSampler(
            sampler.batch_size_per_image, sampler.positive_fraction
        )
        self.box_coder = HostFreeBoxCoder.like(self.box_coder)
        self.candidates_per_class = candidates_per_class
        self.nms_method = nms_method

    @classmethod
    def like(
        cls, heads: RoIHeads, candidates_per_class: int | None = None, nms_method: str = "auto"
    ) -> BatchedRoIHeads:
        """Batched heads with ``heads``' children and settings (the same modules, not copies;
        the ROI pooling, which has no parameters, with one wait per call)."""
        return cls(
            LevelSortedRoIAlign.like(heads.box_roi_pool),
            heads.box_head,
            heads.box_predictor,
            heads.proposal_matcher.high_threshold,
            heads.proposal_matcher.low_threshold,
            heads.fg_bg_sampler.batch_size_per_image,
            heads.fg_bg_sampler.positive_fraction,
            heads.box_coder.weights,
            heads.score_thresh,
            heads.nms_thresh,
            heads.detections_per_img,
            candidates_per_class=candidates_per_class,
            nms_method=nms_method,
        )

    def forward(
        self,
        features: dict[str, Tensor],
        proposals: Proposals,
        image_shapes: list[tuple[int, int]],
        targets: list[dict[str, Tensor]] | None = None,
    ) -> tuple[list[dict[str, Tensor]], dict[str, Tensor]]:
        if self.training:
            if targets is None:
                raise ValueError("targets should not be None")
            return [], self.losses(features, proposals, image_shapes, targets)
        return self.detect(features, proposals, image_shapes), {}

    def predict(self, features, boxes: Tensor, image_shapes) -> tuple[Tensor, Tensor]:
        """Class logits [N * R, C + 1] and box deltas [N * R, (C + 1) * 4] of ``boxes``
        [N, R, 4]."""
        pooled = self.box_roi_pool(features, list(boxes.unbind(0)), image_shapes)
        return self.box_predictor(self.box_head(pooled))

    def sample(self, proposals: Proposals, targets: list[dict[str, Tensor]]):
        """Each image's training ROIs: boxes [N, R, 4], labels [N, R] (0: background),
        regression targets [N * R, 4] and the mask of filled slots [N, R]."""
        gt = pad_targets(targets, proposals.boxes.dtype, proposals.boxes.device)
        candidates = torch.cat([proposals.boxes, gt.boxes], dim=1)
        usable = torch.cat([proposals.valid, gt.valid], dim=1)
        matches = match(
            batched_box_iou(gt.boxes, candidates),
            gt.valid,
            self.proposal_matcher.high_threshold,
            self.proposal_matcher.low_threshold,
            allow_low_quality=False,
        )
        matched = matches.clamp(min=0)
        labels = gt.labels.gather(1, matched)
        labels = torch.where(matches == BELOW_LOW_THRESHOLD, 0, labels)
        labels = torch.where((matches == BETWEEN_THRESHOLDS) | ~usable, -1, labels)
        pos, neg = self.fg_bg_sampler(labels)
        sampled = pos | neg
        slots = min(self.fg_bg_sampler.batch_size_per_image, candidates.shape[1])
        order = torch.sort((~sampled).to(torch.uint8), dim=1, stable=True).indices[:, :slots]
        rois = gather_rows(candidates, order)
        reference = gather_rows(gt.boxes, matched.gather(1, order))
        regression = self.box_coder.encode_single(reference.reshape(-1, 4), rois.reshape(-1, 4))
        return rois, labels.gather(1, order), regression, sampled.gather(1, order)

    def losses(self, features, proposals: Proposals, image_shapes, targets) -> dict[str, Tensor]:
        """``loss_classifier`` and ``loss_box_reg`` as torchvision's ``fastrcnn_loss``."""
        rois, labels, regression, filled = self.sample(proposals, targets)
        class_logits, box_regression = self.predict(features, rois, image_shapes)
        labels, filled = labels.reshape(-1), filled.reshape(-1)
        count = filled.sum().clamp(min=1)
        classes = labels.clamp(min=0)
        ce = F.cross_entropy(class_logits, classes, reduction="none")
        loss_classifier = torch.where(filled, ce, 0.0).sum() / count
        positive = filled & (labels > 0)
        deltas = box_regression.reshape(len(labels), -1, 4)
        deltas = deltas.gather(1, classes[:, None, None].expand(-1, 1, 4)).squeeze(1)
        regression = torch.where(positive[:, None], regression, 0.0)  # background: -inf/NaN
        box = F.smooth_l1_loss(deltas, regression, beta=1 / 9, reduction="none").sum(dim=1)
        loss_box_reg = torch.where(positive, box, 0.0).sum() / count
        return {"loss_classifier": loss_classifier, "loss_box_reg": loss_box_reg}

    def detect(self, features, proposals: Proposals, image_shapes) -> list[dict[str, Tensor]]:
        """torchvision's ``postprocess_detections`` for the batch: per image, boxes, scores and
        labels (1-based) of its best ``detections_per_img`` after per-class NMS."""
        boxes, valid = proposals
        n, p = valid.shape
        class_logits, box_regression = self.predict(features, boxes, image_shapes)
        num_classes = class_logits.shape[-1]
        found = num_classes - 1
        decoded = self.box_coder.decode_single(box_regression, boxes.reshape(-1, 4))
        decoded = decoded.reshape(n, p, num_classes, 4)
        decoded = clip_to_images(decoded, image_sizes_tensor(image_shapes, boxes.device))[:, :, 1:]
        scores = F.softmax(class_logits, -1).reshape(n, p, num_classes)[:, :, 1:]
        widths = decoded[..., 2] - decoded[..., 0]
        heights = decoded[..., 3] - decoded[..., 1]
        ok = valid[:, :, None] & (scores > self.score_thresh)
        ok &= (widths >= MIN_BOX) & (heights >= MIN_BOX)
        # Each (image, class): its best k candidates, best first, as one NMS group.
        k = p if self.candidates_per_class is None else min(self.candidates_per_class, p)
        ranked = torch.where(ok, scores, -1.0).transpose(1, 2)  # [N, C, P]
        best, index = ranked.topk(k, dim=2)
        candidates = decoded.transpose(1, 2).gather(2, index[..., None].expand(-1, -1, -1, 4))
        usable = best >= 0
        [kept] = grouped_nms(
            [candidates.reshape(n * found, k, 4)],
            [best.reshape(n * found, k)],
            [usable.reshape(n * found, k)],
            self.nms_thresh,
            self.nms_method,
        )
        final = torch.where(kept.reshape(n, found * k), best.reshape(n, found * k), -1.0)
        top, chosen = final.topk(min(self.detections_per_img, found * k), dim=1)
        counts = (top >= 0).sum(dim=1).tolist()  # the host waits: detections per image
        out_boxes = gather_rows(candidates.reshape(n, found * k, 4), chosen)
        labels = torch.div(chosen, k, rounding_mode="floor") + 1
        return [
            {"boxes": out_boxes[i, :c], "scores": top[i, :c], "labels": labels[i, :c]}
            for i, c in enumerate(counts)
        ]
