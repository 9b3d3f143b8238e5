"""``predict.py``: every image of a folder, manifest or DICOMweb study → ``submission.csv`` in
original pixels, streamed by one or many processes and merged once.

Inputs are prepared PNGs with their meta CSV, or DICOMs converted on the fly exactly as
``prepare`` does. One checkpoint or several (a WBF ensemble), optionally with horizontal-flip
TTA fused the same way (:mod:`cxrdet.inference.prediction_pass`); then the "No finding" line or
an image-level classifier's filter, and, if asked, each image's DICOM results.
"""

from __future__ import annotations

import json
import logging
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict
from pathlib import Path

import numpy as np

from cxrdet import __version__
from cxrdet.data.classes import GLOBAL6
from cxrdet.data.cpus import worker_count
from cxrdet.data.dataset import DicomDataset, ImageDataset
from cxrdet.data.dicom_index import index_dicoms, read_index
from cxrdet.data.probs_csv import read_probs
from cxrdet.evaluation.nofinding import nofinding_filter, with_no_finding
from cxrdet.evaluation.submission import check_submission, empty_prediction, format_prediction
from cxrdet.inference.config import PredictConfig
from cxrdet.inference.detectors import (
    class_set_of,
    has_class14_head,
    load_models,
    pick_device,
    warn_other_size,
)
from cxrdet.inference.exported import ExportedDetector
from cxrdet.inference.nofinding_probs import load_classifiers
from cxrdet.inference.parts import (
    PartWriter,
    check_settings,
    done_ids,
    merge,
    parts_folder,
    record,
)
from cxrdet.inference.prediction_pass import ImagePrediction, PassOptions, iter_predictions
from cxrdet.inference.processes import share, start_ranks
from cxrdet.models.precision import autocast_dtype, choose_precision
from cxrdet.reports.draw import write_viz

log = logging.getLogger(__name__)
PROBS_CSV = "nofinding_probs.csv"  # the filter's P(abnormal), written beside the submission
DIAGNOSES_CSV = "diagnoses.csv"  # global6 classifiers' P(diagnosis), beside the submission
EMPTY_DETECTIONS = (np.zeros((0, 4)), np.zeros(0), np.zeros(0, dtype=np.int64))


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
    check_submission(output, classes, len(dataset.ids))  # the scorer's own checks, before "done"
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
