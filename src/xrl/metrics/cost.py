"""Cost: how long an explainer takes per saliency map."""

from __future__ import annotations

import time

import torch

from xrl.explainers.base import Explainer
from xrl.metrics.base import METRICS, Metric
from xrl.ops import positive_int


@METRICS.register("time_per_map")
class TimePerMap(Metric):
    """Wall-clock seconds per map of ``explainer.explain(states, targets)`` (``time.perf_counter``).

    The explainer is first run once on the first state (warm-up: lazy initialisation, caches),
    then the whole batch is timed ``repeats`` times and the fastest run kept. Every sample gets
    the same value, total / B. CUDA work is synchronised before the clock stops.
    """

    higher_is_better = False
    category = "cost"
    requires = ("explainer",)

    def __init__(self, *, warmup: bool = True, repeats: int = 1) -> None:
        self.warmup = bool(warmup)
        self.repeats = positive_int("repeats", repeats)

    def compute(self, *, states, explainer, targets=None, **_) -> torch.Tensor:
        if not isinstance(explainer, Explainer):
            raise TypeError(f"explainer must be an xrl Explainer, got {type(explainer).__name__}")
        if self.warmup:
            first = targets[:1] if isinstance(targets, torch.Tensor) and targets.dim() == 1 else targets
            explainer.explain(states[:1], first)
        best = float("inf")
        for _repeat in range(self.repeats):
            _sync(states)
            start = time.perf_counter()
            explainer.explain(states, targets)
            _sync(states)
            best = min(best, time.perf_counter() - start)
        return torch.full((states.shape[0],), best / states.shape[0], device=states.device)


def _sync(states: torch.Tensor) -> None:
    if states.is_cuda:
        torch.cuda.synchronize(states.device)
