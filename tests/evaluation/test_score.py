"""The local scorer CLI: both metrics, reader fusion, JSON, and clear rejections."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from cxrdet.data.labels import LABEL_COLUMNS
from cxrdet.evaluation.score import main

NAN = [float("nan")] * 4


@pytest.fixture
def labels(tmp_path):
    rows = [
        ["a", "Cardiomegaly", 3, "R1", 100, 300, 400, 500],
        ["a", "Cardiomegaly", 3, "R2", 104, 296, 404, 504],
        ["a", "No finding", 14, "R3", *NAN],
        ["b", "No finding", 14, "R1", *NAN],
        ["b", "No finding", 14, "R2", *NAN],
    ]
    path = tmp_path / "labels.csv"
    pd.DataFrame(rows, columns=LABEL_COLUMNS).to_csv(path, index=False)
    return path


def _submission(tmp_path, rows):
    path = tmp_path / "submission.csv"
    path.write_text("image_id,PredictionString\n" + "".join(f"{i},{p}\n" for i, p in rows))
    return path


def test_scores_both_metrics_and_fusion_changes_the_ground_truth(labels, tmp_path, capsys):
    sub = _submission(
        tmp_path, [("a", "3 0.9 102 298 402 502 14 0.1 0 0 1 1"), ("b", "14 1 0 0 1 1")]
    )
    assert main(["--labels", str(labels), "--submission", str(sub), "--json"]) == 0
    r = json.loads(capsys.readouterr().out)
    assert set(r) == {"mAP40", "mAP40_ci", "AP40", "AP40_ci", "per_class", "images"}
    assert r["images"] == 2
    # Unfused: two Cardiomegaly GT boxes, one detection -> recall 0.5: VOC AP 0.5, COCO's
    # 101-point AP 51/101 (precision 1 at recall 0, 0.01, ..., 0.5).
    assert r["per_class"]["3"] == pytest.approx(0.5) and r["AP40"] == pytest.approx(51 / 101)
    # "No finding": GT on both images (a reader said so on a); b's 1.0 first, a's 0.1 second.
    assert r["per_class"]["14"] == pytest.approx(1.0)
    assert (
        main(["--labels", str(labels), "--submission", str(sub), "--json", "--fusion", "wbf"]) == 0
    )
    fused = json.loads(capsys.readouterr().out)
    assert fused["per_class"]["3"] == pytest.approx(1.0) and fused["AP40"] == pytest.approx(1.0)
    # Fused, image a has a finding, so its "No finding" reader no longer counts.
    assert fused["per_class"]["14"] == pytest.approx(1.0) and fused["mAP40"] == pytest.approx(1.0)
    assert main(["--labels", str(labels), "--submission", str(sub)]) == 0
    table = capsys.readouterr().out
    assert "mAP40" in table and "Cardiomegaly" in table and "No finding" in table


@pytest.mark.parametrize(
    ("rows", "reason"),
    [
        ([("a", "3 0.9 1 2 3"), ("b", "14 1 0 0 1 1")], "line 2 (a): 5 tokens"),
        ([("a", "3 0.9 1 2 3 4"), ("a", "14 1 0 0 1 1")], "line 3: image_id a appears twice"),
        ([("a", "3 0.9 1 2 3 4")], "1 image_id(s) missing, e.g. b"),
        ([("a", "3 0.9 9 2 3 4"), ("b", "14 1 0 0 1 1")], "x_min >= x_max"),
    ],
)
def test_malformed_submissions_are_rejected_with_line_and_reason(
    labels, tmp_path, capsys, rows, reason
):
    sub = _submission(tmp_path, rows)
    assert main(["--labels", str(labels), "--submission", str(sub)]) == 2
    assert reason in capsys.readouterr().err


def test_split_scores_only_the_validation_images_training_used(tmp_path, capsys):
    from cxrdet.data.splits import split_ids

    ids = [f"{i:032x}" for i in range(20)]
    rows = [[i, "No finding", 14, "R1", *NAN] for i in ids]
    labels = tmp_path / "labels.csv"
    pd.DataFrame(rows, columns=LABEL_COLUMNS).to_csv(labels, index=False)
    _, val = split_ids(pd.read_csv(labels), "kfold", seed=5, fold=1)
    sub = _submission(tmp_path, [(i, "14 1 0 0 1 1") for i in val])
    args = ["--labels", str(labels), "--submission", str(sub), "--json"]
    assert main([*args, "--split", "kfold", "--fold", "1", "--seed", "5"]) == 0
    assert json.loads(capsys.readouterr().out)["images"] == len(val) == 4
    assert main(args) == 2  # without the split, the other 16 images are missing
    assert "16 image_id(s) missing" in capsys.readouterr().err


def test_split_fraction_and_fold_count_are_read_like_training(tmp_path, capsys):
    from cxrdet.data.splits import split_ids

    ids = [f"{i:032x}" for i in range(20)]
    labels = tmp_path / "labels.csv"
    rows = [[i, "No finding", 14, "R1", *NAN] for i in ids]
    pd.DataFrame(rows, columns=LABEL_COLUMNS).to_csv(labels, index=False)
    for split, extra, kwargs in [
        ("valid20", ["--val-fraction", "0.5"], {"val_fraction": 0.5}),
        ("kfold", ["--n-folds", "2", "--fold", "1"], {"n_folds": 2, "fold": 1}),
    ]:
        _, val = split_ids(pd.read_csv(labels), split, seed=111, **kwargs)
        sub = _submission(tmp_path, [(i, "14 1 0 0 1 1") for i in val])
        args = ["--labels", str(labels), "--submission", str(sub), "--json", "--split", split]
        assert main([*args, *extra]) == 0, capsys.readouterr().err
        assert json.loads(capsys.readouterr().out)["images"] == len(val) == 10


def test_the_metric_iou_leaves_the_reader_fusion_iou_alone(tmp_path, capsys):
    # Two readers' boxes overlap at IoU 0.45: fused at --fusion-iou 0.4 (default) into one box,
    # which the detection matches at the metric's IoU 0.5; left as two boxes, one is missed.
    rows = [
        ["a", "Aortic enlargement", 0, "R1", 0, 0, 100, 100],
        ["a", "Aortic enlargement", 0, "R2", 0, 0, 100, 45],
    ]
    labels = tmp_path / "labels.csv"
    pd.DataFrame(rows, columns=LABEL_COLUMNS).to_csv(labels, index=False)
    sub = _submission(tmp_path, [("a", "0 0.9 0 0 100 100")])
    args = ["--labels", str(labels), "--submission", str(sub), "--json", "--fusion", "wbf"]
    assert main([*args, "--iou", "0.5"]) == 0
    assert json.loads(capsys.readouterr().out)["per_class"]["0"] == 1.0
    assert main([*args, "--iou", "0.5", "--fusion-iou", "0.5"]) == 0
    assert json.loads(capsys.readouterr().out)["per_class"]["0"] == 0.5


def test_coco_out_writes_ground_truth_and_predictions_for_review_tools(labels, tmp_path, capsys):
    from faster_coco_eval import COCO

    sub = _submission(
        tmp_path, [("a", "3 0.9 102 298 402 502 14 0.1 0 0 1 1"), ("b", "14 1 0 0 1 1")]
    )
    meta = tmp_path / "meta.csv"
    pd.DataFrame({"image_id": ["a", "b"], "dim0": [2000, 2400], "dim1": [1800, 2048]}).to_csv(
        meta, index=False
    )
    args = ["--labels", str(labels), "--submission", str(sub), "--coco-out", str(tmp_path / "c")]
    assert main(args) == 2 and "--coco-out needs --meta" in capsys.readouterr().err
    assert main([*args, "--meta", str(meta)]) == 0
    gt, pred = (
        COCO(str(tmp_path / "c" / "ground_truth.json")),
        COCO(str(tmp_path / "c" / "predictions.json")),
    )
    images = {i["file_name"]: (i["height"], i["width"]) for i in gt.dataset["images"]}
    assert images == {"a.png": (2000, 1800), "b.png": (2400, 2048)}  # original pixels
    names = [c["name"] for c in gt.dataset["categories"]]
    assert len(names) == 14 and names[3] == "Cardiomegaly" and "No finding" not in names
    # Both readers' boxes on a, none for "No finding"; x, y, width, height.
    assert sorted(a["bbox"] for a in gt.dataset["annotations"]) == [
        [100, 300, 300, 200],
        [104, 296, 300, 208],
    ]
    (det,) = pred.dataset["annotations"]  # the class-14 lines are image-level: left out
    assert det["category_id"] == 4 and det["score"] == 0.9 and det["bbox"] == [102, 298, 300, 204]
