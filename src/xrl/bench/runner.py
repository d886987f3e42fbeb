"""Run a spec's grid of jobs, in process or on Ray, into a results folder that resumes.

Results folder::

    spec.toml, spec.json          the spec as written and as resolved
    data/<agent>-seed<s>.h5        the collected states (``collect``, itself resumable)
    jobs/<agent>/seed<s>/<method>.json   one finished job (written last, atomically)
    jobs/<agent>/seed<s>/<method>.npz    its gallery maps (and every map with store_saliency)
    jobs/<agent>/seed<s>/<method>.error.json   a job that raised: error and traceback
    results.json, results.csv      every finished job merged (:mod:`xrl.bench.results`)

A job is one method on one (agent, seed): one call into the pipeline
(:func:`xrl.pipeline.evaluate_batch`, what :func:`xrl.evaluation.evaluate` runs) on the seeded
sample of states, with the mean deletion/insertion curves. Jobs are functions of their inputs (one
torch thread each, seeded methods), so the results do not depend on where or in which order they
run; only ``cost`` metrics (wall time) differ from run to run.

Before anything is written, :func:`prepare` (:mod:`xrl.bench.prepare`) loads the agents and checks
what the spec alone cannot tell. Jobs compute on the spec's ``device``; on Ray each asks for
``gpus_per_job`` GPUs (``num_gpus``).
"""

from __future__ import annotations

import errno
import os
import socket
import tempfile
import time
import traceback
from collections.abc import Callable, Iterator
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from xrl.agents.model import Model
from xrl.bench.layout import Plan, data_path, gallery_positions, is_done, job_paths, plan
from xrl.bench.prepare import prepare
from xrl.bench.spec import Job, Spec, load_spec
from xrl.data.collect import collect
from xrl.data.dataset import StateDataset
from xrl.files import DiskFull, FolderLock, atomic_path, is_disk_full, write_json
from xrl.metrics import METRICS
from xrl.ops import resolve_device
from xrl.pipeline import Batch, Evaluation, evaluate_batch, read_batch, sample_rows

CURVE_METRICS = ("deletion", "insertion")
__all__ = [
    "run_bench",
    "run_job",
    "prepare",
    "job_paths",
    "data_path",
    "is_done",
    "gallery_positions",
    "save_job",
    "save_error",
]


def run_job(job: Job, model: Model, data: str | os.PathLike, device: str | torch.device = "cpu") -> dict:
    """Compute one job on ``device`` (``"auto"``: CUDA when this machine has one; the model and
    the states are moved there): one call into :func:`xrl.pipeline.evaluate_batch` on the seeded
    sample of the dataset's states. Returns ``{"result": JSON-able dict, "arrays": {name: ndarray}}``,
    values and maps on the CPU."""
    threads = torch.get_num_threads()
    torch.set_num_threads(job.threads)
    started = time.perf_counter()
    try:
        where = resolve_device(device)
        model = model.to(where)
        with StateDataset.open(data) as ds:
            batch = _on(read_batch(model, ds, sample_rows(len(ds), job.n_states, job.seed)), where)
        saliency: dict[str, torch.Tensor] = {}
        ev = evaluate_batch(
            model,
            batch,
            {job.method: job.settings},
            job.metrics,
            curves=[name for name in CURVE_METRICS if name in job.metrics],
            saliency=saliency,
        )
        return _output(job, ev, saliency[job.method].cpu(), time.perf_counter() - started)
    finally:
        torch.set_num_threads(threads)


def _on(batch: Batch, device: torch.device) -> Batch:
    """``batch`` with its states, targets and labels on ``device`` (itself on the CPU)."""
    if device.type == "cpu":
        return batch
    labels = batch.labels.to(device) if batch.labels is not None else None
    return Batch(batch.rows, batch.states.to(device), batch.targets.to(device), labels, batch.recurrent)


def _output(job: Job, ev: Evaluation, maps: torch.Tensor, seconds: float) -> dict:
    """A finished job as :func:`save_job` writes it: the result JSON (values, means, the mean
    deletion/insertion curves, seconds per step) and the arrays of its ``.npz`` (gallery maps)."""
    rows = np.asarray(ev.rows)
    pick = gallery_positions(len(rows), job.gallery)
    arrays = {"gallery": maps[pick].numpy(), "gallery_rows": rows[pick]}
    if job.store_saliency:
        arrays.update(saliency=maps.numpy(), rows=rows)
    result = {
        "job": {**asdict(job), "id": job.id, "key": job.key},
        "rows": ev.rows,
        "columns": ev.columns,
        "higher_is_better": ev.higher_is_better,
        "categories": {c: METRICS.get(c.partition(".")[0]).category for c in ev.columns},
        "values": ev.values[job.method],
        "means": ev.means()[job.method],
        "skipped": ev.skipped,
        "curves": ev.curves.get(job.method, {}),
        "seconds": seconds,
        "seconds_by_step": ev.seconds[job.method],
        "worker": {"host": socket.gethostname(), "pid": os.getpid()},
    }
    return {"result": result, "arrays": arrays}


def save_job(out: Path, job: Job, output: dict) -> None:
    """Write a finished job: maps first, then the JSON that marks it done (both atomic)."""
    paths = job_paths(out, job)
    with atomic_path(paths["npz"]) as tmp:
        with open(tmp, "wb") as f:
            np.savez_compressed(f, **output["arrays"])
    write_json(paths["json"], output["result"])
    paths["error"].unlink(missing_ok=True)


def save_error(out: Path, job: Job, error: str, trace: str) -> None:
    write_json(
        job_paths(out, job)["error"],
        {"job": {**asdict(job), "id": job.id, "key": job.key}, "error": error, "traceback": trace},
    )


def _guarded(job: Job, model: Model, data, device: str = "cpu") -> dict:
    """``run_job`` with any exception turned into an error record (the other jobs go on)."""
    try:
        return run_job(job, model, data, device)
    except Exception as err:  # noqa: BLE001 - a crashing job is recorded, not fatal
        return {"error": f"{type(err).__name__}: {err}", "traceback": traceback.format_exc()}


#: one job to run: the job, its agent and its dataset file
Task = tuple[Job, Model, Path]


def run_bench(
    spec: Spec | str | os.PathLike,
    out: str | os.PathLike | None = None,
    *,
    ray: str | None = None,
    workers: int | None = None,
    processes: int | None = None,
    progress: bool = True,
) -> Path:
    """Run every job of ``spec`` not already finished in ``out``; merge; return ``out``.

    ``ray=None`` runs the jobs one after another in this process, or, with ``processes=n``
    (n > 1), in ``n`` local worker processes (no Ray; each job on its ``threads`` as always, so
    the results are the same but for ``cost`` metrics); ``"auto"`` starts a local Ray
    (``workers`` CPUs, default all) or uses the one already initialised; any other value is the
    address of a running cluster (``host:port`` or ``ray://host:port``). On Ray each job asks
    for ``spec.gpus()`` GPUs (``gpus_per_job``). Jobs compute on the spec's ``device``. Before
    anything is written the agents are loaded and what needs them is checked (:func:`prepare`).
    One run at a time per results folder (``out/.lock``, :class:`xrl.files.FolderLock`)."""
    _check_executor(ray, workers, processes)
    here = ray is None or ray == "auto"  # this machine runs the jobs (not a cluster's workers)
    spec = spec if isinstance(spec, Spec) else load_spec(spec)
    spec, models = prepare(spec, here=here)
    out = Path(out) if out is not None else Path("bench-results") / spec.name
    out.mkdir(parents=True, exist_ok=True)
    laid = plan(spec, out)
    run = _on_ray(ray, workers, spec.device, spec.gpus()) if ray is not None else _locally(processes or 1, spec.device)
    with FolderLock(out / ".lock", str(out), "wait for it to finish or use another results folder (--out)"):
        if spec.text is not None:  # the spec as written (spec.toml) and as resolved (spec.json)
            with atomic_path(out / "spec.toml") as tmp:
                tmp.write_text(spec.text)
        write_json(out / "spec.json", laid.resolved)
        for agent, seed in laid.collections:  # the states, once per (agent, seed), resumable
            collect(
                models[agent.name],
                episodes=agent.episodes,
                out=laid.data[agent.name, seed],
                env=agent.env,
                env_settings=agent.env_settings,
                seed=seed,
                max_steps=agent.max_steps,
                sample=agent.sample,
                progress=progress,
            )
        _run_jobs(laid, models, run, progress)
    return out


def _check_executor(ray: str | None, workers: int | None, processes: int | None) -> None:
    """Where the jobs run: one of in process, ``processes`` local processes, a local Ray of
    ``workers`` CPUs, a reachable Ray cluster."""
    if workers is not None and (isinstance(workers, bool) or not isinstance(workers, int) or workers < 1):
        raise ValueError(f"workers must be a positive integer, got {workers!r}")
    if workers is not None and ray != "auto":
        raise ValueError("workers sets the CPUs of a local Ray: use it with ray='auto' (--ray auto)")
    if processes is not None and (isinstance(processes, bool) or not isinstance(processes, int) or processes < 1):
        raise ValueError(f"processes must be a positive integer, got {processes!r}")
    if processes is not None and processes > 1 and ray is not None:
        raise ValueError("processes runs jobs in local processes without Ray; give either ray or processes")
    if ray is not None and ray != "auto":
        check_reachable(ray)


def _run_jobs(laid: Plan, models: dict[str, Model], run: Callable, progress: bool) -> None:
    """The jobs not already done, run by ``run`` (an executor) and saved as they finish; then the merge."""
    from xrl.bench.results import write_results

    spec, out, jobs = laid.spec, laid.out, laid.jobs
    todo = [(j, models[j.agent], laid.data[j.agent, j.seed]) for j in jobs if not is_done(out, j)]
    if progress:
        print(
            f"xrl bench {spec.name}: {len(jobs)} jobs, {len(jobs) - len(todo)} already done, "
            f"{len(todo)} to run ({getattr(run, 'where', 'in process')}) -> {out}"
        )
    failed = 0
    with tqdm(
        total=len(jobs), initial=len(jobs) - len(todo), unit="job", desc=f"bench {spec.name}", disable=not progress
    ) as bar:
        try:
            for job, output in run(todo):
                failed += "error" in output
                if "error" in output:
                    save_error(out, job, output["error"], output["traceback"])
                else:
                    save_job(out, job, output)
                bar.update(1)
                bar.set_postfix_str(
                    f"{job.id} {'FAILED' if 'error' in output else 'done'}" + (f", {failed} failed" if failed else "")
                )
            write_results(laid)
        except OSError as err:
            if not is_disk_full(err):
                raise
            done = sum(is_done(out, j) for j in jobs)
            raise DiskFull(
                errno.ENOSPC,
                f"the disk of {out} is full (No space left on device) after {done} of {len(jobs)} jobs; the finished "
                "jobs are kept: free space and run the same command again to resume",
            ) from None
    if progress:
        print(
            f"wrote {out}/results.json and results.csv"
            + (f"; {failed} job(s) failed (see results.json)" if failed else "")
        )


def _locally(n: int, device: str) -> Callable:
    """Jobs on this machine: one after another in this process (``n == 1``, or fewer than two
    jobs: not worth starting processes), else in ``n`` fresh local processes (spawned: no state
    inherited from this one), yielded as they finish; the longest kinds of job start first so the
    last ones to finish are short."""

    def run(todo: list[Task]) -> Iterator[tuple[Job, dict]]:
        if n == 1 or len(todo) < 2:
            for job, model, data in todo:
                yield job, _guarded(job, model, data, device)
            return
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor, as_completed

        order = sorted(
            todo, key=lambda t: SLOW_FIRST.index(t[0].method) if t[0].method in SLOW_FIRST else len(SLOW_FIRST)
        )
        context = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(min(n, len(todo)), mp_context=context, initializer=_worker_start) as pool:
            running = {pool.submit(_guarded, job, model, data, device): job for job, model, data in order}
            for done in as_completed(running):
                yield running[done], done.result()

    run.where = "in process" if n == 1 else f"in {n} processes"  # type: ignore[attr-defined]
    return run


#: jobs started first by :func:`_locally` (the slowest methods of the quick bench)
SLOW_FIRST = (
    "extremal_perturbation",
    "rise",
    "lime",
    "greydanus",
    "occlusion",
    "sarfa",
    "rexl",
    "integrated_gradients",
    "smoothgrad",
)


def _worker_start() -> None:
    """A worker process: xrl's allocator settings, as the ``xrl`` command has them."""
    from xrl.ops import tune_malloc

    tune_malloc()


def check_reachable(address: str, timeout: float = 5.0) -> None:
    """Fail fast, with a clear message, when nothing listens at a Ray ``address``."""
    hostport = address.removeprefix("ray://")
    host, _, port = hostport.rpartition(":")
    if not host or not port.isdigit():
        raise ValueError(f"--ray takes 'auto' or a cluster address host:port (or ray://host:port), got {address!r}")
    try:
        socket.create_connection((host, int(port)), timeout=timeout).close()
    except OSError as err:
        raise ValueError(
            f"no Ray cluster reachable at {address} ({err}); start one with "
            "`ray start --head` or use --ray auto for a local one"
        ) from None


def start_local_ray(workers: int | None = None, **kwargs) -> None:
    """``ray.init`` of a local Ray with ``workers`` CPUs (default all), no dashboard.

    Its workers run at normal priority: Ray's default (nice 15) would leave them only the CPU
    time other programs do not use, so a local Ray would lose to an in-process run on a busy
    machine."""
    import ray

    ray.init(
        num_cpus=workers or os.cpu_count(),
        include_dashboard=False,
        log_to_driver=False,
        configure_logging=False,
        _system_config={"worker_niceness": 0},
        **kwargs,
    )


def _local_copy(blob: bytes, digest: str) -> Path:
    """The dataset file on a Ray worker: written once per machine from the object store."""
    path = Path(tempfile.gettempdir()) / "xrl-bench-data" / f"{digest}.h5"
    if not path.exists():
        with atomic_path(path) as tmp:
            tmp.write_bytes(blob)
    return path


def _remote_job(job: Job, model: Model, blob: bytes, digest: str, device: str = "cpu") -> dict:
    return _guarded(job, model, _local_copy(blob, digest), device)


def _on_ray(address: str, workers: int | None, device: str, gpus: float) -> Callable:
    """Jobs as Ray tasks of one CPU and ``gpus`` GPUs (``num_gpus``), on a local Ray (``"auto"``,
    ``workers`` CPUs) or the cluster at ``address``; the agents and dataset files travel through
    the object store once per run."""
    try:
        import ray
    except ImportError:
        raise ValueError("--ray needs Ray: pip install 'xrl[ray]'") from None

    def run(todo: list[Task]) -> Iterator[tuple[Job, dict]]:
        started = False
        if not ray.is_initialized():
            if address == "auto":
                start_local_ray(workers)
            else:
                ray.init(address=address, log_to_driver=False, configure_logging=False)
            started = True
        try:
            if todo:
                yield from _ray_tasks(ray, todo, device, gpus)
        finally:
            if started:
                ray.shutdown()

    run.where = "on Ray"  # type: ignore[attr-defined]
    return run


def _ray_tasks(ray, todo: list[Task], device: str, gpus: float) -> Iterator[tuple[Job, dict]]:
    """Submit every task, yield each result as it finishes (a dead worker: an error record)."""
    import hashlib

    remote = ray.remote(num_cpus=1, max_retries=0)(_remote_job).options(num_gpus=gpus)
    models: dict[int, Any] = {}
    blobs: dict[Path, tuple] = {}
    pending = {}
    for job, model, path in todo:
        if id(model) not in models:
            models[id(model)] = ray.put(model)
        if path not in blobs:
            blob = path.read_bytes()
            blobs[path] = (ray.put(blob), hashlib.sha256(blob).hexdigest()[:16])
        pending[remote.remote(job, models[id(model)], *blobs[path], device)] = job
    while pending:
        done, _ = ray.wait(list(pending), num_returns=1)
        for ref in done:
            job = pending.pop(ref)
            try:
                output = ray.get(ref)
            except Exception as err:  # noqa: BLE001 - the worker died: record it, go on
                output = {"error": f"{type(err).__name__}: {err}", "traceback": str(err)}
            yield job, output
