"""sb3-contrib agents (QR-DQN, TRPO, RecurrentPPO) saved by sb3-contrib itself load, without
unpickling, as Models that score like the library's own policy: Q = mean of the quantiles for
QR-DQN, the actor's logits for TRPO and RecurrentPPO (from the recurrent state given)."""

import numpy as np
import pytest
import torch

import xrl

sb3_contrib = pytest.importorskip("sb3_contrib")
from sb3_contrib import QRDQN, TRPO, RecurrentPPO  # noqa: E402
from sb3_contrib.common.recurrent.type_aliases import RNNStates  # noqa: E402


@pytest.fixture(scope="module")
def env():
    return xrl.make_env("red-fetch-green")


def _obs(env, n=5):
    return np.stack([env.reset(seed=seed)[0] for seed in range(n)])


def _close(a, b):
    assert (a - b).abs().max().item() <= 1e-5


def test_qrdqn_scores_are_the_quantile_means(tmp_path, env):
    algo = QRDQN("CnnPolicy", env, seed=0, device="cpu", buffer_size=100, learning_starts=0)
    with torch.no_grad():  # spread the quantiles so that their mean is not their first one
        algo.policy.quantile_net.quantile_net[-1].weight.mul_(50)
    algo.save(tmp_path / "qrdqn.zip")
    model = xrl.load_agent(tmp_path / "qrdqn.zip")
    obs = _obs(env)
    obs_t, _ = algo.policy.obs_to_tensor(obs)
    with torch.no_grad():
        theirs = algo.policy.quantile_net(obs_t).mean(dim=1)  # QRDQNPolicy._predict's q_values
        _close(model(model.preprocess(obs)), theirs)
    assert model.score_kind == "q_values" and theirs.std() > 1e-3
    assert np.array_equal(model.act(obs), algo.predict(obs, deterministic=True)[0])


def test_trpo_is_an_actor_critic(tmp_path, env):
    algo = TRPO("CnnPolicy", env, seed=0, device="cpu", n_steps=64, batch_size=32)
    algo.save(tmp_path / "trpo.zip")
    model = xrl.load_agent(tmp_path / "trpo.zip")
    obs = _obs(env)
    obs_t, _ = algo.policy.obs_to_tensor(obs)
    with torch.no_grad():
        states = model.preprocess(obs)
        _close(torch.log_softmax(model(states), -1), algo.policy.get_distribution(obs_t).distribution.logits)
        _close(model.value(states), algo.policy.predict_values(obs_t).reshape(-1))
    assert model.score_kind == "logits"


def test_recurrent_ppo_from_the_zero_state_and_a_carried_one(tmp_path, env):
    algo = RecurrentPPO("CnnLstmPolicy", env, seed=0, device="cpu", n_steps=16, batch_size=16)
    with torch.no_grad():
        algo.policy.action_net.weight.mul_(100)  # logits O(1), as after training
    algo.save(tmp_path / "rppo.zip")
    model = xrl.load_agent(tmp_path / "rppo.zip")
    assert model.info["recurrent"] is True and model.score_kind == "logits"
    policy = algo.policy
    obs = _obs(env)
    obs_t, _ = policy.obs_to_tensor(obs)
    n, shape = len(obs), policy.lstm_hidden_state_shape
    zeros = (torch.zeros(shape[0], n, shape[2]), torch.zeros(shape[0], n, shape[2]))
    with torch.no_grad():
        states = model.preprocess(obs)
        dist, _ = policy.get_distribution(obs_t, zeros, torch.ones(n))  # an episode's first step
        _close(torch.log_softmax(model(states), -1), dist.distribution.logits)
        _close(model.value(states), policy.predict_values(obs_t, zeros, torch.ones(n)).reshape(-1))
        # the state carried over three steps of an episode, then every observation scored from it
        carried = RNNStates((zeros[0][:, :1], zeros[1][:, :1]), (zeros[0][:, :1], zeros[1][:, :1]))
        for t in range(3):
            step, _ = policy.obs_to_tensor(obs[t : t + 1])
            _, _, _, carried = policy.forward(step, carried, torch.tensor([float(t == 0)]))
        model.net.recurrent_state = carried
        wide = [tuple(s.expand(-1, n, -1) for s in pair) for pair in (carried.pi, carried.vf)]
        dist, _ = policy.get_distribution(obs_t, wide[0], torch.zeros(n))
        ours = model(states)
        _close(torch.log_softmax(ours, -1), dist.distribution.logits)
        _close(model.value(states), policy.predict_values(obs_t, wide[1], torch.zeros(n)).reshape(-1))
        assert (ours - model.net.policy.action_net(torch.zeros(1, 256))).abs().max() > 1e-3  # not the bias alone
        model.net.recurrent_state = None
        assert not torch.allclose(torch.log_softmax(model(states), -1), dist.distribution.logits, atol=1e-5)
