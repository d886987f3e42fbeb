"""The paired bootstrap of benchmarks/visionmask_eval.py against hand-known cases."""
import math
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from visionmask_eval import paired_differences  # noqa: E402


def test_constant_difference_has_a_point_interval_and_nans_drop_pairwise():
    values = {"visionmask": {"deletion": [0.1, 0.2, 0.3, 0.4]},
              "rise": {"deletion": [0.3, 0.4, 0.5, math.nan]}}
    d = paired_differences(values, "visionmask", ("deletion", "insertion"))
    assert set(d) == {"deletion"}  # a column the reference lacks is skipped
    r = d["deletion"]["rise"]
    assert r["n"] == 3 and abs(r["mean"] + 0.2) < 1e-12
    assert abs(r["low"] + 0.2) < 1e-12 and abs(r["high"] + 0.2) < 1e-12


def test_interval_contains_the_mean_and_excludes_zero_for_a_clear_gap():
    rng = np.random.default_rng(0)
    a = rng.normal(0.0, 0.01, 64)
    b = a + 0.05 + rng.normal(0.0, 0.01, 64)  # lime better by 0.05 on average, noisily
    values = {"visionmask": {"insertion": list(a)}, "lime": {"insertion": list(b)},
              "rise": {"insertion": list(a + rng.normal(0.0, 0.01, 64))}}
    d = paired_differences(values, "visionmask", ("insertion",))["insertion"]
    assert abs(d["lime"]["mean"] - float(np.mean(a - b))) < 1e-12
    assert d["lime"]["low"] < d["lime"]["mean"] < d["lime"]["high"] < 0  # a clear loss
    assert d["rise"]["low"] < 0 < d["rise"]["high"]  # no real gap: the interval holds 0
