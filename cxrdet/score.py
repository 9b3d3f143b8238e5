"""Score a submission against labels locally.

    python -m cxrdet.score --labels test_labels.csv --submission submission.csv [--json]

LABELS is in train.csv format (boxes in original pixels; several readers are all kept as ground
truth). Prints AP40 — COCO-style 101-point AP at IoU 0.4, 100 detections per image, over the
finding classes 0..13, the same code as ``val/AP40`` in training — and a per-class table.
"""

from __future__ import annotations

import argparse
import json
import sys

import numpy as np

from cxrdet.labels import BOX_COLUMNS, CLASS_NAMES, NO_FINDING, NUM_FINDINGS, read_labels
from cxrdet.metrics import coco_ap
from cxrdet.submission import SubmissionError, read_submission


def score(labels_csv: str, submission_csv: str, iou: float = 0.4) -> dict:
    """AP at ``iou`` of a submission over the finding classes; see the module docstring."""
    labels, _ = read_labels(labels_csv)
    image_ids = sorted(labels["image_id"].unique())
    sub = read_submission(submission_csv, image_ids=image_ids)
    findings = labels[labels["class_id"] != NO_FINDING]
    gt = {i: (np.zeros((0, 4)), np.zeros(0, np.int64)) for i in image_ids}
    for image_id, rows in findings.groupby("image_id"):
        gt[image_id] = (rows[BOX_COLUMNS].to_numpy(), rows["class_id"].to_numpy())
    dets = {}
    for image_id, (boxes, scores, classes) in sub.items():
        keep = classes != NO_FINDING
        dets[image_id] = (boxes[keep], scores[keep], classes[keep])
    result = coco_ap(gt, dets, NUM_FINDINGS, iou=iou)
    return {"AP40": result["AP"], "per_class": result["per_class"], "images": len(image_ids)}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m cxrdet.score", description=__doc__.split("\n")[0])
    p.add_argument("--labels", required=True, help="ground truth in train.csv format")
    p.add_argument("--submission", required=True, help="image_id,PredictionString CSV")
    p.add_argument("--iou", type=float, default=0.4, help="IoU threshold (default 0.4)")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    a = p.parse_args(argv)
    try:
        result = score(a.labels, a.submission, a.iou)
    except (FileNotFoundError, SubmissionError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if a.json:
        per_class = {str(k): v for k, v in result["per_class"].items()}
        print(json.dumps({**result, "per_class": per_class}))
        return 0
    print(f"AP40 {result['AP40']:.4f} over {result['images']} images")
    for c, v in sorted(result["per_class"].items()):
        print(f"  {c:2d} {CLASS_NAMES[c]:<20s} {v:.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
