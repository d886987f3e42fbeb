"""Atari envs: API, layout (channels first, oldest frame first), seeding, and recorded settings."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env

from xrl.envs import ENVS, env_spec, make_env
from xrl.envs.atari import GAMES, action_names, ale_id, make_atari

VERSIONS = ["v5", "v4"]
GAMES_UNDER_TEST = ["pong", "breakout"]


def rollout(env, seed: int, actions) -> tuple[list[np.ndarray], list[float]]:
    obs, _ = env.reset(seed=seed)
    observations, rewards = [obs], []
    for action in actions:
        obs, reward, terminated, truncated, _ = env.step(int(action))
        observations.append(obs)
        rewards.append(float(reward))
        assert not (terminated or truncated)
    return observations, rewards


def fixed_actions(env, n: int = 50) -> np.ndarray:
    return np.random.default_rng(0).integers(env.action_space.n, size=n)


# The render check re-makes the env in every declared render mode, "human" included, which opens
# an SDL window and audio device (absent here and in CI); rgb_array rendering is tested below.
# v4's close check re-makes the env from env.spec, which cannot rebuild SB3's wrappers (they do
# not record their constructor arguments); xrl envs are rebuilt with make_env(**env_spec(env)).
@pytest.mark.filterwarnings("ignore:.*is different from the unwrapped version")
@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize("name", GAMES_UNDER_TEST)
def test_check_env(name, version):
    env = make_env(name, version=version)
    check_env(env, skip_render_check=True, skip_close_check=version == "v4")


@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize("name", GAMES_UNDER_TEST)
def test_observation_layout_and_render(name, version):
    env = make_env(name, version=version)
    assert env.observation_space.shape == (4, 84, 84)
    assert env.observation_space.dtype == np.uint8
    obs, _ = env.reset(seed=0)
    assert obs.shape == (4, 84, 84) and obs.dtype == np.uint8
    obs, *_ = env.step(0)
    assert obs.shape == (4, 84, 84) and obs.dtype == np.uint8
    frame = env.render()
    assert frame.shape == (210, 160, 3) and frame.dtype == np.uint8


@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize("name", GAMES_UNDER_TEST)
def test_seeded_rollouts_are_reproducible_with_sticky_actions(name, version):
    first = make_env(name, version=version, sticky_actions=True)
    second = make_env(name, version=version, sticky_actions=True)
    actions = fixed_actions(first)
    rollout(second, seed=99, actions=actions)  # reseeding a used env must start afresh
    obs_a, rewards_a = rollout(first, seed=7, actions=actions)
    obs_b, rewards_b = rollout(second, seed=7, actions=actions)
    assert rewards_a == rewards_b
    for a, b in zip(obs_a, obs_b):
        np.testing.assert_array_equal(a, b)
    obs_c, _ = rollout(second, seed=8, actions=actions)
    assert any(not np.array_equal(a, c) for a, c in zip(obs_a, obs_c))


def _preprocessed_next_screen(env, action: int, version: str) -> np.ndarray:
    """What the newest frame after ``env.step(action)`` must be, computed from the raw emulator.

    Plays the 4 skipped frames on a cloned emulator state, max-pools the last two screens,
    converts to gray (ALE palette in v5, OpenCV RGB2GRAY in v4) and resizes to 84x84.
    """
    ale = env.unwrapped.ale
    state = ale.cloneState()
    ale_action = ale.getMinimalActionSet()[action]
    screens = []
    for _ in range(4):
        ale.act(ale_action)
        screens.append(ale.getScreenGrayscale() if version == "v5" else ale.getScreenRGB())
    ale.restoreState(state)
    pooled = np.maximum(screens[-2], screens[-1])
    if version == "v4":
        pooled = cv2.cvtColor(pooled, cv2.COLOR_RGB2GRAY)
    return cv2.resize(pooled, (84, 84), interpolation=cv2.INTER_AREA)


@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize("name", GAMES_UNDER_TEST)
def test_stack_is_oldest_first_and_newest_is_current_screen(name, version):
    env = make_env(name, version=version, sticky_actions=False)  # sticky would break the replay
    obs, _ = env.reset(seed=3)
    for action in fixed_actions(env, n=12):  # by step 12 the max-pool changes pixels
        expected = _preprocessed_next_screen(env, int(action), version)
        new_obs, *_ = env.step(int(action))
        np.testing.assert_array_equal(new_obs[-1], expected)
        np.testing.assert_array_equal(new_obs[:-1], obs[1:])
        obs = new_obs


@pytest.mark.parametrize("version", VERSIONS)
def test_reset_padding_of_the_stack(version):
    obs, _ = make_env("breakout", version=version).reset(seed=0)
    if version == "v5":  # the first screen repeated
        assert all(np.array_equal(frame, obs[-1]) for frame in obs)
    else:  # zeros, as SB3's VecFrameStack
        assert not obs[:-1].any() and obs[-1].any()


def test_recorded_settings_hold_defaults_and_differ_between_versions():
    v5 = env_spec(make_env("pong"))
    v4 = env_spec(make_env("pong", version="v4", noop_max=5))
    assert v5 == {
        "name": "pong",
        "settings": {
            "version": "v5",
            "sticky_actions": True,
            "full_action_space": False,
            "frame_stack": 4,
            "noop_max": 30,
            "terminal_on_life_loss": False,
            "frame_stack_padding": "reset",
            "labels": False,
            "infinite": False,
        },
    }
    assert v4["settings"]["version"] == "v4"
    assert v4["settings"]["sticky_actions"] is False
    assert v4["settings"]["frame_stack_padding"] == "zero"
    assert v4["settings"]["noop_max"] == 5
    assert ale_id("pong", "v5") == "ALE/Pong-v5" and ale_id("pong", "v4") == "PongNoFrameskip-v4"


def test_env_rebuilt_from_its_recorded_settings_is_identical():
    env = make_env("breakout", version="v4", frame_stack=3, terminal_on_life_loss=True)
    spec = env_spec(env)
    again = make_env(spec["name"], **spec["settings"])
    assert env_spec(again) == spec
    assert again.observation_space.shape == (3, 84, 84)
    actions = fixed_actions(env, n=10)
    for a, b in zip(rollout(env, 1, actions)[0], rollout(again, 1, actions)[0]):
        np.testing.assert_array_equal(a, b)


def test_unknown_game_error_lists_the_known_ones():
    with pytest.raises(ValueError, match="known environments: .*breakout.*pong"):
        make_env("pongg")
    with pytest.raises(ValueError, match="known games: .*breakout.*ms-pacman.*pong"):
        make_atari("tetris")


@pytest.mark.parametrize(
    "settings, error",
    [
        ({"version": "v3"}, ValueError),
        ({"sticky_actions": 0.25}, TypeError),
        ({"frame_stack": 0}, ValueError),
        ({"noop_max": -1}, ValueError),
        ({"frame_stack_padding": "same"}, ValueError),
    ],
)
def test_bad_settings_are_refused(settings, error):
    with pytest.raises(error):
        make_env("pong", **settings)


def test_action_names():
    assert action_names(make_env("pong")) == ["NOOP", "FIRE", "RIGHT", "LEFT", "RIGHTFIRE", "LEFTFIRE"]
    assert action_names(make_env("breakout", version="v4")) == ["NOOP", "FIRE", "RIGHT", "LEFT"]
    full = make_env("breakout", full_action_space=True)
    assert len(action_names(full)) == full.action_space.n == 18


def test_rewards_are_not_clipped():
    env = make_env("pong", version="v4")
    chain = []
    while env is not env.unwrapped:
        chain.append(type(env).__name__)
        env = env.env
    assert "ClipRewardEnv" not in chain and "AtariWrapper" in chain


@pytest.mark.parametrize("name", sorted(GAMES))
def test_every_registered_game_builds(name):
    assert name in ENVS
    obs, _ = make_env(name).reset(seed=0)
    assert obs.shape == (4, 84, 84)
