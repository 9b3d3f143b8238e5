"""The radiology metrics of one scored set, and their text tables (``cxrdet score --readers
--froc --errors``, the demo's summary, the HTML report).

- the readers' baseline (:mod:`cxrdet.evaluation.readers`): needs the labels before fusion;
- FROC and the CPM (:mod:`cxrdet.evaluation.froc`);
- the TIDE-style error breakdown (:mod:`cxrdet.evaluation.errors`).
"""

from __future__ import annotations

import math

import pandas as pd

from cxrdet.data.classes import KAGGLE14, ClassSet
from cxrdet.evaluation.bootstrap import bootstrap_cpm, ci_text, figure_interval, image_weights
from cxrdet.evaluation.errors import ERROR_NAMES, ERROR_TYPES, error_breakdown
from cxrdet.evaluation.froc import froc, lesion_scores
from cxrdet.evaluation.lesions import lesion_truth
from cxrdet.evaluation.operating_points import operating_points
from cxrdet.evaluation.readers import leave_one_out, readers_baseline

READERS_FUSION = "wbf"  # how the other readers' boxes become the truth, unless told otherwise
TRUTH_NOTES = {
    "fused": "the readers' boxes fused per lesion",
    "agreement": "lesions two or more readers marked; single marks ignored",
}


def radiology_scores(
    gt: dict,
    dets: dict,
    labels: pd.DataFrame | None = None,
    readers: bool = True,
    froc_: bool = True,
    errors: bool = True,
    iou: float = 0.4,
    fusion: str = READERS_FUSION,
    fusion_iou: float = 0.4,
    truth: str = "fused",
    resamples: int = 0,
    seed: int = 0,
    classes: ClassSet = KAGGLE14,
) -> dict:
    """The chosen metrics: ``{"readers", "froc", "errors"}`` (those asked for), each with its
    ``class_names`` (by id, for the tables).

    Args:
        gt, dets: the scored ground truth and submission (original pixels, class 14 included).
        labels: the same images' labels before fusion, one row per reader's box (train.csv
            columns): the readers' baseline needs them, and with them FROC and the errors
            count lesions (:func:`cxrdet.evaluation.lesions.lesion_truth`) instead of ``gt``'s
            boxes.
        fusion: how readers' boxes are fused into a reader's truth and into lesions (``none``:
            WBF).
        truth: ``fused`` (every lesion) or ``agreement`` (lesions two readers marked; the
            others ignored by FROC).
        resamples, seed: bootstrap resamples of the images (0: none) for FROC's ``CPM_ci``
            and the readers' operating points' verdicts (:mod:`cxrdet.evaluation.bootstrap`).
        classes: the class set of the ids.
    """
    no_finding = classes.no_finding
    out = {}
    if readers:
        if labels is None:
            raise ValueError("the readers' baseline needs the labels before fusion")
        sets = leave_one_out(labels, fusion, fusion_iou)
        out["readers"] = readers_baseline(sets, dets, iou, classes)
        out["readers"]["rad_id_missing"] = bool(labels["rad_id"].isna().all())
        out["readers"]["operating_points"] = operating_points(
            sets, dets, iou, resamples, seed, no_finding
        )
    lesions, ignore = gt, {}
    if labels is not None and (froc_ or errors):
        lesions, ignore = lesion_truth(labels, list(gt), fusion, fusion_iou, truth)
    if froc_:
        found = froc(lesions, dets, iou, ignore=ignore, no_finding=no_finding)
        out["froc"] = {**found, "truth": truth}
        if resamples:
            (best, _, image), (fp, _, fp_image) = lesion_scores(
                lesions, ignore, dets, iou, True, no_finding
            )
            weights = image_weights(len(lesions), resamples, seed)
            resampled = bootstrap_cpm(best, image, fp, fp_image, weights)
            out["froc"]["CPM_ci"] = figure_interval(resampled, found["CPM"], len(lesions))
    if errors:
        out["errors"] = error_breakdown(lesions, dets, iou)
    for result in out.values():
        result["class_names"] = classes.names
    return out


def fmt(value: float) -> str:
    return (
        "-" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.3f}"
    )


def matches_readers(human: float, model: float) -> bool:
    """Whether the model's AP matches or beats the readers' on a class (0 = 0 does not)."""
    return model >= human and model > 0


def readers_table(r: dict) -> list[str]:
    """The model beside each reader and the readers' mean, then per class."""
    if r.get("rad_id_missing"):
        return [
            "readers' baseline: the labels have no rad_id column (which radiologist drew each "
            "box), so no reader can be scored against the others"
        ]
    if not r["readers"]:
        return ["readers' baseline: no image has two readers (nothing to compare with)"]
    lines = [
        f"readers' baseline on {r['images']} image(s) read by two or more radiologists: each "
        "reader scored against the others fused, the model against the same truths",
        f"  {'reader':<10s} {'images':>7s} {'reader mAP40':>13s} {'model mAP40':>12s}",
    ]
    for row in r["readers"]:
        lines.append(
            f"  {row['reader']:<10s} {row['images']:7d} {fmt(row['reader_mAP40']):>13s} "
            f"{fmt(row['model_mAP40']):>12s}"
        )
    lines.append(
        f"  {'mean':<10s} {'':7s} {fmt(r['readers_mAP40']):>13s} {fmt(r['mAP40_vs_readers']):>12s}"
        "   (weighted by images)"
    )
    lines.append(f"  {'class (AP at IoU 0.4)':<24s} {'readers':>12s} {'model':>11s}")
    for c, (human, model) in sorted(r["per_class"].items()):
        mark = "  model >= readers" if matches_readers(human, model) else ""
        name = r["class_names"][c]
        lines.append(f"  {c:2d} {name:<21s} {fmt(human):>12s} {fmt(model):>11s}{mark}")
    lines.append(
        "  (a reader's AP is one tied block, every mark at score 1: precision x recall, another "
        "construct than the model's ranked AP; the operating points below compare like with like)"
    )
    return lines + operating_points_table(r.get("operating_points"), r["class_names"])


def operating_points_table(points: dict | None, names: list[str]) -> list[str]:
    """Each reader's (sensitivity, FPs per image) on their leave-one-out lesions beside the
    model's sensitivity at that FP rate, and the paired verdict."""
    if not points or not (points["readers"] or points["per_class"]):
        return []
    lines = [
        "the readers at their operating points: lesions found and false positives per image "
        "(FROC's rules), the model read on its FROC curve at the reader's FP rate; above / "
        "within / below: the paired 95 % bootstrap interval of model - reader",
        f"  {'':24s} {'lesions':>7s} {'FP/image':>9s} {'reader':>7s} {'model':>7s}  verdict",
    ]
    rows = [(f"reader {p['reader']}", p) for p in points["readers"]]
    rows += [(f"{c:2d} {names[c]}", p) for c, p in sorted(points["per_class"].items())]
    for name, p in rows:
        verdict = p["verdict"] or "-"
        ci = ci_text(p["difference_ci"]) if p["verdict"] else ""
        lines.append(
            f"  {name:<24s} {p['lesions']:7d} {p['reader_fps']:9.3f} "
            f"{p['reader_sensitivity']:7.3f} {p['model_sensitivity']:7.3f}  {verdict}{ci}"
        )
    return lines


def froc_table(r: dict) -> list[str]:
    """Sensitivity at each FP rate, all findings and per class, with the CPM."""
    rates = "".join(f"{rate:>7g}" for rate in r["rates"])
    lines = [
        f"FROC at IoU 0.4 on {r['images']} image(s), {r.get('lesions', 0)} lesion(s) "
        f"({TRUTH_NOTES[r.get('truth', 'fused')]}): lesions found at mean false positives per "
        "image (the step at or below each rate; a second hit on a found lesion is no FP)",
        f"  {'':24s}{rates}    CPM  lesions",
    ]
    if r["sensitivity"]:
        values = "".join(f"{s:7.3f}" for s in r["sensitivity"])
        ci = ci_text(r.get("CPM_ci"))
        lines.append(f"  {'all findings':<24s}{values}  {r['CPM']:.3f}   (any class){ci}")
    for c, v in sorted(r["per_class"].items()):
        values = "".join(f"{s:7.3f}" for s in v["sensitivity"])
        lines.append(
            f"  {c:2d} {r['class_names'][c]:<21s}{values}  {v['CPM']:.3f}"
            f"  {v.get('lesions', ''):>7}"
        )
    return lines


def error_cell(r: dict, t: str, c: int) -> str:
    """A class's count of one error type, and the AP fixing them would gain (classes with
    ground truth): ``12 +0.031``."""
    gain = r["dAP_per_class"][t].get(c)
    count = r["counts"][t].get(c, 0)
    return f"{count}" if gain is None or gain != gain else f"{count} +{max(gain, 0.0):.3f}"


def errors_table(r: dict) -> list[str]:
    """The mAP40 fixing each error type would gain, then per class each type's count and the
    class's AP gained by fixing them."""
    head = "".join(f"{t:>13s}" for t in ERROR_TYPES)
    lines = [
        f"errors (TIDE-style, IoU 0.4, background 0.1) of mAP40 {fmt(r['mAP40'])}: "
        + ", ".join(f"{t} {ERROR_NAMES[t]}" for t in ERROR_TYPES),
        f"  {'mAP40 gained if fixed':<24s}" + "".join(f"{r['dAP'][t]:13.3f}" for t in ERROR_TYPES),
        f"  {'count, AP gained':<24s}{head}",
    ]
    classes = sorted({c for t in ERROR_TYPES for c in r["counts"][t]})
    for c in classes:
        cells = "".join(f"{error_cell(r, t, c):>13s}" for t in ERROR_TYPES)
        lines.append(f"  {c:2d} {r['class_names'][c]:<21s}{cells}")
    return lines


def by_name(table: dict, value=lambda v: v) -> dict:
    """``table`` with its class ids as JSON keys (strings), each value through ``value``."""
    return {str(c): value(v) for c, v in table.items()}


def as_json(scores: dict) -> dict:
    """The metrics as plain JSON values (class ids as strings; the error rows left out)."""
    out = {}
    if "readers" in scores:
        r = scores["readers"]
        out["readers"] = {
            "readers_mAP40": r["readers_mAP40"],
            "mAP40_vs_readers": r["mAP40_vs_readers"],
            "images": r["images"],
            "per_reader": [
                {k: row[k] for k in ("reader", "images", "reader_mAP40", "model_mAP40")}
                for row in r["readers"]
            ],
            "per_class": by_name(r["per_class"], list),
            "operating_points": {
                "readers": r.get("operating_points", {}).get("readers", []),
                "per_class": by_name(r.get("operating_points", {}).get("per_class", {})),
            },
        }
    if "froc" in scores:
        f = scores["froc"]
        out["froc"] = {
            "rates": f["rates"],
            "sensitivity": f["sensitivity"],
            "CPM": f["CPM"],
            "CPM_ci": f.get("CPM_ci"),
            "lesions": f.get("lesions"),
            "truth": f.get("truth"),
            "per_class": by_name(f["per_class"]),
        }
    if "errors" in scores:
        e = scores["errors"]
        out["errors"] = {
            "mAP40": e["mAP40"],
            "dAP": e["dAP"],
            "dAP_per_class": {t: by_name(v) for t, v in e["dAP_per_class"].items()},
            "counts": {t: by_name(v, int) for t, v in e["counts"].items()},
        }
    return out
