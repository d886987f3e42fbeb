"""NormGrad (Rebuffi et al. 2020, "There and Back Again: Revisiting Backpropagation Saliency
Methods"), a white-box baseline of RExL.

Insert a virtual 1x1 identity convolution after a layer with activations ``a (C, h, w)``; the
gradient of the target with respect to its weights is ``sum_p g(p) a(p)^T`` with
``g(p) = d f / d a(p)``, and NormGrad scores each position by the Frobenius norm of its term:

    saliency(p) = || g(p) a(p)^T ||_F = ||a(p)||_2 * ||g(p)||_2      (norms over channels)

This is the plain (not "selective"), single-layer variant with the 1x1 virtual identity, exactly
what the TorchRay ``normgrad`` branch computes (``gradient_to_norm_grad_saliency``), which RExL
used for its NormGrad baseline. The ``(h, w)`` map is upsampled bilinearly
(``align_corners=False``) to the state's ``(H, W)``; stacked frames enter only through the layer.

Settings: ``layer``, a module name of ``model.net`` (as in ``model.conv_layers()``), whose output
is ``a``. Default: the last conv layer, the last conv block where RExL's reference code applies
it (``features.29`` of VGG16) and where Grad-CAM works, so the two are directly comparable. The
paper's multi-layer aggregation and the selective variant are not implemented.

Hand-written (Captum has no NormGrad): a forward hook records the layer's output on chunks of
``batch_size`` states and ``torch.autograd.grad`` gives ``g``; the hook is always removed.
"""
from __future__ import annotations

from typing import Callable

import torch

from xrl.agents.model import Model
from xrl.explainers.base import EXPLAINERS, Explainer
from xrl.explainers.grad_cam import activations_and_gradients, find_layer, rows_target, upsample
from xrl.ops import chunks


@EXPLAINERS.register("normgrad")
class NormGrad(Explainer):
    """NormGrad (Rebuffi et al. 2020): ``||a(p)|| * ||g(p)||`` at the last conv layer or ``layer``.

    Example::

        explainer = get_explainer("normgrad", model)
        saliency = explainer.explain(states)  # (B, H, W)
    """

    def __init__(self, model: Model, *, layer: str | None = None, batch_size: int = 256, seed: int = 0) -> None:
        super().__init__(model, batch_size=batch_size, seed=seed)
        self.layer = find_layer(model, layer, "normgrad")

    def _explain(self, states: torch.Tensor, target_fn: Callable) -> torch.Tensor:
        parts = []
        for rows in chunks(states.shape[0], self.batch_size):
            x = states[rows].detach().clone().requires_grad_()
            acts, grads = activations_and_gradients(self.model, self.layer, x, rows_target(target_fn, rows),
                                                    "normgrad")  # (b, C', h, w) each
            maps = (acts.norm(dim=1) * grads.norm(dim=1)).unsqueeze(1)  # (b, 1, h, w)
            parts.append(upsample(maps, states))
        return torch.cat(parts)
