"""Model building, empty images, BatchNorm-safe validation loss and schedule."""

from __future__ import annotations

import math

import pytest
import torch

from cxrdet.model import build_fasterrcnn, load_matching
from cxrdet.module import loss_mode
from cxrdet.schedule import warmup_cosine, warmup_cosine_scheduler


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


def test_random_init_uses_trainable_batchnorm(model):
    assert any(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules())


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


def test_local_weights_skip_mismatched_head(tmp_path, model):
    other = build_fasterrcnn(num_classes=90, image_size=64)
    path = tmp_path / "coco_like.pth"
    torch.save(other.state_dict(), path)
    fresh = build_fasterrcnn(num_classes=14, image_size=64, weights=str(path), frozen_bn=False)
    got = fresh.state_dict()
    assert torch.equal(
        got["backbone.body.conv1.weight"], other.state_dict()["backbone.body.conv1.weight"]
    )
    assert got["roi_heads.box_predictor.cls_score.weight"].shape[0] == 15
    with pytest.raises(FileNotFoundError, match="missing.pth"):
        load_matching(model, tmp_path / "missing.pth")


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
