"""Model building, empty images, BatchNorm-safe validation loss and schedule."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from cxrdet.models.detector import build_fasterrcnn, trainable_parameter_groups
from cxrdet.models.rcnn.validation import loss_mode, losses_and_detections
from cxrdet.models.schedule import warmup_cosine, warmup_cosine_scheduler


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return build_fasterrcnn(num_classes=14, image_size=64, roi_batch_size_per_image=32)


def _batch(with_box: bool):
    images = [torch.rand(3, 64, 64), torch.rand(3, 64, 64)]
    targets = [
        {"boxes": torch.zeros((0, 4)), "labels": torch.zeros(0, dtype=torch.int64)},
        {
            "boxes": torch.tensor([[8.0, 8, 40, 40]]) if with_box else torch.zeros((0, 4)),
            "labels": torch.tensor([4]) if with_box else torch.zeros(0, dtype=torch.int64),
        },
    ]
    return images, targets


@pytest.mark.parametrize("with_box", [False, True])
def test_empty_images_train_and_eval(model, with_box):
    images, targets = _batch(with_box)
    model.train()
    losses = model(images, targets)
    assert set(losses) == {"loss_classifier", "loss_box_reg", "loss_objectness", "loss_rpn_box_reg"}
    total = sum(losses.values())
    assert torch.isfinite(total)
    total.backward()
    model.zero_grad()
    model.eval()
    with torch.no_grad():
        out = model(images)
    assert len(out) == 2 and all(o["boxes"].shape[1] == 4 for o in out)


def test_random_init_trains_its_batchnorm(model):
    norms = [m for m in model.backbone.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert len(norms) == 53 and all(p.requires_grad for m in norms for p in m.parameters())
    before = {k: v.clone() for k, v in model.state_dict().items()}
    model.train()
    images, targets = _batch(True)
    sum(model(images, targets).values()).backward()
    torch.optim.SGD(model.parameters(), lr=0.1).step()
    model.zero_grad()
    after = model.state_dict()
    for name in ("weight", "bias", "running_mean", "running_var"):  # learned, and tracked
        key = f"backbone.body.layer1.0.bn1.{name}"
        assert not torch.equal(before[key], after[key]), key
    model.load_state_dict(before)  # the fixture is shared


def test_validation_loss_leaves_batchnorm_buffers_unchanged(model):
    model.eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    images, targets = _batch(True)
    with torch.no_grad(), loss_mode(model):
        losses = model([i * 5 + 3 for i in images], targets)  # very unlike anything seen
    assert torch.isfinite(sum(losses.values()))
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert not model.training  # the previous mode is restored
    # Without the guard, the same call would move the running statistics.
    model.train()
    with torch.no_grad():
        model([i * 5 + 3 for i in images], targets)
    bn = [k for k in before if k.endswith("running_mean")]
    assert any(not torch.equal(before[k], model.state_dict()[k]) for k in bn)
    model.load_state_dict(before)


@pytest.mark.parametrize(
    "sizes",
    [{}, {"min_size": [48, 64], "max_size": 1333, "test_size": 64}],
    ids=["one-size-one-backbone-pass", "multi-scale-two-passes"],
)
def test_validation_s_losses_and_detections_equal_two_separate_calls(sizes):
    torch.manual_seed(0)
    model = build_fasterrcnn(image_size=64, roi_batch_size_per_image=32, **sizes).eval()
    images, targets = _batch(True)
    torch.manual_seed(7)  # the ROI sampling (and a multi-scale resize) draw from here
    with torch.no_grad(), loss_mode(model):
        two_losses = model(images, targets)
    with torch.no_grad():
        two_dets = model(images)
    torch.manual_seed(7)
    calls = []
    hook = model.backbone.register_forward_hook(lambda *a: calls.append(1))
    with torch.no_grad():
        losses, dets = losses_and_detections(model, images, targets)
    hook.remove()
    assert len(calls) == (1 if not sizes else 2)  # one backbone + FPN pass where sizes agree
    assert losses.keys() == two_losses.keys()
    for k in losses:
        torch.testing.assert_close(losses[k], two_losses[k], atol=1e-5, rtol=0)
    assert not model.training and len(dets) == len(two_dets) == 2
    for a, b in zip(dets, two_dets):
        assert len(a["boxes"]) > 0
        for k in ("boxes", "scores", "labels"):
            torch.testing.assert_close(a[k], b[k], atol=1e-5, rtol=0)


def test_rpn_top_k_follows_detectron2_by_default_and_the_keys():
    model = build_fasterrcnn(image_size=64)
    assert model.rpn._pre_nms_top_n == {"training": 2000, "testing": 1000}
    assert model.rpn._post_nms_top_n == {"training": 1000, "testing": 1000}
    other = build_fasterrcnn(image_size=64, rpn_post_nms_top_n_train=300, rpn_pre_nms_top_n_test=50)
    assert (
        other.rpn._post_nms_top_n["training"] == 300 and other.rpn._pre_nms_top_n["testing"] == 50
    )


def test_normalisation_parameters_get_no_weight_decay(model):
    groups = trainable_parameter_groups(model, 1e-4)
    decayed, undecayed = groups
    bn = [p for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d) for p in m.parameters()]
    assert undecayed["weight_decay"] == 0.0 and decayed["weight_decay"] == 1e-4
    assert {id(p) for p in undecayed["params"]} == {id(p) for p in bn}
    trainable = {id(p) for p in model.parameters() if p.requires_grad}
    assert {id(p) for g in groups for p in g["params"]} == trainable
    frozen = build_fasterrcnn(image_size=64, frozen_bn=True)
    assert len(trainable_parameter_groups(frozen, 1e-4)) == 1  # frozen BatchNorm has no parameters
    from cxrdet.models.module import DetectorModule

    module = DetectorModule(
        model={"num_classes": 14, "image_size": 64},
        optim={"_target_": "torch.optim.SGD", "_partial_": True, "lr": 0.01, "weight_decay": 1e-4},
    )
    optimizer = module.configure_optimizers()
    assert [g["weight_decay"] for g in optimizer.param_groups] == [1e-4, 0.0]


def _stand_in_heads(model, seen: list):
    """Replace the RPN and box head by a detector that returns one box at fixed fractions of
    whatever input size the transform produced, and records those sizes."""

    def rpn(images, features, targets=None):
        return [None] * len(images.image_sizes), {}

    def roi_heads(features, proposals, image_sizes, targets=None):
        seen.append(list(image_sizes))
        box = lambda h, w: torch.tensor([[0.1 * w, 0.2 * h, 0.5 * w, 0.9 * h]])  # noqa: E731
        dets = [
            {"boxes": box(h, w), "scores": torch.tensor([0.9]), "labels": torch.tensor([4])}
            for h, w in image_sizes
        ]
        return dets, {}

    model.rpn.forward, model.roi_heads.forward = rpn, roi_heads


def test_min_size_list_and_test_size_map_boxes_back_to_original_pixels(tiny_data):
    from cxrdet.data.dataset import ImageDataset
    from cxrdet.inference.prediction_pass import PassOptions, predict_dataset

    torch.manual_seed(0)
    model = build_fasterrcnn(image_size=64, min_size=[96, 128], max_size=1333, test_size=160)
    seen = []
    _stand_in_heads(model, seen)
    model.transform.train()
    sizes = {
        tuple(s) for _ in range(8) for s in model.transform([torch.rand(3, 64, 64)])[0].image_sizes
    }
    assert sizes == {(96, 96), (128, 128)}  # drawn per image from the list
    model.eval()
    prepared = tiny_data["prepared"] / "64"
    dataset = ImageDataset(prepared / "test", prepared / "test_meta.csv")
    results, errors, _ = predict_dataset(
        [model], dataset, "cpu", PassOptions(batch_size=2, progress=False)
    )
    assert not errors and {tuple(s) for batch in seen for s in batch} == {(160, 160)}
    for image_id, (boxes, _, classes) in results.items():
        h, w = dataset.meta.at[image_id, "dim0"], dataset.meta.at[image_id, "dim1"]
        np.testing.assert_allclose(boxes, [[0.1 * w, 0.2 * h, 0.5 * w, 0.9 * h]], rtol=1e-5)
        assert classes.tolist() == [3]


def test_warmup_cosine_known_steps():
    f = lambda s: warmup_cosine(s, total_steps=1000, warmup_steps=100, warmup_factor=0.001)  # noqa: E731
    assert f(0) == pytest.approx(0.001)
    assert f(50) == pytest.approx((0.001 * 0.5 + 0.5) * 0.5 * (1 + math.cos(math.pi * 0.05)))
    assert f(100) == pytest.approx(0.5 * (1 + math.cos(math.pi * 0.1)))
    assert f(500) == pytest.approx(0.5)
    assert f(1000) == 0.0 and f(2000) == 0.0
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.02)
    sched = warmup_cosine_scheduler(opt, total_steps=1000, warmup_steps=100)
    lrs = []
    for _ in range(501):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert lrs[0] == pytest.approx(0.02 * 0.001) and lrs[500] == pytest.approx(0.01)
    assert max(lrs) == pytest.approx(0.02 * f(100), rel=1e-6)
