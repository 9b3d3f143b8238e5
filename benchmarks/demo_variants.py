"""The demo's two networks under other recipes (size, steps, empty images), each trained from
random init on the demo's phantoms and scored on its 50 test phantoms.

    python benchmarks/demo_variants.py [--variants NAME,NAME ...] [--list]

By default the size and step variants of the detector and the classifier; ``--list`` also
shows the earlier demo's recipe with ``data.empty_images`` drop and keep.

A variant is ``python train.py experiment=<demo | demo_nofinding> <overrides>`` into
``outputs/demo-variants/<name>/`` (an empty folder: no checkpoint of an earlier run can win).
A detector is then predicted alone (``predict.py`` on its best checkpoint) and scored on
``test_labels.csv``: AP40, mAP40 with its 95 % interval; its validation figures are the best
checkpoint's (metrics.csv at that step). A classifier is scored by AUC (with its interval) on its
validation images and on the test images, both from its best checkpoint. The phantoms are the
demo's (made first when missing; other sizes are prepared when a variant needs them). Prints one
row per variant (training minutes included); the last line is one JSON object. A detector
variant takes 4-7 minutes on 2 CPU cores, a classifier about one.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

import pandas as pd

from cxrdet.demo.run import (
    PREPARED,
    RAW,
    SIZE,
    best_checkpoint,
    make_data,
    predict,
    prepare,
    run,
)

OUT = Path("outputs/demo-variants")
DETECTOR, CLASSIFIER = "demo", "demo_nofinding"
# name: (experiment, overrides). "demo" and "classifier" are the demo's own recipes.
EARLIER = ["data.image_size=192", "trainer.max_steps=100", "trainer.val_check_interval=50"]
# name: (experiment, overrides); each names its size and steps, the demo's recipe among them.
VARIANTS = {
    "192px-100": (DETECTOR, EARLIER),  # the earlier demo's size and steps
    "128px-200": (
        DETECTOR,
        ["data.image_size=128", "trainer.max_steps=200", "trainer.val_check_interval=100"],
    ),
    "96px-300": (DETECTOR, ["trainer.max_steps=300", "trainer.val_check_interval=150"]),
    "96px-350": (DETECTOR, ["trainer.max_steps=350", "trainer.val_check_interval=175"]),  # demo
    "96px-400": (DETECTOR, ["trainer.max_steps=400", "trainer.val_check_interval=200"]),
    "classifier-192px-40": (
        CLASSIFIER,
        ["data.image_size=192", "trainer.max_steps=40", "trainer.val_check_interval=20"],
    ),
    "classifier-96px-120": (  # the demo's
        CLASSIFIER,
        ["trainer.max_steps=120", "trainer.val_check_interval=60"],
    ),
    "classifier-96px-240": (CLASSIFIER, ["trainer.max_steps=240", "trainer.val_check_interval=60"]),
    # Not run by default: the earlier demo's recipe with the other data.empty_images choices.
    "192px-100-drop": (DETECTOR, [*EARLIER, "data.empty_images=drop"]),
    "192px-100-keep": (DETECTOR, [*EARLIER, "data.empty_images=keep"]),
}
DEFAULT = [name for name in VARIANTS if not name.endswith(("-drop", "-keep"))]


def size_of(overrides: list[str]) -> int:
    for o in overrides:
        if o.startswith("data.image_size="):
            return int(o.split("=", 1)[1])
    return SIZE


def prepare_size(size: int) -> None:
    """The demo's phantoms as ``size``-px PNGs, unless prepared already."""
    for split in ("train", "test"):
        if (PREPARED / str(size) / f"{split}_meta.csv").is_file():
            continue
        prepare(f"prepare {split} at {size} px", split, size)


def best_validation(run_dir: Path, ckpt: Path, keys: list[str]) -> dict[str, float]:
    """``keys`` as validated at the best checkpoint's step (metrics.csv)."""
    from cxrdet.training.resume import step_of_checkpoint

    m = pd.read_csv(run_dir / "csv" / "metrics.csv")
    rows = m[m["step"] <= step_of_checkpoint(ckpt)].dropna(subset=[keys[0]])
    return {k: float(rows[k].iloc[-1]) for k in keys} if len(rows) else {}


def score_detector(run_dir: Path, ckpt: Path, size: int) -> dict:
    from cxrdet.evaluation.bootstrap import RESAMPLES
    from cxrdet.evaluation.scoring import score

    submission = run_dir / "submission.csv"
    predict(f"predict {run_dir.name}", submission, [ckpt], [], size)
    test = score(str(RAW / "test_labels.csv"), str(submission), bootstrap=RESAMPLES)
    val = best_validation(run_dir, ckpt, ["val/AP40", "val/mAP40"])
    return {
        "val_AP40": val.get("val/AP40"),
        "val_mAP40": val.get("val/mAP40"),
        "test_AP40": test["AP40"],
        "test_mAP40": test["mAP40"],
        "test_mAP40_ci": test["mAP40_ci"],
    }


def score_classifier(run_dir: Path, ckpt: Path, size: int) -> dict:
    from cxrdet.data.dataset import ImageDataset
    from cxrdet.data.labels import normal_image_ids, read_labels
    from cxrdet.inference.classifier_cv import auc, auc_interval, validation_auc
    from cxrdet.inference.nofinding_probs import load_classifiers, predict_probs

    val = validation_auc(run_dir)
    images = ImageDataset(PREPARED / str(size) / "test", PREPARED / str(size) / "test_meta.csv")
    probs = predict_probs(load_classifiers(str(ckpt), "cpu"), images, "cpu", progress=False)
    normal = normal_image_ids(read_labels(RAW / "test_labels.csv")[0])
    return {
        "val_AUC": val["AUC"],
        "val_AUC_ci": val["AUC_ci"],
        "test_AUC": auc(probs, normal),
        "test_AUC_ci": auc_interval(probs, normal),
    }


def fmt(value) -> str:
    return "-" if value is None else f"{value:.3f}"


def ci(value) -> str:
    return "-" if value is None else f"[{value[0]:.3f}, {value[1]:.3f}]"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument(
        "--variants", default=",".join(DEFAULT), help="comma-separated names (--list shows all)"
    )
    p.add_argument("--list", action="store_true", help="print the variants and exit")
    a = p.parse_args()
    if a.list:
        for name, (experiment, overrides) in VARIANTS.items():
            print(f"{name:<22s} experiment={experiment} {' '.join(overrides)}")
        return
    unknown = [v for v in a.variants.split(",") if v not in VARIANTS]
    if unknown:
        sys.exit(f"unknown variant(s) {unknown}; --list shows them")
    make_data()
    results = {}
    for name in a.variants.split(","):
        experiment, overrides = VARIANTS[name]
        size = size_of(overrides)
        prepare_size(size)
        run_dir = OUT / name
        shutil.rmtree(run_dir, ignore_errors=True)
        start = time.perf_counter()
        cmd = [sys.executable, "train.py", f"experiment={experiment}", *overrides]
        run(f"train {name}", [*cmd, "report=false", f"hydra.run.dir={run_dir}"])
        minutes = (time.perf_counter() - start) / 60
        ckpt = best_checkpoint(run_dir)
        score = score_detector if experiment == DETECTOR else score_classifier
        results[name] = {
            "experiment": experiment,
            "overrides": overrides,
            "checkpoint": ckpt.name,
            "train_min": round(minutes, 2),
            **score(run_dir, ckpt, size),
        }
    print(f"\n{'variant':<22s} {'min':>5s}  figures (validation; test)")
    for name, r in results.items():
        if r["experiment"] == DETECTOR:
            figures = (
                f"AP40 / mAP40 {fmt(r['val_AP40'])} / {fmt(r['val_mAP40'])}; "
                f"{fmt(r['test_AP40'])} / {fmt(r['test_mAP40'])} {ci(r['test_mAP40_ci'])}"
            )
        else:
            figures = (
                f"AUC {fmt(r['val_AUC'])} {ci(r['val_AUC_ci'])}; "
                f"{fmt(r['test_AUC'])} {ci(r['test_AUC_ci'])}"
            )
        print(f"{name:<22s} {r['train_min']:5.1f}  {figures}  ({r['checkpoint']})")
    print(json.dumps(results))


if __name__ == "__main__":
    main()
