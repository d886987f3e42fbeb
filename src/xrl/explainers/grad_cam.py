"""Grad-CAM (Selvaraju et al. 2017, "Grad-CAM: Visual Explanations from Deep Networks via
Gradient-based Localization").

At a convolutional layer with feature maps ``A^c (h, w)`` the weight of channel ``c`` is the
spatial mean of the target's gradient, ``alpha_c = mean_p d f / d A^c(p)``, and the map is
``ReLU(sum_c alpha_c A^c)``, upsampled bilinearly (``align_corners=False``) to the state's
``(H, W)``. Channels and stacked frames of the input do not enter: the map lives on the layer's
spatial grid, so no channel reduction is needed.

Settings: ``layer``, the name of a module of ``model.net`` as in ``model.conv_layers()``
(e.g. ``"features_extractor.cnn.4"``); by default the last conv layer, as in the paper. The
layer's *output* is used, which for a ``Conv2d`` is before its activation; name the activation
module after it (e.g. ``"features_extractor.cnn.5"``, an ``nn.ReLU``) to use rectified maps.

Wraps Captum's ``LayerGradCam`` (``relu_attributions=True``) on chunks of ``batch_size`` states.
A model without conv layers is refused with a ``ValueError`` saying why.
"""
from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F
from captum.attr import LayerGradCam

from xrl.agents.model import Model
from xrl.explainers.base import EXPLAINERS, Explainer, chunks


@EXPLAINERS.register("grad_cam")
class GradCam(Explainer):
    """Grad-CAM (Selvaraju et al. 2017) at the last conv layer or ``layer``; Captum.

    Example::

        explainer = get_explainer("grad_cam", model)                   # last conv layer
        saliency = explainer.explain(states, targets=lambda q: q.max(-1).values)  # (B, H, W)
    """

    def __init__(self, model: Model, *, layer: str | None = None, batch_size: int = 256, seed: int = 0) -> None:
        super().__init__(model, batch_size=batch_size, seed=seed)
        self.layer = find_layer(model, layer, "grad_cam")

    def _explain(self, states: torch.Tensor, target_fn: Callable) -> torch.Tensor:
        module = dict(self.model.net.named_modules())[self.layer]
        index = getattr(target_fn, "index", None)  # (B,) when targets are action indices
        parts = []
        for rows in chunks(states.shape[0], self.batch_size):
            x = states[rows].detach().clone().requires_grad_()
            if index is not None:
                cam = LayerGradCam(self.model, module).attribute(x, target=index[rows], relu_attributions=True)
            else:  # callable target: the forward returns (b,), which Captum accepts with target=None
                cam = LayerGradCam(lambda s: target_fn(self.model(s)), module).attribute(x, relu_attributions=True)
            parts.append(upsample(check_spatial(cam, self.layer, "grad_cam"), states))
        return torch.cat(parts)


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
        raise ValueError(f"{method} needs (B, C, h, w) feature maps, but layer {layer!r} gives "
                         f"{maps.dim()}-d outputs; name a convolutional layer")
    return maps


def upsample(maps: torch.Tensor, states: torch.Tensor) -> torch.Tensor:
    """Layer maps ``(b, 1, h, w)`` -> ``(b, H, W)`` at the states' size, bilinearly."""
    return F.interpolate(maps, size=states.shape[-2:], mode="bilinear", align_corners=False)[:, 0]

