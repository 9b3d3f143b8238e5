"""``cxrdet cv`` on a sweep of the "No finding" classifier: out-of-fold AUC, and an honest
search of the filter's ``nofinding.low`` / ``high`` on the detector's out-of-fold submission.

Honest, in three ways:

- the ground truth is fused as the detector sweep validated (its ``data.val_fusion``), so
  "without the filter" is the detector's own out-of-fold mAP40; sweeps whose labels,
  ``split_seed`` or ``n_folds`` differ are refused, naming the difference;
- the pair is chosen out of sample: for each fold, the pair best on the other folds is scored
  on that fold; the mean of those held-out gains is the figure to expect. The pair best on all
  folds is the one to use on the test set, with the grid's top five beside it, and only when
  the held-out gain (every image filtered with its fold's pair, against no filter) has a
  paired 95 % bootstrap interval above 0: otherwise the filter is not recommended;
- each image's row is scored as ``predict.py`` writes it (one function,
  :func:`cxrdet.evaluation.nofinding.nofinding_filter`, from the prediction ``predict.py``
  hands it: a class-14 head's own line kept);
- the probabilities come at the precision ``predict.py`` will use (``--precision``, auto),
  and ``--test-probs`` compares the test set's shares in the filter's bands with the folds'.

The grid is scored with the competition metric alone (the one being maximised).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torchmetrics.functional.classification import binary_auroc

from cxrdet.data.classes import KAGGLE14
from cxrdet.data.config import fold_index
from cxrdet.data.dataset import ImageDataset
from cxrdet.data.fusion import fuse_readers
from cxrdet.data.labels import ground_truth, normal_image_ids, read_labels
from cxrdet.data.probs_csv import read_probs, write_probs
from cxrdet.data.splits import split_ids
from cxrdet.evaluation.bootstrap import (
    RESAMPLES,
    bootstrap_auc,
    image_weights,
    interval,
    paired_difference,
)
from cxrdet.evaluation.competition import competition_map
from cxrdet.evaluation.nofinding import filter_input, nofinding_filter
from cxrdet.evaluation.submission import read_submission
from cxrdet.inference.config import checkpoint_data, split_of
from cxrdet.inference.detectors import pick_device
from cxrdet.inference.folds import check_same_folds, checkpoint_of, fold_images, fold_runs
from cxrdet.inference.nofinding_probs import load_classifiers, predict_probs
from cxrdet.models.precision import choose_precision

LOWS = (0.0, 0.02, 0.04, 0.06, 0.08, 0.1, 0.15, 0.2, 0.3)  # the grid of nofinding.low ...
HIGHS = (0.5, 0.7, 0.8, 0.9, 0.95, 0.98, 1.01)  # ... and of nofinding.high (1.01: never "alone")
GRID = [(low, high) for low in LOWS for high in HIGHS if high > low]


def cross_validate_classifier(
    sweep_dir,
    detector_oof: str | None,
    tta: str = "none",
    device: str = "auto",
    batch_size=4,
    precision="auto",
    trust: bool = False,
    test_probs: str | None = None,
) -> dict:
    """Out-of-fold AUC of classifier folds and, given the detector's out-of-fold submission,
    the filter search of the module docstring."""
    sweep_dir = Path(sweep_dir)
    out = sweep_dir / "oof"
    out.mkdir(exist_ok=True)
    runs = fold_runs(sweep_dir)
    data = runs[0][1].data
    labels, report = read_labels(data.labels_csv, data.get("classes"))
    normal = normal_image_ids(labels)
    dev = pick_device(device)
    precision = choose_precision(precision, dev.type, "--precision", dev.index)
    probs, folds, fold_of = {}, [], {}
    for run, cfg in runs:
        ckpt = checkpoint_of(run, trust)
        dataset = ImageDataset(cfg.data.image_dir, cfg.data.meta_csv, fold_images(cfg, labels))
        classifiers = load_classifiers(str(ckpt), dev, trust, "--trust")
        fold = predict_probs(classifiers, dataset, dev, batch_size, tta=tta, precision=precision)
        folds.append({"fold": fold_index(cfg.data), "run": str(run), "checkpoint": str(ckpt)})
        folds[-1].update(images=len(fold), AUC=auc(fold, normal))
        probs.update(fold)
        fold_of.update(dict.fromkeys(fold, fold_index(cfg.data)))
    write_probs(probs, out / "oof_nofinding_probs.csv")
    result = {
        "folds": folds,
        "oof": {
            "AUC": auc(probs, normal),
            "AUC_ci": auc_interval(probs, normal),
            "images": len(probs),
        },
    }
    command = f"nofinding.ckpt_path=[{','.join(f['checkpoint'] for f in folds)}]"
    if detector_oof:
        detector_runs = fold_runs(Path(detector_oof).resolve().parent.parent)
        check_same_folds(runs, detector_runs, "classifier", "detector")
        gt = fused_truth(labels, sorted(probs), detector_runs[0][1].data)
        class14 = bool(detector_runs[0][1].data.get("use_class14", False))
        sub = read_detector_oof(detector_oof, probs, report.classes)
        no_finding = report.classes.no_finding
        search = filter_search(sub, probs, gt, fold_of, class14, no_finding=no_finding)
        result["oof"].update(search)
        if search["recommended"]:
            command += f" nofinding.low={search['low']} nofinding.high={search['high']}"
        else:  # the filter would cost (or gain nothing measurable): nothing to add
            command = ""
        pair = (search["low"], search["high"])
        result["bands"] = {"oof": band_shares(probs, *pair)}
        if test_probs:
            test = read_probs(test_probs, None)
            result["bands"]["test"] = band_shares(test, *pair)
    result["command"] = command
    return result


def auc_interval(probs: dict[str, float], normal: set[str], resamples: int = RESAMPLES):
    """The 95 % bootstrap interval of :func:`auc` over the images (seeded)."""
    positive = np.array([i not in normal for i in probs])
    scores = np.array(list(probs.values()))
    weights = image_weights(len(probs), resamples, 0)
    point = float(bootstrap_auc(scores, positive, np.ones((1, len(probs)), np.float32))[0])
    return list(interval(bootstrap_auc(scores, positive, weights), point))


def validation_probs(
    ckpt: Path, device: str = "cpu", trust: bool = False
) -> tuple[dict[str, float], set[str]]:
    """A classifier checkpoint's P(abnormal) on its run's own validation images (the data and
    split the checkpoint records), and which of them are normal."""
    d = checkpoint_data(ckpt, trust)
    s = split_of(d)
    if s is None:
        raise ValueError(f"{ckpt}: made before checkpoints recorded their data and split")
    labels, _ = read_labels(s.labels_csv, d.get("classes"))
    _, ids = split_ids(labels, s.mode, s.val_fraction, s.seed, s.fold, s.n_folds)
    dev = pick_device(device)
    classifiers = load_classifiers(str(ckpt), dev, trust, "--trust")
    dataset = ImageDataset(d["image_dir"], d["meta_csv"], ids)
    probs = predict_probs(classifiers, dataset, dev, d["val_batch_size"], progress=False)
    return probs, normal_image_ids(labels)


def validation_auc(run: Path, device: str = "cpu", trust: bool = False) -> dict:
    """A classifier run's best checkpoint on the run's own validation images
    (:func:`validation_probs`): ``AUC``, ``AUC_ci``, ``checkpoint``, ``images``."""
    ckpt = checkpoint_of(Path(run), trust)
    probs, normal = validation_probs(ckpt, device, trust)
    return {
        "AUC": auc(probs, normal),
        "AUC_ci": auc_interval(probs, normal),
        "checkpoint": ckpt.name,
        "images": len(probs),
    }


def auc(probs: dict[str, float], normal: set[str]) -> float:
    """AUC of P(abnormal) against "some reader marked a finding" (nan without both kinds)."""
    y = torch.tensor([0 if i in normal else 1 for i in probs])
    if y.min() == y.max():
        return float("nan")
    return float(binary_auroc(torch.tensor(list(probs.values())), y))


def fused_truth(labels, ids: list[str], detector_data) -> dict:
    """The ground truth of ``ids`` fused as the detector sweep validated."""
    ours = fuse_readers(
        labels[labels["image_id"].isin(set(ids))],
        detector_data.val_fusion,
        detector_data.fusion_iou,
    )
    return ground_truth(ours, ids)


def read_detector_oof(path: str, probs: dict, classes=KAGGLE14) -> dict:
    """The detector's out-of-fold submission (ids of ``classes``), for every image the
    classifiers scored."""
    sub = read_submission(path, classes=classes)
    missing = [i for i in probs if i not in sub]
    if missing:
        raise ValueError(f"{path}: no prediction for {len(missing)} image(s), e.g. {missing[0]}")
    return {i: sub[i] for i in probs}


def filter_search(
    sub: dict,
    probs: dict,
    gt: dict,
    fold_of: dict,
    class14_head: bool = False,
    seed: int = 0,
    no_finding: int = KAGGLE14.no_finding,
) -> dict:
    """The detector's out-of-fold mAP40 without the filter and with it at each pair of the
    grid, each image's row as ``predict.py`` would write it (:func:`nofinding_filter` on
    :func:`filter_input`: ``class14_head``, whether the detector scores class 14 itself); the
    pair chosen out of sample per fold, the pair best on all folds, the grid's top five, and
    whether to use the filter at all: only when the held-out gain's paired 95 % bootstrap
    interval lies above 0 (``recommended``); ``no_finding``: the class set's "No finding"
    id."""
    ids = sorted(probs)
    source = {i: filter_input(sub[i], class14_head, no_finding) for i in ids}

    def filtered(i: str, pair) -> tuple:
        if pair is None:
            return sub[i]
        return nofinding_filter(source[i], probs[i], *pair, no_finding=no_finding)

    def score(subset: list[str], pair=None) -> float:
        dets = {i: filtered(i, pair) for i in subset}
        return competition_map({i: gt[i] for i in subset}, dets)["mAP"]

    on_all = {pair: score(ids, pair) for pair in GRID}
    chosen = max(GRID, key=on_all.get)  # the first of equals, in grid order
    held_out = []
    for fold in sorted(set(fold_of.values())):
        own = [i for i in ids if fold_of[i] == fold]
        others = [i for i in ids if fold_of[i] != fold]
        pick = max(GRID, key=lambda pair, o=others: score(o, pair))
        without, with_filter = score(own), score(own, pick)
        held_out.append(
            {
                "fold": fold,
                "low": pick[0],
                "high": pick[1],
                "mAP40_without_filter": without,
                "mAP40_with_filter": with_filter,
                "gain": with_filter - without,
            }
        )
    top = sorted(GRID, key=lambda pair: -on_all[pair])[:5]
    # Every image filtered with its own fold's out-of-sample pair, against no filter: paired.
    pick_of = {f["fold"]: (f["low"], f["high"]) for f in held_out}
    held = {i: filtered(i, pick_of[fold_of[i]]) for i in ids}
    truth = {i: gt[i] for i in ids}
    gain, ci = paired_difference(truth, sub, held, image_weights(len(ids), RESAMPLES, seed))
    return {
        "mAP40_without_filter": score(ids),
        "mAP40_with_filter": on_all[chosen],  # in sample: the held-out gain is the estimate
        "low": chosen[0],
        "high": chosen[1],
        "held_out_gain": sum(f["gain"] for f in held_out) / len(held_out),
        "held_out_pooled_gain": gain,
        "held_out_pooled_gain_ci": list(ci),
        "recommended": bool(ci[0] > 0),
        "held_out": held_out,
        "top5": [{"low": lo, "high": hi, "mAP40": on_all[(lo, hi)]} for lo, hi in top],
    }


def band_shares(probs: dict[str, float], low: float, high: float) -> dict:
    """The share of images in each band of the filter at (``low``, ``high``)."""
    values = list(probs.values())
    n = max(len(values), 1)
    below = sum(p < low for p in values) / n
    above = sum(p >= high for p in values) / n
    return {"below_low": below, "between": 1 - below - above, "above_high": above}
