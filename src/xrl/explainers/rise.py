"""RISE, Randomized Input Sampling for Explanation (Petsiuk, Das & Saenko 2018, "RISE:
Randomized Input Sampling for Explanation of Black-box Models").

The state is multiplied by ``n_masks`` random masks ``M_i`` (the same on every channel and
stacked frame) and the saliency of a pixel is the expected score when that pixel is kept::

    saliency = sum_i f(s * M_i) * M_i / (n_masks * p)

Masks as in the paper (and the authors' code): a ``grid x grid`` binary grid whose cells are 1
with probability ``p``, upsampled bilinearly to ``(grid + 1) * cell`` pixels per side
(``cell = ceil(H / grid)``) and cropped to ``H x W`` at a random shift in ``[0, cell)`` per
axis, so masks are smooth and not aligned to one grid. ``f`` is the explained target applied to
the model's scores (logits / Q-values), as the authors' PyTorch code does; the paper used class
probabilities, i.e. ``targets=lambda s: s.softmax(-1)[:, a]``. Any callable target works (value,
"A minus B"). ``explain_all[:, k]`` is the map of action ``k``, all K from the same masked batch
(one matmul with the masks), so it costs what ``explain`` costs.

Settings: the paper uses thousands of masks (N = 8000) on 224x224 ImageNet images with
``p = 0.5``; here ``n_masks=2000`` (84x84 states have 7x fewer pixels than ImageNet images; every
mask costs one forward pass per state), ``grid=8`` (cells of 11 pixels on 84x84, one MiniGrid
tile on 64x64 Red-Fetch-Green states) and ``p=0.5``. The masks are a function of
``(H, W, n_masks, grid, p, seed)``: drawn once from a generator seeded with ``seed`` and cached,
so every state of every call sees the same masks and maps do not depend on the batch.

Cost: ``B * (n_masks + 1)`` forward passes in chunks of ``batch_size`` rows under
``torch.inference_mode()``; memory for the cached masks is ``n_masks * H * W`` floats (56 MB for
2000 masks of 84x84). Measured on 84x84x4 states with a Nature CNN (2 shared CPU cores): ~1.2x
the floor (the same number of forward passes in one batch), all actions at once.
"""
from __future__ import annotations

import functools
import math
import numbers
from typing import Callable

import torch
import torch.nn.functional as F

from xrl.agents.model import Model
from xrl.explainers.base import EXPLAINERS, Explainer, chunks
from xrl.explainers.masks import perturbed_scores


@EXPLAINERS.register("rise")
class Rise(Explainer):
    """RISE (Petsiuk et al. 2018): the target's score weighted by random smooth masks keeping each pixel.

    Example::

        explainer = get_explainer("rise", model, n_masks=2000, grid=8, p=0.5, seed=0)
        saliency = explainer.explain(states)        # (B, H, W)
        per_action = explainer.explain_all(states)  # (B, K, H, W)
    """

    per_action = True

    def __init__(
        self,
        model: Model,
        *,
        n_masks: int = 2000,
        grid: int = 8,
        p: float = 0.5,
        batch_size: int = 512,
        seed: int = 0,
    ) -> None:
        super().__init__(model, batch_size=batch_size, seed=seed)
        for name, value in (("n_masks", n_masks), ("grid", grid)):
            if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if not 0 < float(p) <= 1:
            raise ValueError(f"p (the probability of keeping a grid cell) must be in (0, 1], got {p!r}")
        self.n_masks, self.grid, self.p = int(n_masks), int(grid), float(p)

    def _explain(self, states: torch.Tensor, target_fn: Callable) -> torch.Tensor:
        scores = self._scores(states)  # (B, N, K)
        b, n = scores.shape[:2]
        # target_fn repeats per-state indices for state-major copies: (B*N, K) -> (B*N,)
        return self._weigh(target_fn(scores.flatten(0, 1)).view(b, 1, n), states)[:, 0]

    def _explain_all(self, states: torch.Tensor) -> torch.Tensor:
        return self._weigh(self._scores(states).transpose(1, 2), states)

    def _scores(self, states: torch.Tensor) -> torch.Tensor:
        """Scores ``(B, N, K)`` of the masked states ``s * M_i``."""
        keep = self.masks(*states.shape[-2:], device=states.device).to(states.dtype)
        # s * M = s * (1 - (1 - M)) + 0 * (1 - M): a perturbation towards 0 with weights 1 - M
        # (1 - M is an (N, H, W) temporary per call, negligible next to N forward passes per state)
        zeros = states.new_zeros(()).expand_as(states)
        return perturbed_scores(self.model, states, zeros, 1 - keep, self.batch_size)[1]

    def _weigh(self, scores: torch.Tensor, states: torch.Tensor) -> torch.Tensor:
        """``(B, K, N)`` scores -> ``(B, K, H, W)`` = ``sum_i score_i * M_i / (N * p)``."""
        height, width = states.shape[-2:]
        masks = self.masks(height, width, device=states.device).flatten(1)  # (N, H*W)
        saliency = scores.to(masks.dtype) @ masks / (self.n_masks * self.p)
        return saliency.view(*scores.shape[:2], height, width)

    def masks(self, height: int, width: int, device: torch.device | str = "cpu") -> torch.Tensor:
        """The cached masks ``(n_masks, H, W)`` in ``[0, 1]`` (1 = kept)."""
        return rise_masks(height, width, self.n_masks, self.grid, self.p, self.seed, torch.device(device))


@functools.lru_cache(maxsize=4)  # 56 MB each at the defaults on 84x84
def rise_masks(
    height: int, width: int, n_masks: int, grid: int, p: float, seed: int, device: torch.device
) -> torch.Tensor:
    """RISE masks ``(n_masks, H, W)``: random ``grid x grid`` binary cells (1 with probability
    ``p``), bilinearly upsampled to ``(grid + 1) * cell`` and cropped at a random shift.

    Drawn on the CPU from ``torch.Generator().manual_seed(seed)`` (identical on every device)
    and cached: the same arguments return the same tensor (do not modify it).
    """
    with torch.inference_mode(False):  # cached: must stay usable by autograd later
        generator = torch.Generator().manual_seed(seed)
        cell_h, cell_w = math.ceil(height / grid), math.ceil(width / grid)
        cells = (torch.rand(n_masks, 1, grid, grid, generator=generator) < p).float()
        shift_h = torch.randint(0, cell_h, (n_masks,), generator=generator)
        shift_w = torch.randint(0, cell_w, (n_masks,), generator=generator)
        masks = torch.empty(n_masks, height, width)
        for part in chunks(n_masks, 256):  # the upsampled grids are ~(1 + 1/grid)^2 larger
            # pixel-centre bilinear as the authors' skimage resize(order=1); borders are clamped
            # where skimage mirrors, which only changes the outer half cell
            up = F.interpolate(cells[part], size=((grid + 1) * cell_h, (grid + 1) * cell_w),
                               mode="bilinear", align_corners=False)[:, 0]
            rows = shift_h[part, None] + torch.arange(height)  # (n, H)
            cols = shift_w[part, None] + torch.arange(width)  # (n, W)
            index = torch.arange(up.shape[0])[:, None, None]
            masks[part] = up[index, rows[:, :, None], cols[:, None, :]].clamp(0, 1)  # rounding
        return masks.to(device)
