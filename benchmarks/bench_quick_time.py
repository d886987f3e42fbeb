"""Where the time of a bench run goes: seconds per method for its maps and for each metric.

Reads a finished bench results folder (``xrl bench quick --out DIR``; jobs record
``seconds_by_step``) and writes ``benchmarks/results/quick_time.json`` with the table per
method and the totals per step, and prints it. Run::

    xrl bench quick --out /tmp/quick && .venv/bin/python benchmarks/bench_quick_time.py /tmp/quick
"""
from __future__ import annotations

import argparse
import os

from xrl.bench import load_results

from common import write_result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("results", help="a bench results folder")
    parser.add_argument("--name", default="quick_time", help="result file name in benchmarks/results")
    parser.add_argument("--note", default="", help="what else ran on the machine (recorded)")
    args = parser.parse_args()
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
    result = {"note": args.note, "results": os.path.abspath(args.results), "spec": doc["spec"].get("name"), "jobs_seconds": jobs,
              "seconds_by_step_total": totals, "share": {s: totals[s] / jobs for s in steps}, "jobs": table}
    print(f"wrote {write_result(args.name, result)}")


if __name__ == "__main__":
    main()
