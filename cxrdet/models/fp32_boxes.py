"""Box geometry in float32 under any autocast, the layers in mixed precision.

torchvision makes anchors in the feature maps' dtype and decodes boxes in the regression
deltas' dtype (``BoxCoder.decode_single`` casts the reference boxes to it). Under bf16 autocast
every anchor, proposal and predicted box would then lie on the bf16 grid: 8 bits of mantissa,
2-px steps for coordinates in [256, 512), about ±5 px once mapped back to a 2,500-px DICOM.
fp16's grid is 8× finer but still coarse at 1024 px.

These drop-in replacements hand float32 to everything that handles coordinates: anchors, RPN
decoding, proposal NMS and the training targets, ROI box decoding and post-processing. The
four prediction layers (RPN objectness and deltas, box classifier and regressor) run in float32
too, outside autocast: in bf16 they moved scores by 3-6 %; they are 1x1 convolutions and small
FC layers, a sliver of the compute. The rest (backbone, FPN, the RPN's 3x3 convolution, the
box head's FC layers) keeps the autocast dtype. The operations after
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
from torchvision.ops.misc import FrozenBatchNorm2d


class Float32AnchorGenerator(AnchorGenerator):
    """Anchors in float32 whatever the feature maps' dtype (torchvision's default sizes and
    aspect ratios for the R50-FPN: 32-512 px, 0.5/1/2)."""

    def __init__(self):
        sizes = ((32,), (64,), (128,), (256,), (512,))
        super().__init__(sizes, ((0.5, 1.0, 2.0),) * len(sizes))

    def set_cell_anchors(self, dtype: torch.dtype, device: torch.device):
        self.cell_anchors = [a.to(dtype=torch.float32, device=device) for a in self.cell_anchors]


def without_autocast(device_type: str):
    """A context in which autocast is off (the layers inside run in their own dtype)."""
    return torch.autocast(device_type, enabled=False)


class Float32RPNHead(RPNHead):
    """torchvision's RPN head: its 3x3 convolution in the autocast dtype, its objectness and box
    delta layers in float32."""

    def forward(self, x: list[Tensor]) -> tuple[list[Tensor], list[Tensor]]:
        logits, deltas = [], []
        for feature in x:
            t = self.conv(feature).float()
            if torch.jit.is_scripting():  # TorchScript exports run in float32 anyway
                logits.append(self.cls_logits(t))
                deltas.append(self.bbox_pred(t))
            else:
                one, two = self._float32(t)
                logits.append(one)
                deltas.append(two)
        return logits, deltas

    @torch.jit.unused
    def _float32(self, t: Tensor) -> tuple[Tensor, Tensor]:
        with without_autocast(t.device.type):
            return self.cls_logits(t), self.bbox_pred(t)


class Float32Predictor(FastRCNNPredictor):
    """torchvision's box predictor, its class and box layers in float32."""

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        x = x.flatten(start_dim=1).float()
        if torch.jit.is_scripting():
            return self.cls_score(x), self.bbox_pred(x)
        return self._float32(x)

    @torch.jit.unused
    def _float32(self, x: Tensor) -> tuple[Tensor, Tensor]:
        with without_autocast(x.device.type):
            return self.cls_score(x), self.bbox_pred(x)


class InputDtypeFrozenBatchNorm2d(FrozenBatchNorm2d):
    """torchvision's frozen BatchNorm, its scale and shift applied in the input's dtype.

    The statistics stay float32 buffers (the state dict is torchvision's), but multiplying
    bf16/fp16 activations by float32 buffers would promote every block's output back to
    float32 under autocast: twice the memory traffic, and the next convolution casts it down
    again. In float32 it computes exactly what torchvision's does.
    """

    def forward(self, x: Tensor) -> Tensor:
        w = self.weight.reshape(1, -1, 1, 1)
        b = self.bias.reshape(1, -1, 1, 1)
        rv = self.running_var.reshape(1, -1, 1, 1)
        rm = self.running_mean.reshape(1, -1, 1, 1)
        scale = w * (rv + self.eps).rsqrt()
        bias = b - rm * scale
        return x * scale.to(x.dtype) + bias.to(x.dtype)
