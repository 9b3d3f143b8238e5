"""The Kaggle submission format: ``image_id,PredictionString`` with
``class score x_min y_min x_max y_max ...`` in original pixels; nothing found → ``14 1 0 0 1 1``
(the class set's "No finding" id: ``22 1 0 0 1 1`` with ``local22``)."""

from __future__ import annotations

import csv
import os
from pathlib import Path

import numpy as np
import pandas as pd

from cxrdet.data.boxes import Content, clip, to_original, valid
from cxrdet.data.classes import KAGGLE14, ClassSet
from cxrdet.data.csv_format import separator_note
from cxrdet.evaluation.nofinding import Prediction, no_finding_as_image_label


def empty_prediction(classes: ClassSet = KAGGLE14) -> str:
    """An image with nothing found: "No finding" at score 1."""
    return f"{classes.no_finding} 1 0 0 1 1"


EMPTY_PREDICTION = empty_prediction(KAGGLE14)


class SubmissionError(ValueError):
    """A malformed submission; the message names the file, row and reason."""


def format_prediction(
    boxes: np.ndarray, scores: np.ndarray, classes: np.ndarray, class_set: ClassSet = KAGGLE14
) -> str:
    """One PredictionString, highest score first; an empty set becomes ``14 1 0 0 1 1``
    (:func:`empty_prediction` of ``class_set``)."""
    if len(scores) == 0:
        return empty_prediction(class_set)
    order = np.argsort(-np.asarray(scores), kind="stable")
    parts = []
    for i in order:
        x0, y0, x1, y1 = (float(v) for v in boxes[i])
        parts.append(
            f"{int(classes[i])} {float(scores[i]):.4f} {x0:.1f} {y0:.1f} {x1:.1f} {y1:.1f}"
        )
    return " ".join(parts)


def as_read_back(
    boxes: np.ndarray, scores: np.ndarray, classes: np.ndarray, class_set: ClassSet = KAGGLE14
):
    """A prediction exactly as the scorer reads it from a submission: 4-decimal scores, 0.1-px
    boxes, highest score first (formatted, then parsed)."""
    return parse_prediction(format_prediction(boxes, scores, classes, class_set), class_set)


def parse_prediction(
    text: str, class_set: ClassSet = KAGGLE14
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """PredictionString → (boxes [N, 4], scores [N], classes [N]), class ids of ``class_set``;
    raises ValueError with why."""
    tokens = str(text).split() if isinstance(text, str) else []
    if not tokens or len(tokens) % 6:
        raise ValueError(f"{len(tokens)} tokens, expected a positive multiple of 6")
    try:
        values = np.array(tokens, dtype=np.float64).reshape(-1, 6)
    except ValueError as e:
        raise ValueError(f"non-numeric token ({e})") from None
    classes, scores, boxes = values[:, 0], values[:, 1], values[:, 2:]
    for k, (c, s, b) in enumerate(zip(classes, scores, boxes)):
        if c != int(c) or not 0 <= c <= class_set.no_finding:
            raise ValueError(
                f"prediction {k + 1}: class {c:g} outside 0..{class_set.no_finding} "
                f"({class_set.name})"
            )
        if not 0.0 <= s <= 1.0:
            raise ValueError(f"prediction {k + 1}: score {s:g} outside [0, 1]")
        if b[0] >= b[2] or b[1] >= b[3]:
            raise ValueError(
                f"prediction {k + 1}: box {b.tolist()} has x_min >= x_max or y_min >= y_max"
            )
    return boxes, scores, classes.astype(np.int64)


def read_submission(path: str | Path, image_ids=None, classes: ClassSet = KAGGLE14) -> dict:
    """Read and validate a submission; returns image id → (boxes, scores, classes).

    Args:
        path: the CSV.
        image_ids: when given, the ids that must appear exactly once (no more, no fewer).
        classes: the class set its ids are of.
    """
    path = Path(path)
    if not path.is_file():
        raise SubmissionError(f"submission not found: {path}")
    df = pd.read_csv(path, dtype=str, keep_default_na=False)
    if list(df.columns) != ["image_id", "PredictionString"]:
        raise SubmissionError(
            f"{path}: columns {list(df.columns)}, expected image_id,PredictionString"
            + separator_note(df.columns)
        )
    out = {}
    for row, (image_id, text) in enumerate(zip(df["image_id"], df["PredictionString"]), start=2):
        if image_id in out:
            raise SubmissionError(f"{path}, line {row}: image_id {image_id} appears twice")
        try:
            out[image_id] = parse_prediction(text, classes)
        except ValueError as e:
            raise SubmissionError(f"{path}, line {row} ({image_id}): {e}") from None
    if image_ids is not None:
        expected = set(image_ids)
        unknown = sorted(set(out) - expected)
        if unknown:
            raise SubmissionError(f"{path}: {len(unknown)} unknown image_id(s), e.g. {unknown[0]}")
        missing = sorted(expected - set(out))
        if missing:
            raise SubmissionError(f"{path}: {len(missing)} image_id(s) missing, e.g. {missing[0]}")
    return out


def write_submission(rows: dict[str, str], path: str | Path) -> Path:
    """Write ``image_id → PredictionString`` rows through a temporary file (never half a CSV)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    pd.DataFrame({"image_id": list(rows), "PredictionString": list(rows.values())}).to_csv(
        tmp, index=False
    )
    os.replace(tmp, path)
    return path


def prediction_of(output: dict) -> Prediction:
    """A torchvision detector's output for one image as numpy (boxes, scores, class ids);
    torchvision's labels are class id + 1."""
    return predictions_of([output])[0]


def predictions_of(outputs: list[dict]) -> list[Prediction]:
    """:func:`prediction_of` for a batch's outputs in one copy to the host (one wait for the
    GPU per batch, not three per image)."""
    import torch  # the scorer reads submissions without loading torch

    if not outputs:
        return []
    counts = [len(o["scores"]) for o in outputs]
    packed = torch.cat(
        [
            torch.cat(
                [o["boxes"].detach().float(), o["scores"].detach().float()[:, None],
                 o["labels"].detach().float()[:, None]],
                dim=1,
            )
            for o in outputs
        ]
    ).cpu().numpy()  # fmt: skip
    out, start = [], 0
    for n in counts:
        rows = packed[start : start + n]
        out.append((rows[:, :4].copy(), rows[:, 4].copy(), rows[:, 5].astype(np.int64) - 1))
        start += n
    return out


def to_original_prediction(
    pred: Prediction,
    orig_hw,
    image_hw,
    content: Content | None = None,
    no_finding: int = KAGGLE14.no_finding,
) -> Prediction:
    """A prediction on a prepared image as the submission writes it: boxes mapped back to
    original pixels and clipped to the image; a box that ends up under a pixel (one lying in
    the letterbox padding) is dropped; class-14 detections become one image-level line
    (:func:`cxrdet.evaluation.nofinding.no_finding_as_image_label`).

    The content rectangle maps onto the original image, so clipping to the image clips to it.
    """
    boxes, scores, classes = pred
    boxes = clip(to_original(boxes, orig_hw, image_hw, content), orig_hw)
    boxes, scores, classes = no_finding_as_image_label(boxes, scores, classes, no_finding)
    keep = valid(boxes)
    return boxes[keep], np.asarray(scores)[keep], np.asarray(classes)[keep]


def check_submission(path: Path, classes: ClassSet, n: int) -> None:
    """Every row of the written submission parses as the scorer parses it, and there are
    ``n`` (read a row at a time)."""
    with open(path, newline="") as f:
        reader = csv.reader(f)
        next(reader)
        count = 0
        for count, (image_id, text) in enumerate(reader, start=1):
            try:
                parse_prediction(text, classes)
            except ValueError as e:
                raise ValueError(f"{path}, line {count + 1} ({image_id}): {e}") from None
    if count != n:
        raise ValueError(f"{path}: {count} rows for {n} images")
