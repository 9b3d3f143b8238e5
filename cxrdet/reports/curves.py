"""The run's curves from ``metrics.csv`` (figs 10 and 11) and the per-class AP bars.

The x axis is optimizer steps, the count checkpoints are named by (``best-step2.ckpt`` holds
the weights after 2 steps): metrics.csv's ``step`` column is that count less one, so a
validation after the 2nd step is plotted at 2, where the checkpoint's line is drawn.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from cxrdet.reports.figures import plt, save_figure

LOSSES = {"train/loss": "training loss", "val/loss": "validation loss"}
APS = {"val/AP40": "AP40", "val/mAP40": "mAP40"}


def curve_points(metrics: pd.DataFrame, columns: dict) -> dict[str, tuple[list, list]]:
    """``{label: (optimizer steps, values)}`` of each of ``columns`` that metrics.csv holds."""
    points = {}
    for column, label in columns.items():
        if column in metrics:
            rows = metrics[["step", column]].dropna()
            points[label] = ((rows["step"] + 1).astype(int).tolist(), rows[column].tolist())
    return points


def curve_figures(metrics: pd.DataFrame, out: Path, ckpt: tuple[str, int] | None) -> list[Path]:
    """Loss (fig 10) and AP40/mAP40 (fig 11) over optimizer steps; ``ckpt`` (name, step): the
    checkpoint the rest of the report evaluates, marked on both."""
    written = []
    for columns, ylabel, title, name in (
        (LOSSES, "loss", "Training and validation loss (fig. 10)", "fig10_loss.png"),
        (APS, "AP at IoU 0.4", "Validation AP40 and mAP40 (fig. 11)", "fig11_ap.png"),
    ):
        fig, ax = plt.subplots(figsize=(8, 4.5))
        for label, (x, y) in curve_points(metrics, columns).items():
            ax.plot(x, y, "-" if label == "training loss" else "-o", label=label)
        if ckpt is not None:
            ax.axvline(ckpt[1], color="#888", linestyle="--", label=f"{ckpt[0]} (step {ckpt[1]})")
        ax.set_xlabel("optimizer steps")
        ax.set_ylabel(ylabel)
        ax.set_title(title)
        ax.legend()
        written.append(save_figure(fig, out / name))
    return written


def per_class_bars(
    metrics: pd.DataFrame, scores: dict | None, source: str | None
) -> tuple[dict[str, dict[str, float]], str]:
    """The per-class AP40 and mAP40 to draw and where they come from: the evaluated
    checkpoint's (``scores``, ``source`` naming it) when there is one, else the last
    validation's in metrics.csv (labelled so)."""
    if scores:
        values = {
            metric: {
                scores["class_names"][c]: v
                for c, v in sorted(scores[f"{metric}_per_class"].items())
            }
            for metric in ("AP40", "mAP40")
        }
        return values, f"{source}, {scores['images']} validation images"
    values, step = {}, None
    for metric in ("AP40", "mAP40"):
        columns = [c for c in metrics.columns if c.startswith(f"val/{metric}/")]
        rows = metrics[["step", *columns]].dropna(subset=columns, how="all")
        if len(rows):
            step = int(rows["step"].iloc[-1]) + 1
            last = rows[columns].iloc[-1]
            values[metric] = {c.split("/", 2)[2]: float(v) for c, v in last.items()}
    return values, "last validation" + (f", step {step}" if step is not None else "")


def per_class_figure(values: dict[str, dict[str, float]], source: str, out: Path) -> Path:
    fig, axes = plt.subplots(1, 2, figsize=(12, 5))
    for ax, metric in zip(axes, ("AP40", "mAP40")):
        bars = values.get(metric, {})
        ax.barh(list(bars)[::-1], list(bars.values())[::-1], color="#3b75af")
        ax.set_xlim(0, 1)
        ax.set_title(f"{metric} per class", fontsize=10)
    fig.suptitle(f"Per class: {source}")
    return save_figure(fig, out / "per_class_ap.png")


def reliability_figure(r: dict, title: str, what: str, out: Path) -> Path:
    """A reliability diagram (:func:`cxrdet.evaluation.calibration.reliability`'s bins): per
    score bin the observed share (``what``) against the mean score, the diagonal a perfectly
    calibrated score, each bin's count beside its point."""
    fig, ax = plt.subplots(figsize=(4.5, 4.5))
    ax.plot([0, 1], [0, 1], color="grey", linestyle=":", linewidth=1)
    xs = [b["confidence"] for b in r["bins"]]
    ys = [b["accuracy"] for b in r["bins"]]
    ax.plot(xs, ys, marker="o")
    for x, y, b in zip(xs, ys, r["bins"]):
        ax.annotate(str(b["count"]), (x, y), fontsize=6, xytext=(3, -8), textcoords="offset points")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_xlabel("mean score in the bin")
    ax.set_ylabel(what)
    ax.set_title(f"{title}\nECE {r['ECE']:.3f} over {r['count']}", fontsize=9)
    return save_figure(fig, out)
