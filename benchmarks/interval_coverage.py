"""Do the 95 % intervals cover? On the simulated world of ``cxrdet.evaluation.simulation``
(the competition's 14 findings at their frequencies, a detector of known behaviour, its value
taken on 20,000 images), the share of test sets whose interval holds the world's value, for
mAP40, AP40 and the CPM, at several set sizes, for the project's intervals and for the plain
percentile interval of the mean over every class present (what it printed before).

    python benchmarks/interval_coverage.py [--sizes 40,300,3000] [--sets 200] [--resamples 300]

A mean over classes is judged against the world's mean over the classes its interval counts
(the project's: those with >= 5 boxes; the percentile's: every class present); coverage is
the share of the sets whose interval was shown (a set without a class with 5 boxes gets none,
and the share shown is printed). The last line is one JSON object. Target: >= 0.93 at 300
images (``tests/evaluation/test_coverage.py``).
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np

from cxrdet.evaluation import simulation


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sizes", default="40,300,3000", help="images per test set")
    p.add_argument("--sets", type=int, default=200, help="test sets per size (default 200)")
    p.add_argument("--resamples", type=int, default=300, help="bootstrap resamples (300)")
    a = p.parse_args()
    start = time.perf_counter()
    world = simulation.population()
    values = {k: float(np.mean(list(v.values()))) if isinstance(v, dict) else v
              for k, v in world.items()}  # fmt: skip
    print(f"world (20,000 images): mAP40 {values['AP']:.3f}, AP40 {values['AP40']:.3f}, "
          f"CPM {values['CPM']:.3f}")  # fmt: skip
    rows = {}
    for size in (int(s) for s in a.sizes.split(",")):
        sets = a.sets if size <= 300 else max(20, a.sets // 4)
        for method in ("percentile", "project"):
            hits = [simulation.covers(world, size, 1000 + s, a.resamples, method)
                    for s in range(sets)]  # fmt: skip
            row = {}
            for k in hits[0]:
                given = [h[k] for h in hits if h[k] is not None]
                row[k] = float(np.mean(given)) if given else float("nan")
                row[f"{k}_shown"] = len(given) / sets
            rows[f"{size}_{method}"] = {**row, "sets": sets}
            shown = ", ".join(
                f"{k} {row[k]:.3f}" + (f" (shown {row[k + '_shown']:.0%})"
                                      if row[k + "_shown"] < 1 else "")
                for k in hits[0]
            )  # fmt: skip
            print(f"{size:5d} images, {sets} sets, {method:10s}: {shown}", flush=True)
    print(f"{time.perf_counter() - start:.0f} s")
    print(json.dumps({"resamples": a.resamples, "coverage": rows}))


if __name__ == "__main__":
    main()
