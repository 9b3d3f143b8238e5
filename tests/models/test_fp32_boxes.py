"""Box geometry stays in float32 under autocast (bf16 on the CPU; fp16 and bf16 on CUDA, marked
gpu); the layers keep mixed precision but for the four prediction layers, which run in float32.

Under bf16 a random-init detector's detections differ from its fp32 ones through the layers'
rounding (which proposals survive top-k and NMS), so the check compares what the geometry does
with the same layer outputs: the model runs under CPU bf16 autocast, the RPN head's and the box
predictor's outputs are recorded, and the same outputs are then replayed through the model in
float32. With the geometry in float32 both give the same boxes; with torchvision's own heads
every coordinate lands on the bf16 grid (2-px steps in [256, 512)) and the boxes move.
"""

from __future__ import annotations

import pytest
import torch

from cxrdet.inference.export import smooth_images
from cxrdet.models.detector import build_fasterrcnn

SIZE = 512  # coordinates in [256, 512): bf16 would round them to 2-px steps


def on_grid(x: torch.Tensor, dtype=torch.bfloat16) -> float:
    """The share of ``x`` that ``dtype`` represents exactly."""
    return float((x == x.to(dtype).float()).float().mean())


def upper_half(boxes: torch.Tensor) -> torch.Tensor:
    """Coordinates in [SIZE/2, SIZE), where bf16 steps by 2 px (the image border excluded)."""
    return boxes[(boxes >= SIZE / 2) & (boxes < SIZE)]


def _record(module, store: list):
    return module.register_forward_hook(lambda m, args, out: store.append(out))


def _replay(module, outputs):
    module.forward = lambda *args: outputs  # an instance attribute: nn.Module calls it


CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
AUTOCASTS = [
    pytest.param(("cpu", torch.bfloat16), id="cpu-bf16"),
    pytest.param(("cuda", torch.float16), id="cuda-fp16", marks=[pytest.mark.gpu, CUDA]),
    pytest.param(("cuda", torch.bfloat16), id="cuda-bf16", marks=[pytest.mark.gpu, CUDA]),
]


@pytest.fixture(scope="module", params=AUTOCASTS)
def bf16_and_replay(request):
    device, dtype = request.param
    torch.manual_seed(0)
    model = build_fasterrcnn(image_size=SIZE, rpn_post_nms_top_n_test=100).eval().to(device)
    image = torch.from_numpy(smooth_images(1, SIZE, seed=1)[0]).float().div(255)
    images = [image[None].to(device)]
    with torch.inference_mode():
        image_list, _ = model.transform(images)
        features = model.backbone(image_list.tensors)  # fp32 once; the heads see them as bf16
        rpn_out, predictor_out, conv_out, head_out = [], [], [], []
        hooks = [
            _record(model.rpn.head, rpn_out),
            _record(model.roi_heads.box_predictor, predictor_out),
            _record(model.rpn.head.conv, conv_out),
            _record(model.roi_heads.box_head, head_out),
        ]
        with torch.autocast(device, dtype=dtype):
            half = {k: v.to(dtype) for k, v in features.items()}
            proposals, _ = model.rpn(image_list, half)
            bf16, _ = model.roi_heads(half, proposals, image_list.image_sizes)
        for h in hooks:
            h.remove()
        as_fp32 = lambda out: [t.float() for t in out] if isinstance(out, list) else out.float()  # noqa: E731
        _replay(model.rpn.head, tuple(as_fp32(o) for o in rpn_out[0]))
        _replay(model.roi_heads.box_predictor, tuple(as_fp32(o) for o in predictor_out[0]))
        replay_proposals, _ = model.rpn(image_list, features)
        fp32, _ = model.roi_heads(features, replay_proposals, image_list.image_sizes)
        inner = (conv_out[0], head_out[0])  # the RPN's 3x3 convolution at level 0; the FC head
    outputs = (proposals[0], replay_proposals[0], bf16[0], fp32[0], rpn_out[0], predictor_out[0])
    return dtype, *outputs, inner, model


def test_the_layers_run_in_half_precision_the_prediction_layers_and_boxes_in_float32(
    bf16_and_replay,
):
    """Fails if the RPN head's objectness/delta layers or the box predictor run under autocast
    (their outputs would hold only half-precision values), or if the rest stops running in it."""
    dtype, proposals, _, bf16, _, rpn_out, predictor_out, inner, model = bf16_and_replay
    assert proposals.dtype == bf16["boxes"].dtype == torch.float32
    conv, head = inner
    assert conv.dtype == head.dtype == dtype  # the 3x3 convolution and the FC head: half
    logits, deltas = predictor_out
    assert logits.dtype == deltas.dtype == rpn_out[0][0].dtype == rpn_out[1][0].dtype
    assert logits.dtype == torch.float32
    assert on_grid(logits, dtype) < 0.5 and on_grid(rpn_out[1][0], dtype) < 0.5
    with torch.inference_mode():  # exactly the float32 layers applied to the half inputs
        torch.testing.assert_close(logits, model.roi_heads.box_predictor.cls_score(head.float()))
        rpn_deltas = model.rpn.head.bbox_pred(conv.float())  # level 0
    torch.testing.assert_close(rpn_out[1][0], rpn_deltas)


def test_boxes_under_autocast_are_off_its_grid_and_equal_the_fp32_geometry(bf16_and_replay):
    dtype, proposals, replay_proposals, bf16, fp32, *_ = bf16_and_replay
    coords = upper_half(bf16["boxes"])
    assert len(coords) > 20
    assert on_grid(coords, dtype) < 0.1  # torchvision's own heads under bf16: 1.0
    assert on_grid(upper_half(proposals), dtype) < 0.1
    torch.testing.assert_close(proposals, replay_proposals, atol=1e-3, rtol=0)
    keep = bf16["scores"] > 0.05
    assert keep.sum() > 20 and len(bf16["boxes"]) == len(fp32["boxes"])
    torch.testing.assert_close(bf16["boxes"][keep], fp32["boxes"][keep], atol=1e-3, rtol=0)
    torch.testing.assert_close(bf16["labels"], fp32["labels"])


def test_training_under_bf16_autocast_samples_float32_proposals():
    torch.manual_seed(0)
    model = build_fasterrcnn(image_size=64, roi_batch_size_per_image=16).train()
    seen = []
    model.roi_heads.box_roi_pool.register_forward_hook(lambda m, args, out: seen.append(args[1]))
    target = {"boxes": torch.tensor([[8.0, 8, 40, 40]]), "labels": torch.tensor([3])}
    with torch.autocast("cpu", dtype=torch.bfloat16):
        losses = model([torch.rand(3, 64, 64)], [target])
    assert all(torch.isfinite(v) and v.dtype == torch.float32 for v in losses.values())
    assert seen[0][0].dtype == torch.float32
