"""The Faster R-CNN that passes padded proposals from :class:`.batched_rpn.BatchedRPN` to
:class:`.batched_roi_heads.BatchedRoIHeads`.

It is torchvision's ``FasterRCNN`` with those two children swapped in (the same modules,
state-dict keys unchanged) and ``forward`` checking the ground truth's boxes in one look at the
whole batch (:func:`.matching.refuse_degenerate_boxes`: one host wait) where torchvision reads
one flag per image.
"""

from __future__ import annotations

from torch import Tensor
from torchvision.models.detection import FasterRCNN

from cxrdet.models.rcnn.batched_roi_heads import BatchedRoIHeads
from cxrdet.models.rcnn.batched_rpn import BatchedRPN
from cxrdet.models.rcnn.matching import refuse_degenerate_boxes


class BatchedFasterRCNN(FasterRCNN):
    """torchvision's ``FasterRCNN`` (the same arguments) whose RPN and box head work on whole
    batches.

    Args:
        candidates_per_class: :class:`.batched_roi_heads.BatchedRoIHeads`' pre-NMS cap.
        nms_method: :func:`.nms.grouped_nms`'s method for both NMS stages (``auto``).
    """

    def __init__(
        self,
        *args,
        candidates_per_class: int | None = None,
        nms_method: str = "auto",
        **kwargs,
    ):
        super().__init__(*args, **kwargs)
        self.rpn = BatchedRPN.like(self.rpn, nms_method)
        self.roi_heads = BatchedRoIHeads.like(self.roi_heads, candidates_per_class, nms_method)

    def forward(self, images: list[Tensor], targets: list[dict[str, Tensor]] | None = None):
        if self.training and targets is None:
            raise ValueError("In training mode, targets should be passed")
        if targets is not None:
            refuse_degenerate_boxes(targets)
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
