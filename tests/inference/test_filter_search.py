"""The filter search scores each image's row as predict.py writes it and recommends the filter
only when its held-out gain is measurably above 0 (fast: synthetic rows, no model)."""

from __future__ import annotations

import numpy as np
import pytest

from cxrdet.evaluation.competition import competition_map
from cxrdet.evaluation.nofinding import filter_input, nofinding_filter, with_no_finding
from cxrdet.evaluation.submission import EMPTY_PREDICTION, as_read_back, format_prediction
from cxrdet.inference.classifier_cv import filter_search

BOX = np.array([[10.0, 10, 50, 50]])
EMPTY = (np.zeros((0, 4)), np.zeros(0), np.zeros(0, np.int64))


def test_a_filtered_row_is_the_row_predict_writes_even_when_empty():
    """Above ``high`` an empty prediction is written as ``14 1 0 0 1 1``: the filter returns
    that line, so a search scoring its output scores what the CSV holds."""
    row = nofinding_filter(EMPTY, 0.99, low=0.08, high=0.95)
    assert format_prediction(*EMPTY) == EMPTY_PREDICTION  # what predict.py writes
    assert [a.tolist() for a in as_read_back(*row)] == [a.tolist() for a in as_read_back(*EMPTY)]
    assert [a.tolist() for a in row] == [[[0, 0, 1, 1]], [1.0], [14]]


def test_the_filter_starts_from_what_predict_hands_it():
    """With a class-14 head the detector's own line stays above ``high`` (its score-0
    stand-in does not); without one, the line made from the top score goes."""
    head_line = (np.vstack([BOX, [[0, 0, 1, 1]]]), np.array([0.6, 0.3]), np.array([3, 14]))
    assert filter_input(head_line, class14_head=True)[2].tolist() == [3, 14]
    stand_in = with_no_finding(BOX, np.array([0.6]), np.array([3]), class14_head=True)
    assert filter_input(stand_in, class14_head=True)[2].tolist() == [3]
    derived = with_no_finding(BOX, np.array([0.6]), np.array([3]))
    assert filter_input(derived, class14_head=False)[2].tolist() == [3]


def _oof(n: int = 40, seed: int = 0, class14_head: bool = False):
    """Half the images normal; the detector finds the abnormal ones' box at 0.9 and puts a
    confident false box on every normal one at 0.95 (ranked above the true ones; its
    No-finding line, 1 - top, below the abnormal images')."""
    rng = np.random.default_rng(seed)
    gt, sub, normal = {}, {}, set()
    for k in range(n):
        i = f"{k:03d}"
        if k % 2:
            gt[i] = (BOX.copy(), np.array([3]))
            pred = (BOX.copy(), np.array([0.9]), np.array([3]))
        else:
            normal.add(i)
            gt[i] = (np.array([[0.0, 0, 1, 1]]), np.array([14]))
            far = np.array([[200.0, 200, 240, 240]]) + rng.uniform(0, 5)
            pred = (far, np.array([0.95]), np.array([3]))
            if class14_head:  # its own No-finding line, where predict.py keeps it
                pred = tuple(np.r_[a, b] for a, b in zip(pred, ([[0, 0, 1, 1]], [0.6], [14])))
        sub[i] = with_no_finding(*pred, class14_head=class14_head)
    fold_of = {i: int(i) % 4 < 2 for i in gt}
    return gt, sub, normal, fold_of


def test_the_filter_is_recommended_only_when_its_held_out_gain_is_above_noise():
    gt, sub, normal, fold_of = _oof()
    # An informative classifier: the normal images get No finding at 1 and lose the false box.
    good = {i: 0.01 if i in normal else 0.99 for i in gt}
    r = filter_search(sub, good, gt, fold_of)
    assert r["recommended"] and r["held_out_pooled_gain_ci"][0] > 0
    held = {i: nofinding_filter(filter_input(sub[i], False), good[i], 0.02, 0.5) for i in gt}
    assert r["held_out_pooled_gain"] > 0.1
    assert competition_map(gt, held)["mAP"] > competition_map(gt, sub)["mAP"]
    # A misleading one (normal images called abnormal and the other way round): whatever pair
    # the other folds pick, the held-out rows lose, and the filter is not recommended (the
    # in-sample best pair of the grid is still reported, as the figures to look at).
    wrong = {i: 0.99 if i in normal else 0.01 for i in gt}
    r = filter_search(sub, wrong, gt, fold_of)
    assert not r["recommended"] and r["held_out_pooled_gain_ci"][0] <= 0


def test_cv_prints_no_filter_command_when_not_recommended(monkeypatch, capsys):
    from cxrdet.inference.cv import print_classifier

    oof = {
        "images": 4,
        "AUC": 0.5,
        "low": 0.02,
        "high": 0.5,
        "mAP40_without_filter": 0.3,
        "mAP40_with_filter": 0.31,
        "held_out_gain": -0.01,
        "held_out_pooled_gain": -0.01,
        "held_out_pooled_gain_ci": [-0.05, 0.03],
        "recommended": False,
        "held_out": [],
        "top5": [],
    }
    print_classifier({"folds": [], "oof": oof, "command": ""})
    out = capsys.readouterr().out
    assert "no evidence of a difference" in out and "not recommended" in out
    assert "nofinding.low" not in out.split("the top five")[-1]
    assert "predict.py without the filter" in out


@pytest.mark.parametrize("class14_head", [False, True])
def test_the_search_scores_what_predict_writes(class14_head):
    """The search's best pair and its figure are those of the rows predict.py writes (read
    back), over the whole grid: with a class-14 head, its own line kept above ``high``."""
    from cxrdet.inference.classifier_cv import GRID

    gt, sub, normal, fold_of = _oof(20, seed=1, class14_head=class14_head)
    probs = dict(zip(gt, np.random.default_rng(2).uniform(0, 1, len(gt))))
    r = filter_search(sub, probs, gt, fold_of, class14_head)

    def written(pair) -> float:
        source = {i: filter_input(sub[i], class14_head) for i in gt}
        rows = {i: as_read_back(*nofinding_filter(source[i], probs[i], *pair)) for i in gt}
        return competition_map(gt, rows)["mAP"]

    on_grid = {pair: written(pair) for pair in GRID}
    assert r["mAP40_with_filter"] == pytest.approx(max(on_grid.values()), abs=1e-3)
    assert r["mAP40_with_filter"] == pytest.approx(on_grid[(r["low"], r["high"])], abs=1e-3)
