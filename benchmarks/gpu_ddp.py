"""A 20-step DDP training run on two GPUs (``trainer.devices=2``, no strategy key), for
``benchmarks/gpu_check.py`` on a machine with two or more GPUs.

    python benchmarks/gpu_ddp.py WORK_DIR [SIZE]

Synthetic phantoms prepared at SIZE (512) in WORK_DIR, then ``train.py`` with random init.
Prints one line: the steps done, the validated images and the wall time.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd

from cxrdet.data.prepare import prepare
from cxrdet.demo.synth import synthesize

ROOT = Path(__file__).resolve().parent.parent


def main() -> None:
    work, size = Path(sys.argv[1]), sys.argv[2] if len(sys.argv) > 2 else "512"
    synthesize(work / "raw", 64, 0, seed=0, progress=False, workers=os.cpu_count() or 1)
    prepare(work / "raw" / "train", work / "prepared", [int(size)], progress=False)
    run = work / "run"
    start = time.perf_counter()
    subprocess.run(
        [
            sys.executable,
            "train.py",
            f"paths.raw_dir={work / 'raw'}",
            f"paths.prepared_dir={work / 'prepared'}",
            f"data.image_size={size}",
            "data.empty_images=keep",
            "model.weights=null",
            "trainer.accelerator=gpu",
            "trainer.devices=2",
            "trainer.max_steps=20",
            "trainer.val_check_interval=20",
            f"hydra.run.dir={run}",
        ],
        cwd=ROOT,
        check=True,
    )
    seconds = time.perf_counter() - start
    metrics = pd.read_csv(run / "csv" / "metrics.csv")
    images = int(metrics["val/images"].dropna().iloc[-1])
    steps = int(metrics["step"].max()) + 1
    print(f"DDP on 2 GPUs: {steps} steps, {images} validation images scored, {seconds:.0f} s")


if __name__ == "__main__":
    main()
