"""Box geometry in float32 under any autocast, the layers in mixed precision.

torchvision makes anchors in the feature maps' dtype and decodes boxes in the regression
deltas' dtype (``BoxCoder.decode_single`` casts the reference boxes to it). Under bf16 autocast
every anchor, proposal and predicted box would then lie on the bf16 grid: 8 bits of mantissa,
2-px steps for coordinates in [256, 512), about ±5 px once mapped back to a 2,500-px DICOM.
fp16's grid is 8× finer but still coarse at 1024 px.

These drop-in replacements hand float32 to everything that handles coordinates: anchors, RPN
decoding, proposal NMS and the training targets, ROI box decoding and post-processing. The
convolutions and FC layers that make the outputs keep the autocast dtype. The operations after
them (box arithmetic, ``exp``, top-k, softmax, NMS, ``roi_align``) are ones autocast either
leaves in their inputs' dtype or runs in float32 itself, so float32 inputs keep them in float32.
The parameters and state-dict keys are torchvision's, so checkpoints and pretrained weights load
as before, and the model still scripts (TorchScript) and exports (ONNX).
"""

from __future__ import annotations

import torch
from torch import Tensor
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.faster_rcnn import FastRCNNPredictor
from torchvision.models.detection.rpn import RPNHead


class Float32AnchorGenerator(AnchorGenerator):
    """Anchors in float32 whatever the feature maps' dtype (torchvision's default sizes and
    aspect ratios for the R50-FPN: 32-512 px, 0.5/1/2)."""

    def __init__(self):
        sizes = ((32,), (64,), (128,), (256,), (512,))
        super().__init__(sizes, ((0.5, 1.0, 2.0),) * len(sizes))

    def set_cell_anchors(self, dtype: torch.dtype, device: torch.device):
        self.cell_anchors = [a.to(dtype=torch.float32, device=device) for a in self.cell_anchors]


class Float32RPNHead(RPNHead):
    """torchvision's RPN head, its objectness and box deltas returned in float32."""

    def forward(self, x: list[Tensor]) -> tuple[list[Tensor], list[Tensor]]:
        logits, deltas = [], []
        for feature in x:
            t = self.conv(feature)
            logits.append(self.cls_logits(t).float())
            deltas.append(self.bbox_pred(t).float())
        return logits, deltas


class Float32Predictor(FastRCNNPredictor):
    """torchvision's box predictor, its class logits and box deltas returned in float32."""

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        x = x.flatten(start_dim=1)
        return self.cls_score(x).float(), self.bbox_pred(x).float()
