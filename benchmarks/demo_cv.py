"""The three-command fold workflow of docs/scale.md on the demo's phantoms, two folds.

    python benchmarks/demo_cv.py [--folds 2] [--extra key=value ...]

Runs, into ``outputs/demo-cv/`` (the phantoms are the demo's, made first when missing):

    python train.py -m experiment=demo data.split=kfold data.n_folds=2 data.fold=0,1
    cxrdet cv <detector sweep> --json
    python train.py -m experiment=demo_nofinding data.split=kfold data.n_folds=2 data.fold=0,1
    cxrdet cv <classifier sweep> --detector-oof <detector sweep>/oof/oof_submission.csv --json
    python predict.py <the detector cv's command> <the classifier cv's command> ...

then scores the filtered fold ensemble, and the same ensemble without the filter, on the
demo's 50 test phantoms. Prints the detector's per-fold and out-of-fold AP40 / mAP40 (pooled
as they are, and ranked within each fold: ``--calibrate rank``), the classifier's out-of-fold
AUC, the filter's held-out gain, and the test figures. The last line is one JSON object.
About 20 minutes on 2 CPU cores (each detector fold is the demo's 100 steps).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

from cxrdet.demo.run import PREPARED, RAW, make_data, run

OUT = Path("outputs/demo-cv")


def sweep(name: str, experiment: str, folds: int, extra: list[str]) -> Path:
    sweep_dir = OUT / name
    overrides = [
        "data.split=kfold",
        f"data.n_folds={folds}",
        f"data.fold={','.join(map(str, range(folds)))}",
    ]
    run(
        f"train {name} folds",
        [
            sys.executable,
            "train.py",
            "-m",
            f"experiment={experiment}",
            *overrides,
            "report=false",
            f"hydra.sweep.dir={sweep_dir}",
            *extra,
        ],
    )
    return sweep_dir


def cv(sweep_dir: Path, *args: str) -> dict:
    """``cxrdet cv SWEEP --json ARGS``: echo its table, return its JSON line."""
    cmd = [sys.executable, "-m", "cxrdet", "cv", str(sweep_dir), "--json", *args]
    print(f"\n=== cv {sweep_dir}\n$ {' '.join(cmd)}", flush=True)
    done = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        sys.exit(f"cxrdet cv failed (exit {done.returncode}):\n{done.stderr[-3000:]}")
    *table, last = done.stdout.strip().splitlines()
    print("\n".join(table))
    return json.loads(last)


def predict_and_score(name: str, command: str) -> dict:
    """A cv-printed ``predict.py`` command on the demo's test PNGs; the test AP40 / mAP40."""
    out = OUT / name / "submission.csv"
    args = command.split()[2:]  # after "python predict.py"
    run(
        f"predict: {name}",
        [
            sys.executable,
            "predict.py",
            *args,
            f"paths.prepared_dir={PREPARED}",
            f"output={out}",
            "num_workers=0",
            f"hydra.run.dir={out.parent / 'hydra'}",
        ],
    )
    cmd = [sys.executable, "-m", "cxrdet", "score", "--labels", str(RAW / "test_labels.csv")]
    done = subprocess.run(
        [*cmd, "--submission", str(out), "--json"], capture_output=True, text=True
    )
    if done.returncode != 0:
        sys.exit(f"cxrdet score failed:\n{done.stderr[-3000:]}")
    r = json.loads(done.stdout.strip().splitlines()[-1])
    return {"AP40": r["AP40"], "mAP40": r["mAP40"]}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--folds", type=int, default=2, help="data.n_folds (default 2)")
    p.add_argument("--extra", nargs="*", default=[], help="more train.py overrides for both")
    a = p.parse_args()
    make_data()
    start = time.perf_counter()
    detector = cv(sweep("detector", "demo", a.folds, a.extra))
    oof_csv = OUT / "detector" / "oof" / "oof_submission.csv"
    classifier = cv(
        sweep("nofinding", "demo_nofinding", a.folds, a.extra), "--detector-oof", str(oof_csv)
    )
    test = {
        "ensemble": predict_and_score("ensemble", detector["command"]),
        "ensemble_filtered": predict_and_score(
            "ensemble_filtered", f"{detector['command']} {classifier['command']}"
        ),
    }
    minutes = (time.perf_counter() - start) / 60
    print(f"\n{'fold':>4s} {'AP40':>7s} {'mAP40':>7s} {'AUC':>7s}")
    for f, c in zip(detector["folds"], classifier["folds"]):
        print(f"{f['fold']:4d} {f['AP40']:7.3f} {f['mAP40']:7.3f} {c['AUC']:7.3f}")
    d, c = detector["oof"], classifier["oof"]
    print(f" oof {d['AP40']:7.3f} {d['mAP40']:7.3f} {c['AUC']:7.3f}  ({d['images']} images)")
    print(
        f"pooled out-of-fold mAP40 {d['mAP40_uncalibrated']:.3f} as the folds score, "
        f"{d['mAP40_rank']:.3f} ranked within each fold (AP40 {d['AP40_uncalibrated']:.3f} / "
        f"{d['AP40_rank']:.3f})"
    )
    print(
        f"out-of-fold mAP40: {c['mAP40_without_filter']:.3f} without the No-finding filter; "
        f"chosen out of sample, the filter gains {c['held_out_gain']:+.3f}; on all folds "
        f"nofinding.low={c['low']} nofinding.high={c['high']} ({c['mAP40_with_filter']:.3f} "
        "in sample)"
    )
    e, f = test["ensemble"], test["ensemble_filtered"]
    print(
        f"test (the {a.folds} folds' ensemble): AP40 / mAP40 {e['AP40']:.3f} / {e['mAP40']:.3f}, "
        f"with the filter {f['AP40']:.3f} / {f['mAP40']:.3f}; {minutes:.0f} min"
    )
    figures = {
        "folds": [
            {"fold": f["fold"], "AP40": f["AP40"], "mAP40": f["mAP40"], "AUC": x["AUC"]}
            for f, x in zip(detector["folds"], classifier["folds"])
        ],
        "oof": {
            "AP40": d["AP40"],
            "mAP40": d["mAP40"],
            "mAP40_rank": d["mAP40_rank"],
            "AP40_rank": d["AP40_rank"],
            "AUC": c["AUC"],
            "mAP40_without_filter": c["mAP40_without_filter"],
            "mAP40_with_filter": c["mAP40_with_filter"],
            "held_out_gain": c["held_out_gain"],
            "held_out": c["held_out"],
            "low": c["low"],
            "high": c["high"],
        },
        "test": test,
        "minutes": round(minutes, 1),
    }
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
