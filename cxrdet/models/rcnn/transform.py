"""The detector's input transform: uint8 grey images in, normalised three-channel floats out.

The loader ships each image as it was read, uint8 ``[1, H, W]`` (a twelfth of the bytes of a
float ``[3, H, W]``); the conversion to [0, 1], the ImageNet normalisation and the expansion to
three channels happen here, on the model's device, with the numbers the loader's float images
gave (``x / 255``, then ``(x - mean) / std`` per channel). Float images ``[3, H, W]`` in [0, 1]
are taken as before.

Boxes are resized (multi-scale training, detections back to the input's pixels) with the
ratios computed on the host in float32 and passed as Python numbers: torchvision's
``resize_boxes`` makes each ratio from two device tensors (a copy from host memory, a wait,
per image), for the same numbers.
"""

from typing import Optional  # TorchScript reads these annotations: no X | None

import numpy as np
import torch
import torchvision
from torch import Tensor
from torchvision.models.detection.transform import (
    GeneralizedRCNNTransform,
    _resize_image_and_masks,
    resize_boxes,
)


class ResizeTransform(GeneralizedRCNNTransform):
    """torchvision's detection transform with a test size of its own and uint8 grey input.

    Training resizes each image's shortest edge to one of ``train_sizes`` drawn per image
    (Detectron2's ResizeShortestEdge "choice"); evaluation resizes it to ``test_size``; the
    longest edge never exceeds ``max_size``. An image already at its target size is not
    resampled (torchvision would interpolate it onto itself). Detections come back in the input
    image's pixels.

    torchvision evaluates at the last of ``min_size`` and trains at a draw from all of them, so
    ``min_size`` is the training sizes followed by the test size, and the draw leaves the last
    one out (with one training size there is nothing to draw). The model stays scriptable
    (TorchScript export) and traceable (ONNX).
    """

    def __init__(self, train_sizes, max_size, test_size, image_mean, image_std):
        super().__init__((*train_sizes, test_size), max_size, image_mean, image_std)
        self.train_sizes = tuple(int(s) for s in train_sizes)
        self.test_size = int(test_size)
        # Not in the state dict: checkpoints keep torchvision's keys.
        self.register_buffer("mean", torch.tensor(image_mean).view(-1, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(image_std).view(-1, 1, 1), persistent=False)

    def torch_choice(self, k: list[int]) -> int:
        """One of ``k`` but the last (the test size), drawn as torchvision draws."""
        if len(k) == 2:
            return k[0]
        index = int(torch.empty(1).uniform_(0.0, float(len(k) - 1)).item())
        return k[index]

    def normalize(self, image: Tensor) -> Tensor:
        """uint8 ``[1, H, W]`` (or float in [0, 1]) → ``(x - mean) / std``, ``[3, H, W]``."""
        if not image.is_floating_point():
            image = image.to(torch.float32).div(255.0)
        return (image - self.mean.to(image.dtype)) / self.std.to(image.dtype)

    def resize(
        self,
        image: Tensor,
        target: Optional[dict[str, Tensor]] = None,  # noqa: UP045
    ) -> tuple[Tensor, Optional[dict[str, Tensor]]]:  # noqa: UP045
        h, w = image.shape[-2:]
        size = self.torch_choice(self.min_size) if self.training else self.min_size[-1]
        if not torchvision._is_tracing():
            scale = min(float(size) / float(min(h, w)), float(self.max_size) / float(max(h, w)))
            if scale == 1.0:
                return image, target
        image, target = _resize_image_and_masks(image, size, self.max_size, target, self.fixed_size)
        if target is None:
            return image, target
        target["boxes"] = self.resize_boxes(target["boxes"], [h, w], list(image.shape[-2:]))
        return image, target

    def postprocess(
        self,
        result: list[dict[str, Tensor]],
        image_shapes: list[tuple[int, int]],
        original_image_sizes: list[tuple[int, int]],
    ) -> list[dict[str, Tensor]]:
        """Detections back in each input image's pixels (torchvision's ``postprocess``); an image
        predicted at its own size is left as it is (torchvision multiplies it by 1)."""
        if self.training:
            return result
        for i, (size, original) in enumerate(zip(image_shapes, original_image_sizes)):
            if size[0] != original[0] or size[1] != original[1]:
                boxes = self.resize_boxes(
                    result[i]["boxes"], [size[0], size[1]], [original[0], original[1]]
                )
                result[i]["boxes"] = boxes
        return result

    def resize_boxes(self, boxes: Tensor, original: list[int], new: list[int]) -> Tensor:
        """torchvision's ``resize_boxes`` (from an image of ``original`` (h, w) to ``new``),
        without device tensors where it runs eagerly."""
        if torch.jit.is_scripting() or torchvision._is_tracing():
            return resize_boxes(boxes, original, new)
        return self._scaled(boxes, original, new)

    @torch.jit.unused
    def _scaled(self, boxes: Tensor, original: list[int], new: list[int]) -> Tensor:
        # float32 ratios as torchvision computes them (a float32 division), exact as Python floats
        ratio_h, ratio_w = (float(np.float32(n) / np.float32(o)) for n, o in zip(new, original))
        x1, y1, x2, y2 = boxes.unbind(1)
        return torch.stack((x1 * ratio_w, y1 * ratio_h, x2 * ratio_w, y2 * ratio_h), dim=1)
