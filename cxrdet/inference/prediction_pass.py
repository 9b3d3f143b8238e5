"""One pass of the detectors (and the "No finding" classifiers) over a dataset: batches read by
the loader, each model and its flipped view run, the views fused, boxes mapped back to the
original pixels. :func:`iter_predictions` streams a batch at a time (``predict``);
:func:`predict_dataset` keeps the whole dataset's in memory (validation, cv, serve)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from tqdm import tqdm

from cxrdet.data.dataset import prediction_loader
from cxrdet.evaluation.submission import predictions_of, to_original_prediction
from cxrdet.inference.detectors import class_set_of
from cxrdet.inference.nofinding_probs import batch_outputs, check_tta
from cxrdet.inference.postprocess import fuse_predictions, hflip_boxes
from cxrdet.models.precision import autocast


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
