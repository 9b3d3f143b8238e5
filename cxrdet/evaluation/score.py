"""Score a submission against labels locally.

    cxrdet score --labels LABELS.csv --submission submission.csv
        [--iou 0.4] [--fusion none|wbf|nms --fusion-iou 0.4] [--json]
        [--split valid20|kfold --fold K --seed S --val-fraction 0.2 --n-folds 5]
        [--coco-out DIR --meta META.csv] [--readers] [--froc] [--errors]
        [--truth fused|agreement] [--classes kaggle14|local22]
    cxrdet score --labels image_labels_test.csv --diagnoses diagnoses.csv

LABELS is Kaggle's train.csv or the VinDr-CXR release's annotations_train.csv /
annotations_test.csv (boxes in original pixels; told apart by their columns). Their class ids
(``--classes``: the file's own, Kaggle's 14 findings for train.csv, the release's 22 for its
files; another is refused) are the submission's, "No finding" the last (14, or 22). Several
readers are allowed and ``--fusion`` merges them first (see cxrdet.data.fusion); the release's
test file is one reader, the consensus of five, scored as it is. With ``--diagnoses``, the
release's image labels score a global6 classifier's diagnoses instead
(:mod:`cxrdet.evaluation.diagnoses`). Prints

- **mAP40**, the competition metric (cxrdet.evaluation.competition): VOC all-point AP per
  class at IoU >= 0.4 over the classes with ground truth, "No finding" scored as a
  ``0 0 1 1`` box (one per image whose readers found nothing);
- **AP40**, the seed's metric: COCO-style 101-point AP at IoU 0.4, 100 detections per image,
  over the findings (0..13, or 0..21) — the same code as ``val/AP40`` in training;

and a per-class table. ``--json`` prints one object:
``{"mAP40", "AP40", "per_class": {"<class id>": competition AP}, "images"}``.
A malformed submission is rejected with the line and the reason. ``--coco-out DIR`` also
writes the ground truth and the submission as COCO JSON for review tools.

The radiology metrics (:mod:`cxrdet.evaluation.radiology`), each a table after the per-class one
(and a key of the ``--json`` object):

- ``--readers``: the radiologists as a baseline: each reader of an image read by two or more
  scored against the others' boxes fused (with ``--fusion``, WBF when that is ``none``), and
  the submission against the same truths;
- ``--froc``: lesions found at 1/8 … 8 false positives per image and the CPM, over all
  findings (class-agnostic) and per class (:mod:`cxrdet.evaluation.froc`, LUNA16's protocol);
- ``--errors``: a TIDE-style breakdown (classification, localisation, both, duplicate,
  background, missed) with the mAP40 fixing each type would gain.

FROC and the errors count **lesions**: the readers' boxes fused per lesion (``--fusion``, WBF
when that is ``none``), not one box per reader; ``--truth agreement`` keeps as lesions those two
or more readers marked and makes the rest regions FROC ignores
(:mod:`cxrdet.evaluation.lesions`).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from cxrdet.data.classes import CLASS_SETS
from cxrdet.data.fusion import FUSIONS
from cxrdet.data.splits import SPLIT_MODES
from cxrdet.evaluation.bootstrap import MIN_BOXES, RESAMPLES, ci_text
from cxrdet.evaluation.calibration import THRESHOLD, calibration_report, report_text
from cxrdet.evaluation.lesions import TRUTHS
from cxrdet.evaluation.radiology import as_json, errors_table, froc_table, readers_table
from cxrdet.evaluation.scoring import score
from cxrdet.evaluation.submission import SubmissionError


def main_diagnoses(a) -> int:
    """``--diagnoses``: the 6 diagnoses' AUCs (:mod:`cxrdet.evaluation.diagnoses`)."""
    from cxrdet.evaluation.diagnoses import diagnoses_table, score_diagnoses

    try:
        r = score_diagnoses(a.labels, a.diagnoses, a.bootstrap, a.bootstrap_seed)
    except (FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(json.dumps(r) if a.json else "\n".join(diagnoses_table(r)))
    return 0


def recorded_split(submission_csv: str) -> dict:
    """The split ``predict.py split.mode=...`` recorded beside its submission (predict.json)."""
    path = Path(submission_csv).with_name("predict.json")
    if not Path(submission_csv).is_file():
        raise FileNotFoundError(f"submission not found: {submission_csv}")
    split = json.loads(path.read_text()).get("split") if path.is_file() else None
    if not split or split.get("mode") not in ("valid20", "kfold"):
        raise ValueError(
            f"--split from_checkpoint: {path} records no held-out split (predict.py with "
            "split.mode=from_checkpoint writes it); or give --split valid20|kfold and its settings"
        )
    return split


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="cxrdet score",
        description="Score a Kaggle-format submission against train.csv-format labels, or the "
        "VinDr-CXR release's annotations (its consensus test set: annotations_test.csv).",
    )
    p.add_argument(
        "--labels",
        required=True,
        help="ground truth: Kaggle's train.csv or the release's annotations_*.csv",
    )
    p.add_argument(
        "--classes",
        choices=list(CLASS_SETS),
        help="the class set of the labels and the submission (default: the labels file's own: "
        "kaggle14 for train.csv, local22 for the release)",
    )
    p.add_argument("--submission", help="image_id,PredictionString CSV")
    p.add_argument(
        "--diagnoses",
        help="predict.py's diagnoses.csv (a global6 classifier's P(diagnosis)) scored instead of "
        "a submission, against --labels image_labels_test.csv: AUC per diagnosis",
    )
    p.add_argument("--iou", type=float, default=0.4, help="IoU threshold (default 0.4)")
    p.add_argument("--fusion", choices=FUSIONS, default="none", help="merge readers first")
    p.add_argument(
        "--fusion-iou", type=float, default=0.4, help="IoU at which --fusion merges (default 0.4)"
    )
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument(
        "--split",
        choices=[*(m for m in SPLIT_MODES if m != "all_train"), "from_checkpoint"],
        help="score only this split's validation images (as training split them);"
        " from_checkpoint: the split predict.py took from the checkpoint (its predict.json)",
    )
    p.add_argument("--fold", type=int, default=0, help="kfold: the validation fold (default 0)")
    p.add_argument("--seed", type=int, default=111, help="split seed (default 111, as training)")
    p.add_argument(
        "--val-fraction", type=float, default=0.2, help="valid20: held-out share (default 0.2)"
    )
    p.add_argument("--n-folds", type=int, default=5, help="kfold: number of folds (default 5)")
    p.add_argument(
        "--coco-out",
        metavar="DIR",
        help="also write DIR/ground_truth.json and DIR/predictions.json (COCO, for FiftyOne/CVAT)",
    )
    p.add_argument("--meta", help="meta CSV with the original image sizes (for --coco-out)")
    p.add_argument(
        "--readers",
        action="store_true",
        help="each radiologist scored against the others fused, the submission beside them",
    )
    p.add_argument(
        "--froc", action="store_true", help="FROC: lesions found at 1/8..8 FPs per image, CPM"
    )
    p.add_argument(
        "--bootstrap",
        type=int,
        default=RESAMPLES,
        metavar="N",
        help=f"95 %% intervals of mAP40, AP40 and the CPM over N resamples of the images (default "
        f"{RESAMPLES}; 0: none)",
    )
    p.add_argument("--bootstrap-seed", type=int, default=0, help="the resamples' seed")
    p.add_argument(
        "--truth",
        choices=TRUTHS,
        default="fused",
        help="the lesions FROC and --errors count: the readers' boxes fused per lesion "
        "(default), or those two or more readers marked, single marks ignored (agreement)",
    )
    p.add_argument(
        "--errors",
        action="store_true",
        help="TIDE-style error breakdown and the mAP40 each error type costs",
    )
    p.add_argument(
        "--calibration",
        action="store_true",
        help="reliability and expected calibration error of the detections' scores (D-ECE, "
        "matched at IoU 0.4) and, with --probs, of the classifier's P(abnormal)",
    )
    p.add_argument(
        "--calibration-threshold",
        type=float,
        default=THRESHOLD,
        help=f"the detections a reader is shown: score at or above this (default {THRESHOLD})",
    )
    p.add_argument("--probs", help="predict.py's nofinding_probs.csv, for --calibration")
    a = p.parse_args(argv)
    if bool(a.submission) == bool(a.diagnoses):
        p.error("give --submission (boxes) or --diagnoses (the 6 diagnoses), one of them")
    if a.diagnoses:
        return main_diagnoses(a)
    try:
        if a.split == "from_checkpoint":
            split = recorded_split(a.submission)
            a.split, a.fold, a.seed = split["mode"], split["fold"], split["seed"]
            a.val_fraction, a.n_folds = split["val_fraction"], split["n_folds"]
        r = score(
            a.labels,
            a.submission,
            iou=a.iou,
            fusion=a.fusion,
            fusion_iou=a.fusion_iou,
            split=a.split,
            fold=a.fold,
            seed=a.seed,
            val_fraction=a.val_fraction,
            n_folds=a.n_folds,
            coco_out=a.coco_out,
            meta_csv=a.meta,
            readers=a.readers,
            froc=a.froc,
            errors=a.errors,
            truth=a.truth,
            bootstrap=a.bootstrap,
            bootstrap_seed=a.bootstrap_seed,
            classes=a.classes,
        )
        if a.calibration:
            r["calibration"] = calibration_report(
                r["scored"], a.labels, a.probs, r["classes"], a.calibration_threshold
            )
    except (FileNotFoundError, SubmissionError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if a.json:
        per_class = {str(k): v for k, v in r["per_class"].items()}
        print(
            json.dumps(
                {
                    "mAP40": r["mAP40"],
                    "mAP40_ci": r["mAP40_ci"],
                    "AP40": r["AP40"],
                    "AP40_ci": r["AP40_ci"],
                    "per_class": per_class,
                    "images": r["images"],
                    **as_json(r["radiology"]),
                    **({"calibration": r["calibration"]} if "calibration" in r else {}),
                }
            )
        )
        return 0
    print(
        f"mAP40 {r['mAP40']:.4f}{ci_text(r['mAP40_ci'])} (competition)   AP40 {r['AP40']:.4f}"
        f"{ci_text(r['AP40_ci'])} (COCO-style, 0-{r['classes'].num_findings - 1})   "
        f"{r['images']} images ({r['classes'].name})"
    )
    if r["mAP40_ci"]:
        print(
            f"  [low, high]: 95 % interval over {a.bootstrap} bootstrap resamples of the images "
            f"(--bootstrap; seed {a.bootstrap_seed}; bias-corrected; a mean over classes counts "
            f"the classes with >= {MIN_BOXES} boxes)"
        )
    print(f"  {'class':<24s} {'mAP40':>7s} {'AP40':>7s}")
    for c, v in sorted(r["per_class"].items()):
        coco = r["AP40_per_class"].get(c)
        coco_text = f"{coco:7.4f}" if coco is not None else f"{'-':>7s}"
        print(f"  {c:2d} {r['classes'].names[c]:<21s} {v:7.4f} {coco_text}")
    tables = {"readers": readers_table, "froc": froc_table, "errors": errors_table}
    for key, table in tables.items():
        if key in r["radiology"]:
            print()
            print("\n".join(table(r["radiology"][key])))
    if "calibration" in r:
        print()
        print(report_text(r["calibration"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
