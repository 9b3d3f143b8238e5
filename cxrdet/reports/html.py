"""One self-contained HTML page per run: ``RUN_DIR/report/index.html``.

Everything is inlined (figures and gallery images as base64 PNGs, the style in the page), so the
file opens offline and can be copied alone. Sections: the run (its main settings), the curves
and per-class figures, the per-class table, the readers' baseline, FROC, the error breakdown,
and a gallery of the worst false positives and the missed findings per class, ground truth
beside prediction. No image id or path is written into the page.
"""

from __future__ import annotations

import base64
import html
from pathlib import Path

import cv2
import numpy as np

from cxrdet.evaluation.bootstrap import ci_text
from cxrdet.evaluation.errors import ERROR_NAMES, ERROR_TYPES
from cxrdet.evaluation.radiology import TRUTH_NOTES, error_cell, fmt, matches_readers

STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1100px; color: #222; }
h1 { font-size: 1.6em; } h2 { border-bottom: 1px solid #ccc; padding-bottom: .2em; }
table { border-collapse: collapse; margin: .5em 0 1em; }
td, th { border: 1px solid #ccc; padding: .2em .6em; text-align: right; }
th { background: #f0f0f0; } td:first-child, th:first-child { text-align: left; }
img.figure { max-width: 760px; display: block; } .note { color: #555; font-size: .9em; }
.gallery { display: flex; flex-wrap: wrap; gap: 1em; background: #eef4fb; padding: .6em; }
.gallery figure { margin: 0; } .gallery figcaption { font-size: .8em; max-width: 520px; }
.better { background: #e3f4e3; }
"""


def png_data(image: np.ndarray | Path) -> str:
    """A data: URI of a PNG file or of a BGR/grey array."""
    if isinstance(image, Path):
        raw = image.read_bytes()
    else:
        ok, buffer = cv2.imencode(".png", image)
        if not ok:
            raise ValueError("could not encode a gallery image as PNG")
        raw = buffer.tobytes()
    return "data:image/png;base64," + base64.b64encode(raw).decode("ascii")


def cell(value) -> str:
    if value is None or isinstance(value, float):
        return f"<td>{fmt(value)}</td>"
    return f"<td>{html.escape(str(value))}</td>"


def table(header: list[str], rows: list[list], row_class: list[str] | None = None) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = []
    for k, row in enumerate(rows):
        attr = f' class="{row_class[k]}"' if row_class and row_class[k] else ""
        body.append(f"<tr{attr}>" + "".join(cell(v) for v in row) + "</tr>")
    return f"<table><tr>{head}</tr>{''.join(body)}</table>"


SUMMARY_START, SUMMARY_END = "<!-- summary -->", "<!-- /summary -->"


def with_summary(path: Path, title: str, rows: list[tuple[str, str]], note: str = "") -> Path:
    """Open a written page with a table of ``(name, value)`` rows (and a note under it), right
    after its title; a summary put there before is replaced (a rerun of ``make demo``)."""
    page = path.read_text(encoding="utf-8")
    if SUMMARY_START in page:
        before, rest = page.split(SUMMARY_START, 1)
        page = before + rest.split(SUMMARY_END, 1)[1]
    head, title_end, rest = page.partition("</h1>")
    if not title_end:
        raise ValueError(f"{path}: no <h1> title to put the summary under")
    section = (
        f"{SUMMARY_START}<h2>{html.escape(title)}</h2>"
        + table(["stage or figure", "what it did: time, or value"], [list(r) for r in rows])
        + (f"<p class='note'>{html.escape(note)}</p>" if note else "")
        + SUMMARY_END
    )
    path.write_text(head + title_end + section + rest, encoding="utf-8")
    return path


def settings_section(settings: dict) -> str:
    return "<h2>Run</h2>" + table(["setting", "value"], [[k, v] for k, v in settings.items()])


def per_class_section(scores: dict, source: str | None) -> str:
    rows = [
        [f"{c} {scores['class_names'][c]}", ap, scores["AP40_per_class"].get(c)]
        for c, ap in sorted(scores["mAP40_per_class"].items())
    ]
    return (
        "<h2>Per class</h2>"
        f"<p>mAP40 {scores['mAP40']:.3f}{ci_text(scores.get('mAP40_ci'))} (the competition's; "
        "[low, high]: its 95 % bootstrap interval over the images) and AP40 "
        f"{scores['AP40']:.3f} "
        f"(COCO-style, findings 0-{len(scores['class_names']) - 2}) of "
        f"{html.escape(source or 'the checkpoint')} on {scores['images']} validation images.</p>"
        + table(["class", "mAP40", "AP40"], rows)
    )


def readers_section(r: dict) -> str:
    out = "<h2>The model beside the radiologists</h2>"
    if not r["readers"]:
        return out + "<p>No validation image has two readers: nothing to compare with.</p>"
    out += (
        f"<p>On {r['images']} images read by two or more radiologists, each reader is scored "
        "against the other readers' boxes fused, and the model against the same truths "
        "(means weighted by the images each reader read).</p>"
    )
    rows = [[x["reader"], x["images"], x["reader_mAP40"], x["model_mAP40"]] for x in r["readers"]]
    rows.append(["mean", "", r["readers_mAP40"], r["mAP40_vs_readers"]])
    out += table(["reader", "images", "reader mAP40", "model mAP40"], rows)
    per_class = sorted(r["per_class"].items())
    marks = ["better" if matches_readers(human, model) else "" for _, (human, model) in per_class]
    out += (
        "<p class='note'>Per class: the competition's AP at IoU 0.4. Green: classes where the "
        "model already matches or beats the readers.</p>"
    )
    rows = [[f"{c} {r['class_names'][c]}", h, m] for c, (h, m) in per_class]
    out += table(["class", "readers AP", "model AP"], rows, marks)
    out += (
        "<p class='note'>A reader's AP is one tied block (every mark at score 1: precision x "
        "recall), another construct than the model's ranked AP. The operating points compare "
        "like with like.</p>"
    )
    return out + operating_points_section(r.get("operating_points"), r["class_names"])


def operating_points_section(points: dict | None, names: list[str]) -> str:
    if not points or not (points["readers"] or points["per_class"]):
        return ""
    out = (
        "<h3>The readers at their operating points</h3><p>Each reader's share of lesions found "
        "and false positives per image on their leave-one-out lesions (FROC's rules), beside "
        "the model's share found at that rate of false positives, read on its FROC curve. "
        "Above, within or below: the paired 95 % bootstrap interval of model minus reader "
        "lies above 0, holds it, or lies under it. Per class, the readers pooled.</p>"
    )
    rows = [[f"reader {p['reader']}", p] for p in points["readers"]]
    rows += [[f"{c} {names[c]}", p] for c, p in sorted(points["per_class"].items())]
    body = [
        [
            name,
            p["lesions"],
            p["reader_fps"],
            p["reader_sensitivity"],
            p["model_sensitivity"],
            (p["verdict"] or "-") + (ci_text(p["difference_ci"]) if p["verdict"] else ""),
        ]
        for name, p in rows
    ]
    marks = ["better" if p["verdict"] == "above" else "" for _, p in rows]
    header = ["", "lesions", "FP/image", "reader found", "model found", "model - reader"]
    return out + table(header, body, marks)


def froc_section(f: dict, figure: Path | None) -> str:
    out = (
        "<h2>FROC</h2><p>The share of lesions found at mean false positives per image (IoU "
        f"0.4; {TRUTH_NOTES[f.get('truth', 'fused')]}, {f.get('lesions', 0)} lesions; a second "
        "detection on a found lesion is no false positive), read at the step at or below each "
        "rate; the CPM is their mean. All findings counts a detection of any class on a lesion"
    )
    cpm = f"{f['CPM']:.3f}{ci_text(f.get('CPM_ci'))}" if f["sensitivity"] else ""
    out += f". All findings: CPM {cpm}.</p>" if f["sensitivity"] else ".</p>"
    if figure is not None:
        out += f"<img class='figure' alt='FROC' src='{png_data(figure)}'>"
    rows = []
    if f["sensitivity"]:
        rows.append(["all findings", *f["sensitivity"], f["CPM"]])
    if rows:
        rows[0].append(f.get("lesions"))
    rows += [
        [f"{c} {f['class_names'][c]}", *v["sensitivity"], v["CPM"], v.get("lesions")]
        for c, v in sorted(f["per_class"].items())
    ]
    return out + table(["", *(f"{r:g} FP" for r in f["rates"]), "CPM", "lesions"], rows)


def calibration_section(c: dict, figure: Path | None) -> str:
    out = (
        "<h2>Calibration</h2><p>Do the scores a reader is shown mean a probability? The "
        f"detections scoring at least {c['threshold']:g}, in 10 score bins: the share right "
        "(a true positive at IoU 0.4, as the competition matches) against the mean score; "
        f"D-ECE (Küppers et al. 2020) {c['ECE']:.3f} over {c['count']} detections (0: every "
        "score is the share of its detections that are right).</p>"
    )
    if figure is not None:
        out += f"<img class='figure' alt='reliability' src='{png_data(figure)}'>"
    rows = [[f"{b['low']:.1f}-{b['high']:.1f}", b["count"], b["confidence"], b["accuracy"]]
            for b in c["bins"]]  # fmt: skip
    return out + table(["score bin", "detections", "mean score", "share right"], rows)


def errors_section(e: dict) -> str:
    out = (
        "<h2>Where the errors are</h2><p>Each false positive's type (TIDE's definitions at IoU "
        "0.4, background 0.1) and each ground-truth box no detection found. The first row is "
        "the mAP40 the oracle's fix of each type would gain; per class, each type's count and "
        "the class's AP fixing them would gain.</p>"
    )
    header = ["", *(ERROR_NAMES[t] for t in ERROR_TYPES)]
    rows = [["mAP40 gained if fixed", *(e["dAP"][t] for t in ERROR_TYPES)]]
    classes = sorted({c for t in ERROR_TYPES for c in e["counts"][t]})
    rows += [
        [f"{c} {e['class_names'][c]}", *(error_cell(e, t, c) for t in ERROR_TYPES)] for c in classes
    ]
    return out + table(header, rows)


def gallery_section(items: list[tuple[np.ndarray, str]]) -> str:
    out = (
        "<h2>Gallery</h2><p>Per class, the highest-scoring false positives and the missed "
        "findings: ground truth on the left, the prediction on the right (the error in red).</p>"
    )
    if not items:
        return out + "<p>No errors to show.</p>"
    figures = [
        f"<figure><img alt='{html.escape(caption)}' src='{png_data(image)}'>"
        f"<figcaption>{html.escape(caption)}</figcaption></figure>"
        for image, caption in items
    ]
    return out + f"<div class='gallery'>{''.join(figures)}</div>"


def figure_tags(figures: list[Path]) -> str:
    return "".join(
        f"<img class='figure' alt='{html.escape(p.stem)}' src='{png_data(p)}'>" for p in figures
    )


def write_html(
    path: Path,
    title: str,
    settings: dict,
    figures: list[Path],
    scores: dict | None = None,
    radiology: dict | None = None,
    froc_figure: Path | None = None,
    calibration: dict | None = None,
    calibration_figure: Path | None = None,
    gallery: list[tuple[np.ndarray, str]] | None = None,
    images_figure: Path | None = None,
    source: str | None = None,
) -> Path:
    """The page (see the module docstring); sections without data are left out.
    ``images_figure``: the grid of validation images (fig 12), shown last; ``source``: the
    checkpoint that made ``scores`` (its name and step)."""
    parts = [f"<h1>{html.escape(title)}</h1>", settings_section(settings), "<h2>Curves</h2>"]
    parts.append(figure_tags(figures))
    if scores:
        parts.append(per_class_section(scores, source))
    radiology = radiology or {}
    if "readers" in radiology:
        parts.append(readers_section(radiology["readers"]))
    if "froc" in radiology:
        parts.append(froc_section(radiology["froc"], froc_figure))
    if calibration is not None:
        parts.append(calibration_section(calibration, calibration_figure))
    if "errors" in radiology:
        parts.append(errors_section(radiology["errors"]))
    if gallery is not None:
        parts.append(gallery_section(gallery))
    if images_figure is not None:
        parts.append("<h2>Validation images</h2>" + figure_tags([images_figure]))
    page = (
        "<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>"
        f"<title>{html.escape(title)}</title><style>{STYLE}</style></head><body>"
        + "\n".join(parts)
        + "</body></html>\n"
    )
    path.write_text(page, encoding="utf-8")
    return path
