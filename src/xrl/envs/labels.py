"""Per-pixel ground-truth label maps ``(H, W)`` int8 at the model-input resolution.

DIGR (section 4.4) scores saliency against three kinds of pixels: those certainly important for
the decision, those certainly unimportant, and those whose role is uncertain (left out).
"""

from __future__ import annotations

import gymnasium as gym
import numpy as np

IMPORTANT = 1
UNIMPORTANT = 0
EXCLUDED = -1


class LabelsInInfo(gym.Wrapper):
    """Base of the wrappers that put a label map in ``info["labels"]`` after every ``reset`` and
    ``step``; a subclass implements ``_labels(obs, fresh)`` (``fresh``: a new episode)."""

    def _labels(self, obs: np.ndarray, fresh: bool) -> np.ndarray:
        raise NotImplementedError

    def reset(self, **kwargs):
        obs, info = self.env.reset(**kwargs)
        return obs, {**info, "labels": self._labels(obs, fresh=True)}

    def step(self, action):
        obs, reward, terminated, truncated, info = self.env.step(action)
        return obs, reward, terminated, truncated, {**info, "labels": self._labels(obs, fresh=False)}
