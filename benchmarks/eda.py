"""EDA speed on a CSV of the real train.csv's shape (67,914 rows, 15,000 images, 17 readers).

    python benchmarks/eda.py [--rows 67914]

Generates the CSV and a meta CSV (real class frequencies, 3 readers per image, 71 % normal),
times ``cxrdet eda`` on one core (target: < 30 s) and prints the time; the last line
is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

from cxrdet.data.labels import CLASS_NAMES, LABEL_COLUMNS
from cxrdet.demo.phantom import REAL_COUNTS


def make_csv(path: Path, meta_path: Path, rows: int, seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    n_images = 15000
    ids = [rng.bytes(16).hex() for _ in range(n_images)]
    dims = rng.integers(2000, 3000, size=(n_images, 2))
    pd.DataFrame({"image_id": ids, "dim0": dims[:, 0], "dim1": dims[:, 1]}).to_csv(
        meta_path, index=False
    )
    p = np.array(REAL_COUNTS, float) / sum(REAL_COUNTS)
    out = []
    for i, image_id in enumerate(ids):
        readers = rng.choice([f"R{k}" for k in range(1, 18)], size=3, replace=False)
        abnormal = rng.random() > 0.71
        for rad in readers:
            if not abnormal:
                out.append([image_id, CLASS_NAMES[14], 14, rad, *[np.nan] * 4])
                continue
            for c in rng.choice(14, size=rng.integers(1, 6), p=p):
                x0, y0 = rng.uniform(0, 0.7, 2) * dims[i, ::-1]
                w, h = rng.uniform(0.03, 0.3, 2) * dims[i, ::-1]
                out.append([image_id, CLASS_NAMES[c], int(c), rad, x0, y0, x0 + w, y0 + h])
    df = pd.DataFrame(out, columns=LABEL_COLUMNS)
    df = df.sample(n=min(rows, len(df)), random_state=seed) if len(df) > rows else df
    df.to_csv(path, index=False)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--rows", type=int, default=67914)
    a = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        make_csv(tmp / "train.csv", tmp / "meta.csv", a.rows)
        rows = len(pd.read_csv(tmp / "train.csv"))
        env = {
            **os.environ,
            "OMP_NUM_THREADS": "1",
            "OPENBLAS_NUM_THREADS": "1",
            "MKL_NUM_THREADS": "1",
        }
        cmd = [
            sys.executable,
            "-m",
            "cxrdet.reports.eda",
            "--labels",
            str(tmp / "train.csv"),
            "--meta",
            str(tmp / "meta.csv"),
            "--out",
            str(tmp / "eda"),
        ]
        if shutil.which("taskset"):  # pin to one core
            cmd = ["taskset", "-c", "0", *cmd]
        start = time.perf_counter()
        subprocess.run(cmd, check=True, env=env)
        seconds = time.perf_counter() - start
    print(f"cxrdet.reports.eda on {rows} rows, one core: {seconds:.1f} s (target < 30 s)")
    print(json.dumps({"rows": rows, "seconds": round(seconds, 2)}))


if __name__ == "__main__":
    main()
