"""Red-Fetch-Green (DIGR paper, section 3 and 4.4): a MiniGrid room where the red agent must
pick up the green object while a yellow and a blue object distract it.

The room is 8×8 cells including the walls. Actions are reduced to ``left``, ``right``,
``forward``, ``pickup``. Picking up the green object ends the episode with reward
``1 − 0.9·step/max_steps``; picking up a distractor ends it with reward 0.

Observations are fully observed: ``obs_type="rgb"`` gives the rendered room as a ``(3, 8·t, 8·t)``
uint8 image (``t = tile_size``, 8 by default → 64×64); ``obs_type="symbolic"`` gives MiniGrid's
``(object, colour, state)`` encoding of every cell as ``(3, 8, 8)`` uint8. Every ``reset`` and
``step`` puts the ground-truth label map in ``info["labels"]`` at observation resolution:
important = the agent's and the green object's cells, unimportant = empty floor, excluded = walls
and distractors (their role is uncertain, so DIGR leaves them out). ``labels="objects"`` (an
info-only setting: agents trained without it take it) marks as important only the pixels the
agent and the green object are drawn on, and leaves out the floor around them inside their
cells (neither the object nor certainly irrelevant); empty cells stay unimportant. RGB only.

Example::

    env = xrl.make_env("red-fetch-green")
    obs, info = env.reset(seed=0)       # obs (3, 64, 64) uint8, info["labels"] (64, 64) int8
"""

from __future__ import annotations

from typing import Any

import numpy as np
from gymnasium import spaces
from minigrid.core.constants import COLOR_TO_IDX, OBJECT_TO_IDX
from minigrid.core.grid import Grid
from minigrid.core.mission import MissionSpace
from minigrid.core.world_object import Ball, Key
from minigrid.minigrid_env import MiniGridEnv

from xrl.envs.labels import EXCLUDED, IMPORTANT, UNIMPORTANT

ACTION_NAMES = ("left", "right", "forward", "pickup")
_OBJECTS = {"ball": Ball, "key": Key}


class RedFetchGreenEnv(MiniGridEnv):
    """See the module docstring. All settings are keyword arguments and recorded by make_env."""

    metadata = {"render_modes": ["rgb_array"], "render_fps": 10}
    # Class-level default: an env pickled in a training checkpoint before the `labels` setting
    # existed has no instance attribute and resumes with the old behaviour (cells).
    label_mode = "cells"

    def __init__(
        self,
        *,
        size: int = 8,
        obs_type: str = "rgb",
        tile_size: int = 8,
        object_type: str = "ball",
        max_steps: int = 100,
        render_tile_size: int | None = None,
        labels: str = "cells",
    ) -> None:
        if labels not in ("cells", "objects"):
            raise ValueError(
                f"labels must be 'cells' (whole cells of the agent and the green object) or "
                f"'objects' (only the pixels they are drawn on), got {labels!r}"
            )
        if labels == "objects" and obs_type != "rgb":
            raise ValueError("labels='objects' marks drawn pixels: it needs obs_type='rgb'")
        if obs_type not in ("rgb", "symbolic"):
            raise ValueError(f"obs_type must be 'rgb' or 'symbolic', got {obs_type!r}")
        if object_type not in _OBJECTS:
            raise ValueError(f"object_type must be one of {sorted(_OBJECTS)}, got {object_type!r}")
        if isinstance(size, bool) or not isinstance(size, int) or size < 5:
            raise ValueError(f"size must be at least 5 (walls + room for 4 entities) and an integer, got {size!r}")
        for name, value in (
            ("tile_size", tile_size),
            ("max_steps", max_steps),
            ("render_tile_size", render_tile_size if render_tile_size is not None else 1),
        ):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        self.obs_type = obs_type
        self.object_type = object_type
        self.label_mode = labels
        self.render_tile_size = render_tile_size or tile_size
        super().__init__(
            mission_space=MissionSpace(mission_func=lambda: "pick up the green object"),
            width=size,
            height=size,
            max_steps=max_steps,
            see_through_walls=True,
            render_mode="rgb_array",
            tile_size=tile_size,
            highlight=False,
        )
        self.action_space = spaces.Discrete(len(ACTION_NAMES))
        side = size * tile_size if obs_type == "rgb" else size
        self.observation_space = spaces.Box(0, 255, (3, side, side), dtype=np.uint8)
        self.action_names = ACTION_NAMES

    def _gen_grid(self, width: int, height: int) -> None:
        self.grid = Grid(width, height)
        self.grid.wall_rect(0, 0, width, height)
        cls = _OBJECTS[self.object_type]
        self.target = cls("green")
        self.place_obj(self.target)
        for color in ("yellow", "blue"):
            self.place_obj(cls(color))
        self.place_agent()

    def reset(self, *, seed: int | None = None, options: dict | None = None) -> tuple[np.ndarray, dict]:
        super().reset(seed=seed)
        return self._observation(), {"labels": self.labels()}

    def step(self, action: Any) -> tuple[np.ndarray, float, bool, bool, dict]:
        if not self.action_space.contains(action):
            raise ValueError(f"action must be an int in [0, {self.action_space.n}), got {action!r}")
        reward, terminated = 0.0, False
        _, _, _, truncated, _ = super().step(int(action))
        if self.carrying is not None:  # picked something up: green wins, anything else loses
            terminated = True
            reward = float(self._reward()) if self.carrying is self.target else 0.0
        return self._observation(), reward, terminated, truncated, {"labels": self.labels()}

    def gen_obs(self) -> dict:
        """MiniGrid's partial egocentric view, which ``MiniGridEnv.step`` and ``reset`` compute and
        this env does not return (its observation is :meth:`_observation`): not computed (it was
        60% of a step's time)."""
        return {}

    def _observation(self) -> np.ndarray:
        if self.obs_type == "symbolic":
            grid = self.grid.encode()  # (W, H, 3): x first
            x, y = self.agent_pos
            grid[x, y] = (OBJECT_TO_IDX["agent"], COLOR_TO_IDX["red"], self.agent_dir)
            return np.ascontiguousarray(grid.transpose(2, 1, 0))  # (3, H, W)
        return np.ascontiguousarray(self._frame(self.tile_size).transpose(2, 0, 1))

    def _frame(self, tile_size: int) -> np.ndarray:
        """MiniGrid's full view, ``get_frame(False, tile_size)`` (``grid.render`` without highlight),
        in a tenth of its time: the room without the agent is drawn once while the grid's encoding
        stays the same (objects move only when picked up), and each frame is a copy of it with the
        agent's tile drawn in. The same pixels, as every tile is drawn on its own
        (``tests/test_envs_fetch.py`` compares them along random episodes)."""
        cache = self.__dict__.setdefault("_rooms", {})  # tile size -> (grid encoding, room image)
        key = self.grid.encode().tobytes()
        if tile_size not in cache or cache[tile_size][0] != key:
            cache[tile_size] = (key, self.grid.render(tile_size, (-1, -1), None))
        frame = cache[tile_size][1].copy()
        x, y = self.agent_pos
        tile = Grid.render_tile(self.grid.get(x, y), agent_dir=self.agent_dir, highlight=False, tile_size=tile_size)
        frame[y * tile_size : (y + 1) * tile_size, x * tile_size : (x + 1) * tile_size] = tile
        return frame

    def render(self) -> np.ndarray:
        """The room as an RGB image ``(h, w, 3)`` uint8 for display."""
        return self._frame(self.render_tile_size)

    def labels(self) -> np.ndarray:
        """Ground truth ``(H, W)`` int8 at observation resolution (see module docstring)."""
        cells = np.full((self.height, self.width), EXCLUDED, dtype=np.int8)  # (y, x)
        for x in range(self.width):
            for y in range(self.height):
                obj = self.grid.get(x, y)
                if obj is None:
                    cells[y, x] = UNIMPORTANT
                elif obj is self.target:
                    cells[y, x] = IMPORTANT
        x, y = self.agent_pos
        cells[y, x] = IMPORTANT
        if self.obs_type == "symbolic":
            return cells
        t = self.tile_size
        pixels = np.repeat(np.repeat(cells, t, axis=0), t, axis=1)
        if self.label_mode == "objects":  # important: the pixels that differ from an empty cell
            frame = self._frame(t)
            empty = Grid.render_tile(None, tile_size=t).astype(frame.dtype)  # as the frame stores it
            for y, x in zip(*np.nonzero(cells == IMPORTANT)):
                drawn = (frame[y * t : (y + 1) * t, x * t : (x + 1) * t] != empty).any(-1)
                pixels[y * t : (y + 1) * t, x * t : (x + 1) * t] = np.where(drawn, IMPORTANT, EXCLUDED)
        return pixels


def make_red_fetch_green(**settings) -> RedFetchGreenEnv:
    """The builder registered as ``red-fetch-green`` (lazily, in :mod:`xrl.envs`, so that MiniGrid
    is imported by the first env, not by ``import xrl``)."""
    env = RedFetchGreenEnv(**settings)
    resolved = {
        "size": env.width,
        "obs_type": env.obs_type,
        "tile_size": env.tile_size,
        "object_type": env.object_type,
        "max_steps": env.max_steps,
        "render_tile_size": env.render_tile_size,
    }
    if env.label_mode != "cells":  # info-only: recorded only when asked for
        resolved["labels"] = env.label_mode
    env.xrl_spec = {"name": "red-fetch-green", "settings": resolved}
    return env
