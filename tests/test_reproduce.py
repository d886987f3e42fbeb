"""``xrl reproduce``: every target runs with --quick, a killed run resumes, the numbers are the
ones an independent computation gives."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from xrl.reproduce import TARGETS, core, run_target

REQUIRED = [
    "digr-table1",
    "digr-attacks",
    "digr-highway",
    "visionmask-table1",
    "rexl-deletion",
    "fls-free-lunch",
    "fls-localization",
]
FAST = ["rise-coverage", "zoo-baselines", "fls-metrics"]  # fls-free-lunch: the kill test below
SLOW = ["digr-table1", "digr-attacks", "digr-highway", "visionmask-table1", "rexl-deletion", "fls-localization"]


def _check_outputs(run, out):
    record = json.loads((out / "run.json").read_text())
    assert record["target"] == run.target.name and record["quick"] is True
    assert (out / "summary.md").read_text().startswith(f"# {run.target.name}")
    assert run.tables, "a target writes at least one table"
    for name in run.tables:
        for suffix in (".md", ".csv", ".json"):
            assert (out / f"{name}{suffix}").stat().st_size > 0
        table = json.loads((out / f"{name}.json").read_text())
        csv_lines = (out / f"{name}.csv").read_text().strip().splitlines()
        assert len(csv_lines) == len(table["rows"]) + 1
    for figure in run.figures:
        assert (out / figure).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_every_target_is_tested_and_listed(capsys):
    from xrl.cli import main

    assert set(REQUIRED) <= set(TARGETS.targets)
    assert set(FAST) | set(SLOW) | {"digr-snapshots", "fls-free-lunch"} == set(TARGETS.targets)
    assert main(["reproduce", "--list"]) == 0
    listed = capsys.readouterr().out
    for name, target in TARGETS.targets.items():
        assert f"{name}  [" in listed and target.docs in listed


@pytest.mark.parametrize("name", FAST + [pytest.param(n, marks=pytest.mark.slow) for n in SLOW])
def test_quick(name, quick_reproduction):
    run, out = quick_reproduction(name)  # run_target(..., quick=True), once per run (tests/conftest.py)
    _check_outputs(run, out)
    again = run.again()  # run_target(..., quick=True) on the same folder
    assert again.computed == [] and sorted(again.reused) == sorted(run.computed)


@pytest.mark.slow
def test_digr_snapshots_quick(tmp_path):
    from xrl.agents.load import ZOO_DIR

    snapshots = tmp_path / "run" / "snapshots"
    snapshots.mkdir(parents=True)
    for suffix in (".pt", ".json"):
        shutil.copy(ZOO_DIR / "red-fetch-green-digr-a1" / f"agent{suffix}", snapshots / f"agent-000010{suffix}")
    out = tmp_path / "out"
    run = run_target(
        TARGETS.get("digr-snapshots"), out, quick=True, overrides={"run": str(tmp_path / "run")}, progress=False
    )
    _check_outputs(run, out)
    rows = json.loads((out / "snapshots.json").read_text())["rows"]
    assert [r["update"] for r in rows] == [10, "teacher"]


def test_snapshots_need_a_run(tmp_path):
    with pytest.raises(ValueError, match="--set run="):
        run_target(TARGETS.get("digr-snapshots"), tmp_path, quick=True, progress=False)


@pytest.fixture(scope="module")
def free_lunch(tmp_path_factory):
    out = tmp_path_factory.mktemp("free-lunch")
    return out, run_target(TARGETS.get("fls-free-lunch"), out, quick=True, progress=False)


def test_killed_run_resumes_where_it_stopped(free_lunch, tmp_path, monkeypatch):
    """A kill after the second row leaves two finished rows; the next run computes only the rest
    and ends with the tables of an uninterrupted run."""
    target = TARGETS.get("fls-free-lunch")
    clean_out, clean = free_lunch
    _check_outputs(clean, clean_out)
    total = len(clean.computed)
    assert total == 5  # 4 agents and the random policy

    class Killed(BaseException):
        pass

    def kill_after_two(run, name):
        if len(run.computed) == 2:
            raise Killed(name)

    monkeypatch.setattr(core, "_row_done", kill_after_two)
    with pytest.raises(Killed):
        run_target(target, tmp_path, quick=True, progress=False)
    assert len(list((tmp_path / "rows").glob("*.json"))) == 2
    assert not (tmp_path / "free_lunch.json").exists()
    monkeypatch.setattr(core, "_row_done", lambda run, name: None)
    resumed = run_target(target, tmp_path, quick=True, progress=False)
    assert len(resumed.reused) == 2 and len(resumed.computed) == total - 2
    a = json.loads((clean_out / "free_lunch.json").read_text())
    b = json.loads((tmp_path / "free_lunch.json").read_text())
    assert a["rows"] == b["rows"]

    # a changed setting (the episode seeds) recomputes every row
    changed = run_target(
        target, tmp_path, quick=True, overrides={"seed": 7, "envs": ["red-fetch-green"]}, progress=False
    )
    assert len(changed.computed) == total and not changed.reused


def test_free_lunch_numbers_match_an_independent_computation(free_lunch):
    """Mean return, success, ratio to baseline and the paired interval recomputed here from the
    per-episode returns the rows hold, and the greedy returns replayed by hand for one agent."""
    import xrl
    from xrl.envs import make_env

    out, _ = free_lunch
    rows = {
        json.loads(p.read_text())["row"]: json.loads(p.read_text())["value"]["returns"]
        for p in (out / "rows").glob("*.json")
    }
    env = "red-fetch-green"
    base = np.mean([rows[f"{env}-red-fetch-green-cnn-500k-{s}"] for s in (0, 1)], axis=0)
    fls = np.mean([rows[f"{env}-red-fetch-green-sparse-fls-{s}"] for s in (0, 1)], axis=0)
    floor = np.asarray(rows[f"{env}-random"])
    table = {r["group"]: r for r in json.loads((out / "free_lunch.json").read_text())["rows"]}
    assert table["grid_cnn (baseline)"]["mean return"] == pytest.approx(base.mean())
    assert table["grid_sparse_fls"]["mean return"] == pytest.approx(fls.mean())
    assert table["random policy"]["mean return"] == pytest.approx(floor.mean())
    if base.mean() > floor.mean():
        assert table["grid_sparse_fls"]["ratio to baseline"] == pytest.approx(
            (fls.mean() - floor.mean()) / (base.mean() - floor.mean())
        )
    assert table["grid_sparse_fls"]["return diff (95% CI)"].strip("*").startswith(f"{fls.mean() - base.mean():+.3f}")

    # episode 0 of one agent, played greedily by hand from the same seed
    model = xrl.load_agent("red-fetch-green-sparse-fls-0")
    e = make_env(env)
    obs, _ = e.reset(seed=TARGETS.get("fls-free-lunch").settings["seed"])
    total, done = 0.0, False
    while not done:
        obs, reward, terminated, truncated, _ = e.step(int(model.act(np.asarray(obs)[None])[0]))
        total, done = total + float(reward), terminated or truncated
    assert rows[f"{env}-red-fetch-green-sparse-fls-0"][0] == pytest.approx(total)


def test_paired_interval_against_a_numpy_bootstrap():
    rng = np.random.default_rng(1)
    a = rng.normal(0.3, 1.0, 400)
    b = a - rng.normal(0.2, 0.5, 400)  # paired: a - b ~ N(0.2, 0.5)
    got = core.paired_interval(a, b)
    diff = a - b
    draws = np.random.default_rng(5).integers(0, len(diff), size=(20_000, len(diff)))
    low, high = np.percentile(diff[draws].mean(1), [2.5, 97.5])
    assert got["mean"] == pytest.approx(diff.mean())
    assert got["n"] == 400
    assert got["low"] == pytest.approx(low, abs=0.01) and got["high"] == pytest.approx(high, abs=0.01)
    # pairs with a missing value are left out, a constant difference gives a point
    assert core.paired_interval([1.0, None, 3.0, np.nan], [0.0, 1.0, 2.0, 0.0]) == {
        "mean": 1.0,
        "low": 1.0,
        "high": 1.0,
        "n": 2,
    }
    with pytest.raises(ValueError, match="same length"):
        core.paired_interval([1.0, 2.0], [1.0])
    assert core.format_interval({"mean": 0.5, "low": 0.1, "high": 0.9, "n": 3}) == "**+0.500 [+0.100, +0.900]**"
    assert core.format_interval({"mean": 0.5, "low": -0.1, "high": 0.9, "n": 3}) == "+0.500 [-0.100, +0.900]"


def test_rectangle_labels_and_half_return_eps():
    from xrl.reproduce.digr import half_return_eps
    from xrl.reproduce.fls import rectangle_labels

    cells = np.full((1, 32, 32), 0, dtype=np.int8)
    cells[0, :, :8] = -1  # a wall column
    cells[0, 8:16, 8:16] = 1  # agent tile (row 1, col 1)
    cells[0, 16:24, 24:32] = 1  # goal tile (row 2, col 3)
    out = rectangle_labels(cells)[0]
    expected = np.zeros((32, 32), dtype=np.int8)
    expected[:, :8] = -1
    expected[8:24, 8:32] = 1
    np.testing.assert_array_equal(out, expected)
    curve = [{"eps": 0.0, "mean_return": 0.8}, {"eps": 0.01, "mean_return": 0.5}, {"eps": 0.02, "mean_return": 0.4}]
    assert half_return_eps(curve) == 0.02
    assert half_return_eps(curve[:2]) is None


def test_cli_refuses_unknown_targets_and_settings(capsys):
    """One line each, exit 2, as every command's bad input (no traceback, no SystemExit)."""
    from xrl.cli import main

    for argv, words in [
        (["reproduce", "nope"], "unknown reproduce target 'nope'"),
        (["reproduce", "fls-free-lunch", "--set", "n_statez=3"], "fls-free-lunch has no setting 'n_statez'"),
        (["reproduce", "fls-free-lunch", "--set", "oops"], "--set takes KEY=VALUE, got 'oops'"),
    ]:
        assert main(argv) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("xrl reproduce: error: ") and words in err[0], err


def test_declarations_and_runs_are_bound_one_to_one(tmp_path):
    """targets.json holds every target's declaration, the paper modules its run; a mismatch or a
    malformed declaration is refused with the target's name."""
    declared = json.loads((core.Path(core.__file__).with_name("targets.json")).read_text())
    assert [d["name"] for d in declared] == list(TARGETS.targets)
    runs = {name: t.run for name, t in TARGETS.targets.items()}
    path = tmp_path / "targets.json"

    def refused(entries, run_map, match):
        path.write_text(json.dumps(entries))
        with pytest.raises(ValueError, match=match):
            core.load_targets(run_map, path)

    refused(declared, {k: v for k, v in runs.items() if k != "rise-coverage"}, r"rise-coverage\): no run function")
    refused(
        [d for d in declared if d["name"] != "zoo-baselines"],
        runs,
        "run functions without a declaration: zoo-baselines",
    )
    bad = [dict(declared[0], quick={"nope": 1})] + declared[1:]
    refused(bad, runs, r"digr-table1\): quick sets \['nope'\]")
    refused([{k: v for k, v in declared[0].items() if k != "claim"}] + declared[1:], runs, r"missing keys \['claim'\]")
    refused({"name": "x"}, runs, "expected a JSON list")
    path.write_text("[{")
    with pytest.raises(ValueError, match="not a readable JSON list"):
        core.load_targets(runs, path)


def test_digr_targets_on_another_teacher_say_so(tmp_path, monkeypatch):
    """The paper's Table 1 numbers are Red-Fetch-Green's: a Pong teacher gets no paper columns and
    its summary names the agents given, not the target's Red-Fetch-Green text."""
    from xrl.reproduce import digr

    seen = {}
    monkeypatch.setattr(digr, "table1", lambda run, agents, s, *, paper: seen.update(paper=paper, agents=list(agents)))
    pong = {"teacher": "pong", "student": "pong-nature-cnn-1m-0", "distilled": None}
    run = core.TargetRun(
        TARGETS.get("digr-table1"),
        tmp_path / "t1",
        TARGETS.get("digr-table1").resolved(pong, quick=True),
        progress=False,
    )
    digr.run_table1(run)
    assert seen == {"paper": {}, "agents": ["teacher", "DIGR"]}
    assert run.reruns.startswith(
        "on pong (not the paper's Red-Fetch-Green): the teacher `pong`, DIGR student `pong-nature-cnn-1m-0`;"
    )
    assert any("no paper numbers" in n for n in run.notes)
    rfg = core.TargetRun(
        TARGETS.get("digr-table1"),
        tmp_path / "t2",
        TARGETS.get("digr-table1").resolved({"distilled": None}, quick=True),
        progress=False,
    )
    digr.run_table1(rfg)
    assert seen["paper"] is digr.PAPER_TABLE1 and rfg.reruns == TARGETS.get("digr-table1").reruns
    assert rfg.notes == []

    out = tmp_path / "attacks"
    run_target(TARGETS.get("digr-attacks"), out, quick=True, overrides=pong, progress=False)
    summary = (out / "summary.md").read_text()
    assert "Re-runs: on pong (not the paper's Red-Fetch-Green)" in summary
    assert "Red-Fetch-Green teacher" not in summary
