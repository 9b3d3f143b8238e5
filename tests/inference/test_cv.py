"""cxrdet cv: from a k-fold sweep to per-fold and out-of-fold scores and the ensemble command."""

from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path

import pandas as pd
import pytest
from conftest import tiny_overrides, train_in_process
from omegaconf import OmegaConf
from sklearn.metrics import roc_auc_score

from cxrdet.evaluation.score import score
from cxrdet.inference import cv

pytestmark = pytest.mark.slow


FOLDS = ["data.split=kfold", "data.n_folds=2", "data.fold=0,1", "trainer.max_steps=2"]


@pytest.fixture(scope="module")
def detector_sweep(tiny_data, module_tmp):
    """A two-fold detector sweep of 2 steps a fold, and what `cxrdet cv --json` printed."""
    sweep = module_tmp / "sweep"
    train_in_process(
        [
            "-m",
            *tiny_overrides(tiny_data, sweep / "unused"),
            *FOLDS,
            "trainer.val_check_interval=2",
            f"hydra.sweep.dir={sweep}",
        ]
    )
    out = run_cv(sweep)
    return sweep, out


def run_cv(sweep, *args) -> str:
    """``cxrdet cv SWEEP --json ARGS`` in this process; its standard output."""
    buffer = io.StringIO()
    with contextlib.redirect_stdout(buffer):
        assert cv.main([str(sweep), "--json", *args]) == 0
    return buffer.getvalue()


def test_a_two_fold_sweep_gets_its_out_of_fold_score(tiny_data, detector_sweep):
    sweep, out = detector_sweep
    result = json.loads(out.strip().splitlines()[-1])
    assert [f["fold"] for f in result["folds"]] == [0, 1]
    assert sum(f["images"] for f in result["folds"]) == result["oof"]["images"] == 16
    assert {"AP40", "mAP40", "per_class"} <= set(result["oof"])
    # The pooled score is the scorer's on the written out-of-fold predictions.
    oof = score(str(tiny_data["raw"] / "train.csv"), str(sweep / "oof" / "oof_submission.csv"))
    assert result["oof"]["mAP40"] == pytest.approx(oof["mAP40"], abs=1e-12)
    # Each fold's figure is the scorer's on that fold's validation images.
    fold1 = score(
        str(tiny_data["raw"] / "train.csv"),
        str(sweep / "oof" / "fold1.csv"),
        split="kfold",
        fold=1,
        n_folds=2,
    )
    assert result["folds"][1]["mAP40"] == pytest.approx(fold1["mAP40"], abs=1e-12)
    command = next(line for line in out.splitlines() if "python predict.py ckpt_path=[" in line)
    assert command.count(".ckpt") == 2 and "prepared_size=64" in command


def test_a_folder_without_runs_is_named(tmp_path, capsys):
    assert cv.main([str(tmp_path)]) == 2
    assert f"no runs (*/.hydra/config.yaml) in {tmp_path}" in capsys.readouterr().err


def test_classifier_folds_get_their_auc_and_the_best_filter_thresholds(
    tiny_data, detector_sweep, tmp_path
):
    from cxrdet.data.labels import normal_image_ids, read_labels
    from cxrdet.evaluation.nofinding import nofinding_filter
    from cxrdet.evaluation.submission import format_prediction, read_submission, write_submission
    from cxrdet.inference.cv import fold_images
    from cxrdet.inference.nofinding_probs import read_probs

    sweep = tmp_path / "classifier"
    train_in_process(
        [
            "-m",
            "experiment=nofinding",
            *[o for o in tiny_overrides(tiny_data, sweep / "unused") if "roi_batch" not in o],
            *FOLDS,
            "model.arch=resnet18",
            "trainer.val_check_interval=1",
            f"hydra.sweep.dir={sweep}",
        ]
    )
    oof_csv = detector_sweep[0] / "oof" / "oof_submission.csv"
    out = run_cv(sweep, "--detector-oof", str(oof_csv))
    result = json.loads(out.strip().splitlines()[-1])
    assert [f["fold"] for f in result["folds"]] == [0, 1]
    oof = result["oof"]
    # What to add to the detector folds' predict.py command: both classifiers and the pair.
    command = next(line for line in out.splitlines() if "nofinding.ckpt_path=[" in line)
    ckpts = ",".join(f["checkpoint"] for f in result["folds"])
    assert f"nofinding.ckpt_path=[{ckpts}]" in command
    assert f"nofinding.low={oof['low']} nofinding.high={oof['high']}" in command
    assert oof["images"] == 16
    # The AUCs are those of the written out-of-fold probabilities (scikit-learn's AUC).
    labels, _ = read_labels(tiny_data["raw"] / "train.csv")
    written = pd.read_csv(sweep / "oof" / "oof_nofinding_probs.csv", dtype={"image_id": str})
    abnormal = ~written["image_id"].isin(normal_image_ids(labels))
    assert 0 < abnormal.sum() < len(written) == 16
    assert oof["AUC"] == pytest.approx(roc_auc_score(abnormal, written["p_abnormal"]), abs=1e-5)
    for fold in result["folds"]:
        ids = fold_images(OmegaConf.load(Path(fold["run"]) / ".hydra" / "config.yaml"), labels)
        part = written["image_id"].isin(ids)
        expected = roc_auc_score(abnormal[part], written["p_abnormal"][part])
        assert fold["AUC"] == pytest.approx(expected, abs=1e-5)
    assert oof["mAP40_without_filter"] == pytest.approx(
        score(str(tiny_data["raw"] / "train.csv"), str(oof_csv))["mAP40"], abs=1e-12
    )
    # The best pair, applied as predict.py applies it, scores what cv reported.
    ids = sorted(labels["image_id"].unique())
    probs = read_probs(str(sweep / "oof" / "oof_nofinding_probs.csv"), ids)
    sub = read_submission(oof_csv)
    rows = {}
    for i in ids:
        boxes_only = tuple(a[sub[i][2] != 14] for a in sub[i])
        rows[i] = format_prediction(
            *nofinding_filter(boxes_only, probs[i], oof["low"], oof["high"])
        )
    filtered = write_submission(rows, tmp_path / "filtered.csv")
    rescored = score(str(tiny_data["raw"] / "train.csv"), str(filtered))["mAP40"]
    assert oof["mAP40_with_filter"] == pytest.approx(rescored, abs=1e-3)
