"""make demo: the whole job on synthetic phantoms, offline, on CPU, under outputs/demo/.

synth → prepare → train (validates, checkpoints) → predict the test set → score → summary.
Each step is the same command a user runs; a rerun reuses finished steps unless ``--force``.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd

ROOT = Path("outputs/demo")
RAW, PREPARED, TRAIN = ROOT / "raw", ROOT / "prepared", ROOT / "train"
SIZE = 192  # the prepared size conf/data/demo.yaml trains on
SYNTH_ARGS = ["--train", "200", "--test", "50", "--seed", "0"]


def run(step: str, cmd: list[str]) -> float:
    """Run one step's command, echoing it; stop the demo when it fails."""
    print(f"\n=== {step}\n$ {' '.join(cmd)}", flush=True)
    start = time.perf_counter()
    done = subprocess.run(cmd, check=False)
    if done.returncode != 0:
        sys.exit(f"demo: step '{step}' failed (exit {done.returncode}); see the output above")
    return time.perf_counter() - start


def make_data() -> dict[str, float]:
    """Steps 1-2: phantoms (reused when present) and their prepared PNGs; returns step times."""
    py, times = sys.executable, {}
    if (RAW / "train.csv").is_file() and (RAW / "test_labels.csv").is_file():
        print(f"=== synth: reusing {RAW}")
    else:
        times["synth"] = run(
            "1/5 synth", [py, "-m", "cxrdet", "synth", "--out", str(RAW), *SYNTH_ARGS]
        )
    for split in ("train", "test"):
        times[f"prepare {split}"] = run(
            f"2/5 prepare {split}",
            [
                py,
                "-m",
                "cxrdet",
                "prepare",
                "--input",
                str(RAW / split),
                "--output",
                str(PREPARED),
                "--sizes",
                str(SIZE),
                "--workers",
                "2",
            ],
        )
    return times


def best_checkpoint(train_dir: Path = TRAIN) -> Path | None:
    from cxrdet.training.callbacks import (
        best_checkpoint as best_in,  # imports torch: not at start-up
    )

    return best_in(train_dir / "checkpoints")


def training_figures(train_dir: Path = TRAIN) -> dict:
    """Last validation AP40 / mAP40 and mean training images/s from the run's metrics.csv."""
    path = train_dir / "csv" / "metrics.csv"
    if not path.is_file():
        return {}
    m = pd.read_csv(path)
    out = {}
    for metric in ("AP40", "mAP40"):
        if f"val/{metric}" in m:
            out[f"val_{metric}"] = float(m[f"val/{metric}"].dropna().iloc[-1])
    rate = [c for c in m.columns if c.endswith("samples_per_sec") and c.startswith("train")]
    if rate and m[rate[0]].notna().any():
        out["train_images_per_s"] = float(m[rate[0]].dropna().mean())
    return out


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="cxrdet demo", description=__doc__.split("\n")[0])
    p.add_argument("--force", action="store_true", help="delete outputs/demo/ and redo every step")
    a = p.parse_args(argv)
    if a.force and ROOT.exists():
        shutil.rmtree(ROOT)
    py = sys.executable
    times = make_data()
    if best_checkpoint() is None:
        times["train"] = run("3/5 train (about 7 minutes)", [py, "train.py", "experiment=demo"])
    else:
        print(f"\n=== train: reusing {best_checkpoint()} (make demo FORCE=1 to retrain)")
    ckpt = best_checkpoint()
    if ckpt is None:
        sys.exit(f"demo: training wrote no checkpoint under {TRAIN / 'checkpoints'}")
    submission = ROOT / "submission.csv"
    fresh = submission.is_file() and submission.stat().st_mtime > ckpt.stat().st_mtime
    if fresh and (ROOT / "predict.json").is_file():
        print(f"\n=== predict: reusing {submission}")
    else:
        times["predict"] = run(
            "4/5 predict the test set",
            [
                py,
                "predict.py",
                f"ckpt_path={ckpt}",
                f"prepared_size={SIZE}",
                f"paths.prepared_dir={PREPARED}",
                f"output={submission}",
                "num_workers=0",
                f"hydra.run.dir={ROOT / 'predict'}",
            ],
        )
    print("\n=== 5/5 score the submission against test_labels.csv", flush=True)
    from cxrdet.evaluation.score import (
        score,  # after the steps: keeps the demo's own start-up light
    )

    result = score(str(RAW / "test_labels.csv"), str(submission))
    predict_json = pd.read_json(ROOT / "predict.json", typ="series")
    figures = training_figures()
    print("\n=== cxrdet demo summary")
    rows = []
    for metric in ("AP40", "mAP40"):
        if f"val_{metric}" in figures:
            rows.append((f"validation {metric} (20 % split)", f"{figures[f'val_{metric}']:.3f}"))
    for metric in ("AP40", "mAP40"):
        rows.append((f"test {metric} ({result['images']} images)", f"{result[metric]:.3f}"))
    if "train_images_per_s" in figures:
        rows.append(("training images/s", f"{figures['train_images_per_s']:.2f}"))
    rows.append(("prediction images/s", f"{predict_json['images_per_s']:.2f}"))
    rows.append(("step times", ", ".join(f"{k} {v:.0f} s" for k, v in times.items()) or "-"))
    rows += [("checkpoint", str(ckpt)), ("metrics", str(TRAIN / "csv" / "metrics.csv"))]
    rows.append(("figures", str(TRAIN / "report")))
    rows.append(("submission", str(submission)))
    for name, value in rows:
        print(f"  {name:<40s} {value}")
    print(
        "  AP40: the seed's COCO-style AP at IoU 0.4 over findings 0-13; mAP40: the competition's\n"
        "  VOC AP at IoU 0.4 over the classes present, No finding included. Validation ground\n"
        "  truth: the three readers fused with WBF; test: one consensus reader."
    )


if __name__ == "__main__":
    main()
