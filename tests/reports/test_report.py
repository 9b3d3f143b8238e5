"""The report's pieces that decide what a figure shows: its x axis, its source, the predictions
drawn, the label changes said (the whole page: tests/test_pipeline.py)."""

from __future__ import annotations

import numpy as np
import pandas as pd

from cxrdet.data.labels import CLASS_NAMES
from cxrdet.reports.curves import APS, curve_points, per_class_bars
from cxrdet.reports.report import drawn_predictions
from cxrdet.reports.settings import label_changes, run_settings, run_title

# metrics.csv as Lightning writes it: training rows every step, a validation after steps 2
# and 4 (its ``step`` one less, as Lightning counts).
METRICS = pd.DataFrame(
    {
        "step": [0, 1, 1, 2, 3, 3],
        "train/loss": [2.0, 1.5, None, 1.2, 1.0, None],
        "val/AP40": [None, None, 0.1, None, None, 0.3],
        "val/mAP40": [None, None, 0.2, None, None, 0.4],
        "val/AP40/Cardiomegaly": [None, None, 0.5, None, None, 0.7],
        "val/mAP40/Cardiomegaly": [None, None, 0.6, None, None, 0.8],
    }
)
SCORES = {  # an evaluated checkpoint's (cxrdet.evaluation.evaluator)
    "mAP40": 0.25,
    "AP40": 0.15,
    "mAP40_per_class": {3: 0.65, 14: 0.9},
    "AP40_per_class": {3: 0.55},
    "images": 8,
    "class_names": CLASS_NAMES,  # the report's page and figures name the classes so
}


def test_curves_are_plotted_at_the_optimizer_step_checkpoints_are_named_by():
    points = curve_points(METRICS, APS)
    assert points["AP40"] == ([2, 4], [0.1, 0.3])  # validated after steps 2 and 4
    assert points["mAP40"][0] == [2, 4]


def test_per_class_bars_come_from_the_evaluated_checkpoint_else_say_last_validation():
    values, source = per_class_bars(METRICS, SCORES, "best-step2.ckpt (step 2)")
    assert values["AP40"] == {"Cardiomegaly": 0.55}
    assert values["mAP40"] == {"Cardiomegaly": 0.65, "No finding": 0.9}
    assert source == "best-step2.ckpt (step 2), 8 validation images"
    values, source = per_class_bars(METRICS, None, None)
    assert values == {"AP40": {"Cardiomegaly": 0.7}, "mAP40": {"Cardiomegaly": 0.8}}
    assert source == "last validation, step 4"


def test_settings_give_the_checkpoint_s_figures_when_evaluated(tmp_path):
    page = {"scores": SCORES, "radiology": {}}
    evaluated = run_settings(tmp_path, None, {}, METRICS, "best-step2.ckpt (step 2)", page)
    assert evaluated["checkpoint"] == "best-step2.ckpt (step 2)"
    assert evaluated["checkpoint mAP40"] == 0.25 and evaluated["checkpoint AP40"] == 0.15
    assert not [k for k in evaluated if k.startswith("last")]
    curves_only = run_settings(tmp_path, None, {}, METRICS, None, {})
    assert curves_only["last validation mAP40 (step 4)"] == 0.4
    assert "checkpoint mAP40" not in curves_only


def test_settings_say_what_training_changed_in_the_labels(tmp_path):
    pd.DataFrame(
        {
            "image_id": ["a", "a", "b", "c"],
            "split": ["train", "train", "train", "validation"],
            "issue": ["clipped", "dropped", "clipped", "clipped"],
        }
    ).to_csv(tmp_path / "label_issues.csv", index=False)
    pd.DataFrame({"image_id": ["d", "e", "f"]}).to_csv(tmp_path / "label_mismatch.csv")
    changes = label_changes(tmp_path, "drop")
    assert changes["train boxes clipped / dropped"].startswith("2 / 1 in 2 image(s)")
    assert changes["validation boxes clipped / dropped"].startswith("1 / 0 in 1 image(s)")
    assert changes["images left out"].startswith("3 (data.label_issues=drop")
    assert label_changes(tmp_path / "clean", "stop") == {}


def test_title_names_the_run_not_the_latest_link(tmp_path):
    from omegaconf import OmegaConf

    run = tmp_path / "smoke" / "2026-12-04_10-00-00-123"
    run.mkdir(parents=True)
    (tmp_path / "smoke" / "latest").symlink_to(run.name)
    cfg = OmegaConf.create({"run_name": "smoke"})
    title = run_title(tmp_path / "smoke" / "latest", cfg)
    assert title == "cxrdet run smoke/2026-12-04_10-00-00-123"
    assert run_title(tmp_path / "smoke" / "train", OmegaConf.create({"run_name": "train"})) == (
        "cxrdet run train"
    )


def test_fig12_draws_the_top_predictions_when_none_reaches_the_threshold():
    keep, title = drawn_predictions(np.array([0.9, 0.1, 0.35]))
    assert keep.tolist() == [0, 2] and title == "predictions (score >= 0.3)"
    keep, title = drawn_predictions(np.array([0.05, 0.2, 0.1, 0.15]))
    assert keep.tolist() == [1, 3, 2] and title == "none scores 0.3: the top 3 (best 0.20)"
    keep, title = drawn_predictions(np.zeros(0))
    assert len(keep) == 0 and title == "no predictions"
