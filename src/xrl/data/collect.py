"""Roll an agent out in its environment and store what it saw and did as a StateDataset.

The episodes are played by :func:`xrl.rollout.evaluate_policy`, with a callback that records
every state, frame, action, the scores acted on and the ground truth; for a recurrent agent also
the recurrent state each state was scored with (carried from step to step, zero at an episode's
start: docs/agents.md#recurrent-agents).

Episode ``i`` is reset with seed ``seed + i`` (and, with ``sample=True``, actions are drawn with
a ``torch.Generator`` seeded the same way), so a collection is reproducible episode by episode
and an interrupted one resumes exactly where it stopped.

Example::

    model = xrl.load_agent("red-fetch-green")
    path = collect(model, episodes=20, out="runs/rfg.h5")   # the env the agent was trained on
"""

from __future__ import annotations

import errno
import json
import logging
import os
from collections.abc import Mapping
from pathlib import Path

import gymnasium as gym
import numpy as np
import torch
from tqdm.auto import tqdm

from xrl.agents.model import Model
from xrl.data.dataset import StateDataset, StateDatasetWriter, meta_differences
from xrl.envs import INFO_ONLY_SETTINGS, make_env
from xrl.envs.labels import EXCLUDED
from xrl.files import DiskFull, FolderLock, is_disk_full
from xrl.rollout import Greedy, Step, evaluate_policy

log = logging.getLogger(__name__)

_BLOCK = 128  # steps held in memory before they are appended to the file


def collect(
    model: Model,
    *,
    episodes: int,
    out: str | os.PathLike,
    env: str | None = None,
    env_settings: Mapping | None = None,
    seed: int = 0,
    max_steps: int | None = None,
    sample: bool = False,
    overwrite: bool = False,
    progress: bool = True,
    compression: str | None = "gzip",
) -> Path:
    """Write ``episodes`` rollouts of ``model`` to the StateDataset ``out`` and return its path.

    Args:
        env: registered env name; default the one the agent was trained on (``model.info["env"]``).
        env_settings: settings for ``make_env``, laid over the agent's recorded ones when the env
            is the agent's (so ``{"labels": True}`` adds ground truth and keeps the rest). Asking
            for another env, or for settings that change what the agent sees, raises ``ValueError``.
        seed: episode ``i`` is reset with ``seed + i``.
        max_steps: cap on the steps stored per episode (its return then covers those steps).
        sample: draw actions from ``softmax(scores)`` instead of taking the argmax.
        overwrite: collect again even if ``out`` (or a ``.partial`` of another collection) exists.

    An existing complete ``out`` of the same collection is returned as is (or extended when more
    episodes are asked); an interrupted one (``<out>.partial``) is resumed.
    """
    if not isinstance(model, Model):
        raise TypeError(
            f"collect takes an xrl Model, got {type(model).__name__}; wrap it with "
            "xrl.as_model(module, input_shape=...)"
        )
    for arg, value, low in (("episodes", episodes, 1), ("seed", seed, 0), ("max_steps", max_steps, 1)):
        if value is None and arg == "max_steps":
            continue
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low:
            raise ValueError(f"{arg} must be an integer >= {low}, got {value!r}")
    name, settings = _resolve_env(model, env, env_settings)
    out = Path(out)
    meta = {
        "env": {"name": name, "settings": settings},
        "agent": agent_record(model),
        "action_names": list(model.action_names),
        "collect": {"seed": int(seed), "sample": bool(sample), "max_steps": max_steps},
    }
    created = not out.parent.exists()
    out.parent.mkdir(parents=True, exist_ok=True)
    lock = FolderLock(
        out.with_name(out.name + ".lock"), str(out), "wait for it to finish or choose another out (--out)"
    )
    try:
        with lock:  # one collection at a time into one out
            return _collect(
                model, out, meta, name, settings, episodes, seed, max_steps, sample, overwrite, progress, compression
            )
    finally:
        if created and not any(out.parent.iterdir()):
            out.parent.rmdir()  # a collection that failed into a folder it made leaves nothing


def _collect(
    model,
    out: Path,
    meta: dict,
    name: str,
    settings: dict,
    episodes: int,
    seed: int,
    max_steps,
    sample: bool,
    overwrite: bool,
    progress: bool,
    compression,
) -> Path:
    if out.exists() and not overwrite:
        with StateDataset.open(out) as done:
            differ = meta_differences(done.meta, meta)
            n_done = done.n_episodes
        if differ:
            raise ValueError(
                f"{out} already holds a dataset with another {', '.join(differ)}; "
                "pass overwrite=True to replace it or choose another out"
            )
        if n_done == episodes:
            log.warning(
                "%s already exists and is complete (%d episodes); returning it (pass overwrite=True to collect again)",
                out,
                n_done,
            )
            return out
        if n_done > episodes:
            raise ValueError(
                f"{out} already holds {n_done} episodes, more than the {episodes} "
                "asked; pass overwrite=True to replace it or choose another out"
            )
    extend = out.exists() and not overwrite  # add episodes to the complete file

    try:
        environment = make_env(name, **settings)
    except (TypeError, ValueError) as err:
        card = (model.info.get("env") or {}).get("settings") or {}
        source = model.info.get("source")
        whose = f"{source}: its card's env settings" if source and any(k in card for k in settings) else "env settings"
        raise ValueError(f"{whose} {json.dumps(settings)} are refused by {name}: {err}") from None
    try:
        _check_env(environment, model)
        with StateDatasetWriter(out, **meta, compression=compression, restart=overwrite) as writer:
            if extend and writer.n_episodes == 0:
                writer.start_from(out)
            if writer.n_episodes > episodes:
                writer.truncate(episodes)
            try:
                with tqdm(
                    total=episodes,
                    initial=writer.n_episodes,
                    unit="episode",
                    disable=not progress,
                    desc=f"collect {name}",
                ) as bar:
                    _record(
                        model, environment, writer, range(writer.n_episodes, episodes), seed, max_steps, sample, bar
                    )
                return writer.finalize()
            except (OSError, RuntimeError) as err:
                if isinstance(err, DiskFull) or not is_disk_full(err):
                    raise
                writer.close()  # the episode in progress is dropped; the finished ones stay
                raise DiskFull(
                    errno.ENOSPC,
                    f"the disk of {out} is full (No space left on device) after {writer.n_episodes} of {episodes} "
                    f"episodes; they are kept in {writer.dir}: free space and run the same command again to resume",
                ) from None
    finally:
        environment.close()


def agent_record(model: Model) -> dict:
    """What a dataset records about its agent; ``fingerprint`` hashes the weights."""
    return {
        "source": model.info.get("source"),  # path or zoo name, as load_agent records it
        "card": model.info.get("card"),
        "architecture": type(model.net).__name__,
        "input_shape": list(model.input_shape),
        "score_kind": model.score_kind,
        "obs_scale": model.obs_scale,
        "fingerprint": model.fingerprint(),
    }


def _resolve_env(model: Model, env: str | None, env_settings: Mapping | None) -> tuple[str, dict]:
    """The env name and settings to collect in; refuse ones the agent was not trained on."""
    if env is not None and not isinstance(env, str):
        raise TypeError(f"env must be a registered env name, got {type(env).__name__}")
    trained = model.info.get("env")
    if not trained:
        if env is None:
            raise ValueError(
                "no env given and the model does not record the env it was trained "
                "on (model.info['env']); pass env='<name>'"
            )
        return env, dict(env_settings or {})
    name = trained["name"] if env is None else env
    # settings asked for the agent's own env are laid over the agent's (``--set labels=true``
    # adds ground truth to a v4 Pong agent's settings); for another env they stand alone
    base = dict(trained.get("settings") or {}) if name == trained["name"] else {}
    settings = {**base, **dict(env_settings or {})}

    def relevant(d: Mapping) -> dict:  # what the agent sees and does; not the ground truth it gets
        return {k: v for k, v in d.items() if k not in INFO_ONLY_SETTINGS}

    try:
        same = json.dumps(relevant(settings), sort_keys=True) == json.dumps(
            relevant(trained.get("settings") or {}), sort_keys=True
        )
    except TypeError as err:
        raise ValueError(f"env settings must be JSON-serialisable to be recorded: {err}") from err
    if name != trained["name"] or not same:
        mine, theirs = relevant(trained.get("settings") or {}), relevant(settings)
        differ = [
            f"{k}: agent {mine.get(k, '(default)')!r}, asked {theirs.get(k, '(default)')!r}"
            for k in sorted(set(mine) | set(theirs))
            if mine.get(k) != theirs.get(k)
        ]
        raise ValueError(
            f"the agent was trained on env {trained['name']!r} with settings "
            f"{trained.get('settings') or {}}, but the collection asks for env {name!r} with "
            f"settings {settings}"
            + (f" (they differ in {'; '.join(differ)})" if name == trained["name"] and differ else "")
            + "; omit env and env_settings to use the agent's (other settings "
            "would show it observations it was never trained on)"
        )
    return name, settings


def _check_env(env: gym.Env, model: Model) -> None:
    shape = tuple(env.observation_space.shape or ())
    if shape != model.input_shape:
        raise ValueError(
            f"the env's observations {shape} do not match the model's input "
            f"{model.input_shape} (channels first, frames stacked on channels)"
        )
    n = getattr(env.action_space, "n", None)
    if not isinstance(env.action_space, gym.spaces.Discrete) or int(n) != model.n_actions:  # type: ignore[arg-type]
        raise ValueError(
            f"the env's action space {env.action_space} does not match the model's {model.n_actions} actions"
        )


class _Scored(Greedy):
    """The model's greedy or sampled action on each observation, keeping the scores it acted on
    (``self.scores``, ``(B, K)``); sampled actions are drawn with ``torch.multinomial`` from a
    ``torch.Generator`` per episode seeded with the episode's seed. A recurrent model's state is
    carried from step to step (:class:`~xrl.rollout.Greedy`)."""

    def __init__(self, model: Model, sample: bool) -> None:
        super().__init__(model)
        self.sample = sample
        self.generators: list[torch.Generator] = []
        self.scores = torch.empty(0)

    def reseed(self, seeds) -> None:
        super().reseed(seeds)
        self.generators = [torch.Generator().manual_seed(int(s)) for s in seeds]

    def __call__(self, obs: np.ndarray) -> list[int]:
        self.scores = self.score(obs).float().cpu()  # (B, K)
        if self.sample:
            return [
                int(torch.multinomial(torch.softmax(row, -1), 1, generator=g))
                for row, g in zip(self.scores, self.generators)
            ]
        return [int(row.argmax()) for row in self.scores]


def _record(
    model: Model,
    env: gym.Env,
    writer: StateDatasetWriter,
    todo: range,
    seed: int,
    max_steps: int | None,
    sample: bool,
    bar,
) -> None:
    """Play episodes ``todo`` (episode ``i`` reset with ``seed + i``) through
    :func:`xrl.rollout.evaluate_policy`, appending each step to ``writer`` (in blocks) and
    committing each episode with its return as it ends."""
    if not len(todo):
        return
    policy, block = _Scored(model, sample), []
    returns = list(writer.episode_returns)

    def step(s: Step) -> None:
        if s.obs.dtype != np.uint8:
            raise ValueError(f"xrl envs give uint8 observations, got {s.obs.dtype}")
        if s.frame is None:
            raise ValueError("env.render() returned None; the env must render rgb_array frames")
        scores = policy.scores[s.slot]
        block.append((s.obs.copy(), s.frame, s.action, scores.numpy(), s.info.get("labels"), s.recurrent))
        if len(block) == _BLOCK or s.done:
            _append(writer, block, model.input_shape[1:])
            block.clear()
        if s.done:
            writer.end_episode(s.total)
            returns.append(s.total)
            bar.update(1)
            bar.set_postfix(steps=writer.n_rows, mean_return=f"{np.mean(returns):.3g}")

    evaluate_policy(
        policy, env, episodes=len(todo), seed=seed + todo.start, callback=step, max_steps=max_steps, frames=True
    )


def _append(writer: StateDatasetWriter, block: list[tuple], label_shape: tuple[int, ...]) -> None:
    states, frames, actions, scores, labels, recurrent = zip(*block)
    if all(x is None for x in labels):
        stacked = None
    else:  # steps without ground truth are excluded from scoring
        stacked = np.stack([np.full(label_shape, EXCLUDED, np.int8) if x is None else np.asarray(x) for x in labels])
    writer.append(
        states=np.stack(states),
        frames=np.stack(frames),
        actions=np.asarray(actions),
        scores=np.stack(scores),
        labels=stacked,
        recurrent=None if recurrent[0] is None else np.stack(recurrent),
    )
