"""A full disk during ``xrl collect`` and ``xrl bench`` (issue 46) is one line saying what was kept,
exit 2, and the same command run again once space is free ends with what an uninterrupted run
writes. The full disk is injected: the free space the writer checks before each HDF5 write
(``xrl.files.free_bytes``; HDF5 cannot recover from a write failing inside it), the ``ENOSPC``
that HDF5 raises as a ``RuntimeError``, and the one ``numpy.savez`` raises as an ``OSError``."""

from __future__ import annotations

import errno
import json

import h5py
import numpy as np
import pytest

import xrl.files
from xrl.cli import main

COLLECT = ["collect", "--agent", "red-fetch-green", "--episodes", "4", "--max-steps", "5"]
ARRAYS = ("states", "frames", "actions", "scores", "episode", "step", "episode_returns", "episode_lengths")


def content(path) -> dict:
    with h5py.File(path, "r") as f:
        return {
            **{k: f[k][()] for k in ARRAYS},
            **{k: str(f.attrs[k]) for k in ("env", "agent", "action_names", "collect", "n_episodes")},
        }


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    out = tmp_path_factory.mktemp("whole") / "d.h5"
    assert main([*COLLECT, "--out", str(out)]) == 0
    return content(out)


def _same(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for k in a:
        assert np.array_equal(a[k], b[k]) if isinstance(a[k], np.ndarray) else a[k] == b[k], k


def test_collect_on_a_full_disk_keeps_its_episodes_and_resumes(tmp_path, capsys, monkeypatch, uninterrupted):
    out = tmp_path / "d.h5"
    partial = tmp_path / "d.h5.partial"
    real = xrl.files.free_bytes

    def free(path):  # the disk fills up once two episodes are written
        return 0 if len(list(partial.glob("[0-9]*.h5"))) >= 2 else real(path)

    monkeypatch.setattr(xrl.files, "free_bytes", free)
    capsys.readouterr()
    assert main([*COLLECT, "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert "Traceback" not in "\n".join(err)
    assert err[-1].startswith(
        f"xrl collect: error: the disk of {partial} is full (0.0 MB free, step 0 of episode 2 needs "
    )
    assert err[-1].endswith(
        f"the 2 finished episodes are kept in {partial}: free space and run the same collection again to resume"
    )
    assert not out.exists() and sorted(p.name for p in partial.iterdir()) == ["0000000.h5", "0000001.h5", "meta.json"]
    monkeypatch.setattr(xrl.files, "free_bytes", real)  # space is freed
    assert main([*COLLECT, "--out", str(out)]) == 0
    _same(content(out), uninterrupted)


def test_hdf5s_own_disk_full_error_is_one_line_and_resumes(tmp_path, capsys, monkeypatch, uninterrupted):
    """What h5py raises when a write fails for want of space (a RuntimeError quoting errno 28)."""
    from xrl.data.dataset import StateDatasetWriter

    out, calls = tmp_path / "d.h5", []
    commit = StateDatasetWriter.end_episode

    def end_episode(self, episode_return):
        calls.append(1)
        if len(calls) == 3:
            raise RuntimeError(
                "Can't close dataset (file write failed: time = Mon Dec  7 17:25:56 2026, filename = "
                "'episode.tmp', file descriptor = 3, errno = 28, error message = 'No space left on device', "
                "buf = 0x5590566cf41b, total write size = 8521, bytes this sub-write = 8521, offset = 53248)"
            )
        return commit(self, episode_return)

    monkeypatch.setattr(StateDatasetWriter, "end_episode", end_episode)
    capsys.readouterr()
    assert main([*COLLECT, "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    partial = tmp_path / "d.h5.partial"
    assert err[-1] == (
        f"xrl collect: error: the disk of {out} is full (No space left on device) after 2 of 4 episodes; they are "
        f"kept in {partial}: free space and run the same command again to resume"
    )
    assert sorted(p.name for p in partial.iterdir()) == ["0000000.h5", "0000001.h5", "meta.json"]  # no episode.tmp
    monkeypatch.setattr(StateDatasetWriter, "end_episode", commit)
    assert main([*COLLECT, "--out", str(out)]) == 0
    _same(content(out), uninterrupted)


@pytest.mark.slow
def test_bench_on_a_full_disk_keeps_its_jobs_and_resumes(tmp_path, capsys, monkeypatch):
    import xrl.bench.runner as runner

    monkeypatch.chdir(tmp_path)
    (tmp_path / "spec.toml").write_text(
        "methods = ['random', 'gradient', 'grad_cam']\nmetrics = ['sparseness']\nn_states = 4\n"
        "[[agents]]\nagent = 'red-fetch-green'\nepisodes = 2\nmax_steps = 5\n"
    )
    assert main(["bench", "spec.toml", "--out", "whole"]) == 0
    save, saved = runner.save_job, []

    def save_job(out, job, output):
        if len(saved) == 1:
            raise OSError(errno.ENOSPC, "No space left on device")
        saved.append(job)
        return save(out, job, output)

    monkeypatch.setattr(runner, "save_job", save_job)
    capsys.readouterr()
    assert main(["bench", "spec.toml", "--out", "res"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert "Traceback" not in "\n".join(err)
    assert err[-1] == (
        "xrl bench: error: the disk of res is full (No space left on device) after 1 of 3 jobs; the finished jobs "
        "are kept: free space and run the same command again to resume"
    )
    monkeypatch.setattr(runner, "save_job", save)
    assert main(["bench", "spec.toml", "--out", "res"]) == 0

    def values(folder):
        doc = json.loads((tmp_path / folder / "results.json").read_text())
        return [{k: v for k, v in g.items() if k not in ("seconds", "seconds_by_step")} for g in doc["groups"]]

    assert set(values("whole")[0]["means"]) == {"random", "gradient", "grad_cam"}
    assert values("res") == values("whole")
