"""torchvision's multi-scale ROI pooling with one host wait instead of one per FPN level.

``MultiScaleRoIAlign`` assigns each ROI an FPN level and pools each level's ROIs with
``torch.where(levels == level)``: a ``nonzero`` per level, four waits per call. Here the ROIs
are sorted by level on the device and the four counts read together (one wait, four integers
copied); each level pools its slice and the results go back to the ROIs' order. ``roi_align``
pools each ROI on its own, so the values are torchvision's exactly.
"""

from __future__ import annotations

import torch
from torch import Tensor
from torchvision.ops import MultiScaleRoIAlign, roi_align
from torchvision.ops.poolers import _convert_to_roi_format, _setup_scales


class LevelSortedRoIAlign(MultiScaleRoIAlign):
    """``MultiScaleRoIAlign`` (same settings, no parameters) with one wait per call."""

    @classmethod
    def like(cls, pool: MultiScaleRoIAlign) -> LevelSortedRoIAlign:
        return cls(
            pool.featmap_names,
            pool.output_size,
            pool.sampling_ratio,
            canonical_scale=pool.canonical_scale,
            canonical_level=pool.canonical_level,
        )

    def forward(
        self, x: dict[str, Tensor], boxes: list[Tensor], image_shapes: list[tuple[int, int]]
    ) -> Tensor:
        features = [x[name] for name in self.featmap_names]
        if self.scales is None or self.map_levels is None:
            self.scales, self.map_levels = _setup_scales(
                features, image_shapes, self.canonical_scale, self.canonical_level
            )
        rois = _convert_to_roi_format(boxes)
        options = {"output_size": self.output_size, "sampling_ratio": self.sampling_ratio}
        if len(features) == 1:
            return roi_align(features[0], rois, spatial_scale=self.scales[0], **options)
        # A box with no level (NaN coordinates, after a diverging step) is pooled by none and
        # left at zero, as torchvision leaves it: it goes to a last, unpooled bucket.
        n = len(features)
        levels = self.map_levels(boxes)
        levels = torch.where((levels >= 0) & (levels < n), levels, n)
        order = levels.argsort(stable=True)
        buckets = levels[:, None] == torch.arange(n + 1, device=levels.device)
        counts = buckets.sum(dim=0).tolist()  # the host waits: the ROIs per level
        dtype, parts = features[0].dtype, rois[order].split(counts)
        pooled = [
            roi_align(feature, part, spatial_scale=scale, **options).to(dtype)
            for feature, scale, part in zip(features, self.scales, parts)
        ]
        shape = (counts[n], features[0].shape[1], *self.output_size)
        pooled.append(features[0].new_zeros(shape))
        return torch.cat(pooled).index_select(0, order.argsort())
