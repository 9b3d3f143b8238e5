"""A 20-step DDP training run on two GPUs (``trainer.devices=2``, no strategy key), for
``benchmarks/gpu_check.py`` on a machine with two or more GPUs; then a 2-GPU run stopped by
SLURM's requeue signal and continued on one GPU.

    python benchmarks/gpu_ddp.py WORK_DIR [SIZE]

Synthetic phantoms prepared at SIZE (512) in WORK_DIR, then ``train.py`` with random init.
The requeue run gets SIGUSR2 at step 5 (``tests/training/signal_at_step.py``) with a stand-in
``scontrol`` on PATH and SLURM_JOB_ID set; both ranks stop, ``requeue.ckpt`` is written, and
the same command with ``trainer.devices=1`` continues it to step 20. Prints one line each.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import torch

from cxrdet.data.prepare import prepare
from cxrdet.demo.synth import synthesize

ROOT = Path(__file__).resolve().parent.parent


def train(work: Path, size: str, run: Path, devices: int, *extra, env=None, check=True):
    return subprocess.run(
        [
            sys.executable,
            "train.py",
            f"paths.raw_dir={work / 'raw'}",
            f"paths.prepared_dir={work / 'prepared'}",
            f"data.image_size={size}",
            "data.empty_images=keep",
            "model.weights=null",
            "trainer.accelerator=gpu",
            f"trainer.devices={devices}",
            "trainer.max_steps=20",
            "trainer.val_check_interval=20",
            "trainer.log_every_n_steps=5",  # the ranks agree on the signal at logging steps
            f"hydra.run.dir={run}",
            *extra,
        ],
        cwd=ROOT,
        check=check,
        env=env,
    )


def main() -> None:
    work, size = Path(sys.argv[1]), sys.argv[2] if len(sys.argv) > 2 else "512"
    synthesize(work / "raw", 64, 0, seed=0, progress=False, workers=os.cpu_count() or 1)
    prepare(work / "raw" / "train", work / "prepared", [int(size)], progress=False)
    run = work / "run"
    start = time.perf_counter()
    train(work, size, run, 2)
    seconds = time.perf_counter() - start
    metrics = pd.read_csv(run / "csv" / "metrics.csv")
    images = int(metrics["val/images"].dropna().iloc[-1])
    steps = int(metrics["step"].max()) + 1
    print(f"DDP on 2 GPUs: {steps} steps, {images} validation images scored, {seconds:.0f} s")
    bin_dir = work / "bin"
    bin_dir.mkdir(exist_ok=True)
    (bin_dir / "scontrol").write_text(f'#!/bin/sh\necho "$@" >> {work / "scontrol.txt"}\n')
    (bin_dir / "scontrol").chmod(0o755)
    env = {
        **os.environ,
        "PATH": f"{bin_dir}:{os.environ['PATH']}",
        "SLURM_JOB_ID": "4242",
        "PYTHONPATH": str(ROOT / "tests" / "training"),
    }
    requeued = work / "requeued"
    signal = ["+callbacks.signal._target_=signal_at_step.SignalAtStep", "+callbacks.signal.step=5"]
    stopped = train(work, size, requeued, 2, *signal, env=env, check=False)
    step = torch.load(requeued / "checkpoints" / "requeue.ckpt", weights_only=True)["global_step"]
    train(work, size, requeued, 1, env=env)  # the requeued job, on one GPU
    last = torch.load(requeued / "checkpoints" / "last.ckpt", weights_only=True)["global_step"]
    print(
        f"requeue on 2 GPUs: exit {stopped.returncode}, requeue.ckpt at step {step}, scontrol "
        f"{(work / 'scontrol.txt').read_text().split()}; continued on 1 GPU to step {last}"
    )


if __name__ == "__main__":
    main()
