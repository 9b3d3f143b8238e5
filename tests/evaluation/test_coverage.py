"""The 95 % intervals cover what they claim: on a simulated world of known value
(:mod:`cxrdet.evaluation.simulation`: the competition's 14 findings at their frequencies, a
detector of known behaviour), the intervals of 150 test sets of 300 images hold the world's
value of mAP40, AP40 and the CPM in at least 93 % of the sets. A mean over classes is judged
against the world's mean over the classes its interval counts (those with >= 5 boxes).

Fails on the percentile interval over every class present (what the project printed before:
mAP40 and AP40 held the world's value in 81 % of these sets): ``benchmarks/interval_coverage.py``
prints the table for 40, 300 and 3,000 images and both intervals.
"""

from __future__ import annotations

import numpy as np
import pytest

from cxrdet.evaluation import simulation

SETS, IMAGES, RESAMPLES = 150, 300, 200
FINDINGS = len(simulation.ROWS)


@pytest.fixture(scope="module")
def world():
    return simulation.population()


def test_the_intervals_hold_the_world_s_value_in_at_least_93_percent_of_300_image_sets(world):
    hits = [simulation.covers(world, IMAGES, 1000 + s, RESAMPLES) for s in range(SETS)]
    assert all(v is not None for h in hits for v in h.values())  # shown for every set
    coverage = {k: np.mean([h[k] for h in hits]) for k in hits[0]}
    assert min(coverage.values()) >= 0.93, coverage


def test_the_world_is_what_its_docstring_says():
    """Rare findings are rare (so that the class set matters) and the detector is neither
    perfect nor useless."""
    truth, dets = simulation.draw(3000, 7)
    classes = np.concatenate([c for _, c in truth.values()])
    per_image = np.bincount(classes, minlength=FINDINGS) / 3000
    np.testing.assert_allclose(per_image, simulation.BOXES_PER_IMAGE, rtol=0.5, atol=0.002)
    normal = np.mean([len(c) == 0 for _, c in truth.values()])
    assert 0.65 < normal < 0.8
    mean_ap = np.mean(list(simulation.population(3000)["AP"].values()))
    assert 0.3 < mean_ap < 0.7
