"""Metrics registry: ``get_metric(name, **settings)`` and ``list_metrics()``."""

from xrl.metrics.base import METRICS, Metric


def get_metric(name: str, **settings) -> Metric:
    """An instance of the metric registered as ``name`` with its settings."""
    return METRICS.get(name)(**settings)


def list_metrics() -> list[str]:
    return METRICS.names()


__all__ = ["METRICS", "Metric", "get_metric", "list_metrics"]
from xrl.metrics import (  # noqa: E402,F401  (registers the metrics)
    complexity,
    cost,
    faithfulness,
    gaze,  # noqa: E402,F401  (agreement with human gaze: nss, gaze_kl, shuffled_auc)
    localization,
    robustness,
    sanity,  # noqa: E402,F401  (sanity checks, Adebayo et al. 2018)
)
