"""Faithfulness: does the agent's answer follow the pixels the saliency map points at?

* ``deletion`` / ``insertion`` (Petsiuk et al. 2018, RISE; used by VisionMask): the target's
  score while pixels are removed from (deletion) or added to (insertion) the state in order of
  decreasing saliency; the value is the area under that curve.
* ``accuracy`` (VisionMask, section 4.2): does the agent keep its action on the state seen
  through the map, ``s * m + r * (1 - m)``?

The protocol (written down once, used for every method; see ``docs/metrics.md``):

* Pixels are the ``(H, W)`` locations; all channels and stacked frames at a location are
  removed or added together. They are ranked by saliency, largest first; ties keep reading
  order (row-major, a stable sort), so the ranking is deterministic.
* A removed pixel takes its value from the substrate ``r (B, C, H, W)``: ``blur`` (Gaussian blur
  of the state), ``noise`` (uniform [0, 1) noise drawn once from ``seed``, the same image for
  every state), ``black`` (0), ``mean`` (each channel's mean over the state), ``background`` (a
  given ``(C, H, W)`` image).
* The curve has a point after every ``ceil(step_fraction * H * W)`` pixels, from 0 pixels to
  all of them (the last step may be shorter). Its x axis is the fraction of pixels perturbed.
* The score is the softmax probability of the target (``score="probability"``) or its raw
  score (``"logit"``). Targets default to the agent's action (argmax) on the unperturbed state.
* AUC = trapezoidal integral of the curve over the fraction in [0, 1], i.e. the mean score along
  the curve; it lies in [0, 1] for probabilities. Lower is better for deletion, higher for
  insertion. Perturbed states are scored in chunks of ``batch_size``; the value does not depend
  on it.
"""
from __future__ import annotations

import math

import torch

from xrl.agents.model import Model
from xrl.explainers.base import chunks, guarded, target_function
from xrl.explainers.masks import gaussian_blur
from xrl.metrics.base import METRICS, Metric, check_saliency, minmax

SUBSTRATES = ("blur", "noise", "black", "mean", "background")
SCORES = ("probability", "logit")


class Substrate:
    """What removed pixels are replaced with: ``substrate(states (B, C, H, W)) -> (B, C, H, W)``.

    ``blur_kernel=None`` takes ``2 * ceil(3 * blur_sigma) + 1``; image borders are replicated.
    """

    def __init__(
        self,
        kind: str = "blur",
        *,
        blur_sigma: float = 5.0,
        blur_kernel: int | None = None,
        background: torch.Tensor | None = None,
        seed: int = 0,
    ) -> None:
        if kind not in SUBSTRATES:
            raise ValueError(f"substrate must be one of {SUBSTRATES}, got {kind!r}")
        if not blur_sigma > 0:
            raise ValueError(f"blur_sigma must be positive, got {blur_sigma!r}")
        if blur_kernel is None:
            blur_kernel = 2 * math.ceil(3 * blur_sigma) + 1
        if int(blur_kernel) < 1 or int(blur_kernel) % 2 == 0:
            raise ValueError(f"blur_kernel must be a positive odd integer, got {blur_kernel!r}")
        if kind == "background":
            if not isinstance(background, torch.Tensor) or background.dim() != 3:
                raise ValueError("substrate='background' needs background= a (C, H, W) tensor in the "
                                 f"model's input space, got {type(background).__name__}"
                                 f"{tuple(background.shape) if isinstance(background, torch.Tensor) else ''}")
        elif background is not None:
            raise ValueError(f"background= is only used with substrate='background', not {kind!r}")
        self.kind = kind
        self.blur_sigma = float(blur_sigma)
        self.blur_kernel = int(blur_kernel)
        self.background = background
        self.seed = int(seed)

    def __call__(self, states: torch.Tensor) -> torch.Tensor:
        if self.kind == "black":
            return torch.zeros_like(states)
        if self.kind == "mean":
            return states.mean(dim=(2, 3), keepdim=True).expand_as(states)
        if self.kind == "blur":
            return gaussian_blur(states, self.blur_sigma, kernel_size=self.blur_kernel)
        if self.kind == "noise":
            # drawn on the CPU so the same seed gives the same image on every device
            noise = torch.rand(states.shape[1:], generator=torch.Generator().manual_seed(self.seed))
            return noise.to(states).expand_as(states)
        if tuple(self.background.shape) != tuple(states.shape[1:]):
            raise ValueError(f"background has shape {tuple(self.background.shape)} but states are "
                             f"(B, {', '.join(map(str, states.shape[1:]))})")
        return self.background.to(states).expand_as(states)


def target_indices(model: Model, states: torch.Tensor, targets) -> torch.Tensor:
    """``(B,)`` action indices: validated ``targets``, or the model's argmax when ``None``."""
    if callable(targets) and not isinstance(targets, torch.Tensor):
        raise TypeError("this metric needs target indices (None, an int or a (B,) tensor), "
                        "not a callable")
    return target_function(model, states, targets).index


def _check_model(model: Model, states: torch.Tensor) -> None:
    if not isinstance(model, Model):
        raise TypeError(f"metrics take an xrl Model, got {type(model).__name__}; "
                        "wrap it with xrl.as_model")
    model.check_states(states)


class _Curve(Metric):
    """Deletion and insertion differ only in which image the top-ranked pixels come from.

    ``substrate=None`` takes the metric's default: ``black`` for deletion, ``blur`` for insertion.
    """

    requires = ("model",)
    category = "faithfulness"
    insert: bool
    default_substrate: str

    def __init__(
        self,
        *,
        substrate: str | None = None,
        step_fraction: float = 0.02,
        score: str = "probability",
        batch_size: int = 256,
        seed: int = 0,
        blur_sigma: float = 5.0,
        blur_kernel: int | None = None,
        background: torch.Tensor | None = None,
    ) -> None:
        if not 0 < step_fraction <= 1:
            raise ValueError(f"step_fraction must be in (0, 1], got {step_fraction!r}")
        if score not in SCORES:
            raise ValueError(f"score must be one of {SCORES}, got {score!r}")
        if int(batch_size) < 1:
            raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
        kind = self.default_substrate if substrate is None else substrate
        self.substrate = Substrate(kind, blur_sigma=blur_sigma, blur_kernel=blur_kernel,
                                   background=background, seed=seed)
        self.step_fraction = float(step_fraction)
        self.score = score
        self.batch_size = int(batch_size)

    def curve(
        self, *, model: Model, states: torch.Tensor, saliency: torch.Tensor, targets=None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Fractions of pixels perturbed ``(T,)`` and the target's score there ``(B, T)``."""
        check_saliency(states, saliency)
        _check_model(model, states)
        b, _, h, w = states.shape
        n = h * w
        with guarded(model, states), torch.no_grad():
            index = target_indices(model, states, targets)
            reference = self.substrate(states)
            source, start = (states, reference) if self.insert else (reference, states)
            order = torch.argsort(saliency.reshape(b, n), dim=1, descending=True, stable=True)
            rank = torch.empty_like(order).scatter_(1, order, torch.arange(n, device=order.device).expand(b, n))
            step = max(1, math.ceil(round(self.step_fraction * n, 9)))
            counts = torch.cat([torch.arange(0, n, step), torch.tensor([n])]).to(states.device)  # (T,)
            t = counts.numel()
            scores = torch.empty(b * t, dtype=torch.float64, device=states.device)
            for part in chunks(b * t, self.batch_size):
                pairs = torch.arange(part.start, part.stop, device=states.device)
                i, k = pairs // t, counts[pairs % t]
                moved = (rank[i] < k[:, None]).view(-1, 1, h, w)  # (chunk, 1, H, W): all channels
                out = model(torch.where(moved, source[i], start[i]))  # (chunk, K)
                if self.score == "probability":
                    out = torch.softmax(out, dim=-1)
                scores[part] = out.gather(1, index[i, None]).squeeze(1).double()
        return counts.double() / n, scores.view(b, t)

    def compute(self, *, model, states, saliency, targets=None, **_) -> torch.Tensor:
        fractions, scores = self.curve(model=model, states=states, saliency=saliency, targets=targets)
        return torch.trapezoid(scores, fractions, dim=1).float()


@METRICS.register("deletion")
class Deletion(_Curve):
    """AUC of the target's probability as the most salient pixels are replaced by the substrate
    (default ``black``, as in RISE). Lower is better. See the module docstring for the protocol."""

    higher_is_better = False
    insert = False
    default_substrate = "black"


@METRICS.register("insertion")
class Insertion(_Curve):
    """AUC of the target's probability as the most salient pixels are put back into the substrate
    (default ``blur``, as in RISE). Higher is better. See the module docstring for the protocol."""

    higher_is_better = True
    insert = True
    default_substrate = "blur"


@METRICS.register("accuracy")
class Accuracy(Metric):
    """1 when the agent's action on ``s * m + r * (1 - m)`` is the target, else 0 (VisionMask).

    ``m (B, 1, H, W)`` is the saliency min-max normalised per map (``normalize="minmax"``; a
    constant map keeps nothing) or taken as is (``"none"``, for maps already in [0, 1] such as
    VisionMask's masks). ``r`` is the substrate, ``black`` by default (VisionMask's own default
    is an environment-specific background image: pass ``substrate="background",
    background=...``). Targets default to the action on the unmasked state.
    """

    higher_is_better = True
    category = "faithfulness"
    requires = ("model",)

    def __init__(
        self,
        *,
        substrate: str = "black",
        normalize: str = "minmax",
        seed: int = 0,
        blur_sigma: float = 5.0,
        blur_kernel: int | None = None,
        background: torch.Tensor | None = None,
    ) -> None:
        if normalize not in ("minmax", "none"):
            raise ValueError(f"normalize must be 'minmax' or 'none', got {normalize!r}")
        self.normalize = normalize
        self.substrate = Substrate(substrate, blur_sigma=blur_sigma, blur_kernel=blur_kernel,
                                   background=background, seed=seed)

    def compute(self, *, model, states, saliency, targets=None, **_) -> torch.Tensor:
        _check_model(model, states)
        if self.normalize == "none" and ((saliency < 0) | (saliency > 1)).any():
            raise ValueError("normalize='none' needs saliency in [0, 1]; use normalize='minmax'")
        mask = (minmax(saliency) if self.normalize == "minmax" else saliency).unsqueeze(1)
        with guarded(model, states), torch.no_grad():
            index = target_indices(model, states, targets)
            masked = states * mask + self.substrate(states) * (1 - mask)
            kept = model(masked).argmax(-1) == index
        return kept.float()
