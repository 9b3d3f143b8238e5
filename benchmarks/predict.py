"""Prediction speed: predict.py's pipeline vs a bare ``model(images)`` loop, and the TTA cost.

    python benchmarks/predict.py [--images 32] [--size 256] [--batch 4] [--device cpu]
        [--precision 32] [--arch resnet50]

A random-init R50-FPN checkpoint and synthetic prepared PNGs; the same threads, batch, score
threshold (0.0) and detection cap (100) for all. The bare loop gets the images already in
memory; ``cxrdet.inference.predictor.predict`` reads PNGs, maps boxes back, formats and
validates the CSV. Prints images/s of both, their ratio (target >= 0.9) and hflip TTA's cost
relative to plain prediction (target <= 2.1x), and what a "No finding" classifier
(``nofinding.ckpt_path``, ``--arch``, run in the detector's pass) adds to predict.py's time
(target <= 15 %); the last line is one JSON object.
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

from cxrdet.data.dataset import ImageDataset  # noqa: E402
from cxrdet.data.prepare import prepare  # noqa: E402
from cxrdet.demo.synth import synthesize  # noqa: E402
from cxrdet.inference.config import NofindingConfig, PredictConfig  # noqa: E402
from cxrdet.inference.predictor import predict  # noqa: E402
from cxrdet.models.module import DetectorModule  # noqa: E402
from cxrdet.models.precision import autocast


def make_checkpoint(path: Path, size: int) -> None:
    torch.manual_seed(0)
    module = DetectorModule(
        model={"num_classes": 14, "image_size": size, "weights": None},  # random init: offline
        optim={"_target_": "torch.optim.SGD", "_partial_": True, "lr": 0.001},
    )
    torch.save({"hyper_parameters": dict(module.hparams), "state_dict": module.state_dict()}, path)


@torch.inference_mode()
def bare_loop(ckpt: Path, dataset: ImageDataset, batch: int, device, precision: str) -> float:
    from cxrdet.models.module import load_detector

    model = load_detector(str(ckpt)).model.eval().to(device)
    model.roi_heads.score_thresh, model.roi_heads.detections_per_img = 0.0, 100
    images = [dataset[i][0].to(device) for i in range(len(dataset))]
    with autocast(device, precision):
        model(images[:batch])  # warm-up
        _sync(device)
        start = time.perf_counter()
        for i in range(0, len(images), batch):
            model(images[i : i + batch])
        _sync(device)
    return len(images) / (time.perf_counter() - start)


def make_classifier(path: Path, arch: str) -> None:
    """A random-init "No finding" classifier, saved as train.py saves it."""
    from cxrdet.models.classifier import NoFindingModule

    torch.manual_seed(0)
    module = NoFindingModule(
        model={"arch": arch, "weights": None},
        optim={"_target_": "torch.optim.SGD", "_partial_": True, "lr": 0.001},
    )
    torch.save({"hyper_parameters": dict(module.hparams), "state_dict": module.state_dict()}, path)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--images", type=int, default=32, help="test images (default 32)")
    p.add_argument("--size", type=int, default=256, help="image side in px (default 256)")
    p.add_argument("--batch", type=int, default=4, help="images per forward pass (default 4)")
    p.add_argument("--device", default="cpu", help="cpu (default) | cuda")
    p.add_argument("--precision", default="32", help="32 (default) | 16-mixed | bf16-mixed")
    p.add_argument("--arch", default="resnet50", help="the classifier's (default resnet50)")
    a = p.parse_args()
    device = torch.device(a.device)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        synthesize(tmp / "raw", 0, a.images, seed=2, min_px=600, max_px=800, progress=False)
        prepare(tmp / "raw" / "test", tmp / "prepared", [a.size], progress=False)
        ckpt = tmp / "model.ckpt"
        make_checkpoint(ckpt, a.size)
        image_dir, meta = (
            tmp / "prepared" / str(a.size) / "test",
            tmp / "prepared" / str(a.size) / "test_meta.csv",
        )
        bare = bare_loop(ckpt, ImageDataset(image_dir, meta), a.batch, device, a.precision)
        common = dict(
            ckpt_path=str(ckpt),
            image_dir=str(image_dir),
            meta_csv=str(meta),
            batch_size=a.batch,
            device=a.device,
            precision=a.precision,
            progress=False,
        )
        run = lambda out, **kw: predict(PredictConfig(output=str(out), **common, **kw))  # noqa: E731
        run(tmp / "warm" / "s.csv")  # warm-up, as the bare loop had
        plain_run = run(tmp / "plain" / "s.csv")
        plain = plain_run["images_per_s"]
        tta = run(tmp / "tta" / "s.csv", tta="hflip")["images_per_s"]
        classifier = tmp / "nofinding.ckpt"
        make_classifier(classifier, a.arch)
        with_cls = run(tmp / "cls" / "s.csv", nofinding=NofindingConfig(ckpt_path=str(classifier)))
    ratio, tta_cost = plain / bare, plain / tta
    cls_cost = with_cls["seconds"] / plain_run["seconds"] - 1
    print(f"bare model loop: {bare:.3f} images/s")
    print(f"predict.py:      {plain:.3f} images/s, {ratio:.3f}x the bare loop (target >= 0.9)")
    print(
        f"with tta=hflip:  {tta:.3f} images/s, {tta_cost:.2f}x the time (target <= 2.1x); "
        f"{a.images} images at {a.size} px, batch {a.batch}, {torch.get_num_threads()} threads, "
        f"{a.device}, precision {a.precision}"
    )
    print(
        f"with a {a.arch} 'No finding' classifier (nofinding.ckpt_path): +{cls_cost:.1%} "
        "predict.py time (target <= 15 %)"
    )
    print(
        json.dumps(
            {
                "bare_img_per_s": round(bare, 4),
                "predict_img_per_s": round(plain, 4),
                "ratio": round(ratio, 4),
                "tta_cost": round(tta_cost, 4),
                "classifier_cost": round(cls_cost, 4),
                "classifier_arch": a.arch,
                "device": a.device,
                "precision": a.precision,
            }
        )
    )


if __name__ == "__main__":
    main()
