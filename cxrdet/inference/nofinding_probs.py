"""P(abnormal) for the "No finding" filter: computed in the prediction run from classifier
checkpoints (``predict.py nofinding.ckpt_path=``), or read from a CSV (``nofinding.probs=``).
Either way the submission's folder gets them as ``nofinding_probs.csv``; classifiers of the
release's 6 diagnoses (``model.targets=global6``) also give ``diagnoses.csv`` there, from the
same pass (:func:`batch_outputs`)."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import torch
from tqdm import tqdm

from cxrdet.data.classes import GLOBAL6
from cxrdet.data.dataset import prediction_loader
from cxrdet.models.precision import autocast


def load_classifiers(
    ckpt_paths, device, trust: bool = False, opt_in: str = "trust_checkpoint=true"
) -> list[torch.nn.Module]:
    """Classifier checkpoints (one or a list) in eval mode on ``device`` (``trust``, ``opt_in``:
    :func:`cxrdet.models.module.read_checkpoint`)."""
    from cxrdet.models.classifier import load_classifier  # Lightning: only when needed

    paths = [ckpt_paths] if isinstance(ckpt_paths, str | Path) else list(ckpt_paths)
    return [load_classifier(str(p), trust, opt_in).to(device) for p in paths]


def check_tta(tta: str, key: str = "nofinding.tta") -> None:
    """Refuse a TTA other than none and hflip, naming the setting (``key``)."""
    if tta not in ("none", "hflip"):
        raise ValueError(f"unknown {key} {tta!r}; expected none or hflip")


def batch_outputs(
    classifiers, images: list[torch.Tensor], tta: str = "none"
) -> tuple[list[float], list[list[float]] | None]:
    """Mean P(abnormal) of the classifiers (and of each one's flipped view with ``hflip``) for
    a batch of same-sized images already on the classifiers' device (under the caller's
    autocast); and, when some of them learned the release's 6 diagnoses
    (``model.targets=global6``), those ones' mean P(diagnosis) per image (None otherwise).
    Each classifier runs once per view for both."""
    batch = torch.stack(list(images))
    views = [batch, batch.flip(-1)] if tta == "hflip" else [batch]
    abnormal, diagnoses = [], []
    for c in classifiers:
        for view in views:
            logits = c.logits(view)
            abnormal.append(c.p_abnormal(logits).float())
            if c.targets == "global6":
                diagnoses.append(torch.sigmoid(logits).float())
    p = torch.stack(abnormal).mean(0).cpu().tolist()
    return p, (torch.stack(diagnoses).mean(0).cpu().tolist() if diagnoses else None)


def batch_probs(classifiers, images: list[torch.Tensor], tta: str = "none") -> list[float]:
    """:func:`batch_outputs`' mean P(abnormal)."""
    return batch_outputs(classifiers, images, tta)[0]


def write_diagnoses(diagnoses: dict[str, list[float]], path: str | Path) -> Path:
    """Write ``image_id`` and one P(diagnosis) column per diagnosis of
    :data:`cxrdet.data.classes.GLOBAL6` (6 decimals)."""
    path = Path(path)
    frame = pd.DataFrame(list(diagnoses.values()), columns=list(GLOBAL6))
    frame.insert(0, "image_id", list(diagnoses))
    frame.to_csv(path, index=False, float_format="%.6f")
    return path


@torch.inference_mode()
def predict_probs(
    classifiers,
    dataset,
    device,
    batch_size: int = 4,
    num_workers: int = 0,
    tta: str = "none",
    precision: str = "32-true",
    progress: bool = True,
) -> dict[str, float]:
    """:func:`batch_probs` for every readable image of ``dataset``, batched, at ``precision``
    (the classifiers alone; predict.py runs them in the detector's pass instead)."""
    check_tta(tta)
    device = torch.device(device)
    loader = prediction_loader(dataset, batch_size, num_workers, device)
    probs = {}
    for images, infos in tqdm(loader, desc="nofinding", unit="batch", disable=not progress):
        with autocast(device, precision):
            values = batch_probs(classifiers, [im.to(device) for im in images], tta)
        for info, value in zip(infos, values):
            if not info.get("error"):
                probs[info["image_id"]] = float(value)
    return probs
