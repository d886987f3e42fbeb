"""Metrics registry: ``get_metric(name, **settings)`` and ``list_metrics()``."""

import importlib
import pkgutil

from xrl.metrics.base import METRICS, Metric


def get_metric(name: str, **settings) -> Metric:
    """An instance of the metric registered as ``name`` with its settings."""
    return METRICS.get(name)(**settings)


def list_metrics() -> list[str]:
    return METRICS.names()


__all__ = ["METRICS", "Metric", "get_metric", "list_metrics"]
# every module of this package is imported, so the metrics it registers are known: a new metric
# is one file here (or a class in its category's file) with one ``@METRICS.register("name")``
for _module in pkgutil.iter_modules(__path__):
    importlib.import_module(f"{__name__}.{_module.name}")
