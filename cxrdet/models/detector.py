"""torchvision Faster R-CNN R50-FPN built from plain config values.

Pretrained weights come by torchvision name (from torchvision's cache; see
:mod:`cxrdet.models.weights`) or from a local file, so offline machines can use a copy made
elsewhere::

    model.weights=DEFAULT                      # COCO detector, torchvision name (the default)
    model.weights=/models/frcnn_coco.pth       # same, from a local file
    model.weights=null                         # random init (the demo and tests)
    model.weights_backbone=IMAGENET1K_V1       # ImageNet ResNet-50 only

Layers whose shapes differ (the class head for 14 classes vs COCO's 91) stay at random init.
With any pretrained source the backbone uses frozen BatchNorm like torchvision and Detectron2;
from random init it uses trainable BatchNorm, which needs care at validation (see module.py).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn
from torchvision.models import ResNet50_Weights, resnet50
from torchvision.models.detection import FasterRCNN, FasterRCNN_ResNet50_FPN_Weights
from torchvision.models.detection.backbone_utils import _resnet_fpn_extractor
from torchvision.models.detection.faster_rcnn import TwoMLPHead
from torchvision.ops.misc import FrozenBatchNorm2d

from cxrdet.models.fp32_boxes import (
    Float32AnchorGenerator,
    Float32Predictor,
    Float32RPNHead,
    InputDtypeFrozenBatchNorm2d,
)
from cxrdet.models.rcnn.batched_rcnn import BatchedFasterRCNN
from cxrdet.models.rcnn.compile import compile_dense_part
from cxrdet.models.rcnn.transform import ResizeTransform
from cxrdet.models.weights import frozen_bn_eps as weights_bn_eps
from cxrdet.models.weights import load_weights, no_source

ROI_SIZE = 7  # the box head's ROIAlign output side (torchvision's MultiScaleRoIAlign default)
REPRESENTATION = 1024  # the box head's two FC layers (Detectron2: 2x FC 1024)
HEAD_INITS = ("torchvision", "detectron2")  # model.head_init
RCNN_IMPLS = ("batched", "torchvision")  # model.rcnn_impl


def build_fasterrcnn(
    num_classes: int = 14,
    image_size: int = 512,
    weights: str | None = None,
    weights_backbone: str | None = None,
    trainable_backbone_layers: int = 3,
    min_size: int | Sequence[int] | None = None,
    max_size: int | None = None,
    test_size: int | None = None,
    rpn_pre_nms_top_n_train: int = 2000,
    rpn_pre_nms_top_n_test: int = 1000,
    rpn_post_nms_top_n_train: int = 1000,
    rpn_post_nms_top_n_test: int = 1000,
    roi_batch_size_per_image: int = 512,
    rpn_batch_size_per_image: int = 256,
    box_score_thresh: float = 0.0,
    box_nms_thresh: float = 0.5,
    box_detections_per_img: int = 100,
    frozen_bn: bool | None = None,
    frozen_bn_eps: float | None = None,
    head_init: str = "torchvision",
    rcnn_impl: str = "batched",
    box_candidates_per_class: int | None = None,
    nms_method: str = "auto",
    channels_last: bool = False,
    compile: bool = False,
    compile_backend: str = "inductor",
    trust_weights: bool = False,
) -> FasterRCNN:
    """Faster R-CNN R50-FPN for ``num_classes`` foreground classes (+ background).

    Args:
        num_classes: foreground classes (14 findings, 15 with "No finding").
        image_size: the prepared image side the model is trained on (prediction converts
            DICOMs to it); also the input size when ``min_size``/``max_size`` are not given.
        weights: torchvision detector weights name (``DEFAULT``, ``COCO_V1``) or local file.
        weights_backbone: torchvision ResNet-50 weights name (``IMAGENET1K_V1``) or local file.
        trainable_backbone_layers: 0..5 ResNet stages trained when pretrained (else all 5).
        min_size: training shortest edge, or a list sampled per image (default ``image_size``).
        max_size: longest edge cap (default ``image_size``: no resizing at all).
        test_size: shortest edge at validation and prediction (default the largest ``min_size``).
        rpn_pre_nms_top_n_train: proposals per FPN level kept before the RPN's NMS, training.
        rpn_pre_nms_top_n_test: the same at inference.
        rpn_post_nms_top_n_train: proposals per image kept after the RPN's NMS, training
            (Detectron2: 1000; torchvision's own default: 2000).
        rpn_post_nms_top_n_test: the same at inference.
        roi_batch_size_per_image: sampled ROIs per image in the box head (seed: 512).
        rpn_batch_size_per_image: sampled anchors per image in the RPN.
        box_score_thresh: minimum score of returned detections.
        box_nms_thresh: per-class NMS IoU at inference.
        box_detections_per_img: maximum detections per image.
        frozen_bn: frozen BatchNorm in the backbone; default: when any weights are pretrained.
        frozen_bn_eps: frozen BatchNorm eps; default: 0 for torchvision's COCO weights (what they
            were trained with, recognised by name or, for a local file, by content), else 1e-5.
        head_init: how a box predictor not loaded from ``weights`` starts: ``torchvision``
            (nn.Linear's default, uniform within ±1/√1024) or ``detectron2`` (class weights
            N(0, 0.01), box weights N(0, 0.001), biases 0: FastRCNNOutputLayers').
        rcnn_impl: ``batched`` (:mod:`cxrdet.models.rcnn`: the RPN and box head over whole
            batches, the host out of the GPU's way) or ``torchvision`` (its per-image
            reference); the same modules and weights either way.
        box_candidates_per_class: at inference, each image's best boxes per class kept for NMS
            (``batched`` only; None: all).
        nms_method: how the ``batched`` implementation runs its NMS
            (:mod:`cxrdet.models.rcnn.nms`): ``auto`` (one torchvision call per group on the
            CPU, the matrix method with one host wait elsewhere), ``matrix`` or ``per_group``.
        channels_last: the convolutions' weights in channels-last memory order (NHWC), what
            tensor cores read; on the CPU it is about 10 % slower.
        compile: ``torch.compile`` backbone + FPN and the RPN head
            (:mod:`cxrdet.models.rcnn.compile`).
        compile_backend: ``inductor`` (the default) | ``aot_eager`` | ``eager``.
        trust_weights: load a local weights file that needs full unpickling instead of
            refusing it (:mod:`cxrdet.models.safe_load`).
    """
    if rcnn_impl not in RCNN_IMPLS:
        raise ValueError(f"model.rcnn_impl={rcnn_impl!r}: expected one of {', '.join(RCNN_IMPLS)}")
    weights = None if no_source(weights) else weights
    weights_backbone = None if no_source(weights_backbone) else weights_backbone
    pretrained = weights is not None or weights_backbone is not None
    frozen_bn = pretrained if frozen_bn is None else frozen_bn
    body = resnet50(norm_layer=InputDtypeFrozenBatchNorm2d if frozen_bn else nn.BatchNorm2d)
    if weights_backbone is not None and weights is None:  # the detector's weights cover it
        load_weights(
            body, weights_backbone, ResNet50_Weights, "model.weights_backbone", trust_weights
        )
    backbone = _resnet_fpn_extractor(body, trainable_backbone_layers if frozen_bn else 5)
    sizes = [image_size] if min_size is None else min_size
    sizes = tuple(int(s) for s in (sizes if isinstance(sizes, Sequence) else [sizes]))
    max_size = int(max_size or (image_size if min_size is None else 1333))
    # torchvision's R50-FPN heads, built in its order (so a seed gives the same init), with box
    # geometry kept in float32 under autocast (cxrdet.models.fp32_boxes).
    anchors = Float32AnchorGenerator()
    rpn_head = Float32RPNHead(backbone.out_channels, anchors.num_anchors_per_location()[0])
    box_head = TwoMLPHead(backbone.out_channels * ROI_SIZE**2, REPRESENTATION)
    box_predictor = Float32Predictor(REPRESENTATION, num_classes + 1)
    detector, extra = FasterRCNN, {}
    if rcnn_impl == "batched":
        detector = BatchedFasterRCNN
        extra = {"candidates_per_class": box_candidates_per_class, "nms_method": nms_method}
    model = detector(
        backbone,
        rpn_anchor_generator=anchors,
        rpn_head=rpn_head,
        box_head=box_head,
        box_predictor=box_predictor,
        min_size=sizes,
        max_size=max_size,
        rpn_pre_nms_top_n_train=rpn_pre_nms_top_n_train,
        rpn_pre_nms_top_n_test=rpn_pre_nms_top_n_test,
        rpn_post_nms_top_n_train=rpn_post_nms_top_n_train,
        rpn_post_nms_top_n_test=rpn_post_nms_top_n_test,
        rpn_batch_size_per_image=rpn_batch_size_per_image,
        box_batch_size_per_image=roi_batch_size_per_image,
        box_score_thresh=box_score_thresh,
        box_nms_thresh=box_nms_thresh,
        box_detections_per_img=box_detections_per_img,
        **extra,
    )
    t = model.transform
    model.transform = ResizeTransform(
        sizes, max_size, int(test_size or sizes[-1]), t.image_mean, t.image_std
    )
    loaded: set[str] = set()
    if weights is not None:
        loaded = load_weights(
            model, weights, FasterRCNN_ResNet50_FPN_Weights, "model.weights", trust_weights
        )
    if head_init not in HEAD_INITS:
        raise ValueError(f"model.head_init={head_init!r}: expected one of {', '.join(HEAD_INITS)}")
    predictor = model.roi_heads.box_predictor
    if head_init == "detectron2" and "roi_heads.box_predictor.cls_score.weight" not in loaded:
        nn.init.normal_(predictor.cls_score.weight, std=0.01)
        nn.init.normal_(predictor.bbox_pred.weight, std=0.001)
        for layer in (predictor.cls_score, predictor.bbox_pred):
            nn.init.constant_(layer.bias, 0.0)
    eps = weights_bn_eps(weights) if frozen_bn_eps is None else frozen_bn_eps
    for m in model.modules():
        if isinstance(m, FrozenBatchNorm2d):
            m.eps = eps
    if channels_last:
        model.to(memory_format=torch.channels_last)
    if compile:
        compile_dense_part(model, compile_backend)
    return model


def trainable_parameter_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """The trainable parameters in two groups: normalisation layers without weight decay
    (Detectron2's WEIGHT_DECAY_NORM 0, which matters when BatchNorm trains), the rest with it."""
    norm, other = [], []
    for module in model.modules():
        is_norm = isinstance(module, nn.modules.batchnorm._NormBase | nn.GroupNorm | nn.LayerNorm)
        for p in module.parameters(recurse=False):
            if p.requires_grad:
                (norm if is_norm else other).append(p)
    groups = [{"params": other, "weight_decay": weight_decay}]
    if norm:
        groups.append({"params": norm, "weight_decay": 0.0})
    return groups


def resolved_batchnorm(model_cfg: dict) -> dict:
    """``model_cfg`` with the BatchNorm its weights imply written out: ``frozen_bn`` (any
    pretrained source) and ``frozen_bn_eps`` (:func:`cxrdet.models.weights.frozen_bn_eps`),
    so that a checkpoint records them and loads the same without the starting weights."""
    pretrained = not all(no_source(model_cfg.get(k)) for k in ("weights", "weights_backbone"))
    out = dict(model_cfg)
    if out.get("frozen_bn") is None:
        out["frozen_bn"] = pretrained
    if out.get("frozen_bn_eps") is None:
        out["frozen_bn_eps"] = weights_bn_eps(out.get("weights"))
    return out
