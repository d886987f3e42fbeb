"""Vanilla gradient saliency (Simonyan et al. 2013, "Deep Inside Convolutional Networks").

The saliency of a pixel is ``|d f(s) / d s|`` reduced over channels (stacked frames included):
``reduce="max"`` (Simonyan et al., the default), ``"sum"`` or ``"mean"`` of absolute values.
``f`` is the explained target: an action's score, or any callable of the scores.
Computed with Captum's ``Saliency`` on a detached copy of each chunk of ``batch_size`` states,
so the caller's tensor, its ``.grad`` and the parameters' ``.grad`` are never touched.
"""
from __future__ import annotations

from typing import Callable

import torch
from captum.attr import Saliency

from xrl.agents.model import Model
from xrl.explainers.base import EXPLAINERS, Explainer, Targets, chunks, guarded, reduce_channels, target_function

REDUCTIONS = ("max", "sum", "mean")


@EXPLAINERS.register("gradient")
class Gradient(Explainer):
    """Vanilla gradient; ``explain_all`` is ``explain`` for each action in turn.

    Example::

        explainer = get_explainer("gradient", model, reduce="max")
        saliency = explainer.explain(states, targets=lambda q: q[:, 0] - q[:, 1])  # (B, H, W)
        per_channel = explainer.channel_gradients(states)                         # (B, C, H, W)
    """

    def __init__(self, model: Model, *, reduce: str = "max", batch_size: int = 256, seed: int = 0) -> None:
        super().__init__(model, batch_size=batch_size, seed=seed)
        if reduce not in REDUCTIONS:
            raise ValueError(f"reduce must be one of {REDUCTIONS}, got {reduce!r}")
        self.reduce = reduce

    def channel_gradients(self, states: torch.Tensor, targets: Targets = None) -> torch.Tensor:
        """Signed gradients ``(B, C, H, W)`` of the target, before the channel reduction."""
        self.model.check_states(states)
        with guarded(self.model, states):
            return self._gradients(states, target_function(self.model, states, targets)).detach()

    def _explain(self, states: torch.Tensor, target_fn: Callable) -> torch.Tensor:
        return reduce_channels(self._gradients(states, target_fn), self.reduce)

    def _gradients(self, states: torch.Tensor, target_fn: Callable) -> torch.Tensor:
        index = getattr(target_fn, "index", None)  # (B,) when targets are action indices
        parts = []
        for rows in chunks(states.shape[0], self.batch_size):
            x = states[rows].detach().clone().requires_grad_()
            if index is not None:  # Captum's own target selection
                grads = Saliency(self.model).attribute(x, target=index[rows], abs=False)
            else:  # callable target: the forward returns (b,), which Captum accepts with target=None
                grads = Saliency(lambda s: target_fn(self.model(s))).attribute(x, abs=False)
            parts.append(grads)
        return torch.cat(parts)
