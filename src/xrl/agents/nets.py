"""Agent architectures, registered by name (``ARCHS``), usable as SB3 feature extractors.

An architecture is a features extractor class and its keyword arguments plus the heads'
``net_arch``; PPO/A2C/DQN put their linear heads on top. ``nature_cnn`` is the DQN Nature trunk
(Mnih et al. 2015) used for Atari; ``grid_cnn`` is the small 3-conv + 1-linear trunk for
Red-Fetch-Green (DIGR: "3 convolutional layers and 2 linear layers", the second linear being
the policy head).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import gymnasium as gym
import torch
from torch import nn

from xrl.compat import quiet_old_gym

quiet_old_gym()  # before Stable-Baselines3, which imports the old gym when installed
from stable_baselines3.common.torch_layers import BaseFeaturesExtractor, NatureCNN  # noqa: E402

from xrl.registry import Registry  # noqa: E402


@dataclass(frozen=True)
class Arch:
    features_extractor_class: type[BaseFeaturesExtractor]
    features_extractor_kwargs: dict = field(default_factory=dict)
    net_arch: list = field(default_factory=list)

    def policy_kwargs(self) -> dict:
        return {
            "features_extractor_class": self.features_extractor_class,
            "features_extractor_kwargs": dict(self.features_extractor_kwargs),
            "net_arch": list(self.net_arch),
        }


#: the FLS, DAQN and RS-PPO architectures register themselves from xrl.agents.attention
ARCHS: Registry[Arch] = Registry("architecture", plugins=("xrl.agents.attention",))


class GridCNN(BaseFeaturesExtractor):
    """Three small convs (16, 32, 64 channels) and one linear layer for small RGB or symbolic grid observations.

    Inputs of side ≥ 32 are downsampled by stride 2 in every conv (64×64 → 8×8, one cell per
    feature position at tile size 8); smaller (symbolic) inputs keep their resolution.
    """

    def __init__(self, observation_space: gym.spaces.Box, features_dim: int = 256) -> None:
        super().__init__(observation_space, features_dim)
        c, h, w = observation_space.shape
        if min(h, w) >= 32:
            layers = [
                nn.Conv2d(c, 16, 4, 2, 1),
                nn.ReLU(),
                nn.Conv2d(16, 32, 4, 2, 1),
                nn.ReLU(),
                nn.Conv2d(32, 64, 3, 2, 1),
                nn.ReLU(),
            ]
        else:
            layers = [
                nn.Conv2d(c, 16, 3, 1, 1),
                nn.ReLU(),
                nn.Conv2d(16, 32, 3, 1, 1),
                nn.ReLU(),
                nn.Conv2d(32, 64, 3, 1, 1),
                nn.ReLU(),
            ]
        self.cnn = nn.Sequential(*layers, nn.Flatten())
        with torch.no_grad():
            n_flat = self.cnn(torch.zeros(1, c, h, w)).shape[1]
        self.linear = nn.Sequential(nn.Linear(n_flat, features_dim), nn.ReLU())

    def forward(self, states: torch.Tensor) -> torch.Tensor:
        return self.linear(self.cnn(states))


ARCHS.register("nature_cnn")(Arch(NatureCNN, {"features_dim": 512}))
ARCHS.register("grid_cnn")(Arch(GridCNN, {"features_dim": 256}))
