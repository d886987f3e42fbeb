"""rl-zoo agents from the Hugging Face Hub, offline: repos laid out in a temporary Hub cache
(``models--ORG--REPO/{refs,blobs,snapshots}``, as huggingface_hub writes it) with
``HF_HUB_CACHE`` pointing at it and ``HF_HUB_OFFLINE=1``, loaded by ``hf://`` name; the env
is built from the repo's rl-zoo ``config.yml``; scores equal the library's own forward."""

import hashlib
import json
import os

import numpy as np
import pytest
import torch
from stable_baselines3 import PPO

import xrl
from xrl import cli

sb3_contrib = pytest.importorskip("sb3_contrib")
pytest.importorskip("huggingface_hub")
from sb3_contrib import QRDQN  # noqa: E402

COMMIT = "0123456789abcdef0123456789abcdef01234567"
# rl-zoo's config.yml as rl-baselines3-zoo writes it (yaml.dump of an OrderedDict)
PPO_CONFIG = """!!python/object/apply:collections.OrderedDict
- - - batch_size
    - 256
  - - clip_range
    - lin_0.1
  - - ent_coef
    - 0.01
  - - env_wrapper
    - - stable_baselines3.common.atari_wrappers.AtariWrapper
  - - frame_stack
    - 4
  - - n_envs
    - 8
  - - n_timesteps
    - 10000000.0
  - - policy
    - CnnPolicy
  - - policy_kwargs
    - dict(ortho_init=False)
"""
QRDQN_CONFIG = """!!python/object/apply:collections.OrderedDict
- - - env_wrapper
    - - stable_baselines3.common.atari_wrappers.AtariWrapper:
          terminal_on_life_loss: false
  - - exploration_fraction
    - 0.025
  - - frame_stack
    - 4
  - - policy
    - CnnPolicy
"""


def put_in_cache(cache, repo_id, files):
    """Lay out ``files`` ({name: bytes}) as the Hub cache holds a downloaded repo at COMMIT."""
    root = cache / f"models--{repo_id.replace('/', '--')}"
    (root / "refs").mkdir(parents=True)
    (root / "refs" / "main").write_text(COMMIT)
    snap = root / "snapshots" / COMMIT
    snap.mkdir(parents=True)
    (root / "blobs").mkdir()
    for name, data in files.items():
        blob = root / "blobs" / hashlib.sha256(data).hexdigest()
        blob.write_bytes(data)
        (snap / name).symlink_to(os.path.relpath(blob, snap))
    return snap


@pytest.fixture(scope="module")
def hub(tmp_path_factory):
    """A Hub cache with sb3/ppo-PongNoFrameskip-v4 (SB3 PPO) and sb3/qrdqn-QbertNoFrameskip-v4
    (sb3-contrib QR-DQN), each saved by its library, and the algorithms themselves."""
    cache = tmp_path_factory.mktemp("hf") / "hub"
    work = tmp_path_factory.mktemp("models")
    pong = xrl.make_env("pong", version="v4", terminal_on_life_loss=True)
    ppo = PPO("CnnPolicy", pong, seed=0, device="cpu", n_steps=16, batch_size=16)
    with torch.no_grad():
        ppo.policy.action_net.weight.mul_(100)  # logits O(1), as after training
    ppo.save(work / "ppo.zip")
    put_in_cache(
        cache,
        "sb3/ppo-PongNoFrameskip-v4",
        {
            "ppo-PongNoFrameskip-v4.zip": (work / "ppo.zip").read_bytes(),
            "config.yml": PPO_CONFIG.encode(),
            "env_kwargs.yml": b"{}\n",
        },
    )
    qbert = xrl.make_env("gym:QbertNoFrameskip-v4", atari="sb3", frame_stack=4, frame_stack_padding="zero")
    qrdqn = QRDQN("CnnPolicy", qbert, seed=0, device="cpu", buffer_size=100, learning_starts=0)
    with torch.no_grad():
        qrdqn.policy.quantile_net.quantile_net[-1].weight.mul_(50)
    qrdqn.save(work / "qrdqn.zip")
    put_in_cache(
        cache,
        "sb3/qrdqn-QbertNoFrameskip-v4",
        {"qrdqn-QbertNoFrameskip-v4.zip": (work / "qrdqn.zip").read_bytes(), "config.yml": QRDQN_CONFIG.encode()},
    )
    return cache, ppo, qrdqn


@pytest.fixture
def offline(hub, monkeypatch):
    monkeypatch.setenv("HF_HUB_CACHE", str(hub[0]))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return hub


def _play(model, steps=10, seed=5):
    env = xrl.make_env(model.info["env"]["name"], **model.info["env"]["settings"])
    obs, _ = env.reset(seed=seed)
    out = [obs]
    for t in range(steps):
        obs, *_ = env.step(t % model.n_actions)
        out.append(obs)
    return np.stack(out)


def test_an_rl_zoo_ppo_loads_by_name_with_its_env(offline):
    cache, ppo, _ = offline
    model = xrl.load_agent("hf://sb3/ppo-PongNoFrameskip-v4")
    assert model.info["env"]["name"] == "pong"
    settings = model.info["env"]["settings"]
    assert settings["version"] == "v4" and settings["frame_stack"] == 4 and settings["terminal_on_life_loss"]
    assert model.action_names[:2] == ["NOOP", "FIRE"] and model.info["source"] == "hf://sb3/ppo-PongNoFrameskip-v4"
    obs = _play(model)
    obs_t, _ = ppo.policy.obs_to_tensor(obs)
    with torch.no_grad():
        theirs = ppo.policy.get_distribution(obs_t).distribution.logits
        ours = torch.log_softmax(model(model.preprocess(obs)), -1)
    assert (ours - theirs).abs().max().item() <= 1e-5 and theirs.std() > 1e-3
    # the card beside the cached file names the agent exactly
    snap = cache / "models--sb3--ppo-PongNoFrameskip-v4" / "snapshots" / COMMIT
    card = json.loads((snap / "ppo-PongNoFrameskip-v4.json").read_text())
    blob = (snap / "ppo-PongNoFrameskip-v4.zip").read_bytes()
    assert card["repo"] == "sb3/ppo-PongNoFrameskip-v4" and card["revision"] == COMMIT
    assert card["sha256"] == hashlib.sha256(blob).hexdigest() and card["env"] == model.info["env"]
    assert card["fingerprint"] == model.fingerprint() and card["config"]["frame_stack"] == 4


def test_an_rl_zoo_qrdqn_of_a_game_xrl_does_not_register(offline):
    _, _, qrdqn = offline
    model = xrl.load_agent("hf://sb3/qrdqn-QbertNoFrameskip-v4")
    env = model.info["env"]
    assert env["name"] == "gym:QbertNoFrameskip-v4" and env["settings"]["atari"] == "sb3"
    assert env["settings"]["atari_kwargs"] == {"terminal_on_life_loss": False}
    obs = _play(model)
    obs_t, _ = qrdqn.policy.obs_to_tensor(obs)
    with torch.no_grad():
        theirs = qrdqn.policy.quantile_net(obs_t).mean(dim=1)
        ours = model(model.preprocess(obs))
    assert (ours - theirs).abs().max().item() <= 1e-5 and theirs.std() > 1e-3


def test_gym_atari_sb3_matches_sb3s_own_atari_vec_env():
    """gym:ID atari="sb3" gives the observations SB3's make_atari_env + VecFrameStack give."""
    from stable_baselines3.common.env_util import make_atari_env
    from stable_baselines3.common.vec_env import VecFrameStack, VecTransposeImage

    ours = xrl.make_env("gym:QbertNoFrameskip-v4", atari="sb3", frame_stack=4, frame_stack_padding="zero")
    theirs = VecTransposeImage(VecFrameStack(make_atari_env("QbertNoFrameskip-v4", n_envs=1, seed=7), 4))
    a, _ = ours.reset(seed=7)
    b = theirs.reset()
    np.testing.assert_array_equal(a, b[0])
    for t in range(8):
        a, *_ = ours.step(t % 6)
        b, *_ = theirs.step(np.array([t % 6]))
        np.testing.assert_array_equal(a, b[0])


def test_not_in_the_cache_says_where_it_looked(offline):
    with pytest.raises(ValueError, match="not found in the Hub cache .*HF_HUB_OFFLINE"):
        xrl.load_agent("hf://sb3/dqn-BreakoutNoFrameskip-v4")
    with pytest.raises(ValueError, match="expected hf://ORG/REPO"):
        xrl.load_agent("hf://just-a-name")


def test_cli_collect_and_explain_from_the_cache(offline, tmp_path, capsys):
    agent = "hf://sb3/ppo-PongNoFrameskip-v4"
    data, out = tmp_path / "pong.h5", tmp_path / "explain.png"
    assert cli.main(["collect", "--agent", agent, "--episodes", "1", "--max-steps", "6", "--out", str(data)]) in (
        0,
        None,
    )
    assert cli.main(
        ["explain", "--agent", agent, "--data", str(data), "--methods", "gradient", "--n", "2", "--out", str(out)]
    ) in (0, None)
    assert out.stat().st_size > 0
    from xrl.data.dataset import StateDataset

    with StateDataset.open(data) as ds:
        assert ds.agent["source"] == agent and ds.env["name"] == "pong"


def test_serve_lists_an_hf_agent_given_with_agent(offline, tmp_path):
    import re
    import subprocess
    import sys
    import time
    import urllib.request

    agent = "hf://sb3/ppo-PongNoFrameskip-v4"
    proc = subprocess.Popen(
        [sys.executable, "-m", "xrl.cli", "serve", "--agent", agent, "--port", "0", "--cache", str(tmp_path)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ},  # HF_HUB_CACHE and HF_HUB_OFFLINE=1 of the fixture
    )
    try:
        url, deadline = None, time.monotonic() + 300
        while url is None and time.monotonic() < deadline:
            line = proc.stdout.readline()
            assert line, proc.stderr.read()
            if m := re.search(r"open (http://127\.0\.0\.1:\d+/)", line):
                url = m.group(1)
        with urllib.request.urlopen(url + "api/agents", timeout=60) as r:
            body = json.loads(r.read())
        assert body["default"]["agent"] == agent
        assert [a["id"] for a in body["agents"]][0] == agent
        with urllib.request.urlopen(url + "api/methods?agent=" + agent, timeout=120) as r:
            assert "gradient" in {m["id"] for m in json.loads(r.read())["methods"]}
    finally:
        proc.terminate()
        proc.wait(timeout=60)


def test_a_bench_spec_checks_an_hf_agent(offline, tmp_path):
    from xrl.bench.spec import load_spec

    spec = tmp_path / "hub.toml"
    spec.write_text(
        'name = "hub"\nseeds = [0]\nn_states = 2\nmethods = ["gradient"]\nmetrics = ["deletion"]\n\n'
        '[[agents]]\nagent = "hf://sb3/ppo-PongNoFrameskip-v4"\nepisodes = 1\nmax_steps = 4\n'
    )
    xrl.load_agent("hf://sb3/ppo-PongNoFrameskip-v4")  # the card (with the weights fingerprint) is written
    checked = load_spec(spec, load_weights=False)
    assert [a.name for a in checked.agents] == ["ppo-PongNoFrameskip-v4"]


def test_a_cleanrl_repo_on_the_hub(tmp_path, monkeypatch):
    """CleanRL's push_to_hub layout: ENV_ID-EXP_NAME-seedN holding EXP_NAME.cleanrl_model."""
    import io

    from test_cleanrl import QNetwork, _Envs

    net = QNetwork(_Envs())
    buffer = io.BytesIO()
    torch.save(net.state_dict(), buffer)
    cache = tmp_path / "hub"
    put_in_cache(
        cache, "cleanrl/BreakoutNoFrameskip-v4-dqn_atari-seed1", {"dqn_atari.cleanrl_model": buffer.getvalue()}
    )
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    model = xrl.load_agent("hf://cleanrl/BreakoutNoFrameskip-v4-dqn_atari-seed1")
    assert model.info["env"]["name"] == "gym:BreakoutNoFrameskip-v4"
    assert model.info["env"]["settings"]["atari"] == "cleanrl" and model.info["card"]["revision"] == COMMIT
    obs = _play(model, steps=3)
    with torch.no_grad():
        ours, theirs = model(model.preprocess(obs)), net(torch.as_tensor(obs, dtype=torch.float32))
    assert (ours - theirs).abs().max().item() <= 1e-5
