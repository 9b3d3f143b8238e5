"""The one GPU check: cxrdet's CUDA paths and their figures, ending with one JSON line.

    python benchmarks/gpu_check.py                 # with a CUDA GPU (~3 minutes on an H200)
    python benchmarks/gpu_check.py --device cpu --size 64 --steps 2 --images 8   # a dry run

Run through ``bash benchmarks/gpu_check.sh`` (which first installs carried wheels, if any).
In order, each step a subprocess with its own time limit, so that one failure costs only its
own figures:

1. the GPU's name and compute capability, and what ``precision=auto`` picks there;
2. the tests marked ``gpu`` (training, validation and prediction on CUDA, fp32 / fp16 / bf16);
3. training images/s at ``--size`` px, batch 8, for ``32-true``, ``16-mixed`` and, where the
   GPU computes it natively, ``bf16-mixed``, with the peak CUDA memory of each;
4. validation images/s, one backbone pass against two (``benchmarks/validation.py``);
5. prediction images/s through ``predict.py``'s pipeline at fp32 and at auto's precision;
6. ONNX Runtime (its CUDA provider when onnxruntime-gpu is installed) against PyTorch eager;
7. fp16-vs-fp32 and bf16-vs-fp32 box agreement (``benchmarks/box_agreement.py``);
8. with two or more GPUs, a 20-step DDP training run (``trainer.devices=2``).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
ENV = {**os.environ, "NO_ALBUMENTATIONS_UPDATE": "1", "WANDB_MODE": "offline"}


def step(name: str, args: list[str], limit: int, results: dict, json_last: bool = True):
    """Run ``python ARGS`` in the repository for at most ``limit`` s; keep its last JSON line."""
    print(f"== {name}", flush=True)
    start = time.perf_counter()
    try:
        done = subprocess.run(
            [sys.executable, *args],
            cwd=ROOT,
            env=ENV,
            capture_output=True,
            text=True,
            timeout=limit,
        )
    except subprocess.TimeoutExpired:
        results[name] = {"error": f"over its {limit} s limit"}
        print(f"   over its {limit} s limit", flush=True)
        return None
    seconds = round(time.perf_counter() - start, 1)
    lines = [line for line in done.stdout.splitlines() if line.strip()]
    if done.returncode != 0 or not lines:
        tail = (done.stdout + done.stderr).strip().splitlines()[-8:]
        results[name] = {"error": f"exit {done.returncode}", "tail": tail, "seconds": seconds}
        print("\n".join(f"   {line}" for line in tail), flush=True)
        return None
    for line in lines[-4:]:
        print(f"   {line}", flush=True)
    value = json.loads(lines[-1]) if json_last else {"summary": lines[-1]}
    results[name] = {**value, "seconds": seconds}
    return results[name]


def gpu_info(device: str) -> dict:
    import torch

    from cxrdet.models.precision import describe_device, native_bf16, resolve_precision

    info = {"torch": torch.__version__, "device": describe_device(device)}
    if device == "cuda":
        major, minor = torch.cuda.get_device_capability()
        info.update(
            gpus=torch.cuda.device_count(),
            capability=f"{major}.{minor}",
            native_bf16=native_bf16(),
            memory_gb=round(torch.cuda.get_device_properties(0).total_memory / 2**30, 1),
        )
    info["auto_precision"] = resolve_precision("auto", device)
    return info


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cuda", help="cuda (default) | cpu: a dry run")
    p.add_argument("--size", type=int, default=512)
    p.add_argument("--steps", type=int, default=20, help="timed training steps per precision")
    p.add_argument("--images", type=int, default=64, help="prediction images")
    a = p.parse_args()
    start = time.perf_counter()
    cuda = a.device == "cuda"
    info = gpu_info(a.device)
    print(json.dumps(info), flush=True)
    results: dict = {"gpu": info}
    size, batch = str(a.size), "8"
    if cuda:
        step("tests", ["-m", "pytest", "-q", "-m", "gpu", "tests"], 240, results, False)
    precisions = ["32-true", "16-mixed"] + (["bf16-mixed"] if info.get("native_bf16") else [])
    step(
        "train",
        ["benchmarks/train_throughput.py", "--size", size, "--batch", batch, "--steps",
         str(a.steps), "--warmup", "3", "--rounds", "1", "--frozen-bn",
         "--accelerator", "gpu" if cuda else "cpu",
         "--precisions", ",".join(precisions) if cuda else "32-true"],
        420,
        results,
    )  # fmt: skip
    auto = info["auto_precision"]
    step(
        "validation",
        ["benchmarks/validation.py", "--size", size, "--images", str(max(8, a.images // 2)),
         "--batch", batch, "--device", a.device, "--precision", auto],
        240,
        results,
    )  # fmt: skip
    for precision in dict.fromkeys(["32-true", auto]):
        step(
            f"predict_{precision}",
            ["benchmarks/predict.py", "--images", str(a.images), "--size", size, "--batch", batch,
             "--device", a.device, "--precision", precision, "--rounds", "1",
             "--arch", "resnet18"],
            300,
            results,
        )  # fmt: skip
    step(
        "onnx",
        ["benchmarks/export.py", "--images", "8", "--size", size, "--device", a.device,
         "--threads", str(os.cpu_count() or 2)],
        300,
        results,
    )  # fmt: skip
    step(
        "boxes", ["benchmarks/box_agreement.py", "--device", a.device, "--size", size], 180, results
    )
    if cuda and info["gpus"] >= 2:
        with tempfile.TemporaryDirectory() as tmp:
            step("ddp", ["benchmarks/gpu_ddp.py", tmp, size], 300, results, json_last=False)
    else:
        results["ddp"] = {"skipped": "one GPU" if cuda else "dry run"}
    results["seconds"] = round(time.perf_counter() - start, 1)
    print(json.dumps(results))


if __name__ == "__main__":
    main()
