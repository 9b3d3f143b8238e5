"""Training throughput: cxrdet's Lightning loop vs a plain PyTorch loop, same everything.

    python benchmarks/train_throughput.py [--size 256] [--batch 2] [--steps 20] [--warmup 3]

Both loops train the same torchvision Faster R-CNN R50-FPN (random init, same seed) on the same
synthetic phantoms with the same DataLoader, batch, optimiser and torch threads; the first
``--warmup`` steps are not timed. The Lightning loop runs with cxrdet's usual callbacks
(progress bar, LR monitor, throughput monitor) and CSV logger. Prints images/s of both and the
ratio; the last line is one JSON object with the three figures.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

import pytorch_lightning as pl  # noqa: E402
import torch  # noqa: E402
from pytorch_lightning import callbacks as cb  # noqa: E402
from pytorch_lightning.loggers import CSVLogger  # noqa: E402

from cxrdet.datamodule import CXRDataModule  # noqa: E402
from cxrdet.dataset import batch_size  # noqa: E402
from cxrdet.model import build_fasterrcnn  # noqa: E402
from cxrdet.module import DetectorModule  # noqa: E402
from cxrdet.prepare import prepare  # noqa: E402
from cxrdet.synth import synthesize  # noqa: E402


class StepClock(pl.Callback):
    """Wall-clock time at the end of every training step."""

    def __init__(self):
        self.times: list[float] = []

    def on_train_batch_end(self, *args) -> None:
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


def plain_loop(dm: CXRDataModule, model_cfg: dict, steps: int, warmup: int) -> float:
    torch.manual_seed(0)
    model = build_fasterrcnn(**model_cfg).train()
    opt = torch.optim.SGD(model.parameters(), lr=0.001, momentum=0.9, weight_decay=1e-4)
    times, done = [], 0
    while done < steps + warmup:
        for images, targets in dm.train_dataloader():
            losses = model(list(images), list(targets))
            loss = sum(losses.values())
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            times.append(time.perf_counter())
            done += 1
            if done == steps + warmup:
                break
    return dm.batch_size * steps / (times[-1] - times[warmup - 1])


def lightning_loop(dm, model_cfg: dict, steps: int, warmup: int, out: Path) -> float:
    torch.manual_seed(0)
    module = DetectorModule(
        model=model_cfg,
        optim={
            "_target_": "torch.optim.SGD",
            "_partial_": True,
            "lr": 0.001,
            "momentum": 0.9,
            "weight_decay": 1e-4,
        },
        scheduler=None,
    )
    clock = StepClock()
    trainer = pl.Trainer(
        accelerator="cpu",
        devices=1,
        max_steps=steps + warmup,
        limit_val_batches=0,
        num_sanity_val_steps=0,
        enable_checkpointing=False,
        logger=CSVLogger(out, name="csv"),
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
    p.add_argument("--steps", type=int, default=20, help="timed steps per loop (default 20)")
    p.add_argument("--warmup", type=int, default=3, help="untimed first steps (default 3)")
    p.add_argument("--threads", type=int, default=torch.get_num_threads(), help="torch threads")
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    model_cfg = {"num_classes": 14, "image_size": a.size}
    with tempfile.TemporaryDirectory() as tmp:
        dm = make_data(Path(tmp), a.size, images=max(16, a.batch * 4))
        dm.batch_size = a.batch
        dm.setup()
        plain = plain_loop(dm, model_cfg, a.steps, a.warmup)
        print(f"plain PyTorch loop: {plain:.3f} images/s")
        ours = lightning_loop(dm, model_cfg, a.steps, a.warmup, Path(tmp))
        print(f"cxrdet Lightning loop: {ours:.3f} images/s")
    ratio = ours / plain
    print(
        f"ratio cxrdet / plain: {ratio:.3f} (target >= 0.97); {a.size} px, batch {a.batch}, "
        f"{a.steps} timed steps, {a.threads} threads"
    )
    print(
        json.dumps(
            {
                "plain_img_per_s": round(plain, 4),
                "cxrdet_img_per_s": round(ours, 4),
                "ratio": round(ratio, 4),
            }
        )
    )


if __name__ == "__main__":
    main()
