"""The one GPU check: cxrdet's CUDA paths and their figures, ending with one JSON line.

    python benchmarks/gpu_check.py                 # with a CUDA GPU (about 8 minutes on an H200)
    python benchmarks/gpu_check.py --device cpu --size 64 --steps 2 --images 8   # a dry run

Run through ``bash benchmarks/gpu_check.sh`` (which first installs carried wheels, if any).
In order of importance, each step a subprocess with its own time limit, all within
``--budget`` seconds (a step that would start past it is skipped and says so), so that one
failure or a slow machine costs only the last figures:

1. the GPU's name and compute capability, and what ``precision=auto`` picks there;
2. training images/s at ``--size`` px, batch 16, the batched detector, for ``32-true``,
   ``16-mixed`` and, where native, ``bf16-mixed`` (3 rounds of 50 steps, loader workers),
   each one's peak CUDA memory, the GPU's busy share and its top 10 kernels;
3. host waits per training step, validation batch and prediction batch, batch 4 and 8,
   batched and torchvision's implementation (``benchmarks/syncs.py``: the waits
   ``cxrdet.models.rcnn.syncs.HostWaits`` counts, and the syncs
   ``torch.cuda.set_sync_debug_mode`` counts in a training step); the RPN's proposal stage
   per image at batch 1, 2, 4 and 8, each NMS method against torchvision's
   (``benchmarks/proposals.py``);
4. the tests marked ``gpu`` (training, validation and prediction on CUDA, fp32 / fp16 / bf16);
5. torchvision's implementation at the same size and precision, for the ratio;
6. training at twice ``--size`` (1,024 px), batch 8, fp32 and auto's precision;
7. validation images/s, one backbone pass against two (``benchmarks/validation.py``);
8. prediction images/s through ``predict.py``'s pipeline at fp32 and at auto's precision;
9. fp16-vs-fp32 and bf16-vs-fp32 box agreement (``benchmarks/box_agreement.py``);
10. ``model.compile=true`` (inductor) at ``--size`` and auto's precision;
11. ONNX Runtime (its CUDA provider when onnxruntime-gpu is installed) against PyTorch eager;
12. with two or more GPUs, a 20-step DDP training run (``trainer.devices=2``).
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


DEADLINE = [float("inf")]  # perf_counter() past which no step starts (main sets it)


def step(name: str, args: list[str], limit: int, results: dict, json_last: bool = True):
    """Run ``python ARGS`` in the repository for at most ``limit`` s (and never past the
    deadline); keep its last JSON line."""
    print(f"== {name}", flush=True)
    limit = int(min(limit, DEADLINE[0] - time.perf_counter()))
    if limit < 20:
        results[name] = {"skipped": "out of the check's time budget"}
        print("   skipped: out of the check's time budget", flush=True)
        return None
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
    p.add_argument("--steps", type=int, default=50, help="timed training steps per round")
    p.add_argument("--images", type=int, default=256, help="prediction images")
    p.add_argument("--budget", type=int, default=450, help="seconds for all the steps")
    a = p.parse_args()
    start = time.perf_counter()
    DEADLINE[0] = start + a.budget
    cuda = a.device == "cuda"
    info = gpu_info(a.device)
    print(json.dumps(info), flush=True)
    results: dict = {"gpu": info}
    size, big = str(a.size), str(2 * a.size)
    auto = info["auto_precision"]
    accelerator = "gpu" if cuda else "cpu"
    precisions = ["32-true", "16-mixed"] + (["bf16-mixed"] if info.get("native_bf16") else [])
    rounds = "3" if cuda else "1"

    def train(name, train_size, batch, precs, limit, *extra):
        step(
            name,
            ["benchmarks/train_throughput.py", "--size", train_size, "--batch", batch,
             "--steps", str(a.steps), "--warmup", "5" if cuda else "1", "--rounds", rounds,
             "--frozen-bn", "--accelerator", accelerator, "--precisions", ",".join(precs),
             *extra],
            limit,
            results,
        )  # fmt: skip

    train("train", size, "16", precisions if cuda else ["32-true"], 240)
    step(
        "syncs",
        ["benchmarks/syncs.py", "--accelerator", accelerator, "--size", size,
         "--batches", "4,8"],
        150,
        results,
    )  # fmt: skip
    step(
        "proposals",
        ["benchmarks/proposals.py", "--size", size, "--device", a.device,
         "--rounds", rounds, "--threads", str(os.cpu_count() or 2)],
        60,
        results,
    )  # fmt: skip
    if cuda:
        step("tests", ["-m", "pytest", "-q", "-m", "gpu", "tests"], 150, results, False)
    one_round = ("--rounds", "1")
    train("train_torchvision_impl", size, "16", [auto], 90, "--impl", "torchvision", *one_round)
    train("train_1024", big, "8", list(dict.fromkeys(["32-true", auto])), 120, *one_round)
    step(
        "validation",
        ["benchmarks/validation.py", "--size", size, "--images", str(max(8, a.images // 2)),
         "--batch", "16", "--device", a.device, "--precision", auto],
        90,
        results,
    )  # fmt: skip
    for precision in dict.fromkeys(["32-true", auto]):
        step(
            f"predict_{precision}",
            ["benchmarks/predict.py", "--images", str(a.images), "--size", size, "--batch", "16",
             "--device", a.device, "--precision", precision, "--rounds", "1",
             "--arch", "resnet18"],
            120,
            results,
        )  # fmt: skip
    step(
        "boxes", ["benchmarks/box_agreement.py", "--device", a.device, "--size", size], 90, results
    )
    train("train_compiled", size, "16", [auto], 240, "--compile", *one_round)
    step(
        "onnx",
        ["benchmarks/export.py", "--images", "8", "--size", size, "--device", a.device,
         "--threads", str(os.cpu_count() or 2)],
        120,
        results,
    )  # fmt: skip
    if cuda and info["gpus"] >= 2:
        with tempfile.TemporaryDirectory() as tmp:
            step("ddp", ["benchmarks/gpu_ddp.py", tmp, size], 200, results, json_last=False)
    else:
        results["ddp"] = {"skipped": "one GPU" if cuda else "dry run"}
    results["seconds"] = round(time.perf_counter() - start, 1)
    print(json.dumps(results))


if __name__ == "__main__":
    main()
