"""Start-up: how long ``--help`` and a refused key take to answer.

    python benchmarks/startup.py [--rounds 3]

Runs each command ``--rounds`` times as a user would (a new interpreter each time) and prints
the median wall time; the target is 5 s each on a 2-core machine: torch and Lightning load only
after Hydra has composed the config, so these answer without them. The last line is one JSON
object.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
COMMANDS = {
    "train.py --help": ["train.py", "--help"],
    "predict.py --help": ["predict.py", "--help"],
    "cxrdet --help": ["-m", "cxrdet", "--help"],
    "train.py data.batch_sise=4 (a misspelt key)": ["train.py", "data.batch_sise=4"],
    "predict.py score_threshold=0.1 (a misspelt key)": ["predict.py", "score_threshold=0.1"],
    "train.py data.fold=3 (a fold without kfold)": ["train.py", "data.fold=3"],
}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rounds", type=int, default=3)
    a = p.parse_args()
    env = {**os.environ, "NO_ALBUMENTATIONS_UPDATE": "1"}
    times = {}
    for name, args in COMMANDS.items():
        runs = []
        for _ in range(a.rounds):
            start = time.perf_counter()
            subprocess.run([sys.executable, *args], cwd=ROOT, env=env, capture_output=True)
            runs.append(time.perf_counter() - start)
        times[name] = statistics.median(runs)
        print(f"{times[name]:5.2f} s  {name}", flush=True)
    worst = max(times.values())
    print(f"slowest {worst:.2f} s (target <= 5 s); {os.cpu_count()} CPUs")
    print(
        json.dumps({"seconds": {k: round(v, 2) for k, v in times.items()}, "max": round(worst, 2)})
    )


if __name__ == "__main__":
    main()
