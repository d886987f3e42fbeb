"""Bad training and CLI settings: each is refused before anything is written, with one line
that names the setting (or the file) and what was expected, and exit status 2; ``--debug``
shows the traceback instead."""

from __future__ import annotations

import json
import pickle
import re
from pathlib import Path

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
    (
        [*AGENT, "--checkpoint-every", "0", "--out", "OUT"],
        "--checkpoint-every (checkpoint_every) must be at least 1, got 0",
    ),
    ([*AGENT, "--seed", "-1", "--out", "OUT"], "--seed (seed) must be 0 or more, got -1"),
    ([*AGENT, "--reward-scale", "0", "--out", "OUT"], "--reward-scale (reward_scale) must be positive, got 0.0"),
    ([*AGENT, "--learning-rate", "-0.1", "--out", "OUT"], "--learning-rate (learning_rate) must be positive, got -0.1"),
    ([*AGENT, "--gamma", "1.5", "--out", "OUT"], "--gamma (gamma) must be in [0, 1], got 1.5"),
    ([*AGENT, "--n-steps", "0", "--out", "OUT"], "--n-steps (n_steps) must be at least 1, got 0"),
    ([*AGENT, "--batch-size", "0", "--out", "OUT"], "--batch-size (batch_size) must be at least 1, got 0"),
    # xrl train agent: env settings, DQN settings, algorithm, env
    (
        [*AGENT, "--set", "size=abc", "--out", "OUT"],
        "--set size=abc: red-fetch-green refused its settings: size must be at least 5 (walls + room for 4 "
        "entities) and an integer, got 'abc'",
    ),
    (
        [*AGENT, "--set", "size=true", "--out", "OUT"],
        "--set size=True: red-fetch-green refused its settings: size must be at least 5 (walls + room for 4 "
        "entities) and an integer, got True",
    ),
    (
        [*AGENT, "--set", "colour=red", "--out", "OUT"],
        "--set colour=red: red-fetch-green refused its settings: RedFetchGreenEnv.__init__() got an unexpected keyword "
        "argument 'colour'",
    ),
    ([*AGENT, "--set", "size", "--out", "OUT"], "--set takes KEY=VALUE, got 'size'"),
    (
        [*AGENT, "--algo", "dqn", "--dqn", "buffer_size=abc", "--out", "OUT"],
        "--dqn buffer_size=abc: expected int like 15000",
    ),
    ([*AGENT, "--algo", "dqn", "--dqn", "gamma=high", "--out", "OUT"], "--dqn gamma=high: expected float like 0.8"),
    (
        [*AGENT, "--algo", "dqn", "--dqn", "buffer=10", "--out", "OUT"],
        "unknown DQN settings ['buffer']; known: learning_rate, buffer_size, learning_starts, batch_size, gamma, "
        "train_freq, gradient_steps, target_update_interval, exploration_fraction, exploration_final_eps",
    ),
    (
        [*AGENT, "--dqn", "gamma=0.9", "--out", "OUT"],
        "DQN settings ['gamma'] given for algo 'ppo'; add algo=dqn (--algo dqn)",
    ),
    (["train", "agent", "--env", "nosuch", "--out", "OUT"], None),  # message: the registry's list of names
    ([*AGENT, "--arch", "resnet", "--out", "OUT"], None),
    # the other trainers
    (["train", "classifier", "--epochs", "0", "--out", "OUT"], "--epochs (epochs) must be at least 1, got 0"),
    (["train", "classifier", "--size", "0", "--out", "OUT"], "--size (size) must be at least 1, got 0"),
    (
        ["train", "classifier", "--learning-rate", "0", "--out", "OUT"],
        "--learning-rate (learning_rate) must be positive, got 0.0",
    ),
    (["train", "classifier", "--data", "NOFOLDER", "--out", "OUT"], "image folder NOFOLDER does not exist"),
    (
        ["train", "digr", "--teacher", "red-fetch-green", "--data", "d.h5", "--updates", "0", "--out", "OUT"],
        "--updates (updates) must be at least 1, got 0",
    ),
    (
        ["train", "digr", "--teacher", "red-fetch-green", "--data", "d.h5", "--threshold", "2", "--out", "OUT"],
        "--threshold (threshold) must be in [0, 1], got 2.0",
    ),
    (
        ["train", "digr", "--teacher", "red-fetch-green", "--data", "d.h5", "--n-envs", "0", "--out", "OUT"],
        "--n-envs (n_envs) must be at least 1, got 0",
    ),
    (
        ["train", "visionmask", "--agent", "red-fetch-green", "--data", "e.h5", "--epochs", "0", "--out", "OUT"],
        "--epochs (epochs) must be at least 1, got 0",
    ),
    (
        ["train", "visionmask", "--agent", "red-fetch-green", "--data", "e.h5", "--a-max", "2", "--out", "OUT"],
        "--a-max (a_max) must be in [0, 1], got 2.0",
    ),
    (
        [
            "train",
            "stalder-explainer",
            "--agent",
            "red-fetch-green",
            "--data",
            "e.h5",
            "--max-steps",
            "0",
            "--out",
            "OUT",
        ],
        "--max-steps (max_steps) must be at least 1, got 0",
    ),
    (
        ["train", "rexl", "--model", "red-fetch-green", "--grid", "0", "--out", "OUT"],
        "--grid (grid) must be at least 1, got 0",
    ),
    (
        ["train", "rexl", "--model", "red-fetch-green", "--n-envs", "0", "--out", "OUT"],
        "--n-envs (n_envs) must be at least 1, got 0",
    ),
    (
        ["train", "rexl", "--model", "red-fetch-green", "--gamma", "2", "--out", "OUT"],
        "--gamma (gamma) must be in [0, 1], got 2.0",
    ),
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
    (
        [*AGENT, "--linear-decay", "maybe", "--out", "OUT"],
        "argument --linear-decay: expected true or false, got 'maybe'",
    ),
    (["train", "agent", "--out", "OUT"], "the following arguments are required: --env"),
    (["train", "classifier", "--epochs", "1.5"], "argument --epochs: expected an integer, got '1.5'"),
    (["train", "digr", "--data", "d.h5"], "the following arguments are required: --teacher"),
    (
        ["watch", "--agent", "red-fetch-green", "--fps", "0", "--out", "OUT"],
        "argument --fps: expected a positive number, got '0'",
    ),
    (
        ["watch", "--agent", "red-fetch-green", "--fraction", "2", "--out", "OUT"],
        "argument --fraction: expected a number in [0, 1], got '2'",
    ),
    (
        ["watch", "--agent", "red-fetch-green", "--max-steps", "0", "--out", "OUT"],
        "argument --max-steps: expected an integer of at least 1, got '0'",
    ),
    (
        ["collect", "--agent", "red-fetch-green", "--episodes", "0", "--out", "OUT"],
        "argument --episodes: expected an integer of at least 1, got '0'",
    ),
    (
        ["evaluate", "--agent", "red-fetch-green", "--data", "d.h5", "--n-states", "0", "--out", "OUT"],
        "argument --n-states: expected an integer of at least 1, got '0'",
    ),
    (
        ["explain", "--agent", "red-fetch-green", "--data", "d.h5", "--n", "0", "--out", "OUT"],
        "argument --n: expected an integer of at least 1, got '0'",
    ),
    (
        ["attack", "--agent", "red-fetch-green", "--batch", "0", "--out", "OUT"],
        "argument --batch: expected an integer of at least 1, got '0'",
    ),
    (
        ["counterfactual", "--agent", "a", "--network", "n", "--data", "d", "--threshold", "-1", "--out", "OUT"],
        "argument --threshold: expected a number in [0, 1], got '-1'",
    ),
    (["bench", "quick", "--workers", "0"], "argument --workers: expected an integer of at least 1, got '0'"),
    (
        ["attack", "--agent", "red-fetch-green", "--eps", "abc", "--out", "OUT"],
        "argument --eps: expected comma-separated numbers of at least 0, got 'abc'",
    ),
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
    assert err == [
        f"xrl train: error: {out} is in use by pid 4242 on gpu-box since 2026-12-03T18:00:00; wait for it "
        "to finish or use another run folder (--out)"
    ]
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
    from xrl.train.agent import AgentArgs
    from xrl.train.run import Run

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

    for fn, code, line in [
        (interrupted, 130, "xrl envs: interrupted"),
        (terminated, 143, "xrl envs: terminated by signal 15"),
    ]:
        monkeypatch.setitem(cli.COMMANDS, "envs", (cli.NoSettings, fn, "list environments"))
        assert main(["envs"]) == code
        assert capsys.readouterr().err.strip().splitlines() == [line]


# ------------------------------------------------------------------ the other commands (issue 26's list)

RFG_AGENT = ["--agent", "red-fetch-green"]
EXPLAIN = ["explain", *RFG_AGENT, "--data", "DATA", "--methods"]
EVALUATE = ["evaluate", *RFG_AGENT, "--data", "DATA", "--methods", "gradient"]
STATE_DATASET = (
    "expected an xrl StateDataset: an HDF5 file with attribute format='xrl.StateDataset' as written by xrl.data.collect"
)

#: (argv: DATA the shared dataset of 10 states, in/ the bad files made for the test; the exact line
#: after "xrl <command>: error: ", or a regular expression for text quoted from HDF5)
COMMANDS = [
    # explainer, metric and attack settings: checked against the method's constructor before anything runs
    (
        [*EXPLAIN, "greydanus", "--setting", "greydanus.radius=abc", "--out", "e.png"],
        "--setting greydanus.radius=abc: expected a number (default 5.0)",
    ),
    (
        [*EXPLAIN, "greydanus", "--setting", "greydanus.radius=true", "--out", "e.png"],
        "--setting greydanus.radius=true: expected a number (default 5.0)",
    ),
    (
        [*EXPLAIN, "rise", "--setting", "rise.seed=1.7", "--out", "e.png"],
        "--setting rise.seed=1.7: expected an integer (default 0)",
    ),
    (
        [*EXPLAIN, "rise", "--setting", "rise.nosuch=1", "--out", "e.png"],
        "--setting rise.nosuch: rise has no setting 'nosuch'; known: batch_size, grid, n_masks, p, preset, score, seed",
    ),
    (
        [*EXPLAIN, "gradient", "--setting", "greydanus.radius=4", "--out", "e.png"],
        "--setting greydanus.radius: expected METHOD.SETTING=VALUE for one of ['gradient']",
    ),
    (
        [*EXPLAIN, "nosuch", "--out", "e.png"],
        "unknown explainer 'nosuch'; known explainers: attention, extremal_perturbation, grad_cam, gradient, greydanus, "
        "guided_backprop, integrated_gradients, lime, normgrad, occlusion, random, rexl, rise, sarfa, smoothgrad, "
        "stalder_explainer, visionmask",
    ),
    (
        [*EVALUATE, "--metrics", "deletion", "--metric-setting", "deletion.batch_size=x", "--out", "ev"],
        "--metric-setting deletion.batch_size=x: expected an integer (default 256)",
    ),
    (
        [*EVALUATE, "--metrics", "sparseness", "--metric-setting", "sparseness.k=1", "--out", "ev"],
        "--metric-setting sparseness.k: sparseness has no setting 'k'; known: none",
    ),
    (
        [*EVALUATE, "--metrics", "nosuch", "--out", "ev"],
        "unknown metric 'nosuch'; known metrics: accuracy, deletion, gaze_kl, insertion, lipschitz, localization, nss, "
        "sanity, shuffled_auc, sparseness, time_per_map",
    ),
    (
        ["attack", *RFG_AGENT, "--attacks", "pgd", "--setting", "pgd.steps=2.5", "--out", "at"],
        "--setting pgd.steps=2.5: expected an integer (default 10)",
    ),
    (
        ["watch", *RFG_AGENT, "--methods", "gradient", "--setting", "gradient.reduce=1", "--out", "w"],
        "--setting gradient.reduce=1: expected text (default 'max')",
    ),
    # outputs and counts
    (
        [*EXPLAIN, "gradient", "--out", "e.xyz"],
        "--out e.xyz: expected a picture file ending in one of .avif, .eps, .gif, .jpeg, .jpg, .pdf, .pgf, .png, .ps, "
        ".raw, .rgba, .svg, .svgz, .tif, .tiff, .webp",
    ),
    ([*EXPLAIN, "gradient", "--n", "500", "--out", "e.png"], "--n 500: DATA holds 10 states; ask for at most 10"),
    ([*EVALUATE, "--n-states", "5000", "--out", "ev"], "--n-states 5000: DATA holds 10 states; ask for at most 10"),
    # datasets: missing, not HDF5, cut short, corrupt in the middle, another format, another collect, another agent
    (
        ["explain", *RFG_AGENT, "--data", "in/missing.h5", "--methods", "gradient", "--out", "e.png"],
        f"no dataset file at in/missing.h5; {STATE_DATASET}",
    ),
    (
        ["explain", *RFG_AGENT, "--data", "in/text.h5", "--methods", "gradient", "--out", "e.png"],
        f"in/text.h5 is not an HDF5 file; {STATE_DATASET}",
    ),
    (
        ["explain", *RFG_AGENT, "--data", "in/cut.h5", "--methods", "gradient", "--out", "e.png"],
        re.compile(
            r"in/cut\.h5 cannot be read: truncated or corrupt \(.+\); "
            + re.escape(STATE_DATASET)
            + r"\. Collect it again\."
        ),
    ),
    (
        [
            "evaluate",
            *RFG_AGENT,
            "--data",
            "in/corrupt.h5",
            "--methods",
            "gradient",
            "--metrics",
            "sparseness",
            "--out",
            "ev",
        ],
        re.compile(
            r"in/corrupt\.h5 is truncated or corrupt \(.+\); " + re.escape(STATE_DATASET) + r"\. Collect it again\."
        ),
    ),
    (
        ["explain", *RFG_AGENT, "--data", "in/foreign.h5", "--methods", "gradient", "--out", "e.png"],
        f"in/foreign.h5 is an HDF5 file but not an xrl StateDataset (format attribute None); {STATE_DATASET}",
    ),
    (
        ["collect", *RFG_AGENT, "--episodes", "1", "--seed", "5", "--out", "DATA"],
        "DATA already holds a dataset with another collect; pass overwrite=True to replace it or choose another out",
    ),
    (
        ["explain", "--agent", "red-fetch-green-digr", "--data", "DATA", "--methods", "gradient", "--out", "e.png"],
        re.compile(
            r"DATA was collected by another agent \(.+\) than the one explained \(.+\); its stored actions are "
            r"that agent's choices\. Explain the explained agent's own actions \(targets='agent', CLI --targets "
            r"agent\) or the stored ones anyway \(targets='dataset', --targets dataset\)"
        ),
    ),
    # outputs in use by another run (its lock names it; a lock of another host is never taken over)
    (
        ["collect", *RFG_AGENT, "--episodes", "1", "--out", "in/locked.h5"],
        "in/locked.h5 is in use by pid 4242 on gpu-box since 2026-12-03T18:00:00; wait for it to finish or choose "
        "another out (--out)",
    ),
    (
        ["bench", "in/spec.toml", "--out", "in/results"],
        "in/results is in use by pid 4242 on gpu-box since 2026-12-03T18:00:00; wait for it to finish or use another "
        "results folder (--out)",
    ),
    (
        ["reproduce", "digr-table1", "--quick", "--out", "in/repro"],
        "in/repro is in use by pid 4242 on gpu-box since 2026-12-03T18:00:00; wait for it to finish or use another --out",
    ),
    # agent cards
    (
        ["explain", "--agent", "in/list/agent.pt", "--data", "DATA", "--methods", "gradient", "--out", "e.png"],
        "in/list/agent.json holds a JSON list; expected a JSON object (the card's fields)",
    ),
    (
        ["explain", "--agent", "in/envstr/agent.pt", "--data", "DATA", "--methods", "gradient", "--out", "e.png"],
        'in/envstr/agent.json has \'env\' = "red-fetch-green"; expected \'env\': {"name": "<registered env>", '
        '"settings": {...}}',
    ),
]


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    """A small dataset of the zoo Red-Fetch-Green agent: 2 episodes of at most 5 steps (10 states)."""
    folder = tmp_path_factory.mktemp("data")
    assert main(["collect", *RFG_AGENT, "--episodes", "2", "--max-steps", "5", "--out", str(folder / "d.h5")]) == 0
    return folder / "d.h5"


def _bad_files(folder, data) -> None:
    import shutil

    import h5py
    import numpy as np

    from xrl.agents.load import ZOO_DIR

    folder.mkdir()
    blob = data.read_bytes()
    (folder / "text.h5").write_text("not a dataset\n" * 50)
    (folder / "cut.h5").write_bytes(blob[: len(blob) * 2 // 5])
    corrupt = bytearray(blob)
    for at in (len(blob) // 2, len(blob) * 3 // 4):  # the file opens; a read in the middle fails
        corrupt[at : at + 3000] = b"\xff" * 3000
    (folder / "corrupt.h5").write_bytes(bytes(corrupt))
    with h5py.File(folder / "foreign.h5", "w") as f:
        f["x"] = np.zeros(3)
    holder = json.dumps({"pid": 4242, "host": "gpu-box", "started": "2026-12-03T18:00:00"})
    (folder / "locked.h5.lock").write_text(holder)
    (folder / "results").mkdir()
    (folder / "results" / ".lock").write_text(holder)
    (folder / "repro").mkdir()
    (folder / "repro" / ".lock").write_text(holder)
    (folder / "spec.toml").write_text(
        "methods = ['random']\nmetrics = ['sparseness']\n[[agents]]\nagent = 'red-fetch-green'\n"
    )
    card = json.loads((ZOO_DIR / "red-fetch-green" / "agent.json").read_text())
    for name, text in (("list", "[]"), ("envstr", json.dumps({**card, "env": "red-fetch-green"}))):
        (folder / name).mkdir()
        shutil.copy(ZOO_DIR / "red-fetch-green" / "agent.pt", folder / name / "agent.pt")
        (folder / name / "agent.json").write_text(text)


@pytest.mark.parametrize("argv, line", COMMANDS, ids=[" ".join(a[:1] + a[-4:-2]) for a, _ in COMMANDS])
def test_bad_inputs_of_the_other_commands_are_one_line_and_write_nothing(
    argv, line, dataset, tmp_path, capsys, monkeypatch
):
    monkeypatch.chdir(tmp_path)
    _bad_files(tmp_path / "in", dataset)
    argv = [str(dataset) if a == "DATA" else a for a in argv]
    before, data_before = files(tmp_path), dataset.read_bytes()
    capsys.readouterr()
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "Traceback" not in err[0], err
    prefix = f"xrl {argv[0]}: error: "
    assert err[0].startswith(prefix)
    if isinstance(line, str):
        assert err[0][len(prefix) :] == line.replace("DATA", str(dataset))
    else:
        assert re.fullmatch(line.pattern.replace("DATA", re.escape(str(dataset))), err[0][len(prefix) :]), err[0]
    assert files(tmp_path) == before and dataset.read_bytes() == data_before  # nothing written


def test_the_bad_input_tables_hold_at_least_60_rows():
    """Issue 26: a table of at least 60 bad inputs, each one line and nothing written."""
    assert len(REFUSED) + len(PARSER) + len(COMMANDS) >= 60


# ------------------------------------------------------------------ issue 46's list, as stated

#: (argv, the exact line after "xrl <command>: error: " or a regular expression, environment variables);
#: in/ holds the files made by _issue46_files, DATA the shared dataset
ISSUE46 = [
    # tracebacks before
    (
        [*EVALUATE, "--metrics", "sparseness", "--targets", "agent", "--agent", "pong", "--out", "ev"],
        "DATA holds states of shape (3, 64, 64) (env red-fetch-green) but the agent consumes (4, 84, 84); collect "
        "a dataset with this agent (xrl collect --agent ...)",
        {},
    ),
    # cryptic before
    (
        ["explain", *RFG_AGENT, "--data", "in/chunk.h5", "--methods", "gradient", "--out", "e.png"],
        re.compile(
            r"in/chunk\.h5 is truncated or corrupt \(.+\); " + re.escape(STATE_DATASET) + r"\. Collect it again\."
        ),
        {},
    ),
    (
        ["collect", "--agent", "in/cab/agent.pt", "--episodes", "1", "--out", "c.h5"],
        'in/cab/agent.pt: its card\'s env settings {"size": "abc"} are refused by red-fetch-green: size must be at '
        "least 5 (walls + room for 4 entities) and an integer, got 'abc'",
        {},
    ),
    (
        ["explain", *RFG_AGENT, "--data", "in/empty.h5", "--methods", "gradient", "--out", "e.png"],
        f"in/empty.h5 holds no states (0 rows); {STATE_DATASET}. Collect it again with at least one step.",
        {},
    ),
    (
        [*EVALUATE, "--metrics", "sparseness", "--out", "in/loop"],
        "--out in/loop is a symbolic link that leads nowhere (a loop or a missing target); expected a folder",
        {},
    ),
    (
        [*EVALUATE, "--metrics", "sparseness", "--out", "in/afile"],
        "--out in/afile is a file; expected a folder (it would hold the results)",
        {},
    ),
    (
        ["attack", *RFG_AGENT, "--attacks", "fgsm", "--episodes", "1", "--out", "in/afile"],
        "--out in/afile is a file; expected a folder (it would hold the results)",
        {},
    ),
    (
        ["bench", "in/spec.toml.d/spec.toml", "--check"],
        "in/spec.toml.d/spec.toml is a folder; expected a spec file (TOML) or a shipped spec: quick, full",
        {},
    ),
    (["report", "in/afile"], "in/afile is a file; expected a results folder (xrl bench --out)", {}),
    ([*EVALUATE, "--metrics", "sparseness", "--out", ""], "--out '': expected a file or folder name", {}),
    ([*EXPLAIN, "gradient", "--out", ""], "--out '': expected a file or folder name", {}),
    (["collect", *RFG_AGENT, "--episodes", "1", "--out", ""], "--out '': expected a file or folder name", {}),
    (
        ["collect", "--agent", "shapes-cnn", "--episodes", "1", "--out", "c.h5"],
        "--agent shapes-cnn is a classifier whose card records no env to play in; collect needs an agent trained "
        "on an env, or --env NAME (xrl envs)",
        {},
    ),
    (
        ["collect", *RFG_AGENT, "--episodes", "1", "--out", "c.h5"],
        "no agent file 'red-fetch-green', and no zoo to look the name up in: $XRL_ZOO '/nonexistent' is not a "
        "folder; set XRL_ZOO to a zoo folder or give an SB3 .zip or an xrl .pt path",
        {"XRL_ZOO": "/nonexistent"},
    ),
    (["zoo"], "zoo folder '/nonexistent' does not exist (set XRL_ZOO or pass a folder)", {"XRL_ZOO": "/nonexistent"}),
    (
        ["explain", *RFG_AGENT, "--data", "in/pickled.h5", "--methods", "gradient", "--out", "e.png"],
        re.compile(r"in/pickled\.h5 has attribute agent = .+, not JSON; expected an object"),
        {},
    ),
    # silently accepted before
    (
        ["explain", *RFG_AGENT, "--data", "in/nan.h5", "--methods", "gradient", "--out", "e.png"],
        "in/nan.h5 has 1 rows with NaN or infinite scores, the first row 3; expected finite float scores (the "
        "agent's outputs). Collect it again.",
        {},
    ),
    (
        ["explain", *RFG_AGENT, "--data", "in/garbage-env.h5", "--methods", "gradient", "--out", "e.png"],
        'in/garbage-env.h5 has attribute env = "red-fetch-green"; expected an object {"name": "<env name>", '
        '"settings": {...}}',
        {},
    ),
    (
        [*EXPLAIN, "greydanus", "--setting", "greydanus.radius=Infinity", "--out", "e.png"],
        "--setting greydanus.radius=Infinity: expected a finite number (default 5.0)",
        {},
    ),
    (
        ["explain", "--agent", "in/huge-actions/agent.pt", "--data", "DATA", "--methods", "gradient", "--out", "e.png"],
        "in/huge-actions/agent.pt has n_actions 1000000000; expected n_actions an integer >= 1 (at most 65536)",
        {},
    ),
    (
        ["explain", "--agent", "in/huge-obs/agent.pt", "--data", "DATA", "--methods", "gradient", "--out", "e.png"],
        "in/huge-obs/agent.pt has obs_shape [3, 100000, 100000]; expected obs_shape [C, H, W] of positive integers "
        "of at most 4096, 50,331,648 values in all",
        {},
    ),
    (
        [*EXPLAIN, "smoothgrad", "--setting", "smoothgrad.n_samples=100000000", "--out", "e.png"],
        "smoothgrad with n_samples=100000000 (noise for 100000000 copies of a (3, 64, 64) state) would need 4577.7 GB "
        "(limit 4.0 GB, XRL_MAX_ALLOC_GB); lower smoothgrad.n_samples (or batch_size)",
        {"XRL_MAX_ALLOC_GB": "4"},
    ),
    (
        [*EVALUATE, "--metrics", "lipschitz", "--metric-setting", "lipschitz.n_samples=100000000", "--out", "ev"],
        "lipschitz with n_samples=100000000 (1000000000 neighbours of (3, 64, 64) states) would need 111389.2 GB "
        "(limit 4.0 GB, XRL_MAX_ALLOC_GB); lower lipschitz.n_samples",
        {"XRL_MAX_ALLOC_GB": "4"},
    ),
    # the same bad files and outputs through the other commands that take them
    (
        [
            "explain",
            "--agent",
            "pong",
            "--data",
            "DATA",
            "--methods",
            "gradient",
            "--targets",
            "agent",
            "--out",
            "e.png",
        ],
        "DATA holds states of shape (3, 64, 64) (env red-fetch-green) but the agent consumes (4, 84, 84); collect "
        "a dataset with this agent (xrl collect --agent ...)",
        {},
    ),
    (
        [
            "evaluate",
            *RFG_AGENT,
            "--data",
            "in/nan.h5",
            "--methods",
            "gradient",
            "--metrics",
            "sparseness",
            "--out",
            "e",
        ],
        "in/nan.h5 has 1 rows with NaN or infinite scores, the first row 3; expected finite float scores (the "
        "agent's outputs). Collect it again.",
        {},
    ),
    (
        [
            "evaluate",
            *RFG_AGENT,
            "--data",
            "in/empty.h5",
            "--methods",
            "gradient",
            "--metrics",
            "sparseness",
            "--out",
            "e",
        ],
        f"in/empty.h5 holds no states (0 rows); {STATE_DATASET}. Collect it again with at least one step.",
        {},
    ),
    (
        ["evaluate", *RFG_AGENT, "--data", "in/garbage-env.h5", "--methods", "random", "--metrics", "sparseness"],
        'in/garbage-env.h5 has attribute env = "red-fetch-green"; expected an object {"name": "<env name>", '
        '"settings": {...}}',
        {},
    ),
    (
        ["evaluate", *RFG_AGENT, "--data", "in/pickled.h5", "--methods", "random", "--metrics", "sparseness"],
        re.compile(r"in/pickled\.h5 has attribute agent = .+, not JSON; expected an object"),
        {},
    ),
    (
        ["evaluate", *RFG_AGENT, "--data", "in/chunk.h5", "--methods", "gradient", "--metrics", "sparseness"],
        re.compile(
            r"in/chunk\.h5 is truncated or corrupt \(.+\); " + re.escape(STATE_DATASET) + r"\. Collect it again\."
        ),
        {},
    ),
    (
        ["collect", "--agent", "in/huge-actions/agent.pt", "--episodes", "1", "--out", "c.h5"],
        "in/huge-actions/agent.pt has n_actions 1000000000; expected n_actions an integer >= 1 (at most 65536)",
        {},
    ),
    (
        [*EXPLAIN, "greydanus", "--setting", "greydanus.radius=NaN", "--out", "e.png"],
        "--setting greydanus.radius=NaN: expected a finite number (default 5.0)",
        {},
    ),
    (
        [*EVALUATE, "--metrics", "lipschitz", "--metric-setting", "lipschitz.radius=-Infinity", "--out", "ev"],
        "--metric-setting lipschitz.radius=-Infinity: expected a finite number (default None)",
        {},
    ),
    (["attack", *RFG_AGENT, "--out", ""], "--out '': expected a file or folder name", {}),
    (["watch", *RFG_AGENT, "--out", ""], "--out '': expected a file or folder name", {}),
    (["bench", "quick", "--out", ""], "--out '': expected a file or folder name", {}),
    (["report", "in", "--out", ""], "--out '': expected a file or folder name", {}),
    (
        ["bench", "quick", "--out", "in/afile"],
        "--out in/afile is a file; expected a folder (it would hold the results)",
        {},
    ),
    (
        ["attack", *RFG_AGENT, "--attacks", "fgsm", "--eps", "0.1", "--episodes", "1", "--out", "in/loop"],
        "--out in/loop is a symbolic link that leads nowhere (a loop or a missing target); expected a folder",
        {},
    ),
    (
        ["explain", *RFG_AGENT, "--data", "in/spec.toml.d", "--methods", "gradient", "--out", "e.png"],
        f"in/spec.toml.d is a folder; {STATE_DATASET}",
        {},
    ),
    (
        ["zoo", "--dir", "in/zoo"],
        'in/zoo/red-fetch-green/agent.json: score is "great"; expected an object of numbers like {"mean_return": '
        '0.9, "std_return": 0.1, "episodes": 10}',
        {},
    ),
]


def _issue46_files(folder, data) -> None:
    import pickle
    import shutil

    import h5py
    import numpy as np

    from xrl.agents.load import ZOO_DIR

    (folder / "afile").write_text("a file, not a folder")
    (folder / "loop").symlink_to("loop")
    (folder / "spec.toml.d" / "spec.toml").mkdir(parents=True)
    blob = bytearray(data.read_bytes())
    with h5py.File(data, "r") as f:  # garbage over the middle of the states' data (the file opens)
        states = f["states"]
        offsets = [states.id.get_chunk_info(i).byte_offset for i in range(states.id.get_num_chunks())]
    at = offsets[len(offsets) // 2]
    blob[at : at + 64] = b"\xff" * 64
    (folder / "chunk.h5").write_bytes(bytes(blob))
    for name, change in (
        ("nan.h5", lambda f: f["scores"].__setitem__(3, np.nan)),
        ("garbage-env.h5", lambda f: f.attrs.__setitem__("env", json.dumps("red-fetch-green"))),
        ("pickled.h5", lambda f: f.attrs.__setitem__("agent", np.void(pickle.dumps({"source": "x"})))),
    ):
        shutil.copy(data, folder / name)
        with h5py.File(folder / name, "r+") as f:
            change(f)
    with h5py.File(data, "r") as src, h5py.File(folder / "empty.h5", "w") as dst:
        for key, value in src.attrs.items():
            dst.attrs[key] = value
        dst.attrs["n_episodes"] = 0
        for key in src:
            if isinstance(src[key], h5py.Dataset):
                dst.create_dataset(key, shape=(0, *src[key].shape[1:]), dtype=src[key].dtype)
    card = json.loads((ZOO_DIR / "red-fetch-green" / "agent.json").read_text())
    (folder / "cab").mkdir()
    shutil.copy(ZOO_DIR / "red-fetch-green" / "agent.pt", folder / "cab" / "agent.pt")
    (folder / "cab" / "agent.json").write_text(
        json.dumps({**card, "env": {**card["env"], "settings": {"size": "abc"}}})
    )
    import torch

    payload = torch.load(ZOO_DIR / "red-fetch-green" / "agent.pt", weights_only=True)
    for name, key, value in (("huge-actions", "n_actions", 10**9), ("huge-obs", "obs_shape", [3, 100_000, 100_000])):
        (folder / name).mkdir()
        torch.save({**payload, key: value}, folder / name / "agent.pt")
        shutil.copy(ZOO_DIR / "red-fetch-green" / "agent.json", folder / name / "agent.json")
    (folder / "zoo" / "red-fetch-green").mkdir(parents=True)
    shutil.copy(ZOO_DIR / "red-fetch-green" / "agent.pt", folder / "zoo" / "red-fetch-green" / "agent.pt")
    (folder / "zoo" / "red-fetch-green" / "agent.json").write_text(json.dumps({**card, "score": "great"}))


@pytest.mark.parametrize("argv, line, env", ISSUE46, ids=[" ".join(a[:1] + a[-4:-2]) for a, _, _ in ISSUE46])
def test_issue_46_bad_inputs_are_one_line_and_write_nothing(argv, line, env, dataset, tmp_path, capsys, monkeypatch):
    import xrl.agents.load
    import xrl.zoo

    monkeypatch.chdir(tmp_path)
    (tmp_path / "in").mkdir()
    _issue46_files(tmp_path / "in", dataset)
    for key, value in env.items():  # the zoo folder is read once, at import
        monkeypatch.setenv(key, value)
        if key == "XRL_ZOO":
            monkeypatch.setattr(xrl.agents.load, "ZOO_DIR", Path(value))
            monkeypatch.setattr(xrl.zoo, "ZOO_DIR", Path(value))
    argv = [str(dataset) if a == "DATA" else a for a in argv]
    before, data_before = files(tmp_path), dataset.read_bytes()
    capsys.readouterr()
    code = None
    try:
        code = main(argv)
    except SystemExit as exit_:  # argparse
        code = exit_.code
    assert code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "Traceback" not in err[0], err
    prefix = f"xrl {argv[0]}: error: "
    assert err[0].startswith(prefix)
    if isinstance(line, str):
        assert err[0][len(prefix) :] == line.replace("DATA", str(dataset))
    else:
        assert re.fullmatch(line.pattern.replace("DATA", re.escape(str(dataset))), err[0][len(prefix) :]), err[0]
    assert files(tmp_path) == before and dataset.read_bytes() == data_before  # nothing written


@pytest.mark.slow
def test_a_closed_pipe_ends_quietly():
    """``xrl zoo | head -1``: the reader has gone; no "Broken pipe" error, SIGPIPE's status 141."""
    import os
    import subprocess
    import sys

    read, write = os.pipe()
    os.close(read)  # the reader is gone before the first line
    try:
        writer = subprocess.run(
            [sys.executable, "-c", "import sys; from xrl.cli import main; sys.exit(main(['zoo']))"],
            stdout=write,
            stderr=subprocess.PIPE,
            timeout=120,
        )
    finally:
        os.close(write)
    assert writer.stderr.decode().strip() == "" and writer.returncode == 141


def _deep(n: int):
    value: object = 1
    for _ in range(n):
        value = [value]
    return value


def _state_json() -> dict:
    """A well-formed state.json of a PPO checkpoint of one env (as xrl.train.agent.save_checkpoint writes)."""
    import numpy as np

    pcg = np.random.default_rng(0).bit_generator.state
    return {
        "format": "xrl.sb3_checkpoint",
        "version": 1,
        "algo": "ppo",
        "num_timesteps": 128,
        "_n_updates": 4,
        "_episode_num": 0,
        "action_space": pcg,
        "envs": [{"seed": None, "rngs": [[1, "_np_random", dict(pcg)]]}],
        "ep_info_buffer": [{"l": 6, "r": 0.9, "t": 1.0}],
        "ep_success_buffer": [],
        "numpy": {"pos": 337, "has_gauss": 0, "cached_gaussian": 0.0},
        "python": {"version": 3, "gauss": None},
    }


#: a crafted run state.json (issue 46): (how it is damaged, the key and what was expected in the line)
STATE_JSON = [
    (lambda s: s["action_space"].update(bit_generator="Evil"), 'action_space.bit_generator is "Evil"; expected one of'),
    (
        lambda s: s["envs"][0]["rngs"][0][2].update(bit_generator="os.system"),
        'envs[0].rngs[0][2].bit_generator is "os.system"; expected one of',
    ),
    (lambda s: s.update(envs=_deep(99)), "envs[0] is [[[[[[[[[["),
    (lambda s: s.update(num_timesteps="128"), 'num_timesteps is "128"; expected an integer of at least 0'),
    (lambda s: s.update(_n_updates=_deep(99)), "_n_updates is [[[[[[[[[["),
    (lambda s: s["envs"][0].update(seed="abc"), 'envs[0].seed is "abc"; expected an integer of at least 0'),
    (lambda s: s["numpy"].update(pos=1.5), "numpy.pos is 1.5; expected an integer of at least 0"),
]


@pytest.mark.parametrize("damage, words", STATE_JSON, ids=[w.split(" is ")[0] for _, w in STATE_JSON])
def test_a_crafted_run_state_json_is_one_line_naming_the_key(damage, words, tmp_path, capsys):
    from xrl.train.agent import AgentArgs, check_state
    from xrl.train.run import Run

    state = _state_json()
    check_state(state, tmp_path / "state.json")  # the well-formed one passes
    damage(state)
    out = tmp_path / "run"
    with Run(out, AgentArgs(env="red-fetch-green", out=str(out)).resolved().recorded()) as run:
        run.save(128, lambda f: (f / "state.json").write_text(json.dumps(state)))
    before = files(tmp_path)
    assert main([*AGENT, "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("xrl train: error: ") and "Traceback" not in err[0], err
    assert "state.json: " + words in err[0] and err[0].endswith("The checkpoint is damaged"), err[0]
    assert files(tmp_path) == before


#: bench specs (issue 46): (the spec's lines after its methods and metrics, the problem line); the
#: spec's problems are listed one a line under "the spec has N problem(s):"
SPECS = [
    (
        "n_states = 1000000000000\n[[agents]]\nagent = 'red-fetch-green'\ndata = 'DATA'\n",
        "spec.toml:3: n_states: n_states must be an integer >= 1 (at most 1,000,000), got 1000000000000",
    ),
    (
        "n_states = 500\n[[agents]]\nagent = 'red-fetch-green'\ndata = 'DATA'\n",
        "spec.toml:3: n_states: n_states = 500 but agent 'red-fetch-green' has fewer states: its dataset DATA holds 10",
    ),
    (
        "n_states = 500\n[[agents]]\nagent = 'red-fetch-green'\nepisodes = 2\nmax_steps = 10\n",
        "spec.toml:3: n_states: n_states = 500 but agent 'red-fetch-green' has fewer states: episodes x max_steps "
        "collects at most 20",
    ),
    (
        "[[agents]]\nagent = 'red-fetch-green'\ndata = 'in/empty.h5'\n",
        f"spec.toml:5: agents[0].data: in/empty.h5 holds no states (0 rows); {STATE_DATASET}. Collect it again with at "
        "least one step.",
    ),
    (
        "[[agents]]\nagent = 'in/pickle.zip'\n",
        "spec.toml:4: agents[0].agent: cannot load agent 'in/pickle.zip': in/pickle.zip holds a policy.pth PICKLE",
    ),
    (
        "[[agents]]\nagent = 'in/huge-obs/agent.pt'\n",
        "spec.toml:4: agents[0].agent: cannot load agent 'in/huge-obs/agent.pt': in/huge-obs/agent.pt has obs_shape "
        "[3, 100000, 100000]; expected obs_shape [C, H, W] of positive integers of at most 4096, 50,331,648 values in all",
    ),
]


@pytest.fixture(scope="module")
def pickle_zip(tmp_path_factory):
    """An SB3 zip whose policy.pth is a bare pickle, not torch's weights format."""
    import zipfile

    from stable_baselines3 import PPO

    from xrl.agents.load import ARCHS
    from xrl.envs import make_env

    folder = tmp_path_factory.mktemp("zip")
    kwargs = ARCHS.get("grid_cnn").policy_kwargs()
    PPO("CnnPolicy", make_env("red-fetch-green"), n_steps=8, batch_size=8, policy_kwargs=kwargs).save(folder / "a.zip")
    with zipfile.ZipFile(folder / "a.zip") as z:
        members = {name: z.read(name) for name in z.namelist()}
    with zipfile.ZipFile(folder / "pickle.zip", "w") as z:
        for name, blob in members.items():
            z.writestr(name, pickle.dumps({"weights": [1, 2, 3]}) if name == "policy.pth" else blob)
    return folder / "pickle.zip"


@pytest.mark.parametrize("rest, problem", SPECS, ids=[r.split("\n")[0] for r, _ in SPECS])
@pytest.mark.parametrize("check", [True, False], ids=["check", "run"])
def test_bad_specs_are_refused_by_check_and_run(
    rest, problem, check, dataset, pickle_zip, tmp_path, capsys, monkeypatch
):
    import shutil

    monkeypatch.chdir(tmp_path)
    (tmp_path / "in").mkdir()
    _issue46_files(tmp_path / "in", dataset)
    shutil.copy(pickle_zip, tmp_path / "in" / "pickle.zip")
    (tmp_path / "spec.toml").write_text(
        "methods = ['random']\nmetrics = ['sparseness']\n" + rest.replace("DATA", str(dataset))
    )
    before = files(tmp_path)
    capsys.readouterr()
    assert main(["bench", "spec.toml", *(["--check"] if check else ["--out", "res"])]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    want = problem.replace("DATA", str(dataset))
    if want.endswith(" PICKLE"):  # --check and the run read its head (no weights): the same file and entry named
        assert err[0] == "xrl bench: error: the spec has 1 problem(s):" and len(err) == 2, err
        assert err[1].startswith("  " + want.removesuffix(" PICKLE")), err[1]
        assert "that is a pickle, not torch's weights format" in err[1]
        return
    assert err == ["xrl bench: error: the spec has 1 problem(s):", "  " + want]
    assert files(tmp_path) == before


def _negated_states_rows():
    from xrl.explainers import list_explainers

    return [("red-fetch-green-sparse-fls-0" if m == "attention" else "red-fetch-green", m) for m in list_explainers()]


NEGATED = _negated_states_rows()


@pytest.mark.parametrize("agent, method", NEGATED, ids=[m for _, m in NEGATED])
def test_negated_states_are_refused_by_every_method(agent, method, dataset):
    """States outside the model's declared range (-s for a [0, 1] model) are refused naming the range
    found and the range expected, by every method (issue 46)."""
    import xrl
    from xrl.data.dataset import StateDataset
    from xrl.explainers import get_explainer

    model = xrl.load_agent(agent)
    if tuple(model.input_shape) != (3, 64, 64):
        pytest.skip("another observation shape")
    with StateDataset.open(dataset) as ds:
        states = ds.states([0, 1])
    explainer = get_explainer(method, model)
    explainer.explain(states[:1])  # the states themselves are explained
    with pytest.raises(ValueError) as err:
        explainer.explain(-states)
    assert re.fullmatch(
        r"states range over \[-1, 0\] and state 0 has mean -0\.\d+, outside the range \[0, 1\] the model "
        r"consumes \(negated or shifted states\?\)",
        str(err.value),
    ), str(err.value)


#: library calls (issue 46): (what is called, the exception and the exact message or a pattern); the
#: time rows run under XRL_MAX_SECONDS=1e-6 (estimated from the first chunk, measured)
LIBRARY = [
    (
        "lime time",
        ValueError,
        r"Lime on 2 state\(s\) would take about \d+ s \(400 passes at [0-9.e+-]+ ms each, measured\); limit 1e-06 s "
        r"\(XRL_MAX_SECONDS\); lower the number of perturbations",
    ),
    (
        "integrated_gradients time",
        ValueError,
        r"integrated_gradients with n_steps=50 on 2 states would take about \d+ s \(100 passes at [0-9.e+-]+ ms each, "
        r"measured\); limit 1e-06 s \(XRL_MAX_SECONDS\); lower integrated_gradients\.n_steps",
    ),
    (
        "smoothgrad time",
        ValueError,
        r"smoothgrad with n_samples=50 on 2 states would take about \d+ s \(100 passes at [0-9.e+-]+ ms each, "
        r"measured\); limit 1e-06 s \(XRL_MAX_SECONDS\); lower smoothgrad\.n_samples",
    ),
    ("as_model 0x0", ValueError, "input_shape must be (C, H, W) of positive integers, got (3, 0, 0)"),
    (
        "lime 1e6 samples",
        MemoryError,
        r"lime with n_samples=1000000 over \d+ superpixels of \(64, 64\) states would need [0-9.]+ GB \(limit 1\.0 "
        r"GB, XRL_MAX_ALLOC_GB\); lower lime\.n_samples, or use fewer superpixels \(a larger kernel_size / cell, "
        r"fewer n_segments\)",
    ),
    (
        "integrated_gradients batch 10**6",
        MemoryError,
        r"integrated_gradients with batch_size=1000000 on \(3, 64, 64\) states would need 183\.1 GB \(limit 1\.0 "
        r"GB, XRL_MAX_ALLOC_GB\); lower integrated_gradients\.batch_size",
    ),
    (
        "smoothgrad 1e8",
        MemoryError,
        r"smoothgrad with n_samples=100000000 \(noise for 100000000 copies of a \(3, 64, 64\) state\) would need "
        r"4577\.7 GB \(limit 1\.0 GB, XRL_MAX_ALLOC_GB\); lower smoothgrad\.n_samples \(or batch_size\)",
    ),
]


@pytest.mark.parametrize("what, error, message", LIBRARY, ids=[w for w, _, _ in LIBRARY])
def test_bad_library_calls_say_what_was_expected(what, error, message, dataset, monkeypatch):
    import torch

    import xrl
    from xrl.data.dataset import StateDataset
    from xrl.explainers import get_explainer

    monkeypatch.setenv("XRL_MAX_ALLOC_GB", "1")
    if what.endswith(" time"):
        monkeypatch.setenv("XRL_MAX_SECONDS", "0.000001")
    with StateDataset.open(dataset) as ds:
        states = ds.states([0])
        pair = ds.states([0, 1])
    model = xrl.load_agent("red-fetch-green")
    calls = {
        "as_model 0x0": lambda: xrl.as_model(torch.nn.Flatten(), input_shape=(3, 0, 0)),
        "lime 1e6 samples": lambda: get_explainer("lime", model, n_samples=10**6).explain(states),
        "integrated_gradients batch 10**6": lambda: get_explainer(
            "integrated_gradients", model, batch_size=10**6
        ).explain(states),
        "smoothgrad 1e8": lambda: get_explainer("smoothgrad", model, n_samples=10**8).explain(states),
        "lime time": lambda: get_explainer("lime", model, n_samples=200, batch_size=16).explain(pair),
        "integrated_gradients time": lambda: get_explainer("integrated_gradients", model, batch_size=1).explain(pair),
        "smoothgrad time": lambda: get_explainer("smoothgrad", model, n_samples=50, batch_size=8).explain(pair),
    }
    with pytest.raises(error) as err:
        calls[what]()
    pattern = message if error is MemoryError or what.endswith(" time") else re.escape(message)
    assert re.fullmatch(pattern, str(err.value)), str(err.value)


def test_the_bad_input_tables_hold_at_least_150_rows():
    """Issue 46: at least 150 bad inputs in the tables, each one clear line (or error) naming what was expected."""
    rows = len(REFUSED) + len(PARSER) + len(COMMANDS) + len(ISSUE46) + len(STATE_JSON) + len(SPECS) * 2
    assert rows + len(NEGATED) + len(LIBRARY) >= 150, rows + len(NEGATED) + len(LIBRARY)
