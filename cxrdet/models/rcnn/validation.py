"""Validation's losses and detections of the same images from one pass where they can share it.

The seed measured validation loss (its LossEvalHook) by running the model in training mode,
and the metrics with a second, inference-mode pass. Both need the backbone + FPN features of
the same images, and, with the batched RPN, the same RPN head outputs: here they are computed
once and used twice, for the training-mode proposals and losses and for the inference-mode
proposals and detections. torchvision's own RPN (``model.rcnn_impl=torchvision``) computes its
head in each of its two calls.
"""

from __future__ import annotations

from contextlib import contextmanager

from torch import nn

from cxrdet.models.rcnn.batched_rpn import BatchedRPN
from cxrdet.models.rcnn.matching import refuse_degenerate_boxes


@contextmanager
def loss_mode(model: nn.Module):
    """Train mode (so torchvision returns losses) with every BatchNorm in eval mode.

    This is how the seed's LossEvalHook measured validation loss, minus its trap: in train mode
    BatchNorm would normalise with batch statistics and update its running buffers from
    validation images. Restores each module's previous mode on exit.
    """
    modes = {m: m.training for m in model.modules()}
    model.train()
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.eval()
    try:
        yield model
    finally:
        for m, mode in modes.items():
            m.train(mode)


def losses_and_detections(model: nn.Module, images: list, targets: list) -> tuple[dict, list]:
    """The validation losses (as :func:`loss_mode` measures them) and the detections of the same
    images (``model`` in eval mode, as Lightning validates).

    Backbone + FPN run once when training and testing resize to the same size (one training
    size equal to the test size: the default); with several training sizes, or a test size of
    its own, the loss is measured at a drawn training size as in training, and the detections
    take a second pass at the test size. The random draws (resize, ROI sampling) come in the
    same order as in two separate calls.
    """
    transform, rpn = model.transform, model.rpn
    refuse_degenerate_boxes(targets)
    original_sizes = [(int(im.shape[-2]), int(im.shape[-1])) for im in images]
    with loss_mode(model):
        image_list, loss_targets = transform(images, targets)
        features = model.backbone(image_list.tensors)
        sizes = image_list.image_sizes
        if isinstance(rpn, BatchedRPN):
            head = rpn.head_outputs(image_list, features)
            proposals = rpn.propose(head, sizes)
            rpn_losses = rpn.losses(head, loss_targets)
        else:
            proposals, rpn_losses = rpn(image_list, features, loss_targets)
        _, roi_losses = model.roi_heads(features, proposals, sizes, loss_targets)
    losses = {**rpn_losses, **roi_losses}
    if set(transform.train_sizes) != {transform.test_size}:
        return losses, model(images)
    if isinstance(rpn, BatchedRPN):
        proposals = rpn.propose(head, sizes)  # eval mode: the test-time top-n
    else:
        proposals, _ = rpn(image_list, features)
    detections, _ = model.roi_heads(features, proposals, sizes)
    return losses, transform.postprocess(detections, sizes, original_sizes)
