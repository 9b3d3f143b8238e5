"""Chest-like phantom images with one visual signature per VinBigData class.

Everything is drawn on a small canvas in normalised coordinates (x, y in [0, 1], image left =
patient's right) and returned with boxes in the same coordinates; :mod:`cxrdet.demo.synth` scales
both to full DICOM size. Brightness follows the display convention: dense tissue is bright.
"""

from __future__ import annotations

import cv2
import numpy as np

# Relative weight of each finding class (0..13) among abnormal images: the real train.csv row
# counts, square-rooted so that rare classes still show up in a small demo set.
REAL_COUNTS = [7162, 279, 960, 5427, 556, 1000, 1247, 2483, 2580, 2203, 2476, 4842, 226, 4655]
CLASS_WEIGHTS = np.sqrt(np.array(REAL_COUNTS, dtype=np.float64))
CLASS_WEIGHTS /= CLASS_WEIGHTS.sum()


class Canvas:
    """A float32 image in [0, 1]-ish intensity with helpers that draw in normalised coordinates."""

    def __init__(self, h: int, w: int):
        self.h, self.w = h, w
        yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
        self.x, self.y = (xx + 0.5) / w, (yy + 0.5) / h
        self.img = np.zeros((h, w), np.float32)

    def ellipse(self, cx, cy, rx, ry) -> np.ndarray:
        return ((self.x - cx) / rx) ** 2 + ((self.y - cy) / ry) ** 2 <= 1.0

    def soft(self, mask: np.ndarray, sigma_px: float) -> np.ndarray:
        m = mask.astype(np.float32)
        return cv2.GaussianBlur(m, (0, 0), sigma_px) if sigma_px > 0 else m


def _lung_centres(rng: np.random.Generator) -> dict:
    j = lambda s: rng.uniform(-s, s)  # noqa: E731
    return {
        "right": (0.31 + j(0.015), 0.45 + j(0.015), 0.15 + j(0.01), 0.29 + j(0.015)),
        "left": (0.69 + j(0.015), 0.45 + j(0.015), 0.14 + j(0.01), 0.29 + j(0.015)),
        "heart": (0.55 + j(0.01), 0.63 + j(0.01), 0.12 + j(0.008), 0.1 + j(0.008)),
        "aorta": (0.58 + j(0.01), 0.29 + j(0.01)),
    }


def _point_in_lung(rng, lung, xs=(0.0, 0.5)):
    """A random point inside a lung, at most ``xs[1]`` of its half-width from its centre line."""
    cx, cy, rx, ry = lung
    return cx + rx * rng.uniform(*xs) * rng.choice([-1, 1]), cy + ry * rng.uniform(-0.6, 0.6)


def _box(cx, cy, rx, ry):
    return [cx - rx, cy - ry, cx + rx, cy + ry]


def draw_finding(c: Canvas, rng: np.random.Generator, cls: int, anat: dict) -> list[float]:
    """Draw one finding of class ``cls`` on the canvas; return its box (normalised xyxy)."""
    px = 1.0 / c.h
    side = anat[rng.choice(["right", "left"])]
    lx, ly, lrx, lry = side
    if cls == 0:  # Aortic enlargement: a bulging bright aortic knob
        ax, ay = anat["aorta"]
        r = rng.uniform(0.045, 0.06)
        c.img += 0.35 * c.soft(c.ellipse(ax + 0.01, ay, r, r), 1.0)
        return _box(ax + 0.01, ay, r, r)
    if cls == 1:  # Atelectasis: a thin plate-like bright band in a lower lung
        cx, cy = lx + rng.uniform(-0.4, 0.4) * lrx, ly + rng.uniform(0.3, 0.6) * lry
        hw, hh = rng.uniform(0.05, 0.08), rng.uniform(0.008, 0.014)
        c.img += 0.35 * c.soft(c.ellipse(cx, cy, hw, hh), 0.7)
        return _box(cx, cy, hw, hh + 0.01)
    if cls == 2:  # Calcification: a cluster of tiny very bright dots
        cx, cy = lx + rng.uniform(-0.5, 0.5) * lrx, ly + rng.uniform(-0.6, 0.3) * lry
        dots = rng.uniform(-0.018, 0.018, size=(rng.integers(3, 6), 2))
        for dx, dy in dots:
            c.img += 0.6 * c.soft(c.ellipse(cx + dx, cy + dy, 0.005, 0.005), 0.4)
        x0, y0 = (dots.min(0) + [cx, cy]) - 0.008
        x1, y1 = (dots.max(0) + [cx, cy]) + 0.008
        return [x0, y0, x1, y1]
    if cls == 3:  # Cardiomegaly: the heart shadow widened
        hx, hy, hrx, hry = anat["heart"]
        rx, ry = hrx * rng.uniform(1.5, 1.7), hry * rng.uniform(1.2, 1.35)
        c.img += 0.25 * c.soft(c.ellipse(hx, hy, rx, ry), 1.5)
        return _box(hx, hy, rx, ry)
    if cls == 4:  # Consolidation: a dense homogeneous patch with sharp edges
        cx, cy = _point_in_lung(rng, side, xs=(0.1, 0.4))
        rx, ry = rng.uniform(0.04, 0.07), rng.uniform(0.04, 0.07)
        c.img += 0.4 * c.soft(c.ellipse(cx, cy, rx, ry), 0.6)
        return _box(cx, cy, rx, ry)
    if cls == 5:  # ILD: a fine reticular (net-like) texture over a lower zone
        cx, cy = lx, ly + 0.45 * lry
        rx, ry = lrx * 0.7, rng.uniform(0.07, 0.1)
        net = (np.sin(c.x * 2 * np.pi / (6 * px)) * np.sin(c.y * 2 * np.pi / (6 * px))) > 0.3
        c.img += 0.3 * (c.ellipse(cx, cy, rx, ry) & net) * c.soft(c.ellipse(cx, cy, rx, ry), 2)
        return _box(cx, cy, rx, ry)
    if cls == 6:  # Infiltration: hazy patchy cloud
        cx, cy = _point_in_lung(rng, side, xs=(0.1, 0.4))
        r = rng.uniform(0.05, 0.08)
        noise = cv2.GaussianBlur(rng.random((c.h, c.w)).astype(np.float32), (0, 0), 2.0)
        patch = c.soft(c.ellipse(cx, cy, r, r), 3.0) * (noise > noise.mean())
        c.img += 0.35 * cv2.GaussianBlur(patch.astype(np.float32), (0, 0), 1.0)
        return _box(cx, cy, r, r)
    if cls == 7:  # Lung opacity: a smooth round haze
        cx, cy = _point_in_lung(rng, side, xs=(0.1, 0.45))
        r = rng.uniform(0.04, 0.06)
        c.img += 0.3 * np.exp(-(((c.x - cx) ** 2 + (c.y - cy) ** 2) / (2 * (r / 1.8) ** 2)))
        return _box(cx, cy, r, r)
    if cls == 8:  # Nodule/Mass: a small, sharp, round dense disk
        cx, cy = _point_in_lung(rng, side, xs=(0.1, 0.6))
        r = rng.uniform(0.015, 0.035)
        c.img += 0.5 * c.soft(c.ellipse(cx, cy, r, r), 0.5)
        return _box(cx, cy, r + 0.004, r + 0.004)
    if cls == 9:  # Other lesion: a bright ring
        cx, cy = _point_in_lung(rng, side, xs=(0.1, 0.5))
        r = rng.uniform(0.03, 0.045)
        ring = c.ellipse(cx, cy, r, r) & ~c.ellipse(cx, cy, r * 0.6, r * 0.6)
        c.img += 0.4 * c.soft(ring, 0.5)
        return _box(cx, cy, r, r)
    if cls == 10:  # Pleural effusion: the costophrenic angle filled, with a meniscus
        lateral = -1 if side is anat["right"] else 1
        level = ly + lry * rng.uniform(0.35, 0.55)
        fill = c.ellipse(lx, ly, lrx, lry) & (c.y > level - 0.08 * ((c.x - lx) * lateral).clip(0))
        fill &= (c.x - lx) * lateral > -0.4 * lrx
        c.img += 0.45 * c.soft(fill, 1.0)
        ys, xs = np.nonzero(fill)
        return [xs.min() / c.w, ys.min() / c.h, (xs.max() + 1) / c.w, (ys.max() + 1) / c.h]
    if cls == 11:  # Pleural thickening: a bright band along the apical/lateral pleura
        band = c.ellipse(lx, ly, lrx, lry) & ~c.ellipse(lx, ly + 0.02, lrx - 0.018, lry - 0.018)
        band &= c.y < ly - lry * rng.uniform(0.3, 0.5)
        c.img += 0.4 * c.soft(band, 0.6)
        ys, xs = np.nonzero(band)
        return [xs.min() / c.w, ys.min() / c.h, (xs.max() + 1) / c.w, (ys.max() + 1) / c.h]
    if cls == 12:  # Pneumothorax: a very dark lateral rim without markings, with a pleural line
        lateral = -1 if side is anat["right"] else 1
        lung = c.ellipse(lx, ly, lrx, lry)
        cut = lx + lateral * lrx * rng.uniform(0.35, 0.55)
        rim = lung & ((c.x - cut) * lateral > 0) & (c.y < ly + 0.4 * lry)
        c.img[rim] = 0.02
        line = lung & (np.abs(c.x - cut) < 1.5 * px) & (c.y < ly + 0.4 * lry)
        c.img += 0.3 * line
        ys, xs = np.nonzero(rim | line)
        return [xs.min() / c.w, ys.min() / c.h, (xs.max() + 1) / c.w, (ys.max() + 1) / c.h]
    if cls == 13:  # Pulmonary fibrosis: coarse streaks in an upper zone
        cx, cy = lx, ly - 0.5 * lry
        rx, ry = lrx * 0.6, rng.uniform(0.06, 0.09)
        streaks = np.abs(np.sin((c.x * 0.7 + c.y) * 2 * np.pi / (10 * px))) < 0.25
        c.img += 0.35 * (c.ellipse(cx, cy, rx, ry) & streaks)
        return _box(cx, cy, rx, ry)
    raise ValueError(f"no phantom signature for class {cls}")


def render(rng: np.random.Generator, h: int, findings: list[int]) -> tuple[np.ndarray, list]:
    """Render a phantom of canvas height ``h`` (width from ``h``) with the given finding classes.

    Returns:
        The canvas image (float32, roughly [0, 1]) and one normalised xyxy box per finding.
    """
    w = int(round(h * rng.uniform(0.85, 1.05)))
    c = Canvas(h, w)
    anat = _lung_centres(rng)
    c.img[:] = 0.04
    body = c.ellipse(0.5, 0.58, 0.47, 0.56)
    c.img[body] = 0.45  # soft tissue
    c.img[(np.abs(c.x - 0.5) < 0.045) & (c.y > 0.05)] = 0.62  # spine / mediastinum
    for key in ("right", "left"):
        c.img[c.ellipse(*anat[key])] = 0.16  # aerated lungs
    hx, hy, hrx, hry = anat["heart"]
    c.img += 0.5 * c.soft(c.ellipse(hx, hy, hrx, hry), 1.0)
    ax, ay = anat["aorta"]
    c.img += 0.3 * c.soft(c.ellipse(ax, ay, 0.025, 0.025), 1.0)
    ribs = (
        (np.abs(np.sin((c.y - 0.15 * (c.x - 0.5) ** 2) * 2 * np.pi * 9)) > 0.9)
        & (c.y < 0.75)
        & body
    )
    c.img += 0.07 * ribs
    boxes = [draw_finding(c, rng, cls, anat) for cls in findings]
    c.img = cv2.GaussianBlur(c.img, (0, 0), 0.6)
    c.img *= rng.uniform(0.9, 1.1)
    return c.img, [np.clip(b, 0.0, 1.0).tolist() for b in boxes]
