"""A k-fold sweep's runs as ``cxrdet cv`` reads them: one run per fold, its best checkpoint,
the images it held out, and the settings two sweeps must share to be compared."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from omegaconf import DictConfig, OmegaConf

from cxrdet.data.config import fold_index
from cxrdet.data.splits import split_ids
from cxrdet.evaluation.nofinding import Prediction
from cxrdet.training.checkpoints import best_checkpoint

SHARED = ("labels_csv", "split_seed", "n_folds")  # what makes two sweeps' folds the same


def fold_runs(sweep_dir: Path) -> list[tuple[Path, DictConfig]]:
    """The sweep's runs (``<n>/.hydra/config.yaml``) in fold order; each must be a kfold run."""
    sweep_dir = Path(sweep_dir)
    runs = []
    for config in sorted(sweep_dir.glob("*/.hydra/config.yaml")):
        cfg = OmegaConf.load(config)
        if cfg.data.get("split") != "kfold":
            raise ValueError(f"{config}: data.split={cfg.data.get('split')}, not kfold")
        runs.append((config.parent.parent, cfg))
    if not runs:
        raise FileNotFoundError(f"no runs (*/.hydra/config.yaml) in {sweep_dir}")
    runs.sort(key=lambda run: fold_index(run[1].data))
    folds = [fold_index(cfg.data) for _, cfg in runs]
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
    _, val_ids = split_ids(labels, "kfold", d.val_fraction, d.split_seed, fold_index(d), d.n_folds)
    return val_ids


def check_same_folds(runs, other_runs, what: str, other: str) -> None:
    """Refuse, naming the setting, two sweeps whose folds are not the same images."""
    for key in SHARED:
        mine, theirs = runs[0][1].data.get(key), other_runs[0][1].data.get(key)
        if str(mine) != str(theirs):
            raise ValueError(
                f"the {what} sweep has data.{key}={mine} and the {other} sweep data.{key}="
                f"{theirs}: their folds are not the same images; run both with the same "
                f"{', '.join(f'data.{k}' for k in SHARED)}"
            )


def rank_calibrated(fold: dict[str, Prediction]) -> dict[str, Prediction]:
    """One fold's predictions with each class's scores replaced by their rank in that fold
    (the mean rank of ties, divided by the class's count: in (0, 1]).

    Models trained on different folds score on different scales; pooled, one fold's 0.3 can
    mean what another's 0.6 means. Ranks put the folds on one scale, and leave each fold's own
    AP unchanged (the order within a class is kept).
    """
    entries = [(i, k) for i, (_, s, _) in fold.items() for k in range(len(s))]
    scores = {i: np.array(s, np.float64) for i, (_, s, _) in fold.items()}
    classes = np.array([fold[i][2][k] for i, k in entries])
    values = np.array([fold[i][1][k] for i, k in entries], np.float64)
    for c in np.unique(classes):
        members = np.flatnonzero(classes == c)
        unique, inverse, counts = np.unique(
            values[members], return_inverse=True, return_counts=True
        )
        mean_rank = np.cumsum(counts) - (counts - 1) / 2
        for m, r in zip(members, mean_rank[inverse] / len(members)):
            image_id, k = entries[m]
            scores[image_id][k] = r
    return {i: (b, scores[i], c) for i, (b, _, c) in fold.items()}
