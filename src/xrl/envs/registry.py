"""The environment registry and what each game module registers with it: ``ENVS`` (name ->
builder), ``FAMILIES`` and ``EXTRAS`` (name -> family, name -> optional extra), ``import_extra``
(import a simulator or say which extra to install) and ``lazy_builder``.

The game modules (``atari``, ``highway``, ``mario``, ``vizdoom``) import this module and register
their names on import; :mod:`xrl.envs` imports them, so ``from xrl.envs import ENVS`` lists every
env. Nothing here imports a game module.
"""

from __future__ import annotations

import importlib
import importlib.util
from types import ModuleType

import gymnasium as gym

from xrl.registry import Registry

ENVS: Registry = Registry("environment")

#: settings that add information (``info["labels"]``) without changing observations, actions or
#: dynamics: an agent trained without them runs with them unchanged (``collect`` allows them)
INFO_ONLY_SETTINGS = frozenset({"labels"})

#: env name -> its family: ``"grid"`` (MiniGrid worlds), ``"atari"``, ``"vizdoom"``, ``"highway"``,
#: ``"mario"``; training picks its defaults (architecture, rollout sizes) by family
FAMILIES: dict[str, str] = {}

#: env name -> the optional extra it needs (``pip install 'xrl[EXTRA]'``); envs not listed need none
EXTRAS: dict[str, str] = {}

#: extra -> the module whose presence means it is installed
_EXTRA_MODULES = {"vizdoom": "vizdoom", "highway": "highway_env", "mario": "gym_super_mario_bros"}


def import_extra(module: str, extra: str, env: str) -> ModuleType:
    """Import ``module`` for the env ``env``, or raise ``ImportError`` naming the extra to install."""
    try:
        return importlib.import_module(module)
    except ImportError as err:
        raise ImportError(
            f"environment {env!r} needs the optional extra {extra!r}: pip install 'xrl[{extra}]' "
            f"(importing {module} failed: {err})"
        ) from err


def extra_installed(name: str) -> bool | None:
    """Whether the extra of env ``name`` can be imported; ``None`` when it needs no extra."""
    extra = EXTRAS.get(name)
    if extra is None:
        return None
    return importlib.util.find_spec(_EXTRA_MODULES[extra]) is not None


def lazy_builder(module: str, function: str, doc: str):
    """A builder that imports ``module`` (and the simulator it needs) only when an env is made,
    so the registry knows the name without importing the simulator. ``doc`` is its docstring
    (its first line is what ``xrl envs`` shows)."""

    def build(**settings) -> gym.Env:
        return getattr(importlib.import_module(module), function)(**settings)

    build.__doc__ = doc
    build.__qualname__ = build.__name__ = f"lazy:{module}.{function}"
    return build
