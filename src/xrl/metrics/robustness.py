"""Robustness: how much the explanation moves when the state barely does."""
from __future__ import annotations

import torch

from xrl.explainers.base import Explainer, chunks, target_function
from xrl.metrics.base import METRICS, Metric


@METRICS.register("lipschitz")
class LocalLipschitz(Metric):
    """Local Lipschitz Estimate (Alvarez-Melis & Jaakkola 2018; VisionMask section 4.2).

    ``max_j ||e(x) - e(x_j)||_2 / ||x - x_j||_2`` over ``n_samples`` neighbours
    ``x_j = x + d_j``, ``d_j`` uniform in the L-inf ball of radius ``radius`` (over all
    channels). ``e(x)`` is the given ``saliency`` (it must come from ``explainer`` with the same
    ``targets``); the neighbours are explained with the same targets as ``x`` (``None`` is
    resolved to the action on ``x`` first), so the explained action never switches.

    The offsets ``d_j (n_samples, C, H, W)`` are drawn once from ``seed`` and shared by every
    state, so a state's value does not depend on its batch. Neighbours are not clamped to the
    valid input range: clamping would shrink some offsets and make the ball depend on the state.
    Neighbours are explained in chunks of ``batch_size`` states.
    """

    higher_is_better = False
    category = "robustness"
    requires = ("explainer",)

    def __init__(self, *, radius: float = 0.02, n_samples: int = 16, batch_size: int = 64,
                 seed: int = 0) -> None:
        if not radius > 0:
            raise ValueError(f"radius must be positive, got {radius!r}")
        if int(n_samples) < 1 or int(batch_size) < 1:
            raise ValueError(f"n_samples and batch_size must be positive integers, got "
                             f"{n_samples!r} and {batch_size!r}")
        self.radius = float(radius)
        self.n_samples = int(n_samples)
        self.batch_size = int(batch_size)
        self.seed = int(seed)

    def compute(self, *, states, saliency, explainer, targets=None, **_) -> torch.Tensor:
        if not isinstance(explainer, Explainer):
            raise TypeError(f"explainer must be an xrl Explainer, got {type(explainer).__name__}")
        explainer.model.check_states(states)
        b, s = states.shape[0], self.n_samples
        fixed = getattr(target_function(explainer.model, states, targets), "index", targets)
        if isinstance(fixed, torch.Tensor):
            fixed = fixed.repeat_interleave(s)  # one per neighbour, sample-major
        gen = torch.Generator().manual_seed(self.seed)
        offsets = (torch.rand((s, *states.shape[1:]), generator=gen) * 2 - 1) * self.radius
        offsets = offsets.to(states)  # (S, C, H, W)
        neighbours = (states.unsqueeze(1) + offsets).flatten(0, 1)  # (B*S, C, H, W)
        maps = torch.cat([
            explainer.explain(neighbours[part], fixed[part] if isinstance(fixed, torch.Tensor) else fixed)
            for part in chunks(b * s, self.batch_size)
        ])
        change = (maps.view(b, s, -1).double() - saliency.reshape(b, 1, -1).double()).norm(dim=2)
        step = offsets.flatten(1).double().norm(dim=1)  # (S,)
        return (change / step).amax(dim=1).float()
