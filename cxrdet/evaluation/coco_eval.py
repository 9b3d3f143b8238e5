"""The full COCO box evaluation, by pycocotools' ``COCOeval`` (the reference Detectron2 and
MMDetection report their model-zoo tables with): AP@[.5:.95], AP50, AP75 and AP over small,
medium and large boxes, for comparing a run with those tables.

The boxes are in original DICOM pixels, so COCO's area ranges (small under 32², large over
96²) are judged on them: on 2,000-3,000-px radiographs most findings are "large". The 14
findings only ("No finding" is image-level, not a box). ``faster-coco-eval`` gives the same
numbers faster (``backend="faster_coco_eval"``). A figure COCO cannot define (no ground truth
in an area range) is -1, as pycocotools reports it.
"""

from __future__ import annotations

import contextlib
import io

from cxrdet.data.classes import KAGGLE14, ClassSet
from cxrdet.evaluation.coco_json import coco_dataset

BACKENDS = ("pycocotools", "faster_coco_eval")
STATS = ("AP", "AP50", "AP75", "APs", "APm", "APl")  # COCOeval.stats[0:6], in this order


def coco_stats(
    gt: dict, dets: dict, sizes: dict, backend: str = "pycocotools", classes: ClassSet = KAGGLE14
) -> dict:
    """COCO's six AP figures of ``dets`` against ``gt``.

    Args:
        gt: image id → (boxes [N, 4] xyxy, class ids [N]), original pixels.
        dets: image id → (boxes, scores, class ids), original pixels.
        sizes: image id → original (height, width), every evaluated image.
        backend: ``pycocotools`` or ``faster_coco_eval``.
        classes: the class set of the ids (its findings are scored).

    Returns:
        ``{"AP", "AP50", "AP75", "APs", "APm", "APl"}``.
    """
    if backend == "pycocotools":
        from pycocotools.coco import COCO
        from pycocotools.cocoeval import COCOeval
    elif backend == "faster_coco_eval":
        from faster_coco_eval import COCO
        from faster_coco_eval import COCOeval_faster as COCOeval
    else:
        raise ValueError(f"unknown COCO backend {backend!r}; expected one of {', '.join(BACKENDS)}")
    truth = coco_dataset(gt, sizes, False, classes)
    results = coco_dataset(dets, sizes, True, classes)["annotations"]
    if not truth["annotations"]:
        return dict.fromkeys(STATS, -1.0)  # nothing to find: COCO's "undefined"
    if not results:
        return dict.fromkeys(STATS, 0.0)  # nothing found
    with contextlib.redirect_stdout(io.StringIO()):  # both print their progress and table
        coco_gt = COCO()
        coco_gt.dataset = truth
        coco_gt.createIndex()
        coco_dt = coco_gt.loadRes(results)
        evaluation = COCOeval(coco_gt, coco_dt, "bbox")
        evaluation.evaluate()
        evaluation.accumulate()
        evaluation.summarize()
    return {name: float(value) for name, value in zip(STATS, evaluation.stats)}
