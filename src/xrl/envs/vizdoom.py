"""ViZDoom scenarios shipped with the ``vizdoom`` package (optional extra ``vizdoom``), through
ViZDoom's own Gymnasium env (``vizdoom.gymnasium_wrapper``), with xrl's image layout.

``vizdoom-basic``: a Cacodemon on the opposite wall of a square room; actions NOOP, ATTACK,
MOVE_RIGHT, MOVE_LEFT; +101 for the kill (which ends the episode), −1 per tic, −5 per missed shot;
300 tics (75 agent steps) at most. ``vizdoom-defend-the-center``: the player stands in the centre
of a round room and turns to shoot the monsters coming at it (NOOP, ATTACK, TURN_RIGHT,
TURN_LEFT); +1 per kill, −1 on death, which ends the episode (2100 tics at most).

Observations ``(frame_stack, 84, 84)`` uint8, oldest first, from the RGB screen (rendered at
``resolution``, default 160×120) by :mod:`xrl.envs.screens` (OpenCV gray, ``INTER_AREA``); the
stack is filled with the first screen at reset. Each action is held for ``frame_skip`` tics
(ViZDoom's ``make_action(action, tics)``; rewards summed). ``env.render()`` gives the RGB screen
``(H, W, 3)``. An episode that hits the scenario's timeout is *truncated*, not terminated (ViZDoom
reports both). After the last step ViZDoom has no screen; the last one is repeated.

``labels=True`` turns on ViZDoom's labels buffer (which object each screen pixel shows, drawn by
the engine, so it is exact) and puts ``info["labels"]`` (84×84 int8): monsters on the newest screen
are important; a 1-pixel ring around them, the other labelled objects (the player's weapon,
bullet puffs, blood) and the monsters of the older frames of the stack are excluded; the rest
(walls, floor, ceiling) is unimportant.

Seeding: ``reset(seed=s)`` seeds the game through ViZDoom's wrapper (monster placement in
``basic``), so seeded rollouts repeat exactly.
"""

from __future__ import annotations

import os
import tempfile
from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium.wrappers import FrameStackObservation

from xrl.envs import screens
from xrl.envs.registry import ENVS, EXTRAS, FAMILIES, import_extra
from xrl.errors import SettingTypeError

SCENARIOS = {"vizdoom-basic": "basic.cfg", "vizdoom-defend-the-center": "defend_the_center.cfg"}
RESOLUTIONS = ("160x120", "320x240", "640x480")
IMPORTANT_CATEGORIES = ("Monster",)


class DoomScreen(gym.Wrapper):
    """ViZDoom's Gymnasium env (dict observations) → one gray ``(84, 84)`` uint8 screen; RGB
    ``render()``; timeouts as truncations; ``info["labels"]`` when the labels buffer is on."""

    def __init__(self, env: gym.Env, *, labels: bool, frame_stack: int) -> None:
        super().__init__(env)
        self.observation_space = gym.spaces.Box(0, 255, (screens.SCREEN_SIZE,) * 2, dtype=np.uint8)
        self.labels, self.frame_stack = labels, frame_stack
        self.screen: np.ndarray | None = None
        self.history: list[np.ndarray] = []  # monster masks of the older screens, newest first
        self.last_labels: np.ndarray | None = None

    def _observe(self, fresh: bool) -> tuple[np.ndarray, dict]:
        state = self.env.unwrapped.state
        if state is not None:
            self.screen = np.array(state.screen_buffer, copy=True)  # (H, W, 3)
        info: dict[str, Any] = {}
        if self.labels:
            if state is not None:
                info["labels"] = self.last_labels = self._labels(state, fresh)
            else:  # after the last step: the last screen and its labels
                info["labels"] = self.last_labels
        assert self.screen is not None  # reset() observes the first screen
        return screens.gray(self.screen), info

    def _labels(self, state, fresh: bool) -> np.ndarray:
        buffer = state.labels_buffer  # (H, W) uint8: each labelled object's value
        important = np.zeros(buffer.shape, dtype=bool)
        uncertain = np.zeros(buffer.shape, dtype=bool)
        for label in state.labels:
            mask = buffer == label.value
            if label.object_category in IMPORTANT_CATEGORIES:
                important |= mask
            else:
                uncertain |= mask
        if fresh:
            self.history = []
        labels = screens.object_labels(important, uncertain, self.history, self.observation_space.shape)
        self.history = ([important] + self.history)[: max(self.frame_stack - 1, 0)]
        return labels

    def reset(self, **kwargs):
        _, info = self.env.reset(**kwargs)
        obs, extra = self._observe(fresh=True)
        return obs, {**info, **extra}

    def step(self, action):
        if not self.action_space.contains(action):
            raise ValueError(f"action must be an int in [0, {self.action_space.n}), got {action!r}")
        _, reward, terminated, truncated, info = self.env.step(int(action))
        obs, extra = self._observe(fresh=False)
        # ViZDoom marks a timeout as finished *and* timed out; Gymnasium wants truncation only
        return obs, float(reward), bool(terminated and not truncated), bool(truncated), {**info, **extra}

    def render(self) -> np.ndarray | None:
        """The current RGB screen ``(H, W, 3)`` uint8 (None before the first reset)."""
        return self.screen

    def __getstate__(self):
        # ViZDoom pickles its constructor arguments only: the copy would be a new, un-reset game
        # (resumed training would step it and fail), so refuse; callers then start new episodes
        raise TypeError("a running ViZDoom game cannot be pickled; make a new env instead")


def make_vizdoom(
    name: str, *, frame_stack: int = 4, frame_skip: int = 4, resolution: str = "160x120", labels: bool = False
) -> gym.Env:
    """Build the ViZDoom scenario ``name`` (module docstring); settings are recorded by make_env."""
    vzd = import_extra("vizdoom", "vizdoom", name)
    import_extra("vizdoom.gymnasium_wrapper.gymnasium_env_defns", "vizdoom", name)
    from vizdoom.gymnasium_wrapper.gymnasium_env_defns import VizdoomScenarioEnv

    for key, value in (("frame_stack", frame_stack), ("frame_skip", frame_skip)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{key} must be an int >= 1, got {value!r}")
    if resolution not in RESOLUTIONS:
        raise ValueError(f"resolution must be one of {RESOLUTIONS}, got {resolution!r}")
    if not isinstance(labels, bool):
        raise SettingTypeError(f"labels must be a bool, got {labels!r}")
    env = VizdoomScenarioEnv(
        SCENARIOS[name],
        frame_skip=frame_skip,
        max_buttons_pressed=1,
        render_mode="rgb_array",
        screen_resolution=getattr(vzd.ScreenResolution, f"RES_{resolution.upper()}"),
        labels_buffer_enabled=labels,
        # ZDoom writes its engine settings to ./_vizdoom.ini by default: keep users' folders clean
        doom_config_path=os.path.join(tempfile.gettempdir(), "xrl_vizdoom.ini"),
    )
    buttons = [b.name for b in env.game.get_available_buttons()]
    env.unwrapped.action_names = tuple(
        "+".join(b for b, pressed in zip(buttons, combo) if pressed) or "NOOP" for combo in env.button_map
    )
    env = DoomScreen(env, labels=labels, frame_stack=frame_stack)
    env = FrameStackObservation(env, frame_stack, padding_type="reset")  # (S, 84, 84)
    env.unwrapped.xrl_spec = {
        "name": name,
        "settings": {"frame_stack": frame_stack, "frame_skip": frame_skip, "resolution": resolution, "labels": labels},
    }
    return env


def _register(name: str, doc: str) -> None:
    def build(**settings) -> gym.Env:
        return make_vizdoom(name, **settings)

    build.__doc__ = doc
    ENVS.register(name)(build)
    EXTRAS[name] = FAMILIES[name] = "vizdoom"


_register(
    "vizdoom-basic",
    "ViZDoom basic: shoot the Cacodemon (extra vizdoom); 84×84 gray, 4-frame stack, "
    "frame skip 4; settings: frame_stack, frame_skip, resolution, labels (monster pixels)",
)
_register(
    "vizdoom-defend-the-center",
    "ViZDoom defend_the_center: turn and shoot the monsters (extra vizdoom); "
    "84×84 gray, 4-frame stack, frame skip 4; settings: frame_stack, frame_skip, resolution, labels",
)
