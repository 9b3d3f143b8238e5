"""Fuse the radiologists' boxes of each image into one set (ensemble-boxes WBF or NMS).

Each reader of an image is one "model" with score 1 for every box; boxes are fused per class.
WBF with IoU 0.4 is what the competition's winners used. A reader's "No finding" next to
another reader's boxes does not veto them: an image with any finding keeps the fused findings
and loses its class-14 rows; an image that no reader marked keeps one "No finding" row.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from ensemble_boxes import nms, weighted_boxes_fusion

from cxrdet.data.labels import BOX_COLUMNS, is_no_finding, names_of, normal_image_ids

FUSIONS = ("none", "wbf", "nms")
FUSED_READER = "fused"


def fuse_image(rows: pd.DataFrame, method: str, iou: float) -> list[list]:
    """Fused ``[class_id, x_min, y_min, x_max, y_max]`` of one image's finding rows."""
    boxes = rows[BOX_COLUMNS].to_numpy(np.float64)
    scale = np.maximum(boxes[:, 2].max(), boxes[:, 3].max()) or 1.0  # ensemble-boxes wants [0, 1]
    readers = rows["rad_id"].fillna("").astype(str).to_numpy()
    groups = [readers == r for r in dict.fromkeys(readers)]
    args = (
        [boxes[g] / scale for g in groups],
        [np.ones(int(g.sum())) for g in groups],
        [rows["class_id"].to_numpy()[g] for g in groups],
    )
    if method == "wbf":
        fused, _, classes = weighted_boxes_fusion(*args, iou_thr=iou, skip_box_thr=0.0)
    else:
        fused, _, classes = nms(*args, iou_thr=iou)
    return [[int(c), *(b * scale).tolist()] for b, c in zip(fused, classes)]


def fuse_readers(labels: pd.DataFrame, method: str = "wbf", iou: float = 0.4) -> pd.DataFrame:
    """Fuse every image's reader boxes (see the module docstring); ``none`` returns ``labels``.

    Returns:
        Rows in train.csv columns with ``rad_id`` = ``fused``.
    """
    if method == "none":
        return labels
    if method not in FUSIONS:
        raise ValueError(f"unknown fusion {method!r}; expected one of {FUSIONS}")
    out = []
    none = is_no_finding(labels)
    for image_id, rows in labels[~none].groupby("image_id", sort=False):
        out += [[image_id, *r] for r in fuse_image(rows, method, iou)]
    normal = sorted(normal_image_ids(labels))
    if normal:  # "No finding" keeps its set's id
        out += [[i, int(labels.loc[none, "class_id"].iloc[0]), *[np.nan] * 4] for i in normal]
    fused = pd.DataFrame(out, columns=["image_id", "class_id", *BOX_COLUMNS])
    fused["class_id"] = fused["class_id"].astype(np.int64)
    names = names_of(labels)
    fused.insert(1, "class_name", [names[c] for c in fused["class_id"]])
    fused.insert(3, "rad_id", FUSED_READER)
    return fused
