"""``xrl bench`` on a local Ray with 2 workers against in process, on this machine.

Two grids, each run through :func:`xrl.bench.run_bench` (the real code path: job expansion,
evaluate, result files, merge) into a fresh results folder, in process and on Ray alternately
(``repeats`` times each) so load from other processes hits both alike:

- ``cpu``: CPU-bound jobs (the perturbation methods on the zoo Red-Fetch-Green agent,
  3 seeds x 4 methods = 12 jobs of one to a few seconds). Target: Ray with 2 workers >= 1.6x faster
  than in process (jobs use one torch thread each in both cases, the bench default); the
  in-process run with 2 torch threads per job is timed too, for reference.
- ``trivial``: ``random`` maps of 1 state scored by ``sparseness``, 40 jobs: the per-job
  overhead of each executor (Ray: task submission, pickling the job, result transfer).

The states are collected once beforehand (``data =`` in the spec), so collection is not timed.
Ray is started once (``start_local_ray(2)``, as ``--ray auto --workers 2`` does: workers at normal
priority); its start-up is reported separately.
Writes ``benchmarks/results/bench_ray.json``. Run::

    .venv/bin/python benchmarks/bench_ray.py [--repeats 3]

The speed-up needs two free cores. Other busy processes take CPU time from the two workers and
the single in-process job alike, and with Linux autogroup scheduling (recorded in the results)
another busy login session leaves this one about one core in all, so two workers cannot beat one
process. The benchmark therefore also records ``parallel_capacity``: the total work of two busy
processes of this session over one, before and after — the best speed-up any executor could
reach at the time.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import ray
import torch
from common import write_result

import xrl
from xrl.bench import load_results, parse_spec, run_bench
from xrl.bench.runner import start_local_ray
from xrl.data.collect import collect

CPU_METHODS = {
    "greydanus": {"radius": 4, "stride": 4},
    "occlusion": {},
    "rise": {"n_masks": 600},
    "sarfa": {"radius": 4, "stride": 4},
}
CPU_SEEDS = [0, 1, 2]


def grid(data: Path, *, methods: dict, metrics: dict, seeds: list[int], n_states: int, threads: int = 1):
    return parse_spec(
        {
            "name": "bench-ray",
            "seeds": seeds,
            "n_states": n_states,
            "threads": threads,
            "gallery": 1,
            "methods": list(methods),
            "metrics": list(metrics),
            "method_settings": {m: s for m, s in methods.items() if s},
            "metric_settings": {m: s for m, s in metrics.items() if s},
            "agents": [{"agent": "red-fetch-green", "data": str(data)}],
        }
    )


def _autogroup() -> str:
    """Linux autogroup scheduling splits the CPU between sessions, not processes: with another
    session busy, this one gets about one of the two cores however many workers it runs."""
    try:
        enabled = Path("/proc/sys/kernel/sched_autogroup_enabled").read_text().strip() == "1"
        return f"enabled, this process in {Path('/proc/self/autogroup').read_text().strip()}" if enabled else "disabled"
    except OSError:
        return "unknown"


def _spin(seconds: float, out) -> None:
    n, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        n += 1
    out.put(n)


def parallel_capacity(seconds: float = 3.0) -> float:
    """Total work two busy processes of this session do, over one: the best speed-up any
    executor can reach here right now (about 2 on two free cores, about 1 when this session
    gets one core)."""
    import multiprocessing as mp

    totals = []
    for k in (1, 2):
        q = mp.Queue()
        procs = [mp.Process(target=_spin, args=(seconds, q)) for _ in range(k)]
        for p in procs:
            p.start()
        totals.append(sum(q.get() for _ in procs))
        for p in procs:
            p.join()
    return totals[1] / totals[0]


def timed(spec, folder: Path, ray_address: str | None) -> float:
    shutil.rmtree(folder, ignore_errors=True)
    start = time.perf_counter()
    run_bench(spec, folder, ray=ray_address, progress=False)
    seconds = time.perf_counter() - start
    failed = load_results(folder)["failed"]
    if failed:  # a timing of failed jobs means nothing
        raise SystemExit(f"{len(failed)} job(s) failed, e.g. {failed[0]['id']}: {failed[0]['error']}")
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--trivial-jobs", type=int, default=40)
    args = parser.parse_args()

    load_at_start = os.getloadavg()
    capacity = [parallel_capacity()]
    work = Path(tempfile.mkdtemp(prefix="bench_ray"))
    model = xrl.load_agent("red-fetch-green")
    data = collect(model, episodes=8, out=work / "states.h5", progress=False)
    cpu = grid(
        data,
        methods=CPU_METHODS,
        metrics={"deletion": {}, "insertion": {}, "sparseness": {}},
        seeds=CPU_SEEDS,
        n_states=16,
    )
    cpu2 = grid(
        data,
        methods=CPU_METHODS,
        metrics={"deletion": {}, "insertion": {}, "sparseness": {}},
        seeds=CPU_SEEDS,
        n_states=16,
        threads=2,
    )
    trivial = grid(
        data, methods={"random": {}}, metrics={"sparseness": {}}, seeds=list(range(args.trivial_jobs)), n_states=1
    )

    start = time.perf_counter()
    start_local_ray(2)
    ray_start = time.perf_counter() - start
    # one untimed run each: Ray's workers import torch and xrl once
    timed(trivial, work / "warm-ray", "auto")
    timed(trivial, work / "warm", None)

    times: dict[str, list[float]] = {
        k: [] for k in ("cpu/in_process", "cpu/in_process_2_threads", "cpu/ray", "trivial/in_process", "trivial/ray")
    }
    for r in range(args.repeats):
        times["cpu/in_process"].append(timed(cpu, work / "a", None))
        times["cpu/ray"].append(timed(cpu, work / "b", "auto"))
        times["cpu/in_process_2_threads"].append(timed(cpu2, work / "c", None))
        times["trivial/in_process"].append(timed(trivial, work / "d", None))
        times["trivial/ray"].append(timed(trivial, work / "e", "auto"))
        print(f"repeat {r}: " + ", ".join(f"{k} {v[-1]:.2f} s" for k, v in times.items()), flush=True)
    ray.shutdown()
    shutil.rmtree(work, ignore_errors=True)
    capacity.append(parallel_capacity())

    best = {k: min(v) for k, v in times.items()}
    # each repeat runs both executors back to back, so they saw similar load from other processes
    paired = [a / b for a, b in zip(times["cpu/in_process"], times["cpu/ray"])]
    n_cpu, n_trivial = len(cpu.jobs()), len(trivial.jobs())
    speedup = best["cpu/in_process"] / best["cpu/ray"]
    per_job = {"in_process": best["trivial/in_process"] / n_trivial, "ray": best["trivial/ray"] / n_trivial}
    result = {
        "machine": {
            "cpus": os.cpu_count(),
            "load_average_at_start": load_at_start,
            "load_average_at_end": os.getloadavg(),
            "sched_autogroup": _autogroup(),
        },
        "torch": torch.__version__,
        "ray": ray.__version__,
        "repeats": args.repeats,
        "cpu_grid": {
            "jobs": n_cpu,
            "methods": CPU_METHODS,
            "seeds": CPU_SEEDS,
            "n_states": 16,
            "metrics": ["deletion", "insertion", "sparseness"],
        },
        "trivial_grid": {"jobs": n_trivial, "method": "random", "metric": "sparseness", "n_states": 1},
        "ray_init_seconds": ray_start,
        "seconds": times,
        "seconds_min": best,
        "speedup_ray_2_workers_vs_in_process": speedup,
        "speedup_per_repeat": paired,
        "speedup_median_of_repeats": statistics.median(paired),
        "speedup_ray_2_workers_vs_in_process_2_threads": best["cpu/in_process_2_threads"] / best["cpu/ray"],
        "target_speedup": 1.6,
        "target_met": speedup >= 1.6,
        "parallel_capacity_before_after": capacity,
        "seconds_per_trivial_job": per_job,
        "ray_overhead_per_job_seconds": per_job["ray"] - per_job["in_process"],
        "ray_vs_in_process_per_trivial_job": per_job["ray"] / per_job["in_process"],
    }
    path = write_result("bench_ray", result)
    print(
        f"cpu grid ({n_cpu} jobs): in process {best['cpu/in_process']:.1f} s, with 2 threads "
        f"{best['cpu/in_process_2_threads']:.1f} s, Ray 2 workers {best['cpu/ray']:.1f} s -> "
        f"{speedup:.2f}x (target 1.6x: {'met' if speedup >= 1.6 else 'NOT met'}); per repeat "
        + ", ".join(f"{x:.2f}x" for x in paired)
        + f"; load average {load_at_start[0]:.1f} at start; "
        f"two busy processes do {capacity[0]:.2f}x / {capacity[1]:.2f}x the work of one here (before/after)"
    )
    print(
        f"trivial jobs ({n_trivial}): {per_job['in_process'] * 1000:.1f} ms per job in process, "
        f"{per_job['ray'] * 1000:.1f} ms on Ray (+{result['ray_overhead_per_job_seconds'] * 1000:.1f} ms); "
        f"ray.init {ray_start:.1f} s"
    )
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
