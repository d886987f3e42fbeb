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
``batch_size`` states and ``torch.autograd.grad`` gives ``g``; the hook is always removed (the
step it shares with Grad-CAM: :class:`~xrl.explainers.layer.LayerExplainer`).
"""

from __future__ import annotations

import torch

from xrl.explainers.base import EXPLAINERS
from xrl.explainers.layer import LayerExplainer


@EXPLAINERS.register("normgrad")
class NormGrad(LayerExplainer):
    """NormGrad (Rebuffi et al. 2020): ``||a(p)|| * ||g(p)||`` at the last conv layer or ``layer``.

    Example::

        explainer = get_explainer("normgrad", model)
        saliency = explainer.explain(states)  # (B, H, W)
    """

    method = "normgrad"

    def combine(self, acts: torch.Tensor, grads: torch.Tensor) -> torch.Tensor:
        return (acts.norm(dim=1) * grads.norm(dim=1)).unsqueeze(1)  # (b, 1, h, w)
