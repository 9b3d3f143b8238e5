"""make demo: the whole job on synthetic phantoms, offline, on CPU, under outputs/demo/.

synth → prepare → train the detector (validates, checkpoints) → train the "No finding"
classifier → predict the test set without and with the classifier's filter → score both →
summary. Each step is the same command a user runs; a rerun reuses finished steps unless
``--force``.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd

ROOT = Path("outputs/demo")
RAW, PREPARED, TRAIN = ROOT / "raw", ROOT / "prepared", ROOT / "train"
NOFINDING = ROOT / "nofinding"  # the classifier's run directory (conf/experiment/demo_nofinding)
SUBMISSION = ROOT / "submission.csv"  # detector + the classifier's filter: what one would submit
WITHOUT_FILTER = ROOT / "without_filter" / "submission.csv"  # the detector alone
SIZE = 96  # the prepared size conf/data/demo.yaml trains on (the detector and classifier)
SYNTH_ARGS = ["--train", "200", "--test", "50", "--seed", "0", "--workers", "2"]


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
            "1/6 synth", [py, "-m", "cxrdet", "synth", "--out", str(RAW), *SYNTH_ARGS]
        )
    for split in ("train", "test"):
        times[f"prepare {split}"] = run(
            f"2/6 prepare {split}",
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
    from cxrdet.training.checkpoints import (
        best_checkpoint as best_in,  # imports torch: not at start-up
    )

    return best_in(train_dir / "checkpoints")


def train(step: str, experiment: str, run_dir: Path) -> tuple[Path, float | None]:
    """``train.py experiment=<experiment>`` unless ``run_dir`` holds a checkpoint already;
    returns the best checkpoint and the step's time (None when reused)."""
    seconds = None
    if best_checkpoint(run_dir) is None:
        seconds = run(step, [sys.executable, "train.py", f"experiment={experiment}"])
    else:
        print(f"\n=== {step}: reusing {best_checkpoint(run_dir)} (make demo FORCE=1 to retrain)")
    ckpt = best_checkpoint(run_dir)
    if ckpt is None:
        sys.exit(f"demo: training wrote no checkpoint under {run_dir / 'checkpoints'}")
    return ckpt, seconds


def predict(step: str, submission: Path, ckpts: list[Path], extra: list[str]) -> float | None:
    """``predict.py`` on the test PNGs into ``submission`` (and predict.json beside it) unless
    both are newer than every checkpoint; returns the step's time (None when reused)."""
    newest = max(c.stat().st_mtime for c in ckpts)
    done = submission.with_name("predict.json")
    if submission.is_file() and done.is_file() and submission.stat().st_mtime > newest:
        print(f"\n=== {step}: reusing {submission}")
        return None
    cmd = [
        sys.executable,
        "predict.py",
        f"ckpt_path={ckpts[0]}",
        *extra,
        f"prepared_size={SIZE}",
        f"paths.prepared_dir={PREPARED}",
        f"output={submission}",
        "num_workers=0",
        f"hydra.run.dir={submission.parent / 'hydra'}",
    ]
    return run(step, cmd)


def training_images_per_s(train_dir: Path = TRAIN) -> float | None:
    """The mean training images/s the run logged (metrics.csv's ``time/images_per_s``)."""
    path = train_dir / "csv" / "metrics.csv"
    if not path.is_file():
        return None
    m = pd.read_csv(path)
    if "time/images_per_s" not in m or not m["time/images_per_s"].notna().any():
        return None
    return float(m["time/images_per_s"].dropna().mean())


def validation_rows(path: Path) -> list[tuple[str, str]]:
    """The detector's validation figures, all of the checkpoint the test set is predicted
    with (the report's ``figures.json``: the best checkpoint, named), intervals beside them."""
    from cxrdet.evaluation.bootstrap import ci_text

    if not path.is_file():
        return [("validation", f"no {path} (the report was not made)")]
    f = json.loads(path.read_text())
    where = f"{f['checkpoint']}, {f['images']} images"
    rows = [
        (f"validation AP40 ({where})", f"{f['AP40']:.3f}"),
        (f"validation mAP40 ({where})", f"{f['mAP40']:.3f}{ci_text(f['mAP40_ci'])}"),
    ]
    if "CPM" in f:
        rows.append(
            ("validation CPM (FROC, 1/8-8 FPs/image)", f"{f['CPM']:.3f}{ci_text(f['CPM_ci'])}")
        )
    points = f.get("operating_points") or []
    if points:
        verdicts = [p["verdict"] for p in points]
        counts = ", ".join(f"{verdicts.count(v)} {v}" for v in ("above", "within", "below"))
        rows.append(
            (
                "model at each reader's FP rate",
                f"{counts} the reader's share of lesions found ({len(points)} readers)",
            )
        )
    return rows


def classifier_row(run: Path) -> tuple[str, str]:
    """The classifier's best checkpoint on its validation images: AUC, its 95 % interval,
    and "≈ chance" when that holds 0.5."""
    from cxrdet.evaluation.bootstrap import ci_text
    from cxrdet.inference.classifier_cv import validation_auc

    r = validation_auc(run)
    text = f"{r['AUC']:.3f}{ci_text(r['AUC_ci'])}"
    if r["AUC_ci"][0] <= 0.5 <= r["AUC_ci"][1]:
        text += ": ≈ chance"
    return (f"classifier validation AUC ({r['checkpoint']}, {r['images']} images)", text)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="cxrdet demo", description=__doc__.split("\n")[0])
    p.add_argument("--force", action="store_true", help="delete outputs/demo/ and redo every step")
    a = p.parse_args(argv)
    if a.force and ROOT.exists():
        shutil.rmtree(ROOT)
    times = make_data()
    ckpt, times["train detector"] = train("3/6 train the detector (about 5 minutes)", "demo", TRAIN)
    classifier, times["train classifier"] = train(
        "4/6 train the No-finding classifier (about 1¼ minutes)", "demo_nofinding", NOFINDING
    )
    times["predict without filter"] = predict(
        "5/6 predict the test set with the detector alone", WITHOUT_FILTER, [ckpt], []
    )
    times["predict with filter"] = predict(
        "5/6 predict the test set with the classifier's No-finding filter",
        SUBMISSION,
        [ckpt, classifier],
        [f"nofinding.ckpt_path={classifier}"],
    )
    print("\n=== 6/6 score both submissions against test_labels.csv", flush=True)
    # after the steps: keeps the demo's own start-up light
    from cxrdet.evaluation.bootstrap import (
        RESAMPLES,
        ci_text,
        difference_text,
        image_weights,
        paired_difference,
    )
    from cxrdet.evaluation.score import score

    labels = str(RAW / "test_labels.csv")
    alone = score(labels, str(WITHOUT_FILTER), bootstrap=RESAMPLES)
    filtered = score(labels, str(SUBMISSION), bootstrap=RESAMPLES)
    gt, alone_dets = alone["scored"]
    gain = paired_difference(
        gt, alone_dets, filtered["scored"][1], image_weights(len(gt), RESAMPLES, 0)
    )
    predict_json = pd.read_json(SUBMISSION.with_name("predict.json"), typ="series")
    images_per_s = training_images_per_s()
    print("\n=== cxrdet demo summary")
    rows = validation_rows(TRAIN / "report" / "figures.json")
    rows.append((f"test AP40 ({alone['images']} images)", f"{alone['AP40']:.3f}"))
    rows.append(
        (
            f"test mAP40 ({alone['images']} images)",
            f"{alone['mAP40']:.3f}{ci_text(alone['mAP40_ci'])}",
        )
    )
    rows.append(classifier_row(NOFINDING))
    rows.append(
        (
            "test mAP40 with the No-finding filter",
            f"{filtered['mAP40']:.3f}{ci_text(filtered['mAP40_ci'])}",
        )
    )
    rows.append(("the filter's gain (paired)", difference_text(*gain)))
    if images_per_s is not None:
        rows.append(("training images/s", f"{images_per_s:.2f}"))
    rows.append(("prediction images/s (with the filter)", f"{predict_json['images_per_s']:.2f}"))
    ran = {k: v for k, v in times.items() if v is not None}
    rows.append(("step times", ", ".join(f"{k} {v:.0f} s" for k, v in ran.items()) or "-"))
    rows += [("detector", str(ckpt)), ("classifier", str(classifier))]
    rows += [("metrics", str(TRAIN / "csv" / "metrics.csv")), ("figures", str(TRAIN / "report"))]
    rows.append(("report (open in a browser)", str(TRAIN / "report" / "index.html")))
    rows += [("submission", str(SUBMISSION)), ("without the filter", str(WITHOUT_FILTER))]
    for name, value in rows:
        print(f"  {name:<40s} {value}")
    print(
        "  AP40: the seed's COCO-style AP at IoU 0.4 over findings 0-13; mAP40: the competition's\n"
        "  VOC AP at IoU 0.4 over the classes present, No finding included. Validation: the\n"
        "  best checkpoint (the one predicting the test set) against the three readers fused\n"
        "  with WBF; test: one consensus reader. Each reader at their operating point: their\n"
        "  share of the other two's lesions found at their false positives per image, the model\n"
        "  read at the same rate (paired interval). CPM: mean share of lesions found at 1/8..8\n"
        "  false positives per image (readers' boxes fused per lesion; any class on a lesion\n"
        "  finds it). The filter\n"
        "  (predict.py nofinding.low/high) makes each image's No-finding line from the\n"
        "  classifier's P(abnormal) instead of from the detector's top score. [low, high]: 95 %\n"
        "  intervals over 1,000 bootstrap resamples of the test images (the gain's paired)."
    )


if __name__ == "__main__":
    main()
