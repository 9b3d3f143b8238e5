"""Out-of-fold validation of a k-fold sweep, and the command that ensembles its folds.

    cxrdet cv MULTIRUN_DIR [--tta hflip] [--device auto] [--precision auto] [--batch-size 4]
        [--calibrate none|rank] [--detector-oof CSV] [--test-probs CSV] [--trust] [--json]

After ``python train.py -m experiment=winners_512 data.fold=0,1,2,3,4``, MULTIRUN_DIR holds
one run per fold. For each, this finds the best checkpoint, predicts that fold's validation
images (the split the run trained with, rebuilt from its ``.hydra/config.yaml``, with its
``data.num_workers``) and scores them as ``cxrdet score`` does, against the labels fused as
the run validated. Then it pools the folds: every image predicted by the one model that never
saw it. Models of different folds score on different scales, which pooling mixes:
``--calibrate rank`` replaces each fold's scores by their rank within the fold and class
(each fold's own AP unchanged); both pooled figures are reported. It prints per-fold and
out-of-fold AP40 and mAP40 with the per-class table, writes ``MULTIRUN_DIR/oof/``
(``fold<k>.csv``; ``fold<k>.json``, predict.py's summary of that fold; the fold's other
predict.py tables as ``fold<k>_detections.csv``, ...; and the pooled ``oof_submission.csv``,
calibrated as asked), and prints the ``predict.py`` command that
ensembles the folds. With ``--json`` the last line is one object: ``{"folds": [{"fold", "run",
"checkpoint", "images", "AP40", "mAP40"}, ...], "oof": {"AP40", "mAP40", "images",
"per_class", "calibrate", "mAP40_uncalibrated", "mAP40_rank", ...}, "command"}``.

For a sweep of the "No finding" classifier (``experiment=nofinding``) it reports per-fold and
out-of-fold AUC, writes ``oof/oof_nofinding_probs.csv`` and, given ``--detector-oof`` (the
detector sweep's ``oof/oof_submission.csv``), searches the filter's ``nofinding.low`` /
``high`` honestly (:mod:`cxrdet.inference.classifier_cv`). It prints what to add to the
detector folds' ``predict.py`` command for a filtered ensemble (``"command"``: the folds'
classifiers, averaged, and the pair chosen on all folds).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import pandas as pd

from cxrdet.data.config import fold_index
from cxrdet.data.cpus import worker_count
from cxrdet.data.labels import read_labels
from cxrdet.evaluation.bootstrap import ci_text, difference_text
from cxrdet.evaluation.scoring import score
from cxrdet.evaluation.submission import format_prediction, read_submission, write_submission
from cxrdet.inference.classifier_cv import cross_validate_classifier
from cxrdet.inference.config import PredictConfig
from cxrdet.inference.folds import checkpoint_of, fold_images, fold_runs, rank_calibrated
from cxrdet.inference.predictor import predict
from cxrdet.models.safe_load import TRUST_HELP

CALIBRATIONS = ("none", "rank")


def fold_file(path: Path, fold_csv: Path) -> Path:
    """A file predict() wrote beside a fold's CSV, renamed ``fold<k>_<name>`` (the fold CSV
    itself stays)."""
    if path.name == fold_csv.name:
        return path
    named = path.with_name(f"{fold_csv.stem}_{path.name}")
    os.replace(path, named)
    return named


def cross_validate(
    sweep_dir,
    tta: str = "none",
    device: str = "auto",
    batch_size: int = 4,
    precision="auto",
    trust: bool = False,
    calibrate: str = "none",
):
    """Per-fold and out-of-fold scores of detector folds; see the module docstring."""
    if calibrate not in CALIBRATIONS:
        raise ValueError(f"--calibrate {calibrate}: expected one of {', '.join(CALIBRATIONS)}")
    sweep_dir = Path(sweep_dir)
    out = sweep_dir / "oof"
    out.mkdir(exist_ok=True)
    folds, raw, ranked, ckpts = [], {}, {}, []
    runs = fold_runs(sweep_dir)
    data = runs[0][1].data
    labels, report = read_labels(data.labels_csv, data.get("classes"))
    classes = report.classes
    for run, cfg in runs:
        d = cfg.data
        ckpt = checkpoint_of(run, trust)
        val_ids = fold_images(cfg, labels)
        fold_csv = out / f"fold{fold_index(d)}.csv"
        summary = predict(
            PredictConfig(
                ckpt_path=str(ckpt),
                output=str(fold_csv),
                image_dir=d.image_dir,
                meta_csv=d.meta_csv,
                tta=tta,
                device=device,
                precision=precision,
                batch_size=batch_size,
                num_workers=worker_count(d.get("num_workers", 0)),  # as the sweep loaded data
                progress=False,
                trust_checkpoint=trust,
            ),
            image_ids=val_ids,
            opt_in="--trust",
        )
        # predict() writes predict.json, detections.csv (failures.csv, ...) beside its CSV: one
        # of each per fold, not the last fold's only
        summary["outputs"] = [str(fold_file(Path(f), fold_csv)) for f in summary["outputs"]]
        fold_csv.with_suffix(".json").write_text(json.dumps(summary, indent=2))
        (out / "predict.json").unlink()
        split = {
            "split": "kfold",
            "fold": fold_index(d),
            "seed": d.split_seed,
            "n_folds": d.n_folds,
        }
        r = score(
            d.labels_csv,
            str(fold_csv),
            fusion=d.val_fusion,
            fusion_iou=d.fusion_iou,
            classes=classes,
            **split,
        )
        folds.append(
            {
                "fold": fold_index(d),
                "run": str(run),
                "checkpoint": str(ckpt),
                "images": r["images"],
                "AP40": r["AP40"],
                "mAP40": r["mAP40"],
            }
        )
        predictions = read_submission(fold_csv, classes=classes)
        raw.update(_rows(fold_csv))
        calibrated = rank_calibrated(predictions).items()
        ranked.update({i: format_prediction(*p, classes) for i, p in calibrated})
        ckpts.append(str(ckpt))
    pooled = {}
    for name, rows in (("none", raw), ("rank", ranked)):
        oof_csv = write_submission(rows, out / f"oof_submission_{name}.csv")
        pooled[name] = score(
            data.labels_csv,
            str(oof_csv),
            fusion=data.val_fusion,
            fusion_iou=data.fusion_iou,
            image_ids=list(rows),  # the images the folds predicted (all, when every fold ran)
            classes=classes,
        )
    oof_csv = out / "oof_submission.csv"
    os.replace(out / f"oof_submission_{calibrate}.csv", oof_csv)
    (out / f"oof_submission_{CALIBRATIONS[calibrate == 'none']}.csv").unlink()
    chosen = pooled[calibrate]
    oof = {k: chosen[k] for k in ("AP40", "mAP40", "images", "per_class", "AP40_per_class")}
    oof.update(
        class_names=classes.names,
        calibrate=calibrate,
        mAP40_uncalibrated=pooled["none"]["mAP40"],
        mAP40_rank=pooled["rank"]["mAP40"],
        AP40_uncalibrated=pooled["none"]["AP40"],
        AP40_rank=pooled["rank"]["AP40"],
    )
    command = f"python predict.py ckpt_path=[{','.join(ckpts)}] prepared_size={data.image_size}"
    if tta != "none":
        command += f" tta={tta}"
    return {"folds": folds, "oof": oof, "oof_submission": str(oof_csv), "command": command}


def _rows(submission_csv: Path) -> dict[str, str]:
    """image id → PredictionString of a submission predict() wrote (and checked)."""
    frame = pd.read_csv(submission_csv, dtype=str, keep_default_na=False)
    return dict(zip(frame["image_id"], frame["PredictionString"]))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="cxrdet cv", description=__doc__.split("\n")[0])
    p.add_argument("sweep_dir", help="the multirun folder of a data.fold=0,1,... sweep")
    p.add_argument("--tta", choices=["none", "hflip"], default="none", help="prediction TTA")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda (default auto)")
    p.add_argument("--batch-size", type=int, default=4, help="images per forward pass")
    p.add_argument(
        "--precision",
        default="auto",
        help="auto (predict.py's rule: bf16-mixed on GPUs with native bf16, 16-mixed on older "
        "ones, 32 on the CPU) | 32 | 16-mixed | bf16-mixed",
    )
    p.add_argument(
        "--calibrate",
        choices=CALIBRATIONS,
        default="none",
        help="detector folds: pool the folds' scores as they are (none) or as their rank within "
        "each fold and class (rank); both pooled figures are reported",
    )
    p.add_argument(
        "--detector-oof",
        help="classifier folds: the detector sweep's oof/oof_submission.csv, to search the "
        "filter's low/high on",
    )
    p.add_argument(
        "--test-probs",
        help="classifier folds: the test set's nofinding_probs.csv, to compare its shares in "
        "the filter's bands with the folds'",
    )
    p.add_argument("--json", action="store_true", help="end with one JSON object")
    p.add_argument(
        "--trust",
        action="store_true",
        help=TRUST_HELP,
    )
    a = p.parse_args(argv)
    try:
        classifier = "arch" in fold_runs(Path(a.sweep_dir))[0][1].model
        if classifier:
            r = cross_validate_classifier(
                a.sweep_dir,
                a.detector_oof,
                a.tta,
                a.device,
                a.batch_size,
                a.precision,
                a.trust,
                a.test_probs,
            )
        else:
            r = cross_validate(
                a.sweep_dir, a.tta, a.device, a.batch_size, a.precision, a.trust, a.calibrate
            )
    except (FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    (print_classifier if classifier else print_detector)(r)
    if a.json:
        oof = dict(r["oof"])
        if "per_class" in oof:
            oof["per_class"] = {str(k): v for k, v in oof.pop("per_class").items()}
            oof.pop("AP40_per_class")
        extra = {"bands": r["bands"]} if "bands" in r else {}
        print(json.dumps({"folds": r["folds"], "oof": oof, **extra, "command": r["command"]}))
    return 0


def print_detector(r: dict) -> None:
    print(f"{'fold':>4s} {'images':>7s} {'AP40':>7s} {'mAP40':>7s}  checkpoint")
    for f in r["folds"]:
        print(
            f"{f['fold']:4d} {f['images']:7d} {f['AP40']:7.4f} {f['mAP40']:7.4f}  {f['checkpoint']}"
        )
    oof = r["oof"]
    print(f" oof {oof['images']:7d} {oof['AP40']:7.4f} {oof['mAP40']:7.4f}  (pooled out-of-fold)")
    print(
        f"pooled mAP40 {oof['mAP40_uncalibrated']:.4f} with the folds' scores as they are, "
        f"{oof['mAP40_rank']:.4f} ranked within each fold (--calibrate {oof['calibrate']} above)"
    )
    print(f"\n  {'class':<24s} {'mAP40':>7s} {'AP40':>7s}")
    for c, v in sorted(oof["per_class"].items()):
        coco = oof["AP40_per_class"].get(c)
        print(
            f"  {c:2d} {oof['class_names'][c]:<21s} {v:7.4f} "
            f"{'-' if coco is None else f'{coco:.4f}':>7s}"
        )
    print(f"\nout-of-fold predictions: {r['oof_submission']}")
    print(f"ensemble the folds:\n  {r['command']}")


def print_classifier(r: dict) -> None:
    print(f"{'fold':>4s} {'images':>7s} {'AUC':>7s}  checkpoint")
    for f in r["folds"]:
        print(f"{f['fold']:4d} {f['images']:7d} {f['AUC']:7.4f}  {f['checkpoint']}")
    oof = r["oof"]
    ci = ci_text(oof.get("AUC_ci"))
    print(f" oof {oof['images']:7d} {oof['AUC']:7.4f}  (pooled out-of-fold){ci}")
    if "low" in oof:
        print(
            f"detector out-of-fold mAP40: {oof['mAP40_without_filter']:.4f} without the filter; "
            f"chosen out of sample, the filter gains {oof['held_out_gain']:+.4f} on average:"
        )
        print(f"  {'fold':>4s} {'low':>5s} {'high':>5s} {'without':>8s} {'with':>8s} {'gain':>8s}")
        for f in oof["held_out"]:
            print(
                f"  {f['fold']:4d} {f['low']:5g} {f['high']:5g} {f['mAP40_without_filter']:8.4f} "
                f"{f['mAP40_with_filter']:8.4f} {f['gain']:+8.4f}"
            )
        print(
            f"on all folds: nofinding.low={oof['low']} nofinding.high={oof['high']} (mAP40 "
            f"{oof['mAP40_with_filter']:.4f} in sample); the top five: "
            + ", ".join(f"{t['low']:g}/{t['high']:g} {t['mAP40']:.4f}" for t in oof["top5"])
        )
        held = difference_text(oof["held_out_pooled_gain"], oof["held_out_pooled_gain_ci"])
        verdict = "recommended" if oof["recommended"] else "not recommended (left out below)"
        print(f"held-out gain, every image at its fold's pair: {held}; the filter is {verdict}")
        for where, shares in r.get("bands", {}).items():
            print(
                f"  {where}: {shares['below_low']:.1%} below low, {shares['between']:.1%} "
                f"between, {shares['above_high']:.1%} above high"
            )
    if r["command"]:
        print(f"filter the folds' ensemble: add to its predict.py command\n  {r['command']}")
    else:
        print("the folds' ensemble: predict.py without the filter (no nofinding.ckpt_path)")


if __name__ == "__main__":
    sys.exit(main())
