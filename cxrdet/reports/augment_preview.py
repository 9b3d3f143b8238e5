"""The augmentation preview (report fig. 13): one training image with its boxes and a few of its
augmented variants, drawn as training's ``augment`` config transforms them (``cxrdet eda
--augment-preview N``)."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pandas as pd

from cxrdet.data.labels import BOX_COLUMNS, is_no_finding, names_of
from cxrdet.reports.figures import plt, save_figure

log = logging.getLogger(__name__)


def augment_preview(
    images_dir: Path,
    meta: pd.DataFrame,
    labels: pd.DataFrame,
    n: int,
    augment: str,
    out: Path,
    seed: int = 0,
) -> Path:
    """One image with its boxes and ``n`` augmented variants (report fig. 13): the first image
    with a finding that can be drawn (its boxes clipped to it as training clips them; an image
    with no box left, or one the transform refuses, is skipped and counted in the log)."""
    from hydra import compose, initialize_config_dir
    from hydra.utils import instantiate

    from cxrdet.config import CONF_DIR
    from cxrdet.data.boxes import clip, to_prepared, valid
    from cxrdet.data.dataset import load_png
    from cxrdet.data.meta import content_of

    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose(config_name="train", overrides=[f"augment={augment}"])
    transform = instantiate(cfg.augment) if cfg.augment else None
    findings = labels[~is_no_finding(labels) & labels["image_id"].isin(meta.index)]
    names = names_of(labels)
    candidates = [i for i in findings["image_id"].unique() if (images_dir / f"{i}.png").is_file()]
    if not candidates:
        raise FileNotFoundError(f"no image with findings has a PNG in {images_dir}")
    skipped = {}  # image id → why it could not be drawn (the next one is tried)
    views = None
    for image_id in candidates:
        image = load_png(images_dir / f"{image_id}.png")
        rows = findings[findings["image_id"] == image_id]
        hw = (int(meta.at[image_id, "dim0"]), int(meta.at[image_id, "dim1"]))
        raw = to_prepared(rows[BOX_COLUMNS].to_numpy(), hw, image.shape, content_of(meta, image_id))
        boxes = clip(raw, image.shape)  # as training clips and drops them
        keep = valid(boxes, min_size=0.5)
        boxes, classes = boxes[keep], rows["class_id"].to_numpy()[keep]
        if not len(boxes):
            skipped[image_id] = "no box left inside the image"
            continue
        np.random.seed(seed)
        try:
            views = [(image, boxes, classes, "original")]
            for k in range(n):
                o = transform(image=image, bboxes=boxes, labels=classes) if transform else None
                views.append(
                    (o["image"], o["bboxes"], o["labels"], f"augmented {k + 1}") if o else views[0]
                )
        except ValueError as e:  # what the transform refused: say so, try the next image
            skipped[image_id] = str(e)
            views = None
            continue
        break
    if views is None:
        raise ValueError(
            f"no image could be drawn for the preview ({len(skipped)} tried, e.g. "
            f"{next(iter(skipped))}: {next(iter(skipped.values()))})"
        )
    if skipped:
        log.warning(
            "--augment-preview skipped %d image(s) it could not draw (e.g. %s: %s)",
            len(skipped),
            next(iter(skipped)),
            next(iter(skipped.values())),
        )
    cols = min(4, len(views))
    fig, axes = plt.subplots(
        (len(views) + cols - 1) // cols,
        cols,
        figsize=(4 * cols, 4 * ((len(views) + cols - 1) // cols)),
        squeeze=False,
    )
    for ax in axes.flat:
        ax.axis("off")
    for ax, (im, bx, cl, title) in zip(axes.flat, views):
        ax.imshow(im, cmap="gray", vmin=0, vmax=255)
        for b, c in zip(np.asarray(bx).reshape(-1, 4), cl):
            ax.add_patch(
                plt.Rectangle(
                    b[:2], b[2] - b[0], b[3] - b[1], fill=False, color=plt.cm.tab20(int(c)), lw=1.2
                )
            )
            ax.text(b[0], b[1], names[int(c)], color="yellow", fontsize=6)
        ax.set_title(title, fontsize=9)
    path = out / "fig13_augment_preview.png"
    save_figure(fig, path)
    return path
