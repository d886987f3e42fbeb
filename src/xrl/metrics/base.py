"""The metric contract: batched tensors in, one value per sample out, with metadata.

``metric = get_metric(name, **settings)``; ``metric(model=..., states=..., saliency=...,
targets=None, labels=None, explainer=None) -> (B,)`` float tensor. Each metric declares what it
needs in ``requires`` (a subset of ``model``, ``labels``, ``explainer``), whether higher is
better, and its category.

Multi-output metrics (e.g. ``localization``: AUC, important and unimportant saliency) list the
names of their values in ``outputs``; ``compute`` then returns ``{name: (B,) tensor}`` with
exactly those keys, and ``higher_is_better`` is a dict ``{name: bool}``. The first name is the
headline value. Single-output metrics leave ``outputs = ()`` and return one ``(B,)`` tensor.
A NaN value means "undefined for this sample" (e.g. no important pixel) and is left out of means.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch

from xrl.agents.model import Model
from xrl.registry import Registry

if TYPE_CHECKING:
    from xrl.explainers.base import Explainer

CATEGORIES = ("faithfulness", "robustness", "complexity", "localization", "human_agreement", "cost", "sanity")

METRICS: Registry[type[Metric]] = Registry("metric")

Values = torch.Tensor | dict[str, torch.Tensor]


class Metric:
    """Subclasses set the class attributes and implement ``compute``."""

    higher_is_better: bool | dict[str, bool] = True
    category: str = "faithfulness"
    requires: tuple[str, ...] = ("model",)
    #: names of the values of a multi-output metric; ``()`` for one value per sample
    outputs: tuple[str, ...] = ()

    def __call__(
        self,
        *,
        states: torch.Tensor,
        saliency: torch.Tensor,
        model: Model | None = None,
        targets: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        explainer: Explainer | None = None,
    ) -> Values:
        check_saliency(states, saliency)
        given = {"model": model, "labels": labels, "explainer": explainer}
        missing = [r for r in self.requires if given[r] is None]
        if missing:
            raise ValueError(f"metric {type(self).__name__} needs {', '.join(missing)}")
        values = self.compute(
            states=states, saliency=saliency, model=model, targets=targets, labels=labels, explainer=explainer
        )
        self._check_values(values, states.shape[0])
        return values

    def compute(self, *args: Any, **kwargs: Any) -> Values:
        """The values for keyword arguments ``states``, ``saliency``, ``model``, ``targets``,
        ``labels``, ``explainer`` (a subclass names those it uses and takes the rest as ``**_``)."""
        raise NotImplementedError

    def _check_values(self, values: Values, n: int) -> None:
        name = type(self).__name__
        items: list[tuple[str, Values]]
        if self.outputs:
            if not isinstance(values, dict) or set(values) != set(self.outputs):
                raise TypeError(f"{name}.compute must return a dict with keys {self.outputs}")
            items = list(values.items())
        else:
            items = [("value", values)]
        for key, v in items:
            if not isinstance(v, torch.Tensor) or tuple(v.shape) != (n,):
                raise TypeError(f"{name}.compute must give one value per sample, shape ({n},), for {key!r}")


def check_saliency(states: torch.Tensor, saliency: torch.Tensor) -> None:
    """Raise a ``ValueError``/``TypeError`` unless ``saliency`` is a finite float ``(B, H, W)``
    map matching ``states (B, C, H, W)``."""
    if not isinstance(states, torch.Tensor) or states.dim() != 4:
        raise ValueError(
            f"states must be a (B, C, H, W) tensor, got "
            f"{tuple(states.shape) if isinstance(states, torch.Tensor) else type(states).__name__}"
        )
    if not isinstance(saliency, torch.Tensor):
        raise TypeError(f"saliency must be a torch.Tensor, got {type(saliency).__name__}")
    if saliency.dim() != 3 or saliency.shape[0] != states.shape[0] or saliency.shape[1:] != states.shape[2:]:
        raise ValueError(
            f"saliency must have shape (B, H, W) = ({states.shape[0]}, {states.shape[2]}, "
            f"{states.shape[3]}) to match states {tuple(states.shape)}, got {tuple(saliency.shape)}"
        )
    if states.shape[0] == 0:
        raise ValueError("states is an empty batch (B == 0)")
    if not saliency.is_floating_point():
        raise TypeError(f"saliency must be a float tensor, got {saliency.dtype}")
    if not torch.isfinite(saliency).all():
        raise ValueError("saliency contains NaN or Inf values")
