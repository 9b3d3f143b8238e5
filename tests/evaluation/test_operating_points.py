"""The radiologists at their operating points and the model at the same FP rates, with the
paired verdict (above, within, below)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from cxrdet.data.labels import CLASS_NAMES, LABEL_COLUMNS
from cxrdet.evaluation.operating_points import operating_points
from cxrdet.evaluation.readers import leave_one_out


def _scene(n: int = 20):
    """R2 marks a nodule on each of ``n`` images, R1 on the first half only ("No finding"
    on the rest)."""
    rows, boxes = [], {}
    for k in range(n):
        i = f"{k:02d}"
        box = [10.0 * k, 10, 10.0 * k + 30, 40]
        boxes[i] = box
        rows.append([i, CLASS_NAMES[8], 8, "R2", *box])
        if k < n // 2:
            rows.append([i, CLASS_NAMES[8], 8, "R1", *box])
        else:
            rows.append([i, CLASS_NAMES[14], 14, "R1", *[np.nan] * 4])
    return pd.DataFrame(rows, columns=LABEL_COLUMNS), boxes


def test_each_reader_is_a_point_and_the_model_is_read_at_its_fp_rate():
    labels, boxes = _scene()
    sets = leave_one_out(labels)
    # The model finds every nodule at 0.9 and marks nothing else.
    dets = {i: (np.array([b]), np.array([0.9]), np.array([8])) for i, b in boxes.items()}
    r = operating_points(sets, dets, resamples=300)
    r1, r2 = r["readers"]
    # R1 against R2's 20 nodules: finds 10, no FP; the model at 0 FP/image finds all 20.
    assert (r1["reader"], r1["lesions"], r1["reader_sensitivity"], r1["reader_fps"]) == (
        "R1",
        20,
        0.5,
        0.0,
    )
    assert r1["model_sensitivity"] == 1.0 and r1["verdict"] == "above"
    # R2 against R1's 10: finds them all, and its other 10 marks are FPs (0.5 per image);
    # the model, at that rate, also finds all (its 10 others are FPs too): within.
    assert (r2["reader_sensitivity"], r2["reader_fps"], r2["model_sensitivity"]) == (1.0, 0.5, 1.0)
    assert r2["verdict"] == "within" and r2["difference_ci"] == [0.0, 0.0]
    # Per class, the readers pooled: 30 lesions, 20 found, 10 FPs on 40 reader-images.
    nodule = r["per_class"][8]
    assert nodule["lesions"] == 30 and nodule["reader_sensitivity"] == pytest.approx(2 / 3)
    assert nodule["reader_fps"] == pytest.approx(0.25) and nodule["verdict"] == "above"
    assert 14 not in r["per_class"]  # "No finding" is no lesion


def test_a_model_that_finds_nothing_is_below_the_readers():
    labels, _ = _scene()
    r = operating_points(leave_one_out(labels), {}, resamples=300)
    assert [row["verdict"] for row in r["readers"]] == ["below", "below"]
    assert all(row["model_sensitivity"] == 0.0 for row in r["readers"])
