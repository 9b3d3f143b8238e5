"""Where a CUDA host would wait, counted on the CPU (cxrdet.models.rcnn.syncs.HostWaits): the
counter sees each kind of wait and nothing that stays on the host; the batched detector's
training step, validation batch and prediction batch wait a fixed number of times, at or under
target, whatever the batch size."""

from __future__ import annotations

import torch
from test_rcnn import _images, _targets

from cxrdet.models.detector import build_fasterrcnn
from cxrdet.models.rcnn.syncs import HostWaits, count_waits, training_step_counts
from cxrdet.models.rcnn.validation import losses_and_detections

TRAIN, VALIDATE, PREDICT = 6, 8, 8  # waits per training step / validation / prediction batch


def test_the_counter_sees_every_kind_of_wait_and_nothing_that_stays_on_the_host():
    """Fails if a kind of wait goes unseen (each line is one) or host work is counted."""
    device = torch.device("cpu")
    x = torch.arange(10.0, device=device)
    w = torch.rand(10, requires_grad=True, device=device)
    with HostWaits() as waits:
        x.tolist()
        x[0].item()
        bool(x[1] > 0)
        int(x[2])
        x.cpu()
        x.numpy()
        torch.equal(x, x)
        x[x > 3]
        torch.where(x > 2)
        torch.unique(x)
        torch.repeat_interleave(x, x.long())
        torch.tensor([1.0, 2.0], device=device)
        torch.as_tensor([1.0], device=device)
        torch.tensor([3.0]).to(device)
        w[x > 3].sum().backward()  # forward and backward each index with the mask
        host = torch.tensor([1.0, 2.0])  # host work: none of these waits
        (host * 2).sum().item()
        host.tolist()
        torch.zeros(3).numpy()
        torch.full((2,), 3.0, device=device)  # a fill with a kernel argument: no copy
        x.to(torch.float64)
    assert waits.summary()["by_what"] == {
        "tolist": 1,
        "item": 1,
        "bool": 1,
        "int": 1,
        "cpu": 1,
        "numpy": 1,
        "equal": 1,
        "boolean index": 3,
        "nonzero": 1,
        "unique": 1,
        "repeat_interleave": 1,
        "torch.tensor(device=)": 1,
        "torch.as_tensor(device=)": 1,
        ".to(device)": 1,
    }
    assert {w.kind for w in waits.waits} == {"read", "shape", "copy"}
    assert all("test_host_waits.py" in w.site for w in waits.waits)


def _counts(impl: str, n: int, size: int = 32) -> dict:
    torch.manual_seed(0)
    model = build_fasterrcnn(
        num_classes=14,
        image_size=size,
        rcnn_impl=impl,
        roi_batch_size_per_image=64,
        box_candidates_per_class=100,
        nms_method="matrix",  # what a GPU runs (model.nms_method=auto)
    )
    images, targets = _images(n, size), _targets(n, size)
    model.train()(images, targets)  # warm-up: anchors cached, pooler scales set
    train = training_step_counts(model, images, targets)["waits"]
    model.eval()
    with torch.no_grad():
        predict = count_waits(lambda: model(images))["waits"]
        validate = count_waits(lambda: losses_and_detections(model, images, targets))["waits"]
    return {"train": train, "validate": validate, "predict": predict}


def test_the_batched_detector_waits_a_fixed_number_of_times_at_or_under_target():
    """Training step <= 6, validation batch <= 8, prediction batch <= 8, the same at batch 4
    and 8 (fails when a per-image copy, read or loop comes back: the box coder's constants,
    image sizes, resize_boxes per image, per-level ROI pooling, one NMS call per group)."""
    four, eight = _counts("batched", 4), _counts("batched", 8)
    assert four == eight
    assert four["train"] <= TRAIN and four["validate"] <= VALIDATE and four["predict"] <= PREDICT


def test_torchvision_s_reference_waits_per_image_for_the_record():
    four, eight = _counts("torchvision", 4), _counts("torchvision", 8)
    assert eight["train"] > four["train"] > 12 and eight["predict"] > four["predict"]


def test_multi_scale_training_resizes_boxes_without_a_wait_per_image():
    """Images resized to sizes drawn per image, their boxes with them: no more waits than a
    step at one size (fails if resize_boxes makes device tensors per image: 8 more here)."""
    torch.manual_seed(0)
    model = build_fasterrcnn(
        num_classes=14,
        image_size=64,
        min_size=[48, 64],
        max_size=64,
        roi_batch_size_per_image=32,
        nms_method="matrix",
    )
    images = [torch.nn.functional.pad(im, (0, 16, 0, 16)) for im in _images(4)]  # 80 px
    targets = _targets(4, 80)
    model.train()(images, targets)
    assert training_step_counts(model, images, targets)["waits"] <= TRAIN
