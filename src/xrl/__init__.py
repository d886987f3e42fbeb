"""xrl: saliency maps for deep RL agents that see images, computed fast and compared fairly.

Entry points::

    import xrl
    env = xrl.make_env("red-fetch-green")
    model = xrl.load_agent("red-fetch-green")            # a zoo name, an SB3 .zip or an xrl .pt
    explainer = xrl.get_explainer("greydanus", model)
    saliency = explainer.explain(states)                   # (B, H, W)
    xrl.get_metric("deletion")(model=model, states=states, saliency=saliency)
"""
__version__ = "0.1.0"


def _import_old_gym_quietly() -> None:
    """The ``mario`` extra installs the old ``gym`` 0.26, which prints a deprecation notice to
    stderr on import; Stable-Baselines3 imports it (only to detect it) on every start, so every
    xrl command would print it. Import it once here with that notice swallowed."""
    import contextlib
    import importlib.util
    import io
    import sys
    if "gym" in sys.modules or importlib.util.find_spec("gym") is None:
        return
    with contextlib.redirect_stderr(io.StringIO()):
        import gym  # noqa: F401


_import_old_gym_quietly()

from xrl.agents.model import Model, as_model
from xrl.envs import list_envs, make_env
from xrl.explainers import get_explainer, list_explainers
from xrl.metrics import get_metric, list_metrics
from xrl.agents.load import load_agent

__all__ = [
    "Model", "as_model", "make_env", "list_envs", "load_agent",
    "get_explainer", "list_explainers", "get_metric", "list_metrics", "__version__",
]
