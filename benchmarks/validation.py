"""Validation speed: one backbone + FPN pass per image for the loss and the detections, against
the two passes validation used to make (a train-mode pass for ``val/loss``, an eval-mode pass
for the detections).

    python benchmarks/validation.py [--size 512] [--images 8] [--batch 4] [--rounds 3]
        [--device cpu] [--precision 32-true]

The real-data model (``model=frcnn_r50fpn``: 512 ROIs per image for the loss, 1,000 proposals
per image at inference, frozen BatchNorm as from COCO weights; random init, nothing
downloaded), smooth synthetic images with two boxes each. Both ways take turns ``--rounds``
times on the same batches; the figure is the median of the rounds' ratios. The last line is
one JSON object. Target: one pass >= 1.5x the images/s of two.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch

from cxrdet.inference.export import smooth_images
from cxrdet.models.detector import build_fasterrcnn
from cxrdet.models.precision import autocast
from cxrdet.models.rcnn.validation import loss_mode, losses_and_detections


def batches(n: int, size: int, batch: int, device) -> list[tuple[list, list]]:
    images = [
        torch.from_numpy(x).float().div(255).expand(3, -1, -1).to(device)
        for x in smooth_images(n, size, seed=0)
    ]
    box = torch.tensor([[0.2, 0.3, 0.45, 0.6], [0.55, 0.5, 0.8, 0.9]]) * size
    target = {"boxes": box.to(device), "labels": torch.tensor([4, 11], device=device)}
    return [
        (images[i : i + batch], [target] * len(images[i : i + batch])) for i in range(0, n, batch)
    ]


def two_passes(model, images, targets):
    with loss_mode(model):
        losses = model(images, targets)
    return losses, model(images)


def timed(fn, model, data, device, precision) -> float:
    """Images per second of ``fn`` over every batch (after the same RNG seed)."""
    torch.manual_seed(0)
    n = sum(len(images) for images, _ in data)
    with torch.inference_mode(), autocast(device, precision):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        for images, targets in data:
            fn(model, images, targets)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
    return n / (time.perf_counter() - start)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--size", type=int, default=512)
    p.add_argument("--images", type=int, default=8)
    p.add_argument("--batch", type=int, default=4, help="data.val_batch_size")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--device", default="cpu")
    p.add_argument("--precision", default="32-true")
    a = p.parse_args()
    device = torch.device(a.device)
    torch.manual_seed(0)
    model = build_fasterrcnn(image_size=a.size, frozen_bn=True).to(device).eval()
    data = batches(a.images, a.size, a.batch, device)
    timed(losses_and_detections, model, data[:1], device, a.precision)  # warm-up
    rounds = []
    for r in range(a.rounds):
        two = timed(two_passes, model, data, device, a.precision)
        one = timed(losses_and_detections, model, data, device, a.precision)
        rounds.append((two, one))
        print(f"round {r + 1}: two passes {two:.3f}, one pass {one:.3f} images/s", flush=True)
    two = statistics.median(t for t, _ in rounds)
    one = statistics.median(o for _, o in rounds)
    ratio = statistics.median(o / t for t, o in rounds)
    print(
        f"validation at {a.size} px, batch {a.batch}, {a.device} {a.precision}, "
        f"{torch.get_num_threads()} threads: two passes {two:.3f} images/s, one pass "
        f"{one:.3f} images/s: {ratio:.2f}x (target >= 1.5x)"
    )
    print(
        json.dumps(
            {
                "two_passes_img_per_s": round(two, 4),
                "one_pass_img_per_s": round(one, 4),
                "speedup": round(ratio, 4),
                "rounds": [round(o / t, 4) for t, o in rounds],
                "size": a.size,
                "device": a.device,
                "precision": a.precision,
            }
        )
    )


if __name__ == "__main__":
    main()
