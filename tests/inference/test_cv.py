"""cxrdet cv: from a k-fold sweep to per-fold and out-of-fold scores and the ensemble command."""

from __future__ import annotations

import json

import pytest
from conftest import run_ok, tiny_overrides

from cxrdet.evaluation.score import score
from cxrdet.inference import cv

pytestmark = pytest.mark.slow


def test_a_two_fold_sweep_gets_its_out_of_fold_score(tiny_data, tmp_path, capsys):
    sweep = tmp_path / "sweep"
    run_ok(
        [
            "train.py",
            "-m",
            *tiny_overrides(tiny_data, tmp_path / "unused"),
            "data.split=kfold",
            "data.n_folds=2",
            "data.fold=0,1",
            "trainer.max_steps=2",
            "trainer.val_check_interval=2",
            f"hydra.sweep.dir={sweep}",
        ],
        timeout=900,
    )
    assert cv.main([str(sweep), "--json"]) == 0
    out = capsys.readouterr().out
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
