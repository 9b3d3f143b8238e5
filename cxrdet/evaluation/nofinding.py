"""How a prediction carries "No finding" (class 14 of ``kaggle14``, 22 of ``local22``: each
function's ``no_finding``), which the competition scores as an image-level ``0 0 1 1`` box: the
detector's own "No finding" detections, the line scored from the detector's confidence, and the
winners' filter from an image-level classifier."""

from __future__ import annotations

import numpy as np

from cxrdet.data.labels import NO_FINDING, NO_FINDING_BOX  # NO_FINDING: kaggle14's id

Prediction = tuple[np.ndarray, np.ndarray, np.ndarray]  # boxes [N, 4], scores [N], classes [N]


def no_finding_as_image_label(
    boxes: np.ndarray, scores: np.ndarray, classes: np.ndarray, no_finding: int = NO_FINDING
):
    """A detector's "No finding" detections as the competition reads them: one line at the
    highest of their scores, box ``0 0 1 1`` (wherever the detector put it)."""
    is14 = np.asarray(classes) == no_finding
    if not is14.any():
        return boxes, scores, classes
    first = np.flatnonzero(is14)[np.argmax(np.asarray(scores)[is14])]
    keep = ~is14
    keep[first] = True
    boxes = np.array(boxes, np.float64).reshape(-1, 4)
    boxes[first] = NO_FINDING_BOX
    return boxes[keep], np.asarray(scores)[keep], np.asarray(classes)[keep]


def with_no_finding(
    boxes: np.ndarray,
    scores: np.ndarray,
    classes: np.ndarray,
    class14_head: bool = False,
    no_finding: int = NO_FINDING,
):
    """The prediction with its one "No finding" line, from one source for every image.

    A detector trained with class 14 (``class14_head``) scores it itself: its line (already
    one, :func:`no_finding_as_image_label`) is kept, and where it gave none (its score fell
    under the detector's threshold) the line is ``14 0 0 0 1 1``. A detector without that head
    gets ``14 <1 - the highest finding score> 0 0 1 1`` (1 when nothing was found). So a
    submission never mixes the two scales in class 14. An extra low-score line never lowers
    the other classes' AP, and it lets class 14 score.
    """
    is14 = np.asarray(classes) == no_finding
    if class14_head:
        if is14.any():
            return boxes, scores, classes
        return add_no_finding(boxes, scores, classes, 0, no_finding)
    top = float(np.max(np.asarray(scores)[~is14])) if (~is14).any() else 0.0
    keep = ~is14
    boxes = np.asarray(boxes, np.float64).reshape(-1, 4)[keep]
    return add_no_finding(
        boxes, np.asarray(scores)[keep], np.asarray(classes)[keep], 1.0 - top, no_finding
    )


def add_no_finding(
    boxes: np.ndarray,
    scores: np.ndarray,
    classes: np.ndarray,
    score: float,
    no_finding: int = NO_FINDING,
):
    """The prediction with one more line: "No finding" at ``score``, box ``0 0 1 1``."""
    return (
        np.vstack([np.asarray(boxes, np.float64).reshape(-1, 4), NO_FINDING_BOX]),
        np.append(np.asarray(scores, np.float64), score),
        np.append(np.asarray(classes, np.int64), no_finding),
    )


def nofinding_filter(
    pred: Prediction, p_abnormal: float, low: float, high: float, no_finding: int = NO_FINDING
) -> Prediction:
    """The winners' "No finding" rule from an image-level classifier's P(abnormal), as the
    submission row it becomes (what ``predict.py`` writes and ``cxrdet cv`` scores).

    Below ``low``: only ``14 1 0 0 1 1``. From ``low`` to ``high``: the boxes plus
    ``14 <1 - p> 0 0 1 1``, in place of any class-14 line the detector gave (one line, one
    source). From ``high`` up: the prediction unchanged; an empty one is the row an empty
    prediction is written as, ``14 1 0 0 1 1``.
    """
    boxes, scores, classes = pred
    if p_abnormal < low or (p_abnormal >= high and len(scores) == 0):
        return NO_FINDING_BOX[None].copy(), np.array([1.0]), np.array([no_finding])
    if p_abnormal < high:
        keep = np.asarray(classes) != no_finding
        boxes = np.asarray(boxes, np.float64).reshape(-1, 4)[keep]
        return add_no_finding(
            boxes, np.asarray(scores)[keep], np.asarray(classes)[keep], 1 - p_abnormal, no_finding
        )
    return pred


def filter_input(row: Prediction, class14_head: bool, no_finding: int = NO_FINDING) -> Prediction:
    """The prediction ``predict.py`` hands to :func:`nofinding_filter`, recovered from the row
    it wrote without the filter (:func:`with_no_finding`): with a class-14 head the row as it
    is, less the score-0 stand-in line written where the head gave none; without one, the row
    less the line made from the top score (the filter puts its own in its place)."""
    boxes = np.asarray(row[0], np.float64).reshape(-1, 4)
    scores, classes = np.asarray(row[1]), np.asarray(row[2])
    is14 = classes == no_finding
    keep = ~(is14 & (scores == 0) if class14_head else is14)
    return boxes[keep], scores[keep], classes[keep]
