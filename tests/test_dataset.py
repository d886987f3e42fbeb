"""StateDataset files and collect(): round trip, reproducibility, resume, bad files, refusals."""

from __future__ import annotations

import logging
import subprocess
import sys
from pathlib import Path

import gymnasium as gym
import h5py
import numpy as np
import pytest
import torch
from torch import nn

import xrl
from xrl.agents.model import as_model
from xrl.data.collect import collect
from xrl.data.dataset import StateDataset, StateDatasetWriter, partial_path
from xrl.envs import ENVS

ENV = "xrl_test_fake"
SETTINGS = {"length": 3}


class FakeEnv(gym.Env):
    """Random 3x8x8 observations drawn from the reset seed; episodes of length..length+2 steps."""

    metadata = {"render_modes": ["rgb_array"]}

    def __init__(self, length: int = 3, render_mode: str = "rgb_array") -> None:
        self.observation_space = gym.spaces.Box(0, 255, (3, 8, 8), np.uint8)
        self.action_space = gym.spaces.Discrete(3)
        self.render_mode = render_mode
        self.length = length

    def _observe(self):
        self._obs = self.np_random.integers(0, 256, (3, 8, 8), dtype=np.uint8)
        labels = (self._obs[0] > 127).astype(np.int8)
        labels[self._obs[1] < 30] = -1
        return self._obs.copy(), {"labels": labels}

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self._t = 0
        self._len = self.length + int(self.np_random.integers(0, 3))
        return self._observe()

    def step(self, action):
        self._t += 1
        obs, info = self._observe()
        return obs, float(action == 1), self._t >= self._len, False, info

    def render(self):
        return np.repeat(np.repeat(self._obs.transpose(1, 2, 0), 2, axis=0), 2, axis=1)  # (16, 16, 3)


def register_fake_env() -> None:
    if ENV not in ENVS:
        ENVS.register(ENV)(FakeEnv)


def tiny_model(env=ENV, settings=SETTINGS):
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 6 * 6, 3))
    info = {
        "env": {"name": env, "settings": settings} if env else None,
        "card": {"what": "test agent"},
        "source": "tests/tiny",
    }
    return as_model(net, input_shape=(3, 8, 8), action_names=["left", "fire", "right"], info=info)


@pytest.fixture(autouse=True)
def fake_env():
    register_fake_env()


def arrays(path) -> dict:
    with h5py.File(path, "r") as f:
        return {k: f[k][()] for k in f if isinstance(f[k], h5py.Dataset)}


def assert_same_data(a, b) -> None:
    xa, xb = arrays(a), arrays(b)
    assert xa.keys() == xb.keys()
    for k in xa:
        np.testing.assert_array_equal(xa[k], xb[k], err_msg=k)


def run(tmp_path, name="out.h5", **kwargs) -> Path:
    kwargs = {"episodes": 4, "seed": 3, "progress": False, **kwargs}
    return collect(kwargs.pop("model", None) or tiny_model(), out=tmp_path / name, **kwargs)


# -- round trip ----------------------------------------------------------------------------------


def test_round_trip(tmp_path):
    rng = np.random.default_rng(0)
    lengths = [3, 5]
    n = sum(lengths)
    states = rng.integers(0, 256, (n, 2, 4, 5), dtype=np.uint8)
    frames = rng.integers(0, 256, (n, 6, 7, 3), dtype=np.uint8)
    actions = rng.integers(0, 3, n)
    scores = rng.normal(size=(n, 3)).astype(np.float32)
    labels = rng.integers(-1, 2, (n, 4, 5)).astype(np.int8)
    meta = {
        "env": {"name": "e", "settings": {"a": [1, 2]}},
        "agent": {"source": "x", "card": {}},
        "action_names": ["a", "b", "c"],
        "collect": {"seed": 1},
    }
    out = tmp_path / "rt.h5"
    with StateDatasetWriter(out, **meta) as w:
        start = 0
        for length, ret in zip(lengths, [1.5, -2.0]):
            half = start + length // 2  # an episode may come in several blocks
            for lo, hi in ((start, half), (half, start + length)):
                w.append(
                    states=states[lo:hi],
                    frames=frames[lo:hi],
                    actions=actions[lo:hi],
                    scores=scores[lo:hi],
                    labels=labels[lo:hi],
                )
            w.end_episode(ret)
            start += length
        assert w.finalize() == out
    assert not partial_path(out).exists()

    with StateDataset.open(out) as ds:
        assert len(ds) == n and ds.n_episodes == 2
        np.testing.assert_array_equal(ds.raw_states(), states)
        np.testing.assert_array_equal(ds.frames(), frames)
        np.testing.assert_array_equal(ds.actions, actions)
        np.testing.assert_array_equal(ds.scores, scores)
        np.testing.assert_array_equal(ds.labels(), labels)
        np.testing.assert_array_equal(ds.episode, [0] * 3 + [1] * 5)
        np.testing.assert_array_equal(ds.step, [0, 1, 2, 0, 1, 2, 3, 4])
        np.testing.assert_array_equal(ds.episode_returns, [1.5, -2.0])
        assert ds.actions.dtype == np.int64 and ds.scores.dtype == np.float32
        assert ds.episode.dtype == np.int32 and ds.labels().dtype == np.int8
        assert ds.env == meta["env"] and ds.agent == meta["agent"]
        assert ds.action_names == meta["action_names"] and ds.collect_settings == {"seed": 1}
        assert ds.xrl_version == xrl.__version__
        # indexing: unsorted with duplicates and negatives, slices, ints, tensors
        idx = [5, 0, 5, -1]
        np.testing.assert_array_equal(ds.raw_states(idx), states[idx])
        np.testing.assert_array_equal(ds.frames(slice(1, 7, 2)), frames[1:7:2])
        np.testing.assert_array_equal(ds.labels(torch.tensor([2, 1])), labels[[2, 1]])
        assert ds.raw_states(4).shape == (1, 2, 4, 5)
        x = ds.states(idx)
        assert x.dtype == torch.float32 and torch.equal(x, torch.from_numpy(states[idx]).float() / 255)
        with pytest.raises(IndexError):
            ds.raw_states([n])

        maps = rng.random((n, 4, 5)).astype(np.float32)
        ds.add_saliency("gradient", torch.from_numpy(maps))
        np.testing.assert_array_equal(ds.saliency("gradient"), maps)
        with pytest.raises(ValueError, match="already stored"):
            ds.add_saliency("gradient", maps)
        ds.add_saliency("gradient", maps * 2, overwrite=True)
        with pytest.raises(ValueError, match=r"shape \(8, 4, 5\)"):
            ds.add_saliency("bad", maps[:, :3])
        with pytest.raises(ValueError, match="stored: gradient"):
            ds.saliency("rise")
    with StateDataset.open(out) as ds:  # the rewritten file is whole
        assert ds.saliency_methods == ["gradient"]
        np.testing.assert_array_equal(ds.saliency("gradient", [3]), maps[[3]] * 2)
        np.testing.assert_array_equal(ds.raw_states(), states)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["rt.h5"]


# -- collect -------------------------------------------------------------------------------------


@pytest.mark.parametrize("sample", [False, True])
def test_collect_is_reproducible_and_consistent(tmp_path, sample):
    a = run(tmp_path, "a.h5", sample=sample)
    b = run(tmp_path, "b.h5", sample=sample)
    assert_same_data(a, b)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.h5", "b.h5"]  # no .partial left
    model = tiny_model()
    with StateDataset.open(a) as ds:
        assert ds.env == {"name": ENV, "settings": SETTINGS}
        assert ds.agent["source"] == "tests/tiny" and ds.agent["card"] == {"what": "test agent"}
        assert ds.collect_settings == {"seed": 3, "sample": sample, "max_steps": None}
        assert ds.n_episodes == 4 and len(ds.episode_returns) == 4
        np.testing.assert_array_equal(np.bincount(ds.episode), ds.episode_lengths)
        # stored scores are the model's scores of the stored states; greedy actions their argmax
        with torch.no_grad():
            scores = model(ds.states())
        np.testing.assert_allclose(ds.scores, scores.numpy(), rtol=1e-6, atol=1e-6)
        if not sample:
            np.testing.assert_array_equal(ds.actions, scores.argmax(-1).numpy())
        # episode 0 starts from the env reset with seed + 0, with its labels and display frame
        env = xrl.make_env(ENV, **SETTINGS)
        obs, info = env.reset(seed=3)
        np.testing.assert_array_equal(ds.raw_states(0)[0], obs)
        np.testing.assert_array_equal(ds.labels(0)[0], info["labels"])
        np.testing.assert_array_equal(ds.frames(0)[0], env.render())
        returns = [np.sum(ds.actions[ds.episode == e] == 1) for e in range(4)]
        np.testing.assert_array_equal(ds.episode_returns, returns)


def test_collect_max_steps_and_progress(tmp_path, capsys):
    path = run(tmp_path, episodes=2, max_steps=2, progress=True)
    with StateDataset.open(path) as ds:
        np.testing.assert_array_equal(ds.episode_lengths, [2, 2])
    assert "mean_return" in capsys.readouterr().err


def _interrupt_after(monkeypatch, n: int) -> None:
    """Make the n+1-th episode commit raise, as a crash in the middle of a collection would."""
    real = StateDatasetWriter.end_episode

    def end_episode(self, episode_return):
        if self.n_episodes == n:
            raise KeyboardInterrupt
        real(self, episode_return)

    monkeypatch.setattr(StateDatasetWriter, "end_episode", end_episode)


def test_resume_after_interruption_equals_uninterrupted(tmp_path, monkeypatch):
    full = run(tmp_path, "full.h5")
    out = tmp_path / "out.h5"
    with monkeypatch.context() as m:
        _interrupt_after(m, 2)
        with pytest.raises(KeyboardInterrupt):
            run(tmp_path)
    assert not out.exists() and partial_path(out).exists()
    with pytest.raises(ValueError, match="interrupted collection"):
        StateDataset.open(partial_path(out))
    assert run(tmp_path) == out
    assert_same_data(out, full)
    assert not partial_path(out).exists()


KILL_SCRIPT = """
import os, sys
sys.path.insert(0, {tests!r})
import test_dataset as t
from xrl.data.dataset import StateDatasetWriter
t.register_fake_env()
real = StateDatasetWriter.append
def append(self, **kw):
    real(self, **kw)
    if self.n_episodes == 2:
        os._exit(3)  # killed with rows of episode 2 written and nothing closed
StateDatasetWriter.append = append
t.collect(t.tiny_model(), out={out!r}, episodes=4, seed=3, progress=False)
"""


def test_resume_after_kill_equals_uninterrupted(tmp_path):
    full = run(tmp_path, "full.h5")
    out = tmp_path / "out.h5"
    script = KILL_SCRIPT.format(tests=str(Path(__file__).parent), out=str(out))
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 3, proc.stderr
    assert not out.exists() and partial_path(out).exists()
    assert run(tmp_path) == out
    assert_same_data(out, full)


def test_existing_dataset_is_returned_extended_or_refused(tmp_path, caplog):
    out = run(tmp_path, episodes=2)
    mtime = out.stat().st_mtime_ns
    with caplog.at_level(logging.WARNING):
        assert run(tmp_path, episodes=2) == out
    assert "already exists and is complete" in caplog.text and out.stat().st_mtime_ns == mtime
    with pytest.raises(ValueError, match="collect"):  # another seed: not the same collection
        run(tmp_path, episodes=2, seed=4)
    with pytest.raises(ValueError, match="more than the 1 asked"):
        run(tmp_path, episodes=1)
    run(tmp_path, episodes=4)  # extends the 2 stored episodes
    assert_same_data(out, run(tmp_path, "full.h5", episodes=4))
    run(tmp_path, episodes=1, overwrite=True)
    assert_same_data(out, run(tmp_path, "one.h5", episodes=1))


def test_partial_of_another_collection_is_refused(tmp_path, monkeypatch):
    with monkeypatch.context() as m:
        _interrupt_after(m, 1)
        with pytest.raises(KeyboardInterrupt):
            run(tmp_path)
    with pytest.raises(ValueError, match=r"interrupted collection with other settings.*\"seed\": 3.*\"seed\": 5"):
        run(tmp_path, seed=5)
    out = run(tmp_path, seed=5, episodes=2, overwrite=True)
    assert_same_data(out, run(tmp_path, "ref.h5", seed=5, episodes=2))


def test_mismatched_env_is_refused(tmp_path):
    with pytest.raises(ValueError, match=r"trained on env 'xrl_test_fake'.*'length': 3.*'length': 5"):
        run(tmp_path, env_settings={"length": 5})
    register_other = "xrl_test_other"
    if register_other not in ENVS:
        ENVS.register(register_other)(FakeEnv)
    with pytest.raises(ValueError, match="xrl_test_fake.*xrl_test_other"):
        run(tmp_path, env=register_other)
    with pytest.raises(ValueError, match="pass env="):
        run(tmp_path, model=tiny_model(env=None))
    # an agent without a recorded env may be collected in any env of the right shape
    run(tmp_path, model=tiny_model(env=None), env=ENV, env_settings={"length": 5}, episodes=1)
    wrong_shape = as_model(
        nn.Sequential(nn.Flatten(), nn.Linear(48, 3)),
        input_shape=(3, 4, 4),
        info={"env": {"name": ENV, "settings": SETTINGS}},
    )
    with pytest.raises(ValueError, match=r"\(3, 8, 8\) do not match the model's input \(3, 4, 4\)"):
        run(tmp_path, "w.h5", model=wrong_shape)
    assert not partial_path(tmp_path / "w.h5").exists()


def test_ground_truth_settings_may_be_added_to_an_agents_env(tmp_path):
    """``labels=True`` only adds info['labels'] (Atari RAM ground truth): an agent trained without
    it is collected with it; a setting that changes observations is still refused."""
    from xrl.agents.load import build_policy, model_from_policy

    pong = model_from_policy(
        build_policy("nature_cnn", (4, 84, 84), 6), info={"env": {"name": "pong", "settings": {"version": "v4"}}}
    )
    out = collect(
        pong,
        episodes=1,
        max_steps=3,
        out=tmp_path / "p.h5",
        progress=False,
        env_settings={"version": "v4", "labels": True},
    )
    with StateDataset.open(out) as ds:
        assert ds.has_labels and ds.env["settings"]["labels"] is True
    with pytest.raises(ValueError, match="trained on env 'pong'"):
        collect(
            pong,
            episodes=1,
            max_steps=3,
            out=tmp_path / "q.h5",
            progress=False,
            env_settings={"version": "v5", "labels": True},
        )
    # asking for the ground truth alone keeps the agent's other settings (xrl collect --set labels=true)
    out = collect(pong, episodes=1, max_steps=3, out=tmp_path / "r.h5", progress=False, env_settings={"labels": True})
    with StateDataset.open(out) as ds:
        assert ds.env["settings"] == {"version": "v4", "labels": True}
        assert ds.has_labels


# -- bad files -----------------------------------------------------------------------------------


def _truncated(tmp_path):
    data = run(tmp_path, "good.h5", episodes=1).read_bytes()
    path = tmp_path / "cut.h5"
    path.write_bytes(data[: len(data) * 2 // 3])
    return path


def _foreign(tmp_path):
    path = tmp_path / "foreign.h5"
    with h5py.File(path, "w") as f:
        f["x"] = np.zeros(3)
    return path


def _text(tmp_path):
    path = tmp_path / "notes.h5"
    path.write_text("not a dataset\n" * 100)
    return path


@pytest.mark.parametrize(
    "make, error, message",
    [
        (lambda p: p / "missing.h5", FileNotFoundError, "no dataset file"),
        (_text, ValueError, "not an HDF5 file"),
        (_foreign, ValueError, "not an xrl StateDataset"),
        (_truncated, ValueError, "truncated or corrupt"),
    ],
)
def test_bad_files_give_clear_errors(tmp_path, make, error, message):
    with pytest.raises(error, match=message) as info:
        StateDataset.open(make(tmp_path))
    assert "format='xrl.StateDataset'" in str(info.value)  # says what was expected


def test_collect_leaves_a_foreign_out_alone(tmp_path):
    foreign = _foreign(tmp_path)
    with pytest.raises(ValueError, match="not an xrl StateDataset"):
        run(tmp_path, foreign.name)
    assert arrays(foreign)["x"].tolist() == [0, 0, 0]
    (tmp_path / "x.h5.partial").mkdir()
    (tmp_path / "x.h5.partial" / "mine.txt").write_text("not ours")
    with pytest.raises(ValueError, match="not the folder of an interrupted xrl collection"):
        run(tmp_path, "x.h5", overwrite=True)
    assert (tmp_path / "x.h5.partial" / "mine.txt").exists()


def test_the_same_agent_from_another_path_extends_the_dataset(tmp_path):
    import shutil

    from xrl.agents.load import ZOO_DIR

    copy = tmp_path / "copy"
    copy.mkdir()
    for name in ("agent.pt", "agent.json"):
        shutil.copy(ZOO_DIR / "red-fetch-green" / name, copy / name)
    out = collect(xrl.load_agent("red-fetch-green"), episodes=1, out=tmp_path / "d.h5", progress=False)
    collect(xrl.load_agent(copy / "agent.pt"), episodes=2, out=out, progress=False)  # another clone, say
    with StateDataset.open(out) as ds:
        assert ds.n_episodes == 2
    other = xrl.load_agent("red-fetch-green-digr")  # other weights: refused
    with pytest.raises(ValueError, match="another agent"):
        collect(other, episodes=3, out=out, progress=False)
