"""Bad training and CLI settings: each is refused before anything is written, with one line
that names the setting (or the file) and what was expected, and exit status 2; ``--debug``
shows the traceback instead."""
from __future__ import annotations

import json

import pytest

from xrl.cli import main

RFG = ["--env", "red-fetch-green"]
AGENT = ["train", "agent", *RFG]


def files(folder) -> dict:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


#: (argv with OUT for the output path, the exact error line after "xrl <command>: error: ")
REFUSED = [
    # xrl train agent: counts and ranges
    ([*AGENT, "--n-envs", "0", "--out", "OUT"], "--n-envs (n_envs) must be at least 1, got 0"),
    ([*AGENT, "--timesteps", "0", "--out", "OUT"], "--timesteps (total_timesteps) must be at least 1, got 0"),
    ([*AGENT, "--eval-episodes", "0", "--out", "OUT"], "--eval-episodes (eval_episodes) must be at least 1, got 0"),
    ([*AGENT, "--checkpoint-every", "0", "--out", "OUT"],
     "--checkpoint-every (checkpoint_every) must be at least 1, got 0"),
    ([*AGENT, "--seed", "-1", "--out", "OUT"], "--seed (seed) must be 0 or more, got -1"),
    ([*AGENT, "--reward-scale", "0", "--out", "OUT"], "--reward-scale (reward_scale) must be positive, got 0.0"),
    ([*AGENT, "--learning-rate", "-0.1", "--out", "OUT"], "--learning-rate (learning_rate) must be positive, got -0.1"),
    ([*AGENT, "--gamma", "1.5", "--out", "OUT"], "--gamma (gamma) must be in [0, 1], got 1.5"),
    ([*AGENT, "--n-steps", "0", "--out", "OUT"], "--n-steps (n_steps) must be at least 1, got 0"),
    ([*AGENT, "--batch-size", "0", "--out", "OUT"], "--batch-size (batch_size) must be at least 1, got 0"),
    # xrl train agent: env settings, DQN settings, algorithm, env
    ([*AGENT, "--set", "size=abc", "--out", "OUT"],
     "--set size=abc: red-fetch-green refused its settings: '<' not supported between instances of 'str' and 'int'"),
    ([*AGENT, "--set", "size=true", "--out", "OUT"],
     "--set size=True: red-fetch-green refused its settings: size must be at least 5 (walls + room for 4 entities), "
     "got True"),
    ([*AGENT, "--set", "colour=red", "--out", "OUT"],
     "--set colour=red: red-fetch-green refused its settings: RedFetchGreenEnv.__init__() got an unexpected keyword "
     "argument 'colour'"),
    ([*AGENT, "--set", "size", "--out", "OUT"], "--set takes KEY=VALUE, got 'size'"),
    ([*AGENT, "--algo", "dqn", "--dqn", "buffer_size=abc", "--out", "OUT"],
     "--dqn buffer_size=abc: expected int like 15000"),
    ([*AGENT, "--algo", "dqn", "--dqn", "gamma=high", "--out", "OUT"], "--dqn gamma=high: expected float like 0.8"),
    ([*AGENT, "--algo", "dqn", "--dqn", "buffer=10", "--out", "OUT"],
     "unknown DQN settings ['buffer']; known: learning_rate, buffer_size, learning_starts, batch_size, gamma, "
     "train_freq, gradient_steps, target_update_interval, exploration_fraction, exploration_final_eps"),
    ([*AGENT, "--dqn", "gamma=0.9", "--out", "OUT"], "DQN settings ['gamma'] given for algo 'ppo'; add algo=dqn (--algo dqn)"),
    (["train", "agent", "--env", "nosuch", "--out", "OUT"], None),  # message: the registry's list of names
    ([*AGENT, "--arch", "resnet", "--out", "OUT"], None),
    # the other trainers
    (["train", "classifier", "--epochs", "0", "--out", "OUT"], "--epochs (epochs) must be at least 1, got 0"),
    (["train", "classifier", "--size", "0", "--out", "OUT"], "--size (size) must be at least 1, got 0"),
    (["train", "classifier", "--learning-rate", "0", "--out", "OUT"],
     "--learning-rate (learning_rate) must be positive, got 0.0"),
    (["train", "classifier", "--data", "NOFOLDER", "--out", "OUT"], "image folder NOFOLDER does not exist"),
    (["train", "digr", "--teacher", "red-fetch-green", "--data", "d.h5", "--updates", "0", "--out", "OUT"],
     "--updates (updates) must be at least 1, got 0"),
    (["train", "digr", "--teacher", "red-fetch-green", "--data", "d.h5", "--threshold", "2", "--out", "OUT"],
     "--threshold (threshold) must be in [0, 1], got 2.0"),
    (["train", "digr", "--teacher", "red-fetch-green", "--data", "d.h5", "--n-envs", "0", "--out", "OUT"],
     "--n-envs (n_envs) must be at least 1, got 0"),
    (["train", "visionmask", "--agent", "red-fetch-green", "--data", "e.h5", "--epochs", "0", "--out", "OUT"],
     "--epochs (epochs) must be at least 1, got 0"),
    (["train", "visionmask", "--agent", "red-fetch-green", "--data", "e.h5", "--a-max", "2", "--out", "OUT"],
     "--a-max (a_max) must be in [0, 1], got 2.0"),
    (["train", "stalder-explainer", "--agent", "red-fetch-green", "--data", "e.h5", "--max-steps", "0", "--out", "OUT"],
     "--max-steps (max_steps) must be at least 1, got 0"),
    (["train", "rexl", "--model", "red-fetch-green", "--grid", "0", "--out", "OUT"],
     "--grid (grid) must be at least 1, got 0"),
    (["train", "rexl", "--model", "red-fetch-green", "--n-envs", "0", "--out", "OUT"],
     "--n-envs (n_envs) must be at least 1, got 0"),
    (["train", "rexl", "--model", "red-fetch-green", "--gamma", "2", "--out", "OUT"],
     "--gamma (gamma) must be in [0, 1], got 2.0"),
]


@pytest.mark.parametrize("argv, line", REFUSED, ids=[" ".join(a[1:5]) + " " + " ".join(a[5:7]) for a, _ in REFUSED])
def test_bad_training_settings_are_refused_before_anything_is_written(argv, line, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "run"
    argv = [str(out) if a == "OUT" else a for a in argv]
    before = files(tmp_path)
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("xrl train: error: ")
    if line is not None:
        assert err[-1] == f"xrl train: error: {line}"
    assert len([e for e in err if "error" in e]) == 1 and "Traceback" not in "\n".join(err)
    assert not out.exists() and files(tmp_path) == before


#: argparse refusals: exit 2 and a line naming the flag
PARSER = [
    ([*AGENT, "--seed", "1.7", "--out", "OUT"], "argument --seed: expected an integer, got '1.7'"),
    ([*AGENT, "--n-envs", "two", "--out", "OUT"], "argument --n-envs: expected an integer, got 'two'"),
    ([*AGENT, "--reward-scale", "abc", "--out", "OUT"], "argument --reward-scale: expected a number, got 'abc'"),
    ([*AGENT, "--algo", "sac", "--out", "OUT"], "argument --algo: invalid choice: 'sac' (choose from 'ppo', 'dqn')"),
    ([*AGENT, "--linear-decay", "maybe", "--out", "OUT"], "argument --linear-decay: expected true or false, got 'maybe'"),
    (["train", "agent", "--out", "OUT"], "the following arguments are required: --env"),
    (["train", "classifier", "--epochs", "1.5"], "argument --epochs: expected an integer, got '1.5'"),
    (["train", "digr", "--data", "d.h5"], "the following arguments are required: --teacher"),
    (["watch", "--agent", "red-fetch-green", "--fps", "0", "--out", "OUT"],
     "argument --fps: expected a positive number, got '0'"),
    (["watch", "--agent", "red-fetch-green", "--fraction", "2", "--out", "OUT"],
     "argument --fraction: expected a number in [0, 1], got '2'"),
    (["watch", "--agent", "red-fetch-green", "--max-steps", "0", "--out", "OUT"],
     "argument --max-steps: expected an integer of at least 1, got '0'"),
    (["collect", "--agent", "red-fetch-green", "--episodes", "0", "--out", "OUT"],
     "argument --episodes: expected an integer of at least 1, got '0'"),
    (["evaluate", "--agent", "red-fetch-green", "--data", "d.h5", "--n-states", "0", "--out", "OUT"],
     "argument --n-states: expected an integer of at least 1, got '0'"),
    (["explain", "--agent", "red-fetch-green", "--data", "d.h5", "--n", "0", "--out", "OUT"],
     "argument --n: expected an integer of at least 1, got '0'"),
    (["attack", "--agent", "red-fetch-green", "--batch", "0", "--out", "OUT"],
     "argument --batch: expected an integer of at least 1, got '0'"),
    (["counterfactual", "--agent", "a", "--network", "n", "--data", "d", "--threshold", "-1", "--out", "OUT"],
     "argument --threshold: expected a number in [0, 1], got '-1'"),
    (["bench", "quick", "--workers", "0"], "argument --workers: expected an integer of at least 1, got '0'"),
]


@pytest.mark.parametrize("argv, line", PARSER, ids=[" ".join(a[:4]) for a, _ in PARSER])
def test_malformed_flags_are_refused_by_the_parser(argv, line, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    argv = [str(tmp_path / "out") if a == "OUT" else a for a in argv]
    with pytest.raises(SystemExit) as exit_:
        main(argv)
    assert exit_.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].endswith(f"error: {line}")
    assert files(tmp_path) == {}


def _fake_checkpoint(folder, step=128):
    """A run folder holding a complete (if empty) checkpoint: what a resume would continue."""
    from xrl.train.run import Run
    with Run(folder, {"x": 1}) as run:
        run.save(step, lambda f: (f / "state.json").write_text("{}"))


def test_a_run_folder_with_other_settings_names_the_setting(tmp_path, capsys):
    from xrl.train.agent import AgentArgs
    out = tmp_path / "run"
    _fake_checkpoint(out)
    (out / "args.json").write_text(json.dumps(AgentArgs(env="red-fetch-green", out=str(out)).resolved().recorded()))
    before = files(out)
    assert main([*AGENT, "--seed", "1", "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "other settings" in err[0] and "the first is 'seed': stored 0, asked 1" in err[0]
    assert str(out) in err[0] and "--out" in err[0] and files(out) == before


def test_a_locked_run_folder_names_its_holder(tmp_path, capsys):
    out = tmp_path / "run"
    out.mkdir()
    (out / ".lock").write_text(json.dumps({"pid": 4242, "host": "gpu-box", "started": "2026-12-03T18:00:00"}))
    before = files(out)
    assert main([*AGENT, "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"xrl train: error: {out} is in use by pid 4242 on gpu-box since 2026-12-03T18:00:00; wait for it "
                   "to finish or use another run folder (--out)"]
    assert files(out) == before


def test_an_out_that_is_a_file_is_refused(tmp_path, capsys):
    (tmp_path / "run").write_text("not a folder")
    assert main([*AGENT, "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"xrl train: error: --out {tmp_path / 'run'} is a file, expected a run folder"]
    assert (tmp_path / "run").read_text() == "not a folder"


def test_a_corrupt_checkpoint_is_one_line_naming_its_file(tmp_path, capsys):
    """A checkpoint folder whose manifest matches but whose state is garbage (e.g. written by a
    broken disk) is named in one line; --debug shows the traceback instead."""
    from xrl.train.run import Run
    from xrl.train.agent import AgentArgs
    out = tmp_path / "run"
    with Run(out, AgentArgs(env="red-fetch-green", out=str(out)).resolved().recorded()) as run:
        run.save(128, lambda f: (f / "state.json").write_text("[not json"))
    assert main([*AGENT, "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("xrl train: error: ") and "state.json is not readable JSON" in err[0]
    with pytest.raises(ValueError, match="state.json is not readable JSON"):
        main([*AGENT, "--out", str(out), "--debug"])


def test_missing_files_are_one_line_with_the_path(tmp_path, capsys):
    assert main(["report", str(tmp_path / "nothing-here")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and str(tmp_path / "nothing-here") in err[0]


def test_an_interrupt_is_one_line_and_its_exit_status(capsys, monkeypatch):
    """Ctrl-C (KeyboardInterrupt) is one line, exit 130; SIGTERM during a run (Terminated) exit 143."""
    import xrl.cli as cli
    from xrl.train.run import Terminated

    def interrupted(args):
        raise KeyboardInterrupt

    def terminated(args):
        raise Terminated("terminated by signal 15")

    for fn, code, line in [(interrupted, 130, "xrl envs: interrupted"), (terminated, 143, "xrl envs: terminated by signal 15")]:
        monkeypatch.setattr(cli, "cmd_envs", fn)
        assert main(["envs"]) == code
        assert capsys.readouterr().err.strip().splitlines() == [line]
