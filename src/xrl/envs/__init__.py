"""Environment registry: ``make_env(name, **settings)`` and ``list_envs()``.

Every xrl env gives channels-first uint8 observations in the model's layout, records its name
and settings in ``env.unwrapped.xrl_spec`` (a dict), and, where ground truth exists, puts a
per-pixel label map in ``info["labels"]`` (see :mod:`xrl.envs.labels`).
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


#: extra -> the module whose presence means it is installed
_EXTRA_MODULES = {"vizdoom": "vizdoom", "highway": "highway_env", "mario": "gym_super_mario_bros"}


def make_env(name: str, **settings) -> gym.Env:
    """Build the environment registered as ``name`` with ``settings`` (recorded on the env);
    ``"gym:ID"`` is any registered Gymnasium env with image observations (:mod:`xrl.envs.gym_env`)."""
    if isinstance(name, str) and name.startswith("gym:"):
        from xrl.envs.gym_env import make_gym_env

        return make_gym_env(name[4:], **settings)
    env = ENVS.get(name)(**settings)
    # a builder may record its resolved settings (defaults filled in); they complete the record
    resolved = getattr(env.unwrapped, "xrl_spec", {}).get("settings", {})
    env.unwrapped.xrl_spec = {"name": name, "settings": {**settings, **resolved}}
    return env


def env_spec(env: gym.Env) -> dict:
    """The ``{"name", "settings"}`` an xrl env was made with."""
    spec = getattr(env.unwrapped, "xrl_spec", None)
    if spec is None:
        raise ValueError("this environment was not made by xrl.make_env; its settings are unknown")
    return spec


def list_envs() -> list[str]:
    return ENVS.names()


def lazy_builder(module: str, function: str, doc: str):
    """A builder that imports ``module`` (and the simulator it needs) only when an env is made,
    so the registry knows the name without importing the simulator. ``doc`` is its docstring
    (its first line is what ``xrl envs`` shows)."""

    def build(**settings) -> gym.Env:
        return getattr(importlib.import_module(module), function)(**settings)

    build.__doc__ = doc
    build.__qualname__ = build.__name__ = f"lazy:{module}.{function}"
    return build


__all__ = ["ENVS", "EXTRAS", "FAMILIES", "INFO_ONLY_SETTINGS", "make_env", "env_spec", "list_envs", "extra_installed"]
# Env modules register their names on import; each imports its simulator (ale-py, ViZDoom,
# highway-env, nes-py) only when an env is made. Red-Fetch-Green subclasses MiniGrid's env, so its
# module imports MiniGrid: it is registered here with a lazy builder instead.
ENVS.register("red-fetch-green")(
    lazy_builder(
        "xrl.envs.fetch",
        "make_red_fetch_green",
        "DIGR Red-Fetch-Green: 8×8 MiniGrid room, fetch green, avoid yellow/blue; RGB 64×64 or symbolic; ground truth.",
    )
)
FAMILIES["red-fetch-green"] = "grid"
from xrl.envs import (  # noqa: E402  (the game modules import the registry above)
    atari,  # noqa: E402,F401  (registers pong, breakout, ...)
    highway,  # noqa: E402,F401  (registers highway-fast)
    mario,  # noqa: E402,F401  (registers mario)
    vizdoom,  # noqa: E402,F401  (registers vizdoom-basic, vizdoom-defend-the-center)
)
