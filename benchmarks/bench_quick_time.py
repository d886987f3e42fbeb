"""Where the time of a bench run goes: seconds per method for its maps and for each metric.

Reads a finished bench results folder (``xrl bench quick --out DIR``; jobs record
``seconds_by_step``) and writes ``benchmarks/results/quick_time.json`` with the table per
method and the totals per step, and prints it. With ``--run`` it first runs the ``quick`` spec
into that (new) folder itself: the set-up (loading the agent, collecting the episodes) timed
apart, then the jobs, in process or in ``--processes N`` worker processes as the demo runs them
(``run_bench(processes=N)``), and records the jobs' wall time and this process's and its
workers' CPU time. Run::

    xrl bench quick --out /tmp/quick && .venv/bin/python benchmarks/bench_quick_time.py /tmp/quick
    .venv/bin/python benchmarks/bench_quick_time.py /tmp/quick --run --processes 2   # the demo's way
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

from common import write_result

from xrl.bench import load_results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("results", help="a bench results folder")
    parser.add_argument("--name", default="quick_time", help="result file name in benchmarks/results")
    parser.add_argument("--note", default="", help="what else ran on the machine (recorded)")
    parser.add_argument("--run", action="store_true", help="run the quick spec into RESULTS first")
    parser.add_argument("--processes", type=int, default=1, help="with --run: worker processes for the jobs")
    parser.add_argument("--spec", default="quick", help="with --run: the spec (default: the demo's quick)")
    args = parser.parse_args()
    timing = run_quick(args.spec, args.results, args.processes) if args.run else {}
    doc = load_results(args.results)
    table, totals, jobs = {}, {}, 0.0
    for g in doc["groups"]:
        for m in g["methods"]:
            steps = g.get("seconds_by_step", {}).get(m, {})
            table[f"{g['agent']}/{g['seed']}/{m}"] = {"job": g["seconds"][m], **steps}
            jobs += g["seconds"][m]
            for step, seconds in steps.items():
                totals[step] = totals.get(step, 0.0) + seconds
    steps = sorted(totals, key=totals.get, reverse=True)
    print(f"{'job':45s} {'total':>7s} " + " ".join(f"{s[:12]:>12s}" for s in steps))
    for key, row in sorted(table.items(), key=lambda kv: -kv[1]["job"]):
        print(f"{key:45s} {row['job']:7.1f} " + " ".join(f"{row.get(s, 0.0):12.1f}" for s in steps))
    print(f"{'total':45s} {jobs:7.1f} " + " ".join(f"{totals[s]:12.1f}" for s in steps))
    print("share of job time: " + ", ".join(f"{s} {totals[s] / jobs:.0%}" for s in steps))
    if timing:
        print(", ".join(f"{k} {v:.1f}" if isinstance(v, float) else f"{k} {v}" for k, v in timing.items()))
    result = {
        "note": args.note,
        "results": os.path.abspath(args.results),
        "spec": doc["spec"].get("name"),
        "run": timing,
        "jobs_seconds": jobs,
        "seconds_by_step_total": totals,
        "share": {s: totals[s] / jobs for s in steps},
        "jobs": table,
    }
    print(f"wrote {write_result(args.name, result)}")


def run_quick(name: str, out: str, processes: int) -> dict:
    """Spec ``name`` into ``out`` (must not hold finished jobs): set-up, then the jobs, timed."""
    from xrl.bench import run_bench
    from xrl.bench.runner import collect_states, prepare
    from xrl.bench.spec import load_spec
    from xrl.ops import tune_malloc

    tune_malloc()  # as the xrl command does
    started = time.perf_counter()
    spec, models = prepare(load_spec(name))  # loads the agents
    collect_states(spec, models, Path(out))
    setup = time.perf_counter() - started
    cpu = os.times()
    started = time.perf_counter()
    run_bench(spec, out, processes=processes, progress=False)
    wall = time.perf_counter() - started
    after = os.times()
    return {
        "setup_seconds": setup,
        "jobs_wall_seconds": wall,
        "processes": processes,
        "jobs_cpu_seconds": (after.user - cpu.user)
        + (after.system - cpu.system)
        + (after.children_user - cpu.children_user)
        + (after.children_system - cpu.children_system),
        "load_average_at_end": list(os.getloadavg()),
    }


if __name__ == "__main__":
    main()
