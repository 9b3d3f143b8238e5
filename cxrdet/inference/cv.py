"""Out-of-fold validation of a k-fold sweep, and the command that ensembles its folds.

    cxrdet cv MULTIRUN_DIR [--tta hflip] [--device auto] [--batch-size 4] [--json]

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
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import pandas as pd
from omegaconf import OmegaConf

from cxrdet.data.labels import CLASS_NAMES, read_labels
from cxrdet.data.splits import split_ids
from cxrdet.evaluation.score import score
from cxrdet.evaluation.submission import write_submission
from cxrdet.inference.config import PredictConfig
from cxrdet.inference.predictor import predict
from cxrdet.training.callbacks import best_checkpoint


def fold_runs(sweep_dir: Path) -> list[tuple[Path, OmegaConf]]:
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


def cross_validate(sweep_dir, tta: str = "none", device: str = "auto", batch_size: int = 4):
    """Per-fold and out-of-fold scores; see the module docstring."""
    sweep_dir = Path(sweep_dir)
    out = sweep_dir / "oof"
    out.mkdir(exist_ok=True)
    folds, rows, ckpts = [], {}, []
    runs = fold_runs(sweep_dir)
    data = runs[0][1].data
    for run, cfg in runs:
        d = cfg.data
        ckpt = best_checkpoint(run / "checkpoints")
        if ckpt is None:
            raise FileNotFoundError(f"{run}: no checkpoint in checkpoints/")
        labels, _ = read_labels(d.labels_csv)
        _, val_ids = split_ids(labels, "kfold", d.val_fraction, d.split_seed, d.fold, d.n_folds)
        fold_csv = out / f"fold{d.fold}.csv"
        predict(
            PredictConfig(
                ckpt_path=str(ckpt),
                output=str(fold_csv),
                image_dir=d.image_dir,
                meta_csv=d.meta_csv,
                tta=tta,
                device=device,
                batch_size=batch_size,
                progress=False,
            ),
            image_ids=val_ids,
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
    p.add_argument("--json", action="store_true", help="end with one JSON object")
    a = p.parse_args(argv)
    try:
        r = cross_validate(a.sweep_dir, a.tta, a.device, a.batch_size)
    except (FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
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
    if a.json:
        per_class = {str(k): v for k, v in oof["per_class"].items()}
        summary = {k: oof[k] for k in ("AP40", "mAP40", "images")}
        print(json.dumps({"folds": r["folds"], "oof": {**summary, "per_class": per_class}}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
