"""DICOM → 8-bit display pixels: VOI LUT / windowing, MONOCHROME1 inversion, min-max to uint8."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom
from pydicom.pixels import apply_voi_lut


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
        pixels = ds.pixel_array
    except Exception as e:  # pydicom raises many types; the user needs the file and the reason
        reason = str(e) or type(e).__name__
        if "plugin" in reason.lower() or "decoder" in reason.lower():
            reason += (
                " — install the decoders: pip install pylibjpeg pylibjpeg-openjpeg "
                "pylibjpeg-libjpeg (or python-gdcm)"
            )
        raise DicomError(f"{path}: cannot decode pixel data: {reason}") from e
    if pixels.ndim != 2:
        raise DicomError(f"{path}: expected one grey-scale frame, got pixel shape {pixels.shape}")
    data = apply_voi_lut(pixels, ds) if voi_lut else pixels
    data = data.astype(np.float32, copy=False)
    if ds.get("PhotometricInterpretation", "MONOCHROME2") == "MONOCHROME1":
        data = data.max() - data  # MONOCHROME1 stores dense tissue dark; flip to MONOCHROME2
    return normalise_uint8(data)


def normalise_uint8(data: np.ndarray) -> np.ndarray:
    """Min-max scale an array to ``uint8`` (a constant image becomes zeros).

    A float32 input is used as scratch space and overwritten (cheaper than a copy).
    """
    data = np.asarray(data, dtype=np.float32)
    lo, hi = float(data.min()), float(data.max())
    data -= lo
    if hi > lo:
        data *= 255.0 / (hi - lo)
    return np.rint(data, out=data).astype(np.uint8)
