"""xrl bench: spec checking, the in-process runner, resume after a kill, crashing jobs, results files."""

from __future__ import annotations

import csv
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

import xrl
from xrl import cli
from xrl.bench import SpecError, load_results, load_spec, run_bench
from xrl.bench.layout import read_npz as _npz
from xrl.bench.runner import prepare
from xrl.data.dataset import StateDataset
from xrl.evaluation import evaluate
from xrl.explainers import EXPLAINERS
from xrl.explainers.base import Explainer

TINY = """\
name = "tiny"
seeds = [0, 1]
n_states = 4
gallery = 2
methods = ["gradient", "random", "greydanus"]
metrics = ["deletion", "insertion", "sparseness", "localization", "time_per_map"]

[[agents]]
agent = "red-fetch-green"
episodes = 1
max_steps = 6

[method_settings.greydanus]
radius = 4
stride = 8

[metric_settings.deletion]
step_fraction = 0.1
"""


def write_spec(folder: Path, text: str = TINY, name: str = "spec.toml") -> Path:
    path = folder / name
    path.write_text(text)
    return path


def comparable(doc: dict) -> list[dict]:
    """The results without wall times (the ``cost`` columns and job seconds differ per run)."""
    out = []
    for g in doc["groups"]:
        cols = [c for c in g["columns"] if g["categories"][c] != "cost"]
        out.append(
            {
                "key": (g["agent"], g["seed"]),
                "rows": g["rows"],
                "gallery": g["gallery_rows"],
                "methods": g["methods"],
                "curves": g["curves"],
                "values": {m: {c: g["values"][m][c] for c in cols} for m in g["methods"]},
                "means": {m: {c: g["means"][m][c] for c in cols} for m in g["methods"]},
            }
        )
    return out


def same_maps(a: Path, b: Path) -> None:
    for path in sorted((a / "jobs").rglob("*.npz")):
        x, y = _npz(path), _npz(b / path.relative_to(a))
        assert set(x) == set(y)
        for k in x:
            np.testing.assert_array_equal(x[k], y[k], err_msg=str(path))


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    folder = tmp_path_factory.mktemp("bench")
    out = run_bench(write_spec(folder), folder / "results", progress=False)
    return folder, out


# -- the spec --------------------------------------------------------------------------------------

BAD = """\
name = "bad one"
seeds = [0, "1"]
n_states = 0
colour = "blue"
methods = ["gradient", "nosuch", "greydanus"]
metrics = ["deletion", "nometric"]

[[agents]]
agent = "red-fetch-green"
env = "pong"
episodes = 1.5

[[agents]]
agent = "no-such-agent"

[method_settings.greydanus]
radius = 4
radus = 4

[method_settings.rise]
n_masks = 10

[metric_settings.deletion]
step_fraction = 2
"""


def test_bad_spec_lists_every_problem_with_its_line(tmp_path, monkeypatch):
    collected = []
    monkeypatch.setattr("xrl.bench.runner.collect", lambda *a, **k: collected.append(a))
    path = write_spec(tmp_path, BAD)
    with pytest.raises(SpecError) as info:
        run_bench(path, tmp_path / "out", progress=False)
    problems = info.value.problems
    want = [  # (line, words) in the order of the file
        (1, ["name", "bad one"]),
        (2, ["seeds", "'1'"]),
        (3, ["n_states", ">= 1"]),
        (4, ["colour", "known keys"]),
        (5, ["nosuch", "greydanus", "occlusion"]),
        (6, ["nometric", "deletion", "sanity"]),
        (10, ["trained on 'red-fetch-green'", "pong"]),
        (11, ["episodes", "1.5"]),
        (14, ["no-such-agent", "zoo agents", "red-fetch-green"]),
        (18, ["radus"]),
        (20, ["rise", "not among the methods run"]),
        (24, ["step_fraction", "(0, 1]"]),
    ]
    assert len(problems) == len(want), "\n".join(problems)
    for problem, (line, words) in zip(problems, want):
        assert problem.startswith(f"{path}:{line}: "), problem
        for word in words:
            assert word in problem, (word, problem)
    assert not (tmp_path / "out").exists() and not collected  # nothing ran


def test_bad_spec_on_the_command_line(capsys, tmp_path):
    path = write_spec(tmp_path, BAD)
    code = cli.main(["bench", str(path), "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert code == 2
    assert "12 problem(s)" in err and "Traceback" not in err
    assert err.count(f"{path}:") == 12


@pytest.mark.parametrize(
    "text, words",
    [
        ("name = 'x'\n", ["[[agents]]"]),
        ("name = [\n", ["not valid TOML"]),
        # names that would resolve to the output folder's parent or itself, not a folder inside it
        ("name = '..'\n[[agents]]\nagent = 'red-fetch-green'\n", ["name must be a word", "not only dots", "'..'"]),
        ("name = '.'\n[[agents]]\nagent = 'red-fetch-green'\n", ["name must be a word", "'.'"]),
        ("name = '../x'\n[[agents]]\nagent = 'red-fetch-green'\n", ["name must be a word", "'../x'"]),
        ("name = '/tmp/x'\n[[agents]]\nagent = 'red-fetch-green'\n", ["name must be a word", "'/tmp/x'"]),
        ("[[agents]]\nagent = 'red-fetch-green'\nname = '..'\n", ["agents[0].name", "not only dots"]),
        (
            "methods = 'all'\nmetrics = ['localization']\n[[agents]]\nagent = 'red-fetch-green'\ndata = 'nosuch.h5'\n",
            ["agents[0].data", "nosuch.h5"],
        ),
    ],
)
def test_more_bad_specs(tmp_path, text, words):
    with pytest.raises(SpecError) as info:
        load_spec(write_spec(tmp_path, text))
    for word in words:
        assert word in str(info.value), str(info.value)


def test_a_metric_that_needs_labels_the_data_lacks_is_refused(tmp_path, tiny_run):
    # a dataset without labels: copy the collected one's states into a label-free file
    from xrl.data.dataset import StateDatasetWriter

    folder, out = tiny_run
    with StateDataset.open(out / "data" / "red-fetch-green-seed0.h5") as ds:
        meta = {"env": ds.env, "agent": ds.agent, "action_names": ds.action_names, "collect": ds.collect_settings}
        n = len(ds)
        with StateDatasetWriter(tmp_path / "nolabels.h5", **meta) as w:
            w.append(states=ds.raw_states(), frames=ds.frames(), actions=ds.actions, scores=ds.scores, labels=None)
            w.end_episode(0.0)
            w.finalize()
    text = (
        "metrics = ['localization', 'sparseness']\nmethods = ['random']\n"
        "[[agents]]\nagent = 'red-fetch-green'\ndata = 'nolabels.h5'\n"
    )
    with pytest.raises(SpecError, match="need ground-truth labels"):
        load_spec(write_spec(tmp_path, text))
    # with metrics = "all" the same data is fine: localization is reported as skipped
    spec = load_spec(
        write_spec(
            tmp_path,
            text.replace("['localization', 'sparseness']", "'all'").replace(
                "methods = ['random']",
                "methods = ['random']\nn_states = 2\n[metric_settings.lipschitz]\nn_samples = 1\n",
            ),
            "all.toml",
        )
    )
    assert n >= 2 and "localization" in spec.metrics


def test_shipped_specs_are_valid_and_cover_every_registered_name():
    for name in ("quick", "full"):
        spec, _ = prepare(load_spec(name))  # the methods built for each agent: what is not run, and why
        assert list(spec.methods) == xrl.list_explainers()
        assert list(spec.metrics) == xrl.list_metrics()
        # methods that cannot explain an agent (an attention explainer on a plain CNN) are left
        # out of its jobs, with the reason
        assert all(all(why for why in spec.not_run[a.name].values()) for a in spec.agents)
        assert len(spec.jobs()) == sum(
            len(spec.seeds) * (len(spec.methods) - len(spec.not_run[a.name])) for a in spec.agents
        )
    with pytest.raises(FileNotFoundError, match="quick, full|full, quick"):
        load_spec("nosuch")


# -- running ----------------------------------------------------------------------------------------


def test_results_hold_every_job_and_match_evaluate(tiny_run):
    folder, out = tiny_run
    doc = load_results(out)
    spec = load_spec(folder / "spec.toml")
    assert doc["jobs"] == {"total": 6, "done": 6, "failed": 0, "missing": 0}
    assert [(g["agent"], g["seed"]) for g in doc["groups"]] == [("red-fetch-green", 0), ("red-fetch-green", 1)]
    model = xrl.load_agent("red-fetch-green")
    for g in doc["groups"]:
        assert g["methods"] == ["gradient", "random", "greydanus"]
        assert "localization.auc" in g["columns"] and g["skipped"] == {}
        # the bench is evaluate() on the same states: the same numbers as a direct call
        with StateDataset.open(out / g["data"]) as ds:
            direct = evaluate(model, ds, spec.methods, spec.metrics, n_states=4, seed=g["seed"], progress=False)
        assert g["rows"] == direct.rows and len(g["rows"]) == 4
        for m in g["methods"]:
            for c in g["columns"]:
                if c == "time_per_map":
                    assert all(v > 0 for v in g["values"][m][c])
                    continue
                np.testing.assert_array_equal(
                    np.asarray(g["values"][m][c], dtype=float),
                    np.asarray(direct.values[m][c], dtype=float),
                    err_msg=f"{m} {c}",
                )
                assert g["means"][m][c] == pytest.approx(np.nanmean(np.asarray(g["values"][m][c], dtype=float)))
            # the mean deletion curve: 11 points for step 0.1, from the state to the black substrate;
            # its trapezoid area is the mean deletion score
            x, y = g["curves"][m]["deletion"]["x"], g["curves"][m]["deletion"]["y"]
            assert x[0] == 0 and x[-1] == 1 and len(x) == 11
            assert np.trapezoid(y, x) == pytest.approx(g["means"][m]["deletion"], rel=1e-5)
            # where the time went: the maps, every metric, the curves; parts of the whole job
            steps = g["seconds_by_step"][m]
            metrics = [c.partition(".")[0] for c in g["columns"]]
            assert set(steps) == {"explain", *metrics, *(f"{c} curve" for c in g["curves"][m])}
            assert all(v >= 0 for v in steps.values()) and sum(steps.values()) <= g["seconds"][m]
            maps = _npz(out / g["maps"][m])
            assert maps["gallery"].shape == (2, 64, 64)
            assert list(maps["gallery_rows"]) == g["gallery_rows"]
    # the two seeds drew different episodes
    assert comparable(doc)[0]["values"] != comparable(doc)[1]["values"]
    with open(out / "results.csv", newline="") as f:
        table = list(csv.DictReader(f))
    assert len(table) == 6
    for row in table:
        g = next(g for g in doc["groups"] if g["seed"] == int(row["seed"]))
        for c in g["columns"]:
            want = g["means"][row["method"]][c]
            assert (row[c] == "" and math.isnan(want)) or float(row[c]) == want, (row, c)


def test_rerun_skips_finished_jobs(tiny_run, capsys):
    folder, out = tiny_run
    before = {p: p.stat().st_mtime_ns for p in (out / "jobs").rglob("*.json")}
    run_bench(folder / "spec.toml", out, progress=True)
    printed = capsys.readouterr().out
    assert "6 jobs, 6 already done, 0 to run" in printed
    assert {p: p.stat().st_mtime_ns for p in (out / "jobs").rglob("*.json")} == before


def test_a_changed_setting_reruns_only_that_method(tiny_run, tmp_path):
    folder, out = tiny_run
    copy = tmp_path / "results"
    subprocess.run(["cp", "-r", str(out), str(copy)], check=True)
    before = {p.relative_to(copy): p.stat().st_mtime_ns for p in (copy / "jobs").rglob("*.json")}
    spec = write_spec(tmp_path, TINY.replace("stride = 8", "stride = 4"))
    run_bench(spec, copy, progress=False)
    changed = sorted(str(p) for p, t in before.items() if (copy / p).stat().st_mtime_ns != t)
    assert changed == ["jobs/red-fetch-green/seed0/greydanus.json", "jobs/red-fetch-green/seed1/greydanus.json"]
    assert load_results(copy)["spec"]["methods"]["greydanus"]["stride"] == 4


class _Crashing(Explainer):
    """Raises on every call (a test double for a crashing job)."""

    def _explain(self, states, target_fn):
        raise RuntimeError("boom from the test explainer")


def test_a_crashing_job_is_recorded_and_the_others_finish(tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(EXPLAINERS._items, "_crashing", _Crashing)  # registered for this test only
    text = (
        TINY.replace('methods = ["gradient", "random", "greydanus"]', 'methods = ["gradient", "_crashing", "random"]')
        .replace("seeds = [0, 1]", "seeds = [0]")
        .replace("[method_settings.greydanus]\nradius = 4\nstride = 8\n", "")
    )
    path = write_spec(tmp_path, text)
    code = cli.main(["bench", str(path), "--out", str(tmp_path / "out")])
    captured = capsys.readouterr()
    assert code == 1
    assert "FAILED red-fetch-green/seed0/_crashing: RuntimeError: boom" in captured.err
    doc = load_results(tmp_path / "out")
    assert doc["jobs"] == {"total": 3, "done": 2, "failed": 1, "missing": 0}
    assert doc["groups"][0]["methods"] == ["gradient", "random"]
    assert "boom from the test explainer" in doc["failed"][0]["traceback"]
    error = tmp_path / "out" / "jobs" / "red-fetch-green" / "seed0" / "_crashing.error.json"
    assert error.exists()
    # a re-run retries the failed job only
    run_bench(path, tmp_path / "out", progress=True)
    assert "3 jobs, 2 already done, 1 to run" in capsys.readouterr().out


def test_unreachable_ray_address_fails_fast(tmp_path, capsys):
    path = write_spec(tmp_path)
    started = time.monotonic()
    code = cli.main(["bench", str(path), "--ray", "127.0.0.1:9", "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert code == 2 and "no Ray cluster reachable at 127.0.0.1:9" in err, err
    assert not (tmp_path / "out").exists()
    with pytest.raises(ValueError, match="host:port"):
        run_bench(path, tmp_path / "out", ray="nonsense", progress=False)
    assert time.monotonic() - started < 60  # not Ray's own minutes-long connection retries
    with pytest.raises(ValueError, match="--ray auto"):
        run_bench(path, tmp_path / "out", workers=2, progress=False)


def test_check_only(tmp_path, capsys):
    code = cli.main(["bench", str(write_spec(tmp_path)), "--check"])
    assert code == 0
    assert "OK, up to 6 jobs (1 agent(s) x 2 seed(s) x 3 method(s)), 5 metric(s)" in capsys.readouterr().out


# -- killed midway ----------------------------------------------------------------------------------

SLOW = (
    TINY.replace(
        'methods = ["gradient", "random", "greydanus"]',
        'methods = ["gradient", "random", "greydanus", "occlusion", "smoothgrad", "integrated_gradients"]',
    )
    .replace("seeds = [0, 1]", "seeds = [0]")
    .replace(
        'metrics = ["deletion", "insertion", "sparseness", "localization", "time_per_map"]',
        'metrics = ["deletion", "insertion", "sparseness", "localization", "lipschitz"]',
    )
    + "\n[metric_settings.lipschitz]\nn_samples = 4\n"
)


def test_killed_run_resumes_with_only_the_missing_jobs(tmp_path, tiny_run):
    path = write_spec(tmp_path, SLOW)
    reference = run_bench(path, tmp_path / "reference", progress=False)

    out = tmp_path / "killed"
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "xrl.cli", "bench", str(path), "--out", str(out)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=env,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 300
        while not list((out / "jobs").rglob("*.json")) and time.monotonic() < deadline:
            assert proc.poll() is None, "the run ended before it could be killed"
            time.sleep(0.01)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    done = {p.relative_to(out): p.stat().st_mtime_ns for p in (out / "jobs").rglob("*.json")}
    assert 1 <= len(done) < 6, f"{len(done)} jobs were done when killed; make the jobs slower"

    completed = subprocess.run(
        [sys.executable, "-m", "xrl.cli", "bench", str(path), "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=600,
        env=env,
    )
    assert completed.returncode == 0, completed.stderr
    assert f"6 jobs, {len(done)} already done, {6 - len(done)} to run" in completed.stdout
    for p, t in done.items():  # finished jobs were not run again
        assert (out / p).stat().st_mtime_ns == t
    assert comparable(load_results(out)) == comparable(load_results(reference))
    same_maps(reference, out)


class _NeedsNetwork(Explainer):
    """Refuses every agent, as a method needing a trained network that is not there would."""

    def __init__(self, model, **settings):
        raise ValueError("needs a trained explainer network at nets/x.pt, which is not there")


def test_a_method_that_cannot_explain_the_agent(tmp_path, monkeypatch):
    monkeypatch.setitem(EXPLAINERS._items, "_needs_network", _NeedsNetwork)
    named = TINY.replace('"greydanus"]', '"greydanus", "_needs_network"]')
    checked = load_spec(write_spec(tmp_path, named))  # the spec itself builds no method: it passes
    assert "_needs_network" in checked.methods and not checked.not_run
    with pytest.raises(SpecError, match=r"spec.toml:5: methods.*_needs_network.*not there"):
        prepare(checked)  # the runner builds each method for each agent before the first job
    with pytest.raises(SpecError, match=r"spec.toml:5: methods.*_needs_network.*not there"):
        run_bench(write_spec(tmp_path, named), tmp_path / "out", progress=False)
    assert not (tmp_path / "out").exists()
    # with methods = "all" it is left out of that agent's jobs, and the results say why
    every = TINY.replace('methods = ["gradient", "random", "greydanus"]', 'methods = "all"')
    spec, _ = prepare(load_spec(write_spec(tmp_path, every, "all.toml")))
    assert spec.not_run["red-fetch-green"]["_needs_network"].startswith("needs a trained explainer")
    assert "_needs_network" not in {j.method for j in spec.jobs()}
    assert {j.method for j in spec.jobs()} == set(xrl.list_explainers()) - set(spec.not_run["red-fetch-green"])


def test_other_states_make_other_jobs(tmp_path):
    spec, models = prepare(load_spec(write_spec(tmp_path)))
    more, _ = prepare(load_spec(write_spec(tmp_path, TINY.replace("episodes = 1", "episodes = 2"), "more.toml")))
    assert [j.id for j in spec.jobs()] == [j.id for j in more.jobs()]
    assert not {j.key for j in spec.jobs()} & {j.key for j in more.jobs()}
    assert spec.agents[0].inputs == xrl.data.collect.agent_record(models["red-fetch-green"])["fingerprint"]


# -- configuration only; devices and GPUs (issues 43 and 40) ----------------------------------------

#: TINY with two learned explainers (their networks found in the zoo) and where the jobs run
LEARNED = TINY.replace('"greydanus"]', '"greydanus", "visionmask", "rexl"]').replace(
    "gallery = 2\n", 'gallery = 2\ndevice = "cpu"\ngpus_per_job = 0.5\n'
)


def test_check_reads_no_weights_and_builds_no_method(tmp_path, capsys, monkeypatch):
    """``xrl bench --check`` (and load_spec) read cards and headers only: no torch.load of weights
    (a header is read onto the ``meta`` device), no explainer built, no env made; the runner's
    preparation does read them (so the check below can fail)."""
    import torch

    import xrl.bench.spec
    import xrl.envs
    import xrl.explainers

    reads, real = [], torch.load

    def load(*args, **kwargs):
        if kwargs.get("map_location") != "meta":
            reads.append(args[0] if args else kwargs.get("f"))
        return real(*args, **kwargs)

    def no(*args, **kwargs):
        raise AssertionError("checking a spec built an explainer or an env")

    monkeypatch.setattr(torch, "load", load)
    path = write_spec(tmp_path, LEARNED)
    with monkeypatch.context() as m:
        m.setattr(xrl.explainers, "get_explainer", no)
        m.setattr(xrl.envs, "make_env", no)
        assert cli.main(["bench", str(path), "--check"]) == 0, capsys.readouterr().err
        spec = load_spec(path)
    assert "OK, up to 10 jobs" in capsys.readouterr().out
    assert reads == [] and not spec.not_run and not spec.networks
    assert (spec.device, spec.gpus_per_job, spec.gpus()) == ("cpu", 0.5, 0.5)
    prepared, models = prepare(spec)
    assert reads and set(models) == {"red-fetch-green"}
    # the learned explainers' zoo networks, found by the agent's fingerprint, enter their jobs' keys
    assert set(prepared.networks["red-fetch-green"]) == {"visionmask", "rexl"}
    keys = {j.method: j.key for j in prepared.jobs()}
    assert keys["gradient"] == {j.method: j.key for j in spec.jobs()}["gradient"]
    assert keys["visionmask"] != {j.method: j.key for j in spec.jobs()}["visionmask"]
    # device and gpus_per_job are where the jobs run, not what they compute: no key and no
    # resolved spec changes with them
    plain = prepare(
        load_spec(write_spec(tmp_path, LEARNED.replace('device = "cpu"\ngpus_per_job = 0.5\n', ""), "plain.toml"))
    )[0]
    assert [j.key for j in plain.jobs()] == [j.key for j in prepared.jobs()]
    assert plain.resolved() == prepared.resolved()


@pytest.mark.parametrize(
    "line, words",
    [
        ('device = "gpu"', ["spec.toml:1: device", "'gpu'", "cuda:N"]),
        ('device = "cuda:x"', ["spec.toml:1: device", "'cuda:x'"]),
        ("device = 0", ["spec.toml:1: device", "got 0"]),
        ("gpus_per_job = -1", ["spec.toml:1: gpus_per_job", "number >= 0", "got -1"]),
        ("gpus_per_job = 0.00001", ["spec.toml:1: gpus_per_job", "4 decimals"]),
        ('gpus_per_job = "1"', ["spec.toml:1: gpus_per_job", "got '1'"]),
        ("gpus_per_job = true", ["spec.toml:1: gpus_per_job", "got True"]),
    ],
)
def test_bad_device_settings_are_one_line_each(tmp_path, line, words):
    with pytest.raises(SpecError) as info:
        load_spec(write_spec(tmp_path, line + "\n" + TINY))
    (problem,) = info.value.problems
    assert "\n" not in problem
    for word in words:
        assert word in problem, problem


def test_device_and_gpus_per_job_defaults_and_override(tmp_path):
    import torch

    spec = load_spec(write_spec(tmp_path))
    assert (spec.device, spec.gpus_per_job) == ("auto", None)
    assert spec.gpus() == (1 if torch.cuda.is_available() else 0)
    assert spec.with_device("cpu").gpus() == 0 and spec.with_device("cuda").gpus() == 1
    assert spec.with_device("cuda:1").gpus() == 1 and spec.with_device(None) is spec
    assert load_spec(write_spec(tmp_path), device="cuda").device == "cuda"  # xrl bench --device
    two = load_spec(write_spec(tmp_path, "gpus_per_job = 2\n" + TINY), device="cpu")
    assert two.gpus() == 2  # set in the spec: kept whatever the device
    with pytest.raises(ValueError, match="'gpu'"):
        spec.with_device("gpu")


@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="needs a machine without CUDA")
def test_a_device_this_machine_lacks_is_refused_before_the_first_job(tmp_path, capsys):
    path = write_spec(tmp_path, 'device = "cuda"\n' + TINY)
    assert cli.main(["bench", str(path), "--check"]) == 0  # a spec for a GPU cluster checks anywhere
    with pytest.raises(SpecError, match=r"spec.toml:1: device: device 'cuda' is not available"):
        run_bench(path, tmp_path / "out", progress=False)
    assert not (tmp_path / "out").exists()
