"""Training throughput: cxrdet's Lightning loop vs a plain PyTorch loop, same everything, and
the Lightning loop at other precisions.

    python benchmarks/train_throughput.py [--size 256] [--batch 2] [--steps 8] [--rounds 4]
        [--warmup 2] [--precisions 32-true[,bf16-mixed]] [--accelerator cpu|gpu] [--frozen-bn]
        [--roi 512] [--impl batched|torchvision] [--compile] [--workers auto]
        [--model detector|classifier] [--arch resnet50]

Both loops train the same model (random init, same seed): the torchvision Faster R-CNN R50-FPN
(``--impl``: cxrdet's batched RPN and box head, or torchvision's per-image reference), or with
``--model classifier`` the "No finding" classifier (``--arch``; binary cross-entropy on "the
image has a finding", as ``NoFindingModule``; e.g. ``--batch 16``), on the same synthetic
phantoms with the same DataLoader (``--workers`` loader processes, ``auto`` as train.py's
default), batch, fused SGD and torch threads; the first ``--warmup`` steps of each run are not
timed. The Lightning loop runs with cxrdet's usual callbacks (progress bar, LR monitor,
images/s and data-wait monitor, each reading the device every 20 steps as train.py's defaults
do) and CSV logger, once per precision (``trainer.precision`` values; the plain loop is fp32).
The clock reads the device only where the timed steps start and end. The loops take turns,
``--rounds`` times (plain, cxrdet, plain, cxrdet, ...), so that a machine speeding up or
slowing down during the run (another job ending, say) weighs on both alike: the ratio is the
median of each round's cxrdet/plain. On a GPU the defaults are 3 rounds of 50 steps, and 10 more
steps of the Lightning loop run under the profiler: the GPU's busy share (the kernels' time over
the wall time) is printed beside images/s. Prints images/s (medians), the ratio and each
precision's speed-up over the first; the last line is one JSON object, with the peak memory
(process RSS; on a GPU, the most CUDA memory allocated). ``--frozen-bn`` trains what a
pretrained run trains (frozen BatchNorm, three ResNet stages; the weights' values do not change
the cost) instead of all of it.
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

from cxrdet.data.cpus import worker_count  # noqa: E402
from cxrdet.data.datamodule import CXRDataModule  # noqa: E402
from cxrdet.data.prepare import prepare  # noqa: E402
from cxrdet.demo.synth import synthesize  # noqa: E402
from cxrdet.models.classifier import NoFindingModule, build_classifier  # noqa: E402
from cxrdet.models.detector import build_fasterrcnn  # noqa: E402
from cxrdet.models.module import DetectorModule  # noqa: E402
from cxrdet.training.callbacks import ProgressBar, StepTimeMonitor  # noqa: E402

TARGET = {"detector": 0.97, "classifier": 0.95}  # cxrdet / plain images/s
OPTIM = {  # the optimiser both loops use (conf/optim/sgd.yaml)
    "_target_": "torch.optim.SGD",
    "_partial_": True,
    "lr": 0.001,
    "momentum": 0.9,
    "weight_decay": 1e-4,
    "fused": True,
}
LOG_EVERY = 20  # train.py's trainer.log_every_n_steps


class StepClock(pl.Callback):
    """Wall-clock time where the timed steps start (after ``warmup``) and where training ends,
    each read after waiting for the device (nothing in between waits)."""

    def __init__(self, warmup: int):
        self.warmup = warmup
        self.start = self.end = 0.0

    def on_train_batch_end(self, trainer, *args) -> None:
        if trainer.global_step == self.warmup:
            _sync(trainer.strategy.root_device)
            self.start = time.perf_counter()

    def on_train_end(self, trainer, *args) -> None:
        _sync(trainer.strategy.root_device)
        self.end = time.perf_counter()


class BusyShare(pl.Callback):
    """The GPU's busy share over ``steps`` training steps after step ``after``: the summed time of
    its kernels over the wall time, from torch.profiler (CUDA activity)."""

    def __init__(self, after: int, steps: int = 10):
        self.after, self.steps, self.prof, self.t0 = after, steps, None, 0.0
        self.share: float | None = None
        self.top: list[tuple[str, float]] = []

    def on_train_batch_start(self, trainer, *args) -> None:
        from torch.profiler import ProfilerActivity, profile

        if trainer.global_step == self.after:
            _sync(trainer.strategy.root_device)
            self.prof = profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA])
            self.prof.__enter__()
            self.t0 = time.perf_counter()

    def on_train_batch_end(self, trainer, *args) -> None:
        if self.prof is None or trainer.global_step < self.after + self.steps:
            return
        _sync(trainer.strategy.root_device)
        wall_us = (time.perf_counter() - self.t0) * 1e6
        self.prof.__exit__(None, None, None)
        kernels = [e for e in self.prof.events() if e.device_type == torch.autograd.DeviceType.CUDA]
        busy = sum(e.time_range.elapsed_us() for e in kernels)
        self.share = busy / wall_us if wall_us > 0 else None
        by_name: dict[str, float] = {}
        for e in kernels:
            by_name[e.name] = by_name.get(e.name, 0.0) + e.time_range.elapsed_us() / 1e3
        self.top = sorted(by_name.items(), key=lambda kv: -kv[1])[:10]
        self.prof = None


def make_data(root: Path, size: int, images: int, workers: int = 0) -> CXRDataModule:
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
        num_workers=workers,
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
    opt = torch.optim.SGD(model.parameters(), lr=0.001, momentum=0.9, weight_decay=1e-4, fused=True)
    start, done = 0.0, 0
    loader = dm.train_dataloader()  # one loader, its workers kept across epochs (as Lightning)
    while done < steps + warmup:
        for images, targets in loader:
            images = [im.to(device, non_blocking=True) for im in images]
            move = lambda v: v.to(device, non_blocking=True) if torch.is_tensor(v) else v  # noqa: E731
            targets = [{k: move(v) for k, v in t.items()} for t in targets]
            loss = compute_loss(images, targets)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            done += 1
            if done == warmup:
                _sync(device)
                start = time.perf_counter()
            if done == steps + warmup:
                break
    _sync(device)
    return dm.batch_size * steps / (time.perf_counter() - start)


def lightning_loop(
    dm,
    kind: str,
    model_cfg: dict,
    steps: int,
    warmup: int,
    out: Path,
    accelerator: str,
    precision: str,
    busy: BusyShare | None = None,
) -> float:
    """Images/s of the timed steps; with ``busy``, only that profiled stretch runs (after the
    warm-up) and its figures land in ``busy``."""
    torch.manual_seed(0)
    module_class = NoFindingModule if kind == "classifier" else DetectorModule
    module = module_class(model=model_cfg, optim=OPTIM, scheduler=None)
    clock = StepClock(warmup)
    extra = [busy] if busy else []
    trainer = pl.Trainer(
        accelerator=accelerator,
        devices=1,
        precision=precision,
        max_steps=warmup + (busy.steps if busy else steps),
        limit_val_batches=0,
        num_sanity_val_steps=0,
        enable_checkpointing=False,
        logger=CSVLogger(out, name=f"csv-{precision}"),
        log_every_n_steps=LOG_EVERY,
        benchmark=True,  # cuDNN picks its fastest kernels for the fixed image size
        callbacks=[
            clock,
            *extra,
            ProgressBar(refresh_rate=LOG_EVERY),
            cb.LearningRateMonitor(logging_interval="step"),
            StepTimeMonitor(),
        ],
    )
    trainer.fit(module, datamodule=dm)
    done = busy.steps if busy else steps
    return dm.batch_size * done / (clock.end - clock.start)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--size", type=int, default=256, help="image side in px (default 256)")
    p.add_argument("--batch", type=int, default=2, help="images per step (default 2)")
    p.add_argument("--steps", type=int, help="timed steps per run (default 8; 50 on a GPU)")
    p.add_argument("--rounds", type=int, help="turns of each loop (default 4; 3 on a GPU)")
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
    p.add_argument("--impl", default="batched", help="model.rcnn_impl (default batched)")
    p.add_argument("--compile", action="store_true", help="model.compile=true")
    p.add_argument("--workers", default="auto", help="loader processes (default auto)")
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    device = torch.device("cuda" if a.accelerator == "gpu" else "cpu")
    gpu = device.type == "cuda"
    a.steps = a.steps or (50 if gpu else 8)
    a.rounds = a.rounds or (3 if gpu else 4)
    precisions = a.precisions.split(",")
    model_cfg = {
        "num_classes": 14,
        "weights": None,  # random init: nothing to download; --frozen-bn costs as pretrained
        "image_size": a.size,
        "frozen_bn": a.frozen_bn,
        "roi_batch_size_per_image": a.roi,
        "rcnn_impl": a.impl,
        "channels_last": gpu,  # train.py's default on a GPU; slower on the CPU
        "compile": a.compile,
    }
    if a.model == "classifier":
        model_cfg = {"arch": a.arch, "weights": None}
    plain, ours, peaks = [], {k: [] for k in precisions}, {}
    busy = BusyShare(after=a.warmup) if gpu else None
    workers = worker_count(a.workers)
    with tempfile.TemporaryDirectory() as tmp:
        dm = make_data(Path(tmp), a.size, images=max(16, a.batch * 4), workers=workers)
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
        if busy is not None:  # profiled apart: the profiler slows the steps it records
            args = (dm, a.model, model_cfg, a.steps, a.warmup, Path(tmp), a.accelerator)
            lightning_loop(*args, precisions[-1], busy=busy)
            print(f"GPU busy {busy.share:.0%} of the wall time ({precisions[-1]}, 10 steps)")
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
        f"{a.rounds} x {a.steps} timed steps, {a.threads} threads, {workers} loader workers, "
        f"{device.type}, {a.impl}{', compiled' if a.compile else ''}"
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
                "impl": a.impl,
                "compiled": a.compile,
                "workers": workers,
                "gpu_busy_share": round(busy.share, 3) if busy and busy.share else None,
                "top_kernels_ms": [[k[:80], round(v, 2)] for k, v in busy.top] if busy else None,
            }
        )
    )


if __name__ == "__main__":
    main()
