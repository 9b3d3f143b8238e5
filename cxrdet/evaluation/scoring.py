"""A submission file scored against a labels file: mAP40 and AP40 with their intervals, and the
radiology metrics asked for. ``cxrdet score`` (:mod:`cxrdet.evaluation.score`) prints it;
``cxrdet cv``, the demo and the benchmarks call :func:`score` directly."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from cxrdet.data.fusion import fuse_readers
from cxrdet.data.labels import ground_truth, read_labels
from cxrdet.data.meta import read_meta
from cxrdet.data.splits import split_ids
from cxrdet.evaluation.bootstrap import ap40_interval, image_weights, map_interval
from cxrdet.evaluation.coco import coco_matches
from cxrdet.evaluation.coco_json import write_coco
from cxrdet.evaluation.evaluator import findings_only, score_predictions
from cxrdet.evaluation.radiology import READERS_FUSION, radiology_scores
from cxrdet.evaluation.submission import SubmissionError, read_submission


def split_hint(submission_csv: str, labels) -> str | None:
    """When a submission holds exactly the validation images of one of training's default
    splits (valid20 with seed 111, or a kfold fold), the options that score just those."""
    ids = set(pd.read_csv(submission_csv, dtype={"image_id": str}, usecols=["image_id"]).image_id)
    candidates = [("valid20", 0)] + [("kfold", k) for k in range(5)]
    for mode, fold in candidates:
        try:
            val_ids = split_ids(labels, mode, fold=fold)[1]
        except ValueError:  # too few images for that split: not the one
            continue
        if set(val_ids) == ids:
            option = "--split valid20" if mode == "valid20" else f"--split kfold --fold {fold}"
            return (
                f"; it holds exactly the validation images of {option} (seed 111): add "
                f"{option} to score those"
            )
    return None


def score(
    labels_csv: str,
    submission_csv: str,
    iou: float = 0.4,
    fusion: str = "none",
    split: str | None = None,
    fold: int = 0,
    seed: int = 111,
    fusion_iou: float = 0.4,
    val_fraction: float = 0.2,
    n_folds: int = 5,
    coco_out: str | None = None,
    meta_csv: str | None = None,
    image_ids: list[str] | None = None,
    readers: bool = False,
    froc: bool = False,
    errors: bool = False,
    truth: str = "fused",
    bootstrap: int = 0,
    bootstrap_seed: int = 0,
    classes: str | None = None,
) -> dict:
    """Both metrics of a submission (:mod:`cxrdet.evaluation.score` describes them).

    ``classes`` (``kaggle14``, ``local22``; by default the labels file's own,
    :func:`cxrdet.data.labels.read_labels`) sets the ids of the labels and of the submission.

    ``iou`` is the metric's threshold and ``fusion_iou`` the one at which ``fusion`` merges the
    readers' boxes (training's ``data.fusion_iou``). With ``split`` (``valid20`` or ``kfold``),
    only the validation images of that split of ``labels_csv`` are scored — the same images
    training validated on for that seed, fraction, fold and fold count; ``image_ids`` keeps only
    those images (the pooled out-of-fold predictions of ``cxrdet cv``). With ``coco_out``,
    the ground truth and the submission are also written there as COCO JSON
    (:mod:`cxrdet.evaluation.coco_json`), image sizes from ``meta_csv`` (prepare's meta CSV).
    ``readers``, ``froc``, ``errors`` add those radiology metrics (``"radiology"``), FROC and
    the errors over the lesions ``truth`` defines. ``bootstrap`` resamples of the images
    (seeded with ``bootstrap_seed``) give ``mAP40_ci`` and FROC's ``CPM_ci``, 95 % intervals
    (:mod:`cxrdet.evaluation.bootstrap`).
    """
    if coco_out and not meta_csv:
        raise ValueError("--coco-out needs --meta (the meta CSV with the original image sizes)")
    labels, report = read_labels(labels_csv, classes)
    class_set = report.classes
    all_labels = labels
    if split:
        _, val_ids = split_ids(labels, split, val_fraction, seed, fold, n_folds)
        labels = labels[labels["image_id"].isin(set(val_ids))]
    if image_ids is not None:
        labels = labels[labels["image_id"].isin(set(image_ids))]
    by_reader = labels
    labels = fuse_readers(labels, fusion, fusion_iou)
    image_ids = sorted(labels["image_id"].unique())
    try:
        sub = read_submission(submission_csv, image_ids=image_ids, classes=class_set)
    except SubmissionError as e:
        hint = None
        if split is None and Path(submission_csv).is_file():
            hint = split_hint(submission_csv, all_labels)
        raise SubmissionError(f"{e}{hint}" if hint else str(e)) from None
    gt = ground_truth(labels, image_ids)
    result = score_predictions(gt, sub, iou=iou, classes=class_set)
    if coco_out:
        meta = read_meta(meta_csv)
        missing = [i for i in image_ids if i not in meta.index]
        if missing:
            raise ValueError(f"{meta_csv}: no size for {len(missing)} image(s), e.g. {missing[0]}")
        sizes = {i: (int(meta.at[i, "dim0"]), int(meta.at[i, "dim1"])) for i in image_ids}
        write_coco(gt, sub, sizes, coco_out, class_set)
    weights = image_weights(len(gt), bootstrap, bootstrap_seed) if bootstrap else None
    map_ci = ap40_ci = None
    if weights is not None:
        map_ci = map_interval(gt, sub, weights, iou)
        matches = coco_matches(
            findings_only(gt, class_set), findings_only(sub, class_set), class_set.num_findings, iou
        )
        ap40_ci = ap40_interval(matches, result["AP40_per_class"], weights)
    radiology = {}
    if readers or froc or errors:
        radiology = radiology_scores(
            gt,
            sub,
            by_reader,
            readers,
            froc,
            errors,
            iou,
            fusion if fusion != "none" else READERS_FUSION,
            fusion_iou,
            truth,
            bootstrap,
            bootstrap_seed,
            class_set,
        )
    return {
        "radiology": radiology,
        "scored": (gt, sub),
        "mAP40": result["mAP40"],
        "mAP40_ci": map_ci,
        "AP40": result["AP40"],
        "AP40_ci": ap40_ci,
        "per_class": result["mAP40_per_class"],
        "AP40_per_class": result["AP40_per_class"],
        "images": result["images"],
        "classes": class_set,
    }
