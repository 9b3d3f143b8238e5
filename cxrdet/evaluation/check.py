"""Check a submission.csv before submitting it: every test image's id once, and every
prediction well formed.

    cxrdet check submission.csv --sample data/vinbigdata/sample_submission.csv
    cxrdet check submission.csv --images data/vinbigdata/test        # the test DICOMs
    cxrdet check submission.csv --meta data/prepared/512/test_meta.csv

The test images' ids come from the competition's ``sample_submission.csv``, from the test
DICOM folder (the files' names) or from the meta CSV ``cxrdet prepare`` wrote for it.

Prints the Kaggle CLI line that submits the file; this tool uploads nothing.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import pandas as pd

from cxrdet.data.meta import read_meta
from cxrdet.data.prepare import DICOM_SUFFIXES, find_dicoms
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


def folder_ids(path: str | Path) -> list[str]:
    """The image ids of a folder of test DICOMs: their file names without the suffix."""
    path = Path(path)
    if not path.is_dir():
        raise SubmissionError(f"test image folder not found: {path}")
    ids = [f.stem for f in find_dicoms(path)]
    if not ids:
        raise SubmissionError(f"{path}: no DICOM files ({', '.join(DICOM_SUFFIXES)}) in it")
    return ids


def expected_ids(a: argparse.Namespace) -> tuple[list[str], str]:
    """The ids the submission must hold, and where they came from (for the message)."""
    if a.sample:
        return sample_ids(a.sample), a.sample
    if a.images:
        return folder_ids(a.images), f"the DICOMs in {a.images}"
    try:
        return read_meta(a.meta).index.tolist(), a.meta
    except (FileNotFoundError, ValueError) as e:
        raise SubmissionError(str(e)) from None


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="cxrdet check", description=__doc__.split("\n\n")[0])
    p.add_argument("submission", help="the submission.csv predict.py wrote")
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--sample", help="the competition's sample_submission.csv (its image ids)")
    source.add_argument("--images", help="the folder of test DICOMs (their file names)")
    source.add_argument("--meta", help="the test meta CSV cxrdet prepare wrote (its image ids)")
    a = p.parse_args(argv)
    try:
        ids, where = expected_ids(a)
        rows = read_submission(a.submission, image_ids=ids)
    except SubmissionError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    boxes = sum(len(scores) for _, scores, _ in rows.values())
    print(
        f"ok: {a.submission}: {len(rows)} rows, the image ids of {where} each once, "
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
