"""What each Stable-Baselines3 and sb3-contrib policy scores: the networks a
:class:`~xrl.agents.model.Model` runs (:func:`scores_of`; :func:`xrl.agents.load.model_from_policy`
wraps them).

sb3-contrib's ``.zip`` files are read like Stable-Baselines3's, without unpickling anything
(:func:`xrl.agents.load.sb3_policy`: the policy class named in the plain JSON of ``data``,
imported from the installed ``sb3_contrib``, weights from ``policy.pth`` with
``torch.load(weights_only=True)``). What each policy scores:

- **PPO, A2C** (``ActorCriticPolicy``): the actor's logits (``score_kind`` ``"logits"``) and the
  critic's value.
- **DQN**: the online Q-network's Q-values (``"q_values"``; the target copy is left out).
- **QR-DQN** (Dabney et al., 2018, "Distributional Reinforcement Learning with Quantile
  Regression", arXiv:1710.10044): the quantile network's ``(B, n_quantiles, A)`` output, Q = the
  mean of the quantiles (what ``QRDQNPolicy._predict`` takes the argmax of); ``score_kind``
  ``"q_values"``.
- **TRPO**: its policies are Stable-Baselines3's ``ActorCriticPolicy`` classes: the actor's
  logits and the critic's value, as for PPO.
- **RecurrentPPO** (``CnnLstmPolicy``): the actor's logits after the LSTM, from the recurrent
  state in ``model.net.recurrent_state``: ``None`` (the default) is the zero state of an
  episode's first step; else the ``RNNStates`` sb3-contrib's policy returns, ``(h, c)`` of the
  actor's LSTM, each ``(layers, 1 or B, hidden)``, or xrl's packed form (what
  :meth:`Model.recurrent <xrl.agents.model.Model.recurrent>` sets and a StateDataset records):
  one float32 array of ``recurrent_shape`` = ``(2 or 4, layers, hidden)`` (the actor's ``h``,
  ``c``, then the critic's when it has its own LSTM), shared by every state of a batch, or
  ``(B, 2 or 4, layers, hidden)``, one per state. Every state of a batch is scored from that
  recurrent state, with no step of history replayed; :meth:`RecurrentActorScores.step` also
  returns the state after the step (what xrl's rollouts carry, docs/agents.md#recurrent-agents).
"""

from __future__ import annotations

import contextlib
from typing import Any

import torch
from torch import nn


class ActorScores(nn.Module):
    """The actor (logits) of an SB3 actor-critic policy, fed states already scaled to [0, 1]."""

    def __init__(self, policy: nn.Module) -> None:
        super().__init__()
        self.policy = policy

    def forward(self, states: torch.Tensor) -> torch.Tensor:
        p: Any = self.policy
        features = p.pi_features_extractor(states)
        out: torch.Tensor = p.action_net(p.mlp_extractor.forward_actor(features))
        return out


class QValues(nn.Module):
    """The online Q-network of an SB3 DQN policy (its target copy is left out, so that layer
    lookups such as Grad-CAM's last conv layer find the network that acts)."""

    def __init__(self, q_net: nn.Module) -> None:
        super().__init__()
        self.q_net = q_net

    def forward(self, states: torch.Tensor) -> torch.Tensor:
        q: Any = self.q_net
        out: torch.Tensor = q.q_net(q.features_extractor(states))
        return out


class CriticValue(nn.Module):
    """The critic's value of an SB3 actor-critic policy."""

    def __init__(self, policy: nn.Module) -> None:
        super().__init__()
        self.policy = policy

    def forward(self, states: torch.Tensor) -> torch.Tensor:
        p: Any = self.policy
        out: torch.Tensor = p.value_net(p.mlp_extractor.forward_critic(p.vf_features_extractor(states)))
        return out


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

    @property
    def recurrent_shape(self) -> tuple[int, int, int]:
        """One state's packed recurrent state: ``(2 or 4, layers, hidden)``, the actor's ``h`` and
        ``c``, then the critic's when the critic has its own LSTM."""
        p: Any = self.policy
        layers, _, hidden = (int(s) for s in p.lstm_hidden_state_shape)
        return (4 if p.lstm_critic is not None else 2), layers, hidden

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
        elif not isinstance(state, (tuple, list)):  # packed: (k, layers, hidden) or (B, k, layers, hidden)
            state = _unpacked(torch.as_tensor(state, dtype=torch.float32, device=device), which, self.recurrent_shape)
        h, c = (torch.as_tensor(s, dtype=torch.float32, device=device) for s in state)
        if h.dim() != 3 or h.shape != c.shape or h.shape[1] not in (1, batch):
            raise ValueError(
                f"recurrent_state must be (h, c) of shape (layers, 1 or {batch}, hidden), got {tuple(h.shape)}"
            )
        return h.expand(-1, batch, -1).contiguous(), c.expand(-1, batch, -1).contiguous()

    def forward(self, states: torch.Tensor) -> torch.Tensor:
        return self._actor(states)[0]

    def _actor(self, states: torch.Tensor) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor], torch.Tensor]:
        """The logits, the actor's ``(h, c)`` after the step and the actor's features."""
        p: Any = self.policy
        features = p.pi_features_extractor(states)
        starts = torch.zeros(len(states), device=states.device)
        state = self.lstm_state("pi", len(states), states.device)
        with _lstm_backend(states):
            latent, after = p._process_sequence(features, state, starts, p.lstm_actor)
        out: torch.Tensor = p.action_net(p.mlp_extractor.forward_actor(latent))
        return out, after, features

    def step(self, states: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(logits (B, A), the packed state after the step (B, *recurrent_shape))``: the
        states scored from ``recurrent_state``, as sb3-contrib's ``forward`` steps its LSTMs
        (``episode_starts`` 0: a state given is carried, never reset)."""
        p: Any = self.policy
        out, after, features = self._actor(states)
        parts = [after[0], after[1]]
        if p.lstm_critic is not None:
            starts = torch.zeros(len(states), device=states.device)
            vf = self.lstm_state("vf", len(states), states.device)
            shared = p.pi_features_extractor is p.vf_features_extractor
            vf_features = features if shared else p.vf_features_extractor(states)
            with _lstm_backend(states):
                _, critic = p._process_sequence(vf_features, vf, starts, p.lstm_critic)
            parts += [critic[0], critic[1]]
        return out, torch.stack(parts).permute(2, 0, 1, 3)  # (k, layers, B, hidden) -> (B, k, layers, hidden)


def _unpacked(packed: torch.Tensor, which: str, shape: tuple[int, int, int]) -> tuple[torch.Tensor, torch.Tensor]:
    """``(h, c)`` ``(layers, 1 or B, hidden)`` of the actor (``"pi"``) or the critic (``"vf"``) from
    a packed state ``(k, layers, hidden)`` or ``(B, k, layers, hidden)``."""
    if tuple(packed.shape[-3:]) != shape or packed.dim() not in (3, 4):
        raise ValueError(
            f"a packed recurrent state must have shape {shape} or (B, {', '.join(map(str, shape))}), "
            f"got {tuple(packed.shape)}"
        )
    wide = packed.unsqueeze(0) if packed.dim() == 3 else packed  # (B, k, layers, hidden)
    first = 2 if which == "vf" and shape[0] == 4 else 0
    return wide[:, first].transpose(0, 1), wide[:, first + 1].transpose(0, 1)


def _lstm_backend(states: torch.Tensor) -> Any:
    """cuDNN's LSTM cannot backpropagate in eval mode (explainers run the agent in eval mode):
    PyTorch's own LSTM kernels then, when a gradient is taken on a GPU (the block holds the LSTM
    alone: cuDNN's other flags, reset inside it, touch nothing else)."""
    off = states.is_cuda and torch.is_grad_enabled()
    return torch.backends.cudnn.flags(enabled=False) if off else contextlib.nullcontext()


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
            with _lstm_backend(states):
                latent, _ = p._process_sequence(features, state, starts, p.lstm_critic)
        elif p.shared_lstm:
            state = self.scores.lstm_state("pi", len(states), states.device)
            with _lstm_backend(states):
                latent, _ = p._process_sequence(features, state, starts, p.lstm_actor)
        else:
            latent = p.critic(features)
        out: torch.Tensor = p.value_net(p.mlp_extractor.forward_critic(latent))
        return out


def scores_of(policy: nn.Module) -> tuple[nn.Module, nn.Module | None, str]:
    """``(scores net, value net or None, score_kind)`` of an SB3 or sb3-contrib policy (the
    module docstring)."""
    from stable_baselines3.common.policies import ActorCriticPolicy

    if installed():
        from sb3_contrib.common.recurrent.policies import RecurrentActorCriticPolicy
        from sb3_contrib.qrdqn.policies import QRDQNPolicy

        if isinstance(policy, QRDQNPolicy):
            return QuantileMeans(policy.quantile_net), None, "q_values"
        if isinstance(policy, RecurrentActorCriticPolicy):
            scores = RecurrentActorScores(policy)
            return scores, RecurrentValue(scores), "logits"
    if isinstance(policy, ActorCriticPolicy):  # PPO, A2C, TRPO
        return ActorScores(policy), CriticValue(policy), "logits"
    dqn: Any = policy
    return QValues(dqn.q_net), None, "q_values"  # DQN
