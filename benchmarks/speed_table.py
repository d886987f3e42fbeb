"""Every speed figure of issue 28 as ratios, in one table, from the benchmarks' result files.

Reads (each written by one run of its benchmark, where every ratio is measured in that run):

- ``results/methods_threads.json`` (``bench_methods.py --methods perturbation --threads 1,2``):
  each perturbation method's time over its floor at 1 and 2 threads;
- ``results/incremental.json`` (``bench_incremental.py``): the dense floor over incremental
  occlusion, and the largest difference between their maps;
- ``results/quick_time_2cores.json`` (``bench_quick_time.py DIR --run --processes 2 --name
  quick_time_2cores``, the demo's way: one worker process per core): the quick bench's wall time
  on 2 cores (the target) and its job time per metric; ``results/quick_time.json`` (the same at
  one process) when the 2-core file is missing.

Prints Markdown (the tables of ``docs/explainers.md#speed``) and writes
``results/speed_table.md``. Run::

    .venv/bin/python benchmarks/speed_table.py
"""

from __future__ import annotations

import json

from common import RESULTS

TARGETS = {"perturbation": 1.3, "extremal_perturbation": 1.5, "incremental": 1.5, "quick_seconds": 180}


def load(name: str) -> dict | None:
    path = RESULTS / f"{name}.json"
    return json.loads(path.read_text()) if path.exists() else None


def main() -> None:
    lines = []
    methods = load("methods_threads")
    if methods:
        threads = sorted(methods["ratio_to_floor"], key=int)
        lines += [
            "| method | " + " | ".join(f"× floor, {t} thread{'s' * (t != '1')}" for t in threads) + " | target |",
            "|---|" + "---|" * (len(threads) + 1),
        ]
        for name in methods["ratio_to_floor"][threads[0]]:
            target = TARGETS.get(name, TARGETS["perturbation"])
            cells = [f"{methods['ratio_to_floor'][t][name]:.2f}" for t in threads]
            lines.append(f"| `{name}` | " + " | ".join(cells) + f" | ≤ {target} |")
        lines += [
            "",
            f"({methods['states']} states, load average at start "
            f"{', '.join(f'{x:.1f}' for x in methods['load_average_at_start'])})",
            "",
        ]
    inc = load("incremental")
    if inc:
        lines += [
            "| incremental occlusion | "
            + " | ".join(f"{t} thread{'s' * (t != '1')}" for t in inc["by_threads"])
            + " | target |",
            "|---|" + "---|" * (len(inc["by_threads"]) + 1),
        ]
        for key, label, target in (
            ("floor_over_incremental", "dense floor / incremental", "≥ 1.5"),
            ("dense_over_incremental", "dense method / incremental", ""),
        ):
            lines.append(
                f"| {label} | " + " | ".join(f"{row[key]:.2f}" for row in inc["by_threads"].values()) + f" | {target} |"
            )
        lines += ["", f"max \\|incremental − dense\\| = {inc['max_abs_diff_vs_dense']:.1e} (target ≤ 1e-4)", ""]
    quick = load("quick_time_2cores") or load("quick_time")
    if quick:
        run = quick.get("run") or {}
        if "jobs_wall_seconds" in run:
            head = (
                f"quick bench: {run['jobs_wall_seconds']:.0f} s wall for its jobs with {run['processes']} "
                f"processes, +{run['setup_seconds']:.0f} s set-up (target ≤ {TARGETS['quick_seconds']} s); "
                f"{quick['jobs_seconds']:.0f} s of job time, {run['jobs_cpu_seconds']:.0f} CPU-s"
            )
        else:
            head = f"quick bench: {quick['jobs_seconds']:.0f} s of job time (target ≤ {TARGETS['quick_seconds']} s)"
        lines += [
            head + (f"; {quick['note']}" if quick.get("note") else ""),
            "",
            "| step | seconds | share |",
            "|---|---|---|",
        ]
        for step, share in quick["share"].items():
            if share >= 0.005:
                lines.append(f"| {step} | {quick['seconds_by_step_total'][step]:.1f} | {share:.0%} |")
        lines.append("")
    text = "\n".join(lines)
    print(text)
    out = RESULTS / "speed_table.md"
    tmp = out.with_suffix(".md.partial")
    tmp.write_text(text + "\n")
    tmp.replace(out)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
