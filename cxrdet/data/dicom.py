"""DICOM → 8-bit display pixels: modality LUT (rescale), VOI LUT / windowing, MONOCHROME1
inversion, min-max to uint8.

pydicom defines every transform. For integer pixel data (all CR/DX images) the transforms are
evaluated once per stored value in the image's range and applied as one lookup, which gives
pydicom's numbers several times faster than running them on every pixel in float64.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pydicom
from pydicom.pixels import apply_modality_lut, apply_voi_lut

DECODER_HINT = (
    "install the decoders: pip install pylibjpeg pylibjpeg-openjpeg pylibjpeg-libjpeg "
    "(JPEG, JPEG 2000, JPEG lossless) or python-gdcm; JPEG-LS needs pyjpegls"
)
MAX_LUT = 1 << 17  # integer ranges up to this size go through a lookup table
# A 43 x 43 cm detector at 0.1 mm is about 18.5 megapixels; VinDr-CXR's largest images are about
# 3,000 x 3,000 (9 megapixels). Anything declaring more than this is refused before decoding.
MAX_PIXELS = 50_000_000


class DicomError(ValueError):
    """A DICOM file that cannot be turned into pixels; the message names the file and why."""


def check_header(ds, path, max_pixels: int = MAX_PIXELS, key: str = "--max-pixels") -> None:
    """Refuse, before any pixel is decoded, an image whose header declares more than
    ``max_pixels`` (rows x columns x frames; ``key`` names the setting), or uncompressed pixel
    data whose length disagrees with the header (a truncated or forged file)."""
    rows, cols = int(ds.get("Rows", 0) or 0), int(ds.get("Columns", 0) or 0)
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    samples = int(ds.get("SamplesPerPixel", 1) or 1)
    bits = int(ds.get("BitsAllocated", 0) or 0)
    if "PixelData" not in ds:
        return  # pydicom's own error names what is missing
    if rows <= 0 or cols <= 0 or bits <= 0:
        raise DicomError(
            f"{path}: the header gives no image size (Rows {rows}, Columns {cols}, "
            f"BitsAllocated {bits})"
        )
    pixels = rows * cols * frames
    if pixels > max_pixels:
        raise DicomError(
            f"{path}: the header declares {rows} x {cols} pixels x {frames} frame(s), "
            f"{pixels:,} pixels, above the limit of {max_pixels:,} ({key})"
        )
    syntax = getattr(ds.get("file_meta"), "TransferSyntaxUID", None)
    if syntax is not None and not syntax.is_compressed:
        expected = math.ceil(pixels * samples * bits / 8)
        actual = len(ds.PixelData)
        if actual not in (expected, expected + 1):  # + 1: the pad byte of an odd length
            raise DicomError(
                f"{path}: the pixel data holds {actual} bytes where the header declares "
                f"{expected} ({rows} x {cols} x {frames} frame(s) x {samples} sample(s) x "
                f"{bits} bits)"
            )


def read_dicom(
    path: str | Path, voi_lut: bool = True, max_pixels: int = MAX_PIXELS, key: str = "--max-pixels"
) -> np.ndarray:
    """Read a DICOM file as the 8-bit image a radiologist would see.

    Args:
        path: the ``.dicom`` / ``.dcm`` file.
        voi_lut: apply the file's VOI LUT or window centre/width before normalising.
        max_pixels: refuse an image whose header declares more pixels (:func:`check_header`;
            ``key`` names the setting in the message).

    Returns:
        A ``uint8`` array of the original rows × columns, bright = dense (bone, heart).

    Raises:
        DicomError: the file is unreadable, too large or inconsistent, has no pixel data, or
            needs a missing decoder.
    """
    path = Path(path)
    try:
        ds = pydicom.dcmread(path)
    except Exception as e:  # pydicom raises many types; the user needs the file and the reason
        raise DicomError(
            f"{path}: not a readable DICOM file: {str(e).strip() or type(e).__name__}"
        ) from e
    check_header(ds, path, max_pixels, key)
    try:
        pixels = ds.pixel_array
    except Exception as e:
        reason = " ".join(str(e).split()) or type(e).__name__
        if "missing" in reason.lower() or "no pixel data decoders" in reason.lower():
            reason = f"{reason} — {DECODER_HINT}"
        syntax = getattr(ds.get("file_meta"), "TransferSyntaxUID", None)
        where = f" (transfer syntax {syntax.name})" if syntax is not None else ""
        raise DicomError(f"{path}: cannot decode pixel data{where}: {reason}") from e
    if pixels.ndim != 2:
        raise DicomError(f"{path}: expected one grey-scale frame, got pixel shape {pixels.shape}")
    invert = ds.get("PhotometricInterpretation", "MONOCHROME2") == "MONOCHROME1"
    try:
        return to_display(pixels, ds, voi_lut, invert)
    except (ValueError, TypeError, AttributeError, KeyError) as e:
        raise DicomError(f"{path}: cannot apply the modality/VOI LUT: {e}") from e


def to_display(pixels: np.ndarray, ds, voi_lut: bool = True, invert: bool = False) -> np.ndarray:
    """Stored pixel values → uint8 display image (see the module docstring)."""
    if pixels.dtype.kind in "iu" and pixels.size:
        lo, hi = int(pixels.min()), int(pixels.max())
        if hi - lo < MAX_LUT:
            values = np.arange(lo, hi + 1, dtype=np.int64)
            lut = _transform(values, ds, voi_lut)
            if pixels.dtype.kind == "u":
                index = pixels - pixels.dtype.type(lo) if lo else pixels
            else:
                index = (pixels.astype(np.int64) - lo).astype(np.uint32)
            # lo and hi occur in the image, so for a monotonic transform (every window, and
            # VOI LUTs in practice) the table's extremes are the image's extremes.
            lut8 = _scale(lut, float(lut.min()), float(lut.max()), invert)
            return lut8[index]
    data = _transform(pixels, ds, voi_lut)
    return _scale(data, float(data.min()), float(data.max()), invert)


def _transform(values: np.ndarray, ds, voi_lut: bool) -> np.ndarray:
    out = apply_modality_lut(values, ds)
    if voi_lut:
        out = apply_voi_lut(out, ds)
    return np.asarray(out, dtype=np.float32)


def _scale(data: np.ndarray, lo: float, hi: float, invert: bool) -> np.ndarray:
    """Min-max to 0..255 (inverted for MONOCHROME1); a constant image becomes zeros."""
    data = np.asarray(data, dtype=np.float32) - lo
    if hi > lo:
        data *= 255.0 / (hi - lo)
    if invert and hi > lo:
        data = 255.0 - data
    return np.rint(data).astype(np.uint8)


def header_size(path: str | Path) -> tuple[int, int]:
    """(rows, columns) from the header alone, no pixel decoded; a DicomError naming the file."""
    try:
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        return int(ds.Rows), int(ds.Columns)
    except Exception as e:
        raise DicomError(f"{path}: no image size in its header: {e}") from e
