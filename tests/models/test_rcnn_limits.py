"""The batched detector against torchvision's where its limits bind, at 512 px: the RPN's
post-NMS top-n, the samplers' quotas (more positives than the quota, and fewer), the
per-class candidate cap; the grouped NMS (both methods) against torchvision's per group,
suppression chains longer than one round included; ground-truth boxes without area refused.

Stage-level, on synthetic head outputs, features and proposals (no backbone pass), so each
limit is met for certain and cheaply; both implementations share weights and take the first
candidates by index (``first_keys`` / ``FirstSampler``). Each comparison was seen failing with
the line that enforces its limit removed (noted in its docstring).
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from test_rcnn import _fixed_samplers
from torchvision.models.detection.image_list import ImageList
from torchvision.ops import batched_nms, box_iou, clip_boxes_to_image, nms, remove_small_boxes

from cxrdet.models.detector import build_fasterrcnn
from cxrdet.models.rcnn import nms as nms_module
from cxrdet.models.rcnn.batched_rpn import HeadOutputs, Proposals
from cxrdet.models.rcnn.nms import grouped_nms
from cxrdet.models.rcnn.validation import losses_and_detections

SIZE = 512
METHODS = ["per_group", "matrix"]
LEVELS = {"0": 128, "1": 64, "2": 32, "3": 16, "pool": 8}  # FPN maps at 512 px


@pytest.fixture(scope="module")
def pair():
    """(reference, batched) at 512 px: the same weights, the same fixed sampling."""
    torch.manual_seed(0)
    reference = build_fasterrcnn(num_classes=14, image_size=SIZE, rcnn_impl="torchvision")
    batched = build_fasterrcnn(num_classes=14, image_size=SIZE, rcnn_impl="batched")
    batched.load_state_dict(reference.state_dict())
    for model in (reference, batched):
        _fixed_samplers(model)
    return reference, batched


def _head(rpn, n: int, seed: int = 0) -> HeadOutputs:
    """Random objectness and deltas for every anchor of n 512-px images; no two objectness
    scores of an image tie (torchvision orders ties in its own way)."""
    g = torch.Generator().manual_seed(seed)
    maps = [torch.empty(1, 256, s, s) for s in LEVELS.values()]
    anchors = rpn.anchors(ImageList(torch.empty(1, 3, SIZE, SIZE), [(SIZE, SIZE)]), maps)
    per_level = [3 * s * s for s in LEVELS.values()]
    a = anchors.shape[0]
    objectness = torch.stack([torch.randperm(a, generator=g) for _ in range(n)]) * (6 / a) - 3
    deltas = torch.randn(n, a, 4, generator=g) * 0.2
    return HeadOutputs(objectness, deltas, anchors, per_level)


def _grid_targets() -> list[dict]:
    """Image 0: 36 boxes of 64 px centred on P3 anchors (about 5 positive anchors each: more
    than the RPN's 128); image 1: one box (fewer); image 2: none."""
    centres = torch.arange(40, 480, 80, dtype=torch.float32)
    cy, cx = torch.meshgrid(centres, centres, indexing="ij")
    many = torch.stack([cx - 32, cy - 32, cx + 32, cy + 32], -1).reshape(-1, 4)
    one = torch.tensor([[100.0, 120.0, 230.0, 260.0]])
    empty = torch.zeros(0, 4)
    return [
        {"boxes": b, "labels": torch.arange(len(b)) % 14 + 1, "image_id": f"img{i}"}
        for i, b in enumerate((many, one, empty))
    ]


@pytest.mark.parametrize("method", METHODS)
def test_proposals_equal_torchvision_s_where_the_post_nms_cut_binds(pair, method):
    """More proposals survive NMS than post_nms_top_n keeps (1,000 here): each image's kept
    proposals are torchvision's, best first. Fails with the cut removed (more come back) or
    one group's NMS leaking into another's."""
    reference, batched = pair
    rpn = batched.rpn.train()
    reference.rpn.train()
    rpn.nms_method = method
    head = _head(rpn, 2)
    sizes = [(SIZE, SIZE)] * 2
    decoded = rpn.box_coder.decode_single(head.deltas.reshape(-1, 4), head.anchors.repeat(2, 1))
    args = (decoded.reshape(2, -1, 4), head.objectness, sizes, head.anchors_per_level)
    with torch.no_grad():
        expected, _ = reference.rpn.filter_proposals(*args)
        found = rpn.propose(head, sizes)
        post = reference.rpn._post_nms_top_n
        reference.rpn._post_nms_top_n = {"training": 10**6, "testing": 10**6}
        uncut, _ = reference.rpn.filter_proposals(*args)
        reference.rpn._post_nms_top_n = post
    rpn.nms_method = "auto"
    for i, boxes in enumerate(expected):
        assert len(uncut[i]) > len(boxes) == rpn.post_nms_top_n() == 1000  # the cut binds
        assert int(found.valid[i].sum()) == len(boxes)
        torch.testing.assert_close(found.boxes[i][found.valid[i]], boxes, atol=0, rtol=0)


def test_rpn_losses_equal_torchvision_s_where_the_sampler_quota_binds(pair):
    """Image 0 has more positive anchors than the quota (128 of 256), image 1 fewer (the
    negatives fill the rest), image 2 none. Fails with the positive cap removed from the
    sampler or the negatives' fill not reduced by the positives taken."""
    reference, batched = pair
    head = _head(batched.rpn, 3, seed=1)
    targets = _grid_targets()
    anchors = [head.anchors] * 3
    labels, matched = reference.rpn.assign_targets_to_anchors(anchors, targets)
    positives = [int((lab == 1).sum()) for lab in labels]
    assert positives[0] > 128 > positives[1] > 0 and positives[2] == 0
    regression = reference.rpn.box_coder.encode(matched, anchors)
    expected = reference.rpn.compute_loss(
        head.objectness.reshape(-1, 1), head.deltas.reshape(-1, 4), labels, regression
    )
    found = batched.rpn.losses(head, targets)
    torch.testing.assert_close(found["loss_objectness"], expected[0], atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(found["loss_rpn_box_reg"], expected[1], atol=1e-6, rtol=1e-5)


def _features(n: int, seed: int = 0) -> dict:
    g = torch.Generator().manual_seed(seed)
    return {k: torch.randn(n, 256, s, s, generator=g) for k, s in LEVELS.items()}


def _jittered(boxes: torch.Tensor, copies: int, g) -> torch.Tensor:
    """``copies`` of each box, corners moved by up to 6 % of its size (IoU well above 0.5)."""
    b = boxes.repeat_interleave(copies, 0)
    wh = (b[:, 2:] - b[:, :2]).repeat(1, 2)
    return b + (torch.rand(b.shape, generator=g) - 0.5) * 0.12 * wh


def _random_boxes(n: int, g) -> torch.Tensor:
    xy = torch.rand(n, 2, generator=g) * (SIZE - 60)
    return torch.cat([xy, xy + 8 + torch.rand(n, 2, generator=g) * 50], 1)


def test_box_head_losses_equal_torchvision_s_where_the_sampler_quota_binds(pair):
    """Image 0's proposals hold more positives than the box head's quota (128 of 512), image
    1's fewer, and image 1 has fewer proposals (padding). Fails with the positive cap or the
    negatives' fill removed, or padded proposals sampled."""
    reference, batched = pair
    g = torch.Generator().manual_seed(2)
    targets = _grid_targets()[:2]
    gt0, gt1 = targets[0]["boxes"][:20], targets[1]["boxes"]
    targets[0] = {**targets[0], "boxes": gt0, "labels": targets[0]["labels"][:20]}
    proposals = [  # negatives first: a sampler over its quota would fill the slots with them
        torch.cat([_random_boxes(500, g), _jittered(gt0, 25, g)]),
        torch.cat([_random_boxes(300, g), _jittered(gt1, 20, g)]),
    ]
    for t, p in zip(targets, proposals):
        candidates = torch.cat([p, t["boxes"]])
        t["positives"] = int((box_iou(t["boxes"], candidates).max(0).values >= 0.5).sum())
    assert targets[0]["positives"] > 128 > targets[1]["positives"] > 0
    padded = torch.zeros(2, 1000, 4)
    valid = torch.zeros(2, 1000, dtype=torch.bool)
    for i, p in enumerate(proposals):
        padded[i, : len(p)], valid[i, : len(p)] = p, True
    features, shapes = _features(2), [(SIZE, SIZE)] * 2
    targets = [{k: t[k] for k in ("boxes", "labels")} for t in targets]
    reference.roi_heads.train()
    batched.roi_heads.train()
    _, expected = reference.roi_heads(features, [p.clone() for p in proposals], shapes, targets)
    _, found = batched.roi_heads(features, Proposals(padded, valid), shapes, targets)
    for k in expected:
        torch.testing.assert_close(found[k], expected[k], atol=1e-6, rtol=1e-5)


def _capped_reference(heads, features, proposals, shapes, cap: int) -> list[dict]:
    """torchvision's ``postprocess_detections`` with each image's best ``cap`` candidates per
    class (after its score and size filters) going into its per-class NMS."""
    pooled = heads.box_roi_pool(features, proposals, shapes)
    class_logits, box_regression = heads.box_predictor(heads.box_head(pooled))
    boxes_all = heads.box_coder.decode(box_regression, proposals)
    scores_all = F.softmax(class_logits, -1)
    out = []
    for boxes, scores, shape in zip(
        boxes_all.split([len(p) for p in proposals]),
        scores_all.split([len(p) for p in proposals]),
        shapes,
    ):
        boxes = clip_boxes_to_image(boxes, shape)[:, 1:].reshape(-1, 4)
        labels = torch.arange(scores.shape[1]).expand_as(scores)[:, 1:].reshape(-1)
        scores = scores[:, 1:].reshape(-1)
        keep = torch.where(scores > heads.score_thresh)[0]
        keep = keep[remove_small_boxes(boxes[keep], 1e-2)]
        capped = []
        for c in labels[keep].unique():
            mine = keep[labels[keep] == c]
            capped.append(mine[scores[mine].topk(min(cap, len(mine))).indices])
        keep = torch.cat(capped)
        keep = keep[batched_nms(boxes[keep], scores[keep], labels[keep], heads.nms_thresh)]
        keep = keep[: heads.detections_per_img]
        out.append({"boxes": boxes[keep], "scores": scores[keep], "labels": labels[keep]})
    return out


@pytest.mark.parametrize("method", METHODS)
def test_detections_equal_torchvision_s_where_the_candidate_cap_binds(pair, method):
    """1,000 proposals per image, every class a candidate at each (random init): the default
    cap of 100 per class binds. Boxes, scores and labels in order equal torchvision's
    post-processing with the same cap, every detection kept (``detections_per_img`` 1,400,
    so that what the cap leaves out shows). Fails with the cap removed or one (image, class)
    group's NMS reaching another's."""
    reference, batched = pair
    heads = batched.roi_heads.eval()
    heads.candidates_per_class, heads.nms_method = 100, method
    heads.detections_per_img = reference.roi_heads.detections_per_img = 1400
    g = torch.Generator().manual_seed(3)
    proposals = [_random_boxes(1000, g) for _ in range(2)]
    features, shapes = _features(2, seed=3), [(SIZE, SIZE)] * 2
    with torch.no_grad():
        expected = _capped_reference(reference.roi_heads, features, proposals, shapes, 100)
        found = heads(
            features,
            Proposals(torch.stack(proposals), torch.ones(2, 1000, dtype=torch.bool)),
            shapes,
        )[0]
    heads.candidates_per_class, heads.nms_method = None, "auto"
    heads.detections_per_img = reference.roi_heads.detections_per_img = 100
    for e, f in zip(expected, found):
        assert 100 < len(f["boxes"]) == len(e["boxes"]) < 1400
        torch.testing.assert_close(f["scores"], e["scores"], atol=0, rtol=0)  # best first
        e, f = _in_tie_order(e), _in_tie_order(f)  # softmax scores tie; each orders ties its way
        torch.testing.assert_close(f["boxes"], e["boxes"], atol=0, rtol=0)
        torch.testing.assert_close(f["scores"], e["scores"], atol=0, rtol=0)
        assert torch.equal(f["labels"], e["labels"])


def _in_tie_order(d: dict) -> dict:
    """Detections sorted by score, then label, then box: one order for equal scores."""
    keys = torch.cat(
        [-d["scores"][:, None].double(), d["labels"][:, None].double(), d["boxes"].double()], 1
    )
    order = sorted(range(len(keys)), key=lambda i: keys[i].tolist())
    return {k: v[order] for k, v in d.items()}


def _chain(n: int) -> torch.Tensor:
    """n boxes in a row, each overlapping the next by IoU 0.6 and the one after by less:
    greedy NMS keeps every other one, and the matrix method needs ~n iterations."""
    x = torch.arange(n, dtype=torch.float32) * 25.0
    return torch.stack([x, torch.zeros(n), x + 100, torch.full((n,), 100.0)], 1)


@pytest.mark.parametrize("method", METHODS)
def test_grouped_nms_equals_torchvision_s_per_group_with_chains_longer_than_a_round(method):
    """Random groups and blocks of another size, invalid boxes among them, and a chain of 40
    boxes (longer than a round of the matrix method's iterations): each group's kept set is
    torchvision's ``nms`` of its valid boxes. Fails if the rounds stop before the result
    settles, an invalid box suppresses, or groups share a comparison."""
    g = torch.Generator().manual_seed(4)
    blocks = []
    for groups, k in ((6, 300), (3, 40)):
        xy = torch.rand(groups, k, 2, generator=g) * 200
        boxes = torch.cat([xy, xy + 20 + torch.rand(groups, k, 2, generator=g) * 60], -1)
        scores = torch.rand(groups, k, generator=g)
        valid = torch.rand(groups, k, generator=g) > 0.2
        blocks.append((boxes, scores, valid))
    chain = _chain(40)
    boxes, scores, valid = blocks[1]
    boxes[0], scores[0], valid[0] = chain, torch.linspace(1, 0.1, 40), True
    assert nms_module.ROUND < 40
    kept = grouped_nms(*map(list, zip(*blocks)), 0.5, method)
    for (boxes, scores, valid), keep in zip(blocks, kept):
        for gi in range(boxes.shape[0]):
            index = valid[gi].nonzero().squeeze(1)
            expected = torch.zeros_like(valid[gi])
            expected[index[nms(boxes[gi, index], scores[gi, index], 0.5)]] = True
            assert torch.equal(keep[gi], expected), gi
    assert torch.equal(kept[1][0], torch.arange(40) % 2 == 0)  # every other box of the chain


@pytest.mark.parametrize("where", ["training", "validation"])
def test_ground_truth_without_area_is_refused_naming_the_image(pair, where):
    """torchvision raises on such a box; the batched matcher would make nearly every anchor
    positive through it. Fails if the check is gone (the step runs) or names no image."""
    _, batched = pair
    targets = _grid_targets()[:2]
    targets[1]["boxes"] = torch.tensor([[100.0, 120.0, 100.0, 260.0]])  # no width
    images = [torch.zeros(1, SIZE, SIZE, dtype=torch.uint8)] * 2
    with pytest.raises(ValueError, match=r"box \[100.0, 120.0, 100.0, 260.0\].* of image img1 "):
        if where == "training":
            batched.train()(images, targets)
        else:
            losses_and_detections(batched.eval(), images, targets)
