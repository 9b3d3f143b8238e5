"""Synthetic DICOMs → prepare round trip: inversion, sizes, failures, resume, no identifiers."""

from __future__ import annotations

import re

import cv2
import numpy as np
import pandas as pd
import pydicom
import pytest

from cxrdet.data.dicom import DicomError, read_dicom
from cxrdet.data.labels import LABEL_COLUMNS, NO_FINDING
from cxrdet.data.prepare import main as prepare_main
from cxrdet.data.prepare import prepare
from cxrdet.demo.synth import write_dicom


def _ramp(h=40, w=30):
    """A display image that brightens left to right."""
    return np.tile(np.linspace(0, 1, w, dtype=np.float32), (h, 1))


@pytest.mark.parametrize("photometric", ["MONOCHROME1", "MONOCHROME2"])
@pytest.mark.parametrize("bits", [12, 16])
def test_monochrome1_is_inverted_to_display_convention(tmp_path, photometric, bits):
    path = tmp_path / "x.dicom"
    write_dicom(path, _ramp(), photometric=photometric, bits_stored=bits)
    stored = pydicom.dcmread(path).pixel_array
    raw_left_darker = stored[:, 0].mean() < stored[:, -1].mean()
    assert raw_left_darker == (photometric == "MONOCHROME2")  # MONOCHROME1 stores it flipped
    image = read_dicom(path)
    assert image.dtype == np.uint8 and image.shape == (40, 30)
    assert image[:, 0].mean() < 10 and image[:, -1].mean() > 245  # bright = dense in both


def test_synth_layout_and_labels(tiny_data):
    raw = tiny_data["raw"]
    train = pd.read_csv(raw / "train.csv")
    assert list(train.columns) == LABEL_COLUMNS
    assert len(list((raw / "train").glob("*.dicom"))) == 16
    per_image = train.groupby("image_id")["rad_id"].nunique()
    assert (per_image == 3).all() and len(per_image) == 16
    assert all(re.fullmatch(r"[0-9a-f]{32}", i) for i in per_image.index)  # Kaggle-like ids
    normal = train[train.class_id == NO_FINDING]
    assert normal[["x_min", "y_min", "x_max", "y_max"]].isna().all().all()
    finding = train[train.class_id != NO_FINDING]
    assert (finding.x_max > finding.x_min).all() and (finding.y_max > finding.y_min).all()
    test = pd.read_csv(raw / "test_labels.csv")
    assert test.groupby("image_id")["rad_id"].nunique().eq(1).all()


def test_synth_is_deterministic_whatever_the_number_of_workers(tmp_path):
    from cxrdet.demo.synth import synthesize

    for name, workers in (("a", 1), ("b", 1), ("two", 2)):
        synthesize(
            tmp_path / name, 3, 2, seed=5, min_px=48, max_px=64, progress=False, workers=workers
        )
    for other in ("b", "two"):
        for labels in ("train.csv", "test_labels.csv"):
            a, b = (pd.read_csv(tmp_path / n / labels) for n in ("a", other))
            pd.testing.assert_frame_equal(a, b)
        files = sorted((tmp_path / "a").glob("*/*.dicom"))
        assert len(files) == 5
        for f in files:
            assert f.read_bytes() == (tmp_path / other / f.parent.name / f.name).read_bytes()


def test_prepare_round_trip_sizes_and_original_dims(tiny_data):
    # (Patient identifiers: test_patient_identifiers_never_reach_any_output, on a DICOM that
    # carries them; the synthetic ones here have none.)
    raw, prepared = tiny_data["raw"], tiny_data["prepared"]
    meta = pd.read_csv(prepared / "64" / "train_meta.csv", dtype={"image_id": str})
    assert len(meta) == 16
    for row in meta.itertuples():
        ds = pydicom.dcmread(raw / "train" / f"{row.image_id}.dicom")
        assert (row.dim0, row.dim1) == (ds.Rows, ds.Columns)
        png = cv2.imread(str(prepared / "64" / "train" / f"{row.image_id}.png"), -1)
        assert png.shape == (64, 64) and png.dtype == np.uint8
    # Lungs are dark and the heart bright after prepare, whatever the photometric tag.
    for row in meta.itertuples():
        png = cv2.imread(str(prepared / "64" / "train" / f"{row.image_id}.png"), 0)
        assert png[38:44, 30:40].mean() > png[22:30, 14:22].mean()
    assert list(meta.columns) == ["image_id", "dim0", "dim1"]


def test_prepare_skips_unreadable_files_and_resumes(tmp_path, caplog):
    src = tmp_path / "in" / "train"
    src.mkdir(parents=True)
    for i in range(3):
        write_dicom(src / f"img{i}.dicom", _ramp() * (i + 1))
    good = (src / "img0.dicom").read_bytes()
    (src / "broken.dicom").write_bytes(good[: len(good) // 2])  # truncated pixel data
    (src / "nested").mkdir()
    write_dicom(src / "nested" / "deep.dcm", _ramp())

    counts = prepare(src, tmp_path / "out", [32, 16], progress=False)
    assert counts == {"done": 4, "skipped": 0, "adopted": 0, "failed": 1, "images": 4}
    failures = pd.read_csv(tmp_path / "out" / "failures_train.csv")
    assert len(failures) == 1 and "broken.dicom" in failures.file[0]
    assert "broken.dicom" in caplog.text
    for size in (32, 16):
        meta = pd.read_csv(tmp_path / "out" / str(size) / "train_meta.csv")
        assert sorted(meta.image_id) == ["deep", "img0", "img1", "img2"]
        assert (meta.dim0 == 40).all() and (meta.dim1 == 30).all()

    # An interrupted run: one PNG lost. The rerun redoes only that image.
    lost = tmp_path / "out" / "16" / "train" / "img1.png"
    lost_bytes = lost.read_bytes()
    before = (tmp_path / "out" / "32" / "train" / "img2.png").stat().st_mtime_ns
    lost.unlink()
    counts = prepare(src, tmp_path / "out", [32, 16], progress=False)
    assert counts["done"] == 1 and counts["skipped"] == 3 and lost.read_bytes() == lost_bytes
    assert (tmp_path / "out" / "32" / "train" / "img2.png").stat().st_mtime_ns == before
    assert not list((tmp_path / "out").rglob("*.tmp*"))


def test_unreadable_dicom_error_names_the_file(tmp_path):
    bad = tmp_path / "junk.dicom"
    bad.write_bytes(b"not a dicom at all")
    with pytest.raises(DicomError, match="junk.dicom"):
        read_dicom(bad)


def test_prepare_cli_exit_codes(tmp_path, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    assert prepare_main(["--input", str(empty), "--output", str(tmp_path / "o")]) == 2
    assert "no .dicom/.dcm files" in capsys.readouterr().err
    src = tmp_path / "only_bad"
    src.mkdir()
    (src / "a.dicom").write_bytes(b"junk")
    assert (
        prepare_main(["--input", str(src), "--output", str(tmp_path / "o"), "--sizes", "16"]) == 1
    )


def test_letterbox_keeps_ratio_and_maps_boxes_back_to_a_pixel(tmp_path):
    from cxrdet.data.boxes import to_original, to_prepared
    from cxrdet.data.meta import content_of, read_meta

    display = np.zeros((300, 200), np.float32)
    box = np.array([[40.0, 90.0, 120.0, 210.0]])  # x0, y0, x1, y1 in original pixels
    display[90:210, 40:120] = 1.0
    src = tmp_path / "in" / "test"
    src.mkdir(parents=True)
    write_dicom(src / "tall.dicom", display, window=False)
    prepare(src, tmp_path / "out", [100, 64], keep_ratio=True, progress=False)
    for size in (100, 64):
        meta = read_meta(tmp_path / "out" / str(size) / "test_meta.csv")
        content = content_of(meta, "tall")
        scale = size / 300
        assert content == ((size - round(200 * scale)) // 2, 0, round(200 * scale), size)
        png = cv2.imread(str(tmp_path / "out" / str(size) / "test" / "tall.png"), 0)
        assert png.shape == (size, size)
        x0, y0, w, h = (int(v) for v in content)
        assert png[:, : x0 - 1].max() == 0 and png[:, x0 + w + 1 :].max() == 0  # black bars
        small = to_prepared(box, (300, 200), png.shape, content)[0]
        ys, xs = np.nonzero(png > 127)
        assert np.abs(small - [xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]).max() <= 1.0
        back = to_original(small, (300, 200), png.shape, content)
        np.testing.assert_allclose(back, box, atol=1e-9)
        # A box found to the nearest prepared pixel maps back within one prepared pixel.
        found = np.array([[xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]], float)
        err = np.abs(to_original(found, (300, 200), png.shape, content) - box).max()
        assert err <= 300 / size


def test_patient_identifiers_never_reach_any_output(tmp_path):
    src = tmp_path / "in" / "train"
    src.mkdir(parents=True)
    write_dicom(src / "p1.dicom", _ramp())
    ds = pydicom.dcmread(src / "p1.dicom")
    ds.PatientName, ds.PatientID = "Doe^Jane", "PID-7731"
    ds.PatientBirthDate, ds.StudyDate, ds.InstitutionName = "19610203", "20200117", "St Elsewhere"
    ds.save_as(src / "p1.dicom")
    (src / "p2.dicom").write_bytes(ds.to_json().encode())  # unreadable: lands in failures
    prepare(src, tmp_path / "out", [32], progress=False)
    outputs = [p for p in (tmp_path / "out").rglob("*") if p.is_file()]
    assert any(p.suffix == ".png" for p in outputs) and any("failures" in p.name for p in outputs)
    for p in outputs:
        data = p.read_bytes()
        for secret in (b"Doe", b"PID-7731", b"19610203", b"20200117", b"Elsewhere"):
            assert secret not in data, (p, secret)


def test_interrupted_run_keeps_its_work_and_resumes(tmp_path, monkeypatch):
    import cxrdet.data.prepare as prep

    src = tmp_path / "in" / "train"
    src.mkdir(parents=True)
    for i in range(5):
        write_dicom(src / f"img{i}.dicom", _ramp() * (i + 1))
    real = prep.isolated_map

    def interrupted(*args, **kwargs):
        for n, result in enumerate(real(*args, **kwargs)):
            if n == 2:
                raise KeyboardInterrupt  # Ctrl-C as the third image comes back
            yield result

    monkeypatch.setattr(prep, "isolated_map", interrupted)
    with pytest.raises(KeyboardInterrupt):
        prepare(src, tmp_path / "out", [16], progress=False)
    meta = pd.read_csv(tmp_path / "out" / "16" / "train_meta.csv")
    assert sorted(meta.image_id) == ["img0", "img1"]  # the finished work is recorded
    monkeypatch.setattr(prep, "isolated_map", real)
    counts = prepare(src, tmp_path / "out", [16], progress=False)
    # The third image's PNG may have been written before the interrupt: adopted, not redone.
    assert counts["skipped"] == 2 and counts["done"] + counts["adopted"] == 3
    assert counts["failed"] == 0 and counts["images"] == 5


def test_repeated_image_ids_in_nested_folders_are_refused(tmp_path):
    src = tmp_path / "in"
    for sub in ("a", "b"):
        (src / sub).mkdir(parents=True)
        write_dicom(src / sub / "same.dicom", _ramp())
    with pytest.raises(ValueError, match="same"):
        prepare(src, tmp_path / "out", [16], progress=False)


def test_rerunning_prepare_in_the_other_mode_is_refused_unless_redone(tiny_data, tmp_path, capsys):
    raw = tiny_data["raw"] / "test"
    prepare(raw, tmp_path, [32], progress=False)  # squashed
    meta = tmp_path / "32" / "test_meta.csv"
    before = meta.read_text()
    with pytest.raises(ValueError, match=r"prepared squashed .* asks for letterboxed .* --redo"):
        prepare(raw, tmp_path, [32], progress=False, keep_ratio=True)
    assert meta.read_text() == before  # nothing was rewritten
    args = ["--input", str(raw), "--output", str(tmp_path), "--sizes", "32", "--keep-ratio"]
    assert prepare_main(args) == 2
    assert "--redo" in capsys.readouterr().err
    counts = prepare(raw, tmp_path, [32], progress=False, keep_ratio=True, redo=True)
    assert counts["done"] == counts["images"] == 4
    redone = pd.read_csv(meta)
    assert {"content_x0", "content_w"} <= set(redone.columns)
    with pytest.raises(ValueError, match=r"prepared letterboxed .* asks for squashed"):
        prepare(raw, tmp_path, [32], progress=False)
