"""The report's dataset figures and tables from a labels file: Kaggle's train.csv, or the
VinDr-CXR release's annotations_train.csv / annotations_test.csv (its 22 classes).

    cxrdet eda --labels train.csv [--meta train_meta.csv] --out DIR
        [--split valid20 --seed 111] [--augment-preview N --images PNG_DIR]
        [--global-labels image_labels_train.csv]

Writes PNG figures (findings per class: report figs 1/2; annotations per radiologist: fig 3;
box area per class: fig 8, needs --meta; spatial heatmaps: fig 9, needs --meta; class
co-occurrence; boxes per image; reader agreement), ``summary.json`` and ``summary.md``, one
entry per class of the file's class set. ``--augment-preview N`` draws one image with its boxes
and N augmented variants (fig 13). ``--global-labels`` adds the release's 6 diagnoses: images per
diagnosis (the readers' majority; :mod:`cxrdet.data.global_labels`).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import pandas as pd

from cxrdet.data.classes import KAGGLE14, ClassSet
from cxrdet.data.global_labels import GlobalLabels, read_global_labels
from cxrdet.data.label_check import box_issues, issues_frame, mismatch
from cxrdet.data.label_check import summary as issue_summary
from cxrdet.data.labels import BOX_COLUMNS, is_no_finding, read_labels
from cxrdet.data.splits import SPLIT_MODES, split_ids
from cxrdet.reports.augment_preview import augment_preview
from cxrdet.reports.figures import plt, save_figure
from cxrdet.reports.stats import heatmaps, reader_agreement, relative_boxes, summarise


def _bar(ax, names, values, title, xlabel):
    ax.barh(names[::-1], values[::-1], color="#3b75af")
    ax.set_title(title)
    ax.set_xlabel(xlabel)
    for y, v in enumerate(values[::-1]):
        ax.text(v, y, f" {v:g}", va="center", fontsize=7)


def write_figures(
    labels: pd.DataFrame, meta: pd.DataFrame | None, out: Path, classes: ClassSet = KAGGLE14
) -> dict:
    """Every figure (one entry per class of ``classes``); returns the extra summary entries
    they computed."""
    findings = labels[~is_no_finding(labels)]
    n = len(classes.names)
    s = summarise(labels)
    fig, axes = plt.subplots(1, 2, figsize=(13, 5))
    names = list(s["images_per_class"])
    _bar(
        axes[0], names, list(s["images_per_class"].values()), "Images per class (fig. 1)", "images"
    )
    names = list(s["class_counts"])
    _bar(axes[1], names, list(s["class_counts"].values()), "Annotations per class (fig. 2)", "rows")
    save_figure(fig, out / "fig1_2_findings_per_class.png")

    fig, ax = plt.subplots(figsize=(8, 4))
    ax.bar(list(s["rad_counts"]), list(s["rad_counts"].values()), color="#c4553a")
    ax.set_title("Annotations per radiologist (fig. 3)")
    ax.set_ylabel("rows")
    save_figure(fig, out / "fig3_annotations_per_radiologist.png")

    images = sorted(labels["image_id"].unique())
    present = pd.crosstab(labels["image_id"], labels["class_id"]).clip(upper=1)
    present = present.reindex(index=images, columns=range(n), fill_value=0)
    co = present.T.to_numpy() @ present.to_numpy()
    fig, ax = plt.subplots(figsize=(8, 7))
    im = ax.imshow(np.log1p(co), cmap="viridis")
    ax.set_xticks(range(n), classes.names, rotation=90, fontsize=7)
    ax.set_yticks(range(n), classes.names, fontsize=7)
    ax.set_title("Class co-occurrence (images, log scale)")
    fig.colorbar(im, ax=ax)
    save_figure(fig, out / "class_cooccurrence.png")

    per_image = findings.groupby("image_id").size().reindex(images, fill_value=0)
    fig, ax = plt.subplots(figsize=(7, 4))
    ax.hist(per_image, bins=np.arange(per_image.max() + 2) - 0.5, color="#3b75af")
    ax.set_title("Finding boxes per image (all readers)")
    ax.set_xlabel("boxes")
    ax.set_ylabel("images")
    save_figure(fig, out / "boxes_per_image.png")

    agreement = reader_agreement(findings)
    fig, ax = plt.subplots(figsize=(7, 5))
    _bar(
        ax,
        list(agreement),
        [round(v, 3) for v in agreement.values()],
        "Reader agreement: mean best IoU with another reader",
        "IoU",
    )
    save_figure(fig, out / "reader_agreement.png")
    extra = {"reader_agreement": agreement, "cooccurrence": co.astype(int).tolist()}

    if meta is not None:
        rel = relative_boxes(findings, meta)
        area = (rel.x_max - rel.x_min) * (rel.y_max - rel.y_min) * 100
        groups = [area[rel.class_id == c].to_numpy() for c in range(classes.num_findings)]
        fig, ax = plt.subplots(figsize=(10, 5))
        ax.boxplot(groups, tick_labels=list(classes.findings), showfliers=False)
        ax.tick_params(axis="x", rotation=90, labelsize=7)
        ax.set_ylabel("box area, % of the image")
        ax.set_title("Box size per class (fig. 8)")
        save_figure(fig, out / "fig8_box_area_per_class.png")
        maps = heatmaps(rel, classes.num_findings)
        rows = (classes.num_findings + 1 + 4) // 5  # a panel per finding, then their mean
        fig, axes = plt.subplots(rows, 5, figsize=(14, 3 * rows))
        for k, ax in enumerate(axes.flat):
            if k > classes.num_findings:
                ax.axis("off")
                continue
            last = k == classes.num_findings
            data, title = (maps.mean(0), "Mean") if last else (maps[k], classes.findings[k])
            ax.imshow(data, cmap="hot")
            ax.set_title(title, fontsize=8)
            ax.axis("off")
        fig.suptitle("Where boxes lie (fig. 9)")
        save_figure(fig, out / "fig9_heatmaps.png")
        extra["box_area_percent_median"] = {
            classes.findings[c]: float(np.median(g)) for c, g in enumerate(groups) if len(g)
        }
    return extra


def diagnosis_figure(g: GlobalLabels, out: Path) -> dict:
    """Images per diagnosis (the readers' majority), drawn and returned for the summary."""
    counts = {name: int(n) for name, n in g.labels.sum().items()}
    fig, ax = plt.subplots(figsize=(7, 3.5))
    _bar(ax, list(counts), list(counts.values()), "Images per diagnosis", "images")
    save_figure(fig, out / "diagnoses.png")
    if g.readers > 1:
        source = f"{Path(g.path).name}, the majority of up to {g.readers} readers an image"
    else:
        source = f"{Path(g.path).name}, one label set an image"
    return {"source": source, "images": counts, "labelled_images": len(g.labels)}


def write_markdown(summary: dict, path: Path) -> None:
    lines = [
        "# Dataset summary",
        "",
        f"- rows: {summary['rows']}",
        f"- images: {summary['images']}",
        f"- normal images (every reader: No finding): {summary['normal_images']}",
    ]
    if "label_issues" in summary:
        li = summary["label_issues"]
        lines.append(
            f"- boxes outside their image (the meta's size): {li['boxes_clipped']} clipped, "
            f"{li['boxes_dropped']} dropped, in {li['images_affected']} images "
            "(label_issues.csv lists them)"
        )
    if "readers" in summary:
        lines.append(f"- **readers**: {summary['readers']}")
    if "augment_preview" in summary:
        lines.append(f"- augmentation preview: {summary['augment_preview']}")
    if "meta_mismatch" in summary:
        lines.append(f"- **the meta does not fit the labels**: {summary['meta_mismatch']}")
    lines += [
        "",
        "| class | rows | images | reader agreement (IoU) |",
        "|---|---:|---:|---:|",
    ]
    agree = summary.get("reader_agreement", {})
    for name, n in summary["class_counts"].items():
        a = f"{agree[name]:.3f}" if name in agree else "-"
        lines.append(f"| {name} | {n} | {summary['images_per_class'].get(name, 0)} | {a} |")
    lines += ["", "| radiologist | rows |", "|---|---:|"]
    lines += [f"| {r} | {n} |" for r, n in summary["rad_counts"].items()]
    if "diagnoses" in summary:
        d = summary["diagnoses"]
        lines += ["", f"Diagnoses ({d['source']}):", "", "| diagnosis | images |", "|---|---:|"]
        lines += [f"| {name} | {n} |" for name, n in d["images"].items()]
    if "split" in summary:
        sp = summary["split"]
        lines += [
            "",
            f"Split `{sp['mode']}` (seed {sp['seed']}): {sp['train_images']} train / "
            f"{sp['val_images']} validation images.",
        ]
    path.write_text("\n".join(lines) + "\n")


def label_figures(labels: pd.DataFrame, meta: pd.DataFrame, meta_csv, out: Path) -> dict:
    """What training would change in the labels to fit them to the meta's image sizes (boxes
    clipped, dropped; ``label_issues.csv``), and whether the two belong together at all."""
    issues = []
    findings = labels[~is_no_finding(labels)]
    for image_id, rows in findings[findings["image_id"].isin(meta.index)].groupby("image_id"):
        hw = (int(meta.at[image_id, "dim0"]), int(meta.at[image_id, "dim1"]))
        boxes = rows[BOX_COLUMNS].to_numpy(np.float64)
        issues += box_issues(image_id, "all", rows["class_id"].to_numpy(), boxes, hw)[2]
    if issues:
        issues_frame(issues).to_csv(out / "label_issues.csv", index=False)
    figures = {"label_issues": issue_summary(issues)}
    problem = mismatch(labels, meta, meta_csv)
    if problem:
        print(f"warning: {problem}", file=sys.stderr)
        figures["meta_mismatch"] = problem
    return figures


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="cxrdet eda", description=__doc__.split("\n")[0])
    p.add_argument(
        "--labels",
        required=True,
        help="Kaggle's train.csv or the release's annotations_train.csv / annotations_test.csv",
    )
    p.add_argument("--meta", help="image_id,dim0,dim1 CSV (enables figs 8 and 9)")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--split", choices=SPLIT_MODES, help="also report this split's sizes")
    p.add_argument("--seed", type=int, default=111, help="split seed (default 111, as training)")
    p.add_argument("--fold", type=int, default=0, help="kfold: the validation fold")
    p.add_argument(
        "--augment-preview",
        type=int,
        default=0,
        metavar="N",
        help="draw one image and N augmented variants (needs --meta and --images)",
    )
    p.add_argument("--images", help="prepared PNG folder for --augment-preview")
    p.add_argument("--augment", default="seed", help="augment config name (default seed)")
    p.add_argument(
        "--global-labels",
        help="the release's image_labels_train.csv or image_labels_test.csv: images per "
        "diagnosis (the readers' majority)",
    )
    a = p.parse_args(argv)
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    try:
        labels, report = read_labels(a.labels)
        meta = None
        if a.meta:
            from cxrdet.data.meta import read_meta

            meta = read_meta(a.meta)
        summary = summarise(labels)
        summary["skipped_rows"] = report.n_skipped
        if not report.readers:
            why = "no rad_id column"
            if report.layout == "release":
                why = "the consensus of five readers"
            summary["readers"] = (
                f"{a.labels} has one label set an image ({why}): no per-reader figures"
            )
        if meta is not None:
            summary.update(label_figures(labels, meta, a.meta, out))
        summary.update(write_figures(labels, meta, out, report.classes))
        if a.global_labels:
            summary["diagnoses"] = diagnosis_figure(read_global_labels(a.global_labels), out)
        if a.split:
            train, val = split_ids(labels, a.split, seed=a.seed, fold=a.fold)
            summary["split"] = {
                "mode": a.split,
                "seed": a.seed,
                "train_images": len(train),
                "val_images": len(val),
            }
        if a.augment_preview and (meta is None or not a.images):
            p.error("--augment-preview needs --meta and --images")
    except (FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if a.augment_preview:  # after the summary's figures: a preview that fails costs only itself
        try:
            augment_preview(Path(a.images), meta, labels, a.augment_preview, a.augment, out)
        except (FileNotFoundError, ValueError) as e:
            summary["augment_preview"] = f"not drawn: {e}"
            print(f"warning: --augment-preview: {e}", file=sys.stderr)
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    write_markdown(summary, out / "summary.md")
    print(f"wrote {len(list(out.glob('*.png')))} figures, summary.json and summary.md to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
