"""make demo: the whole job on synthetic phantoms, offline, on CPU, under outputs/demo/.

prepare (synth, prepare) → train the detector (and validate it; checkpoints) → classify (train the
"No finding" classifier) → predict the test set with the detector alone → filter (predict it
with the classifier's No-finding filter) → score both and the classifier → report → summary.
Each stage is the same command a user runs and prints one line (what it did, how long it took);
the summary repeats them above the figures, and the report's page opens with the same table. A
rerun reuses finished stages unless ``--force``.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd

from cxrdet.demo.summary import (
    Stage,
    add_to_report,
    calibration_rows,
    classifier_test_row,
    classifier_validation_row,
    print_summary,
    validation_rows,
)

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
            "1/7 synth", [py, "-m", "cxrdet", "synth", "--out", str(RAW), *SYNTH_ARGS]
        )
    for split in ("train", "test"):
        times[f"prepare {split}"] = prepare(f"1/7 prepare {split}", split)
    return times


def prepare(step: str, split: str, size: int = SIZE) -> float:
    """``cxrdet prepare`` of one split's phantoms as ``size``-px PNGs; returns its time."""
    cmd = [sys.executable, "-m", "cxrdet", "prepare", "--input", str(RAW / split)]
    return run(step, [*cmd, "--output", str(PREPARED), "--sizes", str(size), "--workers", "2"])


def best_checkpoint(train_dir: Path = TRAIN) -> Path | None:
    from cxrdet.training.checkpoints import (
        best_checkpoint as best_in,  # imports torch: not at start-up
    )

    return best_in(train_dir / "checkpoints")


def train(
    step: str, experiment: str, run_dir: Path, extra: tuple[str, ...] = ()
) -> tuple[Path, float | None]:
    """``train.py experiment=<experiment> [extra]`` unless ``run_dir`` holds a checkpoint
    already; returns the best checkpoint and the step's time (None when reused)."""
    seconds = None
    if best_checkpoint(run_dir) is None:
        seconds = run(step, [sys.executable, "train.py", f"experiment={experiment}", *extra])
    else:
        print(f"\n=== {step}: reusing {best_checkpoint(run_dir)} (make demo FORCE=1 to retrain)")
    ckpt = best_checkpoint(run_dir)
    if ckpt is None:
        sys.exit(f"demo: training wrote no checkpoint under {run_dir / 'checkpoints'}")
    return ckpt, seconds


def predict(
    step: str, submission: Path, ckpts: list[Path], extra: list[str], size: int = SIZE
) -> float | None:
    """``predict.py`` on the ``size``-px test PNGs into ``submission`` (and predict.json beside
    it) unless both are newer than every checkpoint; returns the step's time (None when
    reused)."""
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
        f"prepared_size={size}",
        f"paths.prepared_dir={PREPARED}",
        f"output={submission}",
        "num_workers=0",
        f"hydra.run.dir={submission.parent / 'hydra'}",
    ]
    return run(step, cmd)


def run_metrics(train_dir: Path = TRAIN) -> pd.DataFrame:
    """The run's ``csv/metrics.csv`` (empty when it has none)."""
    path = train_dir / "csv" / "metrics.csv"
    return pd.read_csv(path) if path.is_file() else pd.DataFrame()


def training_images_per_s(m: pd.DataFrame) -> float | None:
    """The mean training images/s the run logged (``time/images_per_s``)."""
    if "time/images_per_s" not in m or not m["time/images_per_s"].notna().any():
        return None
    return float(m["time/images_per_s"].dropna().mean())


def run_settings(run_dir: Path) -> tuple[int, int]:
    """A training run's steps and images per step, from the config it saved."""
    from omegaconf import OmegaConf

    cfg = OmegaConf.load(run_dir / ".hydra" / "config.yaml")
    return int(cfg.trainer.max_steps), int(cfg.data.batch_size)


def validation_seconds(m: pd.DataFrame) -> tuple[int, float]:
    """How many validations the run made and their seconds (``time/validation_s``)."""
    if "time/validation_s" not in m:
        return 0, 0.0
    seconds = m["time/validation_s"].dropna()
    return len(seconds), float(seconds.sum())


def report(step: str, ckpt: Path) -> float | None:
    """``cxrdet report`` on the detector's run unless its page is newer than the checkpoint."""
    page = TRAIN / "report" / "index.html"
    if page.is_file() and page.stat().st_mtime > ckpt.stat().st_mtime:
        print(f"\n=== {step}: reusing {page}")
        return None
    return run(step, [sys.executable, "-m", "cxrdet", "report", str(TRAIN)])


def done(stages: list[Stage], stage: Stage) -> None:
    stages.append(stage)
    print(f">>> {stage.line()}", flush=True)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="cxrdet demo", description=__doc__.split("\n")[0])
    p.add_argument("--force", action="store_true", help="delete outputs/demo/ and redo every step")
    a = p.parse_args(argv)
    if a.force and ROOT.exists():
        shutil.rmtree(ROOT)
    stages: list[Stage] = []
    times = make_data()
    n_train, n_test = SYNTH_ARGS[1], SYNTH_ARGS[3]
    done(
        stages,
        Stage(
            "prepare",
            f"{n_train} training and {n_test} test phantoms (DICOM) written and prepared as "
            f"{SIZE}-px PNGs",
            sum(times.values()) if times else None,
        ),
    )
    # The report is a stage of its own (below): report=false here.
    ckpt, seconds = train(
        "2/7 train the detector (about 5 minutes)", "demo", TRAIN, ("report=false",)
    )
    steps, batch = run_settings(TRAIN)
    metrics = run_metrics()
    validations, val_s = validation_seconds(metrics)
    done(
        stages,
        Stage(
            "train",
            f"Faster R-CNN R50-FPN from random init, {steps} steps of {batch} images",
            None if seconds is None else seconds - val_s,
        ),
    )
    done(
        stages,
        Stage(
            "validate",
            f"{validations} validations, the best: {ckpt.name}",
            None if seconds is None else val_s,
        ),
    )
    classifier, seconds = train(
        "3/7 train the No-finding classifier (about 40 seconds)", "demo_nofinding", NOFINDING
    )
    steps, batch = run_settings(NOFINDING)
    done(
        stages,
        Stage(
            "classify",
            f"ResNet-18 No-finding classifier from random init, {steps} steps of {batch} "
            f"images, the best: {classifier.name}",
            seconds,
        ),
    )
    seconds = predict(
        "4/7 predict the test set with the detector alone", WITHOUT_FILTER, [ckpt], []
    )
    done(stages, Stage("predict", f"{n_test} test images, the detector alone", seconds))
    seconds = predict(
        "5/7 predict the test set with the classifier's No-finding filter",
        SUBMISSION,
        [ckpt, classifier],
        [f"nofinding.ckpt_path={classifier}"],
    )
    done(
        stages,
        Stage("filter", "the same images, No-finding lines from the classifier", seconds),
    )
    print("\n=== 6/7 score both submissions and the classifier against test_labels.csv")
    start = time.perf_counter()
    rows = test_rows(classifier)
    done(
        stages,
        Stage(
            "score",
            "both submissions and the classifier against test_labels.csv, with intervals",
            time.perf_counter() - start,
        ),
    )
    seconds = report("7/7 report: the detector's figures on its validation images", ckpt)
    done(stages, Stage("report", f"figures and {TRAIN / 'report' / 'index.html'}", seconds))
    rows = validation_rows(TRAIN / "report" / "figures.json") + rows
    predict_json = pd.read_json(SUBMISSION.with_name("predict.json"), typ="series")
    images_per_s = training_images_per_s(metrics)
    if images_per_s is not None:
        rows.append(("training images/s", f"{images_per_s:.2f}"))
    rows.append(("prediction images/s (with the filter)", f"{predict_json['images_per_s']:.2f}"))
    page = TRAIN / "report" / "index.html"
    add_to_report(page, stages, rows)
    rows += [("detector", str(ckpt)), ("classifier", str(classifier))]
    rows += [("metrics", str(TRAIN / "csv" / "metrics.csv")), ("figures", str(TRAIN / "report"))]
    rows.append(("report (open in a browser)", str(page)))
    rows += [("submission", str(SUBMISSION)), ("without the filter", str(WITHOUT_FILTER))]
    print_summary(stages, rows)


def test_rows(classifier: Path) -> list[tuple[str, str]]:
    """The test set's figures: the detector alone, the classifier, the filter and its paired
    gain."""
    from cxrdet.evaluation.bootstrap import (
        RESAMPLES,
        ci_text,
        difference_text,
        image_weights,
        paired_difference,
    )
    from cxrdet.evaluation.scoring import score
    from cxrdet.inference.predictor import PROBS_CSV

    labels = RAW / "test_labels.csv"
    alone = score(str(labels), str(WITHOUT_FILTER), bootstrap=RESAMPLES)
    filtered = score(str(labels), str(SUBMISSION), bootstrap=RESAMPLES)
    gt, alone_dets = alone["scored"]
    gain = paired_difference(
        gt, alone_dets, filtered["scored"][1], image_weights(len(gt), RESAMPLES, 0)
    )
    where = f"{alone['images']} images"
    return [
        (f"test AP40 ({where})", f"{alone['AP40']:.3f}"),
        (f"test mAP40 ({where})", f"{alone['mAP40']:.3f}{ci_text(alone['mAP40_ci'])}"),
        classifier_validation_row(NOFINDING),
        classifier_test_row(SUBMISSION.with_name(PROBS_CSV), labels, classifier),
        *calibration_rows(
            alone["scored"], alone["classes"], SUBMISSION.with_name(PROBS_CSV), labels, classifier
        ),
        (
            "test mAP40 with the No-finding filter",
            f"{filtered['mAP40']:.3f}{ci_text(filtered['mAP40_ci'])}",
        ),
        ("the filter's gain (paired)", difference_text(*gain)),
    ]


if __name__ == "__main__":
    main()
