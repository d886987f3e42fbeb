"""The paired bootstrap of ``xrl reproduce`` (``xrl.reproduce.core.paired_interval``, used by
``visionmask-table1`` for VisionMask minus each method) against hand-known cases."""

import math

import numpy as np

from xrl.reproduce.core import paired_interval


def test_constant_difference_has_a_point_interval_and_nans_drop_pairwise():
    r = paired_interval([0.1, 0.2, 0.3, 0.4], [0.3, 0.4, 0.5, math.nan])
    assert r["n"] == 3 and abs(r["mean"] + 0.2) < 1e-12
    assert abs(r["low"] + 0.2) < 1e-12 and abs(r["high"] + 0.2) < 1e-12


def test_interval_contains_the_mean_and_excludes_zero_for_a_clear_gap():
    rng = np.random.default_rng(0)
    a = rng.normal(0.0, 0.01, 64)
    b = a + 0.05 + rng.normal(0.0, 0.01, 64)  # lime better by 0.05 on average, noisily
    lime = paired_interval(a, b)
    assert abs(lime["mean"] - float(np.mean(a - b))) < 1e-12
    assert lime["low"] < lime["mean"] < lime["high"] < 0  # a clear loss
    rise = paired_interval(a, a + rng.normal(0.0, 0.01, 64))
    assert rise["low"] < 0 < rise["high"]  # no real gap: the interval holds 0
