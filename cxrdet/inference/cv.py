"""Out-of-fold validation of a k-fold sweep, and the command that ensembles its folds.

    cxrdet cv MULTIRUN_DIR [--tta hflip] [--device auto] [--precision auto] [--batch-size 4]
        [--json]

After ``python train.py -m experiment=winners_512 data.fold=0,1,2,3,4``, MULTIRUN_DIR holds
one run per fold. For each, this finds the best checkpoint, predicts that fold's validation
images (the split the run trained with, rebuilt from its ``.hydra/config.yaml``) and scores them
as ``cxrdet score`` does, against the labels fused as the run validated. Then it pools the
folds: every image predicted by the one model that never saw it. It prints per-fold and
out-of-fold AP40 and mAP40 with the per-class table, writes the predictions to
``MULTIRUN_DIR/oof/`` (``fold<k>.csv`` and the pooled ``oof_submission.csv``), and prints the
``predict.py`` command that ensembles the folds. With ``--json`` the last line is one object:
``{"folds": [{"fold", "run", "checkpoint", "images", "AP40", "mAP40"}, ...], "oof": {"AP40",
"mAP40", "images", "per_class"}}``.

For a sweep of the "No finding" classifier (``experiment=nofinding``) it reports per-fold and
out-of-fold AUC and writes ``oof/oof_nofinding_probs.csv``. Given ``--detector-oof`` (the
detector sweep's ``oof_submission.csv``), it also gives that submission's mAP40 without the
filter, and with it at the ``nofinding.low`` / ``high`` pair of a grid that maximises the
out-of-fold mAP40 (``"oof": {"AUC", "images", "mAP40_without_filter", "mAP40_with_filter",
"low", "high"}``). It prints what to add to the detector folds' ``predict.py`` command for a
filtered ensemble (``"command"``: the folds' classifiers, averaged, and that pair).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import pandas as pd
import torch
from omegaconf import DictConfig, OmegaConf
from torchmetrics.functional.classification import binary_auroc

from cxrdet.data.dataset import ImageDataset
from cxrdet.data.fusion import fuse_readers
from cxrdet.data.labels import CLASS_NAMES, NO_FINDING, ground_truth, normal_image_ids, read_labels
from cxrdet.data.splits import split_ids
from cxrdet.evaluation.evaluator import score_predictions
from cxrdet.evaluation.nofinding import nofinding_filter
from cxrdet.evaluation.score import score
from cxrdet.evaluation.submission import read_submission, write_submission
from cxrdet.inference.config import PredictConfig
from cxrdet.inference.nofinding_probs import load_classifiers, predict_probs, write_probs
from cxrdet.inference.predictor import pick_device, predict
from cxrdet.models.precision import choose_precision
from cxrdet.models.safe_load import TRUST_HELP
from cxrdet.training.callbacks import best_checkpoint


def fold_runs(sweep_dir: Path) -> list[tuple[Path, DictConfig]]:
    """The sweep's runs (``<n>/.hydra/config.yaml``) in fold order; each must be a kfold run."""
    runs = []
    for config in sorted(sweep_dir.glob("*/.hydra/config.yaml")):
        cfg = OmegaConf.load(config)
        if cfg.data.get("split") != "kfold":
            raise ValueError(f"{config}: data.split={cfg.data.get('split')}, not kfold")
        runs.append((config.parent.parent, cfg))
    if not runs:
        raise FileNotFoundError(f"no runs (*/.hydra/config.yaml) in {sweep_dir}")
    runs.sort(key=lambda run: int(run[1].data.fold))
    folds = [int(cfg.data.fold) for _, cfg in runs]
    if len(set(folds)) != len(folds):
        raise ValueError(f"{sweep_dir}: fold(s) run more than once: {folds}")
    return runs


def checkpoint_of(run: Path, trust: bool = False) -> Path:
    """A run's best checkpoint (else its last), or a clear error."""
    ckpt = best_checkpoint(run / "checkpoints", trust, "--trust")
    if ckpt is None:
        raise FileNotFoundError(f"{run}: no checkpoint in checkpoints/")
    return ckpt


def fold_images(cfg, labels) -> list[str]:
    """The validation images a fold run held out (``labels``: the sweep's, read once)."""
    d = cfg.data
    _, val_ids = split_ids(labels, "kfold", d.val_fraction, d.split_seed, d.fold, d.n_folds)
    return val_ids


def cross_validate(
    sweep_dir,
    tta: str = "none",
    device: str = "auto",
    batch_size: int = 4,
    precision="auto",
    trust: bool = False,
):
    """Per-fold and out-of-fold scores of detector folds; see the module docstring."""
    sweep_dir = Path(sweep_dir)
    out = sweep_dir / "oof"
    out.mkdir(exist_ok=True)
    folds, rows, ckpts = [], {}, []
    runs = fold_runs(sweep_dir)
    data = runs[0][1].data
    labels, _ = read_labels(data.labels_csv)
    for run, cfg in runs:
        d = cfg.data
        ckpt = checkpoint_of(run, trust)
        val_ids = fold_images(cfg, labels)
        fold_csv = out / f"fold{d.fold}.csv"
        predict(
            PredictConfig(
                ckpt_path=str(ckpt),
                output=str(fold_csv),
                image_dir=d.image_dir,
                meta_csv=d.meta_csv,
                tta=tta,
                device=device,
                precision=precision,
                batch_size=batch_size,
                progress=False,
                trust_checkpoint=trust,
            ),
            image_ids=val_ids,
            opt_in="--trust",
        )
        split = {"split": "kfold", "fold": d.fold, "seed": d.split_seed, "n_folds": d.n_folds}
        r = score(
            d.labels_csv, str(fold_csv), fusion=d.val_fusion, fusion_iou=d.fusion_iou, **split
        )
        folds.append(
            {
                "fold": int(d.fold),
                "run": str(run),
                "checkpoint": str(ckpt),
                "images": r["images"],
                "AP40": r["AP40"],
                "mAP40": r["mAP40"],
            }
        )
        rows.update(_rows(fold_csv))
        ckpts.append(str(ckpt))
    oof_csv = write_submission(rows, out / "oof_submission.csv")
    pooled = score(
        data.labels_csv,
        str(oof_csv),
        fusion=data.val_fusion,
        fusion_iou=data.fusion_iou,
        image_ids=list(rows),  # the images the folds predicted (all, when every fold ran)
    )
    oof = {k: pooled[k] for k in ("AP40", "mAP40", "images", "per_class", "AP40_per_class")}
    command = f"python predict.py ckpt_path=[{','.join(ckpts)}] prepared_size={data.image_size}"
    if tta != "none":
        command += f" tta={tta}"
    return {"folds": folds, "oof": oof, "oof_submission": str(oof_csv), "command": command}


LOWS = (0.0, 0.02, 0.04, 0.06, 0.08, 0.1, 0.15, 0.2, 0.3)  # the grid of nofinding.low ...
HIGHS = (0.5, 0.7, 0.8, 0.9, 0.95, 0.98, 1.01)  # ... and of nofinding.high (1.01: never "alone")


def cross_validate_classifier(
    sweep_dir,
    detector_oof: str | None,
    tta: str = "none",
    device: str = "auto",
    batch_size=4,
    precision="auto",
    trust: bool = False,
) -> dict:
    """Out-of-fold AUC of classifier folds and, given the detector's out-of-fold submission,
    its mAP40 without and with the "No finding" filter at the best (low, high) of a grid."""
    sweep_dir = Path(sweep_dir)
    out = sweep_dir / "oof"
    out.mkdir(exist_ok=True)
    runs = fold_runs(sweep_dir)
    data = runs[0][1].data
    labels, _ = read_labels(data.labels_csv)
    normal = normal_image_ids(labels)
    dev = pick_device(device)
    precision = choose_precision(precision, dev.type, "--precision", dev.index)
    probs, folds = {}, []
    for run, cfg in runs:
        d = cfg.data
        ckpt = checkpoint_of(run, trust)
        dataset = ImageDataset(d.image_dir, d.meta_csv, fold_images(cfg, labels))
        classifiers = load_classifiers(str(ckpt), dev, trust, "--trust")
        fold = predict_probs(classifiers, dataset, dev, batch_size, tta=tta, precision=precision)
        folds.append({"fold": int(d.fold), "run": str(run), "checkpoint": str(ckpt)})
        folds[-1].update(images=len(fold), AUC=_auc(fold, normal))
        probs.update(fold)
    write_probs(probs, out / "oof_nofinding_probs.csv")
    result = {"folds": folds, "oof": {"AUC": _auc(probs, normal), "images": len(probs)}}
    command = f"nofinding.ckpt_path=[{','.join(f['checkpoint'] for f in folds)}]"
    if detector_oof:
        result["oof"].update(filter_search(detector_oof, probs, data, labels))
        command += f" nofinding.low={result['oof']['low']} nofinding.high={result['oof']['high']}"
    result["command"] = command
    return result


def _auc(probs: dict[str, float], normal: set[str]) -> float:
    """AUC of P(abnormal) against "some reader marked a finding" (nan without both kinds)."""
    y = torch.tensor([0 if i in normal else 1 for i in probs])
    if y.min() == y.max():
        return float("nan")
    return float(binary_auroc(torch.tensor(list(probs.values())), y))


def filter_search(detector_oof: str, probs: dict[str, float], data, labels) -> dict:
    """mAP40 of the detector's out-of-fold submission as written, and with the filter at every
    (low, high) of the grid in place of its No-finding line; the best pair."""
    ids = sorted(set(probs))
    labels = fuse_readers(
        labels[labels["image_id"].isin(set(ids))], data.val_fusion, data.fusion_iou
    )
    gt = ground_truth(labels, ids)
    sub = read_submission(detector_oof)
    missing = [i for i in ids if i not in sub]
    if missing:
        raise ValueError(
            f"{detector_oof}: no prediction for {len(missing)} image(s), e.g. {missing[0]}"
        )
    without = score_predictions(gt, {i: sub[i] for i in ids})["mAP40"]
    boxes_only = {i: tuple(a[sub[i][2] != NO_FINDING] for a in sub[i]) for i in ids}
    best = (-1.0, None, None)
    for low in LOWS:
        for high in (h for h in HIGHS if h > low):
            dets = {i: nofinding_filter(boxes_only[i], probs[i], low, high) for i in ids}
            value = score_predictions(gt, dets)["mAP40"]
            best = max(best, (value, low, high), key=lambda b: b[0])
    return {
        "mAP40_without_filter": without,
        "mAP40_with_filter": best[0],
        "low": best[1],
        "high": best[2],
    }


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
        "--detector-oof",
        help="classifier folds: the detector's oof_submission.csv, to measure the filter on",
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
            )
        else:
            r = cross_validate(a.sweep_dir, a.tta, a.device, a.batch_size, a.precision, a.trust)
    except (FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    (print_classifier if classifier else print_detector)(r)
    if a.json:
        oof = dict(r["oof"])
        if "per_class" in oof:
            oof["per_class"] = {str(k): v for k, v in oof.pop("per_class").items()}
            oof.pop("AP40_per_class")
        print(json.dumps({"folds": r["folds"], "oof": oof}))
    return 0


def print_detector(r: dict) -> None:
    print(f"{'fold':>4s} {'images':>7s} {'AP40':>7s} {'mAP40':>7s}  checkpoint")
    for f in r["folds"]:
        print(
            f"{f['fold']:4d} {f['images']:7d} {f['AP40']:7.4f} {f['mAP40']:7.4f}  {f['checkpoint']}"
        )
    oof = r["oof"]
    print(f" oof {oof['images']:7d} {oof['AP40']:7.4f} {oof['mAP40']:7.4f}  (pooled out-of-fold)")
    print(f"\n  {'class':<24s} {'mAP40':>7s} {'AP40':>7s}")
    for c, v in sorted(oof["per_class"].items()):
        coco = oof["AP40_per_class"].get(c)
        print(
            f"  {c:2d} {CLASS_NAMES[c]:<21s} {v:7.4f} {'-' if coco is None else f'{coco:.4f}':>7s}"
        )
    print(f"\nout-of-fold predictions: {r['oof_submission']}")
    print(f"ensemble the folds:\n  {r['command']}")


def print_classifier(r: dict) -> None:
    print(f"{'fold':>4s} {'images':>7s} {'AUC':>7s}  checkpoint")
    for f in r["folds"]:
        print(f"{f['fold']:4d} {f['images']:7d} {f['AUC']:7.4f}  {f['checkpoint']}")
    oof = r["oof"]
    print(f" oof {oof['images']:7d} {oof['AUC']:7.4f}  (pooled out-of-fold)")
    if "low" in oof:
        print(
            f"detector out-of-fold mAP40: {oof['mAP40_without_filter']:.4f} without the filter, "
            f"{oof['mAP40_with_filter']:.4f} with nofinding.low={oof['low']} "
            f"nofinding.high={oof['high']}"
        )
    print(f"filter the folds' ensemble: add to its predict.py command\n  {r['command']}")


if __name__ == "__main__":
    sys.exit(main())
