"""Dataset statistics behind the EDA figures: counts, box geometry, reader agreement."""

from __future__ import annotations

import numpy as np
import pandas as pd

from cxrdet.data.boxes import iou_matrix
from cxrdet.data.labels import BOX_COLUMNS, is_no_finding, names_of, normal_image_ids

GRID = 128  # heatmap resolution (normalised image coordinates)


def summarise(labels: pd.DataFrame) -> dict:
    """Counts for summary.json: rows, images, normal images, per class and per reader."""
    per_image = labels.groupby("image_id")["class_id"]
    findings = labels[~is_no_finding(labels)]
    names = names_of(labels)
    boxes_per_image = (
        findings.groupby("image_id").size().reindex(per_image.size().index, fill_value=0)
    )
    return {
        "rows": int(len(labels)),
        "images": int(labels["image_id"].nunique()),
        "normal_images": len(normal_image_ids(labels)),
        "class_counts": {
            names[c]: int(n) for c, n in labels["class_id"].value_counts().sort_index().items()
        },
        "images_per_class": {
            names[c]: int(n)
            for c, n in labels.groupby("class_id")["image_id"].nunique().sort_index().items()
        },
        "rad_counts": {
            str(r): int(n)
            for r, n in sorted(
                labels["rad_id"].value_counts().items(), key=lambda kv: _rad_order(kv[0])
            )
        },
        "boxes_per_image": {
            "mean": float(boxes_per_image.mean()),
            "max": int(boxes_per_image.max()) if len(boxes_per_image) else 0,
        },
    }


def _rad_order(rad: str):
    return (0, int(rad[1:])) if str(rad)[1:].isdigit() else (1, str(rad))


def relative_boxes(findings: pd.DataFrame, meta: pd.DataFrame) -> pd.DataFrame:
    """Finding boxes in [0, 1] image coordinates (rows without meta are dropped)."""
    joined = findings.join(meta[["dim0", "dim1"]], on="image_id", how="inner")
    rel = joined[BOX_COLUMNS].to_numpy(np.float64)
    rel /= joined[["dim1", "dim0", "dim1", "dim0"]].to_numpy(np.float64)
    out = pd.DataFrame(np.clip(rel, 0, 1), columns=BOX_COLUMNS, index=joined.index)
    out["class_id"] = joined["class_id"].to_numpy()
    return out


def heatmaps(rel: pd.DataFrame, num_findings: int) -> np.ndarray:
    """[num_findings, GRID, GRID] box coverage per class (2-D difference arrays, then
    cumulative sums)."""
    maps = np.zeros((num_findings, GRID + 1, GRID + 1), np.float64)
    cells = np.rint(rel[BOX_COLUMNS].to_numpy() * GRID).astype(int)
    c = rel["class_id"].to_numpy()
    x0, y0, x1, y1 = cells.T
    for ys, xs, sign in ((y0, x0, 1), (y0, x1, -1), (y1, x0, -1), (y1, x1, 1)):
        np.add.at(maps, (c, ys, xs), sign)
    return maps.cumsum(1).cumsum(2)[:, :GRID, :GRID]


def reader_agreement(findings: pd.DataFrame) -> dict[str, float]:
    """Per class: mean over boxes of the best IoU with another reader's boxes, same image.

    Only images where that class was marked by at least two readers count.
    """
    scores: dict[int, list[float]] = {}
    names = names_of(findings)
    for (_, cls), rows in findings.groupby(["image_id", "class_id"], sort=False):
        readers = rows["rad_id"].to_numpy()
        if len(set(readers)) < 2:
            continue
        boxes = rows[BOX_COLUMNS].to_numpy(np.float64)
        iou = iou_matrix(boxes, boxes)
        iou[readers[:, None] == readers[None, :]] = 0.0  # only other readers' boxes
        scores.setdefault(int(cls), []).extend(iou.max(1).tolist())
    return {names[c]: float(np.mean(v)) for c, v in sorted(scores.items())}
