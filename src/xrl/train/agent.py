"""Train an agent with SB3 PPO (or DQN, ``algo="dqn"``), checkpointing at rollout boundaries so
that an interrupted run, resumed, ends exactly where an uninterrupted one would (for envs whose
episodes replay from their seed and actions; others resume with fresh episodes, and say so).

Reads top to bottom: ``AgentArgs`` (every setting, one line of doc each) → ``make_vec_env`` →
``train_agent`` (build or resume, learn with a checkpoint callback, export, evaluate).

Defaults follow the papers: Red-Fetch-Green uses DIGR's Table 2 (16 envs × 128 steps, 4 epochs,
8 minibatches, lr 1e-3, clip 0.2); Atari uses the rl-zoo PPO settings (8 envs × 128 steps,
4 epochs, batch 256, lr 2.5e-4 and clip 0.1 both decayed linearly, rewards clipped in training),
and so do the other screen games (ViZDoom, highway-env, Mario), without reward clipping but
with a reward scale where returns are far from order 1 (``REWARD_SCALES``).

DQN (``algo="dqn"``) takes its settings from ``dqn`` over ``DQN_DEFAULTS``, the recipe
highway-env's authors give for its image observation; its checkpoints add the replay buffer,
so a resumed DQN run also ends where an uninterrupted one does.

Checkpoints (``xrl.train.run``: ``out/checkpoints/<step>/``, one rename) hold no pickle: the
policy and optimizer as tensors (``weights.pt``), counters and RNG states as JSON/tensors, and
the envs as what rebuilds them: each env's current episode (its reset seed, or the RNG states
before its reset) and the actions since, replayed on resume and checked against the saved
observation. A resume rebuilds the algorithm from the settings and loads those. Runs
checkpointed in the old format (``checkpoint.zip`` + the pickled ``checkpoint.state``) resume
only with ``trust_pickle=True`` (``--trust-pickle``); ``--convert-only --trust-pickle`` rewrites
such a checkpoint in the new format without training (:func:`convert_checkpoint`). A run folder
whose ``checkpoints/`` folder is lost but whose ``checkpoint.zip`` remains is refused (a fresh
start would overwrite that zip at its first save); ``--from-weights`` resumes it from the zip's
weights, optimizer and step counters with fresh episodes (:func:`_resume_weights`).

``device`` (``auto``: CUDA when available) is SB3's own ``device=``; it is not part of the run's
identity (a run started on the CPU resumes on CUDA), and checkpoints load on the CPU.
"""

from __future__ import annotations

import collections
import dataclasses
import json
import random
import sys
import time
import zipfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import gymnasium as gym
import numpy as np
import torch
from tqdm import tqdm

from xrl.compat import quiet_old_gym

quiet_old_gym()  # before Stable-Baselines3, which imports the old gym when installed
from stable_baselines3 import DQN, PPO  # noqa: E402
from stable_baselines3.common.atari_wrappers import ClipRewardEnv  # noqa: E402
from stable_baselines3.common.base_class import BaseAlgorithm  # noqa: E402
from stable_baselines3.common.callbacks import BaseCallback  # noqa: E402
from stable_baselines3.common.logger import Logger  # noqa: E402
from stable_baselines3.common.monitor import Monitor  # noqa: E402
from stable_baselines3.common.vec_env import DummyVecEnv  # noqa: E402

from xrl._version import __version__  # noqa: E402
from xrl.agents.load import model_from_policy, save_agent  # noqa: E402
from xrl.agents.model import Model  # noqa: E402
from xrl.envs import make_env  # noqa: E402
from xrl.files import write_json  # noqa: E402
from xrl.ops import resolve_device  # noqa: E402
from xrl.rollout import evaluate_policy  # noqa: E402
from xrl.train.run import (  # noqa: E402
    CHECKPOINTS,
    TRUST_PICKLE,
    Run,
    SettingsError,
    check_pairs,
    check_settings,
    command,  # noqa: E402
    link,
    load_tensors,
    read_json,
    zip_tensors,
)

#: default training reward scale of envs whose returns are far from order 1. ViZDoom basic:
#: -1 per tic (-4 per step), -5 per missed shot, +101 for the kill, returns -300..+100; unscaled,
#: its value loss drowned the policy gradient in the shared trunk (measured: a PPO run at the
#: defaults never shot again after 50k steps, training return -300 on every episode to 230k)
#: Mario: x progress + clock penalty per frame, summed over 4 frames: about +6 per step running
#: right, -13 on the death step, returns about 230 at the first goomba (measured: 3 seeded
#: episodes of a right-biased random policy) and, since the reward is x progress, about 3,000
#: for a cleared stage; 0.1 brings a step to order 1
REWARD_SCALES = {"vizdoom-basic": 0.01, "mario": 0.1}

#: DQN settings (SB3 ``DQN`` keyword arguments) of ``algo="dqn"``, overridden by ``AgentArgs.dqn``:
#: the recipe of highway-env's authors for its grayscale image stack (their
#: ``scripts/sb3_highway_dqn_cnn.py``: 1e5 steps, one env), exploration decaying to the SB3
#: default 0.05 over 70% of the run
DQN_DEFAULTS = dict(
    learning_rate=5e-4,
    buffer_size=15_000,
    learning_starts=200,
    batch_size=32,
    gamma=0.8,
    train_freq=1,
    gradient_steps=1,
    target_update_interval=50,
    exploration_fraction=0.7,
    exploration_final_eps=0.05,
)
ALGOS = ("ppo", "dqn")


@dataclass
class AgentArgs:
    env: str = field(default="red-fetch-green", metadata={"required": True})
    """registered env name (``xrl envs`` lists them)"""
    env_settings: dict = field(default_factory=dict, metadata={"flag": "set"})
    """env setting KEY=VALUE, recorded in the card"""
    algo: str = field(default="ppo", metadata={"choices": ALGOS})
    """PPO (default) or DQN (one env, highway-env's image recipe: xrl.train.agent.DQN_DEFAULTS)"""
    dqn: dict = field(default_factory=dict)
    """DQN setting over the defaults, e.g. buffer_size=50000 (with --algo dqn)"""
    arch: str | None = None
    """registered architecture; None = grid_cnn for grid worlds, nature_cnn for Atari"""
    total_timesteps: int = field(default=1_000_000, metadata={"flag": "timesteps"})
    """agent steps (Atari: one step = 4 frames)"""
    seed: int = 0
    """seeds the policy, the envs (env i gets seed + i) and the evaluation"""
    n_envs: int | None = None
    """envs stepped together; None = 8 for screen games, 16 for grid worlds (DQN: 1)"""
    n_steps: int = 128
    """PPO: steps of each env per rollout"""
    n_epochs: int = 4
    """PPO: passes over each rollout"""
    batch_size: int | None = None
    """PPO: minibatch size; None = 256"""
    learning_rate: float | None = None
    """PPO: Adam step size; None = 2.5e-4 for screen games, 1e-3 for grid worlds"""
    linear_decay: bool | None = None
    """decay learning rate and clip range linearly to 0 (rl-zoo Atari setting)"""
    clip_range: float | None = None
    """PPO: clip range; None = 0.1 for screen games, 0.2 for grid worlds"""
    reward_scale: float | None = None
    """training rewards are multiplied by this (after clipping; logged returns and scores stay the
    game's); None = the env's ``REWARD_SCALES`` entry, else 1"""
    ent_coef: float = 0.01
    """PPO: weight of the entropy bonus"""
    vf_coef: float = 0.5
    """PPO: weight of the value loss"""
    max_grad_norm: float = 0.5
    """PPO: gradient norm clipping"""
    gamma: float = 0.99
    """PPO: discount factor"""
    gae_lambda: float = 0.95
    """PPO: GAE lambda"""
    checkpoint_every: int = 50_000
    """timesteps between checkpoints (rounded up to whole rollouts)"""
    eval_episodes: int = 100
    """seeded episodes for the card's scores: greedy, and for policy agents also sampled"""
    out: str = field(default="runs/agent", metadata={"required": True})
    """run folder: checkpoints/, then agent.pt and agent.json"""
    progress: bool = True
    device: str = "auto"
    """auto|cpu|cuda|cuda:N; auto = CUDA when available"""
    export_only: bool = field(default=False, metadata={"switch": True})
    """export the latest checkpoint of an unfinished run (agent.pt + card) without training"""
    trust_pickle: bool = field(default=False, metadata={"switch": True})
    """resume a checkpoint in the old pickle format (checkpoint.state runs code when loaded)"""
    convert_only: bool = field(default=False, metadata={"switch": True})
    """rewrite an old pickle checkpoint in the new format (no pickle) without training; needs --trust-pickle"""
    from_weights: bool = field(default=False, metadata={"switch": True})
    """PPO: resume a run whose checkpoints/ folder is lost from its checkpoint.zip alone (weights,
    optimizer, step counters); every env starts a fresh seeded episode and the RNG streams are new"""

    LIMITS: ClassVar[dict] = {
        "total_timesteps": ">=1",
        "seed": ">=0",
        "n_envs": ">=1",
        "n_steps": ">=1",
        "n_epochs": ">=1",
        "batch_size": ">=1",
        "learning_rate": ">0",
        "clip_range": ">0",
        "reward_scale": ">0",
        "ent_coef": ">=0",
        "vf_coef": ">=0",
        "max_grad_norm": ">0",
        "gamma": "0..1",
        "gae_lambda": "0..1",
        "checkpoint_every": ">=1",
        "eval_episodes": ">=1",
    }
    #: may change between a run and its resumption (a run started on the CPU resumes on CUDA)
    IGNORED: ClassVar[set] = {"total_timesteps", "progress", "eval_episodes", "checkpoint_every", "out", "device"}

    def resolved(self) -> AgentArgs:
        """Fill the env-family defaults left as None."""
        d = (
            dict(arch="nature_cnn", n_envs=8, batch_size=256, learning_rate=2.5e-4, linear_decay=True, clip_range=0.1)
            if self.screen_game
            else dict(
                arch="grid_cnn", n_envs=16, batch_size=256, learning_rate=1e-3, linear_decay=False, clip_range=0.2
            )
        )
        d["reward_scale"] = REWARD_SCALES.get(self.env, 1.0)
        if self.algo not in ALGOS:
            raise ValueError(f"algo must be one of {', '.join(ALGOS)}, got {self.algo!r}")
        unknown = sorted(set(self.dqn) - set(DQN_DEFAULTS))
        if unknown:
            raise ValueError(f"unknown DQN settings {unknown}; known: {', '.join(DQN_DEFAULTS)}")
        if self.dqn and self.algo != "dqn":
            raise ValueError(f"DQN settings {sorted(self.dqn)} given for algo {self.algo!r}; add algo=dqn (--algo dqn)")
        if self.algo == "dqn":
            d["n_envs"] = 1  # the recipe's single env: one gradient step per env step
        if self.reward_scale is not None and not float(self.reward_scale) > 0:
            raise ValueError(f"reward_scale must be a positive number, got {self.reward_scale!r}")
        check_pairs("dqn", self.dqn, DQN_DEFAULTS)
        out = dataclasses.replace(
            self,
            **{k: (getattr(self, k) if getattr(self, k) is not None else v) for k, v in d.items()},  # type: ignore[arg-type]
        )
        return dataclasses.replace(out, dqn={**DQN_DEFAULTS, **self.dqn}) if self.algo == "dqn" else out

    def recorded(self) -> dict:
        """The settings stored in ``args.json``; a reward scale of 1 and PPO's algo (with its empty
        ``dqn``) are left out, as in runs made before those settings existed, so those resume."""
        d = dataclasses.asdict(self)
        for key in (
            "export_only",
            "trust_pickle",
            "convert_only",
            "from_weights",
        ):  # what to do, not how the agent is made
            del d[key]
        if d.get("reward_scale") == 1.0:
            del d["reward_scale"]
        if d["algo"] == "ppo" and not d["dqn"]:
            del d["algo"], d["dqn"]
        return d

    @property
    def screen_game(self) -> bool:
        """A game seen on screen (Atari, ViZDoom, highway-env, Mario), not a grid world: the
        rl-zoo Atari PPO defaults (Nature CNN, 8 envs); only Atari rewards are clipped."""
        from xrl.envs import FAMILIES

        return FAMILIES.get(self.env, "grid") != "grid"

    @property
    def atari(self) -> bool:
        """An Atari game (any architecture): rl-zoo defaults, rewards clipped in training."""
        from xrl.envs.atari import GAMES

        return self.env in GAMES


class ScaleReward(gym.RewardWrapper):
    """Rewards times ``scale`` (a module-level class, so training checkpoints pickle it)."""

    def __init__(self, env: gym.Env, scale: float) -> None:
        super().__init__(env)
        self.scale = float(scale)

    def reward(self, reward: float) -> float:
        return self.scale * float(reward)


class EpisodeLog(gym.Wrapper):
    """What rebuilds an env's state without pickling it: how its current episode began (the
    reset seed, or the states of the RNGs in its wrapper chain just before an unseeded reset)
    and the actions since. ``start`` is None when that is unknown (an env from an old pickle
    checkpoint, until its episode ends)."""

    def __init__(self, env: gym.Env, *, known: bool = True) -> None:
        super().__init__(env)
        self.start: dict | None = {"seed": None, "rngs": []} if known else None
        self.actions: list[int] = []

    def reset(self, *, seed=None, options=None):
        self.start = {"seed": int(seed)} if seed is not None else {"seed": None, "rngs": capture_rngs(self.env)}
        self.actions = []
        return self.env.reset(seed=seed, options=options)

    def step(self, action):
        self.actions.append(int(action))
        return self.env.step(action)

    def replay(self, start: dict, actions: list[int]) -> np.ndarray:
        """Rebuild the recorded episode: its reset, then its actions; returns the observation."""
        if start["seed"] is None:
            restore_rngs(self.env, start["rngs"])
        obs, _ = self.reset(seed=start["seed"])
        for action in actions:
            obs, *_ = self.step(action)
        return np.asarray(obs)


def _chain(env):
    while env is not None:
        yield env
        env = env.env if isinstance(env, gym.Wrapper) else None


def capture_rngs(env: gym.Env) -> list:
    """``[depth, attribute, state]`` of every numpy Generator held by the wrapper chain, and of
    the Arcade Learning Environment's own RNG (sticky actions draw from it), as JSON."""
    out = []
    for depth, obj in enumerate(_chain(env)):
        for key, value in sorted(vars(obj).items()):
            if isinstance(value, np.random.Generator):
                out.append([depth, key, value.bit_generator.state])
            elif type(value).__name__ == "ALEInterface":  # its state with the RNG, serialized by ALE itself
                import base64

                out.append(
                    [
                        depth,
                        key,
                        {"ale_state": base64.b64encode(value.cloneState(include_rng=True).serialize()).decode("ascii")},
                    ]
                )
    return out


def restore_rngs(env: gym.Env, rngs: list) -> None:
    chain = list(_chain(env))
    for depth, key, state in rngs:
        if "ale_state" in state:
            import base64

            import ale_py

            getattr(chain[depth], key).restoreState(ale_py.ALEState(base64.b64decode(state["ale_state"])))
            continue
        bit_generator = getattr(np.random, state["bit_generator"])()
        bit_generator.state = state
        setattr(chain[depth], key, np.random.Generator(bit_generator))


def make_vec_env(args: AgentArgs) -> DummyVecEnv:
    """``n_envs`` monitored copies of the env; Atari rewards are clipped and all are scaled by
    ``reward_scale`` after the Monitor, so logged returns are game scores. Each is wrapped in
    :class:`EpisodeLog` (what checkpoints record of it)."""

    def builder(i: int):
        def build() -> gym.Env:
            env = Monitor(make_env(args.env, **args.env_settings))
            env = ClipRewardEnv(env) if args.atari else env
            env = ScaleReward(env, args.reward_scale) if args.reward_scale not in (None, 1.0) else env
            env = EpisodeLog(env)
            env.reset(seed=args.seed + i)
            return env

        return build

    return DummyVecEnv([builder(i) for i in range(args.n_envs)])  # type: ignore[arg-type]


class _Checkpoint(BaseCallback):
    """Save model + optimizer + RNG + env state at the start of rollouts; show progress."""

    def __init__(self, args: AgentArgs, run: Run, stop_at: int | None) -> None:
        super().__init__()
        self.args, self.run, self.stop_at = args, run, stop_at
        self.last_saved = -1
        self.bar: Any = None  # a tqdm bar while training

    def _on_training_start(self) -> None:
        self.bar = tqdm(
            total=self.args.total_timesteps,
            initial=self.num_timesteps,
            unit="step",
            desc=f"{self.args.algo.upper()} {self.args.env}",
            disable=not self.args.progress,
            smoothing=0.05,
        )
        self.last_saved = self.num_timesteps

    def _on_rollout_start(self) -> None:
        due = self.num_timesteps - self.last_saved >= self.args.checkpoint_every
        if due and self.num_timesteps > 0:
            save_checkpoint(self.model, self.run, self.args)
            self.last_saved = self.num_timesteps

    def _on_step(self) -> bool:
        self.bar.update(self.training_env.num_envs)
        if self.n_calls % 200 == 0 and self.model.ep_info_buffer:
            returns = [e["r"] for e in self.model.ep_info_buffer]
            self.bar.set_postfix(mean_return=f"{np.mean(returns):.2f}", episodes=len(returns))
        # stop_at simulates an interruption (for the resume test): stop right after a checkpoint
        return not (self.stop_at is not None and self.last_saved >= self.stop_at)

    def _on_training_end(self) -> None:
        self.bar.close()


def _vec(algo: BaseAlgorithm) -> DummyVecEnv:
    env = algo.get_env()
    while not isinstance(env, DummyVecEnv):
        env = env.venv
    return env


CHECKPOINT_FORMAT = "xrl.sb3_checkpoint"
_COUNTERS = ("num_timesteps", "_n_updates", "_episode_num", "_n_calls", "exploration_rate")


def save_checkpoint(algo: BaseAlgorithm, run: Run, args: AgentArgs) -> Path:
    """One checkpoint folder (``run.save``): ``checkpoint.zip`` (SB3's zip; a resume reads only
    its ``policy.pth`` and ``policy.optimizer.pth``, with ``weights_only=True``), ``tensors.pt``
    (RNG, observation and action tensors), ``state.json`` (counters, RNG states, how each env's
    episode began), DQN: ``buffer.pt`` (the replay buffer's arrays). Beside it in the run
    folder: ``checkpoint.zip``, a hard link to the newest one (what SB3 and ``xrl.load_agent``
    open), and ``checkpoint.json``, a card that lets ``xrl zoo`` list the unfinished run."""
    envs = _vec(algo).envs
    np_state = np.random.get_state()  # noqa: NPY002  (SB3 draws from the global generator)
    py_state = random.getstate()
    state = {
        "format": CHECKPOINT_FORMAT,
        "version": 1,
        "algo": args.algo,
        "xrl_version": __version__,
        **{k: getattr(algo, k) for k in _COUNTERS if hasattr(algo, k)},
        "numpy": {"pos": int(np_state[2]), "has_gauss": int(np_state[3]), "cached_gaussian": float(np_state[4])},  # type: ignore[index]
        "python": {"version": py_state[0], "gauss": py_state[2]},
        # DQN draws random actions (warm-up, epsilon-greedy) from the action space's own RNG
        "action_space": algo.action_space.np_random.bit_generator.state,
        "ep_info_buffer": list(algo.ep_info_buffer or []),
        "ep_success_buffer": list(algo.ep_success_buffer or []),
        "envs": [getattr(e, "start", None) for e in envs],
    }
    tensors = {
        "torch": torch.get_rng_state(),
        "numpy_key": torch.from_numpy(np_state[1].astype(np.int64)),  # type: ignore[index]
        "python_state": torch.tensor(py_state[1], dtype=torch.int64),
        "actions": [torch.tensor(getattr(e, "actions", []), dtype=torch.int64) for e in envs],
    }
    if algo._last_obs is not None:  # None: the envs are reset when learning starts (fresh episodes)
        tensors["last_obs"] = torch.from_numpy(np.asarray(algo._last_obs))
        tensors["last_episode_starts"] = torch.from_numpy(np.asarray(algo._last_episode_starts))
    if algo._last_original_obs is not None:
        tensors["last_original_obs"] = torch.from_numpy(np.asarray(algo._last_original_obs))

    if isinstance(algo, DQN):
        state["buffer"] = {"pos": int(algo.replay_buffer.pos), "full": bool(algo.replay_buffer.full)}

    def write(folder: Path) -> None:
        algo.save(folder / "checkpoint.zip")  # SB3's own format: resumes read only its weight files
        torch.save(tensors, folder / "tensors.pt")
        write_json(folder / "state.json", state)
        if isinstance(algo, DQN):
            torch.save(
                {k: torch.from_numpy(v) for k, v in vars(algo.replay_buffer).items() if isinstance(v, np.ndarray)},
                folder / "buffer.pt",
            )

    folder = run.save(algo.num_timesteps, write)
    link(folder / "checkpoint.zip", run.folder / "checkpoint.zip")
    write_json(
        run.folder / "checkpoint.json",
        {
            "what": f"{args.algo.upper()} checkpoint for {args.env} (training in progress)",
            "env": {"name": args.env, "settings": args.env_settings},
            "algo": args.algo,
            "arch": args.arch,
            "seed": args.seed,
            "timesteps": int(algo.num_timesteps),
            "timesteps_planned": args.total_timesteps,
            "checkpoint": str(folder.relative_to(run.folder)),
            "action_names": _action_names(args),
            "xrl_version": __version__,
        },
    )
    for name in ("checkpoint.state", "checkpoint.buffer"):  # the pickles of an old-format checkpoint, superseded
        (run.folder / name).unlink(missing_ok=True)
    return folder


def _build(args: AgentArgs, env=None) -> BaseAlgorithm:
    """The algorithm of a fresh run (a resume builds the same, then loads its checkpoint)."""
    from xrl.agents.nets import ARCHS

    env = make_vec_env(args) if env is None else env
    if args.algo == "dqn":
        return DQN(
            "CnnPolicy",
            env,
            **args.dqn,
            policy_kwargs=ARCHS.get(args.arch).policy_kwargs(),  # type: ignore[arg-type]
            seed=args.seed,
            device=resolve_device(args.device),
            verbose=0,
        )
    decay = (lambda v: lambda progress: progress * v) if args.linear_decay else (lambda v: v)
    return PPO(
        "CnnPolicy",
        env,
        n_steps=args.n_steps,
        n_epochs=args.n_epochs,
        batch_size=args.batch_size,
        learning_rate=decay(args.learning_rate),
        clip_range=decay(args.clip_range),
        ent_coef=args.ent_coef,
        vf_coef=args.vf_coef,
        max_grad_norm=args.max_grad_norm,
        gamma=args.gamma,
        gae_lambda=args.gae_lambda,
        policy_kwargs=ARCHS.get(args.arch).policy_kwargs(),  # type: ignore[arg-type]
        seed=args.seed,
        device=resolve_device(args.device),
        verbose=0,
    )


def load_checkpoint(args: AgentArgs, folder: Path) -> BaseAlgorithm:
    """The algorithm of a checkpoint folder: built from the settings, then weights, optimizer,
    counters, replay buffer, envs (replayed) and RNG states loaded; nothing is unpickled."""
    state = read_json(folder / "state.json")
    if state.get("format") != CHECKPOINT_FORMAT or state.get("algo") != args.algo:
        raise ValueError(f"{folder} is not an xrl {args.algo} training checkpoint (format={CHECKPOINT_FORMAT!r})")
    check_state(state, folder / "state.json")
    algo = _build(args)
    tensors = load_tensors(folder / "tensors.pt")
    algo.policy.load_state_dict(zip_tensors(folder / "checkpoint.zip", "policy.pth"))
    algo.policy.optimizer.load_state_dict(zip_tensors(folder / "checkpoint.zip", "policy.optimizer.pth"))
    for key in _COUNTERS:
        if key in state:
            setattr(algo, key, state[key])
    if isinstance(algo, DQN):
        buffer, arrays = algo.replay_buffer, load_tensors(folder / "buffer.pt")
        for key, value in arrays.items():
            getattr(buffer, key)[...] = value.numpy()
        buffer.pos, buffer.full = state["buffer"]["pos"], state["buffer"]["full"]
    if "last_obs" in tensors:
        algo._last_obs = tensors["last_obs"].numpy().copy()
        algo._last_episode_starts = tensors["last_episode_starts"].numpy().copy()
        _replay_envs(algo, state["envs"], tensors["actions"], folder)
    if "last_original_obs" in tensors:
        algo._last_original_obs = tensors["last_original_obs"].numpy().copy()
    algo.ep_info_buffer = collections.deque(state["ep_info_buffer"], maxlen=algo._stats_window_size)
    algo.ep_success_buffer = collections.deque(state["ep_success_buffer"], maxlen=algo._stats_window_size)
    algo.action_space.np_random.bit_generator.state = state["action_space"]
    torch.set_rng_state(tensors["torch"])
    np.random.set_state(  # noqa: NPY002  (SB3 draws from the global generator)
        (
            "MT19937",
            tensors["numpy_key"].numpy().astype(np.uint32),
            state["numpy"]["pos"],
            state["numpy"]["has_gauss"],
            state["numpy"]["cached_gaussian"],
        )
    )
    random.setstate((state["python"]["version"], tuple(tensors["python_state"].tolist()), state["python"]["gauss"]))
    return algo


#: the numpy bit generators a checkpoint may name (their states are plain numbers)
BIT_GENERATORS = ("MT19937", "PCG64", "PCG64DXSM", "Philox", "SFC64")


def check_state(state: dict, path: Path) -> None:
    """Every value of a checkpoint's ``state.json`` a resume uses, of the type it must have, before
    any is used: a damaged or crafted file (a counter of the wrong type, an unknown bit generator,
    a structure nested where a number belongs) is one error naming the file, the key and what was
    expected."""

    def bad(key: str, value, expected: str) -> ValueError:
        shown = json.dumps(value)
        shown = shown if len(shown) <= 60 else shown[:57] + "..."
        return ValueError(f"{path}: {key} is {shown}; expected {expected}. The checkpoint is damaged")

    def integer(key: str, value, low: int = 0) -> None:
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise bad(key, value, f"an integer of at least {low}")

    def number(key: str, value, none: bool = False) -> None:
        if (value is None and none) or (isinstance(value, (int, float)) and not isinstance(value, bool)):
            return
        raise bad(key, value, "a number" + (" or null" if none else ""))

    def generator(key: str, value, ale: bool = False) -> None:
        if ale and isinstance(value, dict) and "ale_state" in value:  # the Arcade Learning Environment's own
            if not isinstance(value["ale_state"], str):
                raise bad(f"{key}.ale_state", value["ale_state"], "base64 text")
            return
        if not isinstance(value, dict):
            raise bad(key, value, "a numpy bit generator state (an object)")
        if value.get("bit_generator") not in BIT_GENERATORS:
            raise bad(f"{key}.bit_generator", value.get("bit_generator"), f"one of {', '.join(BIT_GENERATORS)}")
        if not isinstance(value.get("state"), dict):
            raise bad(f"{key}.state", value.get("state"), "an object")
        try:  # the generator checks its own numbers
            getattr(np.random, value["bit_generator"])().state = value
        except (ValueError, TypeError, KeyError, OverflowError) as err:
            raise bad(key, value, f"a {value['bit_generator']} state ({err})") from None

    for key in _COUNTERS:
        if key in state:
            (number if key == "exploration_rate" else integer)(key, state[key])
    generator("action_space", state.get("action_space"))
    for key, check in (("pos", integer), ("has_gauss", integer), ("cached_gaussian", number)):
        check(f"numpy.{key}", (state.get("numpy") or {}).get(key) if isinstance(state.get("numpy"), dict) else None)
    python: dict = state["python"] if isinstance(state.get("python"), dict) else {}
    integer("python.version", python.get("version"))
    number("python.gauss", python.get("gauss"), none=True)
    for key in ("ep_info_buffer", "ep_success_buffer"):
        if not isinstance(state.get(key), list):
            raise bad(key, state.get(key), "a list")
    if "buffer" in state:
        buffer = state["buffer"] if isinstance(state["buffer"], dict) else {}
        integer("buffer.pos", buffer.get("pos"))
        if not isinstance(buffer.get("full"), bool):
            raise bad("buffer.full", buffer.get("full"), "true or false")
    envs = state.get("envs", [])
    if not isinstance(envs, list):
        raise bad("envs", envs, "a list of episode starts")
    for i, start in enumerate(envs):
        if start is None:
            continue
        if not isinstance(start, dict) or not isinstance(start.get("rngs", []), list):
            raise bad(f"envs[{i}]", start, 'null or an object {"seed": ..., "rngs": [...]}')
        if start.get("seed") is not None:
            integer(f"envs[{i}].seed", start["seed"])
        for j, entry in enumerate(start.get("rngs", [])):
            key = f"envs[{i}].rngs[{j}]"
            if not (isinstance(entry, list) and len(entry) == 3 and isinstance(entry[1], str)):
                raise bad(key, entry, "[depth, attribute, state]")
            integer(f"{key}[0]", entry[0])
            generator(f"{key}[2]", entry[2], ale=True)


def _replay_envs(algo: BaseAlgorithm, starts: list, actions: list, folder: Path) -> None:
    """Each env back in its recorded episode; one whose replay does not give the saved
    observation (or whose episode start is unknown) starts a fresh seeded episode, and says so."""
    vec = _vec(algo)
    vec._reset_seeds()
    fresh = []
    for i, (env, start) in enumerate(zip(vec.envs, starts)):
        if start is not None:
            obs = env.replay(start, actions[i].tolist())
            if obs.shape != algo._last_obs[i].shape or np.array_equal(obs, algo._last_obs[i]):
                continue
        obs, _ = env.reset(seed=algo.seed + i + 1_000_003 * (1 + algo.num_timesteps))
        algo._last_obs[i], algo._last_episode_starts[i] = np.asarray(obs), True
        fresh.append(i)
    if fresh:
        print(
            f"resuming {folder} at {algo.num_timesteps} steps: env(s) {fresh} start fresh episodes (their "
            "episode could not be rebuilt from its seed and actions)",
            file=sys.stderr,
        )


def _resume_pickle(args: AgentArgs, run: Path) -> BaseAlgorithm:
    """A checkpoint in the old format (SB3 zip + pickled state): only with ``trust_pickle``."""
    import pickle

    import cloudpickle

    state = pickle.loads((run / "checkpoint.state").read_bytes())
    env = cloudpickle.loads(state["env"]) if state["env"] is not None else make_vec_env(args)
    cls = DQN if args.algo == "dqn" else PPO
    algo = cls.load(
        run / "checkpoint.zip", env=env, device=resolve_device(args.device), force_reset=state["env"] is None
    )
    if algo.num_timesteps != state["num_timesteps"]:
        raise ValueError(f"{run}: checkpoint.zip and checkpoint.state disagree; delete both to restart")
    if cls is DQN:
        algo.load_replay_buffer(run / "checkpoint.buffer")
        buffer = algo.replay_buffer
        if buffer.pos != (algo.num_timesteps // buffer.n_envs) % buffer.buffer_size:
            raise ValueError(
                f"{run}: checkpoint.buffer and checkpoint.zip disagree; delete the checkpoint.* files to restart"
            )
    vec = _vec(algo)
    vec.envs = [e if isinstance(e, EpisodeLog) else EpisodeLog(e, known=False) for e in vec.envs]
    if state["env"] is None:
        print(f"resuming at {algo.num_timesteps} steps with fresh episodes (env not picklable)", file=sys.stderr)
        algo._last_obs = None
    if "action_space" in state:  # checkpoints made before it was saved resume without it
        algo.action_space.np_random.bit_generator.state = state["action_space"]
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])  # noqa: NPY002  (SB3 draws from the global generator)
    random.setstate(state["python"])
    return algo


def convert_checkpoint(args: AgentArgs, run: Run) -> Path:
    """The one-off conversion of a run folder in the old format (``checkpoint.zip`` + the pickled
    ``checkpoint.state``, DQN: ``checkpoint.buffer``) to a checkpoint folder of the new format,
    without training (``--convert-only --trust-pickle``): the old files are loaded as a trusted
    resume loads them (this runs code from them, hence ``trust_pickle``), written by
    :func:`save_checkpoint` and the pickles removed. Returns the new checkpoint folder.

    A run whose envs were not pickled (``zoo/mario``: its envs restart fresh seeded episodes on
    resume either way) resumes from the new checkpoint exactly as the trusted old one would. One
    whose envs were pickled loses their current episodes: they start fresh seeded episodes on
    the next resume (said on stderr); resuming with ``--trust-pickle`` instead keeps them, and
    converts at the next checkpoint."""
    old = [n for n in ("checkpoint.zip", "checkpoint.state", "checkpoint.buffer") if (run.folder / n).exists()]
    if run.latest() is not None and "checkpoint.state" not in old:
        raise ValueError(
            f"{run.folder}: its checkpoint {run.latest().relative_to(run.folder)} is already in the new "  # type: ignore[union-attr]
            "format; nothing to convert"
        )
    if "checkpoint.state" not in old:
        raise FileNotFoundError(
            f"{run.folder} has no checkpoint in the old pickle format (checkpoint.state) to convert"
        )
    if run.latest() is not None:  # a new checkpoint beside leftover pickles: the new one is what resumes
        raise ValueError(
            f"{run.folder} holds a new-format checkpoint ({run.latest().relative_to(run.folder)}) and "  # type: ignore[union-attr]
            f"leftover old files ({', '.join(old)}); the new one is what resumes: delete the old files"
        )
    if not args.trust_pickle:
        raise ValueError(
            f"{run.folder}: its checkpoint is in the old pickle format ({', '.join(old)}); loading it "
            "runs code stored in the file. --convert-only needs --trust-pickle (trust_pickle=True): "
            "pass it if you made the checkpoint or trust its source"
        )
    return save_checkpoint(_resume_pickle(args, run.folder), run, args)


def _resume(args: AgentArgs, run: Run) -> BaseAlgorithm | None:
    folder = run.latest()
    if folder is not None:
        if args.from_weights:
            raise ValueError(
                f"{run.folder}: its checkpoint {folder.relative_to(run.folder)} is complete and resumes "
                "exactly; --from-weights is for a run whose checkpoints/ folder is lost: leave it out"
            )
        return load_checkpoint(args, folder)
    old = [n for n in ("checkpoint.zip", "checkpoint.state", "checkpoint.buffer") if (run.folder / n).exists()]
    if "checkpoint.state" not in old:
        if "checkpoint.zip" in old:  # its folder is gone: starting over would overwrite it at the first save
            if args.from_weights:
                return _resume_weights(args, run.folder / "checkpoint.zip")
            raise ValueError(
                f"{run.folder}: holds checkpoint.zip (a training at {_zip_steps(run.folder / 'checkpoint.zip'):,} steps) "
                f"but no complete checkpoint folder in {run.folder / CHECKPOINTS}/ to resume it exactly: restore that "
                "folder (git checkout, a backup), or resume from the weights alone with --from-weights (fresh "
                "episodes, new RNG streams), or delete the checkpoint.* files to start over"
            )
        if args.from_weights:
            raise FileNotFoundError(f"{run.folder} has no checkpoint.zip to resume --from-weights")
        return None
    if not args.trust_pickle:
        raise ValueError(
            f"{run.folder}: "
            + TRUST_PICKLE.format(files=", ".join(old))
            + "; or convert it without training: --convert-only --trust-pickle"
        )
    return _resume_pickle(args, run.folder)


def _zip_steps(path: Path) -> int:
    """The step count SB3 recorded in a checkpoint zip (its JSON ``data`` entry; nothing unpickled)."""
    try:
        with zipfile.ZipFile(path) as z:
            steps = json.loads(z.read("data"))["num_timesteps"]
    except (OSError, KeyError, ValueError, zipfile.BadZipFile) as err:
        raise ValueError(f"{path} is not a Stable-Baselines3 checkpoint zip ({type(err).__name__}: {err})") from None
    if not isinstance(steps, int) or steps < 0:
        raise ValueError(f"{path}: its num_timesteps is {steps!r}, expected a count of steps")
    return steps


def _resume_weights(args: AgentArgs, path: Path) -> BaseAlgorithm:
    """``--from-weights``: the algorithm rebuilt from the settings with the policy, optimizer and
    step counters of ``path`` (read as tensors and JSON, nothing unpickled); the envs start fresh
    seeded episodes and the RNGs are seeded anew from the seed and the step, so the run goes on
    from the same weights but not along the path an uninterrupted run would have taken."""
    if args.algo != "ppo":
        raise ValueError(
            f"{path}: --from-weights resumes PPO runs; a {args.algo.upper()} run's replay buffer is "
            "not in checkpoint.zip (restore the checkpoint folder or start over)"
        )
    steps = _zip_steps(path)
    with zipfile.ZipFile(path) as z:
        data = json.loads(z.read("data"))
    algo = _build(args)
    try:
        algo.policy.load_state_dict(zip_tensors(path, "policy.pth"))
        algo.policy.optimizer.load_state_dict(zip_tensors(path, "policy.optimizer.pth"))
    except (RuntimeError, ValueError, KeyError) as err:
        raise ValueError(f"{path} does not fit these settings (--arch {args.arch}, env {args.env}): {err}") from None
    algo.num_timesteps = steps
    algo._n_updates = int(data.get("_n_updates", 0))
    algo._episode_num = int(data.get("_episode_num", 0))
    algo.set_random_seed((args.seed + 1_000_003 * (1 + steps)) % 2**32)  # envs, action space, torch, numpy
    print(
        f"resuming {path} at {steps:,} steps from its weights alone: every env starts a fresh seeded episode, "
        "the RNG streams are new",
        file=sys.stderr,
    )
    return algo


def check_agent_args(args: AgentArgs) -> AgentArgs:
    """Every setting checked (types, ranges, the env, its settings, the architecture) before
    anything is written; returns the resolved settings."""
    from xrl.agents.nets import ARCHS
    from xrl.envs import ENVS

    check_settings(args)
    resolve_device(args.device)  # a bad or absent device is refused here, before a run folder is made
    ENVS.get(args.env)  # unknown names fail here, before a run folder is made
    resolved = args.resolved()
    ARCHS.get(resolved.arch)  # type: ignore[arg-type]
    try:
        make_env(args.env, **args.env_settings).close()
    except (TypeError, ValueError, KeyError) as err:
        pairs = " ".join(f"--set {k}={v}" for k, v in args.env_settings.items())
        raise SettingsError(f"{pairs or '--env ' + args.env}: {args.env} refused its settings: {err}") from None
    return resolved


def train_agent(args: AgentArgs, *, stop_at: int | None = None, export_only: bool = False) -> Path:
    """Train (or resume) and export ``out/agent.pt`` with its card; returns the checkpoint path.

    ``export_only``: do not train; export the latest checkpoint of an unfinished run (its card
    records the timesteps reached and the planned total) so it can be used and shipped while
    training goes on in later runs of the same command."""
    given = args
    args = check_agent_args(args)
    export_only = export_only or args.export_only
    if args.convert_only and export_only:
        raise SettingsError("--convert-only and --export-only: give one (convert first, then export)")
    with Run(args.out, args.recorded(), ignore=AgentArgs.IGNORED, outputs=("agent.pt",)) as run:
        if args.convert_only:
            convert_checkpoint(args, run)
            return run.folder / "checkpoint.zip"
        algo = _resume(args, run)
        if algo is None and export_only:
            raise FileNotFoundError(f"{run.folder} has no checkpoint to export; train first")
        if algo is None:
            algo = _build(args)
        started = time.time()
        remaining = args.total_timesteps - algo.num_timesteps
        if remaining > 0 and not export_only:
            algo.set_logger(Logger(None, []))  # SB3's default logger leaves an empty /tmp/SB3-<date> per run
            algo.learn(remaining, callback=_Checkpoint(args, run, stop_at), reset_num_timesteps=False)
            if stop_at is not None and algo.num_timesteps < args.total_timesteps:
                return run.folder / "checkpoint.zip"
            save_checkpoint(algo, run, args)
        trained = round(time.time() - started, 1)  # before the scoring: evaluating is not training
        model = agent_model(algo, args)
        score = evaluate(model, args.env, args.env_settings, episodes=args.eval_episodes, seed=10_000 + args.seed)
        card = {
            "what": f"{args.algo.upper()} agent for {args.env}",
            "env": {"name": args.env, "settings": args.env_settings},
            "algo": args.algo,
            "seed": args.seed,
            "timesteps": int(algo.num_timesteps),
            "timesteps_planned": args.total_timesteps,
            "command": agent_command(given, args),
            "action_names": model.action_names,
            "score": score,
            "train_seconds_this_run": trained,
        }
        if model.score_kind == "logits":  # the policy PPO trained, beside its argmax
            card["score_sampled"] = evaluate(
                model, args.env, args.env_settings, episodes=args.eval_episodes, seed=10_000 + args.seed, sample=True
            )
        return save_agent(algo, run.folder / "agent.pt", arch=args.arch, card=card)  # type: ignore[arg-type]


def _action_names(args: AgentArgs) -> list[str]:
    env = make_env(args.env, **args.env_settings)
    try:
        if args.atari:
            from xrl.envs.atari import action_names

            return action_names(env)
        return list(getattr(env.unwrapped, "action_names", None) or [str(i) for i in range(env.action_space.n)])
    finally:
        env.close()


def agent_model(algo: BaseAlgorithm, args: AgentArgs) -> Model:
    names = _action_names(args)
    return model_from_policy(
        algo.policy, action_names=names, info={"env": {"name": args.env, "settings": args.env_settings}}
    )


def evaluate(
    model: Model,
    env_name: str,
    settings: dict,
    *,
    episodes: int,
    seed: int,
    perturb: Callable[[torch.Tensor], torch.Tensor] | None = None,
    progress: bool = True,
    batch: int = 1,
    per_episode: bool = False,
    sample: bool = False,
    max_steps: int | None = None,
) -> dict:
    """Greedy (argmax) episodes, episode i seeded ``seed + i``: mean/std return and success rate
    (success = positive return, meaningful for goal-reaching envs).

    ``sample``: draw each action from the model's softmax instead (policy agents only), with one
    random stream per episode seeded ``seed + i``. The argmax of a PPO policy can lock into one
    losing loop from every start (the zoo MsPacman agent: greedy 70 on all 10 seeded starts); the
    sampled policy is the one PPO trained.

    ``perturb`` maps the model's input states ``(B, C, H, W)`` to the states it acts on (an
    adversarial attack, see :mod:`xrl.attacks`); it may have a ``reseed(seeds)`` method, called
    with the seeds of the episodes in the batch (one random stream per episode), so that every
    episode is reproducible on its own.

    ``batch``: episodes played side by side in lockstep, one batched forward (and attack) per
    step. The episodes and random streams are the ones of ``batch=1``; only floating-point
    rounding of batched convolutions can differ. A finished episode's env waits on its last
    observation until the whole batch is done.

    ``per_episode``: also return ``"returns"``, the list of episode returns in seed order (for
    paired comparisons of agents over the same seeds).

    ``max_steps``: end every episode after this many agent steps (the env's own cap, if any, still
    applies; for quick runs on envs without one, such as Atari).

    The episodes are played by :func:`xrl.rollout.evaluate_policy` (what modules that only score
    call, without loading Stable-Baselines3); this is its summary under the card's name."""
    if isinstance(batch, bool) or int(batch) < 1:
        raise ValueError(f"batch must be a positive number of episodes, got {batch!r}")
    played = evaluate_policy(
        model,
        env_name,
        env_settings=settings,
        episodes=episodes,
        seed=seed,
        n_envs=int(batch),
        sample=sample,
        perturb=perturb,
        max_steps=max_steps,
        progress=progress,
    )
    return played.summary(per_episode=per_episode)


def agent_command(given: AgentArgs, resolved: AgentArgs) -> str:
    """The ``xrl train agent`` command that remakes the agent and its score: the settings given,
    plus the env-family defaults it resolved to, spelled as the CLI's flags (one builder)."""
    always = ("env", "arch", "total_timesteps", "seed", "n_envs", "checkpoint_every", "eval_episodes", "out")
    shown = dataclasses.replace(given, **{k: getattr(resolved, k) for k in always})
    if shown.reward_scale == REWARD_SCALES.get(shown.env, 1.0):
        shown = dataclasses.replace(shown, reward_scale=None)
    return command(
        "xrl train agent",
        shown,
        always=always,
        pair_defaults={"dqn": DQN_DEFAULTS},
        skip=("progress", "export_only", "trust_pickle", "convert_only", "from_weights"),
    )
