"""Batched inference over prepared test PNGs → Kaggle ``submission.csv`` in original pixels."""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import torch
from torch.utils.data import DataLoader
from tqdm import tqdm

from cxrdet.boxes import clip, to_original
from cxrdet.competition import with_no_finding
from cxrdet.dataset import ImageDataset, collate
from cxrdet.module import load_detector
from cxrdet.submission import format_prediction, read_submission, write_submission

log = logging.getLogger(__name__)


def pick_device(name: str = "auto") -> torch.device:
    """``auto`` → CUDA when available, else CPU; or an explicit torch device string."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


@torch.inference_mode()
def predict_dataset(
    model, dataset: ImageDataset, device, batch_size=4, num_workers=0, progress=True
):
    """Run ``model`` over ``dataset``.

    Returns:
        image id → (boxes in original pixels, scores, class ids).
    """
    loader = DataLoader(dataset, batch_size=batch_size, num_workers=num_workers, collate_fn=collate)
    results = {}
    for images, infos in tqdm(loader, desc="predict", unit="batch", disable=not progress):
        outputs = model([im.to(device) for im in images])
        for image, info, out in zip(images, infos, outputs):
            boxes = to_original(
                out["boxes"].float().cpu().numpy(),
                info["orig_hw"],
                image.shape[-2:],
                info["content"],
            )
            results[info["image_id"]] = (
                clip(boxes, info["orig_hw"]),
                out["scores"].float().cpu().numpy(),
                out["labels"].cpu().numpy() - 1,
            )
    return results


def predict(
    ckpt_path: str,
    image_dir: str,
    meta_csv: str,
    output: str,
    score_thresh: float = 0.0,
    max_detections: int = 100,
    batch_size: int = 4,
    num_workers: int = 0,
    device: str = "auto",
    progress: bool = True,
    nofinding_line: bool = True,
) -> dict:
    """Write ``output`` (submission.csv) for every image in ``meta_csv``; returns a summary.

    With ``nofinding_line`` every row also gets ``14 <1 - top score> 0 0 1 1``
    (:func:`cxrdet.competition.with_no_finding`).
    """
    dataset = ImageDataset(image_dir, meta_csv)  # missing images fail here, before the model
    dev = pick_device(device)
    model = load_detector(ckpt_path).model.to(dev).eval()
    model.roi_heads.score_thresh = score_thresh
    model.roi_heads.detections_per_img = max_detections
    start = time.perf_counter()
    results = predict_dataset(model, dataset, dev, batch_size, num_workers, progress)
    seconds = time.perf_counter() - start
    finish = with_no_finding if nofinding_line else (lambda *r: r)
    rows = {i: format_prediction(*finish(*results[i])) for i in dataset.ids}
    path = write_submission(rows, output)
    read_submission(path, image_ids=dataset.ids)  # the scorer's own checks, before "done"
    summary = {
        "submission": str(path),
        "images": len(rows),
        "seconds": round(seconds, 2),
        "images_per_s": round(len(rows) / seconds, 3) if seconds > 0 else None,
        "empty_images": sum(1 for r in results.values() if len(r[1]) == 0),
        "device": str(dev),
    }
    Path(path).with_name("predict.json").write_text(json.dumps(summary, indent=2))
    log.info("wrote %s: %d images, %.2f images/s", path, len(rows), summary["images_per_s"] or 0)
    return summary
