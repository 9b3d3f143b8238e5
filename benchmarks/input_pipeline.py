"""The training input pipeline alone: can it feed a GPU?

    python benchmarks/input_pipeline.py [--images 64] [--size 512] [--batch 8] [--batches 24]
        [--workers 0,1,2] [--target 150]

Synthetic chest phantoms (``cxrdet synth``) prepared at ``--size`` (``cxrdet prepare``), read
by cxrdet's training loader exactly as ``train.py`` builds it (``CXRDataModule``: PNG decode,
the seed's Albumentations pipeline, collate; pinned memory where CUDA exists), with every
image trained (``data.empty_images=keep``). For each worker count it times ``--batches``
batches after a first one (worker start-up left out). The images/s of one worker process
gives the ``data.num_workers`` that feeds ``--target`` images/s (a GPU's training rate). The
last line is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import tempfile
import time
from pathlib import Path

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

import torch  # noqa: E402
from hydra.utils import instantiate  # noqa: E402
from omegaconf import OmegaConf  # noqa: E402

from cxrdet.config import CONF_DIR  # noqa: E402
from cxrdet.data.cpus import usable_cpus  # noqa: E402
from cxrdet.data.datamodule import CXRDataModule  # noqa: E402
from cxrdet.data.prepare import prepare  # noqa: E402
from cxrdet.demo.synth import synthesize  # noqa: E402


def images_per_s(data: CXRDataModule, workers: int, batches: int, pin: bool) -> float:
    data.num_workers = workers
    loader = data.train_dataloader()
    loader.pin_memory = pin  # train.py pins on CUDA (the trainer decides); here the script does
    it, seen, start = iter(loader), 0, None
    while seen < batches:
        try:
            images, _ = next(it)
        except StopIteration:  # next epoch (persistent workers stay up)
            it = iter(loader)
            continue
        if start is None:  # the first batch pays for starting the workers
            start = time.perf_counter()
            continue
        seen += 1
    elapsed = time.perf_counter() - start
    del it, loader
    return batches * data.batch_size / elapsed


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--images", type=int, default=64, help="synthetic training images")
    p.add_argument("--size", type=int, default=512)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--batches", type=int, default=24, help="timed batches per worker count")
    p.add_argument("--workers", default="0,1,2", help="worker counts to time (0: in-process)")
    p.add_argument("--target", type=float, default=150.0, help="images/s to feed")
    a = p.parse_args()
    pin = torch.cuda.is_available()
    augment = instantiate(OmegaConf.load(CONF_DIR / "augment" / "seed.yaml"))
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        start = time.perf_counter()
        synthesize(tmp / "raw", a.images, 0, seed=0, progress=False, workers=usable_cpus())
        prepare(
            tmp / "raw" / "train", tmp / "prepared", [a.size], workers=usable_cpus(), progress=False
        )
        print(f"{a.images} phantoms prepared at {a.size} px in {time.perf_counter() - start:.0f} s")
        data = CXRDataModule(
            str(tmp / "raw" / "train.csv"),
            str(tmp / "prepared" / str(a.size) / "train"),
            str(tmp / "prepared" / str(a.size) / "train_meta.csv"),
            image_size=a.size,
            split="all_train",
            empty_images="keep",
            batch_size=a.batch,
            augment=augment,
            seed=0,
        )
        data.setup("fit")
        rates = {}
        for workers in (int(w) for w in a.workers.split(",")):
            rates[workers] = images_per_s(data, workers, a.batches, pin)
            print(f"{workers} worker(s): {rates[workers]:.1f} images/s", flush=True)
    one = rates.get(1) or rates[min(rates)]
    needed = math.ceil(a.target / one)
    print(
        f"one worker process: {one:.1f} images/s at {a.size} px (PNG decode + the seed's "
        f"augmentation + collate{', pinned' if pin else ''}); {a.target:g} images/s need "
        f"data.num_workers={needed} ({usable_cpus()} CPUs here, {torch.get_num_threads()} torch "
        "threads)"
    )
    print(
        json.dumps(
            {
                "images_per_s": {str(k): round(v, 2) for k, v in rates.items()},
                "per_worker": round(one, 2),
                "target": a.target,
                "workers_for_target": needed,
                "size": a.size,
                "pinned": pin,
            }
        )
    )


if __name__ == "__main__":
    main()
