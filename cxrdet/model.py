"""torchvision Faster R-CNN R50-FPN built from plain config values.

Pretrained weights are optional and come either by torchvision name (downloaded by torchvision
into its cache) or from a local file, so offline machines can use a copy made elsewhere::

    model.weights=DEFAULT                      # COCO detector, torchvision name
    model.weights=/models/frcnn_coco.pth       # same, from a local file (state dict)
    model.weights_backbone=IMAGENET1K_V1       # ImageNet ResNet-50 only
    model.weights_backbone=/models/r50.pth     # same, from a local file

Layers whose shapes differ (the class head for 14 classes vs COCO's 91) are left at random init.
With any pretrained source the backbone uses frozen BatchNorm like torchvision and Detectron2;
from random init it uses trainable BatchNorm, which needs care at validation (see module.py).
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch
from torch import nn
from torchvision.models import ResNet50_Weights, resnet50
from torchvision.models.detection import FasterRCNN, FasterRCNN_ResNet50_FPN_Weights
from torchvision.models.detection.backbone_utils import _resnet_fpn_extractor
from torchvision.ops.misc import FrozenBatchNorm2d

log = logging.getLogger(__name__)


def _is_file(source) -> bool:
    return isinstance(source, str | Path) and Path(source).suffix in {".pth", ".pt", ".ckpt"}


def load_matching(module: nn.Module, source: str | Path, prefix: str = "") -> None:
    """Load a local state dict (or Lightning checkpoint) into ``module``, skipping mismatches.

    Args:
        module: the target module.
        source: a ``.pth``/``.pt``/``.ckpt`` file.
        prefix: key prefix to strip first (``model.`` for a cxrdet checkpoint).
    """
    path = Path(source)
    if not path.is_file():
        raise FileNotFoundError(f"weights file not found: {path}")
    state = torch.load(path, map_location="cpu", weights_only=False)
    state = state.get("state_dict", state) if isinstance(state, dict) else state
    if not isinstance(state, dict):
        raise ValueError(f"{path}: expected a state dict, got {type(state).__name__}")
    state = {k.removeprefix(prefix): v for k, v in state.items()}
    _load_state(module, state, str(path))


def _load_state(module: nn.Module, state: dict, origin: str) -> None:
    own = module.state_dict()
    usable = {k: v for k, v in state.items() if k in own and own[k].shape == v.shape}
    skipped = sorted(set(state) - set(usable))
    module.load_state_dict(usable, strict=False)
    log.info(
        "loaded %d tensors from %s; %d not matching were skipped", len(usable), origin, len(skipped)
    )
    if not usable:
        raise ValueError(f"{origin}: no tensor matches the model; is it a Faster R-CNN R50-FPN?")


def build_fasterrcnn(
    num_classes: int = 14,
    image_size: int = 512,
    weights: str | None = None,
    weights_backbone: str | None = None,
    trainable_backbone_layers: int = 3,
    roi_batch_size_per_image: int = 512,
    rpn_batch_size_per_image: int = 256,
    box_score_thresh: float = 0.05,
    box_nms_thresh: float = 0.5,
    box_detections_per_img: int = 100,
    frozen_bn: bool | None = None,
) -> FasterRCNN:
    """Faster R-CNN R50-FPN for ``num_classes`` foreground classes (+ background).

    Args:
        num_classes: foreground classes (14 findings, 15 with "No finding").
        image_size: the prepared image side; the model neither up- nor down-scales it.
        weights: torchvision detector weights name (``DEFAULT``, ``COCO_V1``) or local file.
        weights_backbone: torchvision ResNet-50 weights name (``IMAGENET1K_V1``) or local file.
        trainable_backbone_layers: 0..5 ResNet stages trained when pretrained (else all 5).
        roi_batch_size_per_image: sampled ROIs per image in the box head (seed: 512).
        rpn_batch_size_per_image: sampled anchors per image in the RPN.
        box_score_thresh: minimum score of returned detections.
        box_nms_thresh: per-class NMS IoU at inference.
        box_detections_per_img: maximum detections per image.
        frozen_bn: frozen BatchNorm in the backbone; default: when any weights are pretrained.
    """
    weights = None if weights in (None, "", "none", "None") else weights
    weights_backbone = None if weights_backbone in (None, "", "none", "None") else weights_backbone
    pretrained = weights is not None or weights_backbone is not None
    frozen_bn = pretrained if frozen_bn is None else frozen_bn
    backbone_name = (
        weights_backbone if weights_backbone and not _is_file(weights_backbone) else None
    )
    body = resnet50(
        weights=ResNet50_Weights.verify(backbone_name) if backbone_name else None,
        norm_layer=FrozenBatchNorm2d if frozen_bn else nn.BatchNorm2d,
    )
    if weights_backbone and _is_file(weights_backbone):
        load_matching(body, weights_backbone)
    backbone = _resnet_fpn_extractor(body, trainable_backbone_layers if frozen_bn else 5)
    model = FasterRCNN(
        backbone,
        num_classes=num_classes + 1,
        min_size=image_size,
        max_size=image_size,
        rpn_batch_size_per_image=rpn_batch_size_per_image,
        box_batch_size_per_image=roi_batch_size_per_image,
        box_score_thresh=box_score_thresh,
        box_nms_thresh=box_nms_thresh,
        box_detections_per_img=box_detections_per_img,
    )
    if weights is not None and _is_file(weights):
        load_matching(model, weights)
    elif weights is not None:
        state = FasterRCNN_ResNet50_FPN_Weights.verify(weights).get_state_dict(progress=True)
        _load_state(model, state, f"torchvision {weights}")
    return model
