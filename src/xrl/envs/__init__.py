"""Environments: ``make_env(name, **settings)`` and ``list_envs()``.

Every xrl env gives channels-first uint8 observations in the model's layout, records its name
and settings in ``env.unwrapped.xrl_spec`` (a dict), and, where ground truth exists, puts a
per-pixel label map in ``info["labels"]`` (see :mod:`xrl.envs.labels`). The registry itself
(``ENVS``, ``FAMILIES``, ``EXTRAS``) lives in :mod:`xrl.envs.registry`; importing this package
imports the game modules, which register their names there.
"""

from __future__ import annotations

import gymnasium as gym

# Env modules register their names on import; each imports its simulator (ale-py, ViZDoom,
# highway-env, nes-py) only when an env is made.
from xrl.envs import (
    atari,  # noqa: F401  (registers pong, breakout, ...)
    highway,  # noqa: F401  (registers highway-fast)
    mario,  # noqa: F401  (registers mario)
    vizdoom,  # noqa: F401  (registers vizdoom-basic, vizdoom-defend-the-center)
)
from xrl.envs.registry import (
    ENVS,
    EXTRAS,
    FAMILIES,
    INFO_ONLY_SETTINGS,
    extra_installed,
    import_extra,
    lazy_builder,
)

# Red-Fetch-Green subclasses MiniGrid's env, so its module imports MiniGrid: it is registered
# here with a lazy builder instead.
ENVS.register("red-fetch-green")(
    lazy_builder(
        "xrl.envs.fetch",
        "make_red_fetch_green",
        "DIGR Red-Fetch-Green: 8×8 MiniGrid room, fetch green, avoid yellow/blue; RGB 64×64 or symbolic; ground truth.",
    )
)
FAMILIES["red-fetch-green"] = "grid"


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


__all__ = [
    "ENVS",
    "EXTRAS",
    "FAMILIES",
    "INFO_ONLY_SETTINGS",
    "make_env",
    "env_spec",
    "list_envs",
    "extra_installed",
    "import_extra",
    "lazy_builder",
]
