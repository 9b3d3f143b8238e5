"""The lesions FROC and the error breakdown count: one box per lesion, not one per reader.

VinBigData's images are read by three radiologists, each marking every lesion they see: one
nodule is up to three boxes. Scored as such, one correct detection finds a third of it. Here
the readers' boxes of each image and class are fused per lesion (the fusion validation uses,
WBF at IoU 0.4 unless told), and with ``truth="agreement"`` only the lesions at least two
readers marked are lesions, the others *ignore* regions (a detection there is neither a hit nor
a false positive). Labels with one reader per image (a consensus set) are lesions as given.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from cxrdet.data.boxes import pair_ious
from cxrdet.data.fusion import fuse_readers
from cxrdet.data.labels import BOX_COLUMNS, ground_truth, is_no_finding

TRUTHS = ("fused", "agreement")
LESION_FUSION = "wbf"  # how readers' boxes become lesions when the scored truth is unfused


def lesion_truth(
    labels: pd.DataFrame,
    image_ids,
    fusion: str = LESION_FUSION,
    fusion_iou: float = 0.4,
    truth: str = "fused",
) -> tuple[dict, dict]:
    """``(lesions, ignore)``: image id → (boxes, class ids), in ``image_ids`` order, from the
    readers' labels (train.csv rows, before fusion); see the module docstring. ``fusion``
    ``none`` fuses with :data:`LESION_FUSION` (a lesion is never one reader's mark)."""
    if truth not in TRUTHS:
        raise ValueError(f"unknown truth {truth!r}; expected one of {', '.join(TRUTHS)}")
    method = fusion if fusion != "none" else LESION_FUSION
    fused = fuse_readers(labels, method, fusion_iou)
    empty = {i: (np.zeros((0, 4)), np.zeros(0, np.int64)) for i in image_ids}
    if truth == "fused":
        return ground_truth(fused, image_ids), empty
    if labels["rad_id"].isna().all():
        raise ValueError(
            "truth=agreement counts the readers of each lesion: the labels have no rad_id column"
        )
    readers = readers_per_lesion(labels, fused, fusion_iou)
    agreed = is_no_finding(fused) | (readers >= 2)
    return ground_truth(fused[agreed], image_ids), {
        **empty,
        **ground_truth(fused[~agreed], sorted(set(fused.loc[~agreed, "image_id"]))),
    }


def readers_per_lesion(labels: pd.DataFrame, fused: pd.DataFrame, iou: float) -> np.ndarray:
    """For each fused row, how many distinct readers marked a box of its class on its image
    overlapping it at ``iou`` (0 for "No finding" rows)."""
    counts = np.zeros(len(fused), np.int64)
    marks = labels[~is_no_finding(labels)].groupby(["image_id", "class_id"])
    groups = {key: rows for key, rows in marks}
    for k, (image_id, class_id, box) in enumerate(
        zip(fused["image_id"], fused["class_id"], fused[BOX_COLUMNS].to_numpy(np.float64))
    ):
        rows = groups.get((image_id, class_id))
        if rows is None:
            continue
        boxes = rows[BOX_COLUMNS].to_numpy(np.float64)
        near = pair_ious(boxes, np.repeat(box[None], len(boxes), 0)) >= iou
        counts[k] = rows.loc[near, "rad_id"].nunique()
    return counts
