"""DICOM → 8-bit display pixels: modality LUT (rescale), VOI LUT / windowing, MONOCHROME1
inversion, min-max to uint8.

pydicom defines every transform. For integer pixel data (all CR/DX images) the transforms are
evaluated once per stored value in the image's range and applied as one lookup, which gives
pydicom's numbers several times faster than running them on every pixel in float64.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom
from pydicom.pixels import apply_modality_lut, apply_voi_lut

DECODER_HINT = (
    "install the decoders: pip install pylibjpeg pylibjpeg-openjpeg pylibjpeg-libjpeg "
    "(JPEG, JPEG 2000, JPEG lossless) or python-gdcm; JPEG-LS needs pyjpegls"
)
MAX_LUT = 1 << 17  # integer ranges up to this size go through a lookup table


class DicomError(ValueError):
    """A DICOM file that cannot be turned into pixels; the message names the file and why."""


def read_dicom(path: str | Path, voi_lut: bool = True) -> np.ndarray:
    """Read a DICOM file as the 8-bit image a radiologist would see.

    Args:
        path: the ``.dicom`` / ``.dcm`` file.
        voi_lut: apply the file's VOI LUT or window centre/width before normalising.

    Returns:
        A ``uint8`` array of the original rows × columns, bright = dense (bone, heart).

    Raises:
        DicomError: the file is unreadable, has no pixel data, or needs a missing decoder.
    """
    path = Path(path)
    try:
        ds = pydicom.dcmread(path)
    except Exception as e:  # pydicom raises many types; the user needs the file and the reason
        raise DicomError(
            f"{path}: not a readable DICOM file: {str(e).strip() or type(e).__name__}"
        ) from e
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
