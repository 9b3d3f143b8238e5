"""make demo's summary: one line per stage (what it did, how long it took) and the figures, each
naming the checkpoint and the images it comes from, with its 95 % interval; the same table opens
the training run's HTML report."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from cxrdet.evaluation.bootstrap import ci_text

NOTE = (
    "AP40: the seed's COCO-style AP at IoU 0.4 over the findings; mAP40: the competition's VOC\n"
    "AP at IoU 0.4 over the classes present, No finding included. Validation: the best\n"
    "checkpoint (the one predicting the test set) against the three readers fused with WBF;\n"
    "test: one consensus reader. Each reader at their operating point: their share of the other\n"
    "two's lesions found at their false positives per image, the model read at the same rate\n"
    "(paired interval). CPM: mean share of lesions found at 1/8..8 false positives per image\n"
    "(readers' boxes fused per lesion; any class on a lesion finds it). AUC: P(abnormal) of the\n"
    "classifier's best checkpoint (by validation AUC) against 'a reader marked a finding'. The\n"
    "filter (predict.py nofinding.low/high) makes each image's No-finding line from the\n"
    "classifier's P(abnormal) instead of from the detector's top score. [low, high]: 95 %\n"
    "intervals over 1,000 bootstrap resamples of the images (the gain's paired); '≈ chance'\n"
    "when an AUC's interval holds 0.5; mAP40, AP40 and the CPM get none on fewer than 300\n"
    "images (too few to cover). ECE: how far a score is from the share it should mean (0:\n"
    "calibrated), for the detections scoring >= 0.3 (right: a true positive at IoU 0.4) and\n"
    "the classifier's P(abnormal), before and after a temperature fitted on validation."
)


@dataclass
class Stage:
    """One stage of the demo: its name, what it did, and its seconds (None: reused)."""

    name: str
    did: str
    seconds: float | None

    def took(self) -> str:
        return "reused" if self.seconds is None else f"{self.seconds:.0f} s"

    def line(self) -> str:
        hint = " (make demo FORCE=1 redoes it)" if self.seconds is None else ""
        return f"{self.name:<9s} {self.did}: {self.took()}{hint}"


def validation_rows(path: Path) -> list[tuple[str, str]]:
    """The detector's validation figures, all of the checkpoint the test set is predicted
    with (the report's ``figures.json``: the best checkpoint, named), intervals beside them."""
    if not path.is_file():
        return [("validation", f"no {path} (the report was not made)")]
    f = json.loads(path.read_text())
    where = f"{f['checkpoint']}, {f['images']} images"
    rows = [
        (f"validation AP40 ({where})", f"{f['AP40']:.3f}"),
        (f"validation mAP40 ({where})", f"{f['mAP40']:.3f}{ci_text(f['mAP40_ci'])}"),
    ]
    if "CPM" in f:
        rows.append(
            ("validation CPM (FROC, 1/8-8 FPs/image)", f"{f['CPM']:.3f}{ci_text(f['CPM_ci'])}")
        )
    points = f.get("operating_points") or []
    if points:
        verdicts = [p["verdict"] for p in points]
        counts = ", ".join(f"{verdicts.count(v)} {v}" for v in ("above", "within", "below"))
        rows.append(
            (
                "model at each reader's FP rate",
                f"{counts} the reader's share of lesions found ({len(points)} readers)",
            )
        )
    return rows


def auc_text(auc: float, ci) -> str:
    """``0.926 [0.812, 1.000]``, with ``: ≈ chance`` when the interval holds 0.5."""
    text = f"{auc:.3f}{ci_text(ci)}"
    if ci and ci[0] <= 0.5 <= ci[1]:
        text += ": ≈ chance"
    return text


def classifier_validation_row(run: Path) -> tuple[str, str]:
    """The classifier's best checkpoint on its own validation images."""
    from cxrdet.inference.classifier_cv import validation_auc

    r = validation_auc(run)
    where = f"{r['checkpoint']}, {r['images']} images"
    return (f"classifier validation AUC ({where})", auc_text(r["AUC"], r["AUC_ci"]))


def classifier_test_row(probs_csv: Path, labels_csv: Path, checkpoint: Path) -> tuple[str, str]:
    """The classifier's P(abnormal) that ``predict.py`` used on the test images (written beside
    its submission) against the test labels."""
    from cxrdet.data.labels import normal_image_ids, read_labels
    from cxrdet.data.probs_csv import read_probs
    from cxrdet.inference.classifier_cv import auc, auc_interval

    probs = read_probs(str(probs_csv), None)
    labels, _ = read_labels(labels_csv)
    normal = normal_image_ids(labels)
    where = f"{checkpoint.name}, {len(probs)} images"
    return (
        f"classifier test AUC ({where})",
        auc_text(auc(probs, normal), auc_interval(probs, normal)),
    )


def calibration_rows(
    scored: tuple[dict, dict], classes, probs_csv: Path, labels_csv: Path, classifier: Path
) -> list[tuple[str, str]]:
    """The test set's calibration: the detector's shown detections (D-ECE) and the
    classifier's P(abnormal), raw and with a temperature fitted on its validation images (as
    ``cxrdet calibrate`` would write it)."""
    from cxrdet.data.labels import normal_image_ids, read_labels
    from cxrdet.data.probs_csv import read_probs
    from cxrdet.evaluation.calibration import (
        classifier_calibration,
        detection_calibration,
        fit_temperature,
        with_temperature,
    )
    from cxrdet.evaluation.evaluator import findings_only
    from cxrdet.inference.classifier_cv import validation_probs

    gt, dets = scored
    d = detection_calibration(findings_only(gt, classes), findings_only(dets, classes))
    probs = read_probs(str(probs_csv), None)
    labels, _ = read_labels(labels_csv)
    test = classifier_calibration(probs, normal_image_ids(labels))
    val_probs, val_normal = validation_probs(classifier)
    t = fit_temperature(list(val_probs.values()), [i not in val_normal for i in val_probs])
    after = classifier_calibration(with_temperature(probs, t), normal_image_ids(labels))
    return [
        (
            f"test D-ECE (detections >= {d['threshold']:g}, {d['count']})",
            f"{d['ECE']:.3f}",
        ),
        (
            f"classifier test ECE (T = {t:.2f} fitted on validation)",
            f"{test['ECE']:.3f} raw, {after['ECE']:.3f} with T",
        ),
    ]


def print_summary(stages: list[Stage], rows: list[tuple[str, str]]) -> None:
    print("\n=== cxrdet demo summary")
    for stage in stages:
        print(f"  {stage.line()}")
    print()
    for name, value in rows:
        print(f"  {name:<44s} {value}")
    print("  " + NOTE.replace("\n", "\n  "))


def add_to_report(page: Path, stages: list[Stage], rows: list[tuple[str, str]]) -> bool:
    """Open the run's report page with the same table (see
    :func:`cxrdet.reports.html.with_summary`); False when there is no page."""
    from cxrdet.reports.html import with_summary

    if not page.is_file():
        return False
    lines = [(s.name, f"{s.did}: {s.took()}") for s in stages]
    with_summary(page, "make demo", [*lines, *rows], NOTE)
    return True
