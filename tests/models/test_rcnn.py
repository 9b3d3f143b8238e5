"""The batched detector (``model.rcnn_impl=batched``) against torchvision's reference, stage by
stage: transform, decode + top-k + NMS, matching, sampling, losses, detections, the parts that
copy nothing from the host; validation's one pass; the compiled dense part. Where the limits
bind (512 px, quotas, the candidate cap): ``test_rcnn_limits.py``; host waits:
``test_host_waits.py``.

Both models share one state dict; the samplers take the first candidates by index (the batched
one through :func:`first_keys`, the reference through :class:`FirstSampler`), so that every
loss can be compared. Each comparison was seen failing against a deliberate break of the
batched path (noted in its docstring).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torchvision.models.detection._utils import Matcher
from torchvision.models.detection.image_list import ImageList
from torchvision.ops import box_iou

from cxrdet.data.dataset import unit_float
from cxrdet.inference.export import smooth_images
from cxrdet.models.detector import build_fasterrcnn
from cxrdet.models.rcnn.matching import batched_box_iou, match, pad_targets
from cxrdet.models.rcnn.sampling import BalancedSampler, FirstSampler, first_keys
from cxrdet.models.rcnn.validation import losses_and_detections

SIZE = 96


def _images(n: int, size: int = SIZE, seed: int = 0) -> list[torch.Tensor]:
    return [torch.from_numpy(x)[None] for x in smooth_images(n, size, seed)]  # uint8 [1, H, W]


def _targets(n: int, size: int = SIZE, seed: int = 0) -> list[dict]:
    """Boxes of several sizes; every fourth image has none."""
    g = torch.Generator().manual_seed(seed)
    targets = []
    for i in range(n):
        k = (3, 0, 1, 6)[i % 4]
        xy = torch.rand(k, 2, generator=g) * size * 0.6
        wh = torch.rand(k, 2, generator=g) * size * 0.35 + 4
        labels = torch.randint(1, 15, (k,), generator=g)
        targets.append({"boxes": torch.cat([xy, (xy + wh).clamp(max=size)], 1), "labels": labels})
    return targets


def _fixed_samplers(model) -> None:
    for part in (model.rpn, model.roi_heads):
        sampler = part.fg_bg_sampler
        if isinstance(sampler, BalancedSampler):
            sampler.keys = first_keys
        else:
            part.fg_bg_sampler = FirstSampler(
                sampler.batch_size_per_image, sampler.positive_fraction
            )


@pytest.fixture(scope="module")
def pair():
    """(reference, batched): the same weights, the same fixed sampling."""
    torch.manual_seed(0)
    options = {"num_classes": 14, "image_size": SIZE, "roi_batch_size_per_image": 64}
    reference = build_fasterrcnn(**options, rcnn_impl="torchvision")
    batched = build_fasterrcnn(**options, rcnn_impl="batched")
    batched.load_state_dict(reference.state_dict())
    for model in (reference, batched):
        _fixed_samplers(model)
    return reference, batched


def test_both_implementations_have_torchvision_s_state_dict_keys(pair):
    reference, batched = pair
    assert list(reference.state_dict()) == list(batched.state_dict())
    plain = build_fasterrcnn(num_classes=14, image_size=SIZE, rcnn_impl="torchvision")
    assert list(plain.state_dict()) == list(batched.state_dict())


def test_the_transform_normalises_uint8_as_the_float_loader_did():
    """The loader ships uint8 [1, H, W]; the model's transform must give the numbers the old
    float [3, H, W] images gave (fails if the scaling, the channel expansion or the order of
    the normalisation changes)."""
    model = build_fasterrcnn(num_classes=14, image_size=SIZE).eval()
    grey = _images(2)
    old = [(g.float().div_(255)).repeat(3, 1, 1) for g in grey]  # what to_tensor returned
    new_list, _ = model.transform(grey)
    old_list, _ = model.transform(old)
    assert new_list.tensors.shape == (2, 3, SIZE, SIZE)
    assert torch.equal(new_list.tensors, old_list.tensors)
    assert torch.equal(unit_float(torch.stack(grey)), torch.stack(old)[:, :1])


def test_an_image_at_its_size_is_not_resampled_and_equals_torchvision_s_interpolation():
    """Fails if skipping the identity resize changed a pixel (torchvision interpolates)."""
    from torchvision.models.detection.transform import _resize_image_and_masks

    model = build_fasterrcnn(num_classes=14, image_size=SIZE).eval()
    image = unit_float(_images(1)[0])
    same, _ = model.transform.resize(image)
    resampled, _ = _resize_image_and_masks(image, SIZE, SIZE)
    assert same is image and torch.equal(resampled, image)
    smaller, _ = build_fasterrcnn(num_classes=14, image_size=64).eval().transform.resize(image)
    assert smaller.shape[-2:] == (64, 64)


@pytest.mark.parametrize("training", [True, False], ids=["train-top-n", "test-top-n"])
def test_proposals_decode_top_k_and_nms_as_torchvision(pair, training):
    """Per image, the batched RPN's valid proposals are torchvision's, in the same order (fails
    if one group's NMS leaks into another, the clip or the small-box filter moves, or the
    top-n differs)."""
    reference, batched = pair
    images = _images(4)
    for model in pair:
        model.eval().rpn.train(training)  # BatchNorm's statistics stay as they are
    with torch.no_grad():
        image_list, _ = reference.transform(images)
        features = reference.backbone(image_list.tensors)
        decoded = _decoded(reference.rpn, image_list, features)
        sizes = image_list.image_sizes
        expected, _ = reference.rpn.filter_proposals(*decoded, sizes, _levels(features))
        head = batched.rpn.head_outputs(image_list, features)
        found = batched.rpn.propose(head, image_list.image_sizes)
    for i, boxes in enumerate(expected):
        got = found.boxes[i][found.valid[i]]
        assert len(got) == len(boxes) > 0
        torch.testing.assert_close(got, boxes, atol=1e-4, rtol=0)
        assert found.valid[i][: len(boxes)].all()  # the valid ones first, best first


def _decoded(rpn, image_list, features):
    from torchvision.models.detection.rpn import concat_box_prediction_layers

    maps = list(features.values())
    objectness, deltas = rpn.head(maps)
    anchors = rpn.anchor_generator(image_list, maps)
    objectness, deltas = concat_box_prediction_layers(objectness, deltas)
    proposals = rpn.box_coder.decode(deltas, anchors).view(len(anchors), -1, 4)
    return proposals, objectness


def _levels(features) -> list[int]:
    return [f.shape[-2] * f.shape[-1] * 3 for f in features.values()]


@pytest.mark.parametrize(
    ("high", "low", "low_quality"), [(0.7, 0.3, True), (0.5, 0.5, False)], ids=["rpn", "roi"]
)
def test_matching_equals_torchvision_s_matcher_per_image(high, low, low_quality):
    """Fails if padding matches anything, an empty image is not all background, or the
    low-quality rule (ties included) differs."""
    targets = _targets(6)
    g = torch.Generator().manual_seed(1)
    xy = torch.rand(300, 2, generator=g) * SIZE
    anchors = torch.cat([xy, xy + torch.rand(300, 2, generator=g) * 40 + 2], 1)
    anchors[7] = targets[0]["boxes"][0]  # exact copies: IoU ties at 1.0
    anchors[8] = targets[0]["boxes"][0]
    gt = pad_targets(targets, torch.float32, torch.device("cpu"))
    batched = match(batched_box_iou(gt.boxes, anchors), gt.valid, high, low, low_quality)
    matcher = Matcher(high, low, allow_low_quality_matches=low_quality)
    for i, t in enumerate(targets):
        if not len(t["boxes"]):
            assert (batched[i] == -1).all()  # torchvision: every anchor background
            continue
        torch.testing.assert_close(batched[i], matcher(box_iou(t["boxes"], anchors)))
    assert batched[0, 7] == batched[0, 8] == 0


def test_the_sampler_takes_the_first_candidates_as_the_reference_and_counts_alike():
    """Fixed keys take what FirstSampler takes; random keys keep torchvision's counts (fails if
    the positive cap, the fill with negatives or the ignored label -1 change)."""
    g = torch.Generator().manual_seed(2)
    labels = torch.randint(-1, 3, (5, 400), generator=g)
    labels[1, :] = 0  # no positive
    labels[2, :] = torch.where(labels[2] > 0, 1, -1)  # no negative
    labels[3, :10] = 1  # few of both
    labels[3, 10:30] = 0
    labels[3, 30:] = -1
    fixed = BalancedSampler(64, 0.25, keys=first_keys)
    pos, neg = fixed(labels)
    ref_pos, ref_neg = FirstSampler(64, 0.25)(list(labels))
    assert torch.equal(pos, torch.stack(ref_pos).bool())
    assert torch.equal(neg, torch.stack(ref_neg).bool())
    torch.manual_seed(0)
    pos, neg = BalancedSampler(64, 0.25)(labels)
    for i in range(len(labels)):
        n_pos = min(int((labels[i] >= 1).sum()), 16)
        n_neg = min(int((labels[i] == 0).sum()), 64 - n_pos)
        assert int(pos[i].sum()) == n_pos and int(neg[i].sum()) == n_neg
        assert (labels[i][pos[i]] >= 1).all() and (labels[i][neg[i]] == 0).all()
    # A uniform draw: over many draws every positive is taken about equally often.
    counts = torch.zeros(400)
    for _ in range(200):
        counts += BalancedSampler(64, 0.25)(labels)[0][0].float()
    taken = counts[labels[0] >= 1]
    assert taken.min() > 0.3 * taken.mean() and taken.max() < 1.7 * taken.mean()


def test_training_losses_and_gradients_equal_torchvision_s(pair):
    """The four losses to 1e-5 and the gradients of the box head (fails if a mask lets a
    background ROI into the box loss, the ROI slots change order or count, or a loss is
    divided by another count)."""
    reference, batched = pair
    images, targets = _images(4), _targets(4)
    grads = []
    losses = []
    for model in pair:
        model.train()
        model.zero_grad()
        out = model(images, targets)
        sum(out.values()).backward()
        losses.append(out)
        grads.append(model.roi_heads.box_predictor.bbox_pred.weight.grad.clone())
    assert losses[0].keys() == losses[1].keys()
    for k in losses[0]:
        torch.testing.assert_close(losses[1][k], losses[0][k], atol=1e-5, rtol=1e-5)
        assert losses[0][k] > 0
    torch.testing.assert_close(grads[1], grads[0], atol=1e-6, rtol=1e-4)
    for model in pair:
        model.zero_grad()


def test_detections_equal_torchvision_s(pair):
    """Every image's boxes, scores and labels, in order (fails if one image's or one class's
    NMS suppresses another's, the per-image top-100 differs, or boxes go unclipped)."""
    reference, batched = pair
    images = _images(4, seed=3)
    with torch.no_grad():
        expected = reference.eval()(images)
        found = batched.eval()(images)
    for e, f in zip(expected, found):
        assert len(e["boxes"]) == len(f["boxes"]) > 10
        torch.testing.assert_close(f["boxes"], e["boxes"], atol=1e-4, rtol=0)
        torch.testing.assert_close(f["scores"], e["scores"])
        assert torch.equal(f["labels"], e["labels"])


def test_the_host_free_parts_give_torchvision_s_numbers_bit_for_bit():
    """The box coder with Python constants, ROI pooling sorted by level and the host-side
    resize ratios: torchvision's results exactly, gradients too, a NaN box included (fails if
    an operation's order or a constant's dtype changes)."""
    from torchvision.models.detection._utils import BoxCoder
    from torchvision.models.detection.transform import resize_boxes
    from torchvision.ops import MultiScaleRoIAlign

    from cxrdet.models.rcnn.box_coder import HostFreeBoxCoder
    from cxrdet.models.rcnn.roi_align import LevelSortedRoIAlign

    g = torch.Generator().manual_seed(5)
    xy = torch.rand(300, 2, generator=g) * 400
    a = torch.cat([xy, xy + 2 + torch.rand(300, 2, generator=g) * 300], 1)
    b = a + torch.rand(300, 4, generator=g) * torch.tensor([-9.0, -9.0, 9.0, 9.0])  # grown
    codes = torch.randn(300, 8, generator=g)
    for weights in ((1.0, 1.0, 1.0, 1.0), (10.0, 10.0, 5.0, 5.0)):
        coder = BoxCoder(weights)
        ours = HostFreeBoxCoder.like(coder)
        assert torch.equal(ours.encode_single(b, a), coder.encode_single(b, a))
        assert torch.equal(ours.decode_single(codes, a), coder.decode_single(codes, a))
    assert torch.equal(
        build_fasterrcnn(num_classes=14, image_size=64).transform._scaled(
            a, [333, 517], [512, 800]
        ),
        resize_boxes(a, [333, 517], [512, 800]),
    )
    names = ["0", "1", "2", "3"]
    features = {k: torch.randn(2, 8, s, s, generator=g, requires_grad=True)
                for k, s in zip(names, (128, 64, 32, 16))}  # fmt: skip
    nan = torch.full((1, 4), float("nan"))  # a diverged box: no level, pooled to zeros
    boxes = [torch.cat([a[:150], nan]), a[150:]]  # 32-400 px: every level gets ROIs
    pooled = []
    for pool in (MultiScaleRoIAlign(names, 7, 2), LevelSortedRoIAlign(names, 7, 2)):
        out = pool(features, boxes, [(512, 512)] * 2)
        grads = torch.autograd.grad(out.square().sum(), list(features.values()))
        pooled.append((out, grads))
    assert torch.equal(pooled[0][0], pooled[1][0])
    assert all(torch.equal(x, y) for x, y in zip(pooled[0][1], pooled[1][1]))


@pytest.mark.parametrize("impl", ["batched", "torchvision"])
def test_validation_s_one_pass_equals_two_separate_calls_for_both(impl):
    """Validation's shared pass gives the losses of a loss-mode call and the detections of an
    eval call (fails if the batched RPN's head outputs are reused across modes wrongly)."""
    torch.manual_seed(0)
    model = build_fasterrcnn(
        num_classes=14, image_size=64, rcnn_impl=impl, roi_batch_size_per_image=32
    ).eval()
    _fixed_samplers(model)
    images, targets = _images(2, 64), _targets(2, 64)
    with torch.no_grad():
        from cxrdet.models.rcnn.validation import loss_mode

        with loss_mode(model):
            two_losses = model(images, targets)
        two_dets = model(images)
        losses, dets = losses_and_detections(model, images, targets)
    for k in losses:
        torch.testing.assert_close(losses[k], two_losses[k], atol=1e-6, rtol=0)
    for a, b in zip(dets, two_dets):
        torch.testing.assert_close(a["boxes"], b["boxes"])
        torch.testing.assert_close(a["scores"], b["scores"])


def test_the_compiled_dense_part_gives_eager_s_losses_and_detections():
    """``model.compile=true`` (graph capture with the "eager" backend on the CPU: inductor's
    code generation costs minutes here and is torch's to test): the same losses and
    detections, the same state-dict keys. Fails if a layer in the compiled region breaks the
    graph wrongly or the keys gain torch.compile's prefix."""
    torch.manual_seed(0)
    options = {"num_classes": 14, "image_size": 64, "roi_batch_size_per_image": 32}
    eager = build_fasterrcnn(**options)
    compiled = build_fasterrcnn(**options, compile=True, compile_backend="eager")
    compiled.load_state_dict(eager.state_dict())
    assert list(compiled.state_dict()) == list(eager.state_dict())
    for model in (eager, compiled):
        _fixed_samplers(model)
    images, targets = _images(2, 64), _targets(2, 64)
    losses = [m.train()(images, targets) for m in (eager, compiled)]
    for k in losses[0]:
        torch.testing.assert_close(losses[1][k], losses[0][k], atol=1e-5, rtol=1e-5)
    with torch.no_grad():
        dets = [m.eval()(images) for m in (eager, compiled)]
    for a, b in zip(*dets):
        torch.testing.assert_close(b["boxes"], a["boxes"], atol=1e-4, rtol=0)
        torch.testing.assert_close(b["scores"], a["scores"], atol=1e-5, rtol=0)


def test_channels_last_keeps_the_numbers_and_the_keys():
    torch.manual_seed(0)
    plain = build_fasterrcnn(num_classes=14, image_size=64).eval()
    nhwc = build_fasterrcnn(num_classes=14, image_size=64, channels_last=True).eval()
    nhwc.load_state_dict(plain.state_dict())
    conv = nhwc.backbone.body.conv1.weight
    assert conv.is_contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        a, b = plain(_images(1, 64)), nhwc(_images(1, 64))
    torch.testing.assert_close(b[0]["scores"], a[0]["scores"], atol=1e-4, rtol=1e-4)
    assert np.array_equal(a[0]["labels"].numpy(), b[0]["labels"].numpy())


def test_a_missing_target_and_an_unknown_impl_are_named():
    with pytest.raises(ValueError, match="rcnn_impl='fast'"):
        build_fasterrcnn(num_classes=14, image_size=64, rcnn_impl="fast")
    model = build_fasterrcnn(num_classes=14, image_size=64).train()
    with pytest.raises(ValueError, match="targets should be passed"):
        model(_images(1, 64))
    assert isinstance(ImageList, type)
