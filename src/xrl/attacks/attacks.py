"""Adversarial attacks on an agent's observations: FGSM, PGD, MI-FGSM and MAD (as in DIGR §4.6).

Every attack is a class registered in ``ATTACKS`` with its settings in the constructor and the
data in the call, like the explainers::

    attack = get_attack("pgd", model, eps=0.01)
    adversarial = attack(states)          # (B, C, H, W), |adversarial - states| <= eps everywhere

States are the model's inputs (floats, ``obs / 255`` for image agents); ``eps`` is the L∞ radius
in those units (``eps = 1/255`` changes each pixel by at most one grey level) and every result
is also clipped to ``bounds`` (default ``(0, 1)``, the range of scaled uint8 observations).

- ``fgsm`` (Goodfellow et al. 2015; on RL agents Huang et al. 2017): one step
  ``s + eps * sign(grad L)``, ``L`` the cross-entropy of ``softmax(scores)`` against the
  attacked action (for Q-values the Boltzmann policy, as Huang et al.).
- ``pgd`` (Madry et al. 2018): ``steps`` signed-gradient steps of size ``step_size`` (default
  ``2.5 eps / steps``, Madry's choice) from a uniform random start in the ε-ball, each followed by
  a projection onto the ball and the bounds.
- ``mi_fgsm`` (Dong et al. 2018): ``steps`` steps of ``eps / steps`` along the sign of a momentum
  ``g <- decay * g + grad / ||grad||_1`` (``decay = 1``, the paper's), from the state itself.
- ``mad`` (maximal action difference, Zhang et al. 2020): maximises ``KL(pi(s) || pi(s'))``, how
  far the whole action distribution moves, with PGD steps from a random start (at ``s' = s``
  the KL and its gradient are zero, so a deterministic start would never move).

The attacked action is ``actions`` when given, else the model's argmax on the clean states
(untargeted: push the agent away from what it would do). Randomness (random starts) only through
``seed``: the same attack on the same states gives the same result. The model's parameters,
``.grad`` and train/eval flags are left as they were.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from xrl.agents.model import Model
from xrl.ops import guarded
from xrl.registry import Registry

ATTACKS: Registry[type[Attack]] = Registry("attack")


def get_attack(name: str, model: Model, **settings) -> Attack:
    """Build a registered attack; unknown names list the known ones."""
    return ATTACKS.get(name)(model, **settings)


def list_attacks() -> list[str]:
    return ATTACKS.names()


class Attack:
    """Base class: subclasses implement ``_perturb(states, actions) -> states'``."""

    def __init__(self, model: Model, *, eps: float, bounds: tuple[float, float] = (0.0, 1.0), seed: int = 0) -> None:
        if not isinstance(model, Model):
            raise TypeError(f"attacks take an xrl Model, got {type(model).__name__}; wrap it with xrl.as_model")
        if isinstance(eps, bool) or not float(eps) >= 0:
            raise ValueError(f"eps (L-infinity radius in state units) must be >= 0, got {eps!r}")
        low, high = (float(b) for b in bounds)
        if not low < high:
            raise ValueError(f"bounds must be (low, high) with low < high, got {bounds!r}")
        self.model, self.eps, self.bounds, self.seed = model, float(eps), (low, high), int(seed)
        self._generators = [torch.Generator(device="cpu").manual_seed(self.seed)]  # same starts on every device

    def __call__(self, states: torch.Tensor, actions: torch.Tensor | None = None) -> torch.Tensor:
        """Adversarial states ``(B, C, H, W)`` within ``eps`` (L∞) of ``states`` and in ``bounds``."""
        self.model.check_states(states)
        if self.eps == 0:
            return states.detach().clone()
        with guarded(self.model, states), torch.inference_mode(False), torch.enable_grad():
            clean = states.detach().clone()
            if actions is None:
                with torch.no_grad():
                    actions = self.model(clean).argmax(-1)
            actions = torch.as_tensor(actions, device=states.device).long().reshape(-1)
            if actions.shape[0] != states.shape[0]:
                raise ValueError(f"actions must have one entry per state ({states.shape[0]}), got {actions.shape[0]}")
            if not ((actions >= 0) & (actions < self.model.n_actions)).all():
                raise ValueError(f"actions must be indices in [0, {self.model.n_actions}), got {actions.tolist()}")
            return self._perturb(clean, actions).detach()

    def reseed(self, seed: int | Sequence[int]) -> None:
        """Restart the random stream (e.g. once per evaluation episode). A list of seeds gives
        each row of the following batches its own stream (row ``j`` draws from ``seed[j]``), so
        episodes attacked side by side draw what each would draw alone."""
        seeds = [int(seed)] if isinstance(seed, (int, np.integer)) else [int(s) for s in seed]
        if not seeds:
            raise ValueError("reseed needs at least one seed")
        self._generators = [torch.Generator(device="cpu").manual_seed(s) for s in seeds]

    def _perturb(self, states: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def _loss(self, adversarial: torch.Tensor, states: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
        """What the attack increases (summed over the batch, so each state follows its own gradient)."""
        return F.cross_entropy(self.model(adversarial), actions, reduction="sum")

    def _gradient(self, adversarial: torch.Tensor, states: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
        x = adversarial.detach().requires_grad_(True)
        (grad,) = torch.autograd.grad(self._loss(x, states, actions), [x])
        return grad

    def _project(self, adversarial: torch.Tensor, states: torch.Tensor) -> torch.Tensor:
        """Back into the ε-ball around ``states`` and into ``bounds``."""
        inside = torch.maximum(torch.minimum(adversarial, states + self.eps), states - self.eps)
        return inside.clamp(*self.bounds)

    def _random_start(self, states: torch.Tensor) -> torch.Tensor:
        gens = self._generators
        if len(gens) == 1:
            noise = torch.rand(states.shape, generator=gens[0], device="cpu")
        elif len(gens) == len(states):
            noise = torch.stack([torch.rand(states.shape[1:], generator=g, device="cpu") for g in gens])
        else:
            raise ValueError(
                f"the attack was reseeded with {len(gens)} streams, one per row, "
                f"but got a batch of {len(states)} states"
            )
        noise = noise.to(states) * 2 - 1  # U(-1, 1)
        return self._project(states + self.eps * noise, states)


@ATTACKS.register("fgsm")
class FGSM(Attack):
    """Fast gradient sign method: one step of ``eps`` along the sign of the loss gradient."""

    def _perturb(self, states, actions):
        return self._project(states + self.eps * self._gradient(states, states, actions).sign(), states)


class _Iterative(Attack):
    def __init__(
        self,
        model: Model,
        *,
        eps: float,
        steps: int = 10,
        step_size: float | None = None,
        bounds: tuple[float, float] = (0.0, 1.0),
        seed: int = 0,
    ) -> None:
        super().__init__(model, eps=eps, bounds=bounds, seed=seed)
        if isinstance(steps, bool) or int(steps) != steps or steps < 1:
            raise ValueError(f"steps must be a positive integer, got {steps!r}")
        if step_size is not None and not float(step_size) > 0:
            raise ValueError(f"step_size must be positive (or None for the default), got {step_size!r}")
        self.steps = int(steps)
        self.step_size = float(step_size) if step_size is not None else None


@ATTACKS.register("pgd")
class PGD(_Iterative):
    """Projected gradient descent: signed steps from a random start, projected onto the ε-ball."""

    def _perturb(self, states, actions):
        step = self.step_size or 2.5 * self.eps / self.steps
        x = self._random_start(states)
        for _ in range(self.steps):
            x = self._project(x + step * self._gradient(x, states, actions).sign(), states)
        return x


@ATTACKS.register("mi_fgsm")
class MIFGSM(_Iterative):
    """Momentum iterative FGSM: signed steps along an L1-normalised gradient momentum."""

    def __init__(
        self,
        model: Model,
        *,
        eps: float,
        steps: int = 10,
        step_size: float | None = None,
        decay: float = 1.0,
        bounds: tuple[float, float] = (0.0, 1.0),
        seed: int = 0,
    ) -> None:
        super().__init__(model, eps=eps, steps=steps, step_size=step_size, bounds=bounds, seed=seed)
        if not float(decay) >= 0:
            raise ValueError(f"decay must be >= 0, got {decay!r}")
        self.decay = float(decay)

    def _perturb(self, states, actions):
        step = self.step_size or self.eps / self.steps
        x, momentum = states.clone(), torch.zeros_like(states)
        for _ in range(self.steps):
            grad = self._gradient(x, states, actions)
            l1 = grad.abs().flatten(1).sum(1).clamp_min(1e-12).view(-1, *[1] * (grad.dim() - 1))
            momentum = self.decay * momentum + grad / l1
            x = self._project(x + step * momentum.sign(), states)
        return x


@ATTACKS.register("mad")
class MAD(PGD):
    """Maximal action difference: PGD on ``KL(pi(s) || pi(s'))`` from a random start."""

    def _loss(self, adversarial, states, actions):
        with torch.no_grad():
            log_p = self.model(states).log_softmax(-1)
        log_q = self.model(adversarial).log_softmax(-1)
        return (log_p.exp() * (log_p - log_q)).sum()
