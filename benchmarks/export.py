"""Exported-model speed: ONNX Runtime vs PyTorch eager, the same images, one at a time.

    python benchmarks/export.py [--images 8] [--size 512] [--threads 2] [--device cpu|cuda]

A random-init R50-FPN checkpoint (its score threshold 0.0, 100 detections per image) exported
with ``cxrdet export --format onnx``; both run the exported interface (a grey uint8 image in;
boxes, scores, labels out) on the same smooth random images after one warm-up image. Prints
images/s of both and their ratio (target: ONNX >= 0.8x eager); the last line is one JSON
object. ``--device cuda`` runs eager on the GPU and ONNX Runtime with its CUDA provider (where
onnxruntime-gpu is installed; else on the CPU, and the JSON's ``onnx_providers`` says so).
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

import torch  # noqa: E402

from cxrdet.inference.export import export, smooth_images  # noqa: E402
from cxrdet.inference.exported import load_exported, onnx_providers  # noqa: E402
from cxrdet.models.module import DetectorModule  # noqa: E402


def images_per_s(run, images) -> float:
    run(images[0])  # warm-up
    start = time.perf_counter()
    for image in images:
        run(image)
    return len(images) / (time.perf_counter() - start)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--images", type=int, default=8)
    p.add_argument("--size", type=int, default=512)
    p.add_argument("--threads", type=int, default=2, help="torch and ONNX Runtime threads")
    p.add_argument("--device", default="cpu", help="cpu | cuda")
    a = p.parse_args()
    device = torch.device(a.device)
    torch.set_num_threads(a.threads)
    os.environ["OMP_NUM_THREADS"] = str(a.threads)
    with tempfile.TemporaryDirectory() as tmp:
        ckpt = Path(tmp) / "model.ckpt"
        torch.manual_seed(0)
        module = DetectorModule(
            model={"num_classes": 14, "image_size": a.size, "weights": None},
            optim={"_target_": "torch.optim.SGD", "_partial_": True, "lr": 0.001},
        )
        torch.save(
            {"hyper_parameters": dict(module.hparams), "state_dict": module.state_dict()}, ckpt
        )
        path, model = export(str(ckpt), "onnx", Path(tmp) / "model.onnx", a.size)
        onnx_run, _ = load_exported(path, device)
        model = model.to(device)
        images = smooth_images(a.images + 1, a.size, seed=1)

        def eager(image):
            with torch.inference_mode():
                out = model(torch.from_numpy(image).to(device))
                return [t.cpu() for t in out]

        eager_ips = images_per_s(eager, images)
        onnx_ips = images_per_s(onnx_run, images)
    ratio = onnx_ips / eager_ips
    import onnxruntime

    providers = onnx_providers(device, onnxruntime.get_available_providers())
    print(f"PyTorch eager   {eager_ips:.3f} images/s ({a.size} px, {a.threads} threads, {device})")
    print(f"ONNX Runtime    {onnx_ips:.3f} images/s ({providers[0]})")
    print(f"ratio           {ratio:.2f}x (target >= 0.8)")
    print(
        json.dumps(
            {
                "size": a.size,
                "images": a.images,
                "threads": a.threads,
                "eager_images_per_s": round(eager_ips, 3),
                "onnx_images_per_s": round(onnx_ips, 3),
                "ratio": round(ratio, 3),
                "device": a.device,
                "onnx_providers": providers,
            }
        )
    )


if __name__ == "__main__":
    main()
