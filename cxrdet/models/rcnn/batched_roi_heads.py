"""torchvision's box head (``RoIHeads``), batched: fixed-size ROI samples, masked losses and
one NMS for every image's detections.

Training: the padded proposals and the padded ground truth (added as proposals, as
torchvision adds them) are matched and sampled for the whole batch; each image's sampled ROIs
fill ``batch_size_per_image`` slots in index order (torchvision's order), a mask marking the
slots an image could not fill; the losses are sums over that mask divided by the number
sampled (torchvision's means).

Inference: every proposal's per-class boxes and scores, the score and small-box filters as a
mask, optionally each image's ``candidates_per_class`` best per class (the pre-NMS cap), then
one NMS with each (image, class) a group of its own, and each image's best
``detections_per_img``. The host waits three times per batch: the candidates' count, NMS, and
the detections per image.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor
from torchvision.models.detection.roi_heads import RoIHeads

from cxrdet.models.rcnn.batched_rpn import Proposals, clip_to_images, group_nms, image_sizes_tensor
from cxrdet.models.rcnn.matching import (
    BELOW_LOW_THRESHOLD,
    BETWEEN_THRESHOLDS,
    batched_box_iou,
    gather_rows,
    match,
    pad_targets,
)
from cxrdet.models.rcnn.sampling import BalancedSampler

MIN_BOX = 1e-2  # torchvision's smallest detection side (remove_small_boxes)


class BatchedRoIHeads(RoIHeads):
    """torchvision's ``RoIHeads`` (same children, settings and state-dict keys) over
    :class:`Proposals`, with batched sampling, losses and post-processing.

    Args:
        candidates_per_class: at inference, each image keeps at most this many boxes per class
            (the best by score) for NMS; None keeps all (torchvision's behaviour).
    """

    def __init__(self, *args, candidates_per_class: int | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        sampler = self.fg_bg_sampler
        self.fg_bg_sampler = BalancedSampler(
            sampler.batch_size_per_image, sampler.positive_fraction
        )
        self.candidates_per_class = candidates_per_class

    @classmethod
    def like(cls, heads: RoIHeads, candidates_per_class: int | None = None) -> BatchedRoIHeads:
        """Batched heads with ``heads``' children and settings (the same modules, not copies)."""
        return cls(
            heads.box_roi_pool,
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
        decoded = self.box_coder.decode_single(box_regression, boxes.reshape(-1, 4))
        decoded = decoded.reshape(n, p, num_classes, 4)
        decoded = clip_to_images(decoded, image_sizes_tensor(image_shapes, boxes.device))[:, :, 1:]
        scores = F.softmax(class_logits, -1).reshape(n, p, num_classes)[:, :, 1:]
        widths = decoded[..., 2] - decoded[..., 0]
        heights = decoded[..., 3] - decoded[..., 1]
        ok = valid[:, :, None] & (scores > self.score_thresh)
        ok &= (widths >= MIN_BOX) & (heights >= MIN_BOX)
        if self.candidates_per_class is not None and self.candidates_per_class < p:
            ok = self.cap_per_class(ok, scores)
        index = ok.reshape(-1).nonzero().squeeze(1)  # the host waits: how many candidates
        found = num_classes - 1
        image = torch.div(index, p * found, rounding_mode="floor")
        label = index % found + 1
        candidate_scores = scores.reshape(-1)[index]
        keep = group_nms(
            decoded.reshape(-1, 4)[index],
            candidate_scores,
            image * num_classes + label,
            self.nms_thresh,
        )  # the host waits: NMS
        keep = keep[torch.sort(image[keep], stable=True).indices]  # by image, best first
        per_image = torch.zeros(n, dtype=torch.int64, device=boxes.device)
        per_image.scatter_add_(0, image[keep], torch.ones_like(keep))
        results, start = [], 0
        for count in per_image.tolist():  # the host waits: the detections per image
            chosen = keep[start : start + min(count, self.detections_per_img)]
            results.append(
                {
                    "boxes": decoded.reshape(-1, 4)[index[chosen]],
                    "scores": candidate_scores[chosen],
                    "labels": label[chosen],
                }
            )
            start += count
        return results

    def cap_per_class(self, ok: Tensor, scores: Tensor) -> Tensor:
        """``ok`` [N, P, C] narrowed to each image's best ``candidates_per_class`` per class."""
        ranked = torch.where(ok, scores, -1.0).transpose(1, 2)
        best, index = ranked.topk(self.candidates_per_class, dim=2)
        capped = torch.zeros_like(ranked, dtype=torch.bool).scatter_(2, index, best >= 0)
        return capped.transpose(1, 2)
