"""Agreement with human gaze (FLS section 4.3, following Bylinskii et al. 2018): NSS, KL
divergence and shuffled AUC of saliency maps against fixation maps.

``labels (B, H', W')`` are fixation counts: how many eye fixations fell in each pixel while the
human saw the frames behind the state (:mod:`xrl.data.atari_head` builds them from Atari-HEAD,
the 8 raw frames of one stacked state sharing their fixations). Pixels labelled ``-1`` (xrl's
*excluded*, :mod:`xrl.envs.labels`) are left out of every computation; every other value must be a
count ``>= 0``. When ``(H', W')`` differs from the saliency's ``(H, W)``, each map is bilinearly
resized to the fixation map's size first (the paper: 84×84 maps upscaled to the 160×210 screen).
A frame without fixations gives NaN (undefined; left out of means).

On object label maps (Red-Fetch-Green, Atari RAM ground truth: 1 important, 0 unimportant) the
important pixels act as one fixation each, so these metrics then measure agreement with the
labelled objects, not with humans.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from xrl.envs.labels import EXCLUDED
from xrl.errors import SettingTypeError
from xrl.metrics.base import METRICS, Metric
from xrl.ops import gaussian_blur

_EPS = torch.finfo(torch.float64).eps


class _Gaze(Metric):
    category = "human_agreement"
    requires = ("labels",)

    def _maps(self, saliency: torch.Tensor, labels: torch.Tensor):
        """``(scores, counts, valid)`` as ``(B, H'*W')`` float64 / float64 / bool, saliency resized
        to the fixation maps' size; ``(H', W')`` too."""
        fixations = _check_fixations(labels, saliency)
        size = tuple(fixations.shape[1:])
        s = saliency.double()
        if tuple(s.shape[1:]) != size:
            s = F.interpolate(s.unsqueeze(1), size=size, mode="bilinear", align_corners=False).squeeze(1)
        valid = fixations != EXCLUDED
        counts = torch.where(valid, fixations, torch.zeros_like(fixations)).double()
        return s.flatten(1), counts.flatten(1), valid.flatten(1), size


@METRICS.register("nss")
class NSS(_Gaze):
    """Normalized scanpath saliency (Peters et al. 2005): mean standardised saliency at the fixations.

    The saliency is standardised to zero mean and unit variance over the frame's pixels and
    averaged over the fixations (weighted by their counts). 0 = chance; a constant map (zero variance, which the paper calls undefined) ranks no
    pixel above another and gets 0."""

    higher_is_better = True

    def compute(self, *, saliency, labels, **_) -> torch.Tensor:
        s, counts, valid, _ = self._maps(saliency, labels)
        n = valid.sum(1, keepdim=True).clamp_min(1)
        mean = (s * valid).sum(1, keepdim=True) / n
        std = ((((s - mean) * valid) ** 2).sum(1, keepdim=True) / n).sqrt()  # population std
        standard = torch.where(std > 0, (s - mean) / torch.where(std > 0, std, 1.0), 0.0)
        total = counts.sum(1)
        value = (standard * counts).sum(1) / total.clamp_min(1)
        return torch.where(total > 0, value, torch.nan).float()


@METRICS.register("gaze_kl")
class GazeKL(_Gaze):
    """KL divergence ``D(F || S)`` of the saliency S from the blurred fixation map F (sigma 5 px).

    F: fixation counts blurred with a Gaussian of std ``sigma`` pixels of the fixation map (5 in
    the paper, on the 160×210 screen; borders replicated), normalised to sum 1. S: the saliency
    shifted to a minimum of 0 if it has negative values, normalised to sum 1 (a map summing to 0
    is uniform). ``KL = sum F log(eps + F / (S + eps))`` with ``eps`` = float64 machine epsilon
    (Bylinskii et al. 2018), so a map equal to the blurred fixations gives 0 and pixels where
    S = 0 < F are heavily penalised instead of infinite. Lower is better."""

    higher_is_better = False

    def __init__(self, sigma: float = 5.0) -> None:
        if not float(sigma) >= 0:
            raise ValueError(f"sigma must be >= 0 (pixels of the fixation map), got {sigma!r}")
        self.sigma = float(sigma)

    def compute(self, *, saliency, labels, **_) -> torch.Tensor:
        s, counts, valid, size = self._maps(saliency, labels)
        blurred = gaussian_blur(counts.view(-1, *size), self.sigma).flatten(1) * valid
        s = torch.where(valid, s, torch.inf)
        low = s.amin(1, keepdim=True).clamp_max(0)  # shift only maps with negative values
        s = torch.where(valid, s - low, 0.0)
        q = _distribution(s, valid)
        p = _distribution(blurred, valid)
        kl = (p * torch.log(_EPS + p / (q + _EPS))).sum(1)
        return torch.where(counts.sum(1) > 0, kl, torch.nan).float()


@METRICS.register("shuffled_auc")
class ShuffledAUC(_Gaze):
    """Shuffled AUC (Borji et al. 2013): this frame's fixations against other frames' fixations.

    ROC AUC of the saliency separating the frame's fixated pixels (positives, weighted by fixation counts) from pixels fixated in *other* frames
    (negatives, weighted likewise), so a centre bias shared by all frames scores at chance.
    Exact (Mann-Whitney, ties count 1/2) instead of the usual 100 random draws of negatives
    (whose expectation it is). 0.5 = chance; a constant map gives 0.5.

    Other frames: ``negatives (H', W')``, the fixation counts summed over the whole recording or
    dataset (including the scored frames; each frame's own fixations are subtracted), or, when
    ``None``, the other frames of the same batch (then the value depends on the batch: pass
    ``negatives`` for results independent of batching). NaN when there are no negatives."""

    higher_is_better = True

    def __init__(self, negatives: torch.Tensor | None = None) -> None:
        if negatives is not None:
            if not isinstance(negatives, torch.Tensor) or negatives.dim() != 2:
                raise ValueError("negatives must be an (H, W) tensor of fixation counts over the dataset")
            if negatives.is_floating_point() or negatives.dtype == torch.bool or (negatives < 0).any():
                raise ValueError("negatives must hold integer fixation counts >= 0")
        self.negatives = negatives

    def compute(self, *, saliency, labels, **_) -> torch.Tensor:
        s, counts, valid, size = self._maps(saliency, labels)
        if self.negatives is None:
            others = counts.sum(0, keepdim=True) - counts
        else:
            if tuple(self.negatives.shape) != size:
                raise ValueError(f"negatives has shape {tuple(self.negatives.shape)}, the fixation maps {size}")
            others = self.negatives.to(s.device).double().flatten()[None] - counts
            if (others < 0).any():
                raise ValueError(
                    "negatives must include the scored frames' fixations (it is the sum "
                    "over the dataset); a frame has more fixations in a pixel than negatives"
                )
        others = others * valid
        order = s.argsort(1)
        scores = s.gather(1, order)
        cumulative = others.gather(1, order).cumsum(1)  # negatives' weight at or below each sorted score
        cumulative = F.pad(cumulative, (1, 0))
        below = cumulative.gather(1, torch.searchsorted(scores, s, side="left"))
        at_or_below = cumulative.gather(1, torch.searchsorted(scores, s, side="right"))
        wins = (counts * (below + at_or_below) / 2).sum(1)
        pairs = counts.sum(1) * others.sum(1)
        return torch.where(pairs > 0, wins / pairs.clamp_min(1), torch.nan).float()


def _distribution(x: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """Rows of ``x >= 0`` normalised to sum 1 over ``valid`` pixels (uniform where a row sums to 0)."""
    total = x.sum(1, keepdim=True)
    uniform = valid / valid.sum(1, keepdim=True).clamp_min(1)
    return torch.where(total > 0, x / torch.where(total > 0, total, 1.0), uniform)


def _check_fixations(labels: torch.Tensor, saliency: torch.Tensor) -> torch.Tensor:
    if not isinstance(labels, torch.Tensor):
        raise SettingTypeError(f"labels must be (B, H, W) integer fixation counts, got {type(labels).__name__}")
    if labels.dim() != 3 or labels.shape[0] != saliency.shape[0]:
        raise ValueError(
            f"labels must be fixation maps (B, H, W) with B = {saliency.shape[0]}, got {tuple(labels.shape)}"
        )
    if labels.is_floating_point() or labels.is_complex() or labels.dtype == torch.bool:
        raise SettingTypeError(f"labels must be integer fixation counts, got {labels.dtype}")
    if ((labels < 0) & (labels != EXCLUDED)).any():
        raise ValueError(
            f"fixation counts must be >= 0 ({EXCLUDED} = excluded pixel), got "
            f"{sorted(labels[(labels < 0) & (labels != EXCLUDED)].unique().tolist())}"
        )
    return labels.to(saliency.device)
