"""Each prediction process's results, streamed to a file of its own as its batches finish, and
the one merge that turns them into the outputs.

Beside the submission, ``<stem>.parts/`` holds:

- ``settings.json``: the run's fingerprint, the SHA-256 of every checkpoint (and classifier,
  probabilities file) and every setting that changes a row. A relaunch with other settings is
  refused, naming what differs: outputs of two settings are never mixed.
- ``rank<r>of<w>.jsonl``: one JSON line per image that process ``r`` of ``w`` predicted, in
  the order it finished them: the image id, its submission row, its detections (class, score,
  box in original pixels, as the submission rounds them), the classifiers' P(abnormal) and
  P(diagnosis), why it could not be read, its DICOM results. Lines are appended a batch at a
  time and flushed (``fsync`` every ``SYNC_EVERY_S``); a line is written after everything
  else of its image (its DICOM results), so a line that is there is an image that is done.

A relaunch in the same folder reads the whole lines of every rank's file (any number of
processes before) and predicts only the images without one; a process's own file loses a
partial last line (a kill mid-write) before it appends. :func:`merge` then writes every output
in the dataset's order, reading one line at a time by its offset: memory holds an offset per
image, never the rows. Cost: the merge reads each line once; a relaunch parses each once.
"""

from __future__ import annotations

import csv
import json
import logging
import os
import time
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from cxrdet.atomic import atomic_open, atomic_write

log = logging.getLogger(__name__)

SYNC_EVERY_S = 30.0  # a crash of the node loses at most this much; a kill loses nothing flushed
DETECTIONS_CSV = "detections.csv"  # every detection of every image, beside the submission
FAILURES_CSV = "failures.csv"  # the images that could not be read, and why
DETECTION_COLUMNS = "image_id,class_id,class_name,score,x_min,y_min,x_max,y_max,checkpoint"


def parts_folder(output: str | Path) -> Path:
    """Where the processes of a prediction writing ``output`` stream their results."""
    output = Path(output)
    return output.with_name(f"{output.stem}.parts")


def check_settings(folder: Path, settings: dict) -> None:
    """Record ``settings`` (the fingerprint) in ``folder``, or refuse when the predictions
    already there were made with other ones."""
    path = folder / "settings.json"
    if path.is_file():
        before = json.loads(path.read_text())
        if before != settings:
            keys = sorted(
                k for k in before.keys() | settings.keys() if before.get(k) != settings.get(k)
            )
            differ = "; ".join(f"{k}: {before.get(k)} -> {settings.get(k)}" for k in keys)
            raise ValueError(
                f"{folder} holds predictions made with other settings ({differ}): they are not "
                f"mixed. Predict into another folder (output=... or hydra.run.dir=...), or "
                f"delete {folder} to predict every image again with these"
            )
        return
    folder.mkdir(parents=True, exist_ok=True)
    atomic_write(path, lambda f: f.write(json.dumps(settings, indent=2, sort_keys=True)), "w")


def whole_lines(path: Path):
    """``(offset, line)`` of each newline-terminated line of ``path`` (a partial last line,
    from a write a kill interrupted, is not one)."""
    offset = 0
    with open(path, "rb") as f:
        for line in f:
            if not line.endswith(b"\n"):
                return
            yield offset, line
            offset += len(line)


def image_lines(path: Path):
    """``(offset, image id)`` of each image's line in ``path``; a line that is no image's (a
    node that crashed before its disk had the data leaves zeros) is named in the log and
    skipped: that image is predicted again."""
    for offset, line in whole_lines(path):
        try:
            yield offset, json.loads(line)["id"]
        except (ValueError, KeyError, TypeError):
            log.warning("%s, byte %d: not an image's line (skipped): %r", path, offset, line[:40])


def rank_files(folder: Path) -> list[Path]:
    return sorted(folder.glob("rank*of*.jsonl"))


def done_ids(folder: Path) -> set[str]:
    """The images some earlier or concurrent process has finished, from every rank's file."""
    return {image_id for path in rank_files(folder) for _, image_id in image_lines(path)}


class PartWriter:
    """Appends one process's lines to ``rank<r>of<w>.jsonl``, a batch at a time."""

    def __init__(self, folder: Path, rank: int, world: int):
        self.path = folder / f"rank{rank}of{world}.jsonl"
        folder.mkdir(parents=True, exist_ok=True)
        if self.path.exists():  # a kill mid-write left part of a line: drop it
            whole = sum(len(line) for _, line in whole_lines(self.path))
            if whole != self.path.stat().st_size:
                os.truncate(self.path, whole)
        self.file = open(self.path, "ab")  # noqa: SIM115 (open for the whole prediction)
        self.synced = time.monotonic()

    def write(self, records: list[dict]) -> None:
        self.file.write(
            b"".join(json.dumps(r, separators=(",", ":")).encode() + b"\n" for r in records)
        )
        self.file.flush()
        if time.monotonic() - self.synced > SYNC_EVERY_S:
            os.fsync(self.file.fileno())
            self.synced = time.monotonic()

    def close(self) -> None:
        self.file.flush()
        os.fsync(self.file.fileno())
        self.file.close()


def record(image_id: str, row: str, detections, **extra) -> dict:
    """One image's line: its row, its detections ``(boxes, scores, classes)`` rounded as the
    submission rounds them, and what else there is (``p``, ``dx``, ``error``, ``dicom``,
    ``dicom_skipped``; None values left out)."""
    boxes, scores, classes = detections
    det = [
        [int(c), round(float(s), 4), *(round(float(v), 1) for v in b)]
        for b, s, c in zip(boxes, scores, classes)
    ]
    return {
        "id": image_id,
        "row": row,
        "det": det,
        **{k: v for k, v in extra.items() if v is not None},
    }


@dataclass
class Merged:
    """What :func:`merge` wrote and counted."""

    images: int = 0
    unreadable: int = 0
    repeated: int = 0  # images with more than one line (two runs in one folder at once)
    dicom_files: list[str] = field(default_factory=list)
    dicom_skipped: int = 0
    first: dict = field(default_factory=dict)  # the first images' detections, for the figures
    files: list[str] = field(default_factory=list)


def merge(
    folder: Path,
    ids: list[str],
    output: Path,
    names: list[str],
    checkpoint: str,
    probs_csv: str,
    diagnoses_csv: str,
    diagnoses: list[str],
    keep_first: int = 0,
) -> Merged:
    """Write ``output`` (the submission), ``detections.csv``, and where there are any the
    P(abnormal) and P(diagnosis) CSVs (``probs_csv``, ``diagnoses_csv`` beside it) and
    ``failures.csv``, one row per image in the order of ``ids``, from the rank files in
    ``folder``. Each file is written whole or not at all. ``names``: the class names by id;
    ``checkpoint``: the detections' checkpoint column; ``keep_first``: how many of the first
    images' detections to return (drawn by ``viz``)."""
    wanted = set(ids)
    where: dict[str, tuple[int, int]] = {}
    files = rank_files(folder)
    merged = Merged()
    for n, path in enumerate(files):
        for offset, image_id in image_lines(path):
            if image_id not in wanted:
                continue
            if image_id in where:
                merged.repeated += 1
            else:
                where[image_id] = (n, offset)
    missing = [i for i in ids if i not in where]
    if missing:
        raise ValueError(
            f"{folder}: {len(missing)} of {len(ids)} images have no prediction (e.g. "
            f"{missing[0]}): a process stopped early; run the same command again to predict them"
        )
    if merged.repeated:
        log.warning(
            "%s: %d images predicted more than once (the first kept)", folder, merged.repeated
        )
    beside = output.parent
    with ExitStack() as stack:
        readers = [stack.enter_context(open(p, "rb")) for p in files]
        lazy: dict[str, object] = {}  # CSV writers; some files only some runs have

        def table(name: Path | str, header: list[str]):
            if name not in lazy:
                lazy[name] = csv.writer(
                    stack.enter_context(atomic_open(beside / name)), lineterminator="\n"
                )
                lazy[name].writerow(header)
            return lazy[name]

        out = table(output.name, ["image_id", "PredictionString"])
        detections = table(DETECTIONS_CSV, DETECTION_COLUMNS.split(","))

        for image_id in ids:
            n, offset = where[image_id]
            readers[n].seek(offset)
            r = json.loads(readers[n].readline())
            merged.images += 1
            out.writerow([image_id, r["row"]])
            for c, s, *box in r["det"]:
                name = names[c] if c < len(names) else str(c)
                detections.writerow(
                    [image_id, c, name, f"{s:.4f}", *(f"{v:.1f}" for v in box), checkpoint]
                )
            if "p" in r:
                table(probs_csv, ["image_id", "p_abnormal"]).writerow([image_id, f"{r['p']:.6f}"])
            if "dx" in r:
                table(diagnoses_csv, ["image_id", *diagnoses]).writerow(
                    [image_id, *(f"{v:.6f}" for v in r["dx"])]
                )
            if "error" in r:
                merged.unreadable += 1
                table(FAILURES_CSV, ["image_id", "error"]).writerow([image_id, r["error"]])
            merged.dicom_files += r.get("dicom", [])
            merged.dicom_skipped += "dicom_skipped" in r
            if len(merged.first) < keep_first and r["det"]:
                det = np.array(r["det"], dtype=float).reshape(-1, 6)
                merged.first[image_id] = (det[:, 2:], det[:, 1], det[:, 0].astype(int))
        merged.files = [str(beside / name) for name in lazy]
    return merged
