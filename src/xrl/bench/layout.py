"""The layout of a bench results folder (module docstring of :mod:`xrl.bench.runner`): where a
job's files live, whether a job is done, which states go to the gallery, and reading a job's
maps. Shared by the runner (writes), :mod:`xrl.bench.results` (merges) and :mod:`xrl.report`
(reads), so none of them imports another for these.
"""

from __future__ import annotations

import io
import json
import os
from pathlib import Path

import numpy as np

from xrl.bench.spec import Job, Spec


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
