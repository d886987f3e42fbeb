"""xrl bench in local worker processes (``run_bench(processes=2)``, the demo's way to use every
core without Ray): the same results as in process."""

from __future__ import annotations

import shutil

import pytest
from test_bench import comparable, same_maps, tiny_run, write_spec  # noqa: F401  (tiny_run: fixture)

from xrl.bench import load_results, run_bench


def test_jobs_in_two_processes_give_the_in_process_results(tiny_run, tmp_path):  # noqa: F811
    folder, serial = tiny_run
    # the collected states are reused (the same data file), every job runs again in a worker
    (tmp_path / "out").mkdir()
    shutil.copytree(serial / "data", tmp_path / "out" / "data")
    out = run_bench(folder / "spec.toml", tmp_path / "out", processes=2, progress=False)
    pooled, alone = load_results(out), load_results(serial)
    assert pooled["jobs"] == alone["jobs"] == {"total": 6, "done": 6, "failed": 0, "missing": 0}
    assert comparable(pooled) == comparable(alone)
    workers = {g["worker"]["pid"] for g in _jobs(out)}
    assert len(workers) == 2  # both processes ran jobs
    same_maps(out, serial)


def _jobs(out):
    import json

    return [json.loads(p.read_text()) for p in (out / "jobs").rglob("*.json") if not p.name.endswith(".error.json")]


def test_processes_must_be_a_positive_integer_and_not_with_ray(tmp_path):
    path = write_spec(tmp_path)
    for bad in (0, -1, 1.5, True):
        with pytest.raises(ValueError, match="processes must be a positive integer"):
            run_bench(path, tmp_path / "out", processes=bad, progress=False)
    with pytest.raises(ValueError, match="either ray or processes"):
        run_bench(path, tmp_path / "out", processes=2, ray="auto", progress=False)
