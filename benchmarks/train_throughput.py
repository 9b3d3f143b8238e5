"""Training throughput: cxrdet's Lightning loop vs a plain PyTorch loop, same everything, and
the Lightning loop at other precisions.

    python benchmarks/train_throughput.py [--size 256] [--batch 2] [--steps 8] [--rounds 4]
        [--warmup 2] [--precisions 32-true[,bf16-mixed]] [--accelerator cpu|gpu] [--frozen-bn]
        [--roi 512] [--model detector|classifier] [--arch resnet50]

Both loops train the same model (random init, same seed): the torchvision Faster R-CNN R50-FPN,
or with ``--model classifier`` the "No finding" classifier (``--arch``; binary cross-entropy on
"the image has a finding", as ``NoFindingModule``; e.g. ``--batch 16``), on the same
synthetic phantoms with the same DataLoader, batch, optimiser and torch threads; the first
``--warmup`` steps of each run are not timed. The Lightning loop runs with cxrdet's usual
callbacks (progress bar, LR monitor, throughput monitor) and CSV logger, once per precision
(``trainer.precision`` values; the plain loop is fp32). The loops take turns, ``--rounds``
times (plain, cxrdet, plain, cxrdet, ...), so that a machine speeding up or slowing down during
the run (another job ending, say) weighs on both alike: the ratio is the median of each round's
cxrdet/plain. Prints images/s (medians), the ratio and each precision's speed-up over the first;
the last line is one JSON object, with the peak memory (process RSS; on a GPU, the most CUDA
memory allocated). ``--frozen-bn`` trains what a pretrained run trains (frozen BatchNorm, three
ResNet stages; the weights' values do not change the cost) instead of all of it.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import tempfile
import time
from pathlib import Path

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

import pytorch_lightning as pl  # noqa: E402
import torch  # noqa: E402
from pytorch_lightning import callbacks as cb  # noqa: E402
from pytorch_lightning.loggers import CSVLogger  # noqa: E402

from cxrdet.data.datamodule import CXRDataModule  # noqa: E402
from cxrdet.data.dataset import batch_size  # noqa: E402
from cxrdet.data.prepare import prepare  # noqa: E402
from cxrdet.demo.synth import synthesize  # noqa: E402
from cxrdet.models.classifier import NoFindingModule, build_classifier  # noqa: E402
from cxrdet.models.detector import build_fasterrcnn  # noqa: E402
from cxrdet.models.module import DetectorModule  # noqa: E402

TARGET = {"detector": 0.97, "classifier": 0.95}  # cxrdet / plain images/s
OPTIM = {  # the optimiser both loops use
    "_target_": "torch.optim.SGD",
    "_partial_": True,
    "lr": 0.001,
    "momentum": 0.9,
    "weight_decay": 1e-4,
}


class StepClock(pl.Callback):
    """Wall-clock time at the end of every training step."""

    def __init__(self):
        self.times: list[float] = []

    def on_train_batch_end(self, trainer, *args) -> None:
        _sync(trainer.strategy.root_device)
        self.times.append(time.perf_counter())


def make_data(root: Path, size: int, images: int) -> CXRDataModule:
    synthesize(
        root / "raw", images, 0, seed=0, normal_share=0.3, min_px=600, max_px=800, progress=False
    )
    prepare(root / "raw" / "train", root / "prepared", [size], progress=False)
    return CXRDataModule(
        str(root / "raw" / "train.csv"),
        str(root / "prepared" / str(size) / "train"),
        str(root / "prepared" / str(size) / "train_meta.csv"),
        image_size=size,
        split="all_train",
        batch_size=0,  # set by the caller
        num_workers=0,
    )


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def plain_model(kind: str, model_cfg: dict, device) -> tuple[torch.nn.Module, callable]:
    """The bare torchvision model and its loss of (images, targets), as cxrdet's module has."""
    if kind == "classifier":
        net = build_classifier(**model_cfg).train().to(device)
        bce = torch.nn.BCEWithLogitsLoss()

        def loss(images, targets):
            labels = NoFindingModule.labels(targets).to(device)
            return bce(net(torch.stack(images)).squeeze(1), labels)

        return net, loss
    net = build_fasterrcnn(**model_cfg).train().to(device)
    return net, lambda images, targets: sum(net(images, targets).values())


def plain_loop(
    dm: CXRDataModule, kind: str, model_cfg: dict, steps: int, warmup: int, device
) -> float:
    torch.manual_seed(0)
    model, compute_loss = plain_model(kind, model_cfg, device)
    opt = torch.optim.SGD(model.parameters(), lr=0.001, momentum=0.9, weight_decay=1e-4)
    times, done = [], 0
    while done < steps + warmup:
        for images, targets in dm.train_dataloader():
            images = [im.to(device) for im in images]
            targets = [
                {k: v.to(device) if torch.is_tensor(v) else v for k, v in t.items()}
                for t in targets
            ]
            loss = compute_loss(images, targets)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            _sync(device)
            times.append(time.perf_counter())
            done += 1
            if done == steps + warmup:
                break
    return dm.batch_size * steps / (times[-1] - times[warmup - 1])


def lightning_loop(
    dm,
    kind: str,
    model_cfg: dict,
    steps: int,
    warmup: int,
    out: Path,
    accelerator: str,
    precision: str,
) -> float:
    torch.manual_seed(0)
    module_class = NoFindingModule if kind == "classifier" else DetectorModule
    module = module_class(model=model_cfg, optim=OPTIM, scheduler=None)
    clock = StepClock()
    trainer = pl.Trainer(
        accelerator=accelerator,
        devices=1,
        precision=precision,
        max_steps=steps + warmup,
        limit_val_batches=0,
        num_sanity_val_steps=0,
        enable_checkpointing=False,
        logger=CSVLogger(out, name=f"csv-{precision}"),
        log_every_n_steps=20,
        callbacks=[
            clock,
            cb.TQDMProgressBar(refresh_rate=1),
            cb.LearningRateMonitor(logging_interval="step"),
            cb.ThroughputMonitor(batch_size_fn=batch_size, window_size=10),
        ],
    )
    trainer.fit(module, datamodule=dm)
    return dm.batch_size * steps / (clock.times[-1] - clock.times[warmup - 1])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--size", type=int, default=256, help="image side in px (default 256)")
    p.add_argument("--batch", type=int, default=2, help="images per step (default 2)")
    p.add_argument("--steps", type=int, default=8, help="timed steps per run (default 8)")
    p.add_argument("--rounds", type=int, default=4, help="turns of each loop (default 4)")
    p.add_argument("--warmup", type=int, default=2, help="untimed first steps of a run (default 2)")
    p.add_argument("--threads", type=int, default=torch.get_num_threads(), help="torch threads")
    p.add_argument(
        "--precisions",
        default="32-true",
        help="Lightning precisions to time, the first as the reference (default 32-true; e.g. "
        "32-true,bf16-mixed on a CPU with AVX512-BF16/AMX, 32-true,16-mixed,bf16-mixed on a GPU)",
    )
    p.add_argument("--accelerator", default="cpu", choices=["cpu", "gpu"], help="default cpu")
    p.add_argument("--frozen-bn", action="store_true", help="train as a pretrained run does")
    p.add_argument("--roi", type=int, default=512, help="ROIs sampled per image (default 512)")
    p.add_argument("--model", default="detector", choices=list(TARGET), help="default detector")
    p.add_argument("--arch", default="resnet50", help="the classifier's (default resnet50)")
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    device = torch.device("cuda" if a.accelerator == "gpu" else "cpu")
    precisions = a.precisions.split(",")
    model_cfg = {
        "num_classes": 14,
        "weights": None,  # random init: nothing to download; --frozen-bn costs as pretrained
        "image_size": a.size,
        "frozen_bn": a.frozen_bn,
        "roi_batch_size_per_image": a.roi,
    }
    if a.model == "classifier":
        model_cfg = {"arch": a.arch, "weights": None}
    plain, ours, peaks = [], {k: [] for k in precisions}, {}
    with tempfile.TemporaryDirectory() as tmp:
        dm = make_data(Path(tmp), a.size, images=max(16, a.batch * 4))
        dm.batch_size = a.batch
        dm.setup()
        for r in range(a.rounds):
            plain.append(plain_loop(dm, a.model, model_cfg, a.steps, a.warmup, device))
            print(f"round {r + 1}: plain PyTorch loop (fp32) {plain[-1]:.3f} images/s", flush=True)
            for precision in precisions:
                if device.type == "cuda":
                    torch.cuda.reset_peak_memory_stats(device)
                ours[precision].append(
                    lightning_loop(
                        dm,
                        a.model,
                        model_cfg,
                        a.steps,
                        a.warmup,
                        Path(tmp),
                        a.accelerator,
                        precision,
                    )
                )
                if device.type == "cuda":
                    peak = torch.cuda.max_memory_allocated(device) / 2**30
                    peaks[precision] = max(peaks.get(precision, 0.0), peak)
                print(f"round {r + 1}: cxrdet ({precision}) {ours[precision][-1]:.3f} images/s")
    med = statistics.median
    what = f"{a.arch} classifier" if a.model == "classifier" else "R50-FPN detector"
    reference = precisions[0]
    ratios = [x / y for x, y in zip(ours[reference], plain)]
    ratio = med(ratios)
    print(f"plain PyTorch loop (fp32): {med(plain):.3f} images/s (median of {a.rounds})")
    for precision in precisions:
        print(f"cxrdet Lightning loop ({precision}): {med(ours[precision]):.3f} images/s")
    print(
        f"ratio cxrdet ({reference}) / plain: {ratio:.3f} (target >= {TARGET[a.model]}; rounds: "
        f"{', '.join(f'{x:.3f}' for x in ratios)}); {what}, {a.size} px, batch {a.batch}, "
        f"{a.rounds} x {a.steps} timed steps, {a.threads} threads, {device.type}"
        f"{', frozen BatchNorm' if a.frozen_bn else ''}"
    )
    rss_gb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    cuda_gb = torch.cuda.max_memory_allocated() / 2**30 if device.type == "cuda" else None
    print(f"peak memory: {rss_gb:.1f} GB RSS" + (f", {cuda_gb:.1f} GB CUDA" if cuda_gb else ""))
    speedups = {k: med(v) / med(ours[reference]) for k, v in ours.items()}
    for k in precisions[1:]:
        print(f"{k}: {speedups[k]:.2f}x the images/s of {reference}")
    print(
        json.dumps(
            {
                "plain_img_per_s": round(med(plain), 4),
                "cxrdet_img_per_s": {k: round(med(v), 4) for k, v in ours.items()},
                "ratio": round(ratio, 4),
                "round_ratios": [round(x, 4) for x in ratios],
                "speedup": {k: round(v, 4) for k, v in speedups.items()},
                "peak_rss_gb": round(rss_gb, 2),
                "peak_cuda_gb": round(cuda_gb, 2) if cuda_gb else None,
                "peak_cuda_gb_by_precision": {k: round(v, 2) for k, v in peaks.items()},
                "seconds_per_1000_steps": round(1000 * a.batch / med(ours[reference]), 1),
                "device": torch.cuda.get_device_name(0) if device.type == "cuda" else "cpu",
                "model": what,
            }
        )
    )


if __name__ == "__main__":
    main()
