"""The ``xrl`` command, in process (``xrl.cli.main``) plus one run of the installed script."""

from __future__ import annotations

import contextlib
import csv
import io
import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import xrl
import xrl.pipeline.steps
from xrl import cli
from xrl.data.dataset import StateDataset
from xrl.envs import ENVS
from xrl.explainers import EXPLAINERS, get_explainer
from xrl.metrics import METRICS

AGENT = "red-fetch-green"  # the shipped zoo agent


def run(capsys, *argv: str) -> tuple[int, str, str]:
    """``xrl argv`` in process: (exit status, stdout, stderr); SystemExit counts as an exit."""
    capsys.readouterr()
    try:
        code = cli.main([str(a) for a in argv])
    except SystemExit as exc:
        code = exc.code
    out = capsys.readouterr()
    return code, out.out, out.err


# -- listings ------------------------------------------------------------------------------------


def listing(capsys, command: str, names: list[str]) -> dict[str, str]:
    """Each output line as name -> the rest; one line per registered name, in order."""
    code, out, err = run(capsys, command)
    assert code == 0, err
    lines = [line for line in out.splitlines() if line.strip()]
    assert [line.split()[0] for line in lines] == names
    return {name: line[len(name) :].strip() for name, line in zip(names, lines)}


def check_description(obj, text: str) -> None:
    assert text, "empty description"
    assert not text.startswith(("partial(", "functools.partial")), text
    generic = ((type(obj).__doc__ or "").strip().splitlines() or [""])[0]
    assert text != generic.strip(), f"the generic docstring of {type(obj).__name__}: {text}"


def test_envs_lists_every_env_with_a_description(capsys):
    names = xrl.list_envs()
    assert "red-fetch-green" in names and "pong" in names
    rows = listing(capsys, "envs", names)
    for name, description in rows.items():
        check_description(ENVS.get(name), description)


def test_zoo_lists_every_card_with_training_state_score_and_command(capsys, tmp_path):
    def card(name, file, **fields):
        (tmp_path / name).mkdir()
        (tmp_path / name / file).write_text(json.dumps(fields))

    card(
        "done",
        "agent.json",
        algo="ppo",
        arch="nature_cnn",
        env={"name": "pong", "settings": {"version": "v4"}},
        timesteps=1_000_448,
        timesteps_planned=1_000_000,
        command="xrl train agent --env pong",
        score={"episodes": 10, "mean_return": -3.25, "std_return": 2.5, "success_rate": 0.2},
        score_sampled={"episodes": 10, "mean_return": 1.5, "std_return": 4.0, "success_rate": 0.6},
    )
    card(
        "half",
        "agent.json",
        algo="ppo",
        arch="nature_cnn",
        env={"name": "breakout", "settings": {}},
        timesteps=903_168,
        timesteps_planned=5_000_000,
        command="xrl train agent --env breakout",
        score={"episodes": 10, "mean_return": 27.2, "std_return": 3.4, "success_rate": 1.0},
    )
    card(
        "shapes",
        "classifier.json",
        settings={"data": "shapes", "arch": "shapes_cnn", "epochs": 12},
        command="xrl train classifier",
        score={"epoch": 8, "val_accuracy": 0.992},
    )
    (tmp_path / "notes").mkdir()  # a folder without a card is not a zoo model
    code, out, err = run(capsys, "zoo", "--dir", tmp_path, "--commands")
    assert code == 0, err
    lines = out.splitlines()
    assert [line.split()[0] for line in lines[::2]] == ["done", "half", "shapes"]
    assert lines[0].split()[1:5] == ["ppo", "pong", "version=v4", "nature_cnn"]
    assert "1M " in lines[0] and "resumable" not in lines[0]
    assert (
        "return -3.25 ± 2.5 over 10 episodes, 20% positive (sampled policy: return 1.5 ± 4 over 10 episodes, "
        "60% positive)" in lines[0]
    )
    assert "sampled" not in lines[2]  # older cards score the greedy policy only
    assert "903k of 5M, resumable" in lines[2] and "return 27.2" in lines[2]
    assert "validation accuracy 0.992" in lines[4] and "resumable" not in lines[4]  # epoch 8 is the best, not the last
    assert [line.strip() for line in lines[1::2]] == [
        "xrl train agent --env pong",
        "xrl train agent --env breakout",
        "xrl train classifier",
    ]
    code, out, _ = run(capsys, "zoo", "--dir", tmp_path, "--json")
    rows = json.loads(out)
    assert [(r["name"], r["trained"], r["planned"], r["finished"]) for r in rows] == [
        ("done", 1_000_448, 1_000_000, True),
        ("half", 903_168, 5_000_000, False),
        ("shapes", 12, 12, True),
    ]
    code, out, err = run(capsys, "zoo", "--dir", tmp_path / "nosuch")
    assert code != 0 and "does not exist" in err
    # the shipped zoo: one row per agent checkpoint
    code, out, err = run(capsys, "zoo")
    from xrl.agents.load import ZOO_DIR

    shipped = {p.parent.name for p in ZOO_DIR.glob("*/agent.pt")}
    assert shipped and shipped <= {line.split()[0] for line in out.splitlines() if line.strip()}


def test_zoo_lists_the_explainer_networks_with_the_model_they_explain(capsys, tmp_path):
    """Mask networks and RExL agents are listed after the models, each with the zoo model it was
    made for (matched by the weights fingerprint the network records, whatever its folder is
    called), its card's score and the command that made it."""
    import shutil

    import torch

    zoo = xrl.agents.load.ZOO_DIR
    for source, target, names in [
        ("red-fetch-green", "the-agent", ("agent.pt", "agent.json")),
        ("red-fetch-green-visionmask", "vm", ("visionmask.pt", "visionmask.json")),
        ("red-fetch-green-rexl-ds", "rexl", ("rexl.pt", "rexl.json")),
    ]:
        (tmp_path / target).mkdir()
        for name in names:
            shutil.copy(zoo / source / name, tmp_path / target / name)
    vm_card = json.loads((tmp_path / "vm" / "visionmask.json").read_text())
    rexl_card = json.loads((tmp_path / "rexl" / "rexl.json").read_text())
    # the fingerprints the networks record are those of the agent's loaded weights
    fingerprint = xrl.load_agent(tmp_path / "the-agent").fingerprint()
    assert torch.load(tmp_path / "vm" / "visionmask.pt", weights_only=True)["agent"]["fingerprint"] == fingerprint
    assert torch.load(tmp_path / "rexl" / "rexl.pt", weights_only=True)["model_fingerprint"] == fingerprint

    code, out, err = run(capsys, "zoo", "--dir", tmp_path, "--commands")
    assert code == 0, err
    lines = out.splitlines()
    assert lines[0].split()[0] == "the-agent" and lines[2] == ""
    assert lines[3].startswith("explainer networks")
    rexl_line, vm_line = lines[4], lines[6]
    assert rexl_line.split()[:4] == ["rexl", "rexl-ds", "for", "the-agent"]
    returns = rexl_card["score"]["mean_return_last_20_updates"]
    assert f"training return {returns:.3f}, minus the deletion AUC over cells" in rexl_line
    assert lines[5].strip() == rexl_card["command"] and rexl_card["command"].startswith("xrl train rexl")
    assert vm_line.split()[:4] == ["vm", "visionmask", "for", "the-agent"]
    accuracy = vm_card["scores"]["val"]["accuracy"]
    assert f"validation accuracy {accuracy:.3f} (best epoch {vm_card['scores']['best_epoch']})" in vm_line
    assert f"{vm_card['epochs_done']} epochs" in vm_line
    assert lines[7].strip() == vm_card["command"] and vm_card["command"].startswith("xrl train visionmask")

    code, out, _ = run(capsys, "zoo", "--dir", tmp_path, "--json")
    rows = {(r["name"], r["kind"]): r for r in json.loads(out)}
    assert set(rows) == {("the-agent", "ppo"), ("vm", "visionmask"), ("rexl", "rexl-ds")}
    assert rows["vm", "visionmask"]["explains"] == rows["rexl", "rexl-ds"]["explains"] == "the-agent"
    assert rows["rexl", "rexl-ds"]["trained"] == rexl_card["score"]["steps"]
    # without the agent in the zoo, a network names the model its card names
    shutil.rmtree(tmp_path / "the-agent")
    code, out, _ = run(capsys, "zoo", "--dir", tmp_path, "--json")
    rows = {(r["name"], r["kind"]): r for r in json.loads(out)}
    assert rows["rexl", "rexl-ds"]["explains"] == rexl_card["settings"]["model"] == "red-fetch-green"


def test_methods_lists_every_explainer_with_a_description(capsys):
    names = xrl.list_explainers()
    assert {"gradient", "greydanus", "random"} <= set(names)
    rows = listing(capsys, "methods", names)
    for name, rest in rows.items():
        cls = EXPLAINERS.get(name)
        assert rest.startswith("per-action") == bool(cls.per_action), rest
        description = rest.removeprefix("per-action").strip()
        check_description(cls, description)


def test_metrics_lists_every_metric_with_direction_and_description(capsys):
    names = xrl.list_metrics()
    assert {"deletion", "localization", "sparseness"} <= set(names)
    rows = listing(capsys, "metrics", names)
    for name, rest in rows.items():
        cls = METRICS.get(name)
        assert rest.startswith(cls.category + " "), rest
        rest = rest[len(cls.category) :].strip()
        hib = cls.higher_is_better
        if isinstance(hib, bool):
            assert rest.split()[0] == ("higher" if hib else "lower"), rest
        else:
            for out, higher in hib.items():
                assert f"{out}: {'higher' if higher else 'lower'}" in rest, rest
        match = re.fullmatch(r"(?:(?:\w+: )?(?:higher|lower),?\s+)+(.*)", rest)
        assert match, rest
        check_description(cls, match.group(1).strip())


# -- collect -> explain -> evaluate ----------------------------------------------------------------


@pytest.fixture(scope="module")
def collected(tmp_path_factory):
    out = tmp_path_factory.mktemp("cli") / "states.h5"
    stdout = io.StringIO()
    with contextlib.redirect_stdout(stdout):
        code = cli.main(["collect", "--agent", AGENT, "--episodes", "1", "--max-steps", "5", "--out", str(out)])
    assert code == 0
    return out, stdout.getvalue()


def test_collect(collected):
    path, stdout = collected
    assert f"wrote {path}" in stdout
    with StateDataset.open(path) as ds:
        assert len(ds) == 5 and ds.n_episodes == 1
        assert ds.env["name"] == "red-fetch-green"
        assert ds.has_labels
        assert ds.collect_settings["max_steps"] == 5


def test_explain_writes_a_png(capsys, collected, tmp_path, monkeypatch):
    import xrl.viz.overlay

    data, _ = collected
    png = tmp_path / "grid.png"
    grids = []
    real_grid = xrl.viz.overlay.explanation_grid

    def spy(frames, maps, path, **kwargs):
        grids.append((len(frames), {m: tuple(v.shape) for m, v in maps.items()}))
        return real_grid(frames, maps, path, **kwargs)

    monkeypatch.setattr(xrl.viz.overlay, "explanation_grid", spy)
    code, out, err = run(
        capsys, "explain", "--agent", AGENT, "--data", data, "--methods", "gradient,random", "--n", "2", "--out", png
    )
    assert code == 0, err
    assert f"wrote {png}" in out
    assert grids == [(2, {"gradient": (2, 64, 64), "random": (2, 64, 64)})]
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert png.stat().st_size > 10_000
    with Image.open(png) as image:
        image.verify()
    with Image.open(png) as image:
        assert image.width >= 200 and image.height >= 200
        pixels = np.asarray(image.convert("RGB"))
    assert len(np.unique(pixels.reshape(-1, 3), axis=0)) > 50  # frames and overlays, not blank


def test_explain_by_default_runs_every_method_that_can_explain_the_agent(capsys, collected, tmp_path, monkeypatch):
    import xrl.viz.overlay

    data, _ = collected
    shown = []
    monkeypatch.setattr(xrl.viz.overlay, "explanation_grid", lambda frames, maps, path, **kw: shown.extend(maps))
    code, out, err = run(capsys, "explain", "--agent", AGENT, "--data", data, "--n", "1", "--out", tmp_path / "g")
    assert code == 0, err
    assert f"wrote {tmp_path / 'g.png'}" in out  # a bare name gets the PNG suffix
    assert "left out attention:" in err  # the zoo agent has no attention layer
    # the zoo holds mask networks and RExL agents made for this agent (found by its weights fingerprint)
    assert "left out visionmask:" not in err and "left out rexl:" not in err
    assert set(shown) == set(xrl.list_explainers()) - {"attention"}


def test_evaluate_writes_consistent_csv_and_json(capsys, collected, tmp_path, monkeypatch):
    data, _ = collected
    made = []

    def spy(name, model, **settings):
        made.append((name, settings))
        return get_explainer(name, model, **settings)

    monkeypatch.setattr(xrl.pipeline.steps, "get_explainer", spy)  # evaluate builds explainers there
    results = tmp_path / "results"
    code, out, err = run(
        capsys,
        "evaluate",
        "--agent",
        AGENT,
        "--data",
        data,
        "--methods",
        "gradient,greydanus,random",
        "--setting",
        "greydanus.radius=4",
        "--setting",
        "greydanus.stride=8",
        "--metrics",
        "localization,sparseness",
        "--n-states",
        "4",
        "--out",
        results,
    )
    assert code == 0, err
    assert ("greydanus", {"radius": 4, "stride": 8}) in made
    assert all(s == {} for name, s in made if name != "greydanus")
    for method in ("gradient", "greydanus", "random"):
        assert re.search(rf"^{method}\s", out, re.M), out
    assert "localization.auc" in out and "sparseness" in out

    doc = json.loads((results / "metrics.json").read_text())
    columns = ["localization.auc", "localization.important", "localization.unimportant", "sparseness"]
    assert doc["methods"] == ["gradient", "greydanus", "random"]
    assert doc["columns"] == columns
    assert len(doc["rows"]) == 4
    for m in doc["methods"]:
        for col in columns:
            values = doc["values"][m][col]
            assert len(values) == 4
            want = np.nanmean(np.asarray(values, dtype=float))
            assert doc["means"][m][col] == pytest.approx(want, rel=1e-12), (m, col)

    with open(results / "metrics.csv", newline="") as f:
        table = list(csv.reader(f))
    assert table[0] == ["method", *columns]
    assert [row[0] for row in table[1:]] == doc["methods"]
    for row in table[1:]:
        assert [float(x) for x in row[1:]] == [doc["means"][row[0]][c] for c in columns]


def test_method_settings_parsing():
    assert cli._method_settings("gradient, greydanus", ["greydanus.radius=4", "greydanus.score=kl"]) == {
        "gradient": {},
        "greydanus": {"radius": 4, "score": "kl"},
    }


# -- bad input: exit status 2 and a message naming the choices ------------------------------------


def assert_error(code, out, err, *words):
    assert code == 2, (code, err)
    assert "Traceback" not in err
    for word in words:
        assert word in err, (word, err)


@pytest.mark.parametrize("command", ["explain", "evaluate"])
def test_unknown_method(capsys, collected, command):
    data, _ = collected
    code, out, err = run(capsys, command, "--agent", AGENT, "--data", data, "--methods", "nosuch")
    assert_error(code, out, err, "nosuch", *xrl.list_explainers())


def test_unknown_metric(capsys, collected, tmp_path):
    data, _ = collected
    code, out, err = run(
        capsys,
        "evaluate",
        "--agent",
        AGENT,
        "--data",
        data,
        "--methods",
        "random",
        "--metrics",
        "nosuch",
        "--n-states",
        "2",
        "--out",
        tmp_path,
    )
    assert_error(code, out, err, "nosuch", *xrl.list_metrics())


def test_unknown_env_in_train_agent(capsys, tmp_path):
    code, out, err = run(capsys, "train", "agent", "--env", "nosuch", "--timesteps", "10", "--out", tmp_path / "run")
    assert_error(code, out, err, "nosuch", *xrl.list_envs())


def test_unknown_env_in_train_agent_leaves_no_run_folder(capsys, tmp_path):
    # a typo must not poison the run folder: re-running with the right --env must not be refused
    run(capsys, "train", "agent", "--env", "nosuch", "--timesteps", "10", "--out", tmp_path / "run")
    assert not (tmp_path / "run" / "args.json").exists()


def test_unknown_agent(capsys, tmp_path):
    code, out, err = run(capsys, "collect", "--agent", "nosuch", "--episodes", "1", "--out", tmp_path / "d.h5")
    assert_error(code, out, err, "nosuch", AGENT)


@pytest.mark.parametrize("command", ["explain", "evaluate"])
def test_missing_data_file(capsys, tmp_path, command):
    missing = tmp_path / "missing.h5"
    code, out, err = run(capsys, command, "--agent", AGENT, "--data", missing, "--methods", "random")
    assert_error(code, out, err, str(missing))


@pytest.mark.parametrize(
    "argv, words",
    [
        (["evaluate", "--setting", "foo"], ["--setting takes KEY=VALUE, got 'foo'"]),
        (["explain", "--setting", "foo"], ["--setting takes KEY=VALUE, got 'foo'"]),
        (["evaluate", "--setting", "greydanus.radius=4"], ["greydanus.radius", "random"]),
        (["evaluate", "--metric-setting", "bar"], ["--metric-setting takes KEY=VALUE, got 'bar'"]),
    ],
)
def test_malformed_setting(capsys, collected, tmp_path, argv, words):
    data, _ = collected
    code, out, err = run(
        capsys, *argv, "--agent", AGENT, "--data", data, "--methods", "random", "--out", tmp_path / "x"
    )
    assert_error(code, out, err, *words)


def test_malformed_env_setting_in_collect(capsys, tmp_path):
    code, out, err = run(
        capsys, "collect", "--agent", AGENT, "--episodes", "1", "--set", "foo", "--out", tmp_path / "d.h5"
    )
    assert_error(code, out, err, "--set takes KEY=VALUE, got 'foo'")


def test_unknown_command(capsys):
    code, out, err = run(capsys, "nosuch")
    assert_error(code, out, err, "nosuch", "envs", "evaluate", "demo")


def test_installed_script(tmp_path):
    script = Path(sys.executable).parent / "xrl"
    assert script.exists(), f"the console script is not installed beside {sys.executable}"
    done = subprocess.run([str(script), "--help"], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    for command in (
        "envs",
        "zoo",
        "methods",
        "metrics",
        "train",
        "collect",
        "explain",
        "evaluate",
        "bench",
        "report",
        "watch",
        "demo",
    ):
        assert command in done.stdout
    # main()'s status reaches the shell
    done = subprocess.run(
        [str(script), "evaluate", "--agent", AGENT, "--data", str(tmp_path / "missing.h5")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2 and "missing.h5" in done.stderr, done.stderr


# -- demo --------------------------------------------------------------------------------------------


def check_demo_results(out: Path) -> None:
    for name in ("results.csv", "results.json", "report.html", "explain.png", "summary.md"):
        assert (out / name).is_file() and (out / name).stat().st_size > 0, name
    doc = json.loads((out / "results.json").read_text())
    assert doc["failed"] == [] and doc["missing"] == []
    (group,) = doc["groups"]
    # every registered method ran, except those that cannot explain this agent (and say why)
    assert sorted(group["methods"] + list(group["not_run"])) == xrl.list_explainers()
    assert all(why for why in group["not_run"].values())
    assert group["skipped"] == {}
    for col in ("localization.auc", "localization.important", "localization.unimportant"):
        assert col in group["columns"]
    for metric in xrl.list_metrics():  # every metric has its column(s)
        assert any(c == metric or c.startswith(metric + ".") for c in group["columns"]), metric
    rows = group["rows"]
    assert rows
    for m in group["methods"]:
        for col in group["columns"]:
            assert len(group["values"][m][col]) == len(rows), (m, col)
        assert group["means"][m]["localization.auc"] is not None
    with open(out / "results.csv", newline="") as f:
        table = list(csv.reader(f))
    assert [row[3] for row in table[1:]] == group["methods"]
    summary = (out / "summary.md").read_text()
    assert "explain.png" in summary and "report.html" in summary
    for m in group["methods"]:
        assert m in summary
    html = (out / "report.html").read_text()
    for m in group["methods"]:
        assert f'data-method="{m}"' in html
    with Image.open(out / "explain.png") as image:
        image.verify()
    with StateDataset.open(out / group["data"]) as ds:
        assert max(rows) < len(ds)


def test_demo_quick(quick_demo):
    code, stdout, err, out = quick_demo  # `xrl demo --quick --out DIR`, run once (tests/conftest.py)
    assert code == 0, err
    check_demo_results(out)
    assert not (out / "agent").exists()  # the zoo agent was used


def test_demo_without_zoo_agent_trains_one(tmp_path):
    # the rest of the demo (bench, report, summary) on whatever agent: test_demo_quick
    from xrl.demo import demo_agent, demo_spec

    empty = tmp_path / "zoo"
    empty.mkdir()
    path, card = demo_agent(tmp_path / "demo", zoo=empty, quick=True)
    assert path == tmp_path / "demo" / "agent" / "agent.pt" and path.is_file()
    assert card == json.loads(path.with_suffix(".json").read_text())
    assert card["env"]["name"] == "red-fetch-green" and card["timesteps"] >= 4096
    assert xrl.load_agent(path).action_names == xrl.load_agent("red-fetch-green").action_names
    spec = demo_spec(path, quick=True, seed=0)  # the demo's bench runs this agent
    assert [a.agent for a in spec.agents] == [str(path.resolve())]
    assert demo_agent(tmp_path / "demo", zoo=empty, quick=True)[0] == path  # a second run reuses it
