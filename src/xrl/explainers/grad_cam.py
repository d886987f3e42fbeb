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

By hand on chunks of ``batch_size`` states: one forward hook on the layer and one
``autograd.grad`` (:class:`~xrl.explainers.layer.LayerExplainer`, shared with ``normgrad``),
which equals Captum's ``LayerGradCam`` with ``relu_attributions=True`` (tested) without its
per-call overhead. A model without conv layers is refused with a ``ValueError`` saying why.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from xrl.explainers.base import EXPLAINERS
from xrl.explainers.layer import LayerExplainer


@EXPLAINERS.register("grad_cam")
class GradCam(LayerExplainer):
    """Grad-CAM (Selvaraju et al. 2017) at the last conv layer or ``layer``.

    Example::

        explainer = get_explainer("grad_cam", model)                   # last conv layer
        saliency = explainer.explain(states, targets=lambda q: q.max(-1).values)  # (B, H, W)
    """

    method = "grad_cam"

    def combine(self, acts: torch.Tensor, grads: torch.Tensor) -> torch.Tensor:
        alpha = grads.mean(dim=(2, 3), keepdim=True)  # (b, C', 1, 1): spatial mean of the gradient
        return F.relu((alpha * acts).sum(1, keepdim=True))  # (b, 1, h, w)
