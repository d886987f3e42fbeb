"""Explainers registry: ``get_explainer(name, model, **settings)`` and ``list_explainers()``."""

import importlib
import pkgutil

from xrl.agents.model import Model
from xrl.explainers.base import EXPLAINERS, Explainer


def get_explainer(name: str, model: Model, **settings) -> Explainer:
    """An explainer of ``model`` registered as ``name``, with its settings."""
    return EXPLAINERS.get(name)(model, **settings)


def list_explainers() -> list[str]:
    return EXPLAINERS.names()


__all__ = ["EXPLAINERS", "Explainer", "get_explainer", "list_explainers"]

# every module of this package is imported, so the explainers it registers are known: a new
# method is one file here with one ``@EXPLAINERS.register("name")`` (CONTRIBUTING.md)
for _module in pkgutil.iter_modules(__path__):
    importlib.import_module(f"{__name__}.{_module.name}")
