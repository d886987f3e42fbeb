"""Any registered Gymnasium env with image observations: ``make_env("gym:ID", **settings)``.

``ID`` is a Gymnasium id (``"CarRacing-v3"``, ``"MiniGrid-Empty-8x8-v0"``, ``"BreakoutNoFrameskip-v4"``,
or ``"module:ID"``, which Gymnasium imports first). ale-py and MiniGrid register their ids when
installed. The env is made with ``render_mode="rgb_array"`` (``env.render()`` is the raw frame) and
its observations become xrl's layout: uint8, channels first, frames stacked on channels, oldest
first. Every setting, defaults included, is recorded in ``env.unwrapped.xrl_spec["settings"]``.

The observation space, after ``wrappers``, must be a ``Box`` of uint8 images ``(H, W)``,
``(H, W, 1)`` or ``(H, W, 3)``; anything else is refused, naming what it is.

Settings (the preprocessing, applied in this order):

- ``wrappers``: names of observation wrappers applied first, without arguments, each a class of
  ``gymnasium.wrappers`` or ``minigrid.wrappers`` (for MiniGrid, whose observations are a
  ``Dict``: ``["minigrid.wrappers.RGBImgObsWrapper", "minigrid.wrappers.ImgObsWrapper"]``).
  Names only, imported from those installed packages; nothing else is imported.
- ``atari``: the Atari preprocessing of a ``NoFrameskip`` ALE id.
  ``"sb3"`` is Stable-Baselines3's own ``AtariWrapper`` (``atari_kwargs`` are its keyword
  arguments: ``noop_max``, ``frame_skip``, ``screen_size``, ``terminal_on_life_loss``,
  ``clip_reward``; its defaults otherwise), which already resizes to 84×84 gray.
  ``"cleanrl"`` is the chain of CleanRL's Atari scripts (``dqn_atari.py``, ``ppo_atari.py``,
  ``c51_atari.py``): ``NoopResetEnv(30)``, ``MaxAndSkipEnv(4)``, ``EpisodicLifeEnv``,
  ``FireResetEnv`` when the game has FIRE, ``ClipRewardEnv`` (Stable-Baselines3's classes, of
  which CleanRL's ``cleanrl_utils.atari_wrappers`` are copies); the scripts then resize, gray and
  stack: give ``resize=84, gray=True, frame_stack=4``. Default ``None`` (none).
- ``resize``: ``H`` or ``[H, W]``: OpenCV ``INTER_AREA`` resize of the RGB frame (what gymnasium's
  ``ResizeObservation`` does). Default ``None`` (kept).
- ``gray``: OpenCV ``RGB2GRAY`` (what gymnasium 0.29's ``GrayScaleObservation``, which CleanRL
  uses, computes; gymnasium 1.x's weights differ by up to one level). Default False.
- ``frame_stack``: frames stacked on channels (default 1). ``frame_stack_padding``: ``"reset"``
  (the first observation repeated, gymnasium's ``FrameStackObservation`` and the old
  ``FrameStack`` CleanRL uses) or ``"zero"`` (SB3's ``VecFrameStack``). Default ``"reset"``.
- any other keyword is passed to ``gym.make`` (and recorded).

Ground truth: none is added. An env (or one of its ``wrappers``) that puts a per-pixel label map
of the processed observation's size in ``info["labels"]`` has it passed through.

Example (MiniGrid installs with xrl)::

    >>> import xrl
    >>> env = xrl.make_env("gym:MiniGrid-Empty-5x5-v0",
    ...     wrappers=["minigrid.wrappers.RGBImgObsWrapper", "minigrid.wrappers.ImgObsWrapper"])
    >>> env.reset(seed=0)[0].shape
    (3, 40, 40)
"""

from __future__ import annotations

import importlib
import importlib.util
import re
from collections.abc import Sequence
from typing import Any

import cv2
import gymnasium as gym
import numpy as np
from gymnasium.wrappers import FrameStackObservation

from xrl.errors import SettingTypeError

_WRAPPER_PACKAGES = ("gymnasium.wrappers", "minigrid.wrappers")
_ATARI_STYLES = ("sb3", "cleanrl")
_SB3_ATARI_KWARGS = ("noop_max", "frame_skip", "screen_size", "terminal_on_life_loss", "clip_reward")


def make_gym_env(
    env_id: str,
    *,
    wrappers: Sequence[str] = (),
    atari: str | None = None,
    atari_kwargs: dict | None = None,
    resize: int | Sequence[int] | None = None,
    gray: bool = False,
    frame_stack: int = 1,
    frame_stack_padding: str = "reset",
    **make_kwargs: Any,
) -> gym.Env:
    """The Gymnasium env ``env_id`` with the preprocessing named (module docstring)."""
    if not isinstance(env_id, str) or not env_id:
        raise ValueError(f"gym:ID needs a Gymnasium id after 'gym:', got {env_id!r}")
    if atari is not None and atari not in _ATARI_STYLES:
        raise ValueError(f"atari must be one of {', '.join(map(repr, _ATARI_STYLES))} or None, got {atari!r}")
    if atari_kwargs and atari != "sb3":
        raise ValueError("atari_kwargs are the keyword arguments of SB3's AtariWrapper: give them with atari='sb3'")
    unknown = sorted(set(atari_kwargs or {}) - set(_SB3_ATARI_KWARGS))
    if unknown:
        raise ValueError(f"atari_kwargs {unknown}: SB3's AtariWrapper takes {', '.join(_SB3_ATARI_KWARGS)}")
    if not isinstance(gray, bool):
        raise SettingTypeError(f"gray must be a bool, got {gray!r}")
    if isinstance(frame_stack, bool) or not isinstance(frame_stack, int) or frame_stack < 1:
        raise ValueError(f"frame_stack must be an int >= 1, got {frame_stack!r}")
    if frame_stack_padding not in ("reset", "zero"):
        raise ValueError(f"frame_stack_padding must be 'reset' or 'zero', got {frame_stack_padding!r}")
    size = _size(resize)
    if isinstance(wrappers, str):
        wrappers = [wrappers]
    classes = [_wrapper_class(w) for w in wrappers]
    _register(env_id)
    try:
        env = gym.make(env_id, render_mode="rgb_array", **make_kwargs)
    except gym.error.Error as err:
        raise ValueError(
            f"gym:{env_id}: {err} (a registered Gymnasium id is expected; 'module:ID' imports the module "
            "that registers it first)"
        ) from None
    for cls in classes:
        env = cls(env)
    if atari is not None and not hasattr(env.unwrapped, "get_action_meanings"):
        raise ValueError(f"atari={atari!r} applies to ALE games (NoFrameskip ids); gym:{env_id} is not one")
    if atari == "sb3":
        from xrl.compat import quiet_old_gym

        quiet_old_gym()
        from stable_baselines3.common.atari_wrappers import AtariWrapper

        env = AtariWrapper(env, **(atari_kwargs or {}))
    elif atari == "cleanrl":
        env = _cleanrl_atari(env)
    _check_images(env, env_id)
    env = _Images(env, size, gray)
    if frame_stack > 1:
        channels = env.observation_space.shape[0]
        env = FrameStackObservation(env, frame_stack, padding_type=frame_stack_padding)
        env = _MergeStack(env, channels)
    env.unwrapped.xrl_spec = {
        "name": f"gym:{env_id}",
        "settings": {
            "wrappers": list(wrappers),
            "atari": atari,
            "atari_kwargs": dict(atari_kwargs or {}),
            "resize": list(size) if size else None,
            "gray": gray,
            "frame_stack": frame_stack,
            "frame_stack_padding": frame_stack_padding,
            **make_kwargs,
        },
    }
    return env


def _size(resize) -> tuple[int, int] | None:
    if resize is None:
        return None
    values = [resize] * 2 if isinstance(resize, int) and not isinstance(resize, bool) else resize
    try:
        h, w = (int(v) for v in values)
        if any(isinstance(v, bool) or int(v) != v for v in values) or h < 1 or w < 1:
            raise ValueError
    except (TypeError, ValueError):
        raise ValueError(f"resize must be H or [H, W] positive integers, got {resize!r}") from None
    return h, w


def _wrapper_class(name: str) -> type:
    match = re.fullmatch(r"([\w.]+)\.(\w+)", str(name))
    if not match or match.group(1) not in _WRAPPER_PACKAGES:
        raise ValueError(
            f"wrappers: {name!r} is not allowed; expected a class of {' or '.join(_WRAPPER_PACKAGES)} "
            "by its full name (e.g. minigrid.wrappers.RGBImgObsWrapper)"
        )
    try:
        cls = getattr(importlib.import_module(match.group(1)), match.group(2))
    except (ImportError, AttributeError):
        raise ValueError(f"wrappers: {name!r} does not exist in this install") from None
    if not (isinstance(cls, type) and issubclass(cls, gym.Wrapper)):
        raise ValueError(f"wrappers: {name!r} is not a gymnasium Wrapper class")
    return cls


def _register(env_id: str) -> None:
    """Let ale-py and MiniGrid register their ids (when installed and the id is not known yet)."""
    if ":" in env_id or env_id in gym.registry:
        return
    for module in ("ale_py", "minigrid"):
        if importlib.util.find_spec(module) is None:
            continue
        mod = importlib.import_module(module)
        if module == "ale_py":
            gym.register_envs(mod)
        if env_id in gym.registry:
            return


def _cleanrl_atari(env: gym.Env) -> gym.Env:
    from xrl.compat import quiet_old_gym

    quiet_old_gym()
    from stable_baselines3.common.atari_wrappers import (
        ClipRewardEnv,
        EpisodicLifeEnv,
        FireResetEnv,
        MaxAndSkipEnv,
        NoopResetEnv,
    )

    env = NoopResetEnv(env, noop_max=30)
    env = MaxAndSkipEnv(env, skip=4)
    env = EpisodicLifeEnv(env)
    if "FIRE" in env.unwrapped.get_action_meanings():
        env = FireResetEnv(env)
    return ClipRewardEnv(env)


def _check_images(env: gym.Env, env_id: str) -> None:
    space = env.observation_space
    ok = (
        isinstance(space, gym.spaces.Box)
        and space.dtype == np.uint8
        and (len(space.shape) == 2 or (len(space.shape) == 3 and space.shape[-1] in (1, 3)))
    )
    if not ok:
        hint = (
            "; MiniGrid observes a Dict: add wrappers=['minigrid.wrappers.RGBImgObsWrapper', "
            "'minigrid.wrappers.ImgObsWrapper']"
            if isinstance(space, gym.spaces.Dict)
            else ""
        )
        what = space if isinstance(space, gym.spaces.Box) else f"a {type(space).__name__} space"
        raise ValueError(
            f"gym:{env_id} observes {what}; expected a Box of uint8 images (H, W), (H, W, 1) or (H, W, 3){hint}"
        )


class _Images(gym.ObservationWrapper):
    """Resize (INTER_AREA), gray (RGB2GRAY) and put channels first: ``(C, H, W)`` uint8."""

    def __init__(self, env: gym.Env, size: tuple[int, int] | None, gray: bool) -> None:
        super().__init__(env)
        shape = env.observation_space.shape
        h, w = size or shape[:2]
        channels = 1 if gray or len(shape) == 2 else shape[2]
        self.size, self.gray = size, gray
        self.observation_space = gym.spaces.Box(0, 255, (channels, h, w), dtype=np.uint8)

    def observation(self, observation):
        obs = np.asarray(observation)
        if self.size is not None:
            obs = cv2.resize(obs, self.size[::-1], interpolation=cv2.INTER_AREA)
        if self.gray and obs.ndim == 3 and obs.shape[-1] == 3:
            obs = cv2.cvtColor(obs, cv2.COLOR_RGB2GRAY)
        if obs.ndim == 3 and obs.shape[-1] == 1:
            obs = obs[..., 0]
        return obs[None] if obs.ndim == 2 else np.ascontiguousarray(obs.transpose(2, 0, 1))


class _MergeStack(gym.ObservationWrapper):
    """``(S, C, H, W)`` stacks as ``(S * C, H, W)``, oldest frame first."""

    def __init__(self, env: gym.Env, channels: int) -> None:
        super().__init__(env)
        s, c, h, w = env.observation_space.shape
        self.observation_space = gym.spaces.Box(0, 255, (s * c, h, w), dtype=np.uint8)

    def observation(self, observation):
        obs = np.asarray(observation)
        return obs.reshape(-1, *obs.shape[2:])
