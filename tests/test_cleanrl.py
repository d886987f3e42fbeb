"""CleanRL's torch Atari agents load as Models that score like CleanRL's own networks.

The networks are declared here as CleanRL's scripts declare them (vwxyzjn/cleanrl,
cleanrl/dqn_atari.py ``QNetwork``, ppo_atari.py ``Agent``, c51_atari.py ``QNetwork``), their
``state_dict`` saved as the scripts save it, and xrl's scores compared with the scripts' own
forward (which divides by 255 itself) on observations of CleanRL's Atari env pipeline, rebuilt
here by hand from the scripts' ``make_env`` (Stable-Baselines3's copies of the wrappers)."""

import json

import cv2
import gymnasium as gym
import numpy as np
import pytest
import torch
import torch.nn as nn

import xrl
from xrl.artifacts import ArtifactError

ENV_ID = "BreakoutNoFrameskip-v4"


class _Envs:  # what the scripts' constructors read from their vector env
    single_action_space = gym.spaces.Discrete(4)


def layer_init(layer, std=np.sqrt(2), bias_const=0.0):  # noqa: B008 (as ppo_atari.py writes it)
    torch.nn.init.orthogonal_(layer.weight, std)
    torch.nn.init.constant_(layer.bias, bias_const)
    return layer


class QNetwork(nn.Module):  # dqn_atari.py
    def __init__(self, env):
        super().__init__()
        self.network = nn.Sequential(
            nn.Conv2d(4, 32, 8, stride=4),
            nn.ReLU(),
            nn.Conv2d(32, 64, 4, stride=2),
            nn.ReLU(),
            nn.Conv2d(64, 64, 3, stride=1),
            nn.ReLU(),
            nn.Flatten(),
            nn.Linear(3136, 512),
            nn.ReLU(),
            nn.Linear(512, env.single_action_space.n),
        )

    def forward(self, x):
        return self.network(x / 255.0)


class Agent(nn.Module):  # ppo_atari.py
    def __init__(self, envs):
        super().__init__()
        self.network = nn.Sequential(
            layer_init(nn.Conv2d(4, 32, 8, stride=4)),
            nn.ReLU(),
            layer_init(nn.Conv2d(32, 64, 4, stride=2)),
            nn.ReLU(),
            layer_init(nn.Conv2d(64, 64, 3, stride=1)),
            nn.ReLU(),
            nn.Flatten(),
            layer_init(nn.Linear(64 * 7 * 7, 512)),
            nn.ReLU(),
        )
        self.actor = layer_init(nn.Linear(512, envs.single_action_space.n), std=0.01)
        self.critic = layer_init(nn.Linear(512, 1), std=1)

    def get_value(self, x):
        return self.critic(self.network(x / 255.0))

    def logits(self, x):  # get_action_and_value's logits
        return self.actor(self.network(x / 255.0))


class C51QNetwork(nn.Module):  # c51_atari.py
    def __init__(self, env, n_atoms=101, v_min=-100, v_max=100):
        super().__init__()
        self.n_atoms = n_atoms
        self.register_buffer("atoms", torch.linspace(v_min, v_max, steps=n_atoms))
        self.n = env.single_action_space.n
        self.network = nn.Sequential(
            nn.Conv2d(4, 32, 8, stride=4),
            nn.ReLU(),
            nn.Conv2d(32, 64, 4, stride=2),
            nn.ReLU(),
            nn.Conv2d(64, 64, 3, stride=1),
            nn.ReLU(),
            nn.Flatten(),
            nn.Linear(3136, 512),
            nn.ReLU(),
            nn.Linear(512, self.n * n_atoms),
        )

    def q_values(self, x):  # as the script's training loop computes them
        logits = self.network(x / 255.0)
        pmfs = torch.softmax(logits.view(len(x), self.n, self.n_atoms), dim=2)
        return (pmfs * self.atoms).sum(2)


def cleanrl_env():
    """The scripts' make_env thunk (gymnasium 0.29's ResizeObservation, GrayScaleObservation
    (OpenCV RGB2GRAY) and FrameStack written out), without RecordEpisodeStatistics."""
    import ale_py
    from stable_baselines3.common.atari_wrappers import (
        ClipRewardEnv,
        EpisodicLifeEnv,
        FireResetEnv,
        MaxAndSkipEnv,
        NoopResetEnv,
    )

    gym.register_envs(ale_py)
    env = gym.make(ENV_ID)
    env = NoopResetEnv(env, noop_max=30)
    env = MaxAndSkipEnv(env, skip=4)
    env = EpisodicLifeEnv(env)
    if "FIRE" in env.unwrapped.get_action_meanings():
        env = FireResetEnv(env)
    env = ClipRewardEnv(env)
    env = gym.wrappers.TransformObservation(
        env, lambda o: cv2.resize(o, (84, 84), interpolation=cv2.INTER_AREA), gym.spaces.Box(0, 255, (84, 84, 3))
    )
    env = gym.wrappers.TransformObservation(
        env, lambda o: cv2.cvtColor(o, cv2.COLOR_RGB2GRAY), gym.spaces.Box(0, 255, (84, 84), dtype=np.uint8)
    )
    return gym.wrappers.FrameStackObservation(env, 4)


def _rollout(env, steps=12, seed=3):
    obs, _ = env.reset(seed=seed)
    out = [np.asarray(obs)]
    for t in range(steps):
        obs, *_ = env.step((t * 7) % 4)
        out.append(np.asarray(obs))
    return np.stack(out)


@pytest.fixture(scope="module")
def observations():
    """Observations of xrl's gym:ID env as a CleanRL agent records it, checked against the hand-built pipeline."""
    from xrl.agents.cleanrl import env_spec

    spec = env_spec(ENV_ID, 4)
    env = xrl.make_env(spec["name"], **spec["settings"])
    assert env.unwrapped.xrl_spec == spec
    ours, theirs = _rollout(env), _rollout(cleanrl_env())
    assert ours.shape == (13, 4, 84, 84) and ours.dtype == np.uint8
    np.testing.assert_array_equal(ours, theirs)
    assert ours[-1].std() > 0  # a real screen, not a blank one
    return ours


def _strong(net):
    """Weights scaled so that scores are O(1)-O(100): a missing /255 or head mix-up shows."""
    torch.manual_seed(0)
    with torch.no_grad():
        for p in net.parameters():
            p.add_(torch.randn_like(p) * (p.std().item() if p.numel() > 1 else 0.0) + 1e-3 * torch.randn_like(p))
    return net


def _check(model, reference, obs):
    with torch.no_grad():
        ours = model(model.preprocess(obs))
        theirs = reference(torch.as_tensor(obs, dtype=torch.float32))
    assert (ours - theirs).abs().max().item() <= 1e-5
    assert theirs.abs().max().item() > 0.05 and theirs.std().item() > 1e-3
    return ours


def test_dqn_state_dict_in_a_run_folder(tmp_path, observations):
    torch.manual_seed(1)
    net = _strong(QNetwork(_Envs()))
    run = tmp_path / "runs" / f"{ENV_ID}__dqn_atari__1__1700000000"
    run.mkdir(parents=True)
    torch.save(net.state_dict(), run / "dqn_atari.cleanrl_model")
    model = xrl.load_agent(run / "dqn_atari.cleanrl_model")
    assert model.score_kind == "q_values" and model.input_shape == (4, 84, 84)
    assert model.action_names == ["NOOP", "FIRE", "RIGHT", "LEFT"]
    assert model.info["env"]["name"] == f"gym:{ENV_ID}" and model.info["env"]["settings"]["atari"] == "cleanrl"
    _check(model, net, observations)
    assert np.array_equal(model.act(observations), net(torch.as_tensor(observations).float()).argmax(1).numpy())
    assert xrl.artifacts.fingerprint(model.net) == xrl.artifacts.fingerprint(net)  # same weights, same names


def test_ppo_agent_logits_and_value(tmp_path, observations):
    torch.manual_seed(2)
    agent = _strong(Agent(_Envs()))
    with torch.no_grad():
        agent.actor.weight.mul_(100)  # initialised at std 0.01: logits O(1), as after training
    torch.save(agent.state_dict(), tmp_path / "ppo_atari.cleanrl_model")
    model = xrl.load_agent(tmp_path / "ppo_atari.cleanrl_model")
    assert model.score_kind == "logits" and model.info["env"] is None  # no run folder, no args: env unknown
    _check(model, agent.logits, observations)
    with torch.no_grad():
        value = model.value(model.preprocess(observations))
        torch.testing.assert_close(value, agent.get_value(torch.as_tensor(observations).float()).reshape(-1))


def test_c51_expected_atoms(tmp_path, observations):
    torch.manual_seed(3)
    net = _strong(C51QNetwork(_Envs(), n_atoms=51, v_min=-10, v_max=10))
    with torch.no_grad():
        net.network[9].weight.mul_(30)  # peaked atom distributions: Q far from the atoms' mean
    args = {"env_id": ENV_ID, "n_atoms": 51, "v_min": -10, "v_max": 10, "seed": 1, "wandb_entity": None}
    torch.save({"model_weights": net.state_dict(), "args": args}, tmp_path / "c51_atari.cleanrl_model")
    model = xrl.load_agent(tmp_path / "c51_atari.cleanrl_model")
    assert model.score_kind == "q_values" and model.n_actions == 4
    assert model.info["card"]["args"]["env_id"] == ENV_ID
    _check(model, net.q_values, observations)


def test_an_unrecognised_state_dict_gets_one_line(tmp_path):
    net = QNetwork(_Envs())
    state = net.state_dict()
    state["network.9.extra"] = torch.zeros(3)
    torch.save(state, tmp_path / "odd.cleanrl_model")
    with pytest.raises(ArtifactError) as err:
        xrl.load_agent(tmp_path / "odd.cleanrl_model")
    text = str(err.value)
    assert "\n" not in text and "QNetwork" in text and "JAX/Flax" in text and "network.9.extra" in text
    torch.save({"network.0.weight": torch.zeros(16, 4, 8, 8)}, tmp_path / "small.cleanrl_model")
    with pytest.raises(ArtifactError, match="not a recognised CleanRL network"):
        xrl.load_agent(tmp_path / "small.cleanrl_model")


def test_a_flax_file_is_refused_as_out_of_scope(tmp_path):
    path = tmp_path / "dqn_atari_jax.cleanrl_model"
    path.write_bytes(b"\x82\xa6params\x81\xa5Dense" + json.dumps({"x": 1}).encode())  # msgpack, as flax writes
    with pytest.raises(ArtifactError, match="is not a torch file.*JAX/Flax models.*out of scope"):
        xrl.load_agent(path)
