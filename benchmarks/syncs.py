"""Host syncs and operators per training step, counted under torch.profiler over ``train.py``.

    python benchmarks/syncs.py [--size 128] [--batches 4,8] [--impls torchvision,batched]

For each implementation (``model.rcnn_impl``) and batch size, ``python train.py`` trains a few
steps on synthetic phantoms (random init, CPU) with cxrdet's usual callbacks and loggers, and a
callback (``cxrdet.models.rcnn.syncs.SyncCounter``, added with ``+callbacks.sync_count``) profiles
one whole step, from the start of one batch to the start of the next (the model, the
optimiser, Lightning's loop, every callback and the loader). It counts the operators that make a
CUDA host wait for the GPU (``cxrdet.models.rcnn.syncs.SYNC_OPS``: ``nonzero``, ``.item()``,
NMS, ...) and all ``aten::`` operators. On a GPU, ``benchmarks/gpu_check.sh`` counts the real
syncs with ``torch.cuda.set_sync_debug_mode``. Target (issue 29): at most 12 syncs per step at
batch 4, and the same at batch 8. The last line is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TARGET = 12


def make_data(root: Path, size: int) -> Path:
    from cxrdet.data.prepare import prepare
    from cxrdet.demo.synth import synthesize

    raw = root / "raw"
    synthesize(raw, 24, 0, seed=0, normal_share=0.2, min_px=300, max_px=400, progress=False)
    prepare(root / "raw" / "train", root / "prepared", [size], progress=False)
    return root


def count(root: Path, size: int, impl: str, batch: int, accelerator: str = "cpu") -> dict:
    out = root / f"syncs-{impl}-{batch}.json"
    overrides = [
        "data=256",
        f"paths.raw_dir={root / 'raw'}",
        f"paths.prepared_dir={root / 'prepared'}",
        f"data.image_size={size}",
        f"data.batch_size={batch}",
        "data.split=all_train",
        "data.empty_images=keep",
        "data.num_workers=0",
        "trainer=cpu" if accelerator == "cpu" else "trainer=gpu",
        "trainer.max_steps=5",
        "trainer.val_check_interval=1000",
        "model.weights=null",
        f"model.rcnn_impl={impl}",
        f"model.channels_last={accelerator == 'gpu'}",
        "+callbacks.sync_count._target_=cxrdet.models.rcnn.syncs.SyncCounter",
        f"+callbacks.sync_count.out={out}",
        f"hydra.run.dir={root / 'runs' / f'{impl}-{batch}'}",
    ]
    env = {**os.environ, "NO_ALBUMENTATIONS_UPDATE": "1"}
    done = subprocess.run(
        [sys.executable, "train.py", *overrides], cwd=ROOT, capture_output=True, text=True, env=env
    )
    if done.returncode != 0 or not out.is_file():
        raise SystemExit(f"train.py failed ({impl}, batch {batch}):\n{done.stderr[-3000:]}")
    return json.loads(out.read_text())


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--size", type=int, default=128, help="image side in px (default 128)")
    p.add_argument("--batches", default="4,8", help="batch sizes (default 4,8)")
    p.add_argument("--impls", default="torchvision,batched", help="model.rcnn_impl values")
    p.add_argument("--accelerator", default="cpu", choices=["cpu", "gpu"], help="default cpu")
    a = p.parse_args()
    batches = [int(b) for b in a.batches.split(",")]
    results: dict = {}
    with tempfile.TemporaryDirectory() as tmp:
        root = make_data(Path(tmp), a.size)
        for impl in a.impls.split(","):
            for batch in batches:
                c = count(root, a.size, impl, batch, a.accelerator)
                results[f"{impl}_batch{batch}"] = c
                ops = ", ".join(f"{k.split('::')[1]} {n}" for k, n in c["by_op"].items())
                cuda = "" if c["cuda_syncs"] is None else f"; CUDA counted {c['cuda_syncs']}"
                print(f"{impl}, batch {batch}: {c['syncs']} sync ops ({ops}), {c['ops']} ops{cuda}")
    if "batched" in a.impls:
        counts = [results[f"batched_batch{b}"]["syncs"] for b in batches]
        ok = counts[0] <= TARGET and len(set(counts)) == 1
        print(f"batched: {counts} syncs per step at batches {batches} (target <= {TARGET}, "
              f"equal at every batch): {'met' if ok else 'missed'}")  # fmt: skip
    print(json.dumps({"size": a.size, **results}))


if __name__ == "__main__":
    main()
