"""Explainers registry: ``get_explainer(name, model, **settings)`` and ``list_explainers()``."""
from xrl.agents.model import Model
from xrl.explainers.base import EXPLAINERS, Explainer


def get_explainer(name: str, model: Model, **settings) -> Explainer:
    """An explainer of ``model`` registered as ``name``, with its settings."""
    return EXPLAINERS.get(name)(model, **settings)


def list_explainers() -> list[str]:
    return EXPLAINERS.names()


__all__ = ["EXPLAINERS", "Explainer", "get_explainer", "list_explainers"]

from xrl.explainers import gradient, greydanus, random_map  # noqa: E402,F401  (registers the explainers)
from xrl.explainers import extremal_perturbation, lime  # noqa: E402,F401  (LIME, extremal perturbations)
from xrl.explainers import grad_cam, guided_backprop, integrated_gradients, normgrad, smoothgrad  # noqa: E402,F401  (gradient family)
from xrl.explainers import occlusion, rise, sarfa  # noqa: E402,F401  (occlusion, RISE, SARFA)
from xrl.explainers import attention  # noqa: E402,F401  (FLS: the agent's own attention)
from xrl.explainers import stalder_explainer, visionmask  # noqa: E402,F401  (learned mask networks)
from xrl.explainers import rexl  # noqa: E402,F401  (RExL: a trained masking agent)
