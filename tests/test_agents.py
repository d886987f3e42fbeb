"""Agents: train (tiny PPO budgets) → save → load, resume, refusing bad checkpoints and runs, zoo.

The trained agents here are far too small to play well; what is tested is that the weights that
come back from disk are the weights that were trained, and that a resumed run ends bit-for-bit
where an uninterrupted one does.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import zipfile

import numpy as np
import pytest
import torch
from stable_baselines3 import DQN, PPO

from xrl import as_model, get_explainer, load_agent, make_env
from xrl.agents.load import CHECKPOINT_FORMAT, ZOO_DIR, save_agent
from xrl.agents.nets import ARCHS, GridCNN
from xrl.train.agent import AgentArgs, evaluate, make_vec_env, train_agent

ENV = "red-fetch-green"
ACTION_NAMES = ["left", "right", "forward", "pickup"]


def tiny_args(out, **changes) -> AgentArgs:
    base = AgentArgs(
        env=ENV,
        total_timesteps=512,
        n_envs=2,
        n_steps=128,
        eval_episodes=2,
        checkpoint_every=256,
        out=str(out),
        progress=False,
    )
    return dataclasses.replace(base, **changes)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A finished tiny run: (args, path of agent.pt)."""
    args = tiny_args(tmp_path_factory.mktemp("agent") / "run")
    return args, train_agent(args)


@pytest.fixture(scope="module")
def observations() -> np.ndarray:
    """Raw uint8 observations from a few seeded random rollouts."""
    env = make_env(ENV)
    rng = np.random.default_rng(0)
    out = []
    for seed in range(3):
        obs, _ = env.reset(seed=seed)
        for _ in range(8):
            out.append(obs)
            obs, _, terminated, truncated, _ = env.step(int(rng.integers(4)))
            if terminated or truncated:
                obs, _ = env.reset(seed=100 + seed)
    return np.stack(out)


def payload(path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)


def assert_same_state_dict(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


# -- train → save → load ---------------------------------------------------------------------


def test_training_writes_checkpoint_and_card(trained):
    args, path = trained
    run = path.parent
    assert path == run / "agent.pt"
    for name in ("agent.json", "args.json", "checkpoint.zip", "checkpoints"):
        assert (run / name).exists(), name
    data = payload(path)
    assert data["format"] == CHECKPOINT_FORMAT and data["arch"] == "grid_cnn" and data["algo"] == "ppo"
    assert data["obs_shape"] == [3, 64, 64] and data["n_actions"] == 4
    card = json.loads((run / "agent.json").read_text())
    assert card["action_names"] == ACTION_NAMES and card["arch"] == "grid_cnn"
    assert card["env"] == {"name": ENV, "settings": {}}
    assert card["timesteps"] == 512 and card["seed"] == 0
    assert card["score"]["episodes"] == 2 and card["score"]["seed"] == 10_000
    assert "--env red-fetch-green" in card["command"]
    from xrl.cli import build_parser  # the card's command parses back to the same run

    again = build_parser().parse_args(card["command"].split()[1:])
    assert (again.env, again.timesteps, again.seed, again.n_envs, again.eval_episodes, again.arch) == (
        ENV,
        args.total_timesteps,
        args.seed,
        args.n_envs,
        args.eval_episodes,
        "grid_cnn",
    )


def test_reward_scale_scales_training_rewards_not_the_logged_returns():
    """``reward_scale`` multiplies what PPO learns from; the Monitor (training returns) and the
    card's score see the game's own rewards."""
    plain = make_vec_env(tiny_args("unused", n_envs=1).resolved())
    scaled = make_vec_env(tiny_args("unused", n_envs=1, reward_scale=0.25).resolved())
    for venv in (plain, scaled):
        venv.seed(3)
        venv.reset()
    actions = np.random.default_rng(0).integers(4, size=400)  # the same actions in both
    got = {"plain": [], "scaled": []}
    for a in actions:
        for name, venv in (("plain", plain), ("scaled", scaled)):
            _, reward, done, info = venv.step(np.array([a]))
            got[name].append((float(reward[0]), info[0].get("episode", {}).get("r")))
    assert any(r != 0 for r, _ in got["plain"]) and any(ep is not None for _, ep in got["plain"])
    for (r, ep), (r_scaled, ep_scaled) in zip(got["plain"], got["scaled"], strict=True):
        assert r_scaled == pytest.approx(0.25 * r) and ep_scaled == ep  # Monitor: unscaled
    # defaults: ViZDoom basic and Mario are scaled, the rest are not; a scale of 1 is not recorded, so runs
    # made before the setting existed resume
    assert AgentArgs(env="vizdoom-basic").resolved().reward_scale == 0.01
    assert AgentArgs(env="mario").resolved().reward_scale == 0.1
    assert AgentArgs(env=ENV).resolved().reward_scale == 1.0
    assert "reward_scale" not in AgentArgs(env=ENV).resolved().recorded()
    assert AgentArgs(env="vizdoom-basic").resolved().recorded()["reward_scale"] == 0.01
    with pytest.raises(ValueError, match="reward_scale must be a positive number, got 0"):
        AgentArgs(env=ENV, reward_scale=0).resolved()


def test_loaded_agent_matches_the_trained_sb3_policy(trained, observations):
    _, path = trained
    model = load_agent(path)
    sb3 = PPO.load(path.parent / "checkpoint.zip", device="cpu")
    sb3.policy.set_training_mode(False)
    # the weights are the trained ones (not a fresh init)
    assert_same_state_dict(model.net.policy.state_dict(), sb3.policy.state_dict())
    assert model.action_names == ACTION_NAMES and model.input_shape == (3, 64, 64)
    assert model.score_kind == "logits" and model.info["source"] == str(path)

    with torch.no_grad():
        obs_t, _ = sb3.policy.obs_to_tensor(observations)  # SB3 does its own uint8 scaling
        sb3_logits = sb3.policy.get_distribution(obs_t).distribution.logits  # log-probabilities
        sb3_values = sb3.policy.predict_values(obs_t).reshape(-1)
        states = model.preprocess(observations)
        scores = model(states)
        values = model.value(states)
    assert scores.shape == (len(observations), 4) and scores.dtype == torch.float32
    assert float(states.max()) <= 1.0 and float(states.max()) > 0.5
    torch.testing.assert_close(torch.log_softmax(scores, -1), sb3_logits, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(values, sb3_values, rtol=1e-5, atol=1e-6)
    sb3_actions, _ = sb3.predict(observations, deterministic=True)
    np.testing.assert_array_equal(model.act(observations), sb3_actions)


def test_a_run_folder_loads_its_agent_and_an_unfinished_one_points_at_its_checkpoint(trained, tmp_path):
    _, path = trained
    assert_same_state_dict(load_agent(path.parent).net.policy.state_dict(), load_agent(path).net.policy.state_dict())
    unfinished = tmp_path / "unfinished"
    unfinished.mkdir()
    (unfinished / "checkpoint.zip").write_bytes((path.parent / "checkpoint.zip").read_bytes())
    with pytest.raises(ValueError, match=r"has no agent.pt .*latest checkpoint is .*checkpoint.zip"):
        load_agent(unfinished)
    with pytest.raises(ValueError, match=r"has no agent.pt \(a finished training run writes one\)$"):
        load_agent(unfinished / "..")  # tmp_path: neither agent.pt nor checkpoint.zip


def test_sb3_zip_and_xrl_checkpoint_load_the_same_agent(trained, observations):
    _, path = trained
    from_pt = load_agent(path)
    from_zip = load_agent(path.parent / "checkpoint.zip")
    assert from_zip.input_shape == (3, 64, 64) and from_zip.n_actions == 4
    assert_same_state_dict(from_zip.net.policy.state_dict(), from_pt.net.policy.state_dict())
    with torch.no_grad():
        torch.testing.assert_close(
            from_zip(from_zip.preprocess(observations)), from_pt(from_pt.preprocess(observations)), rtol=0, atol=0
        )
    np.testing.assert_array_equal(from_zip.act(observations), from_pt.act(observations))


def test_loaded_agent_reproduces_its_card_score(trained):
    args, path = trained
    card = json.loads(path.with_suffix(".json").read_text())
    score = evaluate(load_agent(path), ENV, {}, episodes=args.eval_episodes, seed=card["score"]["seed"])
    assert score == card["score"]
    sampled = evaluate(load_agent(path), ENV, {}, episodes=args.eval_episodes, seed=card["score"]["seed"], sample=True)
    assert sampled == card["score_sampled"]  # a policy agent's card also scores the policy it trained


def test_finished_run_reexports_the_same_weights_and_ignores_out(trained, tmp_path):
    args, path = trained
    copy = tmp_path / "copy"
    shutil.copytree(path.parent, copy)
    (copy / "agent.pt").unlink()
    # same settings (arch spelled out instead of defaulted), another folder: accepted, no training
    again = train_agent(dataclasses.replace(args, out=str(copy), arch="grid_cnn"))
    assert again == copy / "agent.pt"
    assert_same_state_dict(payload(again)["state_dict"], payload(path)["state_dict"])
    assert json.loads((copy / "agent.json").read_text())["timesteps"] == 512


# -- resume --------------------------------------------------------------------------------------


def test_resumed_training_equals_uninterrupted_training(tmp_path):
    def args(out):  # 4 rollouts of 256 steps, checkpoints every rollout
        return tiny_args(
            out, n_envs=4, n_steps=64, batch_size=128, total_timesteps=1024, checkpoint_every=256, eval_episodes=1
        )

    interrupted = tmp_path / "interrupted"
    stopped = train_agent(args(interrupted), stop_at=512)
    assert stopped == interrupted / "checkpoint.zip"
    assert not (interrupted / "agent.pt").exists()  # it really stopped early
    state = json.loads((interrupted / "checkpoints" / f"{512:012d}" / "state.json").read_text())  # no pickle
    assert state["num_timesteps"] == 512 and all(env is not None for env in state["envs"])
    resumed = train_agent(args(interrupted))

    straight = train_agent(args(tmp_path / "straight"))
    assert_same_state_dict(payload(resumed)["state_dict"], payload(straight)["state_dict"])
    first, second = (json.loads(p.with_suffix(".json").read_text()) for p in (resumed, straight))
    assert first["timesteps"] == second["timesteps"] == 1024
    assert first["score"] == second["score"]
    # and training did change the weights (the comparison above is not between two fresh inits)
    init = PPO(
        "CnnPolicy",
        make_vec_env(args(tmp_path / "x").resolved()),
        seed=0,
        device="cpu",
        policy_kwargs=ARCHS.get("grid_cnn").policy_kwargs(),
    ).policy.state_dict()
    trained_sd = payload(straight)["state_dict"]
    assert not all(torch.equal(init[k], trained_sd[k]) for k in init)


def test_dqn_resumed_equals_uninterrupted_and_loads_as_q_values(tmp_path):
    """DQN checkpoints carry the replay buffer and exploration progress: a run stopped after 128
    steps and resumed ends with the weights of a run never stopped."""

    def args(out):
        return tiny_args(
            out,
            algo="dqn",
            n_envs=None,
            total_timesteps=256,
            checkpoint_every=64,
            eval_episodes=1,
            # batches of 8 (not 32): the same resume path at a quarter of the updates' cost
            dqn={"learning_starts": 32, "buffer_size": 1000, "target_update_interval": 16, "batch_size": 8},
        )

    interrupted = tmp_path / "interrupted"
    assert train_agent(args(interrupted), stop_at=128) == interrupted / "checkpoint.zip"
    assert (interrupted / "checkpoints" / f"{128:012d}" / "buffer.pt").exists() and not (
        interrupted / "agent.pt"
    ).exists()
    resumed = train_agent(args(interrupted))
    straight = train_agent(args(tmp_path / "straight"))
    assert_same_state_dict(payload(resumed)["state_dict"], payload(straight)["state_dict"])
    card = json.loads(straight.with_suffix(".json").read_text())
    assert card["algo"] == "dqn" and card["timesteps"] == 256 and "--algo dqn" in card["command"]
    assert "--dqn learning_starts=32" in card["command"] and "--dqn gamma" not in card["command"]
    recorded = json.loads((tmp_path / "straight" / "args.json").read_text())
    assert recorded["n_envs"] == 1 and recorded["dqn"]["gamma"] == 0.8 and recorded["dqn"]["buffer_size"] == 1000
    # the exported agent is the trained Q-network: its argmax is DQN's greedy action
    model = load_agent(straight)
    assert model.score_kind == "q_values"
    algo = DQN.load(tmp_path / "straight" / "checkpoint.zip", device="cpu")
    obs = np.stack([make_env(ENV).reset(seed=s)[0] for s in range(6)])
    assert model.act(obs).tolist() == algo.predict(obs, deterministic=True)[0].tolist()
    # layer lookups see the acting network only (Grad-CAM's default layer is its last conv)
    assert model.conv_layers() and not any("target" in name for name in model.conv_layers())
    cam = get_explainer("grad_cam", model).explain(model.preprocess(obs), torch.as_tensor(model.act(obs)))
    assert cam.shape == (6, *obs.shape[-2:]) and torch.isfinite(cam).all() and cam.abs().sum() > 0
    # a different buffer cannot be mixed into a run
    with pytest.raises(ValueError, match="other settings"):
        train_agent(dataclasses.replace(args(tmp_path / "straight"), dqn={"buffer_size": 2000}))


@pytest.mark.parametrize(
    "change, message",
    [
        ({"algo": "sac"}, "algo must be one of ppo, dqn, got 'sac'"),
        ({"algo": "dqn", "dqn": {"buffer": 10}}, r"unknown DQN settings \['buffer'\]; known: learning_rate"),
        ({"dqn": {"gamma": 0.9}}, "DQN settings \\['gamma'\\] given for algo 'ppo'; add algo=dqn"),
    ],
)
def test_bad_algo_settings_are_refused(tmp_path, change, message):
    with pytest.raises(ValueError, match=message):
        train_agent(tiny_args(tmp_path / "run", **change))
    assert not (tmp_path / "run").exists()


# -- bad runs and checkpoints --------------------------------------------------------------------


@pytest.mark.parametrize(
    "change",
    [
        {"seed": 1},
        {"n_steps": 64},
        {"learning_rate": 3e-4},
        {"env_settings": {"max_steps": 50}},
        {"arch": "nature_cnn"},
    ],
)
def test_changing_settings_in_an_existing_run_is_refused(trained, change):
    args, path = trained
    run = path.parent
    before = {name: (run / name).read_bytes() for name in ("args.json", "agent.pt", "checkpoint.zip")}
    with pytest.raises(ValueError) as err:
        train_agent(dataclasses.replace(args, **change))
    message = str(err.value)
    assert "other settings" in message and str(run) in message and "--out" in message
    assert f"'{next(iter(change))}'" in message.replace(str(run), "")
    for name, data in before.items():  # nothing was touched
        assert (run / name).read_bytes() == data, name


def checkpoint_with(tmp_path, trained, **changes):
    _, path = trained
    data = payload(path)
    data.update(changes)
    out = tmp_path / "edited.pt"
    torch.save(data, out)
    return out


def test_checkpoint_of_another_architecture_is_refused(tmp_path, trained):
    path = checkpoint_with(tmp_path, trained, arch="nature_cnn")  # grid_cnn weights
    with pytest.raises(ValueError) as err:
        load_agent(path)
    message = str(err.value)
    assert "do not fit architecture 'nature_cnn'" in message and "[3, 64, 64]" in message


def test_checkpoint_with_other_observation_shape_is_refused(tmp_path, trained):
    path = checkpoint_with(tmp_path, trained, obs_shape=[3, 8, 8])
    with pytest.raises(ValueError, match=r"do not fit architecture 'grid_cnn' with observations \[3, 8, 8\]"):
        load_agent(path)


def test_checkpoint_of_an_unregistered_architecture_lists_the_known_ones(tmp_path, trained):
    path = checkpoint_with(tmp_path, trained, arch="resnet18")
    with pytest.raises(ValueError) as err:
        load_agent(path)
    message = str(err.value)
    assert "'resnet18'" in message and "grid_cnn" in message and "nature_cnn" in message


def test_architecture_error_names_both_architectures(tmp_path):
    # nature_cnn weights saved under the name grid_cnn
    env = make_vec_env(AgentArgs(env=ENV, n_envs=1).resolved())
    algo = PPO("CnnPolicy", env, device="cpu", seed=0, policy_kwargs=ARCHS.get("nature_cnn").policy_kwargs())
    path = save_agent(algo, tmp_path / "agent.pt", arch="grid_cnn", card={})
    with pytest.raises(ValueError) as err:
        load_agent(path)
    message = str(err.value).replace(str(path), "")
    assert "grid_cnn" in message and "nature_cnn" in message


def test_truncated_garbage_and_foreign_checkpoints_give_clear_errors(tmp_path, trained):
    _, path = trained
    good = path.read_bytes()
    cases = {
        "truncated.pt": good[: len(good) // 2],
        "empty.pt": b"",
        "garbage.pt": bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8)),
    }
    for name, data in cases.items():
        (tmp_path / name).write_bytes(data)
        with pytest.raises(ValueError, match="is not a readable xrl checkpoint"):
            load_agent(tmp_path / name)
    # a readable torch file that is not an xrl agent (e.g. a bare state_dict)
    torch.save(GridCNN(make_env(ENV).observation_space).state_dict(), tmp_path / "foreign.pt")
    with pytest.raises(ValueError, match=f"is not an xrl agent checkpoint .*'{CHECKPOINT_FORMAT}'"):
        load_agent(tmp_path / "foreign.pt")
    # the last good file is still there and loads
    assert load_agent(path).n_actions == 4


def test_bad_sb3_zips_and_other_files_give_clear_errors(tmp_path):
    (tmp_path / "fake.zip").write_bytes(b"not a zip")
    with pytest.raises(ValueError, match="is not a zip file; expected an SB3 model"):
        load_agent(tmp_path / "fake.zip")
    with zipfile.ZipFile(tmp_path / "other.zip", "w") as z:
        z.writestr("hello.txt", "hi")
    with pytest.raises(ValueError, match="is not a loadable SB3 PPO/A2C/DQN model"):
        load_agent(tmp_path / "other.zip")
    (tmp_path / "agent.onnx").write_bytes(b"x")
    with pytest.raises(
        ValueError, match=r"SB3 \.zip, xrl \.pt checkpoints or CleanRL \.cleanrl_model files, got 'agent.onnx'"
    ):
        load_agent(tmp_path / "agent.onnx")


def test_unknown_zoo_name_lists_the_zoo_agents():
    with pytest.raises(ValueError) as err:
        load_agent("no-such-agent")
    message = str(err.value)
    assert "'no-such-agent'" in message and "zoo agents: " in message
    listed = message.split("zoo agents: ")[1].split(";")[0].split(", ")
    assert listed == sorted(p.parent.name for p in ZOO_DIR.glob("*/agent.pt")) and ENV in listed


# -- zoo -----------------------------------------------------------------------------------------


def test_zoo_agent(observations):
    model = load_agent(ENV)
    assert model.action_names == ACTION_NAMES
    assert model.input_shape == (3, 64, 64) and model.n_actions == 4
    assert model.obs_scale == 255.0 and model.score_kind == "logits"
    assert model.info["source"] == str(ZOO_DIR / ENV / "agent.pt")
    assert model.info["env"] == {"name": ENV, "settings": {}}
    assert not model.training
    actions = model.act(observations)
    assert actions.shape == (len(observations),) and set(actions.tolist()) <= {0, 1, 2, 3}


def test_zoo_agent_reproduces_its_card_score():
    model = load_agent(ENV)
    card = json.loads((ZOO_DIR / ENV / "agent.json").read_text())["score"]
    score = evaluate(model, ENV, {}, episodes=card["episodes"], seed=card["seed"])
    assert score["success_rate"] == card["success_rate"] >= 0.9
    assert score["mean_return"] == pytest.approx(card["mean_return"], abs=1e-9)


def test_sampled_score_draws_each_episodes_actions_from_its_own_seeded_stream():
    model = load_agent(ENV)
    sampled = evaluate(model, ENV, {}, episodes=3, seed=5, sample=True, per_episode=True, progress=False)
    # independently: one episode by hand, actions drawn from the softmax with rng seeded 5 + i
    by_hand = []
    for i in range(3):
        env, rng, total, done = make_env(ENV), np.random.default_rng(5 + i), 0.0, False
        obs, _ = env.reset(seed=5 + i)
        while not done:
            with torch.inference_mode():
                p = model.probs(model.preprocess(obs))[0].double().numpy()
            obs, reward, terminated, truncated, _ = env.step(int(rng.choice(len(p), p=p / p.sum())))
            total, done = total + float(reward), terminated or truncated
        by_hand.append(total)
    assert sampled["returns"] == by_hand
    side = evaluate(model, ENV, {}, episodes=3, seed=5, sample=True, batch=2, per_episode=True, progress=False)
    assert side["returns"] == by_hand  # episodes played side by side keep their streams
    q_model = as_model(model.net, input_shape=model.input_shape, score_kind="q_values")
    with pytest.raises(ValueError, match="sample=True needs a policy that outputs logits.*'q_values'"):
        evaluate(q_model, ENV, {}, episodes=1, seed=0, sample=True)


def test_a_training_checkpoint_zip_loads_with_action_names(tmp_path):
    args = tiny_args(tmp_path / "run", total_timesteps=1024)
    train_agent(args, stop_at=256)
    card = json.loads((tmp_path / "run" / "checkpoint.json").read_text())
    assert card["env"]["name"] == ENV and card["timesteps"] >= 256
    assert load_agent(tmp_path / "run" / "checkpoint.zip").action_names == ACTION_NAMES


def test_atari_settings_follow_the_env_not_the_architecture():
    """An attention agent on Pong trains like the Nature CNN baseline: rl-zoo defaults, clipped rewards."""
    fls = AgentArgs(env="pong", arch="sparse_fls").resolved()
    base = AgentArgs(env="pong").resolved()
    assert fls.atari and base.atari and base.arch == "nature_cnn"
    assert (fls.n_envs, fls.learning_rate, fls.clip_range) == (base.n_envs, base.learning_rate, base.clip_range)
    grid = AgentArgs(env="red-fetch-green", arch="grid_sparse_fls").resolved()
    assert not grid.atari and grid.n_envs == 16


def test_evaluate_max_steps_ends_every_episode_after_that_many_steps():
    """Checked against episodes played by hand for 5 steps on ViZDoom basic (a reward every step)."""
    model = load_agent("vizdoom-basic")
    settings = model.info["env"].get("settings") or {}
    capped = evaluate(
        model, "vizdoom-basic", settings, episodes=2, seed=3, max_steps=5, per_episode=True, progress=False
    )
    by_hand = []
    for i in range(2):
        env = make_env("vizdoom-basic", **settings)
        obs, _ = env.reset(seed=3 + i)
        total = 0.0
        for _ in range(5):
            with torch.inference_mode():
                action = int(model(model.preprocess(obs)).argmax(-1)[0])
            obs, reward, terminated, truncated, _ = env.step(action)
            total += float(reward)
            if terminated or truncated:
                break
        env.close()
        by_hand.append(total)
    assert capped["returns"] == pytest.approx(by_hand, abs=1e-9)
    full = evaluate(model, "vizdoom-basic", settings, episodes=2, seed=3, per_episode=True, progress=False)
    assert full["returns"] != capped["returns"]  # the cap did end the episodes early
    assert evaluate(
        model, "vizdoom-basic", settings, episodes=2, seed=3, max_steps=5, batch=2, per_episode=True, progress=False
    )["returns"] == pytest.approx(by_hand, abs=1e-9)
    with pytest.raises(ValueError, match="max_steps must be a positive number of steps or None, got 0"):
        evaluate(model, "vizdoom-basic", settings, episodes=1, seed=0, max_steps=0)
