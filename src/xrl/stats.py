"""Paired statistics shared by ``xrl reproduce`` (papers' tables) and ``xrl report`` (the verdict).

A ground-floor module: numpy and scipy only, nothing from xrl, so every layer may use it.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def paired_interval(
    a: Sequence[float] | np.ndarray,
    b: Sequence[float] | np.ndarray,
    *,
    resamples: int = 10_000,
    seed: int = 0,
    level: float = 0.95,
) -> dict:
    """Mean of ``a - b`` over paired samples (states or seeded episodes; pairs with a NaN/None
    left out) with a percentile-bootstrap interval (``scipy.stats.bootstrap``, seeded)."""
    from scipy.stats import bootstrap

    x = np.asarray([np.nan if v is None else v for v in a], dtype=np.float64)
    y = np.asarray([np.nan if v is None else v for v in b], dtype=np.float64)
    if x.shape != y.shape:
        raise ValueError(f"paired samples must have the same length, got {x.shape} and {y.shape}")
    diff = x - y
    diff = diff[~np.isnan(diff)]
    if diff.size < 2:
        return {"mean": float(diff.mean()) if diff.size else None, "low": None, "high": None, "n": int(diff.size)}
    if np.all(diff == diff[0]):  # a degenerate sample: the interval is the point
        return {"mean": float(diff[0]), "low": float(diff[0]), "high": float(diff[0]), "n": int(diff.size)}
    ci = bootstrap(
        (diff,),
        np.mean,
        n_resamples=resamples,
        method="percentile",
        confidence_level=level,
        rng=np.random.default_rng(seed),
    ).confidence_interval
    return {"mean": float(diff.mean()), "low": float(ci.low), "high": float(ci.high), "n": int(diff.size)}


__all__ = ["paired_interval"]
