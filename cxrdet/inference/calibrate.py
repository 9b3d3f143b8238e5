"""``cxrdet calibrate``: temperature scaling of a "No finding" classifier, fitted on its run's
validation images and written into its checkpoint, so that ``predict.py`` (and ``cxrdet cv``)
give P(abnormal) that mean a probability (:mod:`cxrdet.evaluation.calibration`).

    cxrdet calibrate outputs/nofinding/latest/checkpoints/best-step120.ckpt [--dry-run]

It prints the validation images' expected calibration error before and after, and the
temperature; the checkpoint keeps everything else (it is rewritten whole, through a temporary
file). AUC and every ranking stay as they were; the filter's thresholds (``nofinding.low`` and
``high``) are probabilities, so choose them again after calibrating (``cxrdet cv``).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def calibrate(ckpt: Path, device: str = "cpu", trust: bool = False, write: bool = True) -> dict:
    """Fit the temperature on ``ckpt``'s validation images; write it into ``ckpt`` unless not
    ``write``. ``{"temperature", "before", "after", "images"}`` (ECEs)."""
    import torch

    from cxrdet.atomic import atomic_write
    from cxrdet.evaluation.calibration import (
        classifier_calibration,
        fit_temperature,
        with_temperature,
    )
    from cxrdet.inference.classifier_cv import validation_probs
    from cxrdet.models.safe_load import safe_load

    state = safe_load(ckpt, trust, "--trust")
    hparams = state.get("hyper_parameters", {})
    if "arch" not in hparams.get("model", {}):
        raise ValueError(f"{ckpt}: not a classifier checkpoint (no model.arch)")
    probs, normal = validation_probs(ckpt, device, trust)
    outcome = [0.0 if i in normal else 1.0 for i in probs]
    found = fit_temperature(list(probs.values()), outcome)
    after = with_temperature(probs, found)
    old = float(hparams.get("temperature", 1.0))
    out = {
        "temperature": old * found,  # the probabilities had the old one applied already
        "before": classifier_calibration(probs, normal)["ECE"],
        "after": classifier_calibration(after, normal)["ECE"],
        "images": len(probs),
    }
    if write:
        hparams["temperature"] = out["temperature"]
        atomic_write(ckpt, lambda f: torch.save(state, f))
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="cxrdet calibrate", description=__doc__.split("\n\n")[0])
    p.add_argument("checkpoint", help="a No-finding classifier's checkpoint (train.py)")
    p.add_argument("--dry-run", action="store_true", help="fit and print; write nothing")
    p.add_argument("--device", default="cpu", help="cpu | cuda | auto (default cpu)")
    p.add_argument("--trust", action="store_true", help="load a checkpoint that needs unpickling")
    a = p.parse_args(argv)
    ckpt = Path(a.checkpoint)
    if not ckpt.is_file():
        print(f"error: checkpoint not found: {ckpt}", file=sys.stderr)
        return 2
    try:
        r = calibrate(ckpt, a.device, a.trust, write=not a.dry_run)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    done = "not written (--dry-run)" if a.dry_run else f"written into {ckpt}"
    print(
        f"temperature {r['temperature']:.3f} ({done}); expected calibration error of "
        f"P(abnormal) on the {r['images']} validation images: {r['before']:.3f} before, "
        f"{r['after']:.3f} after"
    )
    return 0
