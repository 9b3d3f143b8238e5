"""Box geometry between original DICOM pixels and prepared (resized) image pixels.

A prepared image holds the original, resized, in a *content* rectangle ``(x0, y0, w, h)``: the
whole image when it was squashed to a square (the default), or an inner rectangle when it was
letterboxed (``prepare --keep-ratio``; the meta CSV records the rectangle).
"""

from __future__ import annotations

import numpy as np

Content = tuple[float, float, float, float]  # x0, y0, width, height in prepared pixels
CONTENT_COLUMNS = ["content_x0", "content_y0", "content_w", "content_h"]  # in the meta CSV


def _affine(orig_hw, image_hw, content: Content | None) -> tuple[np.ndarray, np.ndarray]:
    (oh, ow), (h, w) = orig_hw, image_hw
    x0, y0, cw, ch = content if content is not None else (0.0, 0.0, w, h)
    scale = np.array([cw / ow, ch / oh, cw / ow, ch / oh], dtype=np.float64)
    return scale, np.array([x0, y0, x0, y0], dtype=np.float64)


def to_prepared(boxes, orig_hw, image_hw, content: Content | None = None) -> np.ndarray:
    """Map xyxy boxes from original DICOM pixels into a prepared image of size ``image_hw``."""
    scale, offset = _affine(orig_hw, image_hw, content)
    return np.asarray(boxes, dtype=np.float64).reshape(-1, 4) * scale + offset


def to_original(boxes, orig_hw, image_hw, content: Content | None = None) -> np.ndarray:
    """Map xyxy boxes from a prepared image back to original DICOM pixels."""
    scale, offset = _affine(orig_hw, image_hw, content)
    return (np.asarray(boxes, dtype=np.float64).reshape(-1, 4) - offset) / scale


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


def letterbox_content(orig_hw: tuple[int, int], size: int) -> tuple[int, int, int, int]:
    """Where an image of ``orig_hw`` lands in a ``size``² letterbox: centred, aspect kept."""
    oh, ow = orig_hw
    scale = size / max(oh, ow)
    w, h = max(1, round(ow * scale)), max(1, round(oh * scale))
    return (size - w) // 2, (size - h) // 2, w, h


def pair_ious(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU of ``a[i]`` with ``b[i]`` (xyxy rows); 0 where the union is empty."""
    inter = np.prod(
        np.clip(np.minimum(a[:, 2:], b[:, 2:]) - np.maximum(a[:, :2], b[:, :2]), 0, None), axis=1
    )
    area = lambda x: (x[:, 2] - x[:, 0]) * (x[:, 3] - x[:, 1])  # noqa: E731
    union = area(a) + area(b) - inter
    return np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)


def iou_matrix(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU of every row of ``a`` with every row of ``b`` ([len(a), len(b)])."""
    a, b = np.asarray(a, np.float64).reshape(-1, 4), np.asarray(b, np.float64).reshape(-1, 4)
    ious = pair_ious(np.repeat(a, len(b), axis=0), np.tile(b, (len(a), 1)))
    return ious.reshape(len(a), len(b))
