"""Localization: does the saliency fall on the pixels known to matter (DIGR section 4.4)?"""

from __future__ import annotations

import torch

from xrl.envs.labels import EXCLUDED, IMPORTANT, UNIMPORTANT
from xrl.errors import SettingTypeError
from xrl.metrics.base import METRICS, Metric
from xrl.ops import minmax


@METRICS.register("localization")
class Localization(Metric):
    """Saliency against a ground-truth label map ``labels (B, H, W)`` (DIGR Table 1).

    Each map is min-max normalised to [0, 1] (a constant map becomes all zeros). Outputs, per
    sample:

    * ``auc``: ROC AUC of the saliency as a score separating important (positive) from
      unimportant (negative) pixels, excluded pixels ignored; exact, ties count 1/2
      (Mann-Whitney). NaN when there is no important or no unimportant pixel. Higher is better.
    * ``important``: sum of normalised saliency over important pixels. Higher is better.
    * ``unimportant``: sum of normalised saliency over unimportant pixels. Lower is better.

    Labels: 1 important, 0 unimportant, -1 excluded (:mod:`xrl.envs.labels`).
    """

    outputs = ("auc", "important", "unimportant")
    higher_is_better = {"auc": True, "important": True, "unimportant": False}
    category = "localization"
    requires = ("labels",)

    def compute(self, *, saliency, labels, **_) -> dict[str, torch.Tensor]:
        labels = _check_labels(labels, saliency)
        b = saliency.shape[0]
        score = minmax(saliency).flatten(1).double()  # (B, N)
        flat = labels.flatten(1)
        pos, neg = flat == IMPORTANT, flat == UNIMPORTANT
        # For each important pixel: unimportant pixels below it, plus half of those tied with it.
        negatives = torch.where(neg, score, torch.full_like(score, float("inf"))).sort(dim=1).values
        below = torch.searchsorted(negatives, score, side="left")
        at_or_below = torch.searchsorted(negatives, score, side="right")
        wins = ((below + at_or_below).double() / 2 * pos).sum(1)  # below + (ties) / 2
        pairs = pos.sum(1).double() * neg.sum(1).double()
        auc = torch.where(
            pairs > 0,
            wins / pairs.clamp_min(1),
            torch.full((b,), float("nan"), dtype=torch.float64, device=score.device),
        )
        return {
            "auc": auc.float(),
            "important": (score * pos).sum(1).float(),
            "unimportant": (score * neg).sum(1).float(),
        }


def _check_labels(labels: torch.Tensor, saliency: torch.Tensor) -> torch.Tensor:
    if not isinstance(labels, torch.Tensor):
        raise SettingTypeError(f"labels must be a (B, H, W) integer tensor, got {type(labels).__name__}")
    if tuple(labels.shape) != tuple(saliency.shape):
        raise ValueError(
            f"labels must have the saliency's shape (B, H, W) = {tuple(saliency.shape)}, got {tuple(labels.shape)}"
        )
    if labels.is_floating_point() or labels.is_complex() or labels.dtype == torch.bool:
        raise SettingTypeError(f"labels must be an integer tensor, got {labels.dtype}")
    known = (labels == IMPORTANT) | (labels == UNIMPORTANT) | (labels == EXCLUDED)
    if not known.all():
        raise ValueError(
            f"labels must hold only {IMPORTANT} (important), {UNIMPORTANT} (unimportant) "
            f"and {EXCLUDED} (excluded), got {sorted(labels[~known].unique().tolist())}"
        )
    return labels.to(saliency.device)
