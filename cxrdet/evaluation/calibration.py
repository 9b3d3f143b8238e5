"""Do the scores a radiologist sees mean a probability? Reliability and expected calibration
error (ECE), as the radiology reporting checklists ask beside AUC and AP (which only rank).

- **The classifier's P(abnormal)** against whether some reader marked a finding on the image:
  the probabilities in :data:`BINS` equal-width bins; per bin the mean probability
  (*confidence*) and the share of abnormal images (*accuracy*); ECE = Σ n_b/N · |accuracy_b -
  confidence_b| (Guo et al. 2017).
- **The detections' scores (D-ECE, Küppers et al. 2020, over the score alone)**: the detections
  a reader is shown (score at or above the operating ``threshold``, 0.3 by default: the
  report's gallery draws those), each one *right* when it is a true positive of the
  competition's matching at IoU 0.4 (its image's box of its class, not already taken by a
  better-scored detection); per score bin the share right (*precision*) against the mean
  score; D-ECE likewise.
- **Temperature scaling** of the classifier (Guo et al. 2017): one T > 0 dividing its logits,
  fitted on validation images by the least log loss; T > 1 softens an overconfident
  classifier. It moves no ranking (the AUC stays), only what a probability says.
"""

from __future__ import annotations

import math

import numpy as np

from cxrdet.evaluation.competition import match_detections

BINS = 10
THRESHOLD = 0.3  # the detections shown: at or above this score


def reliability(confidence, outcome, bins: int = BINS) -> dict:
    """``{"ECE", "count", "bins": [{"low", "high", "count", "confidence", "accuracy"}]}`` of
    probabilities ``confidence`` against 0/1 ``outcome`` (``ECE`` nan without any); empty
    bins are left out of the list."""
    confidence = np.asarray(confidence, np.float64)
    outcome = np.asarray(outcome, np.float64)
    which = np.clip(np.floor(confidence * bins).astype(np.int64), 0, bins - 1)
    rows, ece = [], 0.0
    for b in range(bins):
        inside = which == b
        n = int(inside.sum())
        if not n:
            continue
        conf, acc = float(confidence[inside].mean()), float(outcome[inside].mean())
        rows.append({"low": b / bins, "high": (b + 1) / bins, "count": n,
                     "confidence": conf, "accuracy": acc})  # fmt: skip
        ece += n / len(confidence) * abs(acc - conf)
    return {"ECE": ece if len(confidence) else math.nan, "count": len(confidence), "bins": rows}


def detection_calibration(gt: dict, dets: dict, threshold: float = THRESHOLD, iou=0.4) -> dict:
    """:func:`reliability` of the detections at or above ``threshold`` (right: a true positive
    of the competition's matching), with ``threshold``."""
    m = match_detections(gt, dets, iou)
    shown = m.score >= threshold
    return {**reliability(m.score[shown], m.tp[shown]), "threshold": threshold}


def classifier_calibration(probs: dict[str, float], normal: set[str]) -> dict:
    """:func:`reliability` of P(abnormal) against "some reader marked a finding"."""
    return reliability(list(probs.values()), [0.0 if i in normal else 1.0 for i in probs])


def logit(p) -> np.ndarray:
    p = np.clip(np.asarray(p, np.float64), 1e-7, 1 - 1e-7)
    return np.log(p / (1 - p))


def scaled(probs, temperature: float) -> np.ndarray:
    """Probabilities with their logits divided by ``temperature``."""
    return 1.0 / (1.0 + np.exp(-logit(probs) / temperature))


def with_temperature(probs: dict[str, float], temperature: float) -> dict[str, float]:
    """image id → P(abnormal) of ``probs`` (image id → P) as :func:`scaled` makes them."""
    return dict(zip(probs, scaled(list(probs.values()), temperature).tolist()))


def fit_temperature(probs, outcome) -> float:
    """The T that minimises the log loss of :func:`scaled` probabilities (golden-section search
    over log T in [-3, 3]: T from 0.05 to 20)."""
    z, y = logit(probs), np.asarray(outcome, np.float64)

    def loss(log_t: float) -> float:
        p = np.clip(1.0 / (1.0 + np.exp(-z / math.exp(log_t))), 1e-12, 1 - 1e-12)
        return float(-np.mean(y * np.log(p) + (1 - y) * np.log(1 - p)))

    a, b, ratio = -3.0, 3.0, (math.sqrt(5) - 1) / 2
    c, d = b - ratio * (b - a), a + ratio * (b - a)
    for _ in range(60):
        if loss(c) < loss(d):
            b, d = d, c
            c = b - ratio * (b - a)
        else:
            a, c = c, d
            d = a + ratio * (b - a)
    return float(math.exp((a + b) / 2))


def table(name: str, r: dict, what: str) -> str:
    """The reliability of ``r`` in lines: ECE, then per bin its range, count, mean score and
    the observed share (``what``)."""
    lines = [f"{name}: ECE {r['ECE']:.3f} over {r['count']}", f"  {'bin':<11s} {'n':>6s} "
             f"{'mean p':>7s} {what:>9s}"]  # fmt: skip
    for b in r["bins"]:
        lines.append(f"  {b['low']:.1f}-{b['high']:.1f}    {b['count']:6d} "
                     f"{b['confidence']:7.3f} {b['accuracy']:9.3f}")  # fmt: skip
    return "\n".join(lines)


def calibration_report(
    scored: tuple[dict, dict],
    labels_csv: str,
    probs_csv: str | None,
    classes,
    threshold: float = THRESHOLD,
) -> dict:
    """``cxrdet score --calibration``: the submission's detections of findings (``scored``:
    the scored truth and detections) and, with ``probs_csv`` (predict.py's
    ``nofinding_probs.csv``), the classifier's P(abnormal) on the same images against
    ``labels_csv``: ``{"detections": ..., "classifier": ...}``."""
    from cxrdet.data.labels import normal_image_ids, read_labels
    from cxrdet.data.probs_csv import read_probs
    from cxrdet.evaluation.evaluator import findings_only

    gt, dets = scored
    out = {
        "detections": detection_calibration(
            findings_only(gt, classes), findings_only(dets, classes), threshold
        )
    }
    if probs_csv:
        probs = read_probs(probs_csv, list(gt))
        labels, _ = read_labels(labels_csv, classes.name)
        out["classifier"] = classifier_calibration(
            {i: probs[i] for i in gt}, normal_image_ids(labels)
        )
    return out


def report_text(r: dict) -> str:
    """:func:`calibration_report` as ``cxrdet score`` prints it."""
    d = r["detections"]
    parts = [table(f"detections with score >= {d['threshold']:g} (D-ECE)", d, "precision")]
    if "classifier" in r:
        parts.append(table("classifier P(abnormal)", r["classifier"], "abnormal"))
    return "\n\n".join(parts)
