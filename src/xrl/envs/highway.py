"""highway-env's ``highway-fast-v0`` with image observations (optional extra ``highway``).

The observation is highway-env's own ``GrayscaleObservation`` in the configuration its authors
use for image-based driving agents (their SB3 DQN-CNN example): the road drawn around the ego
car, ``128`` wide × ``64`` high, ``scaling=1.75`` pixels per metre, RGB weighted by
``(0.2989, 0.5870, 0.1140)``, the last 4 frames stacked, ``policy_frequency=2`` decisions per
simulated second. Actions are highway-env's ``DiscreteMetaAction`` (LANE_LEFT, IDLE, LANE_RIGHT,
FASTER, SLOWER); rewards are highway-env's (speed, right lane, collision), in [0, 1] per step.

Layout: highway-env gives ``(stack, W, H)`` (x first); xrl transposes it to ``(stack, H, W)`` =
``(4, 64, 128)`` uint8, channels first, oldest first, so rows are across the road and columns along
it, as on screen. At reset the stack holds zeros and the first frame (highway-env's own padding).
``env.render()`` draws the same view in colour at twice the size, ``(128, 256, 3)`` uint8, so a
saliency map overlays the picture the agent saw.

``labels=True`` puts ``info["labels"]`` (``(H, W)`` int8, :mod:`xrl.envs.labels`) from the
simulator: the pixels where cars are drawn on the newest frame (the frame minus the same view
redrawn by highway-env with the road alone, so exact) are important; a
1-pixel ring around them, the cars of the older frames and the lane markings (drawn white) are
excluded; the rest of the road is unimportant.

Episodes end (terminated) on a crash and are truncated after ``duration`` = 30 s (60 steps).
Seeding: ``reset(seed=s)`` seeds highway-env's traffic, so seeded rollouts repeat exactly.
"""

from __future__ import annotations

import gymnasium as gym
import numpy as np

from xrl.envs import screens
from xrl.envs.labels import EXCLUDED, IMPORTANT, LabelsInInfo
from xrl.envs.registry import ENVS, EXTRAS, FAMILIES, import_extra
from xrl.errors import SettingTypeError

NAME = "highway-fast"
GRAY_WEIGHTS = (0.2989, 0.5870, 0.1140)
RENDER_ZOOM = 2
LANE_MARKING = 254  # gray value of the white lane markings in the observation


def vehicle_mask(env, newest: np.ndarray) -> np.ndarray:
    """Pixels ``(H, W)`` of the newest observation frame where cars are drawn: the observation
    viewer (same window, as last drawn) redraws the road alone, and every pixel that differs from
    the observation is a car. Leaves the viewer's surface holding the bare road (the next
    observation redraws all of it)."""
    from highway_env.road.graphics import RoadGraphics

    viewer = env.observation_type.viewer
    RoadGraphics.display(env.road, viewer.sim_surface)
    road = np.dot(viewer.get_image()[..., :3], GRAY_WEIGHTS).clip(0, 255).astype(np.uint8)  # (H, W)
    return road != newest


class VehicleLabels(LabelsInInfo):
    """Adds ``info["labels"]`` (module docstring) after every ``reset`` and ``step``."""

    def __init__(self, env: gym.Env, *, frame_stack: int) -> None:
        super().__init__(env)
        self.frame_stack = frame_stack
        self.history: list[np.ndarray] = []

    def _labels(self, obs: np.ndarray, fresh: bool) -> np.ndarray:
        size = obs.shape[1:]
        now = vehicle_mask(self.env.unwrapped, obs[-1])
        if fresh:
            self.history = []
        # the masks are at observation resolution already: footprint() keeps them as they are
        labels = screens.object_labels(now, np.zeros(size, bool), self.history, size)
        labels[(obs[-1] == LANE_MARKING) & (labels != IMPORTANT)] = EXCLUDED
        self.history = ([now] + self.history)[: max(self.frame_stack - 1, 0)]
        return labels


class ChannelsFirst(gym.ObservationWrapper, gym.utils.RecordConstructorArgs):
    """highway-env's ``(stack, W, H)`` image stack → ``(stack, H, W)`` (a copy)."""

    def __init__(self, env: gym.Env) -> None:
        gym.utils.RecordConstructorArgs.__init__(self)
        gym.ObservationWrapper.__init__(self, env)
        s, w, h = env.observation_space.shape
        self.observation_space = gym.spaces.Box(0, 255, (s, h, w), dtype=np.uint8)

    def observation(self, observation: np.ndarray) -> np.ndarray:
        return np.ascontiguousarray(np.swapaxes(observation, 1, 2))


@ENVS.register(NAME)
def make_highway(
    *,
    frame_stack: int = 4,
    width: int = 128,
    height: int = 64,
    scaling: float = 1.75,
    policy_frequency: int = 2,
    duration: int = 30,
    labels: bool = False,
) -> gym.Env:
    """highway-fast (extra highway): grayscale 64×128 road view, 4-frame stack, 5 meta-actions; settings: frame_stack, width, height, scaling, policy_frequency, duration, labels (car pixels)"""
    import_extra("highway_env", "highway", NAME)
    for key, value in (
        ("frame_stack", frame_stack),
        ("width", width),
        ("height", height),
        ("policy_frequency", policy_frequency),
        ("duration", duration),
    ):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{key} must be an int >= 1, got {value!r}")
    if isinstance(scaling, bool) or not isinstance(scaling, (int, float)) or scaling <= 0:
        raise ValueError(f"scaling must be a positive number, got {scaling!r}")
    if not isinstance(labels, bool):
        raise SettingTypeError(f"labels must be a bool, got {labels!r}")
    config = {
        "observation": {
            "type": "GrayscaleObservation",
            "observation_shape": (width, height),
            "stack_size": frame_stack,
            "weights": list(GRAY_WEIGHTS),
            "scaling": scaling,
        },
        "policy_frequency": policy_frequency,
        "duration": duration,
        # render() shows what the observation shows, in colour, RENDER_ZOOM times larger
        "screen_width": width * RENDER_ZOOM,
        "screen_height": height * RENDER_ZOOM,
        "scaling": scaling * RENDER_ZOOM,
    }
    env = gym.make(
        "highway-fast-v0", config=config, render_mode="rgb_array", disable_env_checker=True
    ).unwrapped  # no TimeLimit/checker: highway-env truncates itself
    actions = env.action_type.actions  # index -> name
    env.action_names = tuple(actions[i] for i in range(len(actions)))
    env = ChannelsFirst(env)
    if labels:
        env = VehicleLabels(env, frame_stack=frame_stack)
    env.unwrapped.xrl_spec = {
        "name": NAME,
        "settings": {
            "frame_stack": frame_stack,
            "width": width,
            "height": height,
            "scaling": float(scaling),
            "policy_frequency": policy_frequency,
            "duration": duration,
            "labels": labels,
        },
    }
    return env


EXTRAS[NAME] = FAMILIES[NAME] = "highway"
