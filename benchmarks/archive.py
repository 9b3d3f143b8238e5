"""Prediction over an archive: images/s with 1 and 2 processes, and memory against the number
of images.

    python benchmarks/archive.py [--images 48] [--size 256] [--batch 4]
        [--memory 1000,100000] [--index 100000] [--skip-speed] [--skip-memory] [--skip-index]

Speed: ``predict.py`` as a user runs it, on ``--images`` synthetic DICOM phantoms with a
random-init R50-FPN checkpoint prepared at ``--size``, once with one process (every CPU's
thread) and once with ``trainer.devices=2`` (each process half the CPUs); the figure is
predict.json's ``images_per_s`` (from the first batch to the merge's barrier) and the wall time
of the whole command (start-up, model loading and the merge included).

Memory: ``predict()`` in a fresh process over N images (each a hard link to one 32-px PNG, so
that 100,000 cost no disk) with a stand-in detector that returns 20 boxes per image at once:
what is left is what the pipeline itself keeps per image (the list of images, the lines
written, the merge). Prints each N's peak resident memory and the ratio of the largest to the
smallest (target: within 1.10).

Index: ``--index`` DICOMs in 100 folders of a tree (hard links to one phantom), listed by
:func:`cxrdet.data.dicom_index.index_dicoms` with every CPU: files/s with no index yet (walk and
headers) and again from its cache (walk only). The last line is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
REPO = Path(__file__).resolve().parent.parent


def speed(images: int, size: int, batch: int, root: Path) -> dict:
    import torch

    from cxrdet.demo.synth import synthesize
    from cxrdet.models.module import DetectorModule

    synthesize(root / "raw", 0, images, seed=1, min_px=size, max_px=size * 2, progress=False)
    torch.manual_seed(0)
    module = DetectorModule(
        model={"num_classes": 14, "image_size": size, "weights": None},  # random init: offline
        optim={"_target_": "torch.optim.SGD", "_partial_": True, "lr": 0.001},
    )
    ckpt = root / "model.ckpt"
    torch.save({"hyper_parameters": dict(module.hparams), "state_dict": module.state_dict()}, ckpt)
    out = {}
    for processes in (1, 2):
        run = root / f"p{processes}"
        command = [
            sys.executable, "predict.py", f"ckpt_path={ckpt}", f"dicom_dir={root / 'raw' / 'test'}",
            f"batch_size={batch}", "num_workers=0", "progress=false",
            f"trainer.devices={processes}", f"hydra.run.dir={run}",
        ]  # fmt: skip
        start = time.perf_counter()
        subprocess.run(command, cwd=REPO, check=True, capture_output=True)
        wall = time.perf_counter() - start
        summary = json.loads((run / "predict.json").read_text())
        out[processes] = {"images_per_s": summary["images_per_s"], "wall_s": round(wall, 1)}
        print(
            f"{processes} process(es): {summary['images_per_s']:.2f} images/s predicting, "
            f"{wall:.1f} s for the whole command ({images} images, {size} px, batch {batch})"
        )
    same = (root / "p1" / "submission.csv").read_bytes() == (
        root / "p2" / "submission.csv"
    ).read_bytes()
    print(  # torch's CPU kernels sum in an order that depends on the thread count
        f"submission.csv of 2 processes {'equals' if same else 'differs from'} 1 process's "
        f"({torch.get_num_threads()} threads against 1 each: equal only at equal threads)"
    )
    return out


class StandIn:
    """A detector that costs nothing: 20 boxes per image."""

    def __init__(self):
        import torch

        k = torch.arange(20, dtype=torch.float32)
        self.output = {
            "boxes": torch.stack([k, k, k + 8, k + 8], 1),
            "scores": 1 - k / 40,
            "labels": (k % 14 + 1).long(),
        }

    def __call__(self, images):
        return [self.output for _ in images]


def memory_child(n: int, root: Path) -> int:
    """Peak resident memory (KiB) of ``predict()`` over ``n`` images in this process."""
    import cv2
    import numpy as np

    from cxrdet.inference import predictor
    from cxrdet.inference.config import PredictConfig

    images = root / "png"
    images.mkdir(parents=True)
    pixels = np.full((32, 32), 128, np.uint8)
    with open(root / "meta.csv", "w") as f:
        f.write("image_id,dim0,dim1\n")
        for i in range(n):
            f.write(f"{i},2048,2048\n")
            if i % 50_000 == 0:  # a file takes at most 65,000 links on ext4
                first = images / f"{i}.png"
                cv2.imwrite(str(first), pixels)
            else:
                os.link(first, images / f"{i}.png")
    (root / "unused.ckpt").write_bytes(b"")
    predictor.load_models = lambda *a, **k: ([StandIn()], 32)
    predictor.predict(
        PredictConfig(
            ckpt_path=str(root / "unused.ckpt"),
            output=str(root / "out" / "submission.csv"),
            image_dir=str(images),
            meta_csv=str(root / "meta.csv"),
            batch_size=64,
            num_workers=0,
            max_detections=100,
            progress=False,
        )
    )
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def memory(counts: list[int]) -> dict:
    out = {}
    for n in counts:
        with tempfile.TemporaryDirectory() as tmp:
            start = time.perf_counter()
            done = subprocess.run(
                [sys.executable, __file__, "--memory-child", str(n), "--root", tmp],
                check=True, capture_output=True, text=True,
            )  # fmt: skip
            kib = int(done.stdout.strip().splitlines()[-1])
        out[n] = kib
        seconds = time.perf_counter() - start
        print(f"{n:>7} images: peak resident memory {kib / 1024:.0f} MiB ({seconds:.0f} s)")
    ratio = max(out.values()) / min(out.values())
    print(f"largest / smallest: {ratio:.3f} (target <= 1.10)")
    return {"peak_mib": {n: round(k / 1024) for n, k in out.items()}, "ratio": round(ratio, 3)}


def index(n: int) -> dict:
    from cxrdet.data.cpus import usable_cpus
    from cxrdet.data.dicom_index import index_dicoms
    from cxrdet.demo.synth import synthesize

    out = {}
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        synthesize(root / "raw", 0, 1, seed=1, min_px=256, max_px=256, progress=False)
        source = next((root / "raw" / "test").glob("*.dicom"))
        for i in range(n):
            folder = root / "tree" / f"{i % 10}" / f"{i % 100}"
            if i < 100:
                folder.mkdir(parents=True)
            if i % 50_000 == 0:  # a file takes at most 65,000 links on ext4
                first = root / f"source{i}.dicom"
                first.write_bytes(source.read_bytes())
            os.link(first, folder / f"{i}.dicom")
        workers = usable_cpus()
        for name in ("cold", "cached"):
            start = time.perf_counter()
            listed = index_dicoms(root / "tree", root / "index.csv", workers, progress=False)
            seconds = time.perf_counter() - start
            assert len(listed.files) == n
            out[name] = round(n / seconds)
            print(f"index of {n} DICOMs, {name}: {seconds:.1f} s, {n / seconds:,.0f} files/s")
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=48)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument(
        "--memory", default="1000,100000", help="numbers of images, comma-separated"
    )
    parser.add_argument("--index", type=int, default=100_000, help="DICOMs in the index's tree")
    parser.add_argument("--skip-index", action="store_true")
    parser.add_argument("--skip-speed", action="store_true")
    parser.add_argument("--skip-memory", action="store_true")
    parser.add_argument("--memory-child", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--root", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.memory_child:
        import logging

        logging.disable(logging.WARNING)
        print(memory_child(args.memory_child, args.root))
        return
    result = {"cpus": os.cpu_count()}
    if not args.skip_speed:
        with tempfile.TemporaryDirectory() as tmp:
            result["speed"] = speed(args.images, args.size, args.batch, Path(tmp))
    if not args.skip_memory:
        result["memory"] = memory([int(n) for n in args.memory.split(",")])
    if not args.skip_index:
        result["index_files_per_s"] = index(args.index)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
