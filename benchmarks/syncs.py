"""Where a CUDA host would wait, per training step, validation batch and prediction batch,
counted on any device with ``cxrdet.models.rcnn.syncs.HostWaits``.

    python benchmarks/syncs.py [--size 128] [--batches 4,8] [--impls torchvision,batched]

For each implementation (``model.rcnn_impl``) and batch size, ``python train.py`` trains a few
steps on synthetic phantoms (random init, CPU) with cxrdet's usual callbacks and loggers, and a
callback (``cxrdet.models.rcnn.syncs.SyncCounter``, added with ``+callbacks.sync_count``) counts
one whole step, from the start of one batch to the start of the next (the model, the
optimiser, Lightning's loop, every callback and the loader): reads of device values
(``.item()``, ``.tolist()``, ...), operations whose output size depends on the data
(``nonzero``, boolean indexing, NMS, ...) and copies of host data to the device. The batched
model runs the NMS a GPU runs (``model.nms_method=matrix``; ``auto`` picks it there). Then the
same model, built alone, is counted over one validation batch (losses and detections) and one
prediction batch. On a GPU, ``benchmarks/gpu_check.sh`` also counts the real synchronisations
with ``torch.cuda.set_sync_debug_mode``. Targets (batched): a training step <= 6 waits, a
validation batch <= 8, a prediction batch <= 8, each the same at every batch size. The last
line is one JSON object.
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
TARGETS = {"train": 6, "validate": 8, "predict": 8}


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
        "model.nms_method=matrix",
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


def model_counts(size: int, impl: str, batch: int) -> dict:
    """Waits of one validation batch and one prediction batch of the model alone."""
    import torch

    from cxrdet.inference.export import smooth_images
    from cxrdet.models.detector import build_fasterrcnn
    from cxrdet.models.rcnn.syncs import count_waits
    from cxrdet.models.rcnn.validation import losses_and_detections

    torch.manual_seed(0)
    model = build_fasterrcnn(
        num_classes=14, image_size=size, rcnn_impl=impl, nms_method="matrix",
        box_candidates_per_class=100, box_score_thresh=0.001,
    ).eval()  # fmt: skip
    images = [torch.from_numpy(x)[None] for x in smooth_images(batch, size, seed=0)]
    box = torch.tensor([[0.2, 0.3, 0.45, 0.6], [0.55, 0.5, 0.8, 0.9]]) * size
    targets = [{"boxes": box, "labels": torch.tensor([4, 11])}] * batch
    with torch.no_grad():
        model(images)  # warm-up: anchors cached, pooler scales set
        validate = count_waits(lambda: losses_and_detections(model, images, targets))
        predict = count_waits(lambda: model(images))
    return {"validate": validate, "predict": predict}


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
                c = {"train": count(root, a.size, impl, batch, a.accelerator)}
                c.update(model_counts(a.size, impl, batch))
                results[f"{impl}_batch{batch}"] = {k: v["waits"] for k, v in c.items()}
                results[f"{impl}_batch{batch}_sites"] = {k: v["by_site"] for k, v in c.items()}
                cuda = c["train"]["cuda_syncs"]
                print(
                    f"{impl}, batch {batch}: waits per training step {c['train']['waits']} "
                    f"({c['train']['ops']} operators"
                    + ("" if cuda is None else f"; CUDA counted {cuda}")
                    + f"), validation batch {c['validate']['waits']}, prediction batch "
                    f"{c['predict']['waits']}"
                )
                if impl == "batched":
                    for stage in TARGETS:
                        sites = ", ".join(f"{k}: {n}" for k, n in c[stage]["by_site"].items())
                        print(f"  {stage}: {sites}")
    if "batched" in a.impls:
        for stage, target in TARGETS.items():
            counts = [results[f"batched_batch{b}"][stage] for b in batches]
            ok = max(counts) <= target and len(set(counts)) == 1
            print(f"batched {stage}: {counts} waits at batches {batches} (target <= {target}, "
                  f"the same at every batch): {'met' if ok else 'missed'}")  # fmt: skip
    print(json.dumps({"size": a.size, **results}))


if __name__ == "__main__":
    main()
