"""The detectors a prediction runs: checkpoints (or an exported file) loaded for inference, the
device they run on, the class set they write ids of and the image size they were trained at."""

from __future__ import annotations

import logging
from pathlib import Path

import torch

from cxrdet.data.classes import KAGGLE14, ClassSet
from cxrdet.data.dataset import ImageDataset, load_png
from cxrdet.inference.exported import load_exported
from cxrdet.models.safe_load import safe_load

log = logging.getLogger(__name__)


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
