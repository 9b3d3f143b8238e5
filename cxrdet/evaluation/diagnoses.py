"""The release's 6 diagnoses scored: per-diagnosis ROC AUC of ``predict.py``'s ``diagnoses.csv``
against the release's image labels (``image_labels_test.csv``: the consensus), each with its
95 % bootstrap interval over the images (:mod:`cxrdet.evaluation.bootstrap`).

    cxrdet score --labels annotations/image_labels_test.csv --diagnoses diagnoses.csv
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from cxrdet.data.classes import GLOBAL6
from cxrdet.data.global_labels import read_global_labels
from cxrdet.evaluation.bootstrap import RESAMPLES, bootstrap_auc, ci_text, image_weights, interval


def read_diagnoses(path: str | Path) -> pd.DataFrame:
    """``image_id`` and a probability per diagnosis (index: image id), checked."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"diagnoses file not found: {path}")
    df = pd.read_csv(path, dtype={"image_id": str})
    missing = [c for c in ("image_id", *GLOBAL6) if c not in df.columns]
    if missing:
        raise ValueError(f"{path}: missing column(s) {missing}; expected image_id and {GLOBAL6}")
    values = df[list(GLOBAL6)].apply(pd.to_numeric, errors="coerce")
    bad = ~((values >= 0) & (values <= 1)).all(axis=1)
    if bad.any():
        line = int(np.flatnonzero(bad.to_numpy())[0]) + 2
        raise ValueError(f"{path}, line {line}: a probability outside [0, 1]")
    return values.set_axis(df["image_id"]).sort_index()


def score_diagnoses(
    labels_csv: str, diagnoses_csv: str, resamples: int = RESAMPLES, seed: int = 0
) -> dict:
    """``{"images", "per_diagnosis": {name: {"AUC", "AUC_ci", "positives"}}, "mean_AUC"}``
    over the images both files hold (every labelled image must be predicted); a diagnosis
    without both kinds of image gets AUC nan."""
    truth = read_global_labels(labels_csv).labels
    probs = read_diagnoses(diagnoses_csv)
    missing = sorted(set(truth.index) - set(probs.index))
    if missing:
        raise ValueError(
            f"{diagnoses_csv}: no prediction for {len(missing)} of the {len(truth)} labelled "
            f"images (e.g. {missing[0]})"
        )
    probs = probs.loc[truth.index]
    weights = image_weights(len(truth), resamples, seed) if resamples else None
    ones = np.ones((1, len(truth)), np.float32)
    out = {}
    for name in GLOBAL6:
        positive = truth[name].to_numpy() == 1
        scores = probs[name].to_numpy(np.float64)
        auc = float(bootstrap_auc(scores, positive, ones)[0])
        resampled = bootstrap_auc(scores, positive, weights) if weights is not None else None
        ci = list(interval(resampled, auc)) if resampled is not None else []
        out[name] = {"AUC": auc, "AUC_ci": ci, "positives": int(positive.sum())}
    aucs = [v["AUC"] for v in out.values() if v["AUC"] == v["AUC"]]
    mean = float(np.mean(aucs)) if aucs else float("nan")
    return {"images": len(truth), "per_diagnosis": out, "mean_AUC": mean}


def diagnoses_table(r: dict) -> list[str]:
    lines = [
        f"diagnoses on {r['images']} images: ROC AUC of P(diagnosis) [95 % interval]; mean "
        f"AUC {r['mean_AUC']:.4f}",
        f"  {'diagnosis':<16s} {'positives':>9s} {'AUC':>7s}",
    ]
    for name, v in r["per_diagnosis"].items():
        lines.append(f"  {name:<16s} {v['positives']:9d} {v['AUC']:7.4f}{ci_text(v['AUC_ci'])}")
    return lines
