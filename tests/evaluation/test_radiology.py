"""The radiology metrics: FROC/CPM, the TIDE-style error breakdown (checked against tidecv)
and the readers' leave-one-out baseline, each on a case computed by hand."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from cxrdet.data.labels import CLASS_NAMES, LABEL_COLUMNS
from cxrdet.evaluation.errors import error_breakdown
from cxrdet.evaluation.froc import froc
from cxrdet.evaluation.readers import leave_one_out, readers_baseline

A, B, C = [0, 0, 10, 10], [50, 50, 60, 60], [100, 100, 110, 110]
FAR = [300, 300, 310, 310]


def _gt(**images):
    return {i: (np.array(b, float).reshape(-1, 4), np.array(c)) for i, (b, c) in images.items()}


def _dets(**images):
    return {
        i: (np.array(b, float).reshape(-1, 4), np.array(s, float), np.array(c))
        for i, (b, s, c) in images.items()
    }


def test_froc_and_cpm_on_a_case_computed_by_hand():
    gt = _gt(a=([A, B], [0, 1]), b=([C], [0]))
    dets = _dets(
        a=([A, FAR, B], [0.9, 0.8, 0.3], [0, 0, 1]),  # TP, FP, TP
        b=([C, FAR], [0.7, 0.6], [0, 0]),  # TP, FP
    )
    r = froc(gt, dets)
    # Pooled: .9 TP, .8 FP, .7 TP, .6 FP, .3 TP over 3 boxes and 2 images.
    assert r["sensitivity"] == pytest.approx([1 / 3, 1 / 3, 2 / 3, 1, 1, 1, 1])
    assert r["CPM"] == pytest.approx(16 / 21)
    assert r["per_class"][0]["sensitivity"] == pytest.approx([0.5, 0.5, 1, 1, 1, 1, 1])
    assert r["per_class"][1]["CPM"] == pytest.approx(1.0)
    # A threshold cannot split a tie: the FP scoring as the second TP comes with it.
    tied = _dets(a=([A, C], [0.9, 0.8], [0, 0]), b=([FAR], [0.8], [0]))
    r = froc(_gt(a=([A, C], [0, 0]), b=([], [])), tied)
    assert r["sensitivity"][:3] == [0.5, 0.5, 1.0]
    # "No finding" lines are no lesion: scored neither as a hit nor as a false positive.
    normal = _gt(a=([A], [0]), n=([[0, 0, 1, 1]], [14]))
    r = froc(normal, _dets(a=([A], [0.9], [0]), n=([[0, 0, 1, 1]], [0.95], [14])))
    assert r["sensitivity"][0] == 1.0 and 14 not in r["per_class"]


def _scene():
    """One image with one error of each type (and a true positive)."""
    G3 = [200, 200, 210, 210]
    gt = _gt(x=([A, B, C, G3], [0, 1, 2, 3]))
    dets = _dets(
        x=(
            [A, A, B, [200, 200, 220, 220], FAR, [50, 50, 70, 70]],
            [0.9, 0.8, 0.7, 0.6, 0.5, 0.4],
            [0, 0, 0, 3, 4, 4],
        )
    )
    return gt, dets


def test_each_error_type_and_what_fixing_it_gains_by_hand():
    r = error_breakdown(*_scene())
    counts = {t: dict(v) for t, v in r["counts"].items()}
    assert counts == {
        "Dupe": {0: 1},  # A again, after the TP took it
        "Cls": {1: 1},  # a class-0 detection on B, counted under B's class 1
        "Loc": {3: 1},  # IoU 0.25 with its class's box
        "Bkg": {4: 1},  # nothing there
        "Both": {4: 1},  # IoU 0.25 with a box of another class
        "Miss": {
            2: 1
        },  # C: no detection near it (B and G3 are not missed: an error points at them)
    }
    # Classes 0-3 have ground truth: APs 1, 0, 0, 0.
    assert r["mAP40"] == pytest.approx(0.25)
    assert r["dAP"]["Cls"] == pytest.approx(0.25)  # class 1 found
    assert r["dAP"]["Loc"] == pytest.approx(0.25)  # class 3 found
    assert r["dAP"]["Miss"] == 0.0  # class 2, missed entirely, stays in the mean at AP 0
    assert r["dAP"]["Dupe"] == r["dAP"]["Bkg"] == r["dAP"]["Both"] == 0.0
    assert r["dAP_per_class"]["Cls"][1] == pytest.approx(1.0)
    cls_row = r["errors"][r["errors"].type == "Cls"].iloc[0]
    assert (cls_row.image_id, cls_row.class_id, cls_row.target_class) == ("x", 0, 1)


def test_the_miss_fix_keeps_a_fully_missed_class_in_the_mean():
    """Class 0: A found, C missed (AP 0.5); class 1: B missed, nothing else (AP 0): mAP40 0.25.
    Fixing the misses makes class 0 perfect and leaves class 1 at 0: +0.25 (dropping class 1
    from the mean, as before, gave +0.75, the half of it for finding nothing)."""
    gt = _gt(x=([A, B, C], [0, 1, 0]))
    dets = _dets(x=([A, FAR], [0.9, 0.8], [0, 0]))
    r = error_breakdown(gt, dets)
    assert r["mAP40"] == pytest.approx(0.25)
    assert r["counts"]["Miss"] == {0: 1, 1: 1}
    assert r["dAP"]["Miss"] == pytest.approx(0.25)
    assert r["dAP_per_class"]["Miss"] == pytest.approx({0: 0.5, 1: 0.0})


def test_only_the_best_error_per_box_is_fixed_and_one_aimed_at_a_taken_box_is_removed():
    gt = _gt(x=([A], [0]), y=([B], [1]))
    dets = _dets(
        x=([[0, 0, 10, 30], [0, 0, 10, 35]], [0.8, 0.6], [0, 0]),  # two Loc errors on A
        y=([B, [50, 50, 60, 80]], [0.9, 0.5], [1, 1]),  # TP, then a Loc error on a taken box
    )
    r = error_breakdown(gt, dets)
    assert dict(r["counts"]["Loc"]) == {0: 2, 1: 1}
    # Fixed: A found at the 0.8 detection, the 0.6 one and the one on B removed: both APs 1.
    assert r["mAP40"] == pytest.approx(0.5) and r["dAP"]["Loc"] == pytest.approx(0.5)


def _random_scene(rng, n_images=30):
    """Ground-truth boxes of four classes on a grid (no two overlap), detections jittered from
    them with random classes, duplicates and strays; distinct scores."""
    gt, dets = {}, {}
    for i in range(n_images):
        cells = rng.choice(16, size=rng.integers(0, 6), replace=False)
        boxes = np.array(
            [[c % 4 * 100, c // 4 * 100, c % 4 * 100 + 40, c // 4 * 100 + 40] for c in cells], float
        )
        classes = rng.integers(0, 4, len(boxes))
        gt[f"im{i}"] = (boxes.reshape(-1, 4), classes)
        d_boxes, d_classes = [], []
        for b, c in zip(boxes, classes):
            for _ in range(rng.integers(0, 3)):
                d_boxes.append(b + rng.normal(0, 9, 4))
                d_classes.append(c if rng.random() < 0.7 else rng.integers(0, 4))
        for _ in range(rng.integers(0, 3)):
            x, y = rng.uniform(0, 350, 2)
            d_boxes.append([x, y, x + rng.uniform(10, 60), y + rng.uniform(10, 60)])
            d_classes.append(rng.integers(0, 4))
        d_boxes = np.array(d_boxes, float).reshape(-1, 4)
        d_boxes[:, 2:] = np.maximum(d_boxes[:, 2:], d_boxes[:, :2] + 2)
        dets[f"im{i}"] = (d_boxes, rng.random(len(d_boxes)), np.array(d_classes, int))
    return gt, dets


def test_error_types_agree_with_tidecv_where_the_definitions_coincide():
    """tidecv matches each detection to the best box not yet taken; the competition, to the
    best box. On boxes of a class that never overlap each other the two coincide, and so must
    every error's type."""
    from tidecv import TIDE, Data

    rng = np.random.default_rng(0)
    for _ in range(3):
        gt, dets = _random_scene(rng)
        ours = error_breakdown(gt, dets)
        g, p = Data("gt"), Data("pred")
        for k, (image, (boxes, classes)) in enumerate(gt.items()):
            g.add_image(k, image)  # tidecv scores only the images it was told of
            for b, c in zip(boxes, classes):
                g.add_ground_truth(k, int(c), [b[0], b[1], b[2] - b[0], b[3] - b[1]])
            d_boxes, scores, d_classes = dets[image]
            for b, s, c in zip(d_boxes, scores, d_classes):
                p.add_detection(k, int(c), float(s), [b[0], b[1], b[2] - b[0], b[3] - b[1]])
        tide = TIDE(pos_threshold=0.4, background_threshold=0.1, mode=TIDE.BOX)
        tide.evaluate(g, p, name="run")
        theirs = pd.Series([e.short_name for e in tide.runs["run"].errors]).value_counts()
        mine = ours["errors"].type.value_counts()
        assert mine.sum() > 40 and set(mine.index) == {"Cls", "Loc", "Both", "Dupe", "Bkg", "Miss"}
        assert mine.sort_index().to_dict() == theirs.sort_index().to_dict()


def _labels(rows):
    return pd.DataFrame(
        [[i, CLASS_NAMES[c], c, r, *(b or [np.nan] * 4)] for i, c, r, b in rows],
        columns=LABEL_COLUMNS,
    )


def test_each_reader_is_scored_against_the_others_and_the_model_on_the_same_ground_truths():
    labels = _labels(
        [
            ("p", 0, "R1", A),
            ("p", 1, "R1", B),  # only R1 saw this one
            ("p", 0, "R2", [0, 0, 10, 11]),
            ("p", 14, "R3", None),  # R3 saw nothing: its "No finding" line is all it submits
            ("s", 0, "R1", C),  # R1 and R2 read two images, R3 one
            ("s", 0, "R2", C),
            ("q", 0, "R1", B),  # read by one reader only: no leave-one-out test
        ]
    )
    sets = leave_one_out(labels)
    assert {r: list(gt) for r, (gt, _) in sets.items()} == {
        "R1": ["p", "s"],
        "R2": ["p", "s"],
        "R3": ["p"],
    }
    assert sets["R1"][0]["p"][1].tolist() == [0]  # R2's box alone: R1's own are not its truth
    model = _dets(p=([A], [0.9], [0]), q=([B], [0.9], [0]), s=([C], [0.9], [0]))
    r = readers_baseline(sets, model)
    by_reader = {row["reader"]: row["reader_mAP40"] for row in r["readers"]}
    assert by_reader == {"R1": 1.0, "R2": 0.5, "R3": 0.0}  # R2 and R3 miss R1's class 1
    # Means weighted by the images each reader read (2, 2, 1).
    assert r["readers_mAP40"] == pytest.approx((2 * 1 + 2 * 0.5 + 0) / 5)
    assert r["mAP40_vs_readers"] == pytest.approx((2 * 1 + 2 * 0.5 + 0.5) / 5)
    assert r["per_class"] == {0: (pytest.approx(4 / 5), 1.0), 1: (0.0, 0.0)} and r["images"] == 2
    # A model that finds nothing scores 0 against every reader's ground truth.
    assert readers_baseline(sets, {})["mAP40_vs_readers"] == 0.0


def test_a_reader_s_figures_do_not_depend_on_the_images_names():
    """A reader's marks all score 1: one tied block, AP = precision x recall (0.5 x 0.5 here).
    Ranked in image order, as before, R1 scored 0.25 with the false mark's image first and 0.5
    once the images were renamed to sort the other way."""
    from cxrdet.evaluation.operating_points import operating_points

    def figures(first: str, second: str) -> tuple:
        labels = _labels(
            [
                (first, 0, "R1", FAR),  # R1 marks nothing R2 saw on the first image ...
                (first, 0, "R2", A),
                (second, 0, "R1", C),  # ... and finds R2's box on the second
                (second, 0, "R2", C),
            ]
        )
        sets = leave_one_out(labels)
        r1 = readers_baseline(sets, {})["readers"][0]
        points = operating_points(sets, {}, resamples=0)["readers"][0]
        return r1["reader_mAP40"], points["reader_sensitivity"], points["reader_fps"]

    assert figures("a", "b") == figures("b", "a") == (0.25, 0.5, 0.5)


def test_score_prints_and_returns_the_three_tables(tmp_path, capsys):
    import json

    from cxrdet.evaluation.score import main

    labels = _labels(
        [
            ("p", 0, "R1", A),
            ("p", 1, "R1", B),
            ("p", 0, "R2", [0, 0, 10, 11]),
            ("p", 14, "R3", None),
            ("s", 0, "R1", C),
            ("s", 0, "R2", C),
        ]
    )
    labels.to_csv(tmp_path / "labels.csv", index=False)
    (tmp_path / "sub.csv").write_text(
        "image_id,PredictionString\np,0 0.9 0 0 10 10\n"
        "s,0 0.9 100 100 110 110 4 0.5 300 300 310 310\n"
    )
    typo = ["--labels", str(tmp_path / "labels.csv"), "--submission", str(tmp_path / "sbu.csv")]
    assert main(typo) == 2  # a misspelt path is named, not a raw [Errno 2]
    assert capsys.readouterr().err == f"error: submission not found: {tmp_path / 'sbu.csv'}\n"
    args = ["--labels", str(tmp_path / "labels.csv"), "--submission", str(tmp_path / "sub.csv")]
    assert main([*args, "--readers", "--froc", "--errors", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    # As the readers' test computed (the model here also finds C on s).
    assert out["readers"]["readers_mAP40"] == pytest.approx(0.6)
    assert out["readers"]["mAP40_vs_readers"] == pytest.approx(0.7)
    # FROC and the errors count lesions: A and A' on p are one, C and C on s one, B one.
    assert out["froc"]["lesions"] == 3 and out["froc"]["truth"] == "fused"
    # Each reader at their operating point, the model at the same FP rate (R3, who saw
    # nothing on p, finds none of its lesions; tests/evaluation/test_operating_points.py
    # checks the figures).
    points = out["readers"]["operating_points"]
    assert [p["reader"] for p in points["readers"]] == ["R1", "R2", "R3"]
    assert points["readers"][2]["reader_sensitivity"] == 0.0
    assert all(p["verdict"] in ("above", "within", "below") for p in points["readers"])
    # 95 % bootstrap intervals by default (tests/evaluation/test_bootstrap.py checks them);
    # on 2 images, and classes without 5 boxes, none is given.
    assert out["mAP40_ci"]["classes"] == 0 and out["mAP40_ci"]["fewer"] == 2
    assert out["froc"]["CPM_ci"]["images"] == 2 and out["froc"]["CPM_ci"]["low"] != 0.0
    assert out["froc"]["per_class"]["1"]["CPM"] == 0.0 and out["froc"]["CPM"] > 0.6
    assert out["errors"]["counts"]["Bkg"] == {"4": 1} and out["errors"]["counts"]["Miss"]["1"] == 1
    # Class 0: both lesions found (AP 1); class 1: B missed (AP 0), and fixing that miss leaves
    # class 1 with no box: it keeps AP 0 in the mean instead of leaving it (mAP40 0.5 stays).
    assert out["errors"]["mAP40"] == pytest.approx(0.5)
    assert out["errors"]["dAP"]["Miss"] == pytest.approx(0.0)
    assert main([*args, "--errors"]) == 0
    rows = {line.split()[0]: line.split()[-1] for line in capsys.readouterr().out.splitlines()[-2:]}
    assert rows == {"1": "+0.000", "4": "0"}  # the Miss column: count, AP gained (class 0: none)
    assert main([*args, "--froc", "--bootstrap", "0"]) == 0
    text = capsys.readouterr().out
    assert "bootstrap" not in text and text.startswith("mAP40 0.2500 (competition)")
    assert "FROC at IoU 0.4 on 2 image(s)" in text and "readers' baseline" not in text


def test_labels_without_a_rad_id_column_are_said_to_have_no_readers(tmp_path):
    """score --readers on labels without rad_id names the missing column (it used to say "no
    image has two readers", having read every box as one radiologist's)."""
    from cxrdet.data.labels import ground_truth, read_labels
    from cxrdet.evaluation.radiology import radiology_scores, readers_table

    rows = [
        ["a", "Nodule/Mass", 8, 10.0, 10.0, 50.0, 50.0],
        ["a", "Nodule/Mass", 8, 12, 11, 52, 49],
    ]
    path = tmp_path / "labels.csv"
    pd.DataFrame(rows, columns=[c for c in LABEL_COLUMNS if c != "rad_id"]).to_csv(
        path, index=False
    )
    labels, report = read_labels(path)
    assert not report.readers and labels["rad_id"].isna().all()
    gt = ground_truth(labels, ["a"])
    dets = {"a": (np.array([[10.0, 10, 50, 50]]), np.array([0.9]), np.array([8]))}
    r = radiology_scores(gt, dets, labels, froc_=False, errors=False)
    (line,) = readers_table(r["readers"])
    assert "no rad_id column" in line
