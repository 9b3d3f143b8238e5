"""Ground truth and predictions as COCO JSON, for review tools (FiftyOne, CVAT).

Both files are whole COCO detection datasets: ``images`` (``<image_id>.png``, width and height
in original pixels), ``categories`` (the class set's findings, ``id`` = class id + 1, as COCO ids
start at 1) and ``annotations`` with ``bbox = [x, y, width, height]`` in original pixels;
predictions carry a ``score``. "No finding" is an image-level label, not a box: it is left out.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from cxrdet.data.classes import KAGGLE14, ClassSet


def categories(classes: ClassSet) -> list[dict]:
    return [
        {"id": c + 1, "name": name, "supercategory": "finding"}
        for c, name in enumerate(classes.findings)
    ]


def coco_dataset(
    table: dict, sizes: dict[str, tuple[int, int]], scored: bool, classes: ClassSet = KAGGLE14
) -> dict:
    """image id → (boxes, [scores,] class ids) as one COCO dataset over the images of ``sizes``
    (image id → original height, width), in that order; the findings of ``classes`` only."""
    images, annotations = [], []
    for number, (image_id, (height, width)) in enumerate(sizes.items(), start=1):
        images.append(
            {"id": number, "file_name": f"{image_id}.png", "width": width, "height": height}
        )
        if image_id not in table:
            continue
        value = table[image_id]
        boxes = np.asarray(value[0], np.float64).reshape(-1, 4)
        ids = np.asarray(value[-1]).reshape(-1)
        for k in np.flatnonzero(ids < classes.num_findings):
            x0, y0, x1, y1 = (round(float(v), 2) for v in boxes[k])
            annotation = {
                "id": len(annotations) + 1,
                "image_id": number,
                "category_id": int(ids[k]) + 1,
                "bbox": [x0, y0, round(x1 - x0, 2), round(y1 - y0, 2)],
                "area": round((x1 - x0) * (y1 - y0), 2),
                "iscrowd": 0,
            }
            if scored:
                annotation["score"] = round(float(value[1][k]), 4)
            annotations.append(annotation)
    return {"images": images, "annotations": annotations, "categories": categories(classes)}


def write_coco(
    gt: dict, dets: dict, sizes: dict, out_dir: str | Path, classes: ClassSet = KAGGLE14
) -> tuple[Path, Path]:
    """Write ``ground_truth.json`` and ``predictions.json`` into ``out_dir``; returns both."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = out / "ground_truth.json", out / "predictions.json"
    for path, table, scored in ((paths[0], gt, False), (paths[1], dets, True)):
        path.write_text(json.dumps(coco_dataset(table, sizes, scored, classes)))
    return paths
