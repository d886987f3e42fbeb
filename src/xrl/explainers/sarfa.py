"""SARFA, Specific and Relevant Feature Attribution (Puri et al. 2020, "Explain Your Move:
Understanding Agent Actions Using Specific and Relevant Feature Attribution", ICLR 2020).

The perturbations are Greydanus et al.'s Gaussian-blur masks (:mod:`xrl.explainers.greydanus`:
a Gaussian mask of std ``radius`` at every ``stride``-th pixel blends the state with its blur of
std ``blur_sigma``). For the explained action ``a``, with ``P = softmax(scores)`` (policy
probabilities for logits, the softmax of Q-values for a DQN, as in the paper):

- specificity ``dP = P(s)[a] - P(s')[a]``: how much the perturbation lowers ``a``'s probability;
- relevance ``1 / (1 + KL)`` with ``KL = KL(P_rem(s) || P_rem(s'))``, where ``P_rem`` are the
  *other* actions' probabilities renormalised to sum to 1 (the softmax of their scores alone):
  a perturbation that reshuffles the other actions is less specific to ``a``;
- saliency ``2 * dP * relevance / (dP + relevance)``, their harmonic mean, where ``dP > 0``,
  and 0 where the perturbation does not lower ``a``'s probability.

**Decision (KL direction):** the paper writes the relative entropy between the remaining
actions' distributions of ``s`` and ``s'``; the direction here, ``KL(P_rem(s) || P_rem(s'))``
(original first), is the one of the authors' released code for Atari and chess
(``scipy.stats.entropy(original, perturbed)``). The score grid is upsampled bilinearly with each
grid value on its own pixel (the Atari code resized with ``imresize`` and rescaled the peak).

``targets`` must be action indices (``None`` = the agent's argmax action, an int or a ``(B,)``
tensor): both terms are defined by one action against the others, so a callable target (value,
logit difference) is refused with a ``TypeError``; use ``occlusion``, ``rise`` or
``greydanus(score="target")`` for those. ``explain_all[:, k]`` is the SARFA map of action ``k``,
all K from the same perturbed batch, so it costs what ``explain`` costs.

Settings: Puri et al. reuse Greydanus' Atari settings (``radius=5``, ``stride=5``, blur std 3 on
80x80 frames: the defaults). DIGR compares against SARFA with Greydanus' settings of each task
(``radius=4`` on Red-Fetch-Green, 8 on Breakout, 5 on CARLA), e.g.
``get_explainer("sarfa", model, radius=4)`` for Red-Fetch-Green.

Cost: as ``greydanus``, ``B * (ceil(H/stride) * ceil(W/stride) + 1)`` forward passes in chunks of
``batch_size`` rows under ``torch.inference_mode()``; results do not depend on ``batch_size``.
Measured on 84x84x4 states with a Nature CNN (2 shared CPU cores): ~1.4x the floor (the same
number of forward passes in one batch), all actions at once.
"""

from __future__ import annotations

import torch

from xrl.agents.model import Model
from xrl.explainers.base import EXPLAINERS
from xrl.explainers.greydanus import Greydanus
from xrl.ops import chunks


@EXPLAINERS.register("sarfa")
class Sarfa(Greydanus):
    """SARFA (Puri et al. 2020): specificity x relevance over Greydanus' blur; action-index targets only.

    Its perturbations and their per-action scores are Greydanus' (``score="target"``: the raw
    scores of every action before and after each perturbation); SARFA's formula replaces
    Greydanus' score.

    Example::

        explainer = get_explainer("sarfa", model, radius=4)
        saliency = explainer.explain(states)        # (B, H, W), the agent's own action
        per_action = explainer.explain_all(states)  # (B, K, H, W)
    """

    per_action = True
    callable_targets = False
    callable_refusal = (
        "sarfa needs action indices as targets (None, an int or a (B,) tensor), not a callable: "
        "its specificity is the change of one action's softmax probability and its relevance "
        "compares the other actions' probabilities. Explain values or logit differences with "
        "'occlusion', 'rise' or greydanus(score='target')."
    )

    def __init__(
        self,
        model: Model,
        *,
        radius: float = 5.0,
        stride: int = 5,
        blur_sigma: float = 3.0,
        incremental: bool = False,
        batch_size: int = 512,
        seed: int = 0,
    ) -> None:
        super().__init__(
            model,
            radius=radius,
            stride=stride,
            blur_sigma=blur_sigma,
            score="target",
            incremental=incremental,
            batch_size=batch_size,
            seed=seed,
        )

    def effects(self, base, perturbed, target_fn):
        if target_fn is None:
            actions = torch.arange(base.shape[1], device=base.device).expand_as(base)  # (B, K): every action
        else:
            actions = target_fn.index[:, None]  # (B, 1); callables are refused before the run
        step = max(1, self.batch_size // actions.shape[1])  # chunks of states bound the expansion
        parts = [sarfa_scores(base[rows], perturbed[rows], actions[rows]) for rows in chunks(base.shape[0], step)]
        return torch.cat(parts)


def sarfa_scores(base: torch.Tensor, perturbed: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
    """SARFA ``(B, A, N)`` of each perturbation for each explained action, from the scores
    ``base (B, K)`` of the states, ``perturbed (B, N, K)`` of their perturbations and the
    actions ``actions (B, A)`` to explain. All actions at once: a few large tensor operations
    (``B * A * N * K`` elements) rather than a loop of small ones."""
    (b, n, k), a = perturbed.shape, actions.shape[1]
    p_a = base.softmax(-1).gather(1, actions)  # (B, A)
    q_a = perturbed.softmax(-1).gather(2, actions[:, None].expand(b, n, a)).transpose(1, 2)  # (B, A, N)
    specificity = p_a[..., None] - q_a
    # the other actions' renormalised probabilities are the softmax of their scores alone
    every = torch.arange(k, device=base.device)
    others = every.expand(b, a, k)[every != actions[..., None]].view(b, a, k - 1)  # (B, A, K-1)
    log_rem = base[:, None].expand(b, a, k).gather(2, others).log_softmax(-1)[:, :, None]  # (B, A, 1, K-1)
    log_rem_perturbed = (
        perturbed[:, None].expand(b, a, n, k).gather(3, others[:, :, None].expand(b, a, n, k - 1)).log_softmax(-1)
    )  # (B, A, N, K-1)
    kl = (log_rem.exp() * (log_rem - log_rem_perturbed)).sum(-1).clamp_min(0)  # KL(P_rem(s) || P_rem(s')) >= 0
    relevance = 1.0 / (1.0 + kl)
    harmonic = 2 * specificity * relevance / (specificity + relevance)
    return torch.where(specificity > 0, harmonic, torch.zeros_like(harmonic))
