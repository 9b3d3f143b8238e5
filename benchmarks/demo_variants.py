"""The demo's training run under other settings, each scored on the demo's test phantoms.

    python benchmarks/demo_variants.py [--variants drop,keep,0.25] [--precision 32-true]
        [--extra key=value ...]

Each variant is ``python train.py experiment=demo data.empty_images=<variant>
trainer.precision=<precision>`` (the demo's seed and step budget) into
``outputs/demo-variants/<name>/``, then ``predict.py`` on its best checkpoint (the detector alone,
no classifier) and the scorer on ``test_labels.csv``. The phantoms are the demo's (made first
when missing). Prints validation and test AP40/mAP40 and training time per variant; the last line
is one JSON object. About 7 minutes per fp32 variant on 2 CPU cores.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

from cxrdet.demo.run import RAW, best_checkpoint, make_data, predict, run, training_figures
from cxrdet.evaluation.score import score

OUT = Path("outputs/demo-variants")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--variants", default="drop,keep,0.25", help="data.empty_images values")
    p.add_argument("--precision", default="32-true", help="trainer.precision of every variant")
    p.add_argument("--extra", nargs="*", default=[], help="more train.py overrides for all")
    a = p.parse_args()
    make_data()
    results = {}
    for variant in a.variants.split(","):
        name = f"{variant}-{a.precision}"
        run_dir = OUT / name
        shutil.rmtree(run_dir, ignore_errors=True)  # a fresh run: no checkpoint of an earlier one
        start = time.perf_counter()
        run(
            f"train {name}",
            [
                sys.executable,
                "train.py",
                "experiment=demo",
                f"data.empty_images={variant}",
                f"trainer.precision={a.precision}",
                "report=false",
                f"hydra.run.dir={run_dir}",
                *a.extra,
            ],
        )
        train_s = time.perf_counter() - start
        submission = run_dir / "submission.csv"
        predict(f"predict {name}", submission, [best_checkpoint(run_dir)], [])
        test = score(str(RAW / "test_labels.csv"), str(submission))
        figures = training_figures(run_dir)
        results[name] = {
            "val_AP40": round(figures.get("val_AP40", float("nan")), 4),
            "val_mAP40": round(figures.get("val_mAP40", float("nan")), 4),
            "test_AP40": round(test["AP40"], 4),
            "test_mAP40": round(test["mAP40"], 4),
            "train_s": round(train_s, 1),
        }
    print(
        f"\n{'variant':<20s} {'val AP40':>9s} {'val mAP40':>10s} {'test AP40':>10s} "
        f"{'test mAP40':>11s} {'train s':>8s}"
    )
    for name, r in results.items():
        print(
            f"{name:<20s} {r['val_AP40']:9.3f} {r['val_mAP40']:10.3f} {r['test_AP40']:10.3f} "
            f"{r['test_mAP40']:11.3f} {r['train_s']:8.0f}"
        )
    print(json.dumps(results))


if __name__ == "__main__":
    main()
