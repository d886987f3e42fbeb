"""The shared machinery of the layer methods (``grad_cam``, ``normgrad``): the base class
:class:`LayerExplainer` and its helpers.

A layer method reads one module of ``model.net`` (by default the last conv layer): a forward hook
records its output ``a (b, C, h, w)`` on chunks of ``batch_size`` states, one ``autograd.grad``
gives ``g = d f / d a``, the method's :meth:`LayerExplainer.combine` turns ``(a, g)`` into a
``(b, 1, h, w)`` map, and the map is upsampled bilinearly (``align_corners=False``) to the
state's ``(H, W)``. This is the shape of pytorch-grad-cam's ``BaseCAM`` (one override per
method) and of Captum's ``LayerGradCam``, without their per-call overhead.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from xrl.agents.model import Model
from xrl.explainers.base import Explainer
from xrl.ops import TargetFn, chunks


class LayerExplainer(Explainer):
    """Base class of the methods that combine one layer's activations and gradients.

    Subclasses set ``method`` (their registry name, for error messages) and implement
    :meth:`combine`."""

    method: str = "layer method"

    def __init__(self, model: Model, *, layer: str | None = None, batch_size: int = 256, seed: int = 0) -> None:
        super().__init__(model, batch_size=batch_size, seed=seed)
        self.layer = find_layer(model, layer, self.method)

    def combine(self, acts: torch.Tensor, grads: torch.Tensor) -> torch.Tensor:
        """The layer map ``(b, 1, h, w)`` from activations and gradients ``(b, C, h, w)`` each."""
        raise NotImplementedError

    def _explain(self, states: torch.Tensor, target_fn: TargetFn) -> torch.Tensor:
        parts = []
        for rows in chunks(states.shape[0], self.batch_size):
            x = states[rows].detach().clone().requires_grad_()
            acts, grads = activations_and_gradients(
                self.model, self.layer, x, rows_target(target_fn, rows), self.method
            )  # (b, C', h, w) each
            parts.append(upsample(self.combine(acts, grads), states))
        return torch.cat(parts)


def activations_and_gradients(
    model: Model, layer: str, x: torch.Tensor, fn: Callable[[torch.Tensor], torch.Tensor], method: str
) -> tuple[torch.Tensor, torch.Tensor]:
    """The output ``a`` of ``model.net``'s module ``layer`` on ``x`` and ``d sum(fn(model(x))) / d a``
    (one forward hook, one ``autograd.grad``; the parameters' ``.grad`` are not touched)."""
    module = dict(model.net.named_modules())[layer]
    outputs: list[Any] = []

    def record(module: nn.Module, inputs: tuple[Any, ...], output: Any) -> Any:
        outputs.append(output)
        return output.clone()  # later in-place ops (ReLU(inplace=True)) must not alter `a`

    handle = module.register_forward_hook(record)
    try:
        with torch.inference_mode(False), torch.enable_grad():
            score = fn(model(x)).sum()
    finally:
        handle.remove()
    if len(outputs) != 1 or not isinstance(outputs[0], torch.Tensor):
        raise ValueError(
            f"{method} needs layer {layer!r} to give one tensor per forward pass, "
            f"it gave {len(outputs)} outputs; name another layer"
        )
    acts = check_spatial(outputs[0], layer, method)
    (grads,) = torch.autograd.grad(score, acts, allow_unused=True, materialize_grads=True)
    return acts.detach(), grads


def rows_target(target_fn: TargetFn, rows: slice) -> TargetFn:
    """``target_fn`` for the states ``rows``: action indices are picked for those rows only."""
    if target_fn.index is None:  # a callable: applied to whatever rows it is given
        return target_fn
    index = target_fn.index[rows]
    return TargetFn(len(index), index=index)


def find_layer(model: Model, layer: str | None, method: str) -> str:
    """The name of the module of ``model.net`` a layer method explains at: ``layer`` when given,
    else the last conv layer of ``model.conv_layers()``."""
    convs = list(model.conv_layers())
    if layer is None:
        if not convs:
            raise ValueError(
                f"{method} explains at a convolutional layer (its feature maps give the map's "
                f"spatial layout), but this model ({type(model.net).__name__}) has no nn.Conv2d; "
                "pass layer='<module name>' naming a module with (B, C, h, w) output, or use a "
                "method that works on any model, such as 'gradient'"
            )
        return convs[-1]
    if not isinstance(layer, str) or not layer or layer not in dict(model.net.named_modules()):
        raise ValueError(f"{method}: no module named {layer!r} in the model; its conv layers are {convs}")
    return layer


def check_spatial(maps: torch.Tensor, layer: str, method: str) -> torch.Tensor:
    """``maps`` must be ``(b, 1, h, w)``: the layer must give ``(B, C, h, w)`` feature maps."""
    if maps.dim() != 4:
        raise ValueError(
            f"{method} needs (B, C, h, w) feature maps, but layer {layer!r} gives "
            f"{maps.dim()}-d outputs; name a convolutional layer"
        )
    return maps


def upsample(maps: torch.Tensor, states: torch.Tensor) -> torch.Tensor:
    """Layer maps ``(b, 1, h, w)`` -> ``(b, H, W)`` at the states' size, bilinearly."""
    return F.interpolate(maps, size=states.shape[-2:], mode="bilinear", align_corners=False)[:, 0]
