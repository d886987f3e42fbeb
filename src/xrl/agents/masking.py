"""The masking MDP of RExL (Agarwal et al. 2021, "Reinforcement Explanation Learning",
arXiv:2111.13406, section 3.1).

An image (or an agent's state) and the class (or action) ``c`` to explain. The image is cut into
a ``grid x grid`` grid of cells (K = 7 in the paper, 14 as a setting). An action picks one cell;
the cell is *masked*: its pixels are replaced by noise drawn once per episode from the image
distribution. The reward is minus the explained model's probability of ``c`` on the masked image,
``r_t = -p_c(s_{t+1})`` (Eq. 1).

Scoring (``score=``): ``"softmax"`` (default; single-label classifiers and agents' policies)
takes ``p_c = softmax(logits)_c``; ``"sigmoid"`` takes each class's own probability
``p_c = sigmoid(logit_c)``, as for the paper's multi-label VOC/COCO models, where the problem
definition (section 3.1) has "probabilities p_c indicating the presence of at least one object of
class c": then masking one object does not raise another present class's probability in
exchange, and every present class is explained on its own (one episode per (image, class)). An episode has ``grid**2`` steps and gamma = 1, so the return is
minus the (unnormalised) deletion curve of the cells in the order the agent chose them. Masking a
cell again is allowed (as in the paper) and changes nothing.

Two faces of one code path:

* :class:`MaskingBatch` steps ``n`` episodes at once on tensors (one forward pass of the model per
  step for all of them): what xrl's ACER (``xrl.train.acer``) and the RExL explainer use.
* :class:`MaskingEnv` is the same MDP as a Gymnasium env (a batch of one), observation
  ``{"image": (C, H, W) float32, "target": (n_classes,) one-hot float32}``, action
  ``Discrete(grid**2)``, so SB3's PPO/A2C/DQN can train the same agent.

Images whose height or width is not divisible by ``grid`` are refused (:func:`check_grid`):
resizing would explain another input than the one the model consumes. The message lists the grid
sizes that fit.

Noise (``noise=``): ``"uniform"`` draws each masked pixel uniformly in ``[low, high]`` (section 3.1:
"random noise sampled uniformly in the range of the pixel intensity values"; ``[0, 1]`` for xrl
states); ``"gaussian"`` draws from the per-channel mean and standard deviation of the images
(appendix A.1: "sampled from the same distribution as that of the image"), clipped to
``[low, high]``.

Example::

    batch = MaskingBatch(model, images, grid=7, seed=0)
    states = batch.reset(rows=torch.tensor([0, 1]), targets=torch.tensor([3, 3]))
    states, rewards, done = batch.step(torch.tensor([10, 24]))   # rewards = -p_3 after masking
"""

from __future__ import annotations

import numbers
from typing import Any

import gymnasium as gym
import numpy as np
import torch

from xrl.agents.model import Model

NOISES = ("uniform", "gaussian")
SCORES = ("softmax", "sigmoid")


def class_probability(logits: torch.Tensor, targets: torch.Tensor, score: str = "softmax") -> torch.Tensor:
    """``p_c (n,)`` of class ``targets (n,)`` from the model's outputs ``(n, C)``: softmax over
    the classes, or the class's own sigmoid (multi-label)."""
    if score == "sigmoid":
        return torch.sigmoid(logits.gather(1, targets[:, None]).squeeze(1))
    if score == "softmax":
        return logits.softmax(-1).gather(1, targets[:, None]).squeeze(1)
    raise ValueError(f"score must be one of {SCORES}, got {score!r}")


def check_grid(height: int, width: int, grid: int) -> None:
    """Refuse a grid that does not divide the image (naming the grid sizes that would)."""
    if isinstance(grid, bool) or not isinstance(grid, numbers.Integral) or grid < 1:
        raise ValueError(f"grid must be a positive integer, got {grid!r}")
    if height % grid or width % grid:
        fits = [k for k in range(2, min(height, width) + 1) if height % k == 0 and width % k == 0]
        raise ValueError(
            f"a {height}x{width} image is not divisible into a {grid}x{grid} grid (RExL refuses "
            f"rather than resizes what the model sees); grid sizes that fit: {fits}"
        )


def cell_masks(height: int, width: int, grid: int) -> torch.Tensor:
    """``(grid**2, H, W)`` bool: the pixels of each cell, cells in reading order (row-major)."""
    check_grid(height, width, grid)
    cpu = torch.device("cpu")  # built on the CPU; callers move it to their images' device
    rows = torch.arange(height, device=cpu) // (height // grid)  # (H,) cell row of each pixel
    cols = torch.arange(width, device=cpu) // (width // grid)
    cell = rows[:, None] * grid + cols[None, :]  # (H, W)
    return cell[None] == torch.arange(grid * grid, device=cpu)[:, None, None]


class MaskingBatch:
    """``n`` masking episodes stepped together (see the module docstring).

    ``images (N, C, H, W)`` are float states in the model's input space; ``reset`` chooses which
    rows and targets the episodes explain. States are the masked images; ``masked (n, grid**2)``
    says which cells are masked; ``probs (n,)`` the model's probability of each target now
    (``score``: softmax, or sigmoid for multi-label models).
    """

    def __init__(
        self,
        model: Model,
        images: torch.Tensor,
        *,
        grid: int = 7,
        noise: str = "uniform",
        low: float = 0.0,
        high: float = 1.0,
        seed: int = 0,
        batch_size: int = 256,
        mean=None,
        std=None,
        score: str = "softmax",
    ) -> None:
        if not isinstance(model, Model):
            raise TypeError(
                f"the masking MDP takes an xrl Model, got {type(model).__name__}; wrap it with xrl.as_model"
            )
        model.check_states(images)
        if noise not in NOISES:
            raise ValueError(f"noise must be one of {NOISES}, got {noise!r}")
        if not high > low:
            raise ValueError(f"need low < high for the noise range, got {low!r}, {high!r}")
        if score not in SCORES:
            raise ValueError(f"score must be one of {SCORES}, got {score!r}")
        self.score = score
        self.model, self.images, self.grid = model, images, int(grid)
        self.cells = cell_masks(images.shape[-2], images.shape[-1], grid).to(images.device)  # (A, H, W)
        self.noise, self.low, self.high = noise, float(low), float(high)
        self.batch_size = int(batch_size)
        if noise == "gaussian":  # the image distribution, per channel (given, or of these images)
            self.mean = (
                (images.mean(dim=(0, 2, 3)) if mean is None else torch.as_tensor(mean, device="cpu"))
                .view(1, -1, 1, 1)
                .to(images)
            )
            self.std = (
                (images.std(dim=(0, 2, 3)) if std is None else torch.as_tensor(std, device="cpu"))
                .view(1, -1, 1, 1)
                .to(images)
            )
        self.generator = torch.Generator(device="cpu").manual_seed(int(seed))  # same noise on every device

    @property
    def n_cells(self) -> int:
        return self.grid * self.grid

    def draw_noise(self, n: int) -> torch.Tensor:
        """Noise images ``(n, C, H, W)`` from the batch's generator (on the CPU, then moved)."""
        shape = (n, *self.images.shape[1:])
        if self.noise == "uniform":
            noise = self.low + (self.high - self.low) * torch.rand(shape, generator=self.generator, device="cpu")
        else:
            noise = torch.randn(shape, generator=self.generator, device="cpu").to(self.images.dtype)
            noise = noise * self.std.cpu() + self.mean.cpu()
            noise = noise.clamp(self.low, self.high)
        return noise.to(self.images)

    def reset(self, rows: torch.Tensor, targets: torch.Tensor, noise: torch.Tensor | None = None) -> torch.Tensor:
        """Start ``len(rows)`` episodes on ``images[rows]`` explaining ``targets``; the unmasked states."""
        rows = torch.as_tensor(rows, dtype=torch.long, device=self.images.device)
        targets = torch.as_tensor(targets, dtype=torch.long, device=self.images.device)
        if rows.dim() != 1 or tuple(targets.shape) != tuple(rows.shape):
            raise ValueError(f"rows and targets must be (n,) each, got {tuple(rows.shape)} and {tuple(targets.shape)}")
        k = self.model.n_actions
        if ((targets < 0) | (targets >= k)).any():
            raise ValueError(
                f"targets must be class indices in [0, {k}) for a model with {k} outputs, got {targets.tolist()}"
            )
        self.rows, self.targets = rows, targets.to(self.images.device)
        self.original = self.images[rows.to(self.images.device)]
        self.noise_images = self.draw_noise(len(rows)) if noise is None else noise.to(self.original)
        self.masked = torch.zeros(len(rows), self.n_cells, dtype=torch.bool, device=self.images.device)
        self.t = 0
        self.states = self.original.clone()
        self.probs = self._probs(self.states)
        return self.states

    def step(self, actions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, bool]:
        """Mask cell ``actions (n,)`` of each episode: ``(states, rewards = -p_c, done)``."""
        actions = torch.as_tensor(actions, dtype=torch.long, device=self.images.device)
        if tuple(actions.shape) != (len(self.rows),) or ((actions < 0) | (actions >= self.n_cells)).any():
            raise ValueError(
                f"actions must be ({len(self.rows)},) cell indices in [0, {self.n_cells}), got {actions.tolist()}"
            )
        self.masked[torch.arange(len(actions), device=actions.device), actions] = True
        pixels = (self.masked.to(self.cells.dtype).float() @ self.cells.flatten(1).float()) > 0  # (n, H*W)
        pixels = pixels.view(len(actions), 1, *self.images.shape[-2:])
        self.states = torch.where(pixels, self.noise_images, self.original)
        self.probs = self._probs(self.states)
        self.t += 1
        return self.states, -self.probs, self.t >= self.n_cells

    @torch.no_grad()
    def _probs(self, states: torch.Tensor) -> torch.Tensor:
        out = torch.cat([self.model(states[i : i + self.batch_size]) for i in range(0, len(states), self.batch_size)])
        return class_probability(out, self.targets, self.score)


class MaskingEnv(gym.Env):
    """The masking MDP as a Gymnasium env: each ``reset`` draws an image (and its target) from
    ``images``/``targets`` with the env's RNG; ``step(cell)`` masks it (see the module docstring).

    Example::

        env = MaskingEnv(model, images, targets, grid=7)
        obs, info = env.reset(seed=0)          # obs["image"] (C, H, W), obs["target"] one-hot
        obs, reward, terminated, truncated, info = env.step(24)
    """

    metadata: dict[str, Any] = {"render_modes": []}

    def __init__(
        self,
        model: Model,
        images: torch.Tensor,
        targets: torch.Tensor,
        *,
        grid: int = 7,
        noise: str = "uniform",
        low: float = 0.0,
        high: float = 1.0,
        score: str = "softmax",
    ) -> None:
        super().__init__()
        targets = torch.as_tensor(targets, dtype=torch.long, device=images.device)
        if tuple(targets.shape) != (len(images),):
            raise ValueError(f"targets must be one class index per image ({len(images)},), got {tuple(targets.shape)}")
        self.batch = MaskingBatch(model, images, grid=grid, noise=noise, low=low, high=high, score=score)
        self.targets = targets
        k = model.n_actions
        self.observation_space = gym.spaces.Dict(
            {
                "image": gym.spaces.Box(low, high, shape=tuple(images.shape[1:]), dtype=np.float32),
                "target": gym.spaces.Box(0.0, 1.0, shape=(k,), dtype=np.float32),
            }
        )
        self.action_space = gym.spaces.Discrete(self.batch.n_cells)

    def _obs(self) -> dict:
        one_hot = np.zeros(self.observation_space["target"].shape, dtype=np.float32)
        one_hot[int(self.batch.targets[0])] = 1.0
        return {"image": self.batch.states[0].cpu().numpy().astype(np.float32), "target": one_hot}

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        super().reset(seed=seed)
        if seed is not None:
            self.batch.generator.manual_seed(int(seed))
        row = int(self.np_random.integers(len(self.targets)))
        self.batch.reset(torch.tensor([row], device=self.targets.device), self.targets[row : row + 1])
        return self._obs(), {"row": row, "prob": float(self.batch.probs[0])}

    def step(self, action):
        _, rewards, done = self.batch.step(torch.tensor([int(action)], device=self.batch.images.device))
        return self._obs(), float(rewards[0]), bool(done), False, {"prob": float(self.batch.probs[0])}
