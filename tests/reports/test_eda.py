"""EDA: the counts equal a pandas groupby; every figure is written; heatmaps and agreement."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd

from cxrdet.data.labels import CLASS_NAMES, LABEL_COLUMNS
from cxrdet.reports.eda import main
from cxrdet.reports.stats import heatmaps, reader_agreement


def test_eda_counts_equal_pandas_and_figures_exist(tiny_data, tmp_path):
    out = tmp_path / "eda"
    args = [
        "--labels",
        str(tiny_data["raw"] / "train.csv"),
        "--out",
        str(out),
        "--meta",
        str(tiny_data["prepared"] / "64" / "train_meta.csv"),
        "--split",
        "valid20",
        "--augment-preview",
        "3",
        "--images",
        str(tiny_data["prepared"] / "64" / "train"),
    ]
    assert main(args) == 0
    summary = json.loads((out / "summary.json").read_text())
    df = pd.read_csv(tiny_data["raw"] / "train.csv")
    assert summary["rows"] == len(df)
    assert summary["images"] == df.image_id.nunique()
    # normal = no reader marked a finding: every row of the image is class 14
    assert summary["normal_images"] == int((df.groupby("image_id").class_id.min() == 14).sum())
    expected = {CLASS_NAMES[c]: n for c, n in df.groupby("class_id").size().items()}
    assert summary["class_counts"] == expected
    assert summary["rad_counts"] == df.groupby("rad_id").size().to_dict()
    assert summary["split"]["train_images"] + summary["split"]["val_images"] == summary["images"]
    for name in (
        "fig1_2_findings_per_class",
        "fig3_annotations_per_radiologist",
        "fig8_box_area_per_class",
        "fig9_heatmaps",
        "class_cooccurrence",
        "boxes_per_image",
        "reader_agreement",
        "fig13_augment_preview",
    ):
        assert (out / f"{name}.png").stat().st_size > 5000, name
    markdown = (out / "summary.md").read_text()
    assert all(f"| {name} | {n} |" in markdown for name, n in expected.items())


def test_heatmap_counts_box_coverage():
    rel = pd.DataFrame(
        {
            "x_min": [0.0, 0.5],
            "y_min": [0.0, 0.5],
            "x_max": [0.5, 1.0],
            "y_max": [0.5, 1.0],
            "class_id": [3, 3],
        }
    )
    maps = heatmaps(rel, 14)
    assert maps.shape == (14, 128, 128)
    assert maps[3, 10, 10] == 1 and maps[3, 100, 100] == 1 and maps[3, 10, 100] == 0
    assert maps[3].sum() == 2 * 64 * 64 and maps[0].sum() == 0


def test_reader_agreement_is_mean_best_iou_between_readers():
    rows = [
        ["a", "Nodule/Mass", 8, "R1", 0, 0, 10, 10],
        ["a", "Nodule/Mass", 8, "R2", 0, 0, 10, 5],  # IoU 0.5 with R1's
        ["a", "Nodule/Mass", 8, "R2", 50, 50, 60, 60],  # no partner: best IoU 0
        ["b", "ILD", 5, "R1", 0, 0, 10, 10],  # a single reader: not counted
    ]
    agreement = reader_agreement(pd.DataFrame(rows, columns=LABEL_COLUMNS))
    assert agreement == {"Nodule/Mass": np.mean([0.5, 0.5, 0.0])}


def test_a_box_outside_its_image_and_no_rad_id_column_still_give_the_summary(tiny_data, tmp_path):
    """The preview skips (and counts) an image it cannot draw instead of crashing, the
    summary is written either way, and labels without a rad_id column say so instead of
    counting one radiologist named ''. It used to crash with albumentations' error
    (exit 2, no summary) and count a reader ''."""
    labels = pd.read_csv(tiny_data["raw"] / "train.csv")
    first = labels[labels.class_id < 14].image_id.iloc[0]
    labels.loc[labels.image_id == first, ["x_min", "x_max"]] = [5000.0, 6000.0]  # outside
    path = tmp_path / "labels.csv"
    labels.drop(columns="rad_id").to_csv(path, index=False)
    out = tmp_path / "eda"
    args = ["--labels", str(path), "--out", str(out), "--augment-preview", "2"]
    args += ["--meta", str(tiny_data["prepared"] / "64" / "train_meta.csv")]
    args += ["--images", str(tiny_data["prepared"] / "64" / "train")]
    assert main(args) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["rad_counts"] == {} and "no rad_id column" in summary["readers"]
    assert "no rad_id column" in (out / "summary.md").read_text()
    assert (out / "fig13_augment_preview.png").is_file()  # drawn from the next image
