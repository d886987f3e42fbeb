"""xrl: saliency maps for deep RL agents that see images, computed fast and compared fairly.

Entry points::

    import xrl
    env = xrl.make_env("red-fetch-green")
    model = xrl.load_agent("red-fetch-green")            # a zoo name, an SB3 .zip or an xrl .pt
    explainer = xrl.get_explainer("greydanus", model)
    saliency = explainer.explain(states)                   # (B, H, W)
    xrl.get_metric("deletion")(model=model, states=states, saliency=saliency)
"""

from xrl._version import __version__
from xrl.agents.model import Model, as_model
from xrl.envs import list_envs, make_env
from xrl.explainers import get_explainer, list_explainers
from xrl.metrics import get_metric, list_metrics

__all__ = [
    "Model",
    "as_model",
    "make_env",
    "list_envs",
    "load_agent",
    "load",
    "get_explainer",
    "list_explainers",
    "get_metric",
    "list_metrics",
    "__version__",
]

#: public names whose modules import heavy dependencies (Stable-Baselines3): imported on first use
_LAZY = {"load_agent": "xrl.agents.load", "load": "xrl.agents.load"}


def __getattr__(name: str):
    """PEP 562: ``xrl.load_agent`` imports :mod:`xrl.agents.load` (and Stable-Baselines3) only
    when first used, so ``import xrl`` stays free of heavy dependencies (docs/architecture.md)."""
    if name in _LAZY:
        import importlib

        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'xrl' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *_LAZY})
