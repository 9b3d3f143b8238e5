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

from cxrdet.evaluation.scoring import score
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
            "data.val_fusion=wbf",  # validated on fused readers (the classifier sweep is not)
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


def test_a_two_fold_sweep_gets_its_out_of_fold_score(tiny_data, detector_sweep, tmp_path):
    from cxrdet.evaluation.submission import format_prediction, read_submission, write_submission
    from cxrdet.inference.folds import rank_calibrated

    sweep, out = detector_sweep
    result = json.loads(out.strip().splitlines()[-1])
    assert [f["fold"] for f in result["folds"]] == [0, 1]
    assert sum(f["images"] for f in result["folds"]) == result["oof"]["images"] == 16
    assert {"AP40", "mAP40", "per_class"} <= set(result["oof"])
    labels_csv = str(tiny_data["raw"] / "train.csv")
    # The pooled score is the scorer's on the written out-of-fold predictions (fused as the
    # runs validated).
    oof = score(labels_csv, str(sweep / "oof" / "oof_submission.csv"), fusion="wbf")
    assert result["oof"]["mAP40"] == pytest.approx(oof["mAP40"], abs=1e-12)
    assert result["oof"]["calibrate"] == "none"
    assert result["oof"]["mAP40_uncalibrated"] == result["oof"]["mAP40"]
    # Each fold's figure is the scorer's on that fold's validation images; each fold has its
    # own predict.py summary.
    fold1 = score(
        labels_csv, str(sweep / "oof" / "fold1.csv"), split="kfold", fold=1, n_folds=2, fusion="wbf"
    )
    assert result["folds"][1]["mAP40"] == pytest.approx(fold1["mAP40"], abs=1e-12)
    for k in (0, 1):
        summary = json.loads((sweep / "oof" / f"fold{k}.json").read_text())
        assert summary["images"] == 8 and summary["submission"].endswith(f"fold{k}.csv")
        # and its own table of detections, named in its summary: the images of that fold
        detections = sweep / "oof" / f"fold{k}_detections.csv"
        assert detections.name in [Path(f).name for f in summary["outputs"]]
        found = set(pd.read_csv(detections, dtype={"image_id": str}).image_id)
        assert found and found <= set(read_submission(sweep / "oof" / f"fold{k}.csv"))
    assert not (sweep / "oof" / "detections.csv").exists()
    # Ranked within each fold and class, pooled: the figure cv reports beside.
    ranked = {}
    for k in (0, 1):
        predictions = read_submission(sweep / "oof" / f"fold{k}.csv")
        ranked.update({i: format_prediction(*p) for i, p in rank_calibrated(predictions).items()})
    pooled = score(labels_csv, str(write_submission(ranked, tmp_path / "r.csv")), fusion="wbf")
    assert result["oof"]["mAP40_rank"] == pytest.approx(pooled["mAP40"], abs=1e-12)
    command = next(line for line in out.splitlines() if "python predict.py ckpt_path=[" in line)
    assert command.count(".ckpt") == 2 and "prepared_size=64" in command


def test_ranking_within_a_fold_keeps_its_order_per_class_and_puts_folds_on_one_scale():
    import numpy as np

    from cxrdet.inference.folds import rank_calibrated

    box = np.array([[0.0, 0, 10, 10]] * 3)
    fold = {
        "a": (box, np.array([0.9, 0.2, 0.5]), np.array([3, 3, 14])),
        "b": (box[:2], np.array([0.4, 0.2]), np.array([3, 5])),
    }
    ranked = rank_calibrated(fold)
    # class 3: 0.2 < 0.4 < 0.9 -> 1/3, 2/3, 1; one detection of class 5 and of class 14 -> 1
    assert ranked["a"][1].tolist() == pytest.approx([1.0, 1 / 3, 1.0])
    assert ranked["b"][1].tolist() == pytest.approx([2 / 3, 1.0])
    tied = rank_calibrated({"c": (box[:2], np.array([0.5, 0.5]), np.array([3, 3]))})
    assert tied["c"][1].tolist() == [0.75, 0.75]  # ties share their mean rank


def test_a_folder_without_runs_is_named(tmp_path, capsys):
    assert cv.main([str(tmp_path)]) == 2
    assert f"no runs (*/.hydra/config.yaml) in {tmp_path}" in capsys.readouterr().err


def test_classifier_folds_get_their_auc_and_the_best_filter_thresholds(
    tiny_data, detector_sweep, tmp_path
):
    from cxrdet.data.fusion import fuse_readers
    from cxrdet.data.labels import ground_truth, normal_image_ids, read_labels
    from cxrdet.data.probs_csv import read_probs
    from cxrdet.evaluation.competition import competition_map
    from cxrdet.evaluation.nofinding import nofinding_filter
    from cxrdet.evaluation.submission import (
        as_read_back,
        format_prediction,
        read_submission,
        write_submission,
    )
    from cxrdet.inference.classifier_cv import GRID
    from cxrdet.inference.folds import fold_images

    sweep = tmp_path / "classifier"
    train_in_process(
        [
            "-m",
            "experiment=nofinding",
            *[
                o
                for o in tiny_overrides(tiny_data, sweep / "unused")
                if not o.startswith(("model.roi_", "model.rpn_"))
            ],
            *FOLDS,
            "model.arch=resnet18",
            "trainer.val_check_interval=1",
            f"hydra.sweep.dir={sweep}",
        ]
    )
    oof_csv = detector_sweep[0] / "oof" / "oof_submission.csv"
    test_probs = tmp_path / "test_probs.csv"
    test_probs.write_text("image_id,p_abnormal\nx,0.01\ny,0.6\nz,0.99\nw,0.99\n")
    out = run_cv(sweep, "--detector-oof", str(oof_csv), "--test-probs", str(test_probs))
    result = json.loads(out.strip().splitlines()[-1])
    assert [f["fold"] for f in result["folds"]] == [0, 1]
    oof = result["oof"]
    # What to add to the detector folds' predict.py command: both classifiers and the pair,
    # when the held-out gain's paired interval is above 0; else nothing (a 2-step detector and
    # classifier on 16 images: either may happen, tests/inference/test_filter_search.py
    # checks each).
    ckpts = ",".join(f["checkpoint"] for f in result["folds"])
    low_high = oof["held_out_pooled_gain_ci"]
    assert oof["recommended"] == (low_high[0] > 0)
    if oof["recommended"]:
        command = next(line for line in out.splitlines() if "nofinding.ckpt_path=[" in line)
        assert f"nofinding.ckpt_path=[{ckpts}]" in command
        assert f"nofinding.low={oof['low']} nofinding.high={oof['high']}" in command
    else:
        assert result["command"] == "" and "predict.py without the filter" in out
    assert oof["images"] == 16
    # The AUCs are those of the written out-of-fold probabilities (scikit-learn's AUC).
    labels, _ = read_labels(tiny_data["raw"] / "train.csv")
    written = pd.read_csv(sweep / "oof" / "oof_nofinding_probs.csv", dtype={"image_id": str})
    abnormal = ~written["image_id"].isin(normal_image_ids(labels))
    assert 0 < abnormal.sum() < len(written) == 16
    assert oof["AUC"] == pytest.approx(roc_auc_score(abnormal, written["p_abnormal"]), abs=1e-5)
    fold_of = {}
    for fold in result["folds"]:
        ids = fold_images(OmegaConf.load(Path(fold["run"]) / ".hydra" / "config.yaml"), labels)
        fold_of.update(dict.fromkeys(ids, fold["fold"]))
        part = written["image_id"].isin(ids)
        expected = roc_auc_score(abnormal[part], written["p_abnormal"][part])
        assert fold["AUC"] == pytest.approx(expected, abs=1e-5)
    # "Without the filter" is the detector's own out-of-fold figure: the ground truth fused as
    # the detector sweep validated (wbf), not as the classifier sweep did (none).
    labels_csv = str(tiny_data["raw"] / "train.csv")
    detector = json.loads(detector_sweep[1].strip().splitlines()[-1])["oof"]
    assert oof["mAP40_without_filter"] == pytest.approx(detector["mAP40"], abs=1e-12)
    assert oof["mAP40_without_filter"] == pytest.approx(
        score(labels_csv, str(oof_csv), fusion="wbf")["mAP40"], abs=1e-12
    )
    # Each fold's pair is the best on the other fold, scored on its own; the pair for the test
    # set is the best on both; scored as predict.py writes it (4 decimals) it gets that figure.
    ids = sorted(labels["image_id"].unique())
    probs = read_probs(str(sweep / "oof" / "oof_nofinding_probs.csv"), ids)
    sub = read_submission(oof_csv)

    truth = ground_truth(fuse_readers(labels, "wbf", 0.4), ids)  # as cxrdet score fuses them

    def filtered(i, low, high):
        boxes_only = tuple(a[sub[i][2] != 14] for a in sub[i])
        return nofinding_filter(boxes_only, probs[i], low, high)

    def with_filter(subset, low, high) -> float:
        """The mAP40 of the filtered rows as written (4 decimals: read back in memory)."""
        dets = {i: as_read_back(*filtered(i, low, high)) for i in subset}
        return competition_map({i: truth[i] for i in subset}, dets)["mAP"]

    # The chosen pair once through a written CSV and cxrdet score, as predict.py writes it.
    rows = {i: format_prediction(*filtered(i, oof["low"], oof["high"])) for i in ids}
    path = write_submission(rows, tmp_path / "filtered.csv")
    written = score(labels_csv, str(path), fusion="wbf")["mAP40"]
    assert written == pytest.approx(with_filter(ids, oof["low"], oof["high"]), abs=1e-12)
    assert oof["mAP40_with_filter"] == pytest.approx(written, abs=1e-3)
    assert [t["mAP40"] for t in oof["top5"]] == sorted(
        (t["mAP40"] for t in oof["top5"]), reverse=True
    )
    assert oof["top5"][0]["mAP40"] == oof["mAP40_with_filter"]
    for held in oof["held_out"]:
        own = [i for i in ids if fold_of[i] == held["fold"]]
        others = [i for i in ids if fold_of[i] != held["fold"]]
        best_elsewhere = max(with_filter(others, lo, hi) for lo, hi in GRID)
        assert with_filter(others, held["low"], held["high"]) == pytest.approx(
            best_elsewhere, abs=1e-3
        )
        assert held["mAP40_with_filter"] == pytest.approx(
            with_filter(own, held["low"], held["high"]), abs=1e-3
        )
    gains = [h["gain"] for h in oof["held_out"]]
    assert len(gains) == 2 and oof["held_out_gain"] == pytest.approx(sum(gains) / 2)
    # The test set's shares in the bands, beside the folds'.
    low, high = oof["low"], oof["high"]
    test = {"below_low": 0.25 * (low > 0.01), "above_high": 0.5 * (high <= 0.99)}
    assert result["bands"]["test"]["below_low"] == pytest.approx(test["below_low"])
    assert result["bands"]["test"]["above_high"] == pytest.approx(
        test["above_high"] + 0.25 * (high <= 0.6)
    )
    oof_below = sum(p < low for p in probs.values()) / 16
    assert result["bands"]["oof"]["below_low"] == pytest.approx(oof_below)


def test_sweeps_whose_folds_differ_are_refused_naming_the_setting(detector_sweep, tmp_path):
    from cxrdet.inference.folds import check_same_folds, fold_runs

    runs = fold_runs(detector_sweep[0])
    other = [(run, cfg.copy()) for run, cfg in runs]
    other[0][1].data.split_seed = 7
    with pytest.raises(ValueError, match=r"the classifier sweep has data.split_seed=7 and the "):
        check_same_folds(other, runs, "classifier", "detector")
    check_same_folds(runs, runs, "classifier", "detector")  # the same folds pass
