"""xrl.rollout.evaluate_policy against episodes played by hand with gymnasium, one at a time."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from xrl.agents.load import load_agent
from xrl.agents.model import as_model
from xrl.envs import make_env
from xrl.rollout import Constant, Episodes, Policy, Uniform, evaluate_policy

ENV = "red-fetch-green"


@pytest.fixture(scope="module")
def model():
    return load_agent(ENV)


def by_hand(choose, episodes: int, seed: int, max_steps: int | None = None, frames: bool = False) -> dict:
    """Episode i on its own env, reset with seed + i; ``choose(obs, i, rng)`` picks each action
    (rng: numpy, seeded seed + i). The states it saw, its return, length and how it ended."""
    out: dict = {"returns": [], "lengths": [], "terminated": [], "states": [], "frames": []}
    for i in range(episodes):
        env, rng = make_env(ENV), np.random.default_rng(seed + i)
        obs, _ = env.reset(seed=seed + i)
        total, steps, states, shown, terminated = 0.0, 0, [], [], False
        while True:
            states.append(np.array(obs, copy=True))
            if frames:
                shown.append(np.array(env.render(), copy=True))
            obs, reward, terminated, truncated, _ = env.step(choose(obs, i, rng))
            total, steps = total + float(reward), steps + 1
            if terminated or truncated or (max_steps is not None and steps >= max_steps):
                break
        env.close()
        for key, value in zip(out, (total, steps, bool(terminated), states, shown)):
            out[key].append(value)
    return out


def played(policy, episodes: int, seed: int, **kwargs) -> tuple[Episodes, dict]:
    """evaluate_policy with a callback recording each episode's states (and frames)."""
    seen: dict = {"states": [[] for _ in range(episodes)], "frames": [[] for _ in range(episodes)]}

    def record(step):
        assert step.t == len(seen["states"][step.episode])
        seen["states"][step.episode].append(step.obs.copy())
        if step.frame is not None:
            seen["frames"][step.episode].append(step.frame)

    return evaluate_policy(policy, ENV, episodes=episodes, seed=seed, callback=record, **kwargs), seen


def same_states(a: list, b: list) -> bool:
    return len(a) == len(b) and all(
        len(x) == len(y) and all(np.array_equal(u, v) for u, v in zip(x, y)) for x, y in zip(a, b)
    )


def greedy_hand(model):
    def choose(obs, i, rng):
        with torch.inference_mode():
            return int(model(model.preprocess(obs)).argmax(-1)[0])

    return choose


def sampled_hand(model):
    def choose(obs, i, rng):
        with torch.inference_mode():
            p = model.probs(model.preprocess(obs))[0].double().numpy()
        return int(rng.choice(len(p), p=p / p.sum()))

    return choose


@pytest.mark.parametrize("sample", [False, True], ids=["greedy", "sampled"])
def test_episodes_side_by_side_are_the_episodes_played_by_hand(model, sample):
    hand = by_hand(sampled_hand(model) if sample else greedy_hand(model), 5, seed=40)
    for n_envs in (1, 3):
        got, seen = played(model, 5, 40, sample=sample, n_envs=n_envs)
        assert got.returns == hand["returns"]
        assert got.lengths == hand["lengths"] == [len(s) for s in hand["states"]]
        assert got.terminated == hand["terminated"]
        assert got.seeds == [40, 41, 42, 43, 44]
        assert same_states(seen["states"], hand["states"])
    summary = got.summary(per_episode=True)
    assert summary["mean_return"] == pytest.approx(np.mean(hand["returns"]))
    assert summary["returns"] == hand["returns"] and summary["episodes"] == 5 and summary["seed"] == 40


def test_max_steps_frames_and_constant_actions(model):
    hand = by_hand(lambda obs, i, rng: 2, 3, seed=7, max_steps=4, frames=True)
    got, seen = played(Constant(2), 3, 7, n_envs=2, max_steps=4, frames=True)
    assert got.returns == hand["returns"] and got.lengths == [4, 4, 4] == hand["lengths"]
    assert same_states(seen["states"], hand["states"]) and same_states(seen["frames"], hand["frames"])


def test_uniform_draws_what_the_seeded_action_space_draws(model):
    spaces: dict = {}

    def choose(obs, i, rng):
        if i not in spaces:  # the env's own space, seeded with the episode's seed, as fls did
            spaces[i] = make_env(ENV).action_space
            spaces[i].seed(11 + i)
        return int(spaces[i].sample())

    hand = by_hand(choose, 4, seed=11, max_steps=30)
    got, seen = played(Uniform(make_env(ENV).action_space), 4, 11, n_envs=3, max_steps=30)
    assert got.returns == hand["returns"] and same_states(seen["states"], hand["states"])


def test_a_perturbation_is_reseeded_per_group_and_acts_on_the_states(model):
    class Halve:
        def __init__(self):
            self.seeds = []

        def reseed(self, seeds):
            self.seeds.append(list(seeds))

        def __call__(self, states):
            return states * 0.5

    perturb = Halve()
    hand = by_hand(lambda obs, i, rng: int(model(model.preprocess(obs) * 0.5).argmax(-1)[0]), 3, seed=2)
    got, _ = played(model, 3, 2, perturb=perturb, n_envs=2)
    assert got.returns == hand["returns"] and perturb.seeds == [[2, 3], [4]]


def test_given_envs_are_used_and_not_closed(model):
    envs = [make_env(ENV), make_env(ENV)]
    got = evaluate_policy(model, envs, episodes=3, seed=40)
    assert got.returns == by_hand(greedy_hand(model), 3, seed=40)["returns"]
    envs[0].reset(seed=0)  # still open


def test_bad_input_is_refused_with_one_line(model):
    q_model = as_model(model.net, input_shape=model.input_shape, score_kind="q_values")
    with pytest.raises(ValueError, match="sample=True needs a policy that outputs logits"):
        evaluate_policy(q_model, ENV, episodes=1, sample=True)
    with pytest.raises(ValueError, match="episodes must be a positive number of episodes, got 0"):
        evaluate_policy(model, ENV, episodes=0)
    with pytest.raises(ValueError, match="n_envs must be a positive number of envs, got 0"):
        evaluate_policy(model, ENV, episodes=1, n_envs=0)
    with pytest.raises(ValueError, match="max_steps must be a positive number of steps or None, got -1"):
        evaluate_policy(model, ENV, episodes=1, max_steps=-1)
    with pytest.raises(TypeError, match="policy must be an xrl Model or an xrl.rollout.Policy, got function"):
        evaluate_policy(lambda obs: [0], ENV, episodes=1)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="sample and perturb apply to a Model"):
        evaluate_policy(Constant(0), ENV, episodes=1, sample=True)
    with pytest.raises(NotImplementedError):
        evaluate_policy(Policy(), ENV, episodes=1)
