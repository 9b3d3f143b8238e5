"""Metric speed: competition mAP40 and COCO-style AP40 on 3,000 images x 100 detections.

    python benchmarks/metrics.py [--images 3000] [--dets 100]

Random ground truth (1-6 boxes per image over 15 classes) and detections near it; prints the
seconds of each metric (target <= 1 s each); the last line is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np

from cxrdet.evaluation.coco import coco_ap
from cxrdet.evaluation.competition import competition_map


def make(images: int, dets: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    gt, det = {}, {}
    for i in range(images):
        n = rng.integers(1, 7)
        xy = rng.uniform(0, 2000, (n, 2))
        g = np.hstack([xy, xy + rng.uniform(50, 600, (n, 2))])
        gc = rng.integers(0, 15, n)
        pick = rng.integers(0, n, dets)
        d = g[pick] + rng.normal(0, 40, (dets, 4))
        d[:, 2:] = np.maximum(d[:, 2:], d[:, :2] + 1)
        gt[f"{i:032x}"] = (g, gc)
        det[f"{i:032x}"] = (
            d,
            rng.random(dets),
            np.where(rng.random(dets) < 0.7, gc[pick], rng.integers(0, 15, dets)),
        )
    return gt, det


def timed(fn):
    start = time.perf_counter()
    result = fn()
    return result, time.perf_counter() - start


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--images", type=int, default=3000)
    p.add_argument("--dets", type=int, default=100)
    a = p.parse_args()
    gt, det = make(a.images, a.dets)
    comp, t_comp = timed(lambda: competition_map(gt, det))
    coco, t_coco = timed(lambda: coco_ap(gt, det, 15))
    out = {
        "mAP40": round(comp["mAP"], 4),
        "mAP40_s": round(t_comp, 3),
        "AP40": round(coco["AP"], 4),
        "AP40_s": round(t_coco, 3),
    }
    print(
        f"competition mAP40: {t_comp:.3f} s; COCO-style AP40: {t_coco:.3f} s "
        f"on {a.images} images x {a.dets} detections (target <= 1 s each)"
    )
    print(json.dumps(out))


if __name__ == "__main__":
    main()
