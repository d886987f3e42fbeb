"""Train an agent with SB3 PPO (or DQN, ``algo="dqn"``), checkpointing at rollout boundaries so
that an interrupted run, resumed, ends exactly where an uninterrupted one would (for envs that
can be pickled; others resume with fresh episodes, and say so).

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
"""
from __future__ import annotations

import dataclasses
import pickle
import random
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import cloudpickle
import gymnasium as gym
import numpy as np
import torch
from tqdm import tqdm

from xrl.compat import quiet_old_gym

quiet_old_gym()  # before Stable-Baselines3, which imports the old gym when installed
from stable_baselines3 import DQN, PPO  # noqa: E402
from stable_baselines3.common.base_class import BaseAlgorithm  # noqa: E402
from stable_baselines3.common.atari_wrappers import ClipRewardEnv  # noqa: E402
from stable_baselines3.common.callbacks import BaseCallback  # noqa: E402
from stable_baselines3.common.logger import Logger  # noqa: E402
from stable_baselines3.common.monitor import Monitor  # noqa: E402
from stable_baselines3.common.vec_env import DummyVecEnv  # noqa: E402

import xrl  # noqa: E402
from xrl.agents.load import model_from_policy, save_agent  # noqa: E402
from xrl.agents.model import Model  # noqa: E402
from xrl.envs import make_env  # noqa: E402
from xrl.files import atomic_path, check_run_settings, write_json  # noqa: E402


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
DQN_DEFAULTS = dict(learning_rate=5e-4, buffer_size=15_000, learning_starts=200, batch_size=32, gamma=0.8,
                    train_freq=1, gradient_steps=1, target_update_interval=50, exploration_fraction=0.7,
                    exploration_final_eps=0.05)
ALGOS = ("ppo", "dqn")


@dataclass
class AgentArgs:
    env: str = "red-fetch-green"
    """registered env name (``xrl envs`` lists them)"""
    env_settings: dict = field(default_factory=dict)
    """keyword settings of the env, recorded in the card"""
    algo: str = "ppo"
    """``"ppo"`` (the settings below) or ``"dqn"`` (settings in ``dqn``)"""
    dqn: dict = field(default_factory=dict)
    """DQN settings over ``DQN_DEFAULTS`` (only with ``algo="dqn"``)"""
    arch: str | None = None
    """registered architecture; None = grid_cnn for grid worlds, nature_cnn for Atari"""
    total_timesteps: int = 1_000_000
    """agent steps (Atari: one step = 4 frames)"""
    seed: int = 0
    """seeds the policy, the envs (env i gets seed + i) and the evaluation"""
    n_envs: int | None = None
    n_steps: int = 128
    n_epochs: int = 4
    batch_size: int | None = None
    learning_rate: float | None = None
    linear_decay: bool | None = None
    """decay learning rate and clip range linearly to 0 (rl-zoo Atari setting)"""
    clip_range: float | None = None
    reward_scale: float | None = None
    """training rewards are multiplied by this (after clipping; logged returns and scores stay the
    game's); None = the env's ``REWARD_SCALES`` entry, else 1"""
    ent_coef: float = 0.01
    vf_coef: float = 0.5
    max_grad_norm: float = 0.5
    gamma: float = 0.99
    gae_lambda: float = 0.95
    checkpoint_every: int = 50_000
    """timesteps between checkpoints (rounded up to whole rollouts)"""
    eval_episodes: int = 100
    """seeded episodes for the card's scores: greedy, and for policy agents also sampled"""
    out: str = "runs/agent"
    """run folder: checkpoint.zip + checkpoint.state, then agent.pt and agent.json"""
    progress: bool = True

    def resolved(self) -> "AgentArgs":
        """Fill the env-family defaults left as None."""
        d = dict(arch="nature_cnn", n_envs=8, batch_size=256, learning_rate=2.5e-4,
                 linear_decay=True, clip_range=0.1) if self.screen_game else \
            dict(arch="grid_cnn", n_envs=16, batch_size=256, learning_rate=1e-3,
                 linear_decay=False, clip_range=0.2)
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
        out = dataclasses.replace(self, **{k: (getattr(self, k) if getattr(self, k) is not None else v)
                                           for k, v in d.items()})
        return dataclasses.replace(out, dqn={**DQN_DEFAULTS, **self.dqn}) if self.algo == "dqn" else out

    def recorded(self) -> dict:
        """The settings stored in ``args.json``; a reward scale of 1 and PPO's algo (with its empty
        ``dqn``) are left out, as in runs made before those settings existed, so those resume."""
        d = dataclasses.asdict(self)
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


def make_vec_env(args: AgentArgs) -> DummyVecEnv:
    """``n_envs`` monitored copies of the env; Atari rewards are clipped and all are scaled by
    ``reward_scale`` after the Monitor, so logged returns are game scores."""

    def builder(i: int):
        def build() -> gym.Env:
            env = Monitor(make_env(args.env, **args.env_settings))
            env = ClipRewardEnv(env) if args.atari else env
            env = ScaleReward(env, args.reward_scale) if args.reward_scale not in (None, 1.0) else env
            env.reset(seed=args.seed + i)
            return env
        return build

    return DummyVecEnv([builder(i) for i in range(args.n_envs)])


class _Checkpoint(BaseCallback):
    """Save model + optimizer + RNG + env state at the start of rollouts; show progress."""

    def __init__(self, args: AgentArgs, run: Path, stop_at: int | None) -> None:
        super().__init__()
        self.args, self.run, self.stop_at = args, run, stop_at
        self.last_saved = -1
        self.bar = None

    def _on_training_start(self) -> None:
        self.bar = tqdm(total=self.args.total_timesteps, initial=self.num_timesteps, unit="step",
                        desc=f"{self.args.algo.upper()} {self.args.env}", disable=not self.args.progress, smoothing=0.05)
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


def save_checkpoint(algo: BaseAlgorithm, run: Path, args: AgentArgs) -> None:
    """Model and optimizer (SB3 zip) plus RNG states and the pickled envs (DQN: and the replay
    buffer), each atomically; a ``checkpoint.json`` card lets ``load_agent("run/checkpoint.zip")``
    name the actions."""
    try:
        env_blob = cloudpickle.dumps(algo.get_env())
    except Exception:  # e.g. emulators without pickling support: resume starts new episodes
        env_blob = None
    state = {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate(),
             "env": env_blob, "num_timesteps": algo.num_timesteps,
             # DQN draws random actions (warm-up, epsilon-greedy) from the action space's own RNG
             "action_space": algo.action_space.np_random.bit_generator.state}
    if isinstance(algo, DQN):
        with atomic_path(run / "checkpoint.buffer") as tmp:
            algo.save_replay_buffer(tmp.with_suffix(".pkl"))
            tmp.with_suffix(".pkl").replace(tmp)
    with atomic_path(run / "checkpoint.state") as tmp:
        tmp.write_bytes(pickle.dumps(state))
    with atomic_path(run / "checkpoint.zip") as tmp:
        algo.save(tmp.with_suffix(".zip"))
        tmp.with_suffix(".zip").replace(tmp)
    write_json(run / "checkpoint.json", {
        "what": f"{args.algo.upper()} checkpoint for {args.env} (training in progress)",
        "env": {"name": args.env, "settings": args.env_settings}, "algo": args.algo, "arch": args.arch,
        "seed": args.seed, "timesteps": int(algo.num_timesteps), "timesteps_planned": args.total_timesteps,
        "action_names": _action_names(args), "xrl_version": xrl.__version__})


def _resume(args: AgentArgs, run: Path) -> BaseAlgorithm | None:
    if not (run / "checkpoint.zip").exists() or not (run / "checkpoint.state").exists():
        return None
    state = pickle.loads((run / "checkpoint.state").read_bytes())
    env = cloudpickle.loads(state["env"]) if state["env"] is not None else make_vec_env(args)
    cls = DQN if args.algo == "dqn" else PPO
    algo = cls.load(run / "checkpoint.zip", env=env, device="cpu", force_reset=state["env"] is None)
    if algo.num_timesteps != state["num_timesteps"]:
        raise ValueError(f"{run}: checkpoint.zip and checkpoint.state disagree; delete both to restart")
    if cls is DQN:
        algo.load_replay_buffer(run / "checkpoint.buffer")
        buffer = algo.replay_buffer
        if buffer.pos != (algo.num_timesteps // buffer.n_envs) % buffer.buffer_size:
            raise ValueError(f"{run}: checkpoint.buffer and checkpoint.zip disagree; delete the checkpoint.* files to restart")
    if state["env"] is None:
        print(f"resuming at {algo.num_timesteps} steps with fresh episodes (env not picklable)", file=sys.stderr)
        algo._last_obs = None
    if "action_space" in state:  # checkpoints made before it was saved resume without it
        algo.action_space.np_random.bit_generator.state = state["action_space"]
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])
    return algo


def train_agent(args: AgentArgs, *, stop_at: int | None = None, export_only: bool = False) -> Path:
    """Train (or resume) and export ``out/agent.pt`` with its card; returns the checkpoint path.

    ``export_only``: do not train; export the latest checkpoint of an unfinished run (its card
    records the timesteps reached and the planned total) so it can be used and shipped while
    training goes on in later runs of the same command."""
    from xrl.agents.nets import ARCHS
    from xrl.envs import ENVS
    ENVS.get(args.env)  # unknown names fail here, before a run folder is made
    args = args.resolved()
    ARCHS.get(args.arch)
    run = Path(args.out)
    check_run_settings(run, args.recorded(),
                       ignore={"total_timesteps", "progress", "eval_episodes", "checkpoint_every", "out"})

    algo = _resume(args, run)
    if algo is None and export_only:
        raise FileNotFoundError(f"{run} has no checkpoint to export; train first")
    if algo is None and args.algo == "dqn":
        algo = DQN("CnnPolicy", make_vec_env(args), **args.dqn, policy_kwargs=ARCHS.get(args.arch).policy_kwargs(),
                   seed=args.seed, device="cpu", verbose=0)
    if algo is None:
        decay = (lambda v: (lambda progress: progress * v)) if args.linear_decay else (lambda v: v)
        algo = PPO(
            "CnnPolicy", make_vec_env(args), n_steps=args.n_steps, n_epochs=args.n_epochs,
            batch_size=args.batch_size, learning_rate=decay(args.learning_rate),
            clip_range=decay(args.clip_range), ent_coef=args.ent_coef, vf_coef=args.vf_coef,
            max_grad_norm=args.max_grad_norm, gamma=args.gamma, gae_lambda=args.gae_lambda,
            policy_kwargs=ARCHS.get(args.arch).policy_kwargs(), seed=args.seed, device="cpu", verbose=0,
        )
    started = time.time()
    remaining = args.total_timesteps - algo.num_timesteps
    if remaining > 0 and not export_only:
        algo.set_logger(Logger(None, []))  # SB3's default logger leaves an empty /tmp/SB3-<date> per run
        algo.learn(remaining, callback=_Checkpoint(args, run, stop_at), reset_num_timesteps=False)
        if stop_at is not None and algo.num_timesteps < args.total_timesteps:
            return run / "checkpoint.zip"
        save_checkpoint(algo, run, args)
    model = agent_model(algo, args)
    score = evaluate(model, args.env, args.env_settings, episodes=args.eval_episodes, seed=10_000 + args.seed)
    card = {
        "what": f"{args.algo.upper()} agent for {args.env}", "env": {"name": args.env, "settings": args.env_settings},
        "algo": args.algo, "seed": args.seed, "timesteps": int(algo.num_timesteps),
        "timesteps_planned": args.total_timesteps,
        "command": "xrl train agent " + " ".join(_cli_flags(args)),
        "action_names": model.action_names, "score": score,
        "train_seconds_this_run": round(time.time() - started, 1),
    }
    if model.score_kind == "logits":  # the policy PPO trained, beside its argmax
        card["score_sampled"] = evaluate(model, args.env, args.env_settings, episodes=args.eval_episodes,
                                         seed=10_000 + args.seed, sample=True)
    return save_agent(algo, run / "agent.pt", arch=args.arch, card=card)


def _action_names(args: AgentArgs) -> list[str]:
    env = make_env(args.env, **args.env_settings)
    try:
        if args.atari:
            from xrl.envs.atari import action_names
            return action_names(env)
        return list(getattr(env.unwrapped, "action_names", None) or
                    [str(i) for i in range(env.action_space.n)])
    finally:
        env.close()


def agent_model(algo: BaseAlgorithm, args: AgentArgs) -> Model:
    names = _action_names(args)
    return model_from_policy(algo.policy, action_names=names,
                             info={"env": {"name": args.env, "settings": args.env_settings}})


def evaluate(model: Model, env_name: str, settings: dict, *, episodes: int, seed: int,
             perturb: Callable[[torch.Tensor], torch.Tensor] | None = None, progress: bool = True,
             batch: int = 1, per_episode: bool = False, sample: bool = False) -> dict:
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
    paired comparisons of agents over the same seeds)."""
    if isinstance(batch, bool) or int(batch) < 1:
        raise ValueError(f"batch must be a positive number of episodes, got {batch!r}")
    if sample and model.score_kind != "logits":
        raise ValueError(f"sample=True needs a policy that outputs logits; this model outputs {model.score_kind!r} "
                         "(Q-values have no policy to sample from): use the greedy score")
    envs = [make_env(env_name, **settings) for _ in range(min(int(batch), episodes))]
    returns = []
    with tqdm(total=episodes, desc="evaluate", leave=False, disable=not progress) as bar:
        for first in range(0, episodes, len(envs)):
            group = list(range(first, min(first + len(envs), episodes)))
            obs = [np.asarray(env.reset(seed=seed + i)[0]) for env, i in zip(envs, group)]
            if hasattr(perturb, "reseed"):
                perturb.reseed([seed + i for i in group])
            rngs = [np.random.default_rng(seed + i) for i in group]
            totals, running = [0.0] * len(group), [True] * len(group)
            while any(running):
                states = model.preprocess(np.stack(obs))
                if perturb is not None:
                    states = perturb(states)
                with torch.inference_mode():
                    if sample:
                        p = model.probs(states).double().numpy()
                        actions = [int(rng.choice(len(q), p=q / q.sum())) for rng, q in zip(rngs, p)]
                    else:
                        actions = model(states).argmax(-1).tolist()
                for j, env in enumerate(envs[:len(group)]):
                    if running[j]:
                        o, reward, terminated, truncated, _ = env.step(actions[j])
                        obs[j], totals[j] = np.asarray(o), totals[j] + float(reward)
                        if terminated or truncated:
                            running[j] = False
                            bar.update(1)
            returns += totals
    for env in envs:
        env.close()
    result = {"episodes": episodes, "seed": seed, "mean_return": float(np.mean(returns)),
              "std_return": float(np.std(returns)), "success_rate": float((np.asarray(returns) > 0).mean())}
    if per_episode:
        result["returns"] = [float(r) for r in returns]
    return result


def _cli_flags(args: AgentArgs) -> list[str]:
    """Every ``xrl train agent`` flag, so the card's command remakes the agent and its score."""
    flags = [f"--env {args.env}", f"--arch {args.arch}", f"--timesteps {args.total_timesteps}",
             f"--seed {args.seed}", f"--n-envs {args.n_envs}", f"--checkpoint-every {args.checkpoint_every}",
             f"--eval-episodes {args.eval_episodes}", f"--out {args.out}"]
    if args.reward_scale not in (None, 1.0, REWARD_SCALES.get(args.env, 1.0)):
        flags.append(f"--reward-scale {args.reward_scale}")
    if args.algo != "ppo":
        flags.append(f"--algo {args.algo}")
        flags += [f"--dqn {k}={v}" for k, v in args.dqn.items() if DQN_DEFAULTS.get(k) != v]
    flags += [f"--set {k}={v}" for k, v in args.env_settings.items()]
    return flags
