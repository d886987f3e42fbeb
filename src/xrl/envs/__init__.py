"""Environment registry: ``make_env(name, **settings)`` and ``list_envs()``.

Every xrl env gives channels-first uint8 observations in the model's layout, records its name
and settings in ``env.unwrapped.xrl_spec`` (a dict), and, where ground truth exists, puts a
per-pixel label map in ``info["labels"]`` (see :mod:`xrl.envs.labels`).
"""
from __future__ import annotations

import gymnasium as gym

from xrl.registry import Registry

ENVS: Registry = Registry("environment")

#: settings that add information (``info["labels"]``) without changing observations, actions or
#: dynamics: an agent trained without them runs with them unchanged (``collect`` allows them)
INFO_ONLY_SETTINGS = frozenset({"labels"})


def make_env(name: str, **settings) -> gym.Env:
    """Build the environment registered as ``name`` with ``settings`` (recorded on the env)."""
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


__all__ = ["ENVS", "INFO_ONLY_SETTINGS", "make_env", "env_spec", "list_envs"]
from xrl.envs import fetch  # noqa: E402,F401  (registers red-fetch-green)
from xrl.envs import atari  # noqa: E402,F401  (registers pong, breakout, ...)
