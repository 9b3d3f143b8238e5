"""torchvision's region proposal network, batched: NMS per (image, level) group at a cost that
does not grow with the batch, masked losses, one host wait per call at most.

:class:`BatchedRPN` is a ``RegionProposalNetwork`` with the same children (anchor generator,
head) and settings; only the per-image loops are replaced:

- the anchors (the same for every image of a batch) are made once per feature-map geometry;
- the top-k per level is torchvision's (already batched); clipping, the small-box and score
  filters become a validity mask; each (image, level) is a group of its own for
  :func:`.nms.grouped_nms` (the levels are blocks of the padded top-k), and each image keeps
  its ``post_nms_top_n`` best by score: :class:`Proposals`, padded;
- the anchors are matched to the padded ground truth (:mod:`.matching`), sampled with
  :class:`.sampling.BalancedSampler`, and the losses are sums over masks divided by the
  number sampled, as torchvision divides them.

Where the host waits (``benchmarks/syncs.py`` counts them): the NMS, once per call on a GPU
(:mod:`.nms`); nothing else. Image sizes and the box coder's constants reach the device as
kernel arguments, not copies.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor
from torchvision.models.detection.image_list import ImageList
from torchvision.models.detection.rpn import RegionProposalNetwork, concat_box_prediction_layers

from cxrdet.models.rcnn.box_coder import HostFreeBoxCoder
from cxrdet.models.rcnn.matching import batched_box_iou, gather_rows, match, pad_targets
from cxrdet.models.rcnn.nms import grouped_nms
from cxrdet.models.rcnn.sampling import BalancedSampler


class Proposals(NamedTuple):
    """Each image's proposals, best first: ``boxes`` [N, P, 4], ``valid`` [N, P] (False
    where an image had fewer than P)."""

    boxes: Tensor
    valid: Tensor


class HeadOutputs(NamedTuple):
    """The RPN head's outputs over a batch, with its anchors (shared by every image)."""

    objectness: Tensor  # [N, A] logits
    deltas: Tensor  # [N, A, 4]
    anchors: Tensor  # [A, 4]
    anchors_per_level: list[int]


def clip_to_images(boxes: Tensor, sizes: Tensor) -> Tensor:
    """``boxes`` [N, K, ..., 4] clipped to each image's (height, width) in ``sizes`` [N, 2]."""
    shape = (-1,) + (1,) * (boxes.dim() - 2)
    height = sizes[:, 0].reshape(shape).to(boxes.dtype)
    width = sizes[:, 1].reshape(shape).to(boxes.dtype)
    x = torch.minimum(boxes[..., 0::2].clamp(min=0), width[..., None])
    y = torch.minimum(boxes[..., 1::2].clamp(min=0), height[..., None])
    return torch.stack((x, y), dim=-1).reshape(boxes.shape)


def image_sizes_tensor(image_sizes: list[tuple[int, int]], device) -> Tensor:
    """The batch's (height, width) pairs [N, 2] as a float tensor on ``device``, filled with
    Python numbers (kernel arguments): no copy from host memory, no wait."""
    out = torch.empty((len(image_sizes), 2), dtype=torch.float32, device=device)
    if len(set(image_sizes)) == 1:  # the usual batch: every image the prepared size
        out[:, 0], out[:, 1] = image_sizes[0]
        return out
    for i, (height, width) in enumerate(image_sizes):
        out[i, 0], out[i, 1] = height, width
    return out


class BatchedRPN(RegionProposalNetwork):
    """torchvision's RPN (same children, settings and state-dict keys) with batched proposal
    filtering, matching, sampling and losses; returns :class:`Proposals`.

    ``nms_method``: :func:`.nms.grouped_nms`'s method (``auto``: per group on the CPU, the
    matrix method on a GPU)."""

    def __init__(self, *args, nms_method: str = "auto", **kwargs):
        super().__init__(*args, **kwargs)
        sampler = self.fg_bg_sampler
        self.fg_bg_sampler = BalancedSampler(
            sampler.batch_size_per_image, sampler.positive_fraction
        )
        self.box_coder = HostFreeBoxCoder.like(self.box_coder)
        self.nms_method = nms_method
        self._anchors: dict = {}

    @classmethod
    def like(cls, rpn: RegionProposalNetwork, nms_method: str = "auto") -> BatchedRPN:
        """A batched RPN with ``rpn``'s children and settings (the same modules, not copies)."""
        out = cls(
            rpn.anchor_generator,
            rpn.head,
            rpn.proposal_matcher.high_threshold,
            rpn.proposal_matcher.low_threshold,
            rpn.fg_bg_sampler.batch_size_per_image,
            rpn.fg_bg_sampler.positive_fraction,
            dict(rpn._pre_nms_top_n),
            dict(rpn._post_nms_top_n),
            rpn.nms_thresh,
            rpn.score_thresh,
            nms_method=nms_method,
        )
        out.min_size = rpn.min_size
        return out

    def head_outputs(self, images: ImageList, features: dict[str, Tensor]) -> HeadOutputs:
        """The head's objectness and deltas for every anchor, and the anchors."""
        maps = list(features.values())
        objectness, deltas = self.head(maps)
        per_level = [o.shape[1] * o.shape[2] * o.shape[3] for o in objectness]
        objectness, deltas = concat_box_prediction_layers(objectness, deltas)
        n = len(images.image_sizes)
        return HeadOutputs(
            objectness.reshape(n, -1),
            deltas.reshape(n, -1, 4),
            self.anchors(images, maps),
            per_level,
        )

    def anchors(self, images: ImageList, maps: list[Tensor]) -> Tensor:
        """The anchors of one image of the batch [A, 4] (all images share them: they depend on
        the padded batch's size and the feature maps' sizes only), made once per geometry."""
        key = (
            tuple(images.tensors.shape[-2:]),
            tuple(tuple(m.shape[-2:]) for m in maps),
            images.tensors.device,
            maps[0].dtype,
        )
        if key not in self._anchors:
            one = ImageList(images.tensors[:1], images.image_sizes[:1])
            self._anchors[key] = self.anchor_generator(one, [m[:1] for m in maps])[0]
        return self._anchors[key]

    def forward(
        self,
        images: ImageList,
        features: dict[str, Tensor],
        targets: list[dict[str, Tensor]] | None = None,
    ) -> tuple[Proposals, dict[str, Tensor]]:
        head = self.head_outputs(images, features)
        proposals = self.propose(head, images.image_sizes)
        losses = {}
        if self.training:
            if targets is None:
                raise ValueError("targets should not be None")
            losses = self.losses(head, targets)
        return proposals, losses

    def propose(self, head: HeadOutputs, image_sizes: list[tuple[int, int]]) -> Proposals:
        """Each image's best ``post_nms_top_n`` proposals after torchvision's filtering (top-k
        per level, clipping, small boxes, score threshold, NMS per level)."""
        objectness = head.objectness.detach()
        n, device = objectness.shape[0], objectness.device
        decoded = self.box_coder.decode_single(
            head.deltas.detach().reshape(-1, 4), head.anchors.repeat(n, 1)
        ).reshape(n, -1, 4)
        top = self._get_top_n_idx(objectness, head.anchors_per_level)
        scores = torch.sigmoid(objectness.gather(1, top))
        boxes = clip_to_images(gather_rows(decoded, top), image_sizes_tensor(image_sizes, device))
        widths, heights = boxes[..., 2] - boxes[..., 0], boxes[..., 3] - boxes[..., 1]
        valid = (widths >= self.min_size) & (heights >= self.min_size)
        valid &= scores >= self.score_thresh
        # _get_top_n_idx keeps each level's top k in a block of its own, in level order.
        per_level = [min(self.pre_nms_top_n(), k) for k in head.anchors_per_level]
        kept = grouped_nms(
            list(boxes.split(per_level, dim=1)),
            list(scores.split(per_level, dim=1)),
            list(valid.split(per_level, dim=1)),
            self.nms_thresh,
            self.nms_method,
        )
        ranked = torch.where(torch.cat(kept, dim=1), scores, -1.0)
        best, index = ranked.topk(min(self.post_nms_top_n(), ranked.shape[1]), dim=1)
        return Proposals(gather_rows(boxes, index), best >= 0)

    def losses(self, head: HeadOutputs, targets: list[dict[str, Tensor]]) -> dict[str, Tensor]:
        """``loss_objectness`` and ``loss_rpn_box_reg`` as torchvision computes them."""
        anchors, deltas = head.anchors, head.deltas
        n = deltas.shape[0]
        gt = pad_targets(targets, anchors.dtype, anchors.device)
        matches = match(
            batched_box_iou(gt.boxes, anchors),
            gt.valid,
            self.proposal_matcher.high_threshold,
            self.proposal_matcher.low_threshold,
            allow_low_quality=True,
        )
        labels = (matches >= 0).to(torch.float32)
        labels = torch.where(matches == self.proposal_matcher.BETWEEN_THRESHOLDS, -1.0, labels)
        pos, neg = self.fg_bg_sampler(labels)
        sampled = (pos | neg).reshape(-1)
        count = sampled.sum().clamp(min=1)
        matched = gather_rows(gt.boxes, matches.clamp(min=0)).reshape(-1, 4)
        targets_ = self.box_coder.encode_single(matched, anchors.repeat(n, 1))
        pos = pos.reshape(-1)
        targets_ = torch.where(pos[:, None], targets_, 0.0)  # empty matches encode to -inf
        box = F.smooth_l1_loss(deltas.reshape(-1, 4), targets_, beta=1 / 9, reduction="none")
        box_loss = torch.where(pos, box.sum(dim=1), 0.0).sum() / count
        objectness = F.binary_cross_entropy_with_logits(
            head.objectness.reshape(-1), labels.reshape(-1).clamp(min=0), reduction="none"
        )
        objectness_loss = torch.where(sampled, objectness, 0.0).sum() / count
        return {"loss_objectness": objectness_loss, "loss_rpn_box_reg": box_loss}
