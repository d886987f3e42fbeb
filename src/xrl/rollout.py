"""One rollout: play seeded episodes of a policy, several envs side by side, and say what happened.

:func:`evaluate_policy` is the one episode loop outside the trainers' own rollouts (the model is
Stable-Baselines3's ``common/evaluation.py``, without SB3): the card's scores, return under
attack, DIGR's evaluations, the reproduce tables and ``xrl collect`` (with a callback that
records every state) all play their episodes through it.

- **Seeded**: episode ``i`` is reset with ``seed + i``, and the policy gets one random stream per
  episode seeded the same way (:meth:`Policy.reseed`), so an episode's result does not depend on
  how many envs play beside it.
- **Batched**: ``n_envs`` envs play consecutive episodes in lockstep, one batched forward per
  step; an env whose episode has ended waits on its last observation until the group is done
  (the batch keeps its size, so the forward is the same one at every step).
- **Greedy or sampled**: a :class:`~xrl.agents.model.Model` plays its argmax (:class:`Greedy`) or
  draws from its softmax (:class:`Sampled`), optionally on perturbed states (an attack);
  any :class:`Policy` (:class:`Uniform`, :class:`Constant`, or one of your own) plays too.
- **Callback**: called after every step of every env with a :class:`Step` (to record states and
  frames, count steps, ...).
- **Recurrent**: a recurrent Model (``model.recurrent_shape``, e.g. sb3-contrib's RecurrentPPO)
  acts on its recurrent state carried from step to step, each env's its own, zero at every
  episode's start (as ``RecurrentPPO.predict(obs, state, episode_start)`` carries it); the state
  each action was chosen with is :attr:`Step.recurrent` (docs/agents.md#recurrent-agents).

Example::

    played = evaluate_policy(model, "red-fetch-green", episodes=10, seed=0, n_envs=5)
    played.returns, played.lengths, played.summary()["mean_return"]
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import gymnasium as gym
import numpy as np
import torch
from tqdm.auto import tqdm

from xrl.agents.model import Model
from xrl.envs import make_env

#: what a perturbation of the states is: ``(B, C, H, W) -> (B, C, H, W)``, optionally with a
#: ``reseed(seeds)`` method (one random stream per episode), like the attacks of ``xrl.attacks``
Perturb = Callable[[torch.Tensor], torch.Tensor]


class Policy:
    """Chooses the actions of a batch of observations ``(B, *obs_shape)`` (raw, as the envs give
    them), one per env. :meth:`reseed` is called when a group of episodes begins, with their
    seeds; it gives the policy one random stream per episode (``self.rngs``)."""

    #: the recurrent state ``(B, *recurrent_shape)`` each env's action of the last call was chosen
    #: with (a recurrent model's policy); None for a feed-forward policy
    memory: torch.Tensor | None = None

    def __init__(self) -> None:
        self.rngs: list[np.random.Generator] = []

    def reseed(self, seeds: Sequence[int]) -> None:
        self.rngs = [np.random.default_rng(s) for s in seeds]

    def __call__(self, obs: np.ndarray) -> list[int]:
        raise NotImplementedError


class Greedy(Policy):
    """The model's argmax on its states (after ``perturb``, when given); a recurrent model's from
    its recurrent state carried from step to step (zero when a group of episodes begins)."""

    def __init__(self, model: Model, perturb: Perturb | None = None) -> None:
        super().__init__()
        self.model, self.perturb = model, perturb
        self.carried: torch.Tensor | None = None  # the recurrent state for the next call

    def reseed(self, seeds: Sequence[int]) -> None:
        reseed = getattr(self.perturb, "reseed", None)
        if reseed is not None:
            reseed(list(seeds))
        super().reseed(seeds)
        self.carried = self.memory = None  # episodes begin: the zero state

    def states(self, obs: np.ndarray) -> torch.Tensor:
        states = self.model.preprocess(obs)
        return self.perturb(states) if self.perturb is not None else states

    def score(self, obs: np.ndarray) -> torch.Tensor:
        """The model's scores ``(B, K)`` on the (perturbed) states of ``obs``; a recurrent model
        scores them (and a perturbation is computed) under the carried state, which then steps."""
        shape = self.model.recurrent_shape
        if shape is None:
            states = self.states(obs)
            with torch.inference_mode():
                scores: torch.Tensor = self.model(states)
            return scores
        if self.carried is None or len(self.carried) != len(obs):
            self.carried = torch.zeros(len(obs), *shape, device=self.model.device)
        self.memory = self.carried
        with self.model.recurrent(self.memory):
            states = self.states(obs)
        with torch.no_grad():  # not inference_mode: an attack's gradient is taken under the next state
            scores, self.carried = self.model.step(states, self.memory)
        return scores

    def __call__(self, obs: np.ndarray) -> list[int]:
        actions: list[int] = self.score(obs).argmax(-1).tolist()
        return actions


class Sampled(Greedy):
    """Actions drawn from the model's softmax, each episode from its own seeded stream (a policy
    that outputs logits; Q-values have no policy to sample from)."""

    def __init__(self, model: Model, perturb: Perturb | None = None) -> None:
        if model.score_kind != "logits":
            raise ValueError(
                f"sample=True needs a policy that outputs logits; this model outputs {model.score_kind!r} "
                "(Q-values have no policy to sample from): use the greedy score"
            )
        super().__init__(model, perturb)

    def __call__(self, obs: np.ndarray) -> list[int]:
        if self.model.recurrent_shape is None:
            states = self.states(obs)
            with torch.inference_mode():
                p = self.model.probs(states).double().cpu().numpy()
        else:
            p = torch.softmax(self.score(obs), dim=-1).double().cpu().numpy()
        return [int(rng.choice(len(q), p=q / q.sum())) for rng, q in zip(self.rngs, p)]


class Uniform(Policy):
    """Uniformly random actions: ``space.sample()`` of a copy of ``space`` seeded with the
    episode's seed (what ``env.action_space.seed(seed); env.action_space.sample()`` draws)."""

    def __init__(self, space: gym.Space) -> None:
        super().__init__()
        self.space = space
        self.spaces: list[gym.Space] = []

    def reseed(self, seeds: Sequence[int]) -> None:
        self.spaces = []
        for s in seeds:
            space = copy.deepcopy(self.space)
            space.seed(int(s))
            self.spaces.append(space)

    def __call__(self, obs: np.ndarray) -> list[int]:
        return [int(space.sample()) for space in self.spaces]


class Constant(Policy):
    """The same action at every step."""

    def __init__(self, action: int) -> None:
        super().__init__()
        self.action = int(action)

    def __call__(self, obs: np.ndarray) -> list[int]:
        return [self.action] * len(obs)


@dataclass
class Step:
    """One env's step, as the callback sees it, right after ``env.step``."""

    env: gym.Env
    slot: int
    """which of the side-by-side envs"""
    episode: int
    """the episode's index, 0 to ``episodes - 1`` (reset with ``seed + episode``)"""
    t: int
    """steps of this episode before this one"""
    obs: np.ndarray
    """the observation the action was chosen on (a copy the env will not overwrite)"""
    info: dict
    """the info that came with ``obs`` (the reset's at ``t = 0``)"""
    frame: np.ndarray | None
    """``env.render()`` of ``obs`` (a copy) with ``frames=True``; else None"""
    action: int
    reward: float
    next_obs: Any
    next_info: dict
    terminated: bool
    truncated: bool
    done: bool
    """the episode ended here: terminated, truncated or ``max_steps`` reached"""
    total: float
    """the episode's return so far, this reward included"""
    recurrent: np.ndarray | None = None
    """the recurrent state ``obs`` was scored with, ``(*model.recurrent_shape)`` float32 (a
    recurrent model's policy); None for a feed-forward one"""


@dataclass
class Episodes:
    """What :func:`evaluate_policy` played, in episode order."""

    seeds: list[int] = field(default_factory=list)
    returns: list[float] = field(default_factory=list)
    lengths: list[int] = field(default_factory=list)
    terminated: list[bool] = field(default_factory=list)
    """the episode ended by termination (not truncation or ``max_steps``)"""

    def summary(self, *, per_episode: bool = False) -> dict:
        """The card's score: ``episodes``, ``seed`` (the first), mean/std return, success rate
        (success = positive return, meaningful for goal-reaching envs); ``per_episode`` adds the
        ``returns`` in seed order."""
        out: dict[str, Any] = {
            "episodes": len(self.returns),
            "seed": self.seeds[0],
            "mean_return": float(np.mean(self.returns)),
            "std_return": float(np.std(self.returns)),
            "success_rate": float((np.asarray(self.returns) > 0).mean()),
        }
        if per_episode:
            out["returns"] = [float(r) for r in self.returns]
        return out


def _count(name: str, value, what: str, *, none: bool = False) -> None:
    if value is None and none:
        return
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"{name} must be a positive number of {what}{' or None' if none else ''}, got {value!r}")


def as_policy(policy: Model | Policy, *, sample: bool = False, perturb: Perturb | None = None) -> Policy:
    """A Model as its :class:`Greedy` or :class:`Sampled` policy; a :class:`Policy` as it is."""
    if isinstance(policy, Model):
        return Sampled(policy, perturb) if sample else Greedy(policy, perturb)
    if not isinstance(policy, Policy):
        raise TypeError(f"policy must be an xrl Model or an xrl.rollout.Policy, got {type(policy).__name__}")
    if sample or perturb is not None:
        raise ValueError("sample and perturb apply to a Model; a Policy chooses its actions itself")
    return policy


def evaluate_policy(
    policy: Model | Policy,
    env: str | gym.Env | Sequence[gym.Env],
    *,
    episodes: int,
    seed: int = 0,
    env_settings: Mapping | None = None,
    n_envs: int = 1,
    sample: bool = False,
    perturb: Perturb | None = None,
    callback: Callable[[Step], None] | None = None,
    max_steps: int | None = None,
    frames: bool = False,
    progress: bool = False,
    desc: str = "evaluate",
) -> Episodes:
    """Play ``episodes`` episodes of ``policy`` (episode ``i`` reset with ``seed + i``); returns
    their returns, lengths and how each ended.

    Args:
        policy: a Model (its argmax; ``sample=True``: its softmax, one stream per episode; on
            ``perturb(states)`` when given) or a :class:`Policy`.
        env: a registered env name (made with ``env_settings``, ``min(n_envs, episodes)`` copies,
            closed at the end), or the env(s) to play in (as many side by side; not closed).
        n_envs: envs played side by side when ``env`` is a name.
        callback: called with a :class:`Step` after every step of every env whose episode runs.
        max_steps: end every episode after this many steps (the env's own cap still applies).
        frames: render each observation before its step, for the callback (``Step.frame``).
        progress: a bar counting finished episodes.
    """
    _count("episodes", episodes, "episodes")
    _count("n_envs", n_envs, "envs")
    _count("max_steps", max_steps, "steps", none=True)
    chooser = as_policy(policy, sample=sample, perturb=perturb)
    made = isinstance(env, str)
    if isinstance(env, str):
        envs = [make_env(env, **dict(env_settings or {})) for _ in range(min(int(n_envs), episodes))]
    else:
        envs = [env] if isinstance(env, gym.Env) else list(env)
        if not envs:
            raise ValueError("env must be an env name or at least one env")
    played = Episodes()
    try:
        with tqdm(total=episodes, desc=desc, leave=False, disable=not progress) as bar:
            for first in range(0, episodes, len(envs)):
                group = list(range(first, min(first + len(envs), episodes)))
                _play_group(chooser, envs[: len(group)], group, seed, played, callback, max_steps, frames, bar)
    finally:
        for e in envs if made else ():
            e.close()
    return played


def _play_group(
    policy: Policy,
    envs: list[gym.Env],
    group: list[int],
    seed: int,
    played: Episodes,
    callback: Callable[[Step], None] | None,
    max_steps: int | None,
    frames: bool,
    bar: Any,
) -> None:
    """Episodes ``group`` played side by side to their ends, appended to ``played``."""
    resets = [env.reset(seed=seed + i) for env, i in zip(envs, group)]
    obs = [np.asarray(o) for o, _ in resets]
    infos = [info for _, info in resets]
    policy.reseed([seed + i for i in group])
    n = len(group)
    totals, lengths, ended, running = [0.0] * n, [0] * n, [False] * n, [True] * n
    while any(running):
        shown = [_frame(e) if frames and r else None for e, r in zip(envs, running)]
        batch = np.stack(obs)  # a copy: wrappers may reuse their buffers on the next step
        actions = policy(batch)
        memory = None if policy.memory is None else policy.memory.detach().float().cpu().numpy()
        for j, env in enumerate(envs):
            if not running[j]:
                continue
            o, reward, terminated, truncated, info = env.step(actions[j])
            totals[j] += float(reward)
            lengths[j] += 1
            ended[j] = bool(terminated)
            done = bool(terminated or truncated) or (max_steps is not None and lengths[j] >= max_steps)
            if callback is not None:
                callback(
                    Step(
                        env=env,
                        slot=j,
                        episode=group[j],
                        t=lengths[j] - 1,
                        obs=batch[j],
                        info=infos[j],
                        frame=shown[j],
                        action=int(actions[j]),
                        reward=float(reward),
                        next_obs=o,
                        next_info=info,
                        terminated=bool(terminated),
                        truncated=bool(truncated),
                        done=done,
                        total=totals[j],
                        recurrent=None if memory is None else memory[j].copy(),
                    )
                )
            obs[j], infos[j] = np.asarray(o), info
            if done:
                running[j] = False
                bar.update(1)
    played.seeds += [seed + i for i in group]
    played.returns += totals
    played.lengths += lengths
    played.terminated += ended


def _frame(env: gym.Env) -> np.ndarray | None:
    """``env.render()`` copied (an env may draw the next frame into the same buffer), or None."""
    frame = env.render()
    return None if frame is None else np.array(frame, copy=True)
