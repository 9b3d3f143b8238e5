"""Calibration of the scores a reader sees (cxrdet.evaluation.calibration): the ECE and its
bins by hand, the detections' D-ECE from the competition's matching, a temperature that mends
an overconfident classifier, ``cxrdet score --calibration`` and ``cxrdet calibrate``."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from cxrdet.evaluation.calibration import (
    detection_calibration,
    fit_temperature,
    reliability,
    scaled,
)


def test_the_ece_is_the_count_weighted_gap_of_each_bin_by_hand():
    """Bins [0.1, 0.2): two at 0.15, one right (0.5); [0.8, 0.9]: four at 0.85, all right:
    ECE = 2/6·|0.5 - 0.15| + 4/6·|1 - 0.85| = 0.2167. Fails if a bin's weight, its mean or
    the gap changes."""
    r = reliability([0.15, 0.15, 0.85, 0.85, 0.85, 0.85], [1, 0, 1, 1, 1, 1])
    assert r["ECE"] == pytest.approx(2 / 6 * 0.35 + 4 / 6 * 0.15)
    assert [(b["low"], b["count"]) for b in r["bins"]] == [(0.1, 2), (0.8, 4)]
    assert reliability([1.0], [1])["bins"][0]["low"] == 0.9  # 1.0 falls in the last bin
    calibrated = np.random.default_rng(0).uniform(size=20000)
    outcome = np.random.default_rng(1).uniform(size=20000) < calibrated
    assert reliability(calibrated, outcome)["ECE"] < 0.02


def test_a_detection_is_right_when_the_competition_s_matching_makes_it_a_true_positive():
    """Two detections on one box (the second a duplicate: wrong), one elsewhere (wrong), one
    below the threshold (not shown)."""
    box = np.array([[10.0, 10.0, 50.0, 50.0]])
    gt = {"a": (box, np.array([3]))}
    dets = {"a": (np.r_[box, box + 1, [[200, 200, 240, 240]], box],
                  np.array([0.95, 0.9, 0.35, 0.1]), np.array([3, 3, 3, 3]))}  # fmt: skip
    r = detection_calibration(gt, dets, threshold=0.3)
    assert r["count"] == 3 and r["threshold"] == 0.3
    by_bin = {b["low"]: (b["count"], b["accuracy"]) for b in r["bins"]}
    assert by_bin == {0.9: (2, 0.5), 0.3: (1, 0.0)}


def test_a_temperature_mends_an_overconfident_classifier_and_keeps_its_ranking():
    """Scores whose logits were tripled: T near 3 brings the ECE down; the order is kept."""
    rng = np.random.default_rng(2)
    true_p = rng.uniform(0.05, 0.95, 4000)
    outcome = rng.uniform(size=4000) < true_p
    logits = np.log(true_p / (1 - true_p)) * 3
    overconfident = 1 / (1 + np.exp(-logits))
    t = fit_temperature(overconfident, outcome)
    assert 2.5 < t < 3.5
    mended = scaled(overconfident, t)
    assert reliability(mended, outcome)["ECE"] < reliability(overconfident, outcome)["ECE"] / 3
    assert (np.argsort(mended) == np.argsort(overconfident)).all()


def test_score_calibration_prints_both_tables(tmp_path, capsys):
    from cxrdet.evaluation.score import main

    labels = pd.DataFrame(
        {"image_id": ["p", "p", "n"], "class_name": ["Nodule/Mass", "Nodule/Mass", "No finding"],
         "class_id": [8, 8, 14], "rad_id": ["R1", "R2", "R1"],
         "x_min": [10.0, 11, None], "y_min": [10.0, 11, None],
         "x_max": [50.0, 51, None], "y_max": [50.0, 51, None]}
    )  # fmt: skip
    labels.to_csv(tmp_path / "labels.csv", index=False)
    (tmp_path / "sub.csv").write_text(
        "image_id,PredictionString\np,8 0.9 10 10 50 50 8 0.6 300 300 340 340\nn,14 1 0 0 1 1\n"
    )
    (tmp_path / "probs.csv").write_text("image_id,p_abnormal\np,0.9\nn,0.3\n")
    args = ["--labels", str(tmp_path / "labels.csv"), "--submission", str(tmp_path / "sub.csv")]
    assert main([*args, "--calibration", "--probs", str(tmp_path / "probs.csv")]) == 0
    out = capsys.readouterr().out
    assert "detections with score >= 0.3 (D-ECE): ECE 0.350 over 2" in out  # |1-.9|, |0-.6|
    assert "classifier P(abnormal): ECE 0.200 over 2" in out


def test_calibrate_fits_the_temperature_on_the_validation_images_and_predict_applies_it(
    tiny_data, tmp_path, capsys
):
    """A random-init classifier saved with its run's data settings: cxrdet calibrate writes
    the fitted temperature into the checkpoint, and the loaded classifier divides its logit
    by it (fails if the temperature is not written, or not applied at prediction)."""
    from cxrdet.inference.calibrate import main
    from cxrdet.models.classifier import NoFindingModule, load_classifier

    torch.manual_seed(0)
    module = NoFindingModule(
        model={"arch": "resnet18", "weights": None},
        optim={"_target_": "torch.optim.SGD", "_partial_": True, "lr": 0.01},
        image_size=64,
    )
    prepared = tiny_data["prepared"] / "64"
    data = {
        "labels_csv": str(tiny_data["raw"] / "train.csv"),
        "image_dir": str(prepared / "train"),
        "meta_csv": str(prepared / "train_meta.csv"),
        "split": "valid20",
        "val_fraction": 0.5,
        "split_seed": 111,
        "val_batch_size": 4,
    }
    ckpt = tmp_path / "cls.ckpt"
    torch.save({"hyper_parameters": dict(module.hparams), "state_dict": module.state_dict(),
                "datamodule_hyper_parameters": data}, ckpt)  # fmt: skip
    assert main([str(ckpt), "--dry-run"]) == 0
    assert "(not written (--dry-run))" in capsys.readouterr().out
    assert torch.load(ckpt, weights_only=True)["hyper_parameters"]["temperature"] == 1.0
    assert main([str(ckpt)]) == 0
    said = capsys.readouterr().out
    t = torch.load(ckpt, weights_only=True)["hyper_parameters"]["temperature"]
    assert f"temperature {t:.3f} (written into {ckpt})" in said and t != 1.0
    loaded = load_classifier(str(ckpt))
    logits = torch.tensor([[2.0]])
    assert loaded.p_abnormal(logits).item() == pytest.approx(torch.sigmoid(torch.tensor(2 / t)))
