"""Reader fusion with ensemble-boxes, and the "No finding" rule."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from cxrdet.data.fusion import fuse_readers
from cxrdet.data.labels import CLASS_NAMES, LABEL_COLUMNS


def _rows(rows):
    """Label rows as read_labels gives them (each class_name its id's)."""
    return pd.DataFrame(
        [[i, CLASS_NAMES[c], c, r, *b] for i, c, r, b in rows], columns=LABEL_COLUMNS
    )


@pytest.mark.parametrize("method", ["wbf", "nms"])
def test_three_identical_boxes_fuse_to_that_box(method):
    box = [100.0, 200.0, 400.0, 500.0]
    labels = _rows([("a", 3, r, box) for r in ("R8", "R1", "R2")])
    fused = fuse_readers(labels, method)
    assert len(fused) == 1 and fused.class_id[0] == 3 and fused.class_name[0] == "Cardiomegaly"
    np.testing.assert_allclose(fused[["x_min", "y_min", "x_max", "y_max"]].to_numpy()[0], box)


def test_wbf_averages_overlapping_and_keeps_separate_boxes_and_classes():
    labels = _rows(
        [
            ("a", 8, "R1", [100, 100, 200, 200]),
            ("a", 8, "R2", [110, 110, 210, 210]),  # IoU 0.68 with R1's: one nodule
            ("a", 8, "R3", [600, 600, 700, 700]),  # elsewhere: a second nodule
            ("a", 0, "R3", [105, 105, 205, 205]),  # same place, other class: kept apart
        ]
    )
    fused = fuse_readers(labels, "wbf").sort_values(["class_id", "x_min"]).reset_index(drop=True)
    boxes = fused[["x_min", "y_min", "x_max", "y_max"]].to_numpy()
    assert list(fused.class_id) == [0, 8, 8]
    np.testing.assert_allclose(boxes[1], [105, 105, 205, 205])
    np.testing.assert_allclose(boxes[2], [600, 600, 700, 700])


def test_no_finding_reader_does_not_veto_findings():
    nan = [np.nan] * 4
    labels = _rows(
        [
            ("a", 14, "R1", nan),
            ("a", 10, "R2", [10, 10, 50, 50]),
            ("b", 14, "R1", nan),
            ("b", 14, "R2", nan),
            ("b", 14, "R3", nan),
        ]
    )
    fused = fuse_readers(labels, "wbf")
    assert sorted(zip(fused.image_id, fused.class_id)) == [("a", 10), ("b", 14)]
    assert (fused.rad_id == "fused").all()
    assert fuse_readers(labels, "none") is labels
    with pytest.raises(ValueError, match="unknown fusion"):
        fuse_readers(labels, "mean")


def test_one_meaning_of_normal_in_training_fusion_scoring_and_eda(tmp_path):
    import cv2

    from cxrdet.data.dataset import build_records
    from cxrdet.data.labels import ground_truth, normal_image_ids, read_labels
    from cxrdet.data.meta import read_meta
    from cxrdet.reports.stats import summarise

    nan = [float("nan")] * 4
    rows = [  # "a": one reader marked a finding, two wrote "No finding"; "b": all three normal
        ["a", "Cardiomegaly", 3, "R1", 10, 20, 60, 70],
        ["a", "No finding", 14, "R2", *nan],
        ["a", "No finding", 14, "R3", *nan],
        *[["b", "No finding", 14, f"R{r}", *nan] for r in (1, 2, 3)],
    ]
    pd.DataFrame(rows, columns=LABEL_COLUMNS).to_csv(tmp_path / "train.csv", index=False)
    labels, _ = read_labels(tmp_path / "train.csv")
    assert normal_image_ids(labels) == {"b"}
    assert summarise(labels)["normal_images"] == 1
    gt = ground_truth(labels, ["a", "b"])
    assert gt["a"][1].tolist() == [3] and gt["b"][1].tolist() == [14]
    fused = fuse_readers(labels, "wbf")
    assert sorted(map(tuple, fused[["image_id", "class_id"]].values.tolist())) == [
        ("a", 3),
        ("b", 14),
    ]
    pd.DataFrame({"image_id": ["a", "b"], "dim0": [80, 80], "dim1": [80, 80]}).to_csv(
        tmp_path / "meta.csv", index=False
    )
    for image_id in "ab":
        cv2.imwrite(str(tmp_path / f"{image_id}.png"), np.zeros((16, 16), np.uint8))
    meta = read_meta(tmp_path / "meta.csv")
    a, b = build_records(labels, meta, tmp_path, ["a", "b"], use_class14=True)
    assert a.classes.tolist() == [3] and a.has_finding
    assert b.classes.tolist() == [14] and not b.has_finding


def test_wide_boxes_keep_their_place_and_the_default_iou_is_0_4():
    """Boxes far wider than tall (scaled into [0, 1] for ensemble-boxes by the largest
    coordinate, x or y), two readers' boxes at IoU 0.5 fused under the default IoU 0.4, and
    the output in train.csv's columns. (Added for mutants that survived: the scale's axis, the
    default IoU, the column order.)"""
    labels = _rows(
        [
            ("a", 3, "R1", [1000.0, 100, 2900, 300]),
            ("a", 3, "R2", [1000.0, 100, 2900, 500]),  # IoU 0.5 with R1's
        ]
    )
    fused = fuse_readers(labels, "wbf")
    assert list(fused.columns) == LABEL_COLUMNS and len(fused) == 1
    np.testing.assert_allclose(
        fused[["x_min", "y_min", "x_max", "y_max"]].to_numpy()[0], [1000, 100, 2900, 400]
    )
