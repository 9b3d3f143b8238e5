"""Batched inference → Kaggle ``submission.csv`` in original pixels.

Inputs are prepared PNGs with their meta CSV, or DICOMs converted on the fly exactly as
``prepare`` does. One checkpoint or several (a WBF ensemble), optionally with horizontal-flip
TTA fused the same way; then the "No finding" line or an image-level classifier's filter.
"""

from __future__ import annotations

import json
import logging
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

import cv2
import numpy as np
import torch
from tqdm import tqdm

from cxrdet import __version__
from cxrdet.data.boxes import to_prepared
from cxrdet.data.classes import GLOBAL6, KAGGLE14, ClassSet
from cxrdet.data.cpus import worker_count
from cxrdet.data.dataset import (
    DicomDataset,
    ImageDataset,
    grey_pixels,
    load_png,
    prediction_loader,
)
from cxrdet.data.dicom_index import index_dicoms, read_index
from cxrdet.data.probs_csv import read_probs
from cxrdet.evaluation.nofinding import nofinding_filter, with_no_finding
from cxrdet.evaluation.submission import (
    empty_prediction,
    format_prediction,
    parse_prediction,
    predictions_of,
    to_original_prediction,
)
from cxrdet.inference.config import PredictConfig
from cxrdet.inference.exported import ExportedDetector, load_exported
from cxrdet.inference.nofinding_probs import (
    batch_outputs,
    check_tta,
    load_classifiers,
)
from cxrdet.inference.parts import (
    PartWriter,
    check_settings,
    done_ids,
    merge,
    parts_folder,
    record,
)
from cxrdet.inference.postprocess import fuse_predictions, hflip_boxes
from cxrdet.inference.processes import share, start_ranks
from cxrdet.models.precision import autocast, autocast_dtype, choose_precision
from cxrdet.models.safe_load import safe_load
from cxrdet.reports.draw import draw_boxes

log = logging.getLogger(__name__)
PROBS_CSV = "nofinding_probs.csv"  # the filter's P(abnormal), written beside the submission
DIAGNOSES_CSV = "diagnoses.csv"  # global6 classifiers' P(diagnosis), beside the submission
EMPTY_DETECTIONS = (np.zeros((0, 4)), np.zeros(0), np.zeros(0, dtype=np.int64))


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
class ImagePrediction:
    """One image's outcome of a prediction pass (:func:`iter_predictions`)."""

    image_id: str
    prediction: tuple | None  # boxes in original pixels, scores, class ids; None: unreadable
    p_abnormal: float | None = None  # the No-finding classifiers' mean, when there are any
    p_diagnoses: list | None = None  # the diagnoses classifiers' means, when they learned them
    error: str | None = None  # why the image could not be read


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
def iter_predictions(
    models, dataset, device, options: PassOptions | None = None, classifiers=None, batches=None
):
    """Run every model (and its flipped view with ``options.tta="hflip"``) over ``dataset``,
    and the "No finding" classifiers, if any, on the same batches (each image is read once);
    yield each batch's images as soon as it is done. ``batches``: the batches to run (lists of
    indices; default: all of ``dataset`` in order, ``options.batch_size`` at a time).

    Each batch's detections come to the host in one copy per model and view.

    Yields:
        per batch, a list of :class:`ImagePrediction`: the image's id, its boxes in original
        pixels (fused with WBF when there is more than one view), the classifiers' mean
        P(abnormal) and P(diagnosis) (None without them), and the error of an image that could
        not be read (its prediction then None).
    """
    o = options or PassOptions()
    check_tta(o.tta, "tta")
    check_tta(o.classifier_tta)
    weights = list(o.weights) if o.weights else [1.0] * len(models)
    if len(weights) != len(models):
        raise ValueError(f"{len(weights)} weights for {len(models)} checkpoints")
    no_finding = class_set_of(models).no_finding
    loader = prediction_loader(dataset, o.batch_size, o.num_workers, device, batches)
    device = torch.device(device)
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
        done = []
        for k, (image, info) in enumerate(zip(images, infos)):
            image_id = info["image_id"]
            if info.get("error"):
                done.append(ImagePrediction(image_id, None, error=info["error"]))
                continue
            hw = tuple(image.shape[-2:])
            sets = []
            for outputs, flipped, _ in views:
                boxes, scores, classes = outputs[k]
                sets.append((hflip_boxes(boxes, hw[1]) if flipped else boxes, scores, classes))
            boxes, scores, classes = fuse_predictions(
                sets, hw, [w for *_, w in views], o.fusion_iou, o.fusion_skip
            )
            top = np.argsort(-scores, kind="stable")[: o.max_detections]
            pred = to_original_prediction(
                (boxes[top], scores[top], classes[top]),
                info["orig_hw"],
                hw,
                info["content"],
                no_finding,
            )
            done.append(
                ImagePrediction(
                    image_id,
                    pred,
                    None if p_abnormal is None else float(p_abnormal[k]),
                    None if p_diagnoses is None else p_diagnoses[k],
                )
            )
        yield done


def predict_dataset(
    models,
    dataset,
    device,
    options: PassOptions | None = None,
    classifiers: list | None = None,
    diagnoses: dict | None = None,
) -> tuple[dict, dict, dict]:
    """:func:`iter_predictions` over the whole ``dataset``, kept in memory (validation, cv,
    the tests; ``predict`` streams instead). ``diagnoses``, if given, gets image id → the
    diagnoses classifiers' mean P(diagnosis) (:func:`batch_outputs`; none without them).

    Returns:
        image id → (boxes in original pixels, scores, class ids); image id → error for images
        that could not be read; and image id → the classifiers' mean P(abnormal) (empty
        without classifiers).
    """
    results, errors, probs = {}, {}, {}
    for batch in iter_predictions(models, dataset, device, options, classifiers):
        for image in batch:
            if image.error:
                errors[image.image_id] = image.error
                continue
            results[image.image_id] = image.prediction
            if image.p_abnormal is not None:
                probs[image.image_id] = image.p_abnormal
            if image.p_diagnoses is not None and diagnoses is not None:
                diagnoses[image.image_id] = image.p_diagnoses
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


def run_settings(cfg: PredictConfig, ckpts: list, precision: str, max_detections) -> dict:
    """What a row depends on (:func:`cxrdet.inference.parts.check_settings`): the models'
    hashes and the settings; the batch size, workers, devices and processes are not."""
    from cxrdet.models.weights import checkpoint_sha256, sha256

    nofinding = cfg.nofinding
    classifier_ckpts = nofinding.ckpt_path or []
    if isinstance(classifier_ckpts, str | Path):
        classifier_ckpts = [classifier_ckpts]
    source = cfg.dicom_dir or cfg.manifest or cfg.image_dir
    return {
        "cxrdet": __version__,
        "model": checkpoint_sha256(ckpts, cfg.model_file),
        "classifiers": [sha256(Path(c)) for c in classifier_ckpts],
        "nofinding_probs": sha256(Path(nofinding.probs)) if nofinding.probs else None,
        "source": str(Path(source).resolve()) if source else None,
        "prepared_size": cfg.prepared_size,
        "keep_ratio": cfg.keep_ratio,
        "dicom_max_pixels": cfg.dicom_max_pixels,
        "score_thresh": cfg.score_thresh,
        "max_detections": max_detections,
        "tta": cfg.tta,
        "ensemble_weights": cfg.ensemble_weights,
        "fusion": [cfg.fusion_iou, cfg.fusion_skip],
        "nofinding_line": cfg.nofinding_line,
        "nofinding": [nofinding.tta, nofinding.low, nofinding.high],
        "precision": precision,
        "results": [list(cfg.results.dicom or []), cfg.results.threshold, cfg.results.folder],
    }


def predict(
    cfg: PredictConfig, image_ids: list[str] | None = None, opt_in: str = "trust_checkpoint=true"
) -> dict:
    """Write ``cfg.output`` (submission.csv) with one row per image; returns a summary (on
    the first process; the others return ``{"rank": r}``).

    ``cfg.ckpt_path`` is one checkpoint or a list (a WBF ensemble, ``cfg.ensemble_weights``
    optional). Images come from ``cfg.dicom_dir`` or ``cfg.manifest`` (DICOMs, indexed by
    :mod:`cxrdet.data.dicom_index`) when given, else ``cfg.image_dir`` +
    ``cfg.meta_csv``. Each row gets ``14 <1 - top score> 0 0 1 1`` with ``cfg.nofinding_line``,
    or, with ``cfg.nofinding.probs`` (``image_id,p_abnormal``), the classifier filter of
    :func:`nofinding_filter`. ``image_ids`` restricts prepared PNGs to those images (a split's
    validation images). Checkpoints that need full unpickling load only with
    ``cfg.trust_checkpoint`` (``opt_in`` names that setting in the refusal: ``--trust`` for
    the tools). See :class:`cxrdet.inference.config.PredictConfig`.

    ``cfg.trainer.devices`` × ``cfg.trainer.num_nodes`` processes each predict every
    ``world``-th batch (:mod:`cxrdet.inference.processes`) and stream their lines to a file of
    their own; the first then merges them (:mod:`cxrdet.inference.parts`). Images a killed run
    already wrote, with the same settings, are not predicted again.
    """

    workers = worker_count(cfg.num_workers, key="num_workers")  # a bad value: before any work
    kinds = list(cfg.results.dicom or [])
    if kinds:  # highdicom and DICOM's code tables load only for DICOM results
        from cxrdet.inference.dicom_results import Algorithm, check_kinds, write_image

        check_kinds(kinds)
    dicoms = cfg.dicom_dir or cfg.manifest
    if cfg.dicom_dir and cfg.manifest:
        raise ValueError("dicom_dir and manifest both given: pass one")
    if kinds and not dicoms:
        raise ValueError(
            f"results.dicom={kinds}: DICOM results reference their source image: predict from "
            "DICOMs (dicom_dir=, manifest= or source=dicomweb), not prepared PNGs"
        )
    if cfg.model_file:  # an exported detector (cxrdet export) instead of checkpoints
        ckpts = []
    elif isinstance(cfg.ckpt_path, str | Path):
        ckpts = [cfg.ckpt_path]
    else:
        ckpts = list(cfg.ckpt_path)
    dataset = None
    if not dicoms:  # read before the models load: a bad path fails fast
        dataset = ImageDataset(cfg.image_dir, cfg.meta_csv, image_ids)
    ranks = start_ranks(cfg.trainer.devices, cfg.trainer.num_nodes, pick_device(cfg.device))
    # tasks srun started each name a run folder by their own clock: the first one's is used
    output = Path(ranks.broadcast(str(Path(cfg.output).resolve())))
    index = None
    if dicoms:  # the first process lists the DICOMs (headers only); the others read its list
        index_csv = Path(cfg.dicom_index or output.parent / "dicom_index.csv")
        if ranks.rank == 0:
            index = index_dicoms(dicoms, index_csv, workers, cfg.progress)
    dev = ranks.device
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
    if dicoms:  # resized to the size the (first) model was trained at
        ranks.barrier("index")
        index = index or read_index(index_csv, dicoms)
        dataset = DicomDataset(dicoms, image_size, cfg.keep_ratio, cfg.dicom_max_pixels, index)
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
    folder = parts_folder(output)
    settings = run_settings(cfg, ckpts, precision, max_detections)
    check_settings(folder, settings)
    done = done_ids(folder)
    batches = [  # a batch with an image left runs whole: the same batch gives the same bits
        b
        for b in share(len(dataset), cfg.batch_size, ranks.rank, ranks.world)
        if any(dataset.ids[i] not in done for i in b)
    ]
    if done:
        log.info(
            "%s: %d images predicted before; %d batches left for this process",
            folder,
            len(done),
            len(batches),
        )
    if kinds:
        algorithm = Algorithm(__version__, settings["model"], cfg.results.threshold)
        dicom_folder = Path(cfg.results.folder or output.parent / "dicom")
        files = dict(zip(dataset.ids, dataset.files))

    def finished(image: ImagePrediction) -> dict:
        """The image's line: its row, after the filter or the line, and its DICOM results."""
        i = image.image_id
        p = probs.get(i) if probs is not None else image.p_abnormal
        dx = None if image.p_diagnoses is None else [float(v) for v in image.p_diagnoses]
        if image.error:
            log.warning("%s: written as '%s': %s", i, empty, image.error)
            skipped = f"unreadable: {image.error}" if kinds else None
            return record(i, empty, EMPTY_DETECTIONS, p=p, error=image.error, dicom_skipped=skipped)
        pred = image.prediction
        if p is not None:
            final = nofinding_filter(pred, p, nofinding.low, nofinding.high, no_finding)
        elif cfg.nofinding_line:
            final = with_no_finding(*pred, class14_head=class14, no_finding=no_finding)
        else:
            final = pred
        written, skipped = None, None
        if kinds:
            paths, skipped = write_image(
                files[i], final, classes.names, algorithm, dicom_folder, i, kinds
            )
            written = [str(path) for path in paths] if not skipped else None
            if skipped:
                log.warning("%s: no DICOM results: %s", i, skipped)
        row = format_prediction(*final, classes)
        return record(i, row, pred, p=p, dx=dx, dicom=written, dicom_skipped=skipped)

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
    start = time.perf_counter()
    part = PartWriter(folder, ranks.rank, ranks.world)
    # rows, DICOM results and lines are made in a thread of their own while the models run;
    # at most two batches wait for it (memory stays flat however many images there are)
    try:
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="rows") as writer:
            pending = deque()
            passes = iter_predictions(  # the classifiers' P(abnormal) in the same pass
                models, dataset, dev, options, classifiers, [list(b) for b in batches]
            )
            for batch in passes:
                left = [im for im in batch if im.image_id not in done]
                pending.append(writer.submit(lambda b=left: part.write(list(map(finished, b)))))
                while len(pending) > 2:
                    pending.popleft().result()
            while pending:
                pending.popleft().result()
    finally:  # what was written is on disk for the next run, whatever stopped this one
        part.close()
    ranks.barrier("merge")  # every process's share written
    seconds = time.perf_counter() - start
    if ranks.rank != 0:
        return {"rank": ranks.rank, "batches": len(batches)}
    merged = merge(
        folder,
        dataset.ids,
        output,
        classes.names,
        settings["model"][:12],
        PROBS_CSV,
        DIAGNOSES_CSV,
        list(GLOBAL6),
        cfg.viz,
    )
    check_rows(output, classes, len(dataset.ids))  # the scorer's own checks, before "done"
    if cfg.viz:
        write_viz(dataset, merged.first, output.parent / "viz", cfg.viz, names=classes.names)
    predicted = merged.images - sum(1 for i in dataset.ids if i in done)  # by this run
    summary = {
        "submission": str(output),
        "images": merged.images,
        "predicted": predicted,
        "unreadable": merged.unreadable,
        "checkpoints": len(ckpts),
        "model_file": cfg.model_file,
        "tta": cfg.tta,
        "seconds": round(seconds, 2),
        "images_per_s": round(predicted / seconds, 3) if seconds > 0 and predicted else None,
        "device": str(dev),
        "processes": ranks.world,
        "precision": precision,
        "nofinding_classifiers": len(classifiers or []),
        "not_images": sum(index.left_out.values()) if index else 0,
        "classes": classes.name,  # the class set of the ids written
        "outputs": merged.files,
    }
    if kinds:
        summary["dicom_results"] = {
            "folder": str(dicom_folder), "files": merged.dicom_files,
            "skipped": merged.dicom_skipped,
        }  # fmt: skip
    if image_ids is not None and cfg.split.mode:  # the held-out images: cxrdet score reads it
        summary["split"] = asdict(cfg.split)
    output.with_name("predict.json").write_text(json.dumps(summary, indent=2))
    log.info(
        "wrote %s: %d images, %.2f images/s", output, merged.images, summary["images_per_s"] or 0
    )
    return summary


def check_rows(path: Path, classes: ClassSet, n: int) -> None:
    """Every row of the written submission parses as the scorer parses it, and there are
    ``n`` (read a row at a time)."""
    import csv

    with open(path, newline="") as f:
        reader = csv.reader(f)
        next(reader)
        count = 0
        for count, (image_id, text) in enumerate(reader, start=1):
            try:
                parse_prediction(text, classes)
            except ValueError as e:
                raise ValueError(f"{path}, line {count + 1} ({image_id}): {e}") from None
    if count != n:
        raise ValueError(f"{path}: {count} rows for {n} images")
