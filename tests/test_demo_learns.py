"""The demo's recipes learn: the detector (experiment=demo) and the "No finding" classifier
(experiment=demo_nofinding), each trained from random init on phantoms like the demo's at its
96 px, for fewer steps than the demo, clear fixed floors on their own validation images.

A change that stops either network learning (a data, loss, schedule or init bug; a recipe moved
back to the 192-px, 100-step demo, whose classifier sat at chance) fails here, not in a user's
first ``make demo``. The floors sit well under what these budgets reach (measured in each
test's docstring) and far above what a network that does not learn scores.
"""

from __future__ import annotations

import pandas as pd
import pytest
from conftest import train_in_process

SIZE = 96  # conf/data/demo.yaml's image_size
DETECTOR_STEPS, DETECTOR_FLOOR = 130, 0.25  # validation mAP40 (see each test)
CLASSIFIER_STEPS, CLASSIFIER_FLOOR = 50, 0.75  # validation AUC


@pytest.fixture(scope="module")
def phantoms(tmp_path_factory):
    """Demo-like phantoms (the demo's share of normal images), prepared at the demo's size."""
    from cxrdet.data.prepare import prepare
    from cxrdet.demo.synth import synthesize

    root = tmp_path_factory.mktemp("phantoms")
    synthesize(root / "raw", 120, 0, seed=11, min_px=192, max_px=384, progress=False)
    prepare(root / "raw" / "train", root / "prepared", [SIZE], progress=False)
    return root


def overrides(phantoms, run_dir, steps: int) -> list[str]:
    prepared = phantoms / "prepared" / str(SIZE)
    return [
        f"data.labels_csv={phantoms / 'raw' / 'train.csv'}",
        f"data.image_dir={prepared / 'train'}",
        f"data.meta_csv={prepared / 'train_meta.csv'}",
        "data.num_workers=0",
        f"trainer.max_steps={steps}",
        f"trainer.val_check_interval={steps}",
        "report=false",
        "logger=csv",
        f"hydra.run.dir={run_dir}",
    ]


def validated(run_dir, key: str) -> float:
    metrics = pd.read_csv(run_dir / "csv" / "metrics.csv")
    return float(metrics[key].dropna().iloc[-1])


def test_the_demo_detector_learns(phantoms, tmp_path):
    """experiment=demo for 130 steps (~3 minutes at one thread): validation mAP40 above 0.25
    (measured 0.404 at one thread, as make test runs it, and 0.343 at two; 150 steps 0.484;
    100 steps reach only 0.128, the warm-up and the schedule need the rest). Seen failing with
    optim.lr=1e-5, a detector that does not learn (0.072)."""
    run_dir = tmp_path / "detector"
    train_in_process(
        [
            "experiment=demo",
            *overrides(phantoms, run_dir, DETECTOR_STEPS),
            "evaluation=competition",  # mAP40 and AP40; the radiology extras cost time
        ]
    )
    assert validated(run_dir, "val/mAP40") > DETECTOR_FLOOR
    # The demo's "validate" stage reads the time logged on the validation's own row.
    metrics = pd.read_csv(run_dir / "csv" / "metrics.csv")
    steps = [
        metrics.dropna(subset=[k])["step"].tolist() for k in ("val/mAP40", "time/validation_s")
    ]
    assert steps[0] == steps[1] == [DETECTOR_STEPS - 1]


def test_the_demo_classifier_learns(phantoms, tmp_path):
    """experiment=demo_nofinding for 50 steps (~20 s at one thread): validation AUC above 0.75
    (measured 0.889 at one thread, 0.830 at two; 80 steps 0.926). Seen failing with
    optim.lr=1e-5 (0.444)."""
    run_dir = tmp_path / "classifier"
    train_in_process(["experiment=demo_nofinding", *overrides(phantoms, run_dir, CLASSIFIER_STEPS)])
    assert validated(run_dir, "val/AUC") > CLASSIFIER_FLOOR
