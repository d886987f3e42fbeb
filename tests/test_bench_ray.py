"""xrl bench on a local Ray with two workers: the same results as in process."""

from __future__ import annotations

import json
import os
import sys

import pytest
import ray
from test_bench import TINY, comparable, same_maps, write_spec

from xrl.bench import load_results, run_bench, runner
from xrl.bench.runner import start_local_ray


@pytest.fixture(scope="module")
def local_ray():
    """One local Ray for the module: 2 CPUs (2 workers), a small object store, no dashboard."""
    start_local_ray(2, object_store_memory=100 * 1024**2)
    yield
    ray.shutdown()


def test_in_process_and_on_ray_give_identical_results(tmp_path, local_ray, capsys):
    spec = write_spec(tmp_path, TINY)
    here = run_bench(spec, tmp_path / "in-process", progress=False)
    there = run_bench(spec, tmp_path / "ray", ray="auto", progress=True)
    assert "6 jobs, 0 already done, 6 to run (on Ray)" in capsys.readouterr().out
    assert ray.is_initialized()  # a Ray the caller started is left running
    a, b = load_results(here), load_results(there)
    assert b["jobs"] == {"total": 6, "done": 6, "failed": 0, "missing": 0}
    assert comparable(a) == comparable(b)
    same_maps(here, there)
    # the jobs really ran in Ray's worker processes, at most two of them
    pids = {json.loads(p.read_text())["worker"]["pid"] for p in (there / "jobs").rglob("*.json")}
    assert os.getpid() not in pids and 1 <= len(pids) <= 2
    # and a re-run on Ray skips them all
    run_bench(spec, there, ray="auto", progress=True)
    assert "6 jobs, 6 already done, 0 to run" in capsys.readouterr().out


def _dies_on_random(job, model, blob, digest, device="cpu"):
    """A Ray task that kills its worker process for the ``random`` jobs (a segfault, an OOM kill)."""
    if job.method == "random":
        os._exit(3)
    return runner._remote_job(job, model, blob, digest, device)


def test_a_dying_worker_is_recorded_and_the_other_jobs_finish(tmp_path, local_ray, monkeypatch):
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])  # workers cannot import tests/
    monkeypatch.setattr(runner, "_remote_job", _dies_on_random)
    spec = write_spec(tmp_path, TINY.replace("seeds = [0, 1]", "seeds = [0]"))
    doc = load_results(run_bench(spec, tmp_path / "out", ray="auto", progress=False))
    assert doc["jobs"] == {"total": 3, "done": 2, "failed": 1, "missing": 0}
    (failed,) = doc["failed"]
    assert failed["id"] == "red-fetch-green/seed0/random"
    assert failed["error"].startswith("WorkerCrashedError"), failed["error"]
    assert doc["groups"][0]["methods"] == ["gradient", "greydanus"]
