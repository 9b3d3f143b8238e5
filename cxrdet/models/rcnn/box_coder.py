"""torchvision's box coder without copies from the host.

``BoxCoder.encode_single`` makes its four weights into a device tensor and ``decode_single``
makes the constant 0.5 into one, twice: each ``torch.tensor(..., device=cuda)`` is a copy from
pageable host memory that the host waits for. :class:`HostFreeBoxCoder` does the same
arithmetic with the constants as Python numbers (kernel arguments, converted to the boxes'
dtype exactly as the tensors were), so its results are torchvision's bit for bit.
"""

from __future__ import annotations

import torch
from torch import Tensor
from torchvision.models.detection._utils import BoxCoder


class HostFreeBoxCoder(BoxCoder):
    """``BoxCoder`` (the same weights and clip) whose encode and decode copy nothing to the
    device."""

    @classmethod
    def like(cls, coder: BoxCoder) -> HostFreeBoxCoder:
        return cls(coder.weights, coder.bbox_xform_clip)

    def encode_single(self, reference_boxes: Tensor, proposals: Tensor) -> Tensor:
        """torchvision's ``encode_boxes``, operation for operation."""
        wx, wy, ww, wh = (float(w) for w in self.weights)
        px1, py1, px2, py2 = (proposals[:, i].unsqueeze(1) for i in range(4))
        rx1, ry1, rx2, ry2 = (reference_boxes[:, i].unsqueeze(1) for i in range(4))
        ex_widths = px2 - px1
        ex_heights = py2 - py1
        ex_ctr_x = px1 + 0.5 * ex_widths
        ex_ctr_y = py1 + 0.5 * ex_heights
        gt_widths = rx2 - rx1
        gt_heights = ry2 - ry1
        gt_ctr_x = rx1 + 0.5 * gt_widths
        gt_ctr_y = ry1 + 0.5 * gt_heights
        dx = wx * (gt_ctr_x - ex_ctr_x) / ex_widths
        dy = wy * (gt_ctr_y - ex_ctr_y) / ex_heights
        dw = ww * torch.log(gt_widths / ex_widths)
        dh = wh * torch.log(gt_heights / ex_heights)
        return torch.cat((dx, dy, dw, dh), dim=1)

    def decode_single(self, rel_codes: Tensor, boxes: Tensor) -> Tensor:
        """torchvision's ``decode_single``, operation for operation."""
        boxes = boxes.to(rel_codes.dtype)
        widths = boxes[:, 2] - boxes[:, 0]
        heights = boxes[:, 3] - boxes[:, 1]
        ctr_x = boxes[:, 0] + 0.5 * widths
        ctr_y = boxes[:, 1] + 0.5 * heights
        wx, wy, ww, wh = self.weights
        dx = rel_codes[:, 0::4] / wx
        dy = rel_codes[:, 1::4] / wy
        dw = torch.clamp(rel_codes[:, 2::4] / ww, max=self.bbox_xform_clip)
        dh = torch.clamp(rel_codes[:, 3::4] / wh, max=self.bbox_xform_clip)
        pred_ctr_x = dx * widths[:, None] + ctr_x[:, None]
        pred_ctr_y = dy * heights[:, None] + ctr_y[:, None]
        half_w = 0.5 * (torch.exp(dw) * widths[:, None])
        half_h = 0.5 * (torch.exp(dh) * heights[:, None])
        corners = (
            pred_ctr_x - half_w,
            pred_ctr_y - half_h,
            pred_ctr_x + half_w,
            pred_ctr_y + half_h,
        )
        return torch.stack(corners, dim=2).flatten(1)
