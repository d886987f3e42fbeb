"""CleanRL's torch Atari agents (``runs/NAME/*.cleanrl_model``) as :class:`~xrl.agents.model.Model`.

CleanRL (Huang et al., 2022, "CleanRL: High-quality Single-file Implementations of Deep
Reinforcement Learning Algorithms", JMLR 23(274)) saves ``torch.save(net.state_dict(), path)``
(``c51_atari.py``: ``{"model_weights": state_dict, "args": vars(args)}``). Nothing else in the
file says which network it is, so the network is recognised by its parameter names and shapes,
as the scripts declare it (vwxyzjn/cleanrl, ``cleanrl/dqn_atari.py``, ``ppo_atari.py``,
``c51_atari.py``):

- ``dqn_atari.py`` ``QNetwork``: ``network`` = Nature CNN ``Sequential`` (``Conv2d(4, 32, 8, 4)``,
  ``Conv2d(32, 64, 4, 2)``, ``Conv2d(64, 64, 3, 1)``, ``Linear(3136, 512)``, ``Linear(512, A)``,
  ReLUs between) -> Q-values;
- ``ppo_atari.py`` ``Agent``: the same trunk ending at ``Linear(3136, 512)`` + ReLU, ``actor`` =
  ``Linear(512, A)`` (logits), ``critic`` = ``Linear(512, 1)`` (the value head);
- ``c51_atari.py`` ``QNetwork``: the DQN trunk ending at ``Linear(512, A * n_atoms)``, and the buffer
  ``atoms`` (``linspace(v_min, v_max, n_atoms)``); Q = the expected value of the atoms under
  ``softmax`` over each action's atom logits (what the script's ``get_action`` computes).

Every script divides the observation by 255 inside ``forward``; xrl's states are already
``obs / 255`` (the Model contract), so the Model applies the layers to them directly.

The file is read with ``torch.load(weights_only=True)`` only: nothing in it runs. JAX/Flax models
(``*_jax.py``, saved with ``flax.serialization``) are out of scope and refused.

The env (the agent's recorded ``info["env"]``): CleanRL's Atari pipeline, ``gym:ENV_ID`` with
``atari="cleanrl"`` (NoopReset 30, MaxAndSkip 4, EpisodicLife, FireReset, ClipReward),
``resize=84, gray=True, frame_stack=4`` (:mod:`xrl.envs.gym_env`). ``ENV_ID`` comes from the
file's ``args`` (C51) or from the run folder CleanRL names ``{env_id}__{exp_name}__{seed}__{time}``;
when neither names it, the env is unknown (pass ``--env``).
"""

from __future__ import annotations

import os
import re
import zipfile
from pathlib import Path

import torch
from torch import nn

from xrl.agents.model import Model
from xrl.artifacts import ArtifactError, sha256

SUFFIX = ".cleanrl_model"
EXPECTED = (
    "the state_dict of a CleanRL torch Atari network: dqn_atari.py's QNetwork (network.0-9), "
    "ppo_atari.py's Agent (network.0-7, actor, critic) or c51_atari.py's QNetwork (network.0-9, atoms) "
    "(JAX/Flax models, *_jax.py, are out of scope)"
)
_TRUNK = {  # index in ``network`` -> (kind, expected shape with None for free sizes)
    "0": ("conv", (32, None, 8, 8)),
    "2": ("conv", (64, 32, 4, 4)),
    "4": ("conv", (64, 64, 3, 3)),
    "7": ("linear", (512, None)),
}
SCREEN = 84


def _trunk(channels: int, flat: int) -> list[nn.Module]:
    return [
        nn.Conv2d(channels, 32, 8, stride=4),
        nn.ReLU(),
        nn.Conv2d(32, 64, 4, stride=2),
        nn.ReLU(),
        nn.Conv2d(64, 64, 3, stride=1),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(flat, 512),
        nn.ReLU(),
    ]


class CleanRLQNetwork(nn.Module):
    """dqn_atari.py's QNetwork on states already divided by 255: Q-values ``(B, A)``."""

    def __init__(self, channels: int, flat: int, n_actions: int) -> None:
        super().__init__()
        self.network = nn.Sequential(*_trunk(channels, flat), nn.Linear(512, n_actions))

    def forward(self, states: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.network(states)
        return out


class CleanRLC51(nn.Module):
    """c51_atari.py's QNetwork on states already divided by 255: Q = E[atoms] per action ``(B, A)``."""

    def __init__(self, channels: int, flat: int, n_actions: int, n_atoms: int) -> None:
        super().__init__()
        self.n, self.n_atoms = n_actions, n_atoms
        self.register_buffer("atoms", torch.zeros(n_atoms))
        self.network = nn.Sequential(*_trunk(channels, flat), nn.Linear(512, n_actions * n_atoms))

    def forward(self, states: torch.Tensor) -> torch.Tensor:
        logits = self.network(states)
        pmfs = torch.softmax(logits.view(len(states), self.n, self.n_atoms), dim=2)
        atoms: torch.Tensor = self.atoms  # type: ignore[assignment]
        q: torch.Tensor = (pmfs * atoms).sum(2)
        return q


class CleanRLAgent(nn.Module):
    """ppo_atari.py's Agent on states already divided by 255: the actor's logits ``(B, A)``."""

    def __init__(self, channels: int, flat: int, n_actions: int) -> None:
        super().__init__()
        self.network = nn.Sequential(*_trunk(channels, flat))
        self.actor = nn.Linear(512, n_actions)
        self.critic = nn.Linear(512, 1)

    def forward(self, states: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.actor(self.network(states))
        return out


class _Critic(nn.Module):
    def __init__(self, agent: CleanRLAgent) -> None:
        super().__init__()
        self.agent = agent

    def forward(self, states: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.agent.critic(self.agent.network(states))
        return out


def read_cleanrl(path: str | os.PathLike) -> tuple[dict, dict]:
    """The state dict and the plain ``args`` (empty when absent) of a ``.cleanrl_model`` file,
    read with ``torch.load(weights_only=True)``."""
    path = Path(path)
    if path.exists() and not zipfile.is_zipfile(path):  # torch.save writes a zip; flax.serialization msgpack
        raise ArtifactError(path, "is not a torch file (torch.save writes a zip archive)", EXPECTED)
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise
    except Exception as err:
        first = (str(err).strip().splitlines() or [type(err).__name__])[0]
        if "weights_only" in str(err) or "Unsupported global" in str(err):
            found = f"holds Python objects other than weights (loading it would run code: {first[:120]})"
        else:
            found = f"is not a torch file ({type(err).__name__}: {first[:120]})"
        raise ArtifactError(path, found, EXPECTED) from None
    args: dict = {}
    if isinstance(payload, dict) and isinstance(payload.get("model_weights"), dict):
        args = payload["args"] if isinstance(payload.get("args"), dict) else {}
        payload = payload["model_weights"]
    if not isinstance(payload, dict) or not payload or not all(isinstance(v, torch.Tensor) for v in payload.values()):
        what = type(payload).__name__ if not isinstance(payload, dict) else "a dict that is not all tensors"
        raise ArtifactError(path, f"holds {what}", EXPECTED)
    return dict(payload), args


def recognise(path: str | os.PathLike, state: dict) -> dict:
    """Which CleanRL network ``state`` is: ``{"algo": "dqn"|"ppo"|"c51", "channels", "flat",
    "n_actions", "n_atoms"}``, or an :class:`ArtifactError` naming what was expected."""
    shapes = {k: tuple(v.shape) for k, v in state.items()}
    trunk = {f"network.{i}.{p}" for i in _TRUNK for p in ("weight", "bias")}

    def refuse(why: str) -> ArtifactError:
        keys = ", ".join(sorted(shapes)[:8]) + (", ..." if len(shapes) > 8 else "")
        return ArtifactError(path, f"is not a recognised CleanRL network ({why}; it holds {keys})", EXPECTED)

    if not trunk <= set(shapes):
        raise refuse("no Nature-CNN trunk network.0/2/4/7")
    for i, (_kind, want) in _TRUNK.items():
        have = shapes[f"network.{i}.weight"]
        if len(have) != len(want) or any(w is not None and w != h for w, h in zip(want, have)):
            raise refuse(f"network.{i}.weight has shape {list(have)}, CleanRL's is {list(want)} (None: any)")
    channels, flat = shapes["network.0.weight"][1], shapes["network.7.weight"][1]
    side = ((SCREEN - 8) // 4 + 1 - 4) // 2 + 1 - 2  # 84 -> 20 -> 9 -> 7
    if flat != 64 * side * side:
        raise refuse(f"network.7 takes {flat} features, CleanRL's {SCREEN}x{SCREEN} screens give {64 * side * side}")
    rest = set(shapes) - trunk
    head = {"network.9.weight", "network.9.bias"}
    ac = {"actor.weight", "actor.bias", "critic.weight", "critic.bias"}
    if rest == ac:
        n = shapes["actor.weight"][0]
        if shapes["actor.weight"] != (n, 512) or shapes["critic.weight"] != (1, 512):
            raise refuse("actor/critic are not Linear(512, A) / Linear(512, 1)")
        return {"algo": "ppo", "channels": channels, "flat": flat, "n_actions": n, "n_atoms": None}
    if rest in (head, head | {"atoms"}) and len(shapes["network.9.weight"]) == 2:
        out, width = shapes["network.9.weight"]
        if width != 512:
            raise refuse("network.9 is not Linear(512, ...)")
        if "atoms" not in rest:
            return {"algo": "dqn", "channels": channels, "flat": flat, "n_actions": out, "n_atoms": None}
        atoms = shapes["atoms"]
        if len(atoms) != 1 or atoms[0] < 2 or out % atoms[0]:
            raise refuse(f"atoms has shape {list(atoms)}, not (n_atoms,) dividing network.9's {out} outputs")
        return {"algo": "c51", "channels": channels, "flat": flat, "n_actions": out // atoms[0], "n_atoms": atoms[0]}
    extra = sorted(rest - head - ac - {"atoms"})
    raise refuse(f"entries {extra[:4]} belong to no CleanRL Atari network" if extra else "its heads are incomplete")


def env_id_of(path: Path, args: dict) -> str | None:
    """The Gymnasium id the agent played: the file's ``args["env_id"]``, else the run folder's
    ``{env_id}__{exp_name}__{seed}__{time}`` name."""
    named = args.get("env_id")
    if isinstance(named, str) and named:
        return named
    parts = path.resolve().parent.name.split("__")
    if len(parts) == 4 and re.fullmatch(r"[\w/.:-]+-v\d+", parts[0]) and parts[2].isdigit():
        return parts[0]
    return None


def env_spec(env_id: str, frame_stack: int) -> dict:
    """The ``{"name", "settings"}`` of CleanRL's Atari pipeline for ``env_id`` (as make_env records it)."""
    return {
        "name": f"gym:{env_id}",
        "settings": {
            "wrappers": [],
            "atari": "cleanrl",
            "atari_kwargs": {},
            "resize": [SCREEN, SCREEN],
            "gray": True,
            "frame_stack": frame_stack,
            "frame_stack_padding": "reset",
        },
    }


def _action_names(env_id: str | None, n: int) -> list[str] | None:
    """ALE's meanings of the game's actions, when the id is an ALE game with ``n`` actions."""
    if env_id is None:
        return None
    try:
        import ale_py
        import gymnasium as gym

        gym.register_envs(ale_py)
        env = gym.make(env_id)
        try:
            names = list(env.unwrapped.get_action_meanings())
        finally:
            env.close()
    except Exception:
        return None
    return names if len(names) == n else None


def load_cleanrl(path: str | os.PathLike, *, device: str = "cpu") -> Model:
    """A Model of a CleanRL ``.cleanrl_model`` file (module docstring). Its weights are always
    read: the file has no settings beside them, the network is known from their shapes."""
    path = Path(path)
    state, args = read_cleanrl(path)
    kind = recognise(path, state)
    c, flat, n = kind["channels"], kind["flat"], kind["n_actions"]
    net: nn.Module
    if kind["algo"] == "ppo":
        net = CleanRLAgent(c, flat, n)
    elif kind["algo"] == "c51":
        net = CleanRLC51(c, flat, n, kind["n_atoms"])
    else:
        net = CleanRLQNetwork(c, flat, n)
    net.load_state_dict(state)
    env_id = env_id_of(path, args)
    env = env_spec(env_id, c) if env_id else None
    card = {
        "format": "cleanrl",
        "algo": kind["algo"],
        "script": {"dqn": "dqn_atari.py", "ppo": "ppo_atari.py", "c51": "c51_atari.py"}[kind["algo"]],
        "source": str(path),
        "sha256": sha256(path),
        "env": env,
        "args": {k: v for k, v in args.items() if isinstance(v, (str, int, float, bool, type(None)))},
    }
    return Model(
        net,
        input_shape=(c, SCREEN, SCREEN),
        action_names=_action_names(env_id, n),
        n_actions=n,
        score_kind="logits" if kind["algo"] == "ppo" else "q_values",
        value_net=_Critic(net) if isinstance(net, CleanRLAgent) else None,
        obs_scale=255.0,
        input_range=(0.0, 1.0),
        info={"env": env, "card": card, "source": str(path)},
    ).to(device)
