"""Agents saved by plain SB3 (PPO, A2C, DQN ``.zip``) load as Models that score exactly like
the SB3 policy itself."""

import numpy as np
import pytest
import torch
from stable_baselines3 import A2C, DQN, PPO

import xrl


@pytest.fixture(scope="module")
def env():
    return xrl.make_env("red-fetch-green")


def _obs(env, n=5):
    out = []
    for seed in range(n):
        obs, _ = env.reset(seed=seed)
        out.append(obs)
    return np.stack(out)


@pytest.mark.parametrize("algo", [PPO, A2C])
def test_actor_critic_zip_scores_like_sb3(tmp_path, env, algo):
    sb3 = algo("CnnPolicy", env, seed=0, device="cpu")
    sb3.save(tmp_path / "agent.zip")
    model = xrl.load_agent(tmp_path / "agent.zip")
    obs = _obs(env)
    obs_t, _ = sb3.policy.obs_to_tensor(obs)
    with torch.no_grad():
        logits = sb3.policy.get_distribution(obs_t).distribution.logits
        values = sb3.policy.predict_values(obs_t)
        states = model.preprocess(obs)
        torch.testing.assert_close(torch.log_softmax(model(states), -1), logits)
        torch.testing.assert_close(model.value(states).reshape(-1), values.reshape(-1))
    assert model.score_kind == "logits" and model.input_shape == (3, 64, 64)
    assert np.array_equal(model.act(obs), sb3.predict(obs, deterministic=True)[0])


def test_dqn_zip_gives_q_values(tmp_path, env):
    sb3 = DQN("CnnPolicy", env, seed=0, device="cpu", buffer_size=100, learning_starts=0)
    sb3.save(tmp_path / "agent.zip")
    model = xrl.load_agent(tmp_path / "agent.zip")
    obs = _obs(env)
    obs_t, _ = sb3.policy.obs_to_tensor(obs)
    with torch.no_grad():
        torch.testing.assert_close(model(model.preprocess(obs)), sb3.q_net(obs_t))
    assert model.score_kind == "q_values"
    assert np.array_equal(model.act(obs), sb3.predict(obs, deterministic=True)[0])


def test_a_zip_that_is_not_an_sb3_model_is_refused(tmp_path):
    bad = tmp_path / "agent.zip"
    bad.write_bytes(b"not a zip at all")
    with pytest.raises(ValueError, match="not a zip file"):
        xrl.load_agent(bad)
