"""Load agents as :class:`~xrl.agents.model.Model`: SB3 ``.zip`` files (PPO, A2C, DQN), xrl
checkpoints (``.pt`` + ``.json`` card) and zoo names (``zoo/<name>/agent.pt``).

An xrl checkpoint holds the SB3 policy's ``state_dict`` and what is needed to rebuild it (the
registered architecture, observation shape, action count), and is loaded with
``weights_only=True``. Its card (same stem, ``.json``) records the env and settings, the
training command, seed and measured score.
"""
from __future__ import annotations

import json
import os
import zipfile
from pathlib import Path

import gymnasium as gym
import numpy as np
import torch
from torch import nn

from xrl.compat import quiet_old_gym

quiet_old_gym()  # before Stable-Baselines3, which imports the old gym when installed
from stable_baselines3 import A2C, DQN, PPO  # noqa: E402
from stable_baselines3.common.base_class import BaseAlgorithm  # noqa: E402
from stable_baselines3.common.policies import ActorCriticPolicy, BasePolicy  # noqa: E402

import xrl  # noqa: E402
from xrl.agents.model import Model  # noqa: E402
from xrl.agents.nets import ARCHS  # noqa: E402
from xrl.files import atomic_path, write_json  # noqa: E402

CHECKPOINT_FORMAT = "xrl.agent"
ZOO_DIR = Path(os.environ.get("XRL_ZOO", Path(__file__).resolve().parents[3] / "zoo"))
_SB3_ALGOS = {"ppo": PPO, "a2c": A2C, "dqn": DQN}


class _ActorScores(nn.Module):
    """The actor (logits) of an SB3 actor-critic policy, fed states already scaled to [0, 1]."""

    def __init__(self, policy: BasePolicy) -> None:
        super().__init__()
        self.policy = policy

    def forward(self, states: torch.Tensor) -> torch.Tensor:
        p = self.policy
        features = p.pi_features_extractor(states)
        return p.action_net(p.mlp_extractor.forward_actor(features))


class _QValues(nn.Module):
    """The online Q-network of an SB3 DQN policy (its target copy is left out, so that layer
    lookups such as Grad-CAM's last conv layer find the network that acts)."""

    def __init__(self, q_net: nn.Module) -> None:
        super().__init__()
        self.q_net = q_net

    def forward(self, states: torch.Tensor) -> torch.Tensor:
        return self.q_net.q_net(self.q_net.features_extractor(states))


class _CriticValue(nn.Module):
    def __init__(self, policy: ActorCriticPolicy) -> None:
        super().__init__()
        self.policy = policy

    def forward(self, states: torch.Tensor) -> torch.Tensor:
        p = self.policy
        return p.value_net(p.mlp_extractor.forward_critic(p.vf_features_extractor(states)))


def model_from_policy(policy: BasePolicy, *, action_names=None, info: dict | None = None) -> Model:
    """Wrap an SB3 policy (PPO/A2C actor-critic or DQN) as a Model."""
    space = policy.observation_space
    if not isinstance(space, gym.spaces.Box) or len(space.shape) != 3:
        raise ValueError(f"xrl explains image observations (C, H, W); this policy observes {space}")
    if space.shape[0] > space.shape[-1]:
        raise ValueError(
            f"observation space {space.shape} looks channels-last; xrl expects (C, H, W) "
            "(SB3 wraps such envs in VecTransposeImage: use the transposed space)"
        )
    normalized = getattr(policy, "normalize_images", True) and space.dtype == np.uint8
    is_ac = isinstance(policy, ActorCriticPolicy)
    policy.set_training_mode(False)
    return Model(
        _ActorScores(policy) if is_ac else _QValues(policy.q_net), input_shape=space.shape, action_names=action_names,
        n_actions=int(policy.action_space.n),
        score_kind="logits" if is_ac else "q_values",
        value_net=_CriticValue(policy) if is_ac else None,
        obs_scale=255.0 if normalized else 1.0, info=info,
    )


def save_agent(algo: BaseAlgorithm, path: str | os.PathLike, *, arch: str, card: dict) -> Path:
    """Write an xrl checkpoint (``.pt``) of a trained SB3 model and its card (``.json``) atomically."""
    return save_policy(algo.policy, path, algo=type(algo).__name__.lower(), arch=arch, card=card)


def save_policy(policy: BasePolicy, path: str | os.PathLike, *, algo: str, arch: str, card: dict) -> Path:
    """Write an xrl checkpoint of an SB3 policy (``algo``: ``"ppo"``, ``"a2c"`` or ``"dqn"``, how
    :func:`build_policy` rebuilds it) and its card, atomically."""
    path = Path(path)
    payload = {
        "format": CHECKPOINT_FORMAT, "version": 1, "algo": algo, "arch": arch,
        "obs_shape": list(policy.observation_space.shape), "n_actions": int(policy.action_space.n),
        "state_dict": {k: v.detach().cpu() for k, v in policy.state_dict().items()},
    }
    with atomic_path(path) as tmp:
        torch.save(payload, tmp)
    write_json(path.with_suffix(".json"), {**card, "xrl_version": xrl.__version__, "arch": arch})
    return path


def load_agent(path_or_name: str | os.PathLike, *, device: str = "cpu") -> Model:
    """A Model from a zoo name, a run folder, an SB3 ``.zip`` or an xrl ``.pt`` checkpoint.

    A run folder (``zoo/NAME`` or the ``--out`` of ``xrl train agent``) means its ``agent.pt``.
    """
    path = Path(path_or_name)
    if path.is_dir():
        if not (path / "agent.pt").exists():
            hint = (f"; the run is unfinished, its latest checkpoint is {path / 'checkpoint.zip'}"
                    if (path / "checkpoint.zip").exists() else "")
            raise ValueError(f"folder {str(path)!r} has no agent.pt (a finished training run writes one){hint}")
        path = path / "agent.pt"
    elif not path.exists():
        zoo = ZOO_DIR / str(path_or_name) / "agent.pt"
        if zoo.exists():
            path = zoo
        else:
            known = sorted(p.parent.name for p in ZOO_DIR.glob("*/agent.pt"))
            raise ValueError(
                f"no agent file {str(path_or_name)!r} and no zoo agent of that name; zoo agents: "
                f"{', '.join(known) or '(none)'}; or give an SB3 .zip or an xrl .pt path"
            )
    card_path = path.with_suffix(".json")
    card = json.loads(card_path.read_text()) if card_path.exists() else {}
    info = {"env": card.get("env"), "card": card, "source": str(path)}
    if path.suffix == ".zip":
        model = _load_sb3_zip(path, device, info)
    elif path.suffix == ".pt":
        model = _load_checkpoint(path, device, info)
    else:
        raise ValueError(f"agent files are SB3 .zip or xrl .pt checkpoints, got {path.name!r}")
    return model.to(device)


def _load_sb3_zip(path: Path, device: str, info: dict) -> Model:
    if not zipfile.is_zipfile(path):
        raise ValueError(f"{path} is not a zip file; expected an SB3 model saved with model.save()")
    # schedules pickled by other Python versions cannot always be rebuilt; they are not needed
    custom = {"learning_rate": 0.0, "lr_schedule": lambda _: 0.0, "clip_range": lambda _: 0.0,
              "exploration_schedule": lambda _: 0.0}
    errors = []
    for name, algo in _SB3_ALGOS.items():
        try:
            loaded = algo.load(path, device=device, custom_objects=custom)
        except Exception as err:  # wrong algorithm class: try the next one
            errors.append(f"{name}: {type(err).__name__}: {err}")
            continue
        names = info["card"].get("action_names")
        return model_from_policy(loaded.policy, action_names=names, info=info)
    raise ValueError(f"{path} is not a loadable SB3 PPO/A2C/DQN model:\n  " + "\n  ".join(errors))


def build_policy(arch: str, obs_shape, n_actions: int, algo: str = "ppo") -> BasePolicy:
    """An untrained SB3 policy of a registered architecture (to load a state_dict into)."""
    obs_space = gym.spaces.Box(0, 255, tuple(obs_shape), dtype=np.uint8)
    act_space = gym.spaces.Discrete(int(n_actions))
    kwargs = ARCHS.get(arch).policy_kwargs()
    if algo == "dqn":
        from stable_baselines3.dqn.policies import DQNPolicy
        return DQNPolicy(obs_space, act_space, lambda _: 0.0, **kwargs)
    return ActorCriticPolicy(obs_space, act_space, lambda _: 0.0, **kwargs)


def _fits(arch: str, payload: dict) -> bool:
    """Whether the checkpoint's weights load into architecture ``arch``."""
    try:
        build_policy(arch, payload["obs_shape"], payload["n_actions"], payload["algo"]).load_state_dict(
            payload["state_dict"])
    except Exception:
        return False
    return True


def _load_checkpoint(path: Path, device: str, info: dict) -> Model:
    try:
        payload = torch.load(path, map_location=device, weights_only=True)
    except Exception as err:
        raise ValueError(f"{path} is not a readable xrl checkpoint (torch.load failed: {err})") from err
    if not isinstance(payload, dict) or payload.get("format") != CHECKPOINT_FORMAT:
        raise ValueError(f"{path} is not an xrl agent checkpoint (no '{CHECKPOINT_FORMAT}' marker)")
    policy = build_policy(payload["arch"], payload["obs_shape"], payload["n_actions"], payload["algo"])
    try:
        policy.load_state_dict(payload["state_dict"])
    except RuntimeError as err:
        fits = [a for a in ARCHS.names() if a != payload["arch"] and _fits(a, payload)]
        hint = (f"the weights fit architecture {fits[0]!r}" if fits else
                f"they fit no registered architecture ({', '.join(ARCHS.names())})")
        detail = [line.strip() for line in str(err).splitlines()[1:3] if line.strip()]
        raise ValueError(
            f"{path}: its weights do not fit architecture {payload['arch']!r} with observations "
            f"{payload['obs_shape']}; {hint}. torch: {' '.join(detail)[:300]}"
        ) from err
    return model_from_policy(policy, action_names=info["card"].get("action_names"), info=info)


def _score_text(score: dict) -> str:
    """A card's measured score in words: success rate and/or mean return over N episodes, or a
    classifier's validation accuracy."""
    if "val_accuracy" in score:
        return f"validation accuracy {score['val_accuracy']:.3f}"
    if "mean_return" not in score:
        return ""
    text = (f"return {score['mean_return']:.4g} ± {score.get('std_return', float('nan')):.3g} "
            f"over {score.get('episodes', '?')} episodes")
    if score.get("success_rate") is not None:  # share of positive returns: goal reached, game won
        text += f", {score['success_rate']:.0%} positive"
    return text


def zoo_cards(zoo_dir: str | os.PathLike | None = None) -> list[dict]:
    """One row per zoo model (a folder with ``agent.json`` or ``classifier.json``), sorted by name:
    ``name, kind, env, arch, trained, planned, finished, score, score_sampled, command, path``.

    ``trained`` counts what the card says was trained (PPO timesteps, DIGR updates or classifier
    epochs) and ``planned`` what its command asks for (None where the card does not say);
    ``finished`` is False for a run stopped short of its plan (its folder keeps the checkpoint
    that the card's command resumes)."""
    zoo = Path(zoo_dir) if zoo_dir is not None else ZOO_DIR
    if not zoo.is_dir():
        raise ValueError(f"zoo folder {str(zoo)!r} does not exist (set XRL_ZOO or pass a folder)")
    rows = []
    for card_path in sorted([*zoo.glob("*/agent.json"), *zoo.glob("*/classifier.json")]):
        card = json.loads(card_path.read_text())
        classifier = card_path.name == "classifier.json"
        env = card.get("env") or {}
        settings = env.get("settings") or {}
        env_text = (env.get("name", "") + (" " + ",".join(f"{k}={v}" for k, v in settings.items())
                                           if settings else "")) if env else card.get("settings", {}).get("data", "")
        if classifier:
            trained = planned = card.get("settings", {}).get("epochs")  # score.epoch: the best one
        elif "updates" in card:
            trained, planned = card["updates"], card.get("updates_planned")
        else:
            trained, planned = card.get("timesteps"), card.get("timesteps_planned")
        rows.append({
            "name": card_path.parent.name, "kind": "classifier" if classifier else card.get("algo", "agent"),
            "env": env_text, "arch": card.get("arch") or card.get("settings", {}).get("arch", ""),
            "trained": trained, "planned": planned,
            "finished": not (planned and trained is not None and trained < planned),
            "score": _score_text(card.get("score") or {}),
            "score_sampled": _score_text(card.get("score_sampled") or {}),  # policy agents since 2026-12-02
            "command": card.get("command", ""),
            "path": str(card_path),
        })
    return rows
