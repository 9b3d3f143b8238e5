"""train.py → checkpoint → predict.py → submission → score, as a user runs them."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import (
    in_process,
    run_fails,
    run_ok,
    tiny_datamodule,
    tiny_overrides,
    train_in_process,
)

from cxrdet.data.labels import CLASS_NAMES
from cxrdet.evaluation.score import main as score_main
from cxrdet.evaluation.scoring import score
from cxrdet.evaluation.submission import (
    SubmissionError,
    format_prediction,
    parse_prediction,
    read_submission,
)
from cxrdet.inference.config import NofindingConfig, PredictConfig

pytestmark = pytest.mark.slow


def test_fast_devrun_ok(tiny_data, tmp_path, capfd, recwarn):
    log = train_in_process(
        [*tiny_overrides(tiny_data, tmp_path / "run"), "+trainer.fast_dev_run=true"]
    )
    assert "max_steps=1" in log
    assert "precision: 32-true (trainer.precision=auto on cpu)" in log  # auto, resolved and said
    # The run's output is the user's business only: no advertisement, no layer table with its
    # "Total FLOPs: 0" (the model in one line instead), no library deprecation warning.
    assert "litlogger" not in log
    assert "model: BatchedFasterRCNN, 41.4 M parameters (41.4 M trainable), 166 MB" in log
    out = capfd.readouterr()
    assert "FLOPs" not in out.out + out.err
    assert not [str(w.message) for w in recwarn if "LeafSpec" in str(w.message)]
    assert (tmp_path / "run" / ".hydra" / "config.yaml").is_file()


def test_all_train_without_logger_still_checkpoints(tiny_data, tmp_path):
    run = tmp_path / "run"
    overrides = [*tiny_overrides(tiny_data, run), "data.split=all_train", "logger=none"]
    train_in_process([*overrides, "trainer.max_steps=1"])
    assert (run / "checkpoints" / "last.ckpt").is_file()
    assert not (run / "csv").exists()


def test_bf16_mixed_training_runs_on_cpu(tiny_data, tmp_path):
    """The backbone's activations are bfloat16 in the training steps (a forward hook) and the
    steps moved the weights; fails if the precision is only echoed in the config."""
    import json

    run, probe = tmp_path / "run", tmp_path / "probe.json"
    overrides = [*tiny_overrides(tiny_data, run), "trainer.precision=bf16-mixed"]
    train_in_process(
        [
            *overrides,
            "trainer.max_steps=2",
            "trainer.val_check_interval=2",
            "+callbacks.probe._target_=dtype_probe.DtypeProbe",
            f"+callbacks.probe.out={probe}",
        ]
    )
    seen = json.loads(probe.read_text())
    assert seen == {"dtypes": ["torch.bfloat16"], "moved": True}
    metrics = pd.read_csv(run / "csv" / "metrics.csv")
    assert np.isfinite(metrics["val/loss"].dropna()).all() and len(metrics["val/loss"].dropna())


def test_bad_labels_path_fails_before_training_with_the_file_named(tiny_data, tmp_path):
    overrides = [*tiny_overrides(tiny_data, tmp_path / "run"), "data.labels_csv=/nowhere/train.csv"]
    assert "/nowhere/train.csv" in run_fails(["train.py", *overrides]).stderr


@pytest.fixture(scope="module")
def trained(tiny_data, module_tmp):
    run = module_tmp / "run"
    train_in_process(
        [
            *tiny_overrides(tiny_data, run),
            "data.split=kfold",  # 8 validation images, normal ones among them
            "data.n_folds=2",
            "data.fold=1",
            "data.val_fusion=wbf",  # validation against the readers fused, as the demo's
            "trainer.max_steps=2",
            "trainer.val_check_interval=2",
            "scheduler.warmup_steps=1",
            "trainer.log_every_n_steps=1",
        ]
    )
    return run


def test_training_writes_checkpoints_and_metrics(trained):
    ckpts = sorted(p.name for p in (trained / "checkpoints").glob("*.ckpt"))
    assert "last.ckpt" in ckpts and any(n.startswith("best-") for n in ckpts)
    for name in ckpts:  # tensors and plain values only: no code runs to read them
        torch.load(trained / "checkpoints" / name, map_location="cpu", weights_only=True)
    metrics = pd.read_csv(trained / "csv" / "metrics.csv")
    for column in ("train/loss", "val/loss", "val/AP40", "val/mAP40"):
        assert metrics[column].notna().any(), column
    assert metrics["val/AP40"].dropna().between(0, 1).all()
    # Random init: the LR of the weights and of the BatchNorm parameters (no weight decay).
    assert metrics["lr-SGD/pg1"].notna().any() and metrics["lr-SGD/pg2"].notna().any()


def test_predict_writes_a_valid_submission(tiny_data, trained, tmp_path):
    out = tmp_path / "submission.csv"
    in_process(
        "predict.py",
        [
            f"ckpt_path={trained / 'checkpoints' / 'last.ckpt'}",
            f"prepared_size={tiny_data['size']}",
            f"paths.prepared_dir={tiny_data['prepared']}",
            f"output={out}",
            "num_workers=0",
            "score_thresh=0.0",
            f"hydra.run.dir={tmp_path / 'predict'}",
        ],
    )
    meta = pd.read_csv(tiny_data["prepared"] / "64" / "test_meta.csv", dtype={"image_id": str})
    sub = pd.read_csv(out, dtype=str)
    assert list(sub.columns) == ["image_id", "PredictionString"]
    assert sorted(sub.image_id) == sorted(meta.image_id)  # every test image exactly once
    parsed = read_submission(out, image_ids=meta.image_id)
    for row in meta.itertuples():
        boxes, scores, classes = parsed[row.image_id]
        assert len(scores) <= 101 and ((scores >= 0) & (scores <= 1)).all()  # 100 + class 14
        assert (classes == 14).sum() == 1  # the detector-scored "No finding" line
        assert (boxes[:, [0, 2]] <= row.dim1).all() and (boxes[:, [1, 3]] <= row.dim0).all()
        assert (boxes >= 0).all() and ((classes >= 0) & (classes <= 14)).all()
    summary = json.loads((tmp_path / "predict.json").read_text())
    assert summary["images"] == len(meta) and summary["images_per_s"] > 0
    assert summary["precision"] == "32-true"  # precision=auto on the CPU

    code = score_main(
        ["--labels", str(tiny_data["raw"] / "test_labels.csv"), "--submission", str(out), "--json"]
    )
    assert code == 0


def test_predict_without_a_checkpoint_says_what_to_pass(tiny_data, tmp_path):
    args = [
        "predict.py",
        f"paths.prepared_dir={tiny_data['prepared']}",
        f"hydra.run.dir={tmp_path}",
    ]
    stderr = run_fails(args).stderr.strip()
    assert stderr.startswith("error: pass the checkpoint") and "ckpt_path=" in stderr


def test_predict_missing_checkpoint_is_a_clear_error(tiny_data, tmp_path):
    done = run_fails(
        [
            "predict.py",
            f"ckpt_path={tmp_path / 'nope.ckpt'}",
            f"paths.prepared_dir={tiny_data['prepared']}",
            "prepared_size=64",
            f"hydra.run.dir={tmp_path}",
        ]
    )
    assert "nope.ckpt" in done.stderr


def test_prediction_string_round_trip_and_empty_image():
    boxes = np.array([[10.0, 20, 30, 40], [1, 2, 3, 4]])
    text = format_prediction(boxes, np.array([0.2, 0.9]), np.array([3, 0]))
    assert text.startswith("0 0.9000 1.0 2.0 3.0 4.0")
    b, s, c = parse_prediction(text)
    np.testing.assert_allclose(b, boxes[::-1])
    np.testing.assert_allclose(s, [0.9, 0.2])
    assert c.tolist() == [0, 3] and c.dtype.kind == "i"
    assert format_prediction(np.zeros((0, 4)), np.zeros(0), np.zeros(0)) == "14 1 0 0 1 1"
    b, s, c = parse_prediction("14 1 0 0 1 1")  # the empty image reads back as "No finding"
    assert c.tolist() == [14] and s.tolist() == [1.0] and b.tolist() == [[0, 0, 1, 1]]


@pytest.mark.parametrize(
    ("row", "reason"),
    [
        ("a,0 0.5 1 2 3", "tokens"),
        ("a,15 0.5 1 2 3 4", "class 15"),
        ("a,3 1.5 1 2 3 4", "score 1.5"),
        ("a,3 0.5 5 2 3 4", "x_min >= x_max"),
        ("zzz,14 1 0 0 1 1", "unknown image_id"),
    ],
)
def test_malformed_submission_rejected_with_row_and_reason(tmp_path, row, reason):
    path = tmp_path / "s.csv"
    path.write_text(f"image_id,PredictionString\nb,14 1 0 0 1 1\n{row}\n")
    with pytest.raises(SubmissionError, match=reason):
        read_submission(path, image_ids=["a", "b"])


def _predict(trained, tiny_data, out, **kw):
    from cxrdet.inference.predictor import predict

    args = {
        "ckpt_path": str(trained / "checkpoints" / "last.ckpt"),
        "output": str(out),
        "image_dir": str(tiny_data["prepared"] / "64" / "test"),
        "meta_csv": str(tiny_data["prepared"] / "64" / "test_meta.csv"),
        "device": "cpu",
        "progress": False,
    }
    predict(PredictConfig(**{**args, **kw}))
    return read_submission(out)


def _same(a: dict, b: dict, atol=1e-3):
    assert a.keys() == b.keys()
    for k in a:
        for x, y in zip(a[k], b[k]):
            np.testing.assert_allclose(x, y, atol=atol)


def test_dicom_folder_and_png_folder_predictions_agree(tiny_data, trained, tmp_path):
    """The on-the-fly DICOM conversion gives prepare's PNG pixels (within one grey level: the
    PNG is the same uint8 array), so the same predictions."""
    from cxrdet.data.dataset import DicomDataset, ImageDataset

    prepared = tiny_data["prepared"] / "64"
    pngs = ImageDataset(prepared / "test", prepared / "test_meta.csv")
    dicoms = DicomDataset(tiny_data["raw"] / "test", size=64)
    for image, info in (dicoms[i] for i in range(len(dicoms))):
        png = pngs[pngs.ids.index(info["image_id"])][0]
        assert (image.int() - png.int()).abs().max() <= 1, info["image_id"]
    png = _predict(trained, tiny_data, tmp_path / "png.csv")
    dicom = _predict(
        trained, tiny_data, tmp_path / "dicom.csv", dicom_dir=str(tiny_data["raw"] / "test")
    )
    _same(png, dicom, atol=0.05)  # boxes are printed to 0.1 px


def test_an_ensemble_fuses_every_member_with_its_weight(tiny_data, trained, tmp_path):
    ckpt = str(trained / "checkpoints" / "last.ckpt")
    single = _predict(trained, tiny_data, tmp_path / "one.csv")
    listed = _predict(trained, tiny_data, tmp_path / "list.csv", ckpt_path=[ckpt])
    _same(single, listed, atol=0)
    state = torch.load(ckpt, map_location="cpu", weights_only=True)
    head = "model.roi_heads.box_predictor.bbox_pred.bias"
    state["state_dict"][head] = state["state_dict"][head] + 0.5  # another model: boxes shifted
    other = tmp_path / "other.ckpt"
    torch.save(state, other)
    alone = _predict(trained, tiny_data, tmp_path / "other.csv", ckpt_path=str(other))
    first, second = (
        _predict(trained, tiny_data, tmp_path / f"{w}.csv", ckpt_path=[ckpt, str(other)],
                 ensemble_weights=w)
        for w in ([3.0, 1.0], [1.0, 3.0])
    )  # fmt: skip
    top = lambda sub: np.array([b[np.argmax(np.where(c < 14, s, -1))] for b, s, c in sub.values()])  # noqa: E731
    # Each ensemble's top box lies between the members' and nearer the heavier member's.
    for fused, near, far in ((first, single, alone), (second, alone, single)):
        to_near = np.abs(top(fused) - top(near)).mean()
        assert to_near < np.abs(top(fused) - top(far)).mean()
        assert to_near > 0  # the other member counted


def test_ensemble_weights_follow_weighted_boxes_fusion(tmp_path):
    from cxrdet.inference.prediction_pass import PassOptions, predict_dataset

    class OneBox(torch.nn.Module):
        def __init__(self, box, score):
            super().__init__()
            self.box, self.score = box, score

        def forward(self, images):
            one = {"boxes": torch.tensor([self.box]), "scores": torch.tensor([self.score])}
            return [{**one, "labels": torch.tensor([5])} for _ in images]

    import cv2

    from cxrdet.data.dataset import ImageDataset

    (tmp_path / "img").mkdir()
    cv2.imwrite(str(tmp_path / "img" / "a.png"), np.zeros((64, 64), np.uint8))
    pd.DataFrame({"image_id": ["a"], "dim0": [64], "dim1": [64]}).to_csv(tmp_path / "m.csv")
    dataset = ImageDataset(tmp_path / "img", tmp_path / "m.csv")
    members = [OneBox([10.0, 10, 30, 30], 0.8), OneBox([14.0, 10, 34, 30], 0.4)]
    results, _, _ = predict_dataset(
        members, dataset, "cpu", PassOptions(weights=[2.0, 1.0], progress=False)
    )
    boxes, scores, classes = results["a"]
    # WBF: coordinates weighted by score x weight (1.6 and 0.4): x0 = (1.6*10 + 0.4*14) / 2;
    # score: the mean of score x weight over the two, times 2 boxes / 3 of total weight.
    np.testing.assert_allclose(boxes, [[10.8, 10, 30.8, 30]], atol=1e-4)
    np.testing.assert_allclose(scores, [(1.6 + 0.4) / 2 * 2 / 3], atol=1e-6)
    assert classes.tolist() == [4]


def test_bf16_prediction_on_cpu_is_close_to_fp32_and_a_bad_precision_is_named(
    tiny_data, trained, tmp_path
):
    """Most bf16 detections are an fp32 one (the same class, every coordinate within a pixel
    of the 64-px image: 1.5 px of the 64-96-px originals, + 0.1 for the CSV's rounding), and
    those score within 0.02 of it (the prediction layers run in float32). A barely trained
    model's near-tied scores let bf16's rounding change which boxes survive NMS, hence "most".
    Seen failing when predict_dataset ignored the precision (fp32 twice). On these flat scores
    bf16's effect hides below the CSV's 4 decimals: the prediction layers' float32 is shown
    exactly in tests/models/test_fp32_boxes.py."""
    fp32 = _predict(trained, tiny_data, tmp_path / "fp32.csv")
    bf16 = _predict(trained, tiny_data, tmp_path / "bf16.csv", precision="bf16-mixed")
    assert fp32.keys() == bf16.keys()
    matched = total = 0
    for i in fp32:
        (fb, fs, fc), (bb, bs, bc) = fp32[i], bf16[i]
        finding = (bc < 14) & (bs > 0.05)
        total += int(finding.sum())
        for box, s, c in zip(bb[finding], bs[finding], bc[finding]):
            same = np.flatnonzero((fc == c) & (np.abs(fb - box).max(axis=1) <= 1.6))
            if len(same):
                matched += 1
                assert np.abs(fs[same] - s).min() <= 0.02, (i, s, fs[same])
    assert total > 20 and matched >= 0.5 * total, (matched, total)
    assert any(
        len(fp32[i][1]) != len(bf16[i][1]) or not np.array_equal(fp32[i][1], bf16[i][1])
        for i in fp32
    )  # the forward pass really ran in bfloat16
    with pytest.raises(ValueError, match="unknown precision 'fp8'"):
        _predict(trained, tiny_data, tmp_path / "bad.csv", precision="fp8")


class BlobDetector(torch.nn.Module):
    """A stand-in detector that boxes bright blobs (its boxes are flip-equivariant; its scores
    go by the blobs' order from the left, so a flipped view scores them differently)."""

    def forward(self, images):
        import cv2

        out = []
        for image in images:
            mask = (image[0].numpy() > 127).astype(np.uint8)  # the loader's uint8 pixels
            n, _, stats, _ = cv2.connectedComponentsWithStats(mask)
            x, y, w, h = (stats[1:, k].astype(np.float32) for k in range(4))
            boxes = np.stack([x, y, x + w, y + h], axis=1)
            scores = np.linspace(0.9, 0.5, n - 1).astype(np.float32)[np.argsort(x)]
            out.append(
                {
                    "boxes": torch.from_numpy(boxes),
                    "scores": torch.from_numpy(scores),
                    "labels": torch.full((n - 1,), 4),
                }
            )
        return out


def test_hflip_tta_fuses_each_box_with_its_flipped_view_s_mirror(trained, tmp_path):
    import cv2

    from cxrdet.data.dataset import ImageDataset
    from cxrdet.inference.prediction_pass import PassOptions, predict_dataset
    from cxrdet.models.module import load_detector

    image = np.zeros((64, 64), np.uint8)  # no two blobs mirror each other
    cv2.circle(image, (12, 20), 5, 255, -1)
    cv2.circle(image, (44, 14), 3, 255, -1)
    cv2.rectangle(image, (30, 40), (45, 50), 255, -1)
    (tmp_path / "img").mkdir()
    cv2.imwrite(str(tmp_path / "img" / "s.png"), image)
    meta = pd.DataFrame({"image_id": ["s"], "dim0": [640], "dim1": [640]})
    meta.to_csv(tmp_path / "m.csv", index=False)
    dataset = ImageDataset(tmp_path / "img", tmp_path / "m.csv")
    plain, _, _ = predict_dataset([BlobDetector()], dataset, "cpu", PassOptions(progress=False))
    results, _, _ = predict_dataset(
        [BlobDetector()], dataset, "cpu", PassOptions(tta="hflip", progress=False)
    )
    # The flipped view's boxes, flipped back, land on the plain ones; its scores differ (the
    # stand-in scores blobs by their order from the left), so each fused score is the mean.
    tensor = dataset[0][0]
    flipped = BlobDetector()([tensor.flip(-1)])[0]
    back = {
        tuple(np.round([64 - b[2], b[1], 64 - b[0], b[3]], 3)): float(s)
        for b, s in zip(flipped["boxes"].numpy(), flipped["scores"].numpy())
    }
    boxes, scores, classes = results["s"]
    order = np.lexsort(boxes.T[::-1])
    plain_boxes, plain_scores, _ = plain["s"]
    plain_order = np.lexsort(plain_boxes.T[::-1])
    np.testing.assert_allclose(boxes[order], plain_boxes[plain_order], atol=1e-3)
    expected = [
        (s + back[tuple(np.round(b / 10, 3))]) / 2
        for b, s in zip(plain_boxes[plain_order], plain_scores[plain_order])
    ]
    np.testing.assert_allclose(scores[order], expected, atol=1e-6)
    assert not np.allclose(scores[order], plain_scores[plain_order])  # the views did differ
    assert classes.tolist() == [3, 3, 3]
    # The real detector goes through the same TTA path.
    model = load_detector(str(trained / "checkpoints" / "last.ckpt")).model.eval()
    results, _, _ = predict_dataset(
        [model], dataset, "cpu", PassOptions(tta="hflip", progress=False)
    )
    assert results["s"][0].shape[1] == 4 and len(results["s"][0]) <= 100


def test_nofinding_classifier_filter_regimes(tiny_data, trained, tmp_path):
    meta = pd.read_csv(tiny_data["prepared"] / "64" / "test_meta.csv", dtype={"image_id": str})
    ids = list(meta.image_id)
    probs = tmp_path / "probs.csv"
    p = [0.01, 0.5, 0.99, 0.5][: len(ids)]
    pd.DataFrame({"image_id": ids, "p_abnormal": p}).to_csv(probs, index=False)
    plain = _predict(trained, tiny_data, tmp_path / "plain.csv", nofinding_line=False)
    sub = _predict(
        trained, tiny_data, tmp_path / "f.csv", nofinding=NofindingConfig(probs=str(probs))
    )
    low, mid, high = ids[0], ids[1], ids[2]
    assert list(sub[low][2]) == [14] and list(sub[low][1]) == [1.0]
    # Between the thresholds: the detector's boxes unchanged, and one "14 0.5 0 0 1 1" added.
    line = sub[mid][2] == 14
    assert line.sum() == 1 and sub[mid][1][line].tolist() == [0.5]
    assert sub[mid][0][line].tolist() == [[0.0, 0.0, 1.0, 1.0]]
    _same({mid: tuple(a[~line] for a in sub[mid])}, {mid: plain[mid]}, atol=0)
    _same({high: sub[high]}, {high: plain[high]}, atol=0)
    pd.DataFrame({"image_id": ids[:1], "p_abnormal": [0.5]}).to_csv(probs, index=False)
    with pytest.raises(ValueError, match="no p_abnormal"):
        _predict(
            trained, tiny_data, tmp_path / "x.csv", nofinding=NofindingConfig(probs=str(probs))
        )


def test_viz_and_unreadable_dicom_in_a_dicom_folder(tiny_data, trained, tmp_path):
    import shutil

    src = tmp_path / "dicoms"
    shutil.copytree(tiny_data["raw"] / "test", src)
    (src / "broken.dicom").write_bytes(b"not a dicom")
    sub = _predict(trained, tiny_data, tmp_path / "out" / "s.csv", dicom_dir=str(src), viz=2)
    assert list(sub["broken"][2]) == [14] and len(sub) == 5
    assert len(list((tmp_path / "out" / "viz").glob("*.png"))) == 2


@pytest.fixture(scope="module")
def report_page(trained):
    from cxrdet.reports.report import main as report_main

    assert report_main([str(trained), "--images", "2", "--ckpt", "last"]) == 0
    return trained / "report" / "index.html"


def test_report_writes_every_figure_and_one_self_contained_page(trained, report_page):
    import re

    from cxrdet.data.labels import read_labels

    figures = ("fig10_loss", "fig11_ap", "per_class_ap", "pr_curves", "fig12_validation_images")
    for name in (*figures, "froc"):
        assert (trained / "report" / f"{name}.png").stat().st_size > 5000, name
    page = report_page.read_text()
    for section in (
        "<h2>Run</h2>",
        "<h2>Per class</h2>",
        "<h2>The model beside the radiologists</h2>",
        "<h3>The readers at their operating points</h3>",
        "<h2>FROC</h2>",
        "<h2>Where the errors are</h2>",
        "<h2>Gallery</h2>",
        "<h2>Validation images</h2>",
    ):
        assert section in page, section
    assert "nothing to compare with" not in page  # three readers per tiny training image
    sources = re.findall(r"src='([^']*)'", page)
    assert len(sources) >= 7 and all(s.startswith("data:image/png;base64,") for s in sources)
    assert "<figcaption>" in page  # the gallery has errors to show: a 2-step model has many
    # No image id (nor a path holding one) reaches the page.
    labels, _ = read_labels(tiny_data_root(trained) / "raw" / "train.csv")
    assert not [i for i in labels.image_id.unique() if i in page]
    assert str(trained) not in page


def test_report_page_shows_one_checkpoint_everywhere(trained, report_page):
    """The settings, the per-class table and fig 11's marker all name the checkpoint the page
    evaluated (``--ckpt last``: after 2 steps), and the headline figures are its own."""
    import re

    from cxrdet.reports.curves import APS, curve_points

    page = report_page.read_text()
    assert "<h1>cxrdet run train/run</h1>" in page
    row = dict(re.findall(r"<tr><td>([^<]*)</td><td>([^<]*)</td></tr>", page))
    assert row["checkpoint"] == "last.ckpt (step 2)"
    table = re.search(
        r"mAP40 ([0-9.]+)(?: \[[0-9.]+, [0-9.]+\]| \([^)]*\)) \(the competition's; [^)]*\) "
        r"and AP40 ([0-9.]+)",
        page,
    )  # with its bootstrap interval
    assert (row["checkpoint mAP40"], row["checkpoint AP40"]) == table.groups()
    assert "of last.ckpt (step 2) on 8 validation images" in page
    # The same figures for scripts and the demo's summary, named by the same checkpoint.
    figures = json.loads((trained / "report" / "figures.json").read_text())
    assert figures["checkpoint"] == "last.ckpt (step 2)" and figures["images"] == 8
    assert (
        f"{figures['mAP40']:.3f}" == row["checkpoint mAP40"]
        and figures["mAP40_ci"]["min_boxes"] == 5
    )
    assert len(figures["operating_points"]) >= 2  # three readers per tiny training image
    metrics = pd.read_csv(trained / "csv" / "metrics.csv")
    assert curve_points(metrics, APS)["AP40"][0] == [2]  # validated where the checkpoint is


def tiny_data_root(run: Path) -> Path:
    """The tiny dataset a run trained on (its config's raw folder's parent)."""
    from omegaconf import OmegaConf

    return Path(OmegaConf.load(run / ".hydra" / "config.yaml").paths.raw_dir).parent


CHROMIUM = next(
    (shutil.which(n) for n in ("chromium", "chromium-browser", "google-chrome") if shutil.which(n)),
    None,
)


def test_report_page_renders_in_a_headless_browser(report_page, tmp_path):
    """The page loads without a console message, and its screenshot shows the tables (their
    grey header cells) and the gallery (its blue panel holding the X-ray images). Without
    Chromium it is skipped, and fails in CI (.ci/run installs Debian's chromium)."""
    import cv2
    from conftest import cannot_run

    if CHROMIUM is None:
        cannot_run("no Chromium: the report's browser test needs it (apt install chromium)")
    probe = subprocess.run(
        [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--dump-dom", "about:blank"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    if probe.returncode != 0:  # installed but unable to start here (a snap stub, no sandbox)
        cannot_run(f"{CHROMIUM} does not start headless: {probe.stderr.strip()[-300:]}")
    shot = tmp_path / "page.png"
    done = subprocess.run(
        [
            CHROMIUM,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--hide-scrollbars",
            "--enable-logging=stderr",
            "--v=0",
            f"--screenshot={shot}",
            "--window-size=1200,12000",
            report_page.as_uri(),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    console = [line for line in done.stderr.splitlines() if ":CONSOLE" in line]
    assert shot.is_file() and not console, done.stderr[-2000:]
    image = cv2.imread(str(shot))[..., ::-1]  # RGB
    header = np.all(image == (240, 240, 240), axis=-1)
    assert header.sum() > 2000  # the header rows of the tables
    panel = np.all(image == (238, 244, 251), axis=-1)
    rows, cols = np.nonzero(panel)
    assert len(rows) > 10000, "no gallery panel in the screenshot"
    inside = image[rows.min() : rows.max(), cols.min() : cols.max()]
    dark = np.all(inside < 60, axis=-1).mean()
    assert dark > 0.05, f"the gallery shows no images ({dark:.1%} dark pixels)"


def test_figures_reach_only_loggers_that_take_images(tmp_path):
    from cxrdet.reports.report import upload_figures

    class ImageLogger:
        def __init__(self):
            self.keys = []

        def log_image(self, key, images):
            self.keys.append(key)

    paths = [tmp_path / "fig10_loss.png", tmp_path / "fig12_validation_images.png"]
    paths.append(tmp_path / "index.html")  # the page is not an image: it stays on disk
    wandb_like, csv_like = ImageLogger(), object()
    assert upload_figures([wandb_like, csv_like], paths) == 2
    assert wandb_like.keys == ["report/fig10_loss", "report/fig12_validation_images"]


def test_nonfinite_loss_stops_with_step_and_losses_and_keeps_checkpoints(tiny_data, tmp_path):
    run = tmp_path / "run"
    overrides = [
        *tiny_overrides(tiny_data, run),
        "optim.lr=1e12",
        "~scheduler",
        "trainer.max_steps=8",
        "trainer.val_check_interval=1",
        "augment=none",
    ]
    with pytest.raises(SystemExit) as stopped:
        train_in_process(overrides)
    message = str(stopped.value.code)
    assert message.startswith("error: non-finite loss at step") and "loss_classifier=" in message
    assert "images " in message and "Lower optim.lr" in message
    assert (run / "checkpoints" / "last.ckpt").is_file()  # written before the blow-up


@pytest.mark.parametrize("fused", [True, False], ids=["fused-sgd", "plain-sgd"])
def test_a_skipped_nonfinite_step_moves_no_weight_and_no_batchnorm_statistic(
    tiny_data, tmp_path, fused
):
    """A fused optimiser skips the step on the device (the flag handed to it as ``found_inf``),
    a plain one by the host reading the flag; either way nothing moves. Fails if the flag is
    not set, not agreed, or not read before the update."""
    import pytorch_lightning as pl

    from cxrdet.models.module import DetectorModule

    torch.manual_seed(0)
    module = DetectorModule(
        model={"num_classes": 14, "image_size": 64, "roi_batch_size_per_image": 16},
        optim={
            "_target_": "torch.optim.SGD",
            "_partial_": True,
            "lr": 0.01,
            "momentum": 0.9,  # a real step with zero gradients would still move the weights
            "weight_decay": 1e-4,
            "fused": fused,
        },
        on_nonfinite="skip",
    )
    real = module.model.forward

    def nan_at_step_1(images, targets=None):
        out = real(images, targets)
        if module.training and module.global_step == 1:
            out = {k: v * float("nan") for k, v in out.items()}
        return out

    module.model.forward = nan_at_step_1
    weights = []

    class AfterEachStep(pl.Callback):
        def on_train_batch_end(self, trainer, pl_module, *args):
            weights.append({k: v.clone() for k, v in pl_module.state_dict().items()})

    data = tiny_datamodule(tiny_data, empty_images="keep")
    trainer = pl.Trainer(
        accelerator="cpu",
        max_steps=3,
        limit_val_batches=0,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        callbacks=[AfterEachStep()],
        default_root_dir=tmp_path,
    )
    trainer.fit(module, datamodule=data)
    assert trainer.global_step == 3 and len(weights) == 3
    changed = lambda a, b: [k for k in a if not torch.equal(a[k], b[k])]  # noqa: E731
    assert changed(weights[0], weights[1]) == []  # step 1 skipped: nothing moved
    assert changed(weights[1], weights[2])  # step 2 trained again
    module.nonfinite.mode = "stop"
    module.model.forward = real
    images = (torch.zeros((1, 64, 64), dtype=torch.uint8),)
    targets = (
        {"boxes": torch.tensor([[4.0, 4, 30, float("nan")]]), "labels": torch.tensor([2]),
         "image_id": "x"},
    )  # fmt: skip
    losses = module.model(list(images), list(targets))  # training_step without Lightning's log
    module.nonfinite.record(sum(losses.values()), losses, ["x"])
    sum(losses.values()).backward()
    module.on_before_optimizer_step(trainer.optimizers[0])
    with pytest.raises(FloatingPointError, match=r"non-finite loss at step 3 \(loss_.*images x"):
        module.nonfinite.review()


def test_wandb_logger_runs_offline_without_a_key(tiny_data, tmp_path):
    import os

    env = {k: v for k, v in os.environ.items() if not k.startswith("WANDB_")}
    env.update(NETRC=str(tmp_path / "no_netrc"), HOME=str(tmp_path))
    run = tmp_path / "run"
    overrides = [
        *tiny_overrides(tiny_data, run),
        "logger=[csv,wandb]",
        "logger.wandb.group=group-under-test",
        "logger.wandb.log_images=true",
        "trainer.max_steps=1",
        "trainer.val_check_interval=1",
    ]
    done = run_ok(["train.py", *overrides], timeout=300, env=env)
    assert "logging offline" in done.stdout + done.stderr
    (offline,) = (run / "wandb").glob("offline-run-*")
    record = next(offline.glob("run-*.wandb")).read_bytes()
    # The run carries the resolved config, the git commit, the job number and the group.
    for key in (b"git_commit", b"hydra_job_num", b"roi_batch_size_per_image", b"group-under-test"):
        assert key in record, key
    # log_images=true: the report is written and its figures (fig 12 included) reach W&B.
    assert (run / "report" / "fig12_validation_images.png").is_file()
    sent = [p.name for p in (offline / "files" / "media" / "images" / "report").glob("*.png")]
    assert any(n.startswith("fig12_validation_images") for n in sent)
    assert any(n.startswith("fig10_loss") for n in sent)
    # Each validation logs val/boxes: a Table of the same images with W&B box overlays. Its
    # cells (images, box groups) are staged under the W&B data dir for `wandb sync`.
    assert len(list((offline / "files" / "media" / "table" / "val").glob("boxes_*.json"))) == 1
    staged = []
    for path in (tmp_path / ".local" / "share" / "wandb" / "artifacts" / "staging").iterdir():
        try:
            table = json.loads(path.read_text())
        except (UnicodeDecodeError, json.JSONDecodeError):
            continue  # the images themselves
        if table.get("_type") == "table" and table.get("columns") == ["image_id", "image"]:
            staged.append(table)
    assert staged and all(t["data"] == staged[0]["data"] for t in staged)  # W&B stages copies
    images = [image for _, image in staged[0]["data"]]
    assert len(images) == 3  # every validation image of the tiny split (n_images: 16)
    groups = {
        name: box for image in images for name, boxes in image["boxes"].items() for box in boxes
    }
    assert set(groups) == {"ground_truth", "predictions"}
    assert 0 <= groups["predictions"]["scores"]["score"] <= 1
    class_name = groups["ground_truth"]["box_caption"].split(" [")[0]
    assert class_name in CLASS_NAMES[:14]  # captions: class name, then original-pixel box


def test_wandb_images_without_the_csv_logger_warn_instead_of_failing(tiny_data, tmp_path):
    run = tmp_path / "run"
    overrides = [
        *tiny_overrides(tiny_data, run),
        "logger=wandb",
        "logger.wandb.log_images=true",
        "trainer.max_steps=1",
        "trainer.val_check_interval=1",
    ]
    out = train_in_process(overrides)
    assert "no report" in out and "logger=[csv,wandb]" in out
    assert (run / "checkpoints" / "last.ckpt").is_file()


class PaddingDetector(torch.nn.Module):
    """A stand-in detector with one box wholly in the letterbox padding, one half in it and one
    inside the content, for every image."""

    def __init__(self, contents: list):
        super().__init__()
        self.contents = contents

    def forward(self, images):
        out = []
        for _ in images:
            x0, y0, w, h = self.contents.pop(0)
            if x0 >= 2:  # padding left and right
                boxes = [[0, 10, x0 - 1, 30], [x0 - 4, 10, x0 + 6, 30], [x0 + 2, 5, x0 + 9, 20]]
            elif y0 >= 2:  # padding above and below
                boxes = [[10, 0, 30, y0 - 1], [10, y0 - 4, 30, y0 + 6], [5, y0 + 2, 20, y0 + 9]]
            else:  # (almost) square: no padding to predict in
                boxes = [[0, 0, 0, 0], [0, 5, 20, 20], [25, 25, 40, 40]]
            out.append(
                {
                    "boxes": torch.tensor(boxes, dtype=torch.float32),
                    "scores": torch.tensor([0.9, 0.8, 0.7]),
                    "labels": torch.tensor([3, 4, 5]),
                }
            )
        return out


def test_letterbox_predictions_in_the_padding_are_dropped_not_fatal(
    tiny_data, tmp_path, monkeypatch
):
    from cxrdet.data.meta import content_of, read_meta
    from cxrdet.data.prepare import prepare
    from cxrdet.inference import predictor

    prepare(tiny_data["raw"] / "train", tmp_path, [64], keep_ratio=True, progress=False)
    meta = read_meta(tmp_path / "64" / "train_meta.csv")
    contents = [content_of(meta, i) for i in meta.index]
    assert sum(max(c[0], c[1]) >= 2 for c in contents) >= 2  # letterboxed with padding
    stand_in = PaddingDetector(list(contents))
    monkeypatch.setattr(predictor, "load_models", lambda *a, **k: ([stand_in], 64))
    (tmp_path / "unused.ckpt").write_bytes(b"")  # hashed into the run's settings, not loaded
    summary = predictor.predict(
        PredictConfig(
            ckpt_path=str(tmp_path / "unused.ckpt"),
            output=str(tmp_path / "submission.csv"),
            image_dir=str(tmp_path / "64" / "train"),
            meta_csv=str(tmp_path / "64" / "train_meta.csv"),
            batch_size=1,
            max_detections=100,  # the stand-in has no cap of its own
            nofinding_line=False,
            progress=False,
        )
    )
    sub = read_submission(summary["submission"], image_ids=list(meta.index))
    for image_id, (boxes, _, classes) in sub.items():
        assert classes.tolist() == [3, 4]  # labels 4 and 5 (class + 1): the padding box is gone
        h, w = meta.at[image_id, "dim0"], meta.at[image_id, "dim1"]
        assert (boxes[0, :2] == 0).any()  # the half box is clipped to the content's edge
        assert (boxes[:, 2] <= w).all() and (boxes[:, 3] <= h).all()


def test_a_split_s_validation_images_are_predicted_and_scored_in_two_commands(
    tiny_data, trained, tmp_path
):
    from cxrdet.data.labels import read_labels
    from cxrdet.data.splits import split_ids

    out = tmp_path / "holdout.csv"
    prepared = tiny_data["prepared"] / "64"
    in_process(
        "predict.py",
        [
            f"ckpt_path={trained / 'checkpoints' / 'last.ckpt'}",
            f"image_dir={prepared / 'train'}",
            f"meta_csv={prepared / 'train_meta.csv'}",
            f"paths.raw_dir={tiny_data['raw']}",
            "split.mode=kfold",
            "split.n_folds=2",
            "split.fold=1",
            f"output={out}",
            "num_workers=0",
            f"hydra.run.dir={tmp_path / 'predict'}",
        ],
    )
    labels, _ = read_labels(tiny_data["raw"] / "train.csv")
    _, val = split_ids(labels, "kfold", seed=111, fold=1, n_folds=2)
    assert sorted(pd.read_csv(out, dtype=str).image_id) == sorted(val) and len(val) == 8
    code = score_main(
        [
            "--labels",
            str(tiny_data["raw"] / "train.csv"),
            "--submission",
            str(out),
            "--split",
            "kfold",
            "--n-folds",
            "2",
            "--fold",
            "1",
        ]
    )
    assert code == 0


def test_val_map40_is_the_score_of_the_checkpoint_s_submission(tiny_data, trained, tmp_path):
    """The metric that picks the best checkpoint is the one its submission gets: predict.py's
    default threshold, No-finding line, original pixels and rounding, scored by cxrdet score
    against the readers fused as validation fused them (the fixture validates with
    data.val_fusion=wbf).

    Beyond the two figures, which a barely trained model can match by accident, every row:
    validation's detections of each image (read back from their PredictionString) are the
    submission's row; validation's ground truth is the scorer's; and the submission's boxes
    are the model's own, mapped to original pixels here by hand. Seen failing with the
    read-back rounding removed from validation, with validation's class-14 line made as if
    the head scored "No finding", with validation scoring the unfused readers, and with the
    box mapping's scale swapped (x for y)."""
    import pytorch_lightning as pl

    from cxrdet.data.fusion import fuse_readers
    from cxrdet.data.labels import ground_truth, read_labels
    from cxrdet.data.splits import split_ids
    from cxrdet.inference.predictor import predict
    from cxrdet.models.module import load_detector
    from cxrdet.training.evaluation import CompetitionEvaluation

    out = tmp_path / "val.csv"
    prepared = tiny_data["prepared"] / "64"
    labels_csv = str(tiny_data["raw"] / "train.csv")
    labels, _ = read_labels(labels_csv)
    ids = split_ids(labels, "kfold", fold=1, n_folds=2)[1]  # the fixture's validation images
    config = PredictConfig(
        ckpt_path=str(trained / "checkpoints" / "last.ckpt"),  # the validated weights
        image_dir=str(prepared / "train"),
        meta_csv=str(prepared / "train_meta.csv"),
        output=str(out),
        device="cpu",
        num_workers=0,
        progress=False,
    )
    predict(config, image_ids=ids)
    rows = read_submission(out)
    scored = score(labels_csv, str(out), fusion="wbf", split="kfold", fold=1, n_folds=2)
    logged = pd.read_csv(trained / "csv" / "metrics.csv")
    assert scored["images"] == logged["val/images"].dropna().iloc[-1] == 8 == len(rows)
    assert np.isfinite(scored["AP40"]) and 0 < scored["mAP40"] < 1
    assert logged["val/mAP40"].dropna().iloc[-1] == pytest.approx(scored["mAP40"], abs=1e-6)
    assert logged["val/AP40"].dropna().iloc[-1] == pytest.approx(scored["AP40"], abs=1e-6)
    # Row by row: validation of the same checkpoint, its evaluator's detections and truth.
    module = load_detector(str(trained / "checkpoints" / "last.ckpt"))
    evaluation = CompetitionEvaluation()
    data = tiny_datamodule(tiny_data, split="kfold", n_folds=2, fold=1, val_fusion="wbf")
    pl.Trainer(
        accelerator="cpu", logger=False, enable_progress_bar=False, callbacks=[evaluation]
    ).validate(module, datamodule=data)
    dets, gt = evaluation.evaluator.dets, evaluation.evaluator.gt
    assert sorted(dets) == sorted(rows)
    for image_id, row in rows.items():
        for mine, theirs in zip(dets[image_id], row):
            np.testing.assert_array_equal(mine, theirs)
    truth = ground_truth(fuse_readers(labels[labels.image_id.isin(ids)], "wbf", 0.4), ids)
    for image_id in ids:
        for mine, theirs in zip(gt[image_id], truth[image_id]):
            np.testing.assert_array_equal(mine, theirs)
    # The boxes are the model's, scaled from the 64-px PNG to the original by hand.
    meta = pd.read_csv(prepared / "train_meta.csv", dtype={"image_id": str}).set_index("image_id")
    model = module.model.eval()
    checked = 0
    for image, target in data.val_set:
        with torch.no_grad():
            raw = model([image])[0]
        keep = raw["scores"] >= raw["scores"].max() - 1e-6  # the top box: clear of ties
        box = raw["boxes"][keep][0].numpy().astype(float)
        dim0, dim1 = meta.loc[target["image_id"], ["dim0", "dim1"]]
        expected = box * np.array([dim1 / 64, dim0 / 64] * 2)
        expected = np.clip(expected, 0, [dim1, dim0, dim1, dim0])
        boxes = rows[target["image_id"]][0]
        assert np.abs(boxes - expected).max(axis=1).min() <= 0.05 + 1e-6, target["image_id"]
        checked += 1
    assert checked == 8


class NoFindingDetector(torch.nn.Module):
    """A stand-in detector trained with class 14: a finding and two "No finding" boxes."""

    class14 = True  # as an exported file trained with class 14 records it

    def forward(self, images):
        box = [[20.0, 20, 40, 40], [10, 10, 30, 30], [5, 5, 50, 50]]
        return [
            {
                "boxes": torch.tensor(box),
                "scores": torch.tensor([0.9, 0.5, 0.3]),
                "labels": torch.tensor([15, 4, 15]),
            }
            for _ in images
        ]


def _predict_with_the_class_14_stand_in(tiny_data, tmp_path, monkeypatch, **settings) -> dict:
    from cxrdet.inference import predictor

    monkeypatch.setattr(predictor, "load_models", lambda *a, **k: ([NoFindingDetector()], 64))
    prepared = tiny_data["prepared"] / "64"
    (tmp_path / "unused.ckpt").write_bytes(b"")  # hashed into the run's settings, not loaded
    summary = predictor.predict(
        PredictConfig(
            ckpt_path=str(tmp_path / "unused.ckpt"),
            output=str(tmp_path / "submission.csv"),
            image_dir=str(prepared / "test"),
            meta_csv=str(prepared / "test_meta.csv"),
            max_detections=100,  # the stand-in has no cap of its own
            progress=False,
            **settings,
        )
    )
    return read_submission(summary["submission"])


def test_class_14_predictions_are_written_as_the_competition_reads_them(
    tiny_data, tmp_path, monkeypatch
):
    rows = _predict_with_the_class_14_stand_in(tiny_data, tmp_path, monkeypatch)
    for boxes, scores, classes in rows.values():
        assert classes.tolist() == [14, 3] and scores.tolist() == [0.9, 0.5]  # one 14 line only
        assert boxes[0].tolist() == [0, 0, 1, 1]  # in original pixels, wherever it was drawn


def test_a_detector_with_class_14_and_the_classifier_filter_write_one_line_a_row(
    tiny_data, tmp_path, monkeypatch
):
    from cxrdet.data.probs_csv import write_probs

    prepared = tiny_data["prepared"] / "64"
    ids = list(pd.read_csv(prepared / "test_meta.csv", dtype={"image_id": str}).image_id)
    probs = dict(zip(ids, [0.05, 0.4, 0.99, 0.5]))  # below low, between twice, above high
    write_probs(probs, tmp_path / "probs.csv")
    nofinding = NofindingConfig(probs=str(tmp_path / "probs.csv"))
    rows = _predict_with_the_class_14_stand_in(
        tiny_data, tmp_path, monkeypatch, nofinding=nofinding
    )
    for image_id, (_, scores, classes) in rows.items():
        assert (classes == 14).sum() == 1, image_id  # one line, one source
        line = scores[classes == 14][0]
        p = probs[image_id]
        expected = 1.0 if p < 0.08 else (1 - p if p < 0.95 else 0.9)  # the head's own above
        assert line == pytest.approx(expected, abs=1e-4), (image_id, p)


def test_prediction_reads_images_in_worker_processes_by_default(tiny_data, tmp_path, monkeypatch):
    """num_workers=auto (the default): the loader gets the CPUs this process may use, so that
    reading PNGs overlaps the model (on an H200, predict.py ran at 0.6x the bare model loop with
    images read in its own process); a bad value is named before any model loads."""
    from cxrdet.data import cpus
    from cxrdet.inference import prediction_pass, predictor

    loader, workers = prediction_pass.prediction_loader, []
    monkeypatch.setattr(cpus, "usable_cpus", lambda: 3)

    def spy(dataset, batch_size, num_workers, device, batches=None):
        workers.append(num_workers)
        return loader(dataset, batch_size, 0, device, batches)

    monkeypatch.setattr(prediction_pass, "prediction_loader", spy)
    assert len(_predict_with_the_class_14_stand_in(tiny_data, tmp_path, monkeypatch)) == 4
    assert workers == [3]
    monkeypatch.setattr(predictor, "load_models", lambda *a, **k: pytest.fail("models loaded"))
    with pytest.raises(ValueError, match="num_workers='many': expected auto or a number"):
        predictor.predict(PredictConfig(ckpt_path="unused.ckpt", num_workers="many"))


def test_the_default_score_floor_and_pre_nms_cap_keep_the_validation_mAP40(
    tiny_data, trained, tmp_path
):
    """model.box_score_thresh 0.001 and model.box_candidates_per_class 100 (the defaults, which
    keep NMS small) against keeping every box, on the fixture run's validation images: mAP40
    within 0.001. Seen failing with a floor of 0.5 and a cap of 1; this two-step model's
    scores are too flat to catch a cap of 2 (benchmarks/prediction_floor.py measures the
    defaults on the demo's trained detector)."""
    from cxrdet.data.dataset import ImageDataset
    from cxrdet.data.labels import read_labels
    from cxrdet.data.splits import split_ids
    from cxrdet.evaluation.nofinding import with_no_finding
    from cxrdet.evaluation.submission import format_prediction, write_submission
    from cxrdet.inference.detectors import load_models
    from cxrdet.inference.prediction_pass import PassOptions, predict_dataset

    labels = str(tiny_data["raw"] / "train.csv")
    _, val = split_ids(read_labels(labels)[0], "kfold", fold=1, n_folds=2)
    prepared = tiny_data["prepared"] / "64"
    dataset = ImageDataset(prepared / "train", prepared / "train_meta.csv", val)
    models, _ = load_models([str(trained / "checkpoints" / "last.ckpt")], "cpu", None, None)
    heads = models[0].roi_heads
    assert (heads.score_thresh, heads.candidates_per_class) == (0.001, 100)  # the defaults
    scores = []
    for floor, cap in [(0.001, 100), (0.0, None)]:
        heads.score_thresh, heads.candidates_per_class = floor, cap
        results, _, _ = predict_dataset(models, dataset, "cpu", PassOptions(progress=False))
        rows = {
            i: format_prediction(*with_no_finding(*results[i], class14_head=False))
            for i in dataset.ids
        }
        csv = tmp_path / f"floor-{floor}-{cap}.csv"
        write_submission(rows, csv)
        scores.append(score(labels, str(csv), split="kfold", fold=1, n_folds=2)["mAP40"])
    assert 0 < scores[1] < 1
    assert scores[0] == pytest.approx(scores[1], abs=0.001)
