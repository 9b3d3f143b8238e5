"""Check a submission.csv before submitting it: the ids of the competition's
``sample_submission.csv``, each once, and every prediction well formed.

    cxrdet check submission.csv --sample data/vinbigdata/sample_submission.csv

Prints the Kaggle CLI line that submits the file; this tool uploads nothing.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import pandas as pd

from cxrdet.evaluation.submission import SubmissionError, read_submission

COMPETITION = "vinbigdata-chest-xray-abnormalities-detection"


def sample_ids(path: str | Path) -> list[str]:
    """The image ids of ``sample_submission.csv`` (its ``image_id`` column)."""
    path = Path(path)
    if not path.is_file():
        raise SubmissionError(f"sample submission not found: {path}")
    sample = pd.read_csv(path, dtype=str, keep_default_na=False)
    if "image_id" not in sample.columns:
        raise SubmissionError(f"{path}: no image_id column (columns {list(sample.columns)})")
    return sample["image_id"].tolist()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="cxrdet check", description=__doc__.split("\n\n")[0])
    p.add_argument("submission", help="the submission.csv predict.py wrote")
    p.add_argument(
        "--sample", required=True, help="the competition's sample_submission.csv (its image ids)"
    )
    a = p.parse_args(argv)
    try:
        ids = sample_ids(a.sample)
        rows = read_submission(a.submission, image_ids=ids)
    except SubmissionError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    boxes = sum(len(scores) for _, scores, _ in rows.values())
    print(
        f"ok: {a.submission}: {len(rows)} rows, the image ids of {a.sample} each once, "
        f"{boxes} predictions well formed (class 0-14, score in [0, 1], x_min < x_max, "
        "y_min < y_max)"
    )
    print(
        "submit it with the Kaggle CLI (this tool uploads nothing):\n"
        f'  kaggle competitions submit -c {COMPETITION} -f {a.submission} -m "<a message>"'
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
