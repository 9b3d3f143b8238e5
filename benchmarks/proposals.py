"""The RPN's proposal stage alone, per image, against the batch size: the batched RPN's
``propose`` (both NMS methods) against torchvision's ``filter_proposals`` on the same head
outputs, and what a CUDA NMS would copy to the host per image.

    python benchmarks/proposals.py [--size 512] [--batches 1,2,4,8] [--rounds 3] [--threads 1]
        [--device cpu]

The real-data model's RPN at ``--size`` in training mode (2,000 boxes per FPN level before NMS;
random init, smooth synthetic images: the head outputs are computed once, outside the clock).
Each way decodes, takes the top-k per level, clips, filters and runs NMS per (image, level);
the figure is the median of ``--rounds`` runs, in ms per image. Bytes a CUDA NMS would copy
per image: torchvision's kernel copies an n x ceil(n/64) 64-bit mask for n boxes per call
(its own path: one call per image; one call over the whole batch, as this project once made:
quadratic in the batch); the matrix method copies one byte per round of iterations. The host
waits of one ``propose`` with the matrix method are counted with
``cxrdet.models.rcnn.syncs.HostWaits``. Targets: the batched stage's time per image at the
largest batch within 1.3x of batch 1's; waits the same at every batch. The last line is one
JSON object.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import time

import torch

from cxrdet.inference.export import smooth_images
from cxrdet.models.detector import build_fasterrcnn
from cxrdet.models.rcnn.syncs import HostWaits


def mask_bytes(n: int) -> int:
    """What torchvision's CUDA NMS copies to the host for ``n`` boxes in one call."""
    return n * math.ceil(n / 64) * 8


def head_outputs(model, n: int, size: int, device):
    images = [torch.from_numpy(x)[None].to(device) for x in smooth_images(n, size, seed=0)]
    with torch.no_grad():
        image_list, _ = model.transform(images)
        features = model.backbone(image_list.tensors)
        return image_list, model.rpn.head_outputs(image_list, features)


def reference(rpn, head, image_list):
    """torchvision's decode + ``filter_proposals``."""
    n = head.objectness.shape[0]
    decoded = rpn.box_coder.decode_single(
        head.deltas.reshape(-1, 4), head.anchors.repeat(n, 1)
    ).reshape(n, -1, 4)
    return rpn.filter_proposals(
        decoded, head.objectness, image_list.image_sizes, head.anchors_per_level
    )


def median_ms(fn, rounds: int, device) -> float:
    times = []
    for _ in range(rounds + (device.type == "cuda")):  # on a GPU, a first run to warm up
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        with torch.no_grad():
            fn()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        times.append(time.perf_counter() - start)
    if device.type == "cuda":
        times = times[1:]
    return statistics.median(times) * 1000


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--size", type=int, default=512, help="image side in px (default 512)")
    p.add_argument("--batches", default="1,2,4,8", help="batch sizes (default 1,2,4,8)")
    p.add_argument("--rounds", type=int, default=3, help="timed runs per figure (default 3)")
    p.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    p.add_argument("--device", default="cpu", help="cpu | cuda (default cpu)")
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    device = torch.device(a.device)
    model = build_fasterrcnn(num_classes=14, image_size=a.size, channels_last=False)
    model = model.to(device).train()
    rpn = model.rpn
    batches = [int(b) for b in a.batches.split(",")]
    image_list, head = head_outputs(model, max(batches), a.size, device)
    per_level = [min(rpn.pre_nms_top_n(), k) for k in head.anchors_per_level]
    per_image = sum(per_level)
    rows = {}
    for n in batches:
        sub = head._replace(objectness=head.objectness[:n], deltas=head.deltas[:n])
        sizes = image_list.image_sizes[:n]
        sub_list = type(image_list)(image_list.tensors[:n], sizes)
        row = {
            "torchvision": median_ms(
                lambda s=sub, i=sub_list: reference(rpn, s, i), a.rounds, device
            )
            / n
        }
        for method in ("per_group", "matrix"):
            rpn.nms_method = method
            row[method] = median_ms(lambda s=sub, z=sizes: rpn.propose(s, z), a.rounds, device) / n
        with torch.no_grad(), HostWaits() as waits:
            rpn.propose(sub, sizes)
        rpn.nms_method = "auto"
        row["matrix_waits"] = waits.count
        row["bytes_torchvision_per_image"] = mask_bytes(per_image)
        row["bytes_one_call_per_batch_per_image"] = mask_bytes(n * per_image) // n
        row["bytes_per_group_per_image"] = sum(mask_bytes(k) for k in per_level)
        row["bytes_matrix_per_image"] = row["matrix_waits"] / n
        rows[n] = row
        print(
            f"batch {n}: ms per image: torchvision {row['torchvision']:.1f}, batched per_group "
            f"{row['per_group']:.1f}, batched matrix {row['matrix']:.1f} "
            f"({row['matrix_waits']} wait(s)); CUDA NMS bytes copied per image: torchvision "
            f"{row['bytes_torchvision_per_image'] / 1e6:.2f} MB, one call per batch "
            f"{row['bytes_one_call_per_batch_per_image'] / 1e6:.1f} MB, per group "
            f"{row['bytes_per_group_per_image'] / 1e6:.2f} MB, matrix "
            f"{row['bytes_matrix_per_image']:.2f} B"
        )
    first, last = rows[batches[0]], rows[batches[-1]]
    auto = "per_group" if device.type == "cpu" else "matrix"  # what model.nms_method=auto runs
    ratio = last[auto] / first[auto]
    waits = {rows[n]["matrix_waits"] for n in batches}
    print(
        f"{per_image} boxes per image before NMS ({', '.join(map(str, per_level))} per level); "
        f"batched ({auto}, auto's on {device.type}) per image at batch {batches[-1]} / "
        f"batch {batches[0]}: "
        f"{ratio:.2f}x (target <= 1.3x: {'met' if ratio <= 1.3 else 'missed'}); matrix waits "
        f"per call {sorted(waits)} ({'the same at every batch' if len(waits) == 1 else 'vary'})"
    )
    print(json.dumps({"size": a.size, "threads": a.threads, "device": a.device,
                      "per_level": per_level, "ratio": ratio, "batches": rows}))  # fmt: skip


if __name__ == "__main__":
    main()
