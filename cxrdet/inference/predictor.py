"""Batched inference → Kaggle ``submission.csv`` in original pixels.

Inputs are prepared PNGs with their meta CSV, or DICOMs converted on the fly exactly as
``prepare`` does. One checkpoint or several (a WBF ensemble), optionally with horizontal-flip
TTA fused the same way; then the "No finding" line or an image-level classifier's filter.
"""

from __future__ import annotations

import json
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

import cv2
import numpy as np
import torch
from tqdm import tqdm

from cxrdet import __version__
from cxrdet.data.boxes import to_prepared
from cxrdet.data.classes import KAGGLE14, ClassSet
from cxrdet.data.cpus import worker_count
from cxrdet.data.dataset import (
    DicomDataset,
    ImageDataset,
    grey_pixels,
    load_png,
    prediction_loader,
)
from cxrdet.data.probs_csv import read_probs, write_probs
from cxrdet.evaluation.nofinding import nofinding_filter, with_no_finding
from cxrdet.evaluation.submission import (
    empty_prediction,
    format_prediction,
    predictions_of,
    read_submission,
    to_original_prediction,
    write_submission,
)
from cxrdet.inference.config import PredictConfig
from cxrdet.inference.exported import ExportedDetector, load_exported
from cxrdet.inference.nofinding_probs import (
    batch_outputs,
    check_tta,
    load_classifiers,
    write_diagnoses,
)
from cxrdet.inference.postprocess import fuse_predictions, hflip_boxes
from cxrdet.models.precision import autocast, autocast_dtype, choose_precision
from cxrdet.models.safe_load import safe_load
from cxrdet.reports.draw import draw_boxes

log = logging.getLogger(__name__)
PROBS_CSV = "nofinding_probs.csv"  # the filter's P(abnormal), written beside the submission
DIAGNOSES_CSV = "diagnoses.csv"  # global6 classifiers' P(diagnosis), beside the submission


def has_class14_head(model) -> bool:
    """Whether a detector (torchvision's, or an exported file) was trained with "No finding"
    as a class: its box head has the findings + "No finding" + background."""
    if hasattr(model, "roi_heads"):
        findings = getattr(model, "classes", KAGGLE14).num_findings
        return model.roi_heads.box_predictor.cls_score.out_features > findings + 1
    return bool(getattr(model, "class14", False))


def class_set_of(models) -> ClassSet:
    """The class set the detectors write ids of (``load_models`` and an exported file record
    it; Kaggle's for a model without one); an ensemble of different sets is refused."""
    sets = {getattr(m, "classes", KAGGLE14) for m in models}
    if len(sets) > 1:
        names = ", ".join(sorted(s.name for s in sets))
        raise ValueError(f"the detectors were trained on different class sets ({names})")
    return sets.pop() if sets else KAGGLE14


def trained_size(ckpt_path, model_file: str | None, trust: bool = False) -> int:
    """The prepared size the (first) checkpoint, or the exported file, was trained at."""
    if model_file:
        return load_exported(model_file)[1]["prepared_size"]
    first = ckpt_path if isinstance(ckpt_path, str | Path) else list(ckpt_path)[0]
    hparams = safe_load(first, trust, mmap=True)["hyper_parameters"]
    return int(hparams["model"].get("image_size", 512))


def warn_other_size(dataset, image_size: int) -> None:
    """Say so when the PNGs are not the size the model trained at (it rescales them)."""
    if not isinstance(dataset, ImageDataset) or not dataset.ids:
        return
    side = max(load_png(dataset.image_dir / f"{dataset.ids[0]}.png").shape)
    if side != image_size:
        log.warning(
            "%s holds %d-px PNGs and the model trained on %d-px ones: it rescales them; "
            "prepared_size=%d (or null: the checkpoint's size) picks <prepared>/%d",
            dataset.image_dir,
            side,
            image_size,
            image_size,
            image_size,
        )


def pick_device(name: str = "auto") -> torch.device:
    """``auto`` → CUDA when available, else CPU; or an explicit torch device string."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def load_models(
    ckpt_paths: list[str],
    device,
    score_thresh: float | None,
    max_detections: int | None,
    trust: bool = False,
    opt_in: str = "trust_checkpoint=true",
):
    """Detectors in eval mode and the prepared image size the first was trained on.

    A None ``score_thresh`` or ``max_detections`` keeps each checkpoint's own (the one its
    validation scored with); a value replaces it. ``trust``, ``opt_in``:
    :func:`cxrdet.models.module.read_checkpoint`.
    """
    from cxrdet.models.module import load_detector  # Lightning: only when predicting checkpoints

    models, image_size = [], None
    for path in ckpt_paths:
        module = load_detector(path, trust, opt_in)
        model = module.model.to(device).eval()
        model.classes = module.classes  # the ids it writes (class_set_of)
        if score_thresh is not None:
            model.roi_heads.score_thresh = score_thresh
        if max_detections is not None:
            model.roi_heads.detections_per_img = max_detections
        models.append(model)
        image_size = image_size or int(module.hparams.model.get("image_size", 512))
    return models, image_size


@dataclass
class PassOptions:
    """How :func:`predict_dataset` runs its models over a dataset.

    Attributes:
        batch_size: images per batch.
        num_workers: loader worker processes reading the images.
        tta: ``none`` or ``hflip`` (each model also sees the flipped image; views fused by WBF).
        weights: each model's weight in the WBF fusion (None: equal).
        fusion_iou, fusion_skip: WBF's IoU and the score below which it drops boxes first.
        max_detections: boxes kept per image after the fusion (None: all).
        progress: show a progress bar.
        precision: the autocast precision (``32-true``, ``16-mixed``, ``bf16-mixed``).
        classifier_tta: the No-finding classifiers' own TTA (``none`` or ``hflip``).
    """

    batch_size: int = 4
    num_workers: int = 0
    tta: str = "none"
    weights: list[float] | None = None
    fusion_iou: float = 0.55
    fusion_skip: float = 0.0
    max_detections: int | None = 100
    progress: bool = True
    precision: str = "32"
    classifier_tta: str = "none"


@torch.inference_mode()
def predict_dataset(
    models,
    dataset,
    device,
    options: PassOptions | None = None,
    classifiers: list | None = None,
    on_result=None,
    diagnoses: dict | None = None,
) -> tuple[dict, dict, dict]:
    """Run every model (and its flipped view with ``options.tta="hflip"``) over ``dataset``,
    and the "No finding" classifiers, if any, on the same batches (each image is read once).

    Each batch's detections come to the host in one copy per model and view; ``on_result``,
    if given, is called with each image's id, prediction and P(abnormal) (None without
    classifiers) as soon as the image is done. ``diagnoses``, if given, gets image id → the
    diagnoses classifiers' mean P(diagnosis) (:func:`batch_outputs`; none without them).

    Returns:
        image id → (boxes in original pixels, scores, class ids), fused with WBF when there is
        more than one view; image id → error for images that could not be read; and image id →
        the classifiers' mean P(abnormal) (:func:`batch_outputs`; empty without classifiers).
    """
    o = options or PassOptions()
    check_tta(o.tta, "tta")
    check_tta(o.classifier_tta)
    weights = list(o.weights) if o.weights else [1.0] * len(models)
    if len(weights) != len(models):
        raise ValueError(f"{len(weights)} weights for {len(models)} checkpoints")
    no_finding = class_set_of(models).no_finding
    loader = prediction_loader(dataset, o.batch_size, o.num_workers, device)
    device = torch.device(device)
    results, errors, probs = {}, {}, {}
    for images, infos in tqdm(loader, desc="predict", unit="batch", disable=not o.progress):
        batch = [im.to(device, non_blocking=True) for im in images]
        views = []  # (outputs per image on the host, flipped?, weight)
        with autocast(device, o.precision):
            for model, weight in zip(models, weights):
                views.append((predictions_of(model(batch)), False, weight))
                if o.tta == "hflip":
                    flipped = model([im.flip(-1) for im in batch])
                    views.append((predictions_of(flipped), True, weight))
            p_abnormal, p_diagnoses = None, None
            if classifiers:
                p_abnormal, p_diagnoses = batch_outputs(classifiers, batch, o.classifier_tta)
        for k, (image, info) in enumerate(zip(images, infos)):
            image_id = info["image_id"]
            if info.get("error"):
                errors[image_id] = info["error"]
                continue
            if p_abnormal is not None:
                probs[image_id] = float(p_abnormal[k])
            if p_diagnoses is not None and diagnoses is not None:
                diagnoses[image_id] = p_diagnoses[k]
            hw = tuple(image.shape[-2:])
            sets = []
            for outputs, flipped, _ in views:
                boxes, scores, classes = outputs[k]
                sets.append((hflip_boxes(boxes, hw[1]) if flipped else boxes, scores, classes))
            boxes, scores, classes = fuse_predictions(
                sets, hw, [w for *_, w in views], o.fusion_iou, o.fusion_skip
            )
            top = np.argsort(-scores, kind="stable")[: o.max_detections]
            results[image_id] = to_original_prediction(
                (boxes[top], scores[top], classes[top]),
                info["orig_hw"],
                hw,
                info["content"],
                no_finding,
            )
            if on_result is not None:
                on_result(image_id, results[image_id], probs.get(image_id))
    return results, errors, probs


def write_viz(
    dataset, results: dict, out_dir: Path, n: int, min_score: float = 0.3, names=None
) -> None:
    """The first ``n`` images with their predicted boxes (original-pixel boxes drawn to scale);
    ``names``: the class set's names by id."""
    out_dir.mkdir(parents=True, exist_ok=True)
    for i in range(min(n, len(dataset))):
        image, info = dataset[i]
        if info["image_id"] not in results:
            continue
        boxes, scores, classes = results[info["image_id"]]
        hw = tuple(image.shape[-2:])
        small = grey_pixels(image)
        drawn = draw_boxes(
            small,
            to_prepared(boxes, info["orig_hw"], hw, info["content"]),
            classes,
            scores,
            min_score,
            names,
        )
        cv2.imwrite(str(out_dir / f"{info['image_id']}.png"), drawn)


def predict(
    cfg: PredictConfig, image_ids: list[str] | None = None, opt_in: str = "trust_checkpoint=true"
) -> dict:
    """Write ``cfg.output`` (submission.csv) with one row per image; returns a summary.

    ``cfg.ckpt_path`` is one checkpoint or a list (a WBF ensemble, ``cfg.ensemble_weights``
    optional). Images come from ``cfg.dicom_dir`` when given, else ``cfg.image_dir`` +
    ``cfg.meta_csv``. Each row gets ``14 <1 - top score> 0 0 1 1`` with ``cfg.nofinding_line``,
    or, with ``cfg.nofinding.probs`` (``image_id,p_abnormal``), the classifier filter of
    :func:`nofinding_filter`. ``image_ids`` restricts prepared PNGs to those images (a split's
    validation images). Checkpoints that need full unpickling load only with
    ``cfg.trust_checkpoint`` (``opt_in`` names that setting in the refusal: ``--trust`` for
    the tools). See :class:`cxrdet.inference.config.PredictConfig`.
    """
    workers = worker_count(cfg.num_workers, key="num_workers")  # a bad value: before any work
    kinds = list(cfg.results.dicom or [])
    if kinds:  # highdicom and DICOM's code tables load only for DICOM results
        from cxrdet.inference.dicom_results import Algorithm, check_kinds, model_sha256, write_all

        check_kinds(kinds)
    if kinds and not cfg.dicom_dir:
        raise ValueError(
            f"results.dicom={kinds}: DICOM results reference their source image: predict from "
            "DICOMs (dicom_dir=, or source=dicomweb), not prepared PNGs"
        )
    if cfg.model_file:  # an exported detector (cxrdet export) instead of checkpoints
        ckpts = []
    elif isinstance(cfg.ckpt_path, str | Path):
        ckpts = [cfg.ckpt_path]
    else:
        ckpts = list(cfg.ckpt_path)
    dataset = None
    if not cfg.dicom_dir:  # read before the models load: a bad path fails fast
        dataset = ImageDataset(cfg.image_dir, cfg.meta_csv, image_ids)
    dev = pick_device(cfg.device)
    precision = choose_precision(cfg.precision, dev.type, "precision", dev.index)
    autocast_dtype(precision)  # an unknown precision fails here, before the models load
    if cfg.model_file:
        exported = ExportedDetector(cfg.model_file, cfg.score_thresh, dev)
        models, image_size = [exported], exported.prepared_size
    else:
        models, image_size = load_models(
            ckpts, dev, cfg.score_thresh, cfg.max_detections, cfg.trust_checkpoint, opt_in
        )
    max_detections = cfg.max_detections
    if max_detections is None:  # the fused boxes are capped as each model caps its own
        caps = [m.roi_heads.detections_per_img for m in models if hasattr(m, "roi_heads")]
        max_detections = max(caps) if caps else None  # an exported file's cap is built in
    if dataset is None:  # DICOMs are resized to the size the (first) model was trained at
        dataset = DicomDataset(cfg.dicom_dir, image_size, cfg.keep_ratio, cfg.dicom_max_pixels)
    warn_other_size(dataset, image_size)
    nofinding = cfg.nofinding
    if nofinding.probs and nofinding.ckpt_path:
        raise ValueError("nofinding.probs and nofinding.ckpt_path both given: pass one")
    probs = read_probs(nofinding.probs, dataset.ids) if nofinding.probs else None
    classifiers = None
    if nofinding.ckpt_path:
        classifiers = load_classifiers(nofinding.ckpt_path, dev, cfg.trust_checkpoint, opt_in)
    class14 = any(has_class14_head(m) for m in models)  # the line's one source
    classes = class_set_of(models)
    no_finding, empty = classes.no_finding, empty_prediction(classes)
    rows = {}  # formatted in a thread of their own while the models run
    diagnoses: dict[str, list[float]] = {}

    def row(pred, p_abnormal):
        if p_abnormal is not None:
            pred = nofinding_filter(pred, p_abnormal, nofinding.low, nofinding.high, no_finding)
        elif cfg.nofinding_line:
            pred = with_no_finding(*pred, class14_head=class14, no_finding=no_finding)
        return pred, format_prediction(*pred, classes)  # the final boxes, and their row

    start = time.perf_counter()
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="submission") as writer:

        def on_result(image_id, pred, p_abnormal):
            p = probs[image_id] if probs is not None else p_abnormal
            rows[image_id] = writer.submit(row, pred, p)

        options = PassOptions(
            batch_size=cfg.batch_size,
            num_workers=workers,
            tta=cfg.tta,
            weights=cfg.ensemble_weights,
            fusion_iou=cfg.fusion_iou,
            fusion_skip=cfg.fusion_skip,
            max_detections=max_detections,
            progress=cfg.progress,
            precision=precision,
            classifier_tta=nofinding.tta,
        )
        results, errors, classifier_probs = predict_dataset(
            models,
            dataset,
            dev,
            options,
            classifiers=classifiers,  # P(abnormal) in the same pass, batched, at this precision
            on_result=on_result,
            diagnoses=diagnoses,  # and the 6 diagnoses of classifiers that learned them
        )
        finals = {i: rows[i].result() for i in dataset.ids if i not in errors}
        rows = {i: finals[i][1] if i in finals else empty for i in dataset.ids}
    seconds = time.perf_counter() - start
    if classifiers:
        probs = classifier_probs
    for image_id, error in errors.items():
        log.warning("%s: written as '%s': %s", image_id, empty, error)
    path = write_submission(rows, cfg.output)
    read_submission(path, dataset.ids, classes)  # the scorer's own checks, before "done"
    if probs is not None:  # what the filter used, beside the submission
        write_probs({i: probs[i] for i in dataset.ids if i in probs}, path.with_name(PROBS_CSV))
    if diagnoses:  # the release's 6 diagnoses: cxrdet score --diagnoses scores them
        write_diagnoses(
            {i: diagnoses[i] for i in dataset.ids if i in diagnoses}, path.with_name(DIAGNOSES_CSV)
        )
    if kinds:
        digest = model_sha256(ckpts, cfg.model_file)
        algorithm = Algorithm(__version__, digest, cfg.results.threshold)
        folder = cfg.results.folder or Path(path).parent / "dicom"
        preds = {i: final[0] for i, final in finals.items()}
        dicom = write_all(
            dataset, preds, errors, classes.names, kinds, folder, algorithm, cfg.progress
        )
    if cfg.viz:
        write_viz(dataset, results, Path(path).parent / "viz", cfg.viz, names=classes.names)
    summary = {
        "submission": str(path),
        "images": len(rows),
        "unreadable": len(errors),
        "checkpoints": len(ckpts),
        "model_file": cfg.model_file,
        "tta": cfg.tta,
        "seconds": round(seconds, 2),
        "images_per_s": round(len(rows) / seconds, 3) if seconds > 0 else None,
        "device": str(dev),
        "precision": precision,
        "nofinding_classifiers": len(classifiers or []),
        "classes": classes.name,  # the class set of the ids written
    }
    if kinds:
        summary["dicom_results"] = {
            "folder": str(folder), "files": [str(p) for p in dicom["files"]],
            "skipped": len(dicom["skipped"]),
        }  # fmt: skip
    if image_ids is not None and cfg.split.mode:  # the held-out images: cxrdet score reads it
        summary["split"] = asdict(cfg.split)
    Path(path).with_name("predict.json").write_text(json.dumps(summary, indent=2))
    log.info("wrote %s: %d images, %.2f images/s", path, len(rows), summary["images_per_s"] or 0)
    return summary
