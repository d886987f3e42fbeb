"""The background reference image of an environment, for VisionMask's overlay (``reference=
"background"``) and the ``background`` substrate of the deletion/insertion metrics.

VisionMask (section 4.4) replaces masked pixels by the background: the per-pixel median of many
states, where moving objects (ball, enemies, cars) are rare at any one pixel and drop out. Training
VisionMask computes it from its expert dataset (:func:`xrl.ops.reference_image`);
:func:`background` computes the same median from seeded random play in the env itself, for any
registered env, without an agent or a dataset.

Example::

    >>> from xrl.envs.background import background
    >>> ref = background("vizdoom-basic", steps=500)   # (4, 84, 84) float32 in [0, 1]
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import torch

from xrl.envs import make_env
from xrl.ops import reference_image


def random_observations(
    name: str, settings: Mapping | None = None, *, steps: int = 2000, seed: int = 0, every: int = 1
) -> np.ndarray:
    """Observations ``(N, C, H, W)`` uint8 of ``steps`` steps of uniformly random actions (action
    RNG and episode ``i``'s reset seeded from ``seed``), keeping one in ``every``."""
    for key, value in (("steps", steps), ("every", every)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{key} must be an int >= 1, got {value!r}")
    env = make_env(name, **dict(settings or {}))
    try:
        env.action_space.seed(seed)
        obs, _ = env.reset(seed=seed)
        kept, episode = [], 0
        for t in range(steps):
            if t % every == 0:
                kept.append(np.array(obs, copy=True))
            obs, _, terminated, truncated, _ = env.step(env.action_space.sample())
            if terminated or truncated:
                episode += 1
                obs, _ = env.reset(seed=seed + episode)
        return np.stack(kept)
    finally:
        env.close()


def background(
    name: str, settings: Mapping | None = None, *, steps: int = 2000, seed: int = 0, every: int = 1
) -> torch.Tensor:
    """The per-pixel median ``(C, H, W)`` float32 in state units (uint8 / 255) of the env's
    observations under seeded random play (:func:`random_observations`): the same statistic,
    computed by the same code, as VisionMask's ``background`` reference of a dataset."""
    image = reference_image(
        random_observations(name, settings, steps=steps, seed=seed, every=every), "background", 255.0
    )
    assert image is not None  # None only for the references computed per state (black, blur)
    return image
