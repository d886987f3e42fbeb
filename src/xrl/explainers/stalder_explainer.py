"""The Explainer of Stalder et al. 2022 ("What you see is what you classify: black box
attributions"), the learned baseline of VisionMask: the same mask network and contract as
``visionmask`` (``xrl.explainers.visionmask``), trained with the Explainer's losses
(``xrl train stalder-explainer``; :func:`xrl.train.visionmask.stalder_losses`).

``get_explainer("stalder_explainer", model, network="runs/stalder-explainer/stalder_explainer.pt")``.
"""

from __future__ import annotations

from xrl.explainers.base import EXPLAINERS
from xrl.explainers.visionmask import VisionMask


@EXPLAINERS.register("stalder_explainer")
class StalderExplainer(VisionMask):
    """Stalder et al. 2022 Explainer: a trained network's mask per class (action), one forward pass."""

    method = "stalder_explainer"
