"""The layout of a bench results folder (module docstring of :mod:`xrl.bench.runner`): where a
job's files live, how the results name them, whether a job is done, which states go to the
gallery, and reading a job's maps. Shared by the runner (writes), :mod:`xrl.bench.results`
(merges) and :mod:`xrl.report` (reads), so none of them imports another for these.

A prepared spec is laid out in its folder once (:func:`plan`): the grid of jobs, the dataset of
each (agent, seed), the collections to make and the spec as recorded. The runner and the merge
read that :class:`Plan` instead of asking the spec again.
"""

from __future__ import annotations

import io
import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from xrl.bench.spec import AgentSpec, Job, Spec


@dataclass(frozen=True)
class Plan:
    """A prepared spec laid out in the results folder ``out`` (:func:`plan`)."""

    out: Path
    spec: Spec
    resolved: dict
    """the spec with every choice made (:meth:`Spec.resolved`), as ``spec.json`` and ``results.json`` record it"""
    jobs: list[Job]
    """the grid (:meth:`Spec.jobs`)"""
    data: dict[tuple[str, int], Path]
    """the dataset of each (agent, seed) (:func:`data_path`)"""
    collections: list[tuple[AgentSpec, int]]
    """the (agent, seed) whose states are collected into their dataset (agents without a ``data`` file)"""


def plan(spec: Spec, out: str | os.PathLike) -> Plan:
    """``spec`` (prepared: its jobs final) laid out in the results folder ``out``, once."""
    out = Path(out)
    data = {(a.name, s): data_path(out, spec, a.name, s) for a in spec.agents for s in spec.seeds}
    collections = [(a, s) for a in spec.agents if a.data is None for s in spec.seeds]
    return Plan(out, spec, spec.resolved(), spec.jobs(), data, collections)


def job_paths(out: Path, job: Job) -> dict[str, Path]:
    """A job's result JSON, maps ``.npz`` and error JSON under ``out/jobs/<agent>/seed<s>/``."""
    stem = Path(out) / "jobs" / job.agent / f"seed{job.seed}" / job.method
    return {
        "json": stem.with_suffix(".json"),
        "npz": stem.with_suffix(".npz"),
        "error": stem.with_name(stem.name + ".error.json"),
    }


def data_path(out: Path, spec: Spec, agent: str, seed: int) -> Path:
    """The dataset of ``agent`` and ``seed``: the spec's ``data`` file, else ``out/data/<agent>-seed<s>.h5``."""
    a = next(x for x in spec.agents if x.name == agent)
    return Path(a.data) if a.data else Path(out) / "data" / f"{agent}-seed{seed}.h5"


def is_done(out: Path, job: Job) -> bool:
    """A finished result of exactly this job (same settings, same metrics) is on disk."""
    path = job_paths(out, job)["json"]
    if not path.exists():
        return False
    try:
        return json.loads(path.read_text())["job"]["key"] == job.key
    except (ValueError, KeyError):
        return False


def relative(path: Path, out: Path) -> str:
    """``path`` as the results record it: relative to the folder ``out`` when inside it, else absolute."""
    try:
        return str(Path(path).resolve().relative_to(Path(out).resolve()))
    except ValueError:
        return str(Path(path).resolve())


def gallery_positions(n: int, k: int) -> np.ndarray:
    """``k`` positions spread over ``n`` sampled states (the same for every method)."""
    if k == 0 or n == 0:
        return np.zeros(0, dtype=int)
    return np.unique(np.linspace(0, n - 1, min(k, n)).round().astype(int))


def read_npz(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """The arrays of a job's ``.npz`` (read whole, so no file handle stays open; never unpickled).
    A damaged file is named in a ``ValueError``."""
    import zipfile

    blob = Path(path).read_bytes()  # a missing file: FileNotFoundError with its path
    try:
        with np.load(io.BytesIO(blob), allow_pickle=False) as f:
            return {k: f[k] for k in f.files}
    except (zipfile.BadZipFile, ValueError, OSError, EOFError, KeyError) as err:
        raise ValueError(
            f"{path} is not a readable job file ({type(err).__name__}: {err}); delete it and run "
            "`xrl bench` again to recompute the job"
        ) from None
