"""Metric speed: competition mAP40, COCO-style AP40 and the radiology metrics on 3,000
images x 100 detections.

    python benchmarks/metrics.py [--images 3000] [--dets 100]

Random ground truth (1-6 boxes per image over 15 classes) and detections near it; prints the
seconds of each metric (target <= 1 s each for mAP40 and AP40), then of FROC, the error
breakdown and the readers' baseline (three readers of 17 per image, each with its own jitter of
the boxes: the leave-one-out truths, made once per validation, and the scoring, made each
time), and of the 95 % bootstrap intervals of mAP40 and the CPM (1,000 resamples, target
<= 10 s together on 2 cores); the last line is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import pandas as pd

from cxrdet.data.labels import BOX_COLUMNS, CLASS_NAMES
from cxrdet.evaluation.bootstrap import (
    bootstrap_ap40,
    bootstrap_cpm,
    bootstrap_map,
    image_weights,
    interval,
)
from cxrdet.evaluation.coco import coco_ap, coco_matches
from cxrdet.evaluation.competition import competition_map, match_detections
from cxrdet.evaluation.errors import error_breakdown
from cxrdet.evaluation.evaluator import findings_only
from cxrdet.evaluation.froc import froc, lesion_scores
from cxrdet.evaluation.readers import leave_one_out, readers_baseline


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


def reader_labels(gt: dict, seed: int = 0) -> pd.DataFrame:
    """Three readers of 17 per image, each marking every box with its own jitter."""
    rng = np.random.default_rng(seed)
    rows = []
    for image_id, (boxes, classes) in gt.items():
        for reader in rng.choice(17, 3, replace=False):
            jitter = boxes + rng.normal(0, 15, boxes.shape)
            jitter[:, 2:] = np.maximum(jitter[:, 2:], jitter[:, :2] + 1)
            for b, c in zip(jitter, classes):
                rows.append(
                    [image_id, c, f"R{reader + 1}", *b]
                    if c != 14
                    else [image_id, 14, f"R{reader + 1}", *[np.nan] * 4]
                )
    frame = pd.DataFrame(rows, columns=["image_id", "class_id", "rad_id", *BOX_COLUMNS])
    frame.insert(1, "class_name", [CLASS_NAMES[c] for c in frame["class_id"]])
    return frame


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
    curve, t_froc = timed(lambda: froc(gt, det))
    errors, t_errors = timed(lambda: error_breakdown(gt, det))
    sets, t_sets = timed(lambda: leave_one_out(reader_labels(gt)))
    readers, t_readers = timed(lambda: readers_baseline(sets, det))
    weights = image_weights(len(gt), 1000, 0)
    map_ci, t_map_ci = timed(lambda: interval(bootstrap_map(match_detections(gt, det), weights)))

    def cpm_ci():
        (best, _, image), (fp, _, fp_image) = lesion_scores(gt, {}, det, 0.4, True)
        return interval(bootstrap_cpm(best, image, fp, fp_image, weights))

    cpm_interval, t_cpm_ci = timed(cpm_ci)
    ap40_interval, t_ap40_ci = timed(
        lambda: interval(
            bootstrap_ap40(coco_matches(findings_only(gt), findings_only(det), 14), weights)
        )
    )
    out = {
        "mAP40": round(comp["mAP"], 4),
        "mAP40_s": round(t_comp, 3),
        "AP40": round(coco["AP"], 4),
        "AP40_s": round(t_coco, 3),
        "CPM": round(curve["CPM"], 4),
        "froc_s": round(t_froc, 3),
        "errors_s": round(t_errors, 3),
        "error_rows": len(errors["errors"]),
        "leave_one_out_s": round(t_sets, 3),
        "readers_s": round(t_readers, 3),
        "readers_mAP40": round(readers["readers_mAP40"], 4),
        "mAP40_ci": [round(v, 4) for v in map_ci],
        "mAP40_ci_s": round(t_map_ci, 3),
        "CPM_ci": [round(v, 4) for v in cpm_interval],
        "CPM_ci_s": round(t_cpm_ci, 3),
        "AP40_ci": [round(v, 4) for v in ap40_interval],
        "AP40_ci_s": round(t_ap40_ci, 3),
    }
    print(
        f"competition mAP40: {t_comp:.3f} s; COCO-style AP40: {t_coco:.3f} s "
        f"on {a.images} images x {a.dets} detections (target <= 1 s each)"
    )
    print(
        f"FROC {t_froc:.3f} s; error breakdown {t_errors:.3f} s ({len(errors['errors'])} errors); "
        f"readers' leave-one-out truths {t_sets:.3f} s (once), their scoring {t_readers:.3f} s"
    )
    print(
        f"bootstrap intervals (1,000 resamples): mAP40 {t_map_ci:.3f} s, CPM {t_cpm_ci:.3f} s, "
        f"AP40 {t_ap40_ci:.3f} s (target <= 10 s for mAP40 and the CPM together)"
    )
    print(json.dumps(out))


if __name__ == "__main__":
    main()
