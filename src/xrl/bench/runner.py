"""Run a spec's grid of jobs, in process or on Ray, into a results folder that resumes.

Results folder::

    spec.toml, spec.json          the spec as written and as resolved
    data/<agent>-seed<s>.h5        the collected states (``collect``, itself resumable)
    jobs/<agent>/seed<s>/<method>.json   one finished job (written last, atomically)
    jobs/<agent>/seed<s>/<method>.npz    its gallery maps (and every map with store_saliency)
    jobs/<agent>/seed<s>/<method>.error.json   a job that raised: error and traceback
    results.json, results.csv      every finished job merged (:mod:`xrl.bench.results`)

A job is one method on one (agent, seed): :func:`xrl.evaluation.evaluate` on the seeded sample of
states, plus the mean deletion/insertion curves. Jobs are functions of their inputs (one torch
thread each, seeded methods), so the results do not depend on where or in which order they run;
only ``cost`` metrics (wall time) differ from run to run.
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

import numpy as np
import torch
from tqdm.auto import tqdm

from xrl.agents.model import Model
from xrl.bench.layout import data_path, gallery_positions, is_done, job_paths
from xrl.bench.spec import Job, Spec, load_spec
from xrl.data.collect import collect
from xrl.data.dataset import StateDataset
from xrl.evaluation import evaluate
from xrl.files import DiskFull, FolderLock, atomic_path, is_disk_full, write_json
from xrl.metrics import METRICS, get_metric
from xrl.ops import chunks

CURVE_METRICS = ("deletion", "insertion")
__all__ = ["run_bench", "run_job", "job_paths", "data_path", "is_done", "gallery_positions", "save_job", "save_error"]


def run_job(job: Job, model: Model, data: str | os.PathLike) -> dict:
    """Compute one job; returns ``{"result": JSON-able dict, "arrays": {name: ndarray}}``."""
    threads = torch.get_num_threads()
    torch.set_num_threads(job.threads)
    started = time.perf_counter()
    try:
        saliency: dict[str, torch.Tensor] = {}
        with StateDataset.open(data) as ds:
            shared = [n for n in CURVE_METRICS if n in job.metrics]
            others = {k: v for k, v in job.metrics.items() if k not in shared} or job.metrics
            if others is job.metrics:
                shared = []  # only curve metrics: evaluate scores them, the curves are computed apart
            ev = evaluate(
                model,
                ds,
                {job.method: job.settings},
                others,
                n_states=job.n_states,
                seed=job.seed,
                saliency=saliency,
                progress=False,
            )
            rows = np.asarray(ev.rows)
            maps = saliency[job.method]  # (n, H, W)
            steps = ev.seconds.setdefault(job.method, {})  # explain + each metric
            curves = {}
            for name in CURVE_METRICS:
                if name in job.metrics:
                    curves[name] = _curve(ev, name, job, model, ds, rows, maps, steps, score=name in shared)
            if shared:  # columns in the spec's metric order, as evaluate gives them
                ev.columns = [
                    c for name in job.metrics for c in ev.columns + shared if c == name or c.startswith(f"{name}.")
                ]
            steps = dict(steps)
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
            "curves": curves,
            "seconds": time.perf_counter() - started,
            "seconds_by_step": steps,
            "worker": {"host": socket.gethostname(), "pid": os.getpid()},
        }
        return {"result": result, "arrays": arrays}
    finally:
        torch.set_num_threads(threads)


def _curve(
    ev,
    name: str,
    job: Job,
    model: Model,
    ds: StateDataset,
    rows: np.ndarray,
    maps: torch.Tensor,
    steps: dict,
    score: bool,
) -> dict:
    """The mean curve of deletion/insertion metric ``name`` over the job's states; with ``score``
    also its per-state values (the AUC of each state's curve, what ``metric.compute`` returns) put
    into ``ev``, so the curve is computed once. Chunks of 64 states as :func:`evaluate` scores
    them (its default ``batch_size``), so the values equal evaluate's bit for bit. Seconds go to
    ``steps["<name> curve"]`` (the curves) and, with ``score``, ``steps[name]`` (the values)."""
    started = time.perf_counter()
    metric = get_metric(name, **job.metrics[name])
    states = ds.states(rows)
    targets = torch.as_tensor(ds.actions[rows], dtype=torch.long, device="cpu")  # beside the dataset's states
    parts = [
        metric.curve(model=model, states=states[part], saliency=maps[part], targets=targets[part])  # type: ignore[attr-defined]
        for part in chunks(len(rows), 64)
    ]
    x, y = parts[0][0], torch.cat([scores for _, scores in parts])
    steps[f"{name} curve"] = time.perf_counter() - started
    if score:
        started = time.perf_counter()
        values = torch.cat([torch.trapezoid(scores, xs, dim=1).float() for xs, scores in parts])
        ev.values[job.method][name] = values.double().cpu().tolist()
        ev.higher_is_better[name] = metric.higher_is_better
        steps[name] = time.perf_counter() - started
    return {"x": x.tolist(), "y": y.mean(0).tolist()}


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


def _guarded(job: Job, model: Model, data) -> dict:
    """``run_job`` with any exception turned into an error record (the other jobs go on)."""
    try:
        return run_job(job, model, data)
    except Exception as err:  # noqa: BLE001 - a crashing job is recorded, not fatal
        return {"error": f"{type(err).__name__}: {err}", "traceback": traceback.format_exc()}


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
    address of a running cluster (``host:port`` or ``ray://host:port``). One run at a time per
    results folder (``out/.lock``, :class:`xrl.files.FolderLock`)."""
    spec = spec if isinstance(spec, Spec) else load_spec(spec)
    out = Path(out) if out is not None else Path("bench-results") / spec.name
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
    out.mkdir(parents=True, exist_ok=True)
    with FolderLock(out / ".lock", str(out), "wait for it to finish or use another results folder (--out)"):
        return _run_bench(spec, out, ray=ray, workers=workers, processes=processes, progress=progress)


def _run_bench(spec: Spec, out: Path, *, ray, workers, processes, progress) -> Path:
    """:func:`run_bench` once it holds the results folder's lock."""
    from xrl.bench.results import merge

    if spec.text is not None:
        with atomic_path(out / "spec.toml") as tmp:
            tmp.write_text(spec.text)
    write_json(out / "spec.json", spec.resolved())

    for agent in spec.agents:  # collect the states once per (agent, seed); resumable
        for seed in spec.seeds if agent.data is None else ():
            collect(
                spec.models[agent.name],
                episodes=agent.episodes,
                out=data_path(out, spec, agent.name, seed),
                env=agent.env,
                env_settings=agent.env_settings,
                seed=seed,
                max_steps=agent.max_steps,
                sample=agent.sample,
                progress=progress,
            )

    jobs = spec.jobs()
    todo = [j for j in jobs if not is_done(out, j)]
    if progress:
        print(
            f"xrl bench {spec.name}: {len(jobs)} jobs, {len(jobs) - len(todo)} already done, "
            f"{len(todo)} to run ({'on Ray' if ray is not None else f'in {processes} processes' if processes and processes > 1 else 'in process'}) -> {out}"
        )
    failed = 0
    with tqdm(
        total=len(jobs), initial=len(jobs) - len(todo), unit="job", desc=f"bench {spec.name}", disable=not progress
    ) as bar:
        run = (
            _on_ray(ray, workers)
            if ray is not None
            else _in_processes(min(processes, len(todo)))
            if processes and processes > 1 and len(todo) > 1
            else _in_process
        )
        try:
            for job, output in run(todo, spec, out):
                if "error" in output:
                    failed += 1
                    save_error(out, job, output["error"], output["traceback"])
                else:
                    save_job(out, job, output)
                bar.update(1)
                bar.set_postfix_str(
                    f"{job.id} {'FAILED' if 'error' in output else 'done'}" + (f", {failed} failed" if failed else "")
                )
            merge(spec, out)
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
    return out


def _in_process(todo: list[Job], spec: Spec, out: Path) -> Iterator[tuple[Job, dict]]:
    for job in todo:
        yield job, _guarded(job, spec.models[job.agent], data_path(out, spec, job.agent, job.seed))


def _in_processes(n: int) -> Callable:
    """Jobs in ``n`` fresh local processes (spawned: no state inherited from this one), yielded
    as they finish; the longest kinds of job start first so the last ones to finish are short."""

    def run(todo: list[Job], spec: Spec, out: Path) -> Iterator[tuple[Job, dict]]:
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor, as_completed

        order = sorted(todo, key=lambda j: SLOW_FIRST.index(j.method) if j.method in SLOW_FIRST else len(SLOW_FIRST))
        with ProcessPoolExecutor(n, mp_context=multiprocessing.get_context("spawn"), initializer=_worker_start) as pool:
            running = {
                pool.submit(_guarded, job, spec.models[job.agent], data_path(out, spec, job.agent, job.seed)): job
                for job in order
            }
            for done in as_completed(running):
                yield running[done], done.result()

    return run


#: jobs started first by :func:`_in_processes` (the slowest methods of the quick bench)
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


def _remote_job(job: Job, model: Model, blob: bytes, digest: str) -> dict:
    return _guarded(job, model, _local_copy(blob, digest))


def _on_ray(address: str, workers: int | None) -> Callable:
    import hashlib

    try:
        import ray
    except ImportError:
        raise ValueError("--ray needs Ray: pip install 'xrl[ray]'") from None

    def run(todo: list[Job], spec: Spec, out: Path) -> Iterator[tuple[Job, dict]]:
        started = False
        if not ray.is_initialized():
            if address == "auto":
                start_local_ray(workers)
            else:
                ray.init(address=address, log_to_driver=False, configure_logging=False)
            started = True
        try:
            if not todo:
                return
            remote = ray.remote(num_cpus=1, max_retries=0)(_remote_job)
            models = {a: ray.put(spec.models[a]) for a in {j.agent for j in todo}}
            blobs = {}
            for j in todo:
                path = data_path(out, spec, j.agent, j.seed)
                if path not in blobs:
                    blob = path.read_bytes()
                    blobs[path] = (ray.put(blob), hashlib.sha256(blob).hexdigest()[:16])
            pending = {}
            for j in todo:
                blob, digest = blobs[data_path(out, spec, j.agent, j.seed)]  # type: ignore[assignment]
                pending[remote.remote(j, models[j.agent], blob, digest)] = j
            while pending:
                done, _ = ray.wait(list(pending), num_returns=1)
                for ref in done:
                    job = pending.pop(ref)
                    try:
                        output = ray.get(ref)
                    except Exception as err:  # noqa: BLE001 - the worker died: record it, go on
                        output = {"error": f"{type(err).__name__}: {err}", "traceback": str(err)}
                    yield job, output
        finally:
            if started:
                ray.shutdown()

    return run
