"""Sanity checks: do a method's maps depend on the agent's weights at all?"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from typing import NamedTuple

import torch

from xrl.agents.model import Model
from xrl.explainers.base import Explainer
from xrl.metrics.base import METRICS, Metric
from xrl.ops import target_function


class SanityCurves(NamedTuple):
    """Spearman correlations with the map of the trained agent, for plots."""

    layers: list[str]
    """the randomized layers (names in ``model.net``), top (output) layer first"""
    cascading: torch.Tensor
    """``(B, L + 1)``: column k after randomizing the top k layers (column 0: none)"""
    independent: torch.Tensor
    """``(B, L)``: column i after randomizing ``layers[i]`` alone"""


@METRICS.register("sanity")
class SanityCheck(Metric):
    """Model-parameter randomization test (Adebayo et al. 2018, "Sanity Checks for Saliency Maps").

    The explainer is re-created with the same settings (``explainer.with_model``) on deep copies
    of ``explainer.model`` whose layers are re-initialised from ``seed``, and its maps are
    compared with the given ``saliency`` by the Spearman rank correlation of absolute values.
    ``cascading``: after randomizing every layer, top (output) layer first, cumulatively;
    ``independent``: mean over layers randomized one at a time; ``passed``: 1 when
    ``cascading < threshold``, else 0 (a map that barely changes is *flagged*). The original
    model is never modified. Costs ``1 + L`` explanations of the states for ``L`` layers.
    """

    higher_is_better = {"cascading": False, "independent": False, "passed": True}
    category = "sanity"
    requires = ("explainer",)
    outputs = ("cascading", "independent", "passed")
    #: printed after the evaluation table for methods whose mean ``passed`` is below 0.5
    flagged = "maps barely change when the agent's weights are randomized"

    def __init__(self, *, layers: Sequence[str] | None = None, threshold: float = 0.5, seed: int = 0) -> None:
        if layers is not None and (
            isinstance(layers, str) or not all(isinstance(n, str) for n in layers) or not layers
        ):
            raise ValueError(
                f"layers must be None (every layer) or a non-empty list of module names in model.net, got {layers!r}"
            )
        if not -1 <= float(threshold) <= 1:
            raise ValueError(f"threshold is a rank correlation, in [-1, 1]; got {threshold!r}")
        self.layers = None if layers is None else list(layers)
        self.threshold = float(threshold)
        self.seed = int(seed)

    def compute(self, *, states, saliency, explainer, targets=None, **_) -> dict[str, torch.Tensor]:
        curves = self._curves(states, saliency, explainer, targets, every_step=False)
        cascading = curves.cascading[:, -1]
        passed = torch.where(cascading.isnan(), cascading, (cascading < self.threshold).to(cascading))
        return {
            "cascading": cascading.float(),
            "independent": curves.independent.nanmean(1).float(),
            "passed": passed.float(),
        }

    def curves(
        self, *, states: torch.Tensor, explainer: Explainer, saliency: torch.Tensor | None = None, targets=None
    ) -> SanityCurves:
        """Every step of the cascade (from 0 randomized layers) and every single layer.

        ``saliency`` defaults to ``explainer.explain(states, targets)``. Column 0 of the cascade
        re-explains with an unmodified copy of the model, so it is 1 for any method that is a
        function of (settings, model, state).
        """
        return self._curves(states, saliency, explainer, targets, every_step=True)

    def _curves(self, states, saliency, explainer, targets, every_step: bool) -> SanityCurves:
        if not isinstance(explainer, Explainer):
            raise TypeError(f"explainer must be an xrl Explainer, got {type(explainer).__name__}")
        model = explainer.model
        model.check_states(states)
        # explain the same action on every randomized model: None is resolved on the trained one
        resolved = target_function(model, states, targets)
        targets = targets if resolved.index is None else resolved.index  # a callable stays itself
        if saliency is None:
            saliency = explainer.explain(states, targets)
        template = copy.deepcopy(model).eval()  # explainers run in eval mode anyway
        layers = self._select(template, states)[::-1]  # top layer first
        fresh = self._fresh(template, layers)

        def correlation(randomize: Sequence[str]) -> torch.Tensor:
            randomized = copy.deepcopy(template)
            modules = dict(randomized.net.named_modules())
            with torch.no_grad():
                for name in randomize:
                    for p, new in zip(modules[name].parameters(recurse=False), fresh[name]):
                        p.copy_(new)
            maps = explainer.with_model(randomized).explain(states, targets)
            return map_correlation(saliency, maps)

        steps = range(len(layers) + 1) if every_step else [len(layers)]
        cascading = torch.stack([correlation(layers[:k]) for k in steps], 1)  # (B, steps)
        independent = torch.stack([correlation([name]) for name in layers], 1)  # (B, L)
        return SanityCurves(layers, cascading, independent)

    def _select(self, model: Model, states: torch.Tensor) -> list[str]:
        """Names of the randomizable layers of ``model.net`` in forward order: the modules that
        own a weight (a parameter with >= 2 dims; Conv and Linear layers) and compute the scores."""
        candidates = {
            name: m for name, m in model.net.named_modules() if any(p.dim() >= 2 for p in m.parameters(recurse=False))
        }
        called: dict[str, None] = {}  # insertion order = order of first call
        hooks = [
            m.register_forward_hook(lambda *_, name=name: called.setdefault(name)) for name, m in candidates.items()
        ]
        try:
            with torch.no_grad():
                model(states[:1])
        finally:
            for h in hooks:
                h.remove()
        order = list(called)
        if not order:
            raise ValueError(
                f"the sanity check randomizes layers with weights (Conv, Linear), but "
                f"this model ({type(model.net).__name__}) uses none to compute its scores"
            )
        if self.layers is None:
            return order
        unknown = [n for n in self.layers if n not in order]
        if unknown:
            raise ValueError(
                f"sanity: cannot randomize {unknown}; the layers with weights that compute "
                f"the scores are {order} (names in model.net, forward order)"
            )
        return [n for n in order if n in self.layers]

    def _fresh(self, model: Model, layers: list[str]) -> dict[str, list[torch.Tensor]]:
        """New values for every parameter of ``layers`` as PyTorch initialises a new Conv/Linear
        layer: ``U(-1/sqrt(fan_in), 1/sqrt(fan_in))`` for weight and bias, ``fan_in`` from the
        layer's weight. Drawn on the CPU from ``seed``, bottom layer first."""
        gen = torch.Generator(device="cpu").manual_seed(self.seed)
        modules = dict(model.net.named_modules())
        fresh = {}
        for name in reversed(layers):
            params = list(modules[name].parameters(recurse=False))
            weight = next(p for p in params if p.dim() >= 2)
            bound = (weight.numel() // weight.shape[0]) ** -0.5
            fresh[name] = [((torch.rand(p.shape, generator=gen, device="cpu") * 2 - 1) * bound).to(p) for p in params]
        return fresh


def map_correlation(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Spearman correlation ``(B,)`` of the absolute values of two maps ``(B, H, W)``.

    Where the rank correlation is undefined because a map is constant: 1 when both are constant
    (the same, empty, ranking), 0 when one is (it keeps none of the other's ranking)."""
    a, b = a.flatten(1).abs(), b.flatten(1).abs()
    r = spearman(a, b)
    flat_a, flat_b = (a == a[:, :1]).all(1), (b == b[:, :1]).all(1)
    return torch.where(flat_a & flat_b, 1.0, torch.where(flat_a | flat_b, 0.0, r))


def spearman(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Spearman rank correlation of the rows of ``a`` and ``b`` ``(B, N)`` -> ``(B,)`` float64:
    Pearson correlation of average ranks (ties share their mean rank, as ``scipy.stats.spearmanr``).
    NaN when a row is constant."""
    ra, rb = average_ranks(a), average_ranks(b)
    ra, rb = ra - ra.mean(1, keepdim=True), rb - rb.mean(1, keepdim=True)
    return (ra * rb).sum(1) / (ra.square().sum(1) * rb.square().sum(1)).sqrt()


def average_ranks(x: torch.Tensor) -> torch.Tensor:
    """Ranks ``1..N`` of each row of ``x (B, N)``, ties given their average rank; float64."""
    values, order = x.sort(dim=1)
    n = x.shape[1]
    pos = torch.arange(n, device=x.device).expand_as(order)
    differs = values[:, 1:] != values[:, :-1]  # (B, N-1): a new value starts at i + 1
    true = torch.ones_like(differs[:, :1])
    starts = torch.cat([true, differs], 1)  # first position of each run of equal values
    ends = torch.cat([differs, true], 1)  # last position of each run
    first = torch.where(starts, pos, 0).cummax(1).values
    last = torch.where(ends, pos, n - 1).flip(1).cummin(1).values.flip(1)
    mean_rank = (first + last).double() / 2 + 1  # (B, N), in sorted order
    return torch.empty_like(mean_rank).scatter_(1, order, mean_rank)
