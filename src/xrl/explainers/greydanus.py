"""Gaussian-blur perturbation saliency (Greydanus et al. 2018, "Visualizing and Understanding
Atari Agents"), the perturbation baseline of DIGR and FLS.

For every ``stride``-th pixel ``(i, j)`` a Gaussian mask ``M`` of std ``radius`` centred there
blends the state with a blurred copy, ``s' = s * (1 - M) + blur(s) * M`` (blur std
``blur_sigma`` = 3 as in Greydanus), and the saliency of ``(i, j)`` is how much the policy moves:

- ``score="l2"`` (default, Greydanus): ``1/2 ||pi(s) - pi(s')||^2`` on softmax probabilities;
- ``score="kl"`` (DIGR's actor-critic variant): ``KL(pi(s) || pi(s'))``;
- ``score="target"``: ``|f(s) - f(s')|`` with ``f`` the explained target (an action's score, or
  any callable such as a value or a logit difference), e.g. ``|Q(s, a) - Q(s', a)|``.

With ``"l2"`` and ``"kl"`` the score is over all actions and ``targets`` is ignored (it is still
validated). ``explain_all`` returns each action's term of the score from the same perturbed
batch: ``1/2 (p_k(s) - p_k(s'))^2`` for ``"l2"`` and ``p_k(s) (log p_k(s) - log p_k(s'))`` for
``"kl"`` (signed), so the K maps sum to ``explain``; for ``"target"`` it is
``|score_k(s) - score_k(s')|``, i.e. ``explain_all[:, k] == explain(targets=k)``.

The score grid ``(H', W')`` is upsampled bilinearly to ``(H, W)``, each grid value on its own
pixel. Masks of all stacked frames/channels are the same (the perturbation is spatial).

Settings from the papers: Greydanus use ``radius=5, stride=5`` on 80x80 Atari frames; DIGR use
``radius=4`` on Red-Fetch-Green, ``radius=8`` on Breakout and ``radius=5`` on CARLA, e.g.
``get_explainer("greydanus", model, radius=8)`` for Breakout.

Cost: ``B * (ceil(H/stride) * ceil(W/stride) + 1)`` forward passes (each state rides along
with its perturbations), run in chunks of ``batch_size`` states under
``torch.inference_mode()``; the result does not depend on ``batch_size``. Masks are built
once per size and cached (:func:`perturbation_masks`).
"""
from __future__ import annotations

from typing import Callable

import torch

from xrl.agents.model import Model
from xrl.explainers.base import EXPLAINERS, Explainer, Targets
from xrl.explainers.masks import (gaussian_blur, mask_centres, perturbation_masks, perturbed_scores,
                                  upsample_grid)

SCORES = ("l2", "kl", "target")


@EXPLAINERS.register("greydanus")
class Greydanus(Explainer):
    """Gaussian-blur perturbation saliency; see the module docstring.

    Example::

        explainer = get_explainer("greydanus", model, radius=8, stride=5)
        saliency = explainer.explain(states)        # (B, H, W)
        per_action = explainer.explain_all(states)  # (B, K, H, W)
    """

    per_action = True

    def __init__(
        self,
        model: Model,
        *,
        radius: float = 5.0,
        stride: int = 5,
        blur_sigma: float = 3.0,
        score: str = "l2",
        batch_size: int = 512,  # a whole 84x84 state at stride 5 (290 rows, ~100 MB) in one pass
        seed: int = 0,
    ) -> None:
        super().__init__(model, batch_size=batch_size, seed=seed)
        if not float(radius) > 0:
            raise ValueError(f"radius (std of the Gaussian mask, pixels) must be positive, got {radius!r}")
        if isinstance(stride, bool) or int(stride) != stride or stride < 1:
            raise ValueError(f"stride must be a positive integer, got {stride!r}")
        if not float(blur_sigma) >= 0:
            raise ValueError(f"blur_sigma must be >= 0, got {blur_sigma!r}")
        if score not in SCORES:
            raise ValueError(f"score must be one of {SCORES}, got {score!r}")
        self.radius = float(radius)
        self.stride = int(stride)
        self.blur_sigma = float(blur_sigma)
        self.score = score

    def explain(self, states: torch.Tensor, targets: Targets = None) -> torch.Tensor:
        """Saliency ``(B, H, W)``; with ``"l2"``/``"kl"`` given targets are validated, then unused."""
        if targets is None and self.score != "target":
            targets = _unused  # not resolving the argmax saves a forward pass of the states
        return super().explain(states, targets)

    def _explain(self, states: torch.Tensor, target_fn: Callable) -> torch.Tensor:
        base, perturbed = self._scores(states)  # (B, K), (B, N, K)
        if self.score == "target":
            n, m = perturbed.shape[:2]
            # target_fn repeats per-state indices for state-major copies: (B*N, K) -> (B*N,)
            coarse = (target_fn(perturbed.flatten(0, 1)).view(n, m) - target_fn(base)[:, None]).abs()
        else:
            coarse = self._terms(base, perturbed).sum(-1).clamp_min(0)  # (B, N); KL >= 0 up to rounding
        return self._upsample(coarse[:, None], states)[:, 0]

    def _explain_all(self, states: torch.Tensor) -> torch.Tensor:
        base, perturbed = self._scores(states)
        if self.score == "target":
            terms = (perturbed - base[:, None]).abs()
        else:
            terms = self._terms(base, perturbed)  # (B, N, K)
        return self._upsample(terms.transpose(1, 2), states)

    def _terms(self, base: torch.Tensor, perturbed: torch.Tensor) -> torch.Tensor:
        """Per-action terms ``(B, N, K)`` of the l2 or KL score between pi(s) and pi(s')."""
        if self.score == "l2":
            return 0.5 * (base.softmax(-1)[:, None] - perturbed.softmax(-1)) ** 2
        log_p, log_q = base.log_softmax(-1)[:, None], perturbed.log_softmax(-1)
        return log_p.exp() * (log_p - log_q)

    def _scores(self, states: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Scores of the states ``(B, K)`` and of all their perturbations ``(B, N, K)``."""
        height, width = states.shape[-2:]
        masks = self.masks(height, width, states.device).to(states.dtype)  # no copy for float32
        # each state itself, then its N perturbations, in one state-major batch: no separate pass
        with torch.inference_mode():
            blurred = gaussian_blur(states, self.blur_sigma)
        return perturbed_scores(self.model, states, blurred, masks, self.batch_size)

    def masks(self, height: int, width: int, device: torch.device | str = "cpu") -> torch.Tensor:
        """The cached perturbation masks ``(N, H, W)`` this explainer uses."""
        return perturbation_masks(height, width, self.stride, self.radius, device=torch.device(device))

    def _upsample(self, coarse: torch.Tensor, states: torch.Tensor) -> torch.Tensor:
        """``(B, K, N)`` grid scores -> ``(B, K, H, W)``."""
        height, width = states.shape[-2:]
        rows, cols = mask_centres(height, width, self.stride)
        grid = coarse.reshape(*coarse.shape[:2], len(rows), len(cols))  # (B, K, H', W')
        return upsample_grid(grid, height, width, self.stride)


def _unused(scores: torch.Tensor) -> torch.Tensor:
    raise AssertionError("the l2 and kl scores do not use targets")
