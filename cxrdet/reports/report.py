"""Result figures and one HTML page of a finished training run (figs 10-12 and more).

    cxrdet report RUN_DIR [--images 8] [--ckpt best|last|PATH]

From ``RUN_DIR/csv/metrics.csv``: training vs validation loss (fig 10), AP40 and mAP40 over
optimizer steps (fig 11), the evaluated checkpoint's step marked on both. Running that one
checkpoint (``--ckpt``, the best by default) on the run's own validation split (rebuilt from
``RUN_DIR/.hydra/config.yaml``): per-class AP bars, precision-recall curves at IoU 0.4 per
class, the settings' headline figures, a grid of validation images, ground truth beside
predictions (fig 12: those scoring 0.3 or more, else the top 3, said so), and the radiology
metrics (:mod:`cxrdet.evaluation.radiology`: the readers' baseline, FROC, the error breakdown)
with a gallery of the worst false positives and missed findings per class. PNGs and one
self-contained page, ``index.html`` (:mod:`cxrdet.reports.html`), in ``RUN_DIR/report/``.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

import numpy as np
import pandas as pd

from cxrdet.data.classes import NO_FINDING_NAME
from cxrdet.data.dataset import grey_pixels
from cxrdet.evaluation.bootstrap import RESAMPLES, image_weights, map_interval
from cxrdet.evaluation.calibration import detection_calibration
from cxrdet.evaluation.evaluator import findings_only
from cxrdet.evaluation.radiology import READERS_FUSION, radiology_scores
from cxrdet.models.safe_load import TRUST_HELP
from cxrdet.reports.curves import (
    curve_figures,
    per_class_bars,
    per_class_figure,
    reliability_figure,
)
from cxrdet.reports.figures import plt, save_figure
from cxrdet.reports.gallery import froc_figure, gallery_items
from cxrdet.reports.html import write_html
from cxrdet.reports.settings import (
    checkpoint_label,
    checkpoint_step,
    headline,
    run_config,
    run_settings,
    run_title,
)
from cxrdet.training.checkpoints import best_checkpoint

log = logging.getLogger("cxrdet.train")
DRAW_SCORE = 0.3  # fig 12 draws the predictions scoring at least this


def validation_figures(
    run_dir: Path, ckpt: Path, out: Path, n_images: int, trust: bool = False, label: str = ""
) -> tuple[list[Path], dict]:
    """PR curves per class and the GT-vs-prediction grid, on the run's validation split
    (``trust``: load a checkpoint that needs full unpickling; ``label``: the checkpoint's name
    in the figures' titles); with the figures, what the page shows of that split: ``scores``,
    ``radiology``, ``froc_figure``, ``gallery``."""
    import torch
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    from cxrdet.evaluation.evaluator import DetectionEvaluator
    from cxrdet.models.module import load_detector
    from cxrdet.reports.draw import draw_boxes

    cfg = OmegaConf.load(run_dir / ".hydra" / "config.yaml")
    cfg.data.num_workers = 0
    datamodule = instantiate(cfg.data, augment=None, _recursive_=False)
    datamodule.setup("fit")
    if datamodule.val_set is None:
        return [], {}
    module = load_detector(str(ckpt), trust, "--trust")
    model = module.model.eval()
    class_set = module.classes
    names = class_set.names
    class14 = NO_FINDING_NAME in module.class_names
    evaluator, shown, where = DetectionEvaluator(class14_head=class14, classes=class_set), [], {}
    with torch.inference_mode():
        for i in range(len(datamodule.val_set)):
            image, target = datamodule.val_set[i]
            where[target["image_id"]] = i
            output = model([image])[0]
            evaluator.process([target], [output])
            classes = target["labels"].numpy() - 1
            if len(shown) < n_images and len(classes):
                pred = (
                    output["boxes"].numpy(),
                    output["scores"].numpy(),
                    output["labels"].numpy() - 1,
                )
                image8 = grey_pixels(image)
                shown.append((image8, target["boxes"].numpy(), classes, pred))
    evaluation = evaluator.evaluate(curves=True)
    gt = dict(sorted(evaluator.gt.items()))
    evaluation["mAP40_ci"] = map_interval(gt, evaluator.dets, image_weights(len(gt)))
    evaluation["class_names"] = names
    fusion = cfg.data.get("val_fusion", "none")
    radiology = radiology_scores(
        dict(sorted(evaluator.gt.items())),
        evaluator.dets,
        datamodule.val_labels,
        fusion=fusion if fusion != "none" else READERS_FUSION,
        fusion_iou=cfg.data.get("fusion_iou", 0.4),
        resamples=RESAMPLES,
        classes=class_set,
    )

    def load(image_id):
        image, target = datamodule.val_set[where[image_id]]
        image8 = grey_pixels(image)
        boxes, classes = target["boxes"].numpy(), target["labels"].numpy() - 1
        return image8, boxes, classes, target["orig_hw"], target["image_hw"], target["content"]

    calibration = detection_calibration(
        findings_only(gt, class_set), findings_only(evaluator.dets, class_set)
    )
    page = {
        "scores": evaluation,
        "radiology": radiology,
        "froc_figure": froc_figure(radiology["froc"], out),
        "gallery": gallery_items(radiology["errors"]["errors"], load, class_set),
        "calibration": calibration,
        "calibration_figure": reliability_figure(
            calibration,
            f"Detections scoring >= {calibration['threshold']:g}, validation split",
            "share right (IoU 0.4)",
            out / "calibration.png",
        ),
    }
    result = {"per_class": evaluation["mAP40_per_class"], "curves": evaluation["mAP40_curves"]}
    written = []
    classes = sorted(result["curves"])
    cols = 4
    fig, axes = plt.subplots(
        (len(classes) + cols - 1) // cols,
        cols,
        figsize=(14, 3.2 * ((len(classes) + cols - 1) // cols)),
        squeeze=False,
    )
    for ax in axes.flat:
        ax.axis("off")
    for ax, c in zip(axes.flat, classes):
        recall, precision = result["curves"][c]
        ax.axis("on")
        ax.step(recall, precision, where="post")
        ax.set_xlim(0, 1.02)
        ax.set_ylim(0, 1.02)
        ax.set_title(f"{names[c]} (AP {result['per_class'][c]:.2f})", fontsize=8)
        ax.set_xlabel("recall", fontsize=7)
        ax.set_ylabel("precision", fontsize=7)
    fig.suptitle(f"Precision-recall at IoU 0.4, validation split: {label or ckpt.name}")
    written.append(save_figure(fig, out / "pr_curves.png"))
    if shown:
        fig, axes = plt.subplots(len(shown), 2, figsize=(7, 3.5 * len(shown)), squeeze=False)
        for row, (image, boxes, classes_, (pb, ps, pc)) in zip(axes, shown):
            row[0].imshow(draw_boxes(image, boxes, classes_, names=names)[..., ::-1])
            row[0].set_title("ground truth", fontsize=8)
            keep, title = drawn_predictions(ps)
            drawn = draw_boxes(image, pb[keep], pc[keep], ps[keep], names=names)
            row[1].imshow(drawn[..., ::-1])
            row[1].set_title(title, fontsize=8)
            for ax in row:
                ax.axis("off")
        fig.suptitle(f"Validation images (fig. 12): {label or ckpt.name}")
        written.append(save_figure(fig, out / "fig12_validation_images.png"))
    if page["froc_figure"] is not None:
        written.append(page["froc_figure"])
    written.append(page["calibration_figure"])
    return written, page


def drawn_predictions(
    scores: np.ndarray, threshold: float = DRAW_SCORE, top: int = 3
) -> tuple[np.ndarray, str]:
    """Which predictions fig 12 draws, and its panel's title: those scoring at least
    ``threshold``, else (an image no score reaches it, common early in training) the ``top``
    best, said so."""
    keep = np.flatnonzero(scores >= threshold)
    if len(keep):
        return keep, f"predictions (score >= {threshold:g})"
    keep = np.argsort(-scores, kind="stable")[:top]
    if not len(keep):
        return keep, "no predictions"
    return keep, f"none scores {threshold:g}: the top {len(keep)} (best {scores[keep[0]]:.2f})"


def report_run(run_dir: str | Path, wandb_loggers: list) -> None:
    """After training: the result figures and index.html in ``<run dir>/report/`` (and to the
    W&B loggers given); a report that cannot be made only warns (the checkpoints are written)."""
    try:
        figures = write_report(run_dir)
    except (FileNotFoundError, ValueError) as e:
        log.warning("no report: %s (the figures need the csv logger: logger=[csv,wandb])", e)
        return
    log.info("report: %d files in %s (open index.html)", len(figures), figures[0].parent)
    upload_figures(wandb_loggers, figures)


def upload_figures(loggers, paths: list[Path]) -> int:
    """Send the PNG figures to every logger that takes images (W&B); returns how many were
    sent (the HTML page stays on disk).

    train.py calls this only with ``logger.wandb.log_images=true``: fig 12 shows X-rays, which
    are patient data.
    """
    sent = 0
    for logger in loggers:
        if not hasattr(logger, "log_image"):
            continue
        for path in (p for p in paths if p.suffix == ".png"):
            logger.log_image(key=f"report/{path.stem}", images=[str(path)])
            sent += 1
    return sent


def write_report(
    run_dir: str | Path, ckpt: str = "best", n_images: int = 8, trust: bool = False
) -> list[Path]:
    """Every figure for ``run_dir``; returns the files written. ``trust``: load a checkpoint
    that needs full unpickling (``--trust``)."""
    run_dir = Path(run_dir)
    metrics_csv = run_dir / "csv" / "metrics.csv"
    if not metrics_csv.is_file():
        raise FileNotFoundError(f"{metrics_csv} not found: is {run_dir} a train.py run directory?")
    out = run_dir / "report"
    out.mkdir(exist_ok=True)
    metrics = pd.read_csv(metrics_csv)
    if ckpt == "best":
        best = best_checkpoint(run_dir / "checkpoints", trust, "--trust")
        path = best or run_dir / "checkpoints" / "last.ckpt"
    elif ckpt == "last":
        path = run_dir / "checkpoints" / "last.ckpt"
    else:
        path = Path(ckpt)
    cfg, choices = run_config(run_dir)
    figures, page, marked, label = [], {}, None, None
    if path.is_file():
        step = checkpoint_step(path, trust)
        label = checkpoint_label(path, step)
        marked = (path.name, step) if step is not None else None
    written = curve_figures(metrics, out, marked)
    if path.is_file() and cfg is not None:
        figures, page = validation_figures(run_dir, path, out, n_images, trust, label)
    if page.get("scores"):
        figures_json = out / "figures.json"
        figures_json.write_text(json.dumps(headline(page, label), indent=1) + "\n")
        written.append(figures_json)
    bars, source = per_class_bars(metrics, page.get("scores"), label)
    written += [per_class_figure(bars, source, out), *figures]
    grid = out / "fig12_validation_images.png"
    own_sections = ("froc.png", "calibration.png", grid.name)
    curves = [p for p in written if p.suffix == ".png" and p.name not in own_sections]
    settings = run_settings(run_dir, cfg, choices, metrics, label, page)
    images = grid if grid in written else None
    written.append(
        write_html(
            out / "index.html",
            run_title(run_dir, cfg),
            settings,
            curves,
            **page,
            source=label,
            images_figure=images,
        )
    )
    return written


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="cxrdet report", description=__doc__.split("\n")[0])
    p.add_argument("run_dir", help="a train.py run directory")
    p.add_argument("--images", type=int, default=8, help="validation images in fig 12")
    p.add_argument("--ckpt", default="best", help="best | last | a checkpoint path")
    p.add_argument(
        "--trust",
        action="store_true",
        help=TRUST_HELP,
    )
    a = p.parse_args(argv)
    try:
        written = write_report(a.run_dir, a.ckpt, a.images, a.trust)
    except (FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    for path in written:
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
