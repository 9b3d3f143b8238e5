"""The VinDr-CXR release: its labels files told from Kaggle's by their columns, its 22 classes and
6 diagnoses, the consensus test set scored, and the whole path with 22 classes (synth → prepare
→ train → report → predict → score, and the diagnoses classifier)."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from conftest import in_process, train_in_process

from cxrdet.cli import main as cli
from cxrdet.data.classes import GLOBAL6, KAGGLE14, LOCAL22, of_names
from cxrdet.data.global_labels import read_global_labels
from cxrdet.data.labels import ground_truth, labels_class_set, read_labels
from cxrdet.evaluation.scoring import score
from cxrdet.evaluation.submission import SubmissionError, format_prediction, write_submission

TINY = 64


@pytest.fixture(scope="module")
def release(tmp_path_factory):
    """A phantom release (12 train, 6 test images, 64-96 px) with PNGs at 64 px."""
    from cxrdet.data.prepare import prepare
    from cxrdet.demo.synth import synthesize

    root = tmp_path_factory.mktemp("release")
    synthesize(root, 12, 6, seed=5, normal_share=0.4, min_px=64, max_px=96, layout="release")
    for split in ("train", "test"):
        prepare(root / split, root / "prepared", [TINY], progress=False)
    return root


def _csv(tmp_path, name, text):
    path = tmp_path / name
    path.write_text(text)
    return path


def test_the_release_s_files_are_read_by_their_columns_with_local22(release, caplog):
    """Fails if the release's files are not recognised (no class_id column), if its class
    names are not given local22's ids, or if the consensus file's missing rad_id warns."""
    train, report = read_labels(release / "annotations" / "annotations_train.csv")
    assert (report.layout, report.classes, report.readers) == ("release", LOCAL22, True)
    names = LOCAL22.names
    assert all(names[c] == n for c, n in zip(train["class_id"], train["class_name"]))
    # Phantom kinds named as findings Kaggle does not have, and ids past Kaggle's 0..13.
    assert {"Rib fracture", "Edema", "Lung cavity", "Emphysema"} & set(train["class_name"])
    assert train.loc[train["class_id"] < 22, "class_id"].max() >= 14
    assert (train.loc[train["class_name"] == "No finding", "class_id"] == 22).all()
    with caplog.at_level("WARNING"):
        test, report = read_labels(release / "annotations" / "annotations_test.csv")
    assert not report.readers and test["rad_id"].isna().all()
    assert not [r for r in caplog.records if r.levelname == "WARNING"]  # the consensus: by design
    assert labels_class_set(release / "annotations" / "annotations_test.csv") is LOCAL22


def test_a_file_of_neither_layout_or_of_the_other_set_is_refused_naming_what_it_expected(
    release, tiny_data, tmp_path
):
    odd = _csv(tmp_path, "odd.csv", "image_id,label,x_min,y_min,x_max,y_max\na,Nodule,1,1,2,2\n")
    with pytest.raises(ValueError, match=r"odd\.csv: not a labels file") as e:
        read_labels(odd)
    assert "class_id" in str(e.value) and "class_name" in str(e.value)  # both layouts named
    with pytest.raises(ValueError, match="does not map one set onto the other"):
        read_labels(tiny_data["raw"] / "train.csv", "local22")
    with pytest.raises(ValueError, match="labelled with the local22 classes, not kaggle14"):
        read_labels(release / "annotations" / "annotations_train.csv", "kaggle14")


def test_a_class_name_outside_the_set_is_dropped_and_counted(tmp_path):
    path = _csv(
        tmp_path,
        "annotations_train.csv",
        "image_id,rad_id,class_name,x_min,y_min,x_max,y_max\n"
        "a,R1,Rib fracture,1,1,5,5\n"
        "a,R2,rib FRACTURE,1,1,5,5\n"  # the case aside
        "a,R3,Broken heart,1,1,5,5\n"
        "b,R1,No finding,,,,\n",
    )
    labels, report = read_labels(path)
    assert labels["class_id"].tolist() == [21, 21, 22]
    assert labels["class_name"].tolist() == ["Rib fracture", "Rib fracture", "No finding"]
    assert report.skipped == {"a class_name outside local22": [4]}


def test_the_diagnoses_are_the_readers_majority_and_either_spelling_reads(tmp_path):
    """Fails if 'Other disease' (the test file's spelling) is not read as 'Other diseases', if
    one reader of three makes a diagnosis, or if two of three do not."""
    head = "image_id,rad_ID," + ",".join(GLOBAL6)
    train = _csv(
        tmp_path,
        "image_labels_train.csv",
        f"{head}\n"
        "a,R1,1,0,0,0,0,0\na,R2,1,0,0,0,1,0\na,R3,0,0,0,0,0,1\n"  # COPD: 2 of 3; Other: 1 of 3
        "b,R1,0,0,0,0,0,1\nb,R2,0,0,0,0,0,1\nb,R3,0,1,0,0,0,0\n",
    )
    g = read_global_labels(train)
    assert g.readers == 3
    assert g.labels.loc["a"].tolist() == [1, 0, 0, 0, 0, 0]
    assert g.labels.loc["b"].tolist() == [0, 0, 0, 0, 0, 1]
    spelt = ",".join(GLOBAL6).replace("Other diseases", "Other disease")
    test = _csv(tmp_path, "image_labels_test.csv", f"image_id,{spelt}\nc,0,0,0,0,1,0\n")
    t = read_global_labels(test)
    assert t.readers == 1 and t.labels.loc["c", "Other diseases"] == 1
    bad = _csv(tmp_path, "bad.csv", f"image_id,{spelt}\nc,0,0,2,0,1,0\n")
    with pytest.raises(ValueError, match=r"bad\.csv, line 2: a label that is not 0 or 1"):
        read_global_labels(bad)
    missing = _csv(tmp_path, "missing.csv", "image_id,COPD\nc,1\n")
    with pytest.raises(ValueError, match=r"missing\.csv: missing column\(s\) \['Lung tumor'"):
        read_global_labels(missing)


def test_the_consensus_test_set_is_scored_over_22_classes(release, tmp_path):
    """A perfect submission scores 1 on every class present, the ids past Kaggle's included;
    a local22 id is refused against Kaggle's labels. Fails if the metric or the submission
    reader assumes 15 classes."""
    labels_csv = release / "annotations" / "annotations_test.csv"
    labels, _ = read_labels(labels_csv)
    gt = ground_truth(labels, sorted(labels["image_id"].unique()))
    rows = {i: format_prediction(b, np.ones(len(c)), c, LOCAL22) for i, (b, c) in gt.items()}
    perfect = write_submission(rows, tmp_path / "perfect.csv")
    r = score(str(labels_csv), str(perfect), froc=True, errors=True, bootstrap=50)
    assert r["classes"] is LOCAL22 and r["images"] == 6
    assert r["mAP40"] == pytest.approx(1.0) and r["AP40"] == pytest.approx(1.0)
    assert max(r["per_class"]) == 22 and set(r["per_class"]) == set(labels["class_id"])
    assert r["radiology"]["froc"]["CPM"] == pytest.approx(1.0)
    # A box of class 21 ("Rib fracture") on a Kaggle file: outside kaggle14's ids.
    kaggle = _csv(tmp_path, "train.csv", "image_id,class_name,class_id,rad_id,x_min,y_min,"
                  "x_max,y_max\nx,Nodule/Mass,8,R1,1,1,5,5\n")  # fmt: skip
    write_submission({"x": "21 0.9 1 1 5 5"}, tmp_path / "k.csv")
    with pytest.raises(SubmissionError, match=r"class 21 outside 0\.\.14 \(kaggle14\)"):
        score(str(kaggle), str(tmp_path / "k.csv"))


def test_a_module_s_class_set_follows_its_names():
    assert of_names(KAGGLE14.names[:14]) is KAGGLE14  # checkpoints from before the class sets
    assert of_names(LOCAL22.names) is LOCAL22
    # The release's ids in its own listing's order, "No finding" last.
    assert (LOCAL22.names[6], LOCAL22.names[15], LOCAL22.no_finding) == ("Edema", "Nodule/Mass", 22)
    assert set(KAGGLE14.findings) < set(LOCAL22.findings)


def test_the_release_runs_end_to_end_with_22_classes(release, tmp_path, capsys):
    """synth --format release → prepare (fixture) → train.py data=vindr 2 steps (radiology
    validation, report) → predict.py → cxrdet score on the consensus file; then the diagnoses
    classifier (experiment=diagnoses, 2 steps) → predict.py with it → diagnoses.csv → cxrdet
    score --diagnoses; and cxrdet eda on the release. Fails wherever an entry point assumes
    Kaggle's 14 findings (the head, the metric, the report, the submission, the EDA)."""
    common = [
        f"paths.raw_dir={release}",
        f"paths.prepared_dir={release / 'prepared'}",
        f"data.image_size={TINY}",
        "data.num_workers=0",
        "data.batch_size=2",
        "trainer=cpu",
        "model.weights=null",
        "model.channels_last=false",
        "data.empty_images=keep",
        "trainer.max_steps=2",
        "trainer.val_check_interval=2",
    ]
    detector = tmp_path / "detector"
    train_in_process(
        [
            "data=vindr",
            *common,
            "model.roi_batch_size_per_image=32",
            "evaluation=radiology",
            "report=true",
            f"hydra.run.dir={detector}",
        ]
    )
    ckpt = detector / "checkpoints" / "last.ckpt"
    import torch

    state = torch.load(ckpt, map_location="cpu", weights_only=True)
    assert state["hyper_parameters"]["class_names"] == list(LOCAL22.findings)
    assert state["state_dict"]["model.roi_heads.box_predictor.cls_score.weight"].shape[0] == 23
    figures = json.loads((detector / "report" / "figures.json").read_text())
    assert figures["images"] == 2
    page = (detector / "report" / "index.html").read_text()
    assert "findings 0-21" in page

    classifier = tmp_path / "classifier"
    train_in_process(
        [
            "experiment=diagnoses",
            *common,
            "data.batch_size=4",
            "data.val_fraction=0.5",  # 6 validation images: both kinds for some diagnoses
            "model.arch=resnet18",
            f"hydra.run.dir={classifier}",
        ]
    )
    metrics = pd.read_csv(classifier / "csv" / "metrics.csv")
    assert "val/AUC" in metrics and any(c.startswith("val/AUC/") for c in metrics)

    out = tmp_path / "predict"
    in_process(
        "predict.py",
        [
            f"ckpt_path={ckpt}",
            f"nofinding.ckpt_path={classifier / 'checkpoints' / 'last.ckpt'}",
            f"paths.prepared_dir={release / 'prepared'}",
            f"output={out / 'submission.csv'}",
            "num_workers=0",
            "score_thresh=0.0",
            f"hydra.run.dir={out / 'hydra'}",
        ],
    )
    assert json.loads((out / "predict.json").read_text())["classes"] == "local22"
    sub = pd.read_csv(out / "submission.csv")
    tokens = sub["PredictionString"].str.split().explode().to_numpy()
    assert int(max(tokens[::6].astype(int))) == 22  # "No finding" is 22 in every row
    capsys.readouterr()
    assert (
        cli(
            [
                "score",
                "--labels",
                str(release / "annotations" / "annotations_test.csv"),
                "--submission",
                str(out / "submission.csv"),
                "--froc",
                "--bootstrap",
                "50",
            ]
        )
        == 0
    )
    said = capsys.readouterr().out
    assert "(local22)" in said and "22 No finding" in said
    assert (
        cli(
            [
                "score",
                "--labels",
                str(release / "annotations" / "image_labels_test.csv"),
                "--diagnoses",
                str(out / "diagnoses.csv"),
                "--json",
                "--bootstrap",
                "50",
            ]
        )
        == 0
    )
    diagnoses = json.loads(capsys.readouterr().out)
    assert diagnoses["images"] == 6 and list(diagnoses["per_diagnosis"]) == list(GLOBAL6)

    eda = tmp_path / "eda"
    cli(
        [
            "eda",
            "--labels",
            str(release / "annotations" / "annotations_train.csv"),
            "--meta",
            str(release / "prepared" / str(TINY) / "train_meta.csv"),
            "--global-labels",
            str(release / "annotations" / "image_labels_train.csv"),
            "--out",
            str(eda),
        ]
    )
    summary = json.loads((eda / "summary.json").read_text())
    assert set(summary["class_counts"]) <= set(LOCAL22.names)
    assert len(summary["cooccurrence"]) == 23  # every class of local22, No finding included
    assert list(summary["diagnoses"]["images"]) == list(GLOBAL6)
