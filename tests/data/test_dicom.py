"""DICOM decoding: compressed syntaxes, signed pixels, rescale, VOI LUT and the lookup path."""

from __future__ import annotations

import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.pixels import apply_modality_lut, apply_voi_lut
from pydicom.uid import JPEG2000Lossless, RLELossless

from cxrdet.data.dicom import DicomError, read_dicom, to_display
from cxrdet.demo.synth import write_dicom


def reference(ds, pixels=None) -> np.ndarray:
    """The plain per-pixel float64 path: modality LUT → VOI LUT → invert → min-max (of
    ``pixels``, default the dataset's own decode)."""
    pixels = ds.pixel_array if pixels is None else pixels
    data = apply_voi_lut(apply_modality_lut(pixels, ds), ds).astype(np.float64)
    if ds.PhotometricInterpretation == "MONOCHROME1":
        data = data.max() - data
    data = (data - data.min()) / (data.max() - data.min()) * 255
    return np.rint(data).astype(np.uint8)


@pytest.mark.parametrize(
    "name", ["MR_small_RLE.dcm", "MR_small_jp2klossless.dcm", "MR_small_jpeg_ls_lossless.dcm"]
)
def test_compressed_files_decode_equal_to_uncompressed(name):
    plain = read_dicom(get_testdata_file("MR_small.dcm"))
    assert np.array_equal(read_dicom(get_testdata_file(name)), plain)


def test_jpeg_family_decodes_through_libjpeg():
    from libjpeg import decode  # pylibjpeg-libjpeg, called directly: the reference decode
    from pydicom.encaps import generate_frames

    path = get_testdata_file("JPGExtended.dcm")  # 12-bit JPEG Extended
    ds = pydicom.dcmread(path)
    stored = decode(next(generate_frames(ds.PixelData, number_of_frames=1)))
    assert stored.shape == (ds.Rows, ds.Columns) and stored.max() > 255  # 12 bits in use
    np.testing.assert_array_equal(read_dicom(path), reference(ds, stored))


def test_plugin_failure_is_reported_without_a_misleading_install_hint():
    with pytest.raises(DicomError, match=r"JPEG-lossy\.dcm.*JPEG Extended") as e:
        read_dicom(get_testdata_file("JPEG-lossy.dcm"))  # a known-bad stream
    assert "pip install" not in str(e.value)


@pytest.mark.parametrize("syntax", [RLELossless, JPEG2000Lossless])
def test_cxr_compressed_by_pydicom_round_trips(tmp_path, syntax):
    rng = np.random.default_rng(0)
    write_dicom(tmp_path / "a.dicom", rng.random((60, 50)), "MONOCHROME1", bits_stored=14)
    ds = pydicom.dcmread(tmp_path / "a.dicom")
    ds.compress(syntax)
    ds.save_as(tmp_path / "b.dicom")
    assert np.array_equal(read_dicom(tmp_path / "b.dicom"), read_dicom(tmp_path / "a.dicom"))


def test_signed_pixels_with_window_match_pydicom():
    ds = pydicom.dcmread(get_testdata_file("MR_small.dcm"))  # int16, window 600/1600
    assert ds.PixelRepresentation == 1
    assert np.array_equal(read_dicom(get_testdata_file("MR_small.dcm")), reference(ds))


@pytest.mark.parametrize("photometric", ["MONOCHROME1", "MONOCHROME2"])
def test_rescale_and_voi_lut_sequence_match_pydicom(tmp_path, photometric):
    rng = np.random.default_rng(1)
    write_dicom(tmp_path / "a.dicom", rng.random((40, 30)), photometric, bits_stored=12)
    ds = pydicom.dcmread(tmp_path / "a.dicom")
    ds.RescaleSlope, ds.RescaleIntercept = 2, -1000
    ds.WindowCenter, ds.WindowWidth = 2000, 3000
    ds.save_as(tmp_path / "b.dicom")
    assert np.array_equal(read_dicom(tmp_path / "b.dicom"), reference(ds))
    # A VOI LUT sequence takes precedence over the window tags.
    item = pydicom.Dataset()
    item.LUTDescriptor = [4096, 0, 12]
    item.LUTData = (np.sqrt(np.arange(4096) / 4095) * 4095).astype(np.uint16).tolist()
    item["LUTData"].VR = "US"
    ds.VOILUTSequence = [item]
    del ds.RescaleSlope, ds.RescaleIntercept
    ds.save_as(tmp_path / "c.dicom")
    got = read_dicom(tmp_path / "c.dicom")
    assert np.array_equal(got, reference(ds))
    assert not np.array_equal(got, read_dicom(tmp_path / "a.dicom"))  # the LUT changed it


def test_lookup_path_equals_per_pixel_path():
    ds = pydicom.dcmread(get_testdata_file("MR_small.dcm"))
    pixels = ds.pixel_array
    via_lut = to_display(pixels, ds)
    per_pixel = to_display(pixels.astype(np.float64), ds)  # floats skip the lookup table
    assert np.array_equal(via_lut, per_pixel)


def test_missing_decoder_names_the_file_and_the_package(tmp_path, monkeypatch):
    from pydicom.pixels import get_decoder

    path = tmp_path / "j2k.dicom"
    write_dicom(path, np.random.default_rng(2).random((64, 64)))
    ds = pydicom.dcmread(path)
    ds.compress(JPEG2000Lossless)
    ds.save_as(path)
    decoder = get_decoder(JPEG2000Lossless)
    monkeypatch.setattr(decoder, "_available", {})  # as if no plugin were installed
    monkeypatch.setattr(decoder, "_unavailable", {"pylibjpeg": ("pylibjpeg-openjpeg",)})
    with pytest.raises(DicomError, match=r"j2k\.dicom.*JPEG 2000.*pip install pylibjpeg"):
        read_dicom(path)


def test_truncated_pixel_data_is_refused_before_decoding(tmp_path):
    path = tmp_path / "t.dicom"
    write_dicom(path, np.random.default_rng(3).random((50, 50)))
    path.write_bytes(path.read_bytes()[:-500])
    with pytest.raises(DicomError, match=r"t\.dicom: the pixel data holds 4500 bytes where the "):
        read_dicom(path)  # 50 x 50 x 16 bits = 5000 bytes declared


def test_an_image_declaring_more_pixels_than_the_limit_is_refused_before_decoding(
    tmp_path, monkeypatch
):
    path = tmp_path / "huge.dicom"
    write_dicom(path, np.zeros((8, 8)))
    ds = pydicom.dcmread(path)
    ds.Rows = ds.Columns = 60000  # 3.6 gigapixels declared, 128 bytes of pixel data
    ds.save_as(path)
    decoded = []
    monkeypatch.setattr(pydicom.Dataset, "pixel_array", property(lambda ds: decoded.append(1)))
    with pytest.raises(
        DicomError, match=r"huge\.dicom: .* 60000 x 60000 .* limit of 50,000,000 \(--max"
    ):
        read_dicom(path)
    with pytest.raises(DicomError, match=r"above the limit of 10 \(dicom_max_pixels\)"):
        read_dicom(tmp_path / "huge.dicom", max_pixels=10, key="dicom_max_pixels")
    assert decoded == []  # refused from the header, nothing decoded


def test_eight_bit_stored_pixels(tmp_path):
    write_dicom(tmp_path / "a.dicom", np.zeros((8, 8)))
    ds = pydicom.dcmread(tmp_path / "a.dicom")
    pixels = np.tile(np.arange(0, 240, 30, dtype=np.uint8), (8, 1))
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = 8, 8, 7
    del ds.WindowCenter, ds.WindowWidth
    ds.PixelData = pixels.tobytes()
    ds.save_as(tmp_path / "b.dicom")
    out = read_dicom(tmp_path / "b.dicom")
    assert out.dtype == np.uint8 and out[0, 0] == 0 and out[0, -1] == 255
    assert (np.diff(out[0].astype(int)) > 0).all()


def test_predicting_from_dicoms_refuses_what_the_limit_refuses_and_says_why(tmp_path):
    from cxrdet.data.dataset import DicomDataset
    from cxrdet.data.dicom import MAX_PIXELS
    from cxrdet.inference.config import PredictConfig

    write_dicom(tmp_path / "a.dicom", np.zeros((8, 8)))
    assert PredictConfig().dicom_max_pixels == MAX_PIXELS  # one limit, two settings
    image, info = DicomDataset(tmp_path, 16, max_pixels=10)[0]
    assert "8 x 8 pixels" in info["error"] and "limit of 10 (dicom_max_pixels)" in info["error"]
    assert image.shape == (1, 16, 16) and int(image.max()) == 0  # blank: row 14 1 0 0 1 1
    assert DicomDataset(tmp_path, 16)[0][1]["error"] is None
