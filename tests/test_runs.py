"""The run layer every trainer shares (xrl.train.run): checkpoints that survive a failure at any
point of a save, the lock per run folder, settings checked before anything is written, commands
and flags made from the trainers' dataclasses, env state rebuilt without pickle, and old pickle
checkpoints that resume only when trusted."""

from __future__ import annotations

import dataclasses
import json
import os
import pickle
import shlex
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import xrl.train.run as run_module
from xrl.artifacts import sha256
from xrl.cli import build_parser
from xrl.train.run import (
    Run,
    RunLocked,
    SettingsError,
    add_flags,
    check_pairs,
    check_settings,
    command,
    from_flags,
    is_complete,
    latest_checkpoint,
)

ROOT = Path(__file__).resolve().parents[1]


class Killed(Exception):
    """Stands for a kill: nothing of the save's own cleanup runs (save has no except/finally)."""


def save(run: Run, step: int, *, die_in_write: bool = False) -> Path:
    def write(folder: Path) -> None:
        (folder / "weights.bin").write_bytes(bytes([step % 256]) * 4096)
        if die_in_write:
            raise Killed("killed halfway through writing")
        (folder / "state.json").write_text(json.dumps({"step": step}))

    return run.save(step, write)


def content(folder: Path) -> int:
    assert is_complete(folder, verify_hash=True)
    step = json.loads((folder / "state.json").read_text())["step"]
    assert (folder / "weights.bin").read_bytes() == bytes([step % 256]) * 4096
    return step


# ------------------------------------------------------------------ atomic checkpoints


@pytest.mark.parametrize("point", ["in-write", "write", "files", "manifest", "renamed", "cleaned"])
def test_a_failure_at_any_point_of_a_save_resumes_from_the_newest_complete_checkpoint(tmp_path, monkeypatch, point):
    folder = tmp_path / "run"
    with Run(folder, {"x": 1}) as run:
        save(run, 1)
        save(run, 2)

    def die(name):
        if name == point:
            raise Killed(name)

    monkeypatch.setattr(run_module, "_step", die)
    with pytest.raises(Killed), Run(folder, {"x": 1}) as run:
        save(run, 3, die_in_write=point == "in-write")
    monkeypatch.setattr(run_module, "_step", lambda name: None)
    newest = latest_checkpoint(folder)
    expected = 3 if point in ("renamed", "cleaned") else 2  # the rename is the switch
    assert content(newest) == expected
    versions = [p for p in (folder / "checkpoints").iterdir() if not p.name.startswith(".")]
    assert all(is_complete(p) for p in versions) and content(sorted(versions)[0]) in (1, 2)  # the fallback
    assert not (folder / ".lock").exists()  # released even when the save failed
    # the next save works, removes the dead partial folder and keeps the newest two
    with Run(folder, {"x": 1}) as run:
        assert run.latest() == newest
        save(run, 4)
    names = sorted(p.name for p in (folder / "checkpoints").iterdir())
    assert names == [f"{expected:012d}", f"{4:012d}"]


def test_a_damaged_newest_checkpoint_falls_back_to_the_previous_one(tmp_path):
    with Run(tmp_path / "run", {}) as run:
        save(run, 1)
        newest = save(run, 2)
    data = (newest / "weights.bin").read_bytes()
    (newest / "weights.bin").write_bytes(data[:100])  # truncated
    assert content(latest_checkpoint(tmp_path / "run")) == 1
    (newest / "weights.bin").write_bytes(b"\x00" * len(data))  # same size, other bytes
    assert content(latest_checkpoint(tmp_path / "run")) == 1
    (newest / "weights.bin").write_bytes(data)
    (newest / "complete.json").write_text("{")  # a torn manifest
    assert content(latest_checkpoint(tmp_path / "run")) == 1


def test_saving_a_step_again_keeps_one_rename_and_the_newest_wins(tmp_path, monkeypatch):
    with Run(tmp_path / "run", {}) as run:
        save(run, 5)
        again = save(run, 5)
    assert again.name == f"{5:012d}.1" and latest_checkpoint(tmp_path / "run") == again


@pytest.mark.slow
def test_a_killed_process_leaves_a_resumable_checkpoint(tmp_path):
    """A real SIGKILL in the middle of a save (the writer blocks until it is killed)."""
    folder = tmp_path / "run"
    script = f"""
import sys, time
from xrl.train.run import Run
with Run({str(folder)!r}, {{}}) as run:
    run.save(1, lambda f: (f / "state.json").write_text("{{}}"))
    def write(f):
        (f / "state.json").write_text("{{}}")
        print("writing", flush=True)
        time.sleep(60)
    run.save(2, write)
"""
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "writing"
    proc.kill()
    proc.wait()
    assert latest_checkpoint(folder).name == f"{1:012d}"
    with Run(folder, {}) as run:  # the dead process's lock is taken over
        assert run.save(2, lambda f: (f / "state.json").write_text("{}")).name == f"{2:012d}"
    assert [p.name for p in (folder / "checkpoints").iterdir() if p.name.startswith(".")] == []


@pytest.mark.parametrize("saved", [True, pytest.param(False, marks=pytest.mark.slow)])
def test_sigterm_ends_a_run_like_ctrl_c_keeping_its_checkpoints_and_releasing_the_lock(tmp_path, saved):
    """``kill PID`` during a run (here while it trains after a save, or before its first save):
    the process ends, the lock is released, the checkpoints are untouched; a start that never
    saved leaves nothing (the folder it created is removed)."""
    import signal

    folder = tmp_path / "run"
    script = f"""
import time
from xrl.train.run import Run
with Run({str(folder)!r}, {{"x": 1}}) as run:
    if {saved}:
        run.save(1, lambda f: (f / "state.json").write_text("{{}}"))
    print("training", flush=True)
    time.sleep(60)
"""
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "training"
    before = {p: p.read_bytes() for p in folder.rglob("*") if p.is_file() and p.name != ".lock"}
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 1 and "Terminated: terminated by signal 15" in err  # the exception, unwound
    if saved:
        assert not (folder / ".lock").exists()
        assert {p: p.read_bytes() for p in folder.rglob("*") if p.is_file()} == before
        assert latest_checkpoint(folder).name == f"{1:012d}"
    else:
        assert not folder.exists()


def test_a_run_restores_the_sigterm_handler_and_leaves_a_programs_own_alone(tmp_path):
    import signal

    from xrl.train.run import Terminated

    # start from the default handler: an earlier test in this process may have installed one
    # (ray.init sets its own SIGTERM handler, which a run rightly leaves alone)
    previous = signal.signal(signal.SIGTERM, signal.SIG_DFL)
    try:
        with Run(tmp_path / "a", {}):
            assert signal.getsignal(signal.SIGTERM) is run_module._terminated
            with pytest.raises(Terminated):
                run_module._terminated(signal.SIGTERM, None)
        assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL
        mine = lambda signum, frame: None  # noqa: E731
        signal.signal(signal.SIGTERM, mine)
        with Run(tmp_path / "b", {}):
            assert signal.getsignal(signal.SIGTERM) is mine
        assert signal.getsignal(signal.SIGTERM) is mine
    finally:
        signal.signal(signal.SIGTERM, previous)


# ------------------------------------------------------------------ the lock


@pytest.mark.slow
def test_a_second_run_into_the_same_folder_is_told_who_holds_it(tmp_path):
    with Run(tmp_path / "run", {}):
        with pytest.raises(RunLocked) as err, Run(tmp_path / "run", {}):
            pass
        assert f"pid {os.getpid()} on {socket.gethostname()}" in str(err.value)  # the same process too
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            f"""
import time
from xrl.train.run import Run
with Run({str(tmp_path / "other")!r}, {{}}):
    print("locked", flush=True)
    time.sleep(60)
""",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(RunLocked) as err, Run(tmp_path / "other", {}):
            pass
        message = str(err.value)
        assert f"pid {holder.pid}" in message and socket.gethostname() in message and " since " in message
        assert "--out" in message and "\n" not in message
    finally:
        holder.kill()
        holder.wait()
    with Run(tmp_path / "other", {}):  # its process is gone: the stale lock is taken over
        assert json.loads((tmp_path / "other" / ".lock").read_text())["pid"] == os.getpid()


def test_a_lock_held_on_another_host_is_not_taken_over(tmp_path):
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / ".lock").write_text(json.dumps({"pid": 999_999_999, "host": "elsewhere", "started": "then"}))
    with pytest.raises(RunLocked, match="in use by pid 999999999 on elsewhere since then"):
        with Run(tmp_path / "run", {}):
            pass


def test_the_lock_is_released_when_training_fails(tmp_path):
    with pytest.raises(ZeroDivisionError), Run(tmp_path / "run", {"a": 1}) as run:
        save(run, 1)
        _ = 1 / 0
    assert not (tmp_path / "run" / ".lock").exists() and latest_checkpoint(tmp_path / "run") is not None


# ------------------------------------------------------------------ settings


def test_a_failed_start_leaves_nothing_behind(tmp_path):
    with pytest.raises(ValueError), Run(tmp_path / "new", {"size": "abc"}):
        raise ValueError("the env refused size='abc'")
    assert not (tmp_path / "new").exists()
    existing = tmp_path / "mine"
    existing.mkdir()
    (existing / "notes.txt").write_text("keep")
    with pytest.raises(ValueError), Run(existing, {"size": "abc"}):
        raise ValueError("the env refused size='abc'")
    assert sorted(p.name for p in existing.iterdir()) == ["notes.txt"]


def test_args_of_a_run_that_never_saved_do_not_block_the_corrected_command(tmp_path):
    folder = tmp_path / "run"
    folder.mkdir()
    (folder / "args.json").write_text(json.dumps({"size": "abc"}))  # left by an older xrl's failed start
    with Run(folder, {"size": 6}) as run:
        save(run, 1)
    assert json.loads((folder / "args.json").read_text()) == {"size": 6}
    with pytest.raises(SettingsError) as err, Run(folder, {"size": 8}):
        pass
    message = str(err.value)
    assert "other settings" in message and "'size': stored 6, asked 8" in message and "--out" in message
    with Run(folder, {"size": 6, "budget": 10}, ignore={"budget"}):  # ignored settings may change
        pass
    assert json.loads((folder / "args.json").read_text()) == {"size": 6}  # nothing saved: untouched
    with Run(folder, {"size": 6, "budget": 30}, ignore={"budget"}) as run:
        save(run, 2)
    assert json.loads((folder / "args.json").read_text()) == {"size": 6, "budget": 30}  # the latest budget


@dataclasses.dataclass
class Toy:
    name: str
    seed: int = 0
    rate: float = 0.1
    steps: int = 10
    width: int | None = None
    flag: bool = True
    extra: dict = dataclasses.field(default_factory=dict, metadata={"flag": "set"})
    LIMITS = {"seed": ">=0", "rate": ">0", "steps": ">=1", "width": ">=1"}


@pytest.mark.parametrize(
    "change, message",
    [
        ({"seed": 1.7}, "--seed (seed) must be an integer, got 1.7"),
        ({"seed": True}, "--seed (seed) must be an integer, got True"),
        ({"seed": -1}, "--seed (seed) must be 0 or more, got -1"),
        ({"rate": True}, "--rate (rate) must be a number, got True"),
        ({"rate": "abc"}, "--rate (rate) must be a number, got 'abc'"),
        ({"rate": 0.0}, "--rate (rate) must be positive, got 0.0"),
        ({"steps": 0}, "--steps (steps) must be at least 1, got 0"),
        ({"width": 0}, "--width (width) must be at least 1, got 0"),
        ({"flag": "yes"}, "--flag (flag) must be true or false, got 'yes'"),
        ({"name": 3}, "--name (name) must be a string, got 3"),
        ({"name": None}, "--name (name) must be set, got None"),
        ({"extra": ["a"]}, "--set (extra) must be KEY=VALUE settings, got ['a']"),
    ],
)
def test_check_settings_names_the_flag_and_what_was_expected(change, message):
    check_settings(Toy(name="x"))
    check_settings(Toy(name="x", rate=1, width=3))  # an int is a number; None is allowed where declared
    with pytest.raises(SettingsError) as err:
        check_settings(dataclasses.replace(Toy(name="x"), **change))
    assert str(err.value) == message


def test_check_pairs_types_keyed_settings():
    check_pairs("dqn", {"buffer_size": 100, "gamma": 1}, {"buffer_size": 10, "gamma": 0.9})
    with pytest.raises(SettingsError, match=r"^--dqn buffer_size=abc: expected int like 10$"):
        check_pairs("dqn", {"buffer_size": "abc"}, {"buffer_size": 10})
    with pytest.raises(SettingsError, match=r"^--dqn buffer_size=1.5: expected int like 10$"):
        check_pairs("dqn", {"buffer_size": 1.5}, {"buffer_size": 10})
    with pytest.raises(SettingsError, match="--dqn buffer: unknown setting; known: buffer_size"):
        check_pairs("dqn", {"buffer": 1}, {"buffer_size": 10})


# ------------------------------------------------------------------ flags and commands from the dataclass


def _trainer_classes():
    import importlib

    from xrl.cli import TRAINERS

    return {name: getattr(importlib.import_module(t.module), t.settings) for name, t in TRAINERS.items()}


def _changed(cls):
    """An instance with every field moved off its default (the type's obvious other value)."""
    import typing

    hints = typing.get_type_hints(cls)
    values = {}
    for f in dataclasses.fields(cls):
        if f.metadata.get("switch") or f.name == "progress":
            continue
        kinds = [k for k in typing.get_args(hints[f.name]) or (hints[f.name],) if k is not type(None)]
        kind = kinds[0]
        default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
        if f.metadata.get("choices"):
            values[f.name] = [c for c in f.metadata["choices"] if c != default][0]
        elif kind is bool:
            values[f.name] = not default
        elif kind is int:
            values[f.name] = (default or 0) + 3
        elif kind is float:
            values[f.name] = (default or 0.0) + 0.25
        elif kind is dict:
            values[f.name] = {"size": 6, "name": "a b", "on": True}
        else:
            values[f.name] = f"some {f.name}"
    return cls(**values)


@pytest.mark.parametrize("name", ["agent", "digr", "visionmask", "stalder-explainer", "rexl", "classifier"])
def test_the_card_command_parses_back_to_the_same_settings(name):
    cls = _trainer_classes()[name]
    args = _changed(cls)
    line = command(f"xrl train {name}", args)
    parsed = build_parser().parse_args(shlex.split(line)[1:])
    assert from_flags(cls, parsed) == dataclasses.replace(args, progress=True)


def test_train_agent_flags_keep_their_names_and_the_command_resolves_the_env_defaults(tmp_path):
    from xrl.train.agent import AgentArgs, agent_command

    parsed = build_parser().parse_args(
        [
            "train",
            "agent",
            "--env",
            "pong",
            "--timesteps",
            "5",
            "--n-envs",
            "2",
            "--set",
            "version=v4",
            "--algo",
            "dqn",
            "--dqn",
            "buffer_size=50",
            "--checkpoint-every",
            "7",
            "--eval-episodes",
            "3",
            "--reward-scale",
            "0.5",
            "--out",
            "r",
            "--export-only",
            "--trust-pickle",
        ]
    )
    args = from_flags(AgentArgs, parsed)
    assert args == AgentArgs(
        env="pong",
        total_timesteps=5,
        n_envs=2,
        env_settings={"version": "v4"},
        algo="dqn",
        dqn={"buffer_size": 50},
        checkpoint_every=7,
        eval_episodes=3,
        reward_scale=0.5,
        out="r",
        export_only=True,
        trust_pickle=True,
    )
    line = agent_command(args, args.resolved())
    assert line == (
        "xrl train agent --env pong --set version=v4 --algo dqn --dqn buffer_size=50 --arch nature_cnn "
        "--timesteps 5 --seed 0 --n-envs 2 --reward-scale 0.5 --checkpoint-every 7 --eval-episodes 3 --out r"
    )
    with pytest.raises(SystemExit):
        build_parser().parse_args(["train", "agent", "--out", "r"])  # --env is required, as before


def _commands():
    """Every ``xrl train`` command in the zoo's cards and the README (trailing notes cut off)."""
    found = []
    for path in sorted((ROOT / "zoo").rglob("*.json")):
        try:
            card = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        if isinstance(card, dict) and str(card.get("command", "")).startswith("xrl train"):
            found.append((str(path.relative_to(ROOT)), card["command"].split("  ")[0]))
    for line in (ROOT / "README.md").read_text().splitlines():
        if "xrl train " in line:
            text = line[line.index("xrl train ") :].split("`")[0].split("  ")[0]
            found.append(("README.md", text.strip()))
    return found


def test_every_train_command_in_the_zoo_and_readme_still_parses():
    commands = _commands()
    assert len(commands) >= 20
    parser = build_parser()
    for where, line in commands:
        try:
            parser.parse_args(shlex.split(line)[1:])
        except SystemExit:
            pytest.fail(f"{where}: {line!r} does not parse")


# ------------------------------------------------------------------ env state without pickle


@pytest.mark.parametrize(
    "env, settings",
    [
        ("red-fetch-green", {}),
        pytest.param("pong", {"sticky_actions": True}, marks=pytest.mark.slow),  # ALE's own RNG (sticky actions)
        pytest.param("breakout", {"version": "v4"}, marks=pytest.mark.slow),  # SB3's AtariWrapper (noop resets)
    ],
)
def test_an_episode_is_rebuilt_from_its_start_and_actions(env, settings):
    """Play into a second episode (an unseeded reset: its RNG states are recorded), rebuild another
    env from the record, then both go on identically (observations, rewards, ends, next resets)."""
    from xrl.envs import make_env
    from xrl.train.agent import EpisodeLog

    played = EpisodeLog(make_env(env, **settings))
    played.reset(seed=3)
    rng = np.random.default_rng(0)
    ends = 0
    while ends < 1 or len(played.actions) < 20:
        *_, terminated, truncated, _ = played.step(int(rng.integers(played.action_space.n)))
        if terminated or truncated:
            played.reset()
            ends += 1
    assert played.start["seed"] is None and played.start["rngs"]
    record = json.loads(json.dumps(played.start)), list(played.actions)  # what a checkpoint stores (JSON)
    rebuilt = EpisodeLog(make_env(env, **settings))
    rebuilt.reset(seed=99)  # another episode first: the replay must not depend on it
    last = rebuilt.replay(*record)
    a = played.step(0)
    b = rebuilt.step(0)
    assert not np.array_equal(last, np.zeros_like(last))
    for _ in range(150):
        assert np.array_equal(a[0], b[0]) and a[1:4] == b[1:4]
        action = int(rng.integers(played.action_space.n))
        if a[2] or a[3]:
            a, b = played.reset(), rebuilt.reset()
            assert np.array_equal(a[0], b[0])
        a, b = played.step(action), rebuilt.step(action)


# ------------------------------------------------------------------ old pickle checkpoints


def _old_format_run(
    folder: Path, args, state_blob: bytes | None = None, *, steps: int = 0, pickle_env: bool = True
) -> None:
    """A run folder as xrl wrote it before run.py: checkpoint.zip (SB3) + checkpoint.state (pickle),
    after ``steps`` of training. ``pickle_env=False``: the envs were not pickled (``"env": None``,
    as for envs that could not be, e.g. zoo/mario's)."""
    import random

    import cloudpickle
    from stable_baselines3.common.logger import Logger

    from xrl.train.agent import _build

    folder.mkdir(parents=True)
    (folder / "args.json").write_text(json.dumps(args.recorded()))
    algo = _build(args)
    if steps:
        algo.set_logger(Logger(None, []))
        algo.learn(steps, reset_num_timesteps=False)
    algo.save(folder / "checkpoint.zip")
    vec = algo.get_env()
    for i, env in enumerate(vec.envs):  # the old envs had no EpisodeLog
        vec.envs[i] = env.env
    state = {
        "torch": torch.get_rng_state(),
        "numpy": np.random.get_state(),  # noqa: NPY002  (SB3 draws from the global generator)
        "python": random.getstate(),
        "env": cloudpickle.dumps(vec) if pickle_env else None,
        "num_timesteps": algo.num_timesteps,
        "action_space": algo.action_space.np_random.bit_generator.state,
    }
    (folder / "checkpoint.state").write_bytes(state_blob if state_blob is not None else pickle.dumps(state))


class _Payload:
    """Unpickling this creates a file (harmless stand-in for code an attacker would run)."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


@pytest.mark.train
@pytest.mark.slow
def test_an_old_pickle_checkpoint_resumes_only_when_trusted_then_becomes_the_new_format(tmp_path):
    from xrl.train.agent import AgentArgs, train_agent

    args = AgentArgs(
        env="red-fetch-green",
        total_timesteps=256,
        n_envs=2,
        n_steps=64,
        batch_size=64,
        eval_episodes=1,
        checkpoint_every=128,
        out=str(tmp_path / "old"),
        progress=False,
    )
    _old_format_run(tmp_path / "old", args.resolved())
    before = {p.name: p.read_bytes() for p in (tmp_path / "old").iterdir()}
    with pytest.raises(ValueError) as err:
        train_agent(args)
    message = str(err.value)
    assert "old pickle format" in message and "--trust-pickle" in message and "checkpoint.state" in message
    assert {p.name: p.read_bytes() for p in (tmp_path / "old").iterdir()} == before  # nothing touched
    path = train_agent(dataclasses.replace(args, trust_pickle=True))
    assert path.exists() and not (tmp_path / "old" / "checkpoint.state").exists()
    assert latest_checkpoint(tmp_path / "old") is not None and not list((tmp_path / "old").rglob("*.pkl"))


def _same(a, b) -> bool:
    """Nested dicts/lists of tensors and plain values, equal element by element."""
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return type(a) is type(b) and len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    if torch.is_tensor(a):
        return torch.is_tensor(b) and a.dtype == b.dtype and a.shape == b.shape and torch.equal(a, b)
    return a == b


@pytest.mark.train
@pytest.mark.slow
def test_convert_only_rewrites_an_old_checkpoint_that_then_resumes_as_the_trusted_old_one_would(tmp_path, capsys):
    """``--convert-only --trust-pickle`` (the one-off conversion zoo/mario went through): refused
    without trust, touching nothing; with it, a new-format checkpoint of the same weights and
    optimizer, no pickle left; resumed without trust it trains to the weights, optimizer and RNG
    state of the old checkpoint resumed with trust (envs not pickled, as zoo/mario's)."""
    from xrl.cli import main
    from xrl.train.agent import AgentArgs, train_agent
    from xrl.train.run import zip_tensors

    args = AgentArgs(
        env="red-fetch-green",
        total_timesteps=512,
        n_envs=2,
        n_steps=64,
        batch_size=64,
        eval_episodes=1,
        checkpoint_every=128,
        progress=False,
    )
    for name in ("trusted", "converted"):
        _old_format_run(tmp_path / name, args.resolved(), steps=128, pickle_env=False)
    old_zip = tmp_path / "trusted" / "checkpoint.zip"  # until the trusted resume links it to its newest
    old_weights = zip_tensors(old_zip, "policy.pth")
    argv = [
        "train",
        "agent",
        "--env",
        "red-fetch-green",
        "--timesteps",
        "512",
        "--n-envs",
        "2",
        "--n-steps",
        "64",
        "--batch-size",
        "64",
        "--checkpoint-every",
        "128",
        "--eval-episodes",
        "1",
        "--out",
        str(tmp_path / "converted"),
        "--convert-only",
    ]
    before = {p.name: p.read_bytes() for p in (tmp_path / "converted").iterdir()}
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "old pickle format (checkpoint.zip, checkpoint.state)" in err
    assert "--convert-only needs --trust-pickle" in err
    assert {p.name: p.read_bytes() for p in (tmp_path / "converted").iterdir()} == before  # nothing touched
    assert main(argv + ["--trust-pickle"]) == 0
    assert "saved " in capsys.readouterr().out
    folder = latest_checkpoint(tmp_path / "converted")
    assert folder.name == f"{128:012d}" and sorted(p.name for p in folder.iterdir()) == [
        "checkpoint.zip",
        "complete.json",
        "state.json",
        "tensors.pt",
    ]
    assert not (tmp_path / "converted" / "checkpoint.state").exists()
    assert (
        json.loads((tmp_path / "converted" / "checkpoint.json").read_text())["checkpoint"]
        == f"checkpoints/{folder.name}"
    )
    assert (tmp_path / "converted" / "checkpoint.zip").read_bytes() == (folder / "checkpoint.zip").read_bytes()
    for entry in ("policy.pth", "policy.optimizer.pth"):  # the same weights and optimizer as the old zip
        assert _same(zip_tensors(old_zip, entry), zip_tensors(folder / "checkpoint.zip", entry))
    with pytest.raises(ValueError, match="nothing to convert"):  # a second conversion
        train_agent(dataclasses.replace(args, out=str(tmp_path / "converted"), convert_only=True, trust_pickle=True))
    trusted = train_agent(dataclasses.replace(args, out=str(tmp_path / "trusted"), trust_pickle=True))
    converted = train_agent(dataclasses.replace(args, out=str(tmp_path / "converted")))  # no trust needed
    a, b = (latest_checkpoint(p.parent) for p in (trusted, converted))
    assert a.name == b.name == f"{512:012d}"
    for entry in ("policy.pth", "policy.optimizer.pth"):
        assert _same(zip_tensors(a / "checkpoint.zip", entry), zip_tensors(b / "checkpoint.zip", entry))
    x, y = (torch.load(p / "tensors.pt", weights_only=True) for p in (a, b))
    assert torch.equal(x["torch"], y["torch"]) and torch.equal(x["numpy_key"], y["numpy_key"])
    assert torch.equal(x["last_obs"], y["last_obs"])
    assert not torch.equal(
        old_weights["action_net.weight"], zip_tensors(b / "checkpoint.zip", "policy.pth")["action_net.weight"]
    )  # it trained


def _reseal(folder: Path) -> None:
    """Rewrite ``complete.json`` to match the files (what an attacker who edits them can do)."""
    manifest = json.loads((folder / "complete.json").read_text())
    manifest["files"] = {
        p.name: {"bytes": p.stat().st_size, "sha256": sha256(p)}
        for p in sorted(folder.iterdir())
        if p.name != "complete.json"
    }
    (folder / "complete.json").write_text(json.dumps(manifest))


def _rezip(path: Path, name: str, blob: bytes) -> None:
    import zipfile

    with zipfile.ZipFile(path) as z:
        members = {n: z.read(n) for n in z.namelist()}
    members[name] = blob
    path.unlink()  # the run folder's checkpoint.zip is a hard link to it: break the link
    with zipfile.ZipFile(path, "w") as z:
        for n, b in members.items():
            z.writestr(n, b)


@pytest.mark.train
@pytest.mark.slow
def test_crafted_payloads_in_a_checkpoint_folder_run_nothing_when_resumed(tmp_path):
    """A new-format checkpoint whose files an attacker replaced (and resealed): a ``tensors.pt`` or
    an SB3 ``policy.pth`` entry holding a pickle payload is refused naming the file; a
    ``:serialized:`` payload in the SB3 zip's ``data`` is never read, and the run resumes. Each
    payload would create a file when unpickled, and does when loaded the unsafe way."""
    import base64
    import io
    import shutil
    import zipfile

    from stable_baselines3 import PPO

    from xrl.train.agent import AgentArgs, train_agent

    args = AgentArgs(
        env="red-fetch-green",
        total_timesteps=256,
        n_envs=2,
        n_steps=64,
        batch_size=64,
        checkpoint_every=128,
        eval_episodes=1,
        out=str(tmp_path / "run"),
        progress=False,
    )
    train_agent(args, stop_at=128)
    folder = latest_checkpoint(tmp_path / "run")
    pristine = tmp_path / "pristine"
    shutil.copytree(folder, pristine)
    marker = tmp_path / "pwned"

    def restore():
        shutil.rmtree(folder)
        shutil.copytree(pristine, folder)

    tensors = torch.load(folder / "tensors.pt", weights_only=True)
    torch.save({**tensors, "evil": _Payload(marker)}, folder / "tensors.pt")
    _reseal(folder)
    with pytest.raises(ValueError, match=r"tensors\.pt is not a readable checkpoint file \(UnpicklingError"):
        train_agent(args)
    assert not marker.exists()
    restore()
    with zipfile.ZipFile(folder / "checkpoint.zip") as z:
        policy = torch.load(io.BytesIO(z.read("policy.pth")), weights_only=True)
    blob = io.BytesIO()
    torch.save({**policy, "evil": _Payload(marker)}, blob)
    _rezip(folder / "checkpoint.zip", "policy.pth", blob.getvalue())
    _reseal(folder)
    with pytest.raises(ValueError, match=r"checkpoint\.zip: policy\.pth is not readable weights \(UnpicklingError"):
        train_agent(args)
    assert not marker.exists()
    restore()
    with zipfile.ZipFile(folder / "checkpoint.zip") as z:
        data = json.loads(z.read("data"))
    data["evil"] = {
        ":type:": "<class 'object'>",
        ":serialized:": base64.b64encode(pickle.dumps(_Payload(marker))).decode(),
    }
    _rezip(folder / "checkpoint.zip", "data", json.dumps(data).encode())
    _reseal(folder)
    crafted = tmp_path / "crafted.zip"
    shutil.copy(folder / "checkpoint.zip", crafted)
    path = train_agent(args)  # resumes from the crafted checkpoint: its data entry is never unpickled
    assert path.exists() and not marker.exists()
    assert latest_checkpoint(tmp_path / "run").name == f"{256:012d}"
    PPO.load(crafted, device="cpu")  # Stable-Baselines3's own loader runs the payload
    assert marker.exists()


def test_a_crafted_checkpoint_state_runs_nothing_when_resumed(tmp_path):
    from xrl.train.agent import AgentArgs, train_agent

    marker = tmp_path / "pwned"
    folder = tmp_path / "run"
    folder.mkdir()
    args = AgentArgs(env="red-fetch-green", n_envs=1, total_timesteps=64, out=str(folder), progress=False)
    (folder / "args.json").write_text(json.dumps(args.resolved().recorded()))
    (folder / "checkpoint.zip").write_bytes(b"PK")
    (folder / "checkpoint.state").write_bytes(pickle.dumps(_Payload(marker)))
    with pytest.raises(ValueError, match="old pickle format"):
        train_agent(args)
    assert not marker.exists()
    from xrl.cli import main

    assert main(["train", "agent", "--env", "red-fetch-green", "--n-envs", "1", "--out", str(folder)]) == 2
    assert not marker.exists()


def test_toy_flags_round_trip():
    import argparse

    parser = argparse.ArgumentParser()
    add_flags(parser, Toy)
    ns = parser.parse_args(
        [
            "--name",
            "a",
            "--seed",
            "4",
            "--rate",
            "0.5",
            "--flag",
            "false",
            "--set",
            "k=1",
            "--set",
            "s=text",
            "--width",
            "3",
        ]
    )
    toy = from_flags(Toy, ns)
    assert toy == Toy(name="a", seed=4, rate=0.5, flag=False, extra={"k": 1, "s": "text"}, width=3)
    assert command("toy", toy) == "toy --name a --seed 4 --rate 0.5 --width 3 --flag false --set k=1 --set s=text"
    with pytest.raises(SystemExit):
        parser.parse_args(["--name", "a", "--seed", "1.7"])


@pytest.mark.train
@pytest.mark.parametrize("point", ["files", "manifest", "renamed"])
def test_a_trainer_killed_inside_a_save_resumes_to_the_uninterrupted_result(tmp_path, monkeypatch, point):
    """The classifier trainer (fast) dies inside the save of epoch 2; the same command then
    resumes from the newest complete checkpoint and ends with the weights of a run never killed."""
    from xrl.train.classifier import ClassifierArgs, train_classifier

    settings = dict(size=16, n_train=32, n_val=8, batch_size=16, epochs=3, progress=False)
    straight = train_classifier(ClassifierArgs(out=str(tmp_path / "straight"), **settings))
    saves = {"n": 0}

    def die(name):
        if name == "write":
            saves["n"] += 1
        if saves["n"] == 2 and name == point:
            raise Killed(name)

    monkeypatch.setattr(run_module, "_step", die)
    with pytest.raises(Killed):
        train_classifier(ClassifierArgs(out=str(tmp_path / "killed"), **settings))
    monkeypatch.setattr(run_module, "_step", lambda name: None)
    expected = 2 if point == "renamed" else 1
    assert torch.load(latest_checkpoint(tmp_path / "killed") / "state.pt", weights_only=True)["epoch"] == expected
    resumed = train_classifier(ClassifierArgs(out=str(tmp_path / "killed"), **settings))
    a, b = (torch.load(latest_checkpoint(p.parent) / "state.pt", weights_only=True)["net"] for p in (straight, resumed))
    assert all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.train
@pytest.mark.slow
def test_a_run_whose_checkpoint_folder_is_lost_is_refused_then_resumes_from_its_weights(tmp_path, capsys):
    """``checkpoints/`` gone, ``checkpoint.zip`` left (zoo/mario after a machine was shut down):
    the same command is refused and touches nothing (it used to start over and overwrite the
    zip); ``--from-weights`` resumes from the zip's policy, optimizer and step counters."""
    import io
    import shutil
    import zipfile

    from xrl.train.agent import AgentArgs, _resume_weights, train_agent

    args = AgentArgs(
        env="red-fetch-green",
        total_timesteps=128,
        n_envs=2,
        n_steps=64,
        batch_size=64,
        eval_episodes=1,
        checkpoint_every=128,
        out=str(tmp_path / "run"),
        progress=False,
    )
    run = tmp_path / "run"
    with pytest.raises(FileNotFoundError, match="no checkpoint.zip to resume --from-weights"):
        train_agent(dataclasses.replace(args, from_weights=True))
    train_agent(args)
    with pytest.raises(ValueError, match="is complete and resumes exactly; --from-weights is for"):
        train_agent(dataclasses.replace(args, from_weights=True))
    shutil.rmtree(run / "checkpoints")
    before = {p.name: p.read_bytes() for p in run.iterdir() if p.is_file()}
    longer = dataclasses.replace(args, total_timesteps=256)
    with pytest.raises(ValueError) as err:
        train_agent(longer)
    assert "checkpoint.zip (a training at 128 steps)" in str(err.value) and "--from-weights" in str(err.value)
    assert {p.name: p.read_bytes() for p in run.iterdir() if p.is_file()} == before and not (
        run / "checkpoints"
    ).exists()

    # the weights and optimizer are the zip's, read here on their own
    with zipfile.ZipFile(run / "checkpoint.zip") as z:
        policy = torch.load(io.BytesIO(z.read("policy.pth")), weights_only=True)
        optimizer = torch.load(io.BytesIO(z.read("policy.optimizer.pth")), weights_only=True)
        updates = json.loads(z.read("data"))["_n_updates"]
    algo = _resume_weights(dataclasses.replace(longer, from_weights=True).resolved(), run / "checkpoint.zip")
    assert algo.num_timesteps == 128 and algo._n_updates == updates > 0
    assert _same(dict(algo.policy.state_dict()), dict(policy))
    assert _same(algo.policy.optimizer.state_dict()["state"], optimizer["state"])
    capsys.readouterr()

    train_agent(dataclasses.replace(longer, from_weights=True))
    assert "from its weights alone: every env starts a fresh seeded episode" in capsys.readouterr().err
    latest = latest_checkpoint(run)
    assert latest.name == f"{256:012d}"
    state = json.loads((latest / "state.json").read_text())
    assert state["num_timesteps"] == 256 and state["_n_updates"] == 2 * updates  # one more rollout's epochs
    assert json.loads((run / "agent.json").read_text())["timesteps"] == 256
