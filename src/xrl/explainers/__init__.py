"""Explainers registry: ``get_explainer(name, model, **settings)`` and ``list_explainers()``."""

from xrl.agents.model import Model
from xrl.explainers.base import EXPLAINERS, Explainer


def get_explainer(name: str, model: Model, **settings) -> Explainer:
    """An explainer of ``model`` registered as ``name``, with its settings."""
    return EXPLAINERS.get(name)(model, **settings)


def list_explainers() -> list[str]:
    return EXPLAINERS.names()


__all__ = ["EXPLAINERS", "Explainer", "get_explainer", "list_explainers"]

from xrl.explainers import (  # noqa: E402,F401  (registers the explainers)  # noqa: E402,F401  (LIME, extremal perturbations)  # noqa: E402,F401  (gradient family)  # noqa: E402,F401  (occlusion, RISE, SARFA)  # noqa: E402,F401  (learned mask networks)
    attention,  # noqa: E402,F401  (FLS: the agent's own attention)
    extremal_perturbation,
    grad_cam,
    gradient,
    greydanus,
    guided_backprop,
    integrated_gradients,
    lime,
    normgrad,
    occlusion,
    random_map,
    rexl,  # noqa: E402,F401  (RExL: a trained masking agent)
    rise,
    sarfa,
    smoothgrad,
    stalder_explainer,
    visionmask,
)
