"""Box geometry between original DICOM pixels and prepared (resized) image pixels."""

from __future__ import annotations

import numpy as np


def scale_factors(orig_hw: tuple[float, float], image_hw: tuple[float, float]) -> np.ndarray:
    """Per-coordinate factors (x, y, x, y) that take original pixels to prepared pixels."""
    (oh, ow), (h, w) = orig_hw, image_hw
    return np.array([w / ow, h / oh, w / ow, h / oh], dtype=np.float64)


def to_prepared(boxes: np.ndarray, orig_hw, image_hw) -> np.ndarray:
    """Scale xyxy boxes from original DICOM pixels to a prepared image of size ``image_hw``."""
    return np.asarray(boxes, dtype=np.float64).reshape(-1, 4) * scale_factors(orig_hw, image_hw)


def to_original(boxes: np.ndarray, orig_hw, image_hw) -> np.ndarray:
    """Scale xyxy boxes from a prepared image back to original DICOM pixels."""
    return np.asarray(boxes, dtype=np.float64).reshape(-1, 4) / scale_factors(orig_hw, image_hw)


def clip(boxes: np.ndarray, hw: tuple[float, float]) -> np.ndarray:
    """Clip xyxy boxes to an image of height/width ``hw``."""
    h, w = hw
    out = np.asarray(boxes, dtype=np.float64).reshape(-1, 4).copy()
    out[:, [0, 2]] = out[:, [0, 2]].clip(0, w)
    out[:, [1, 3]] = out[:, [1, 3]].clip(0, h)
    return out


def valid(boxes: np.ndarray, min_size: float = 1.0) -> np.ndarray:
    """Mask of boxes whose width and height are both at least ``min_size``."""
    b = np.asarray(boxes).reshape(-1, 4)
    return ((b[:, 2] - b[:, 0]) >= min_size) & ((b[:, 3] - b[:, 1]) >= min_size)
