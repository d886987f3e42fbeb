"""sb3-contrib agents (QR-DQN, TRPO, RecurrentPPO) as :class:`~xrl.agents.model.Model`.

Their ``.zip`` files are read like Stable-Baselines3's, without unpickling anything
(:func:`xrl.agents.load.sb3_policy`: the policy class named in the plain JSON of ``data``,
imported from the installed ``sb3_contrib``, weights from ``policy.pth`` with
``torch.load(weights_only=True)``). What each policy scores:

- **QR-DQN** (Dabney et al., 2018, "Distributional Reinforcement Learning with Quantile
  Regression", arXiv:1710.10044): the quantile network's ``(B, n_quantiles, A)`` output, Q = the
  mean of the quantiles (what ``QRDQNPolicy._predict`` takes the argmax of); ``score_kind``
  ``"q_values"``.
- **TRPO**: its policies are Stable-Baselines3's ``ActorCriticPolicy`` classes: the actor's
  logits and the critic's value, as for PPO.
- **RecurrentPPO** (``CnnLstmPolicy``): the actor's logits after the LSTM, from the recurrent
  state in ``model.net.recurrent_state`` (``None``, the default, is the zero state of an episode's
  first step; else the ``RNNStates`` sb3-contrib's policy returns, or ``(h, c)`` of the actor's
  LSTM, each ``(layers, 1 or B, hidden)``). Every state of a batch is scored from that one
  recurrent state, with no step of history replayed. xrl's rollouts (``collect``, ``watch``,
  ``serve``, attacks) do not carry the state from step to step yet, so they refuse these agents
  (``model.info["recurrent"]``); explain states you score with the state set by hand
  (docs/agents.md).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn


def installed() -> bool:
    import importlib.util

    return importlib.util.find_spec("sb3_contrib") is not None


def algorithms() -> dict[str, Any]:
    """sb3-contrib's algorithm classes by name (what ``trust=True`` tries), empty if not installed."""
    if not installed():
        return {}
    from sb3_contrib import QRDQN, TRPO, RecurrentPPO

    return {"qrdqn": QRDQN, "trpo": TRPO, "recurrentppo": RecurrentPPO}


class QuantileMeans(nn.Module):
    """A QR-DQN quantile network on states already scaled: the mean of each action's quantiles."""

    def __init__(self, quantile_net: nn.Module) -> None:
        super().__init__()
        self.quantile_net = quantile_net

    def forward(self, states: torch.Tensor) -> torch.Tensor:
        q: Any = self.quantile_net
        quantiles = q.quantile_net(q.features_extractor(states))
        out: torch.Tensor = quantiles.view(-1, int(q.n_quantiles), int(q.action_space.n)).mean(1)
        return out


class RecurrentActorScores(nn.Module):
    """RecurrentPPO's actor logits from ``recurrent_state`` (module docstring)."""

    recurrent_state: Any

    def __init__(self, policy: nn.Module) -> None:
        super().__init__()
        self.policy = policy
        self.recurrent_state = None

    def lstm_state(self, which: str, batch: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """The ``(h, c)`` fed to the actor's (``"pi"``) or the critic's (``"vf"``) LSTM for ``batch`` states."""
        p: Any = self.policy
        state = self.recurrent_state
        if state is None:
            shape = tuple(p.lstm_hidden_state_shape)
            zeros = torch.zeros(shape[0], batch, shape[2], device=device)
            return zeros, zeros
        if hasattr(state, "pi"):
            state = getattr(state, which)
        h, c = (torch.as_tensor(s, dtype=torch.float32, device=device) for s in state)
        if h.dim() != 3 or h.shape != c.shape or h.shape[1] not in (1, batch):
            raise ValueError(
                f"recurrent_state must be (h, c) of shape (layers, 1 or {batch}, hidden), got {tuple(h.shape)}"
            )
        return h.expand(-1, batch, -1).contiguous(), c.expand(-1, batch, -1).contiguous()

    def forward(self, states: torch.Tensor) -> torch.Tensor:
        p: Any = self.policy
        features = p.pi_features_extractor(states)
        starts = torch.zeros(len(states), device=states.device)
        state = self.lstm_state("pi", len(states), states.device)
        latent, _ = p._process_sequence(features, state, starts, p.lstm_actor)
        out: torch.Tensor = p.action_net(p.mlp_extractor.forward_actor(latent))
        return out


class RecurrentValue(nn.Module):
    """RecurrentPPO's value from the same recurrent state as the actor scores."""

    def __init__(self, scores: RecurrentActorScores) -> None:
        super().__init__()
        self.scores = scores

    def forward(self, states: torch.Tensor) -> torch.Tensor:
        p: Any = self.scores.policy
        features = p.vf_features_extractor(states)
        starts = torch.zeros(len(states), device=states.device)
        if p.lstm_critic is not None:
            state = self.scores.lstm_state("vf", len(states), states.device)
            latent, _ = p._process_sequence(features, state, starts, p.lstm_critic)
        elif p.shared_lstm:
            state = self.scores.lstm_state("pi", len(states), states.device)
            latent, _ = p._process_sequence(features, state, starts, p.lstm_actor)
        else:
            latent = p.critic(features)
        out: torch.Tensor = p.value_net(p.mlp_extractor.forward_critic(latent))
        return out


def scores_of(policy: nn.Module) -> tuple[nn.Module, nn.Module | None, str] | None:
    """``(scores net, value net or None, score_kind)`` for an sb3-contrib policy that is not one
    of Stable-Baselines3's own classes; ``None`` for other policies."""
    if not installed():
        return None
    from sb3_contrib.common.recurrent.policies import RecurrentActorCriticPolicy
    from sb3_contrib.qrdqn.policies import QRDQNPolicy

    if isinstance(policy, QRDQNPolicy):
        return QuantileMeans(policy.quantile_net), None, "q_values"
    if isinstance(policy, RecurrentActorCriticPolicy):
        scores = RecurrentActorScores(policy)
        return scores, RecurrentValue(scores), "logits"
    return None
