"""Boxes under mixed precision against fp32: where they land, and how far they move.

    python benchmarks/box_agreement.py [--device cuda] [--size 512] [--images 4]
        [--dtypes float16,bfloat16]

A random-init R50-FPN (BatchNorm statistics set from the images, so that the layers see
activations of a sane scale; nothing downloaded) predicts smooth synthetic images in fp32 and
under autocast in each dtype. For each dtype it prints:

- ``on_grid``: the share of box coordinates in [size/2, size) that the dtype represents exactly
  (box geometry in float32 gives about what fp32 gives; torchvision's own heads under bf16
  give 1.0: every box on the 2-px grid at 512 px);
- ``matched``: the share of fp32 detections scoring above 0.05 that have a detection of the
  same class at IoU >= 0.5 under autocast, and the median and 95th-percentile largest
  coordinate difference of those pairs, in pixels. A random-init detector's scores are nearly
  tied, so which boxes survive top-k and NMS changes with the layers' rounding: these figures
  are a floor for a trained model's, not a property of the box geometry.

The last line is one JSON object.
"""

from __future__ import annotations

import argparse
import json

import numpy as np
import torch
from torch import nn
from torchvision.ops import box_iou

from cxrdet.inference.export import smooth_images
from cxrdet.models.detector import build_fasterrcnn


def on_grid(boxes: torch.Tensor, dtype: torch.dtype, size: int) -> float:
    x = boxes[(boxes >= size / 2) & (boxes < size)]
    return float((x == x.to(dtype).float()).float().mean()) if len(x) else float("nan")


def matched(ref: dict, other: dict) -> tuple[float, list[float]]:
    """Share of ``ref``'s detections above 0.05 with a same-class IoU >= 0.5 partner in
    ``other``, and the largest coordinate difference (px) of each such pair."""
    keep = ref["scores"] > 0.05
    boxes, labels = ref["boxes"][keep].float(), ref["labels"][keep]
    errors = []
    for box, label in zip(boxes, labels):
        same = other["boxes"][other["labels"] == label].float()
        if len(same) == 0:
            continue
        iou = box_iou(box[None], same)[0]
        best = int(iou.argmax())
        if iou[best] >= 0.5:
            errors.append(float((same[best] - box).abs().max()))
    return len(errors) / max(int(keep.sum()), 1), errors


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--size", type=int, default=512)
    p.add_argument("--images", type=int, default=4)
    p.add_argument("--dtypes", default="float16,bfloat16")
    a = p.parse_args()
    device = torch.device(a.device)
    torch.manual_seed(0)
    model = build_fasterrcnn(image_size=a.size).to(device)
    images = [
        torch.from_numpy(x).float().div(255).expand(3, -1, -1).to(device)
        for x in smooth_images(a.images, a.size, seed=1)
    ]
    for m in model.modules():  # BatchNorm statistics from these images (one pass, exact)
        if isinstance(m, nn.BatchNorm2d):
            m.reset_running_stats()
            m.momentum = None
    model.train()
    with torch.no_grad():
        model.backbone(model.transform(images)[0].tensors)
    model.eval()
    with torch.inference_mode():
        fp32 = model(images)
        results = {
            "fp32": {
                "on_grid_bf16": on_grid(
                    torch.cat([o["boxes"] for o in fp32]), torch.bfloat16, a.size
                )
            }
        }
        for name in a.dtypes.split(","):
            dtype = getattr(torch, name)
            with torch.autocast(device.type, dtype=dtype):
                out = model(images)
            shares, errors = zip(*(matched(r, o) for r, o in zip(fp32, out)))
            errors = [e for per_image in errors for e in per_image]
            results[name] = {
                "on_grid": on_grid(torch.cat([o["boxes"] for o in out]), dtype, a.size),
                "box_dtype": str(out[0]["boxes"].dtype).removeprefix("torch."),
                "matched": float(np.mean(shares)),
                "median_px": round(float(np.median(errors)), 2) if errors else None,
                "p95_px": round(float(np.percentile(errors, 95)), 2) if errors else None,
            }
            r = results[name]
            print(
                f"{name} autocast on {a.device}, {a.size} px: boxes in {r['box_dtype']}, "
                f"{r['on_grid']:.0%} of coordinates on the {name} grid; {r['matched']:.0%} of "
                f"the fp32 detections above 0.05 matched at IoU 0.5, moved {r['median_px']} px "
                f"(median), {r['p95_px']} px (95th percentile)",
                flush=True,
            )
    print(json.dumps({"device": a.device, "size": a.size, **results}))


if __name__ == "__main__":
    main()
