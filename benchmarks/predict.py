"""Prediction speed: predict.py's pipeline vs a bare ``model(images)`` loop, and the TTA cost.

    python benchmarks/predict.py [--images 32] [--size 256] [--batch 4] [--device cpu]
        [--precision 32] [--arch resnet50] [--rounds 3] [--workers auto]

A random-init R50-FPN checkpoint and synthetic prepared PNGs; the same threads, batch, score
threshold (0.0) and detection cap (100) for all. The bare loop gets the images already in
memory; ``cxrdet.inference.predictor.predict`` reads PNGs (in ``--workers`` loader processes,
``auto`` as predict.py's default), maps boxes back, formats and validates the CSV. Prints
images/s of both, their ratio (target >= 0.9) and hflip TTA's cost relative to plain
prediction (target <= 2.1x), and what a "No finding" classifier (``nofinding.ckpt_path``,
``--arch``, run in the detector's pass) adds to predict.py's time (target <= 15 %). The four
take turns, ``--rounds`` times, and each figure is the median of the rounds' (a machine that
speeds up or slows down weighs on all alike); the last line is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
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
    p.add_argument("--rounds", type=int, default=3, help="turns of each variant (default 3)")
    p.add_argument(
        "--workers", default="auto", help="predict.py's num_workers (default auto, as its own)"
    )
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
        dataset = ImageDataset(image_dir, meta)
        common = dict(
            ckpt_path=str(ckpt),
            image_dir=str(image_dir),
            meta_csv=str(meta),
            batch_size=a.batch,
            device=a.device,
            precision=a.precision,
            num_workers=a.workers,
            progress=False,
        )
        run = lambda out, **kw: predict(PredictConfig(output=str(out), **common, **kw))  # noqa: E731
        classifier = tmp / "nofinding.ckpt"
        make_classifier(classifier, a.arch)
        with_classifier = NofindingConfig(ckpt_path=str(classifier))
        run(tmp / "warm" / "s.csv")  # warm-up, as the bare loop has
        rounds = []  # (bare, plain, tta, with the classifier), taking turns
        for r in range(a.rounds):
            bare_r = bare_loop(ckpt, dataset, a.batch, device, a.precision)
            plain_r = run(tmp / f"plain{r}" / "s.csv")
            tta_r = run(tmp / f"tta{r}" / "s.csv", tta="hflip")
            cls_r = run(tmp / f"cls{r}" / "s.csv", nofinding=with_classifier)
            rounds.append((bare_r, plain_r, tta_r, cls_r))
            print(
                f"round {r + 1}: bare {bare_r:.3f}, predict {plain_r['images_per_s']:.3f}, "
                f"hflip {tta_r['images_per_s']:.3f}, with the classifier "
                f"{cls_r['images_per_s']:.3f} images/s",
                flush=True,
            )
    med = statistics.median
    bare = med(b for b, *_ in rounds)
    plain = med(p["images_per_s"] for _, p, _, _ in rounds)
    tta = med(t["images_per_s"] for *_, t, _ in rounds)
    ratio = med(p["images_per_s"] / b for b, p, _, _ in rounds)
    tta_cost = med(t["seconds"] / p["seconds"] for _, p, t, _ in rounds)
    cls_cost = med(c["seconds"] / p["seconds"] - 1 for _, p, _, c in rounds)
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
                "workers": a.workers,
            }
        )
    )


if __name__ == "__main__":
    main()
