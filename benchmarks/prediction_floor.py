"""The score floor and the per-class pre-NMS cap against keeping every box, on a trained model.

    python benchmarks/prediction_floor.py [--ckpt outputs/demo/train/checkpoints/best-step100.ckpt]

``make demo`` first (its detector and phantoms). The demo's validation images (the 20 % split
the run validated on, its readers fused with WBF as it validated) are predicted with each
``model.box_score_thresh`` × ``model.box_candidates_per_class`` pair and scored with the
competition metric; the first row keeps every box (0.0, all: torchvision's and the seed's
behaviour). The defaults (0.001, 100) must give the same mAP40 (within 0.001). Prints a table
and, last, one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

from cxrdet.data.dataset import ImageDataset  # noqa: E402
from cxrdet.data.labels import read_labels  # noqa: E402
from cxrdet.data.splits import split_ids  # noqa: E402
from cxrdet.evaluation.nofinding import with_no_finding  # noqa: E402
from cxrdet.evaluation.scoring import score  # noqa: E402
from cxrdet.evaluation.submission import format_prediction, write_submission  # noqa: E402
from cxrdet.inference.detectors import load_models  # noqa: E402
from cxrdet.inference.prediction_pass import PassOptions, predict_dataset  # noqa: E402

DEMO = Path("outputs/demo")
QUIET = PassOptions(batch_size=4, progress=False)
PAIRS = [(0.0, None), (0.001, None), (0.0, 100), (0.001, 100), (0.001, 50), (0.01, None)]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--ckpt", default=str(DEMO / "train/checkpoints/best-step100.ckpt"))
    p.add_argument("--size", type=int, default=192, help="the demo's prepared size")
    a = p.parse_args()
    labels = str(DEMO / "raw/train.csv")
    if not Path(a.ckpt).is_file():
        raise SystemExit(f"{a.ckpt} not found: run make demo first")
    _, val = split_ids(read_labels(labels)[0], "valid20", 0.2, 111)
    prepared = DEMO / "prepared" / str(a.size)
    dataset = ImageDataset(prepared / "train", prepared / "train_meta.csv", val)
    models, _ = load_models([a.ckpt], "cpu", None, None)
    heads = models[0].roi_heads
    predict_dataset(models, dataset, "cpu", QUIET)  # warm-up
    rows, base = [], None
    with tempfile.TemporaryDirectory() as tmp:
        csv = Path(tmp) / "val.csv"
        for thresh, cap in PAIRS:
            heads.score_thresh, heads.candidates_per_class = thresh, cap
            start = time.perf_counter()
            results, _, _ = predict_dataset(models, dataset, "cpu", QUIET)
            seconds = time.perf_counter() - start
            preds = {i: with_no_finding(*results[i], class14_head=False) for i in dataset.ids}
            write_submission({i: format_prediction(*v) for i, v in preds.items()}, csv)
            scored = score(labels, str(csv), fusion="wbf", split="valid20")
            base = scored["mAP40"] if base is None else base
            rows.append(
                {
                    "score_thresh": thresh,
                    "candidates_per_class": cap,
                    "mAP40": round(scored["mAP40"], 5),
                    "AP40": round(scored["AP40"], 5),
                    "difference": round(scored["mAP40"] - base, 5),
                    "seconds": round(seconds, 2),
                }
            )
            r = rows[-1]
            print(
                f"floor {thresh:<6} cap {str(cap):<5} mAP40 {r['mAP40']:.5f} AP40 {r['AP40']:.5f}"
                f" ({r['difference']:+.5f}), {seconds:.1f} s for {len(dataset)} images"
            )
    print(json.dumps({"images": len(dataset), "rows": rows}))


if __name__ == "__main__":
    main()
