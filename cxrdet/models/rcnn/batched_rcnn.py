"""The Faster R-CNN that passes padded proposals from :class:`.batched_rpn.BatchedRPN` to
:class:`.batched_roi_heads.BatchedRoIHeads`.

It is torchvision's ``FasterRCNN`` with those two children swapped in (the same modules,
state-dict keys unchanged) and ``forward`` without the per-image degenerate-box check, which
reads one flag per image from the device: the dataset drops boxes of no width or height
before they leave the loader (:class:`cxrdet.data.dataset.DetectionDataset`).
"""

from __future__ import annotations

from torch import Tensor
from torchvision.models.detection import FasterRCNN

from cxrdet.models.rcnn.batched_roi_heads import BatchedRoIHeads
from cxrdet.models.rcnn.batched_rpn import BatchedRPN


class BatchedFasterRCNN(FasterRCNN):
    """torchvision's ``FasterRCNN`` (the same arguments) whose RPN and box head work on whole
    batches.

    Args:
        candidates_per_class: :class:`.batched_roi_heads.BatchedRoIHeads`' pre-NMS cap.
    """

    def __init__(self, *args, candidates_per_class: int | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self.rpn = BatchedRPN.like(self.rpn)
        self.roi_heads = BatchedRoIHeads.like(self.roi_heads, candidates_per_class)

    def forward(self, images: list[Tensor], targets: list[dict[str, Tensor]] | None = None):
        if self.training and targets is None:
            raise ValueError("In training mode, targets should be passed")
        original_sizes = [(int(im.shape[-2]), int(im.shape[-1])) for im in images]
        image_list, targets = self.transform(images, targets)
        features = self.backbone(image_list.tensors)
        proposals, rpn_losses = self.rpn(image_list, features, targets)
        detections, roi_losses = self.roi_heads(
            features, proposals, image_list.image_sizes, targets
        )
        if self.training:
            return {**rpn_losses, **roi_losses}
        return self.transform.postprocess(detections, image_list.image_sizes, original_sizes)
