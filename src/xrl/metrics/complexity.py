"""Complexity: how concentrated a saliency map is."""

from __future__ import annotations

import torch

from xrl.metrics.base import METRICS, Metric


@METRICS.register("sparseness")
class Sparseness(Metric):
    """Gini index of the absolute saliency of each map (Chalasani et al. 2020; VisionMask).

    With ``v`` the ``n = H * W`` absolute values sorted non-decreasing,
    ``G = sum_k (2k - n - 1) v_k / (n * sum_k v_k)``: 0 for a uniform map, ``(n - 1) / n`` for a
    map with a single non-zero pixel. An all-zero map has no Gini index: NaN.
    """

    higher_is_better = True
    category = "complexity"
    requires = ()

    def compute(self, *, saliency, **_) -> torch.Tensor:
        values = saliency.abs().flatten(1).double().sort(dim=1).values  # (B, n), non-decreasing
        n = values.shape[1]
        weights = 2 * torch.arange(1, n + 1, dtype=torch.float64, device=values.device) - n - 1
        total = values.sum(1)
        gini = (values * weights).sum(1) / (n * total)
        return torch.where(total > 0, gini, torch.full_like(gini, float("nan"))).float()
