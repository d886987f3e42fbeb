"""Minor page faults, system time and wall time per map of the batched perturbation methods in a
plain Python process (no ``MALLOC_*`` variables, no :func:`xrl.ops.tune_malloc`): what a library
user calling ``xrl.get_explainer(name, agent).explain(states)`` from Python or a notebook gets.

The zoo Red-Fetch-Green agent (``xrl.load_agent("red-fetch-green")``) and ``--states`` states of
the zoo dataset it collected (``zoo/red-fetch-green-visionmask/expert.h5``), default settings,
one torch thread. Each variant runs in its own fresh child process (glibc's thresholds are
per process and only ever move up):

- ``before``: chunks of ``batch_size`` rows and no :func:`xrl.explainers.perturbation.keep_resident`
  (the code before issue 45, restored by setting ``RESIDENT_BYTES`` out of reach and
  ``keep_resident`` to a no-op);
- ``after``: the library as shipped (chunks of at most ``RESIDENT_BYTES`` of states, one
  ``keep_resident`` per call).

Per variant: the first call in the process (``cold``: the masks are drawn too) and the median of
``--repeats`` later calls (``warm``), each read with ``resource.getrusage`` (``ru_minflt``,
``ru_stime``). Prints both variants and writes ``benchmarks/results/faults.json``. Run::

    taskset -c 0 .venv/bin/python benchmarks/bench_faults.py [--methods rise] [--states 32] [--repeats 2]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time

VARIANTS = ("before", "after")


def child(variant: str, methods: list[str], n_states: int, repeats: int) -> dict:
    import torch

    import xrl
    from xrl.data.dataset import StateDataset
    from xrl.explainers import perturbation
    from xrl.zoo import ZOO_DIR

    torch.set_num_threads(1)
    if variant == "before":
        from xrl.explainers import extremal_perturbation

        perturbation.RESIDENT_BYTES = 2**62
        perturbation.keep_resident = extremal_perturbation.keep_resident = lambda: None
    agent = xrl.load_agent("red-fetch-green")
    with StateDataset.open(ZOO_DIR / "red-fetch-green-visionmask" / "expert.h5") as ds:
        states = ds.states(slice(0, n_states))

    def measure(fn) -> dict:
        r0, t0 = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
        fn()
        wall = time.perf_counter() - t0
        r1 = resource.getrusage(resource.RUSAGE_SELF)
        return {
            "minor_faults_per_map": (r1.ru_minflt - r0.ru_minflt) / n_states,
            "system_seconds_per_map": (r1.ru_stime - r0.ru_stime) / n_states,
            "wall_seconds_per_map": wall / n_states,
        }

    out = {}
    for name in methods:
        explainer = xrl.get_explainer(name, agent)
        cold = measure(lambda: explainer.explain(states))
        warm = [measure(lambda: explainer.explain(states)) for _ in range(repeats)]
        out[name] = {
            "batch_size": explainer.batch_size,
            "cold": cold,
            "warm": {k: statistics.median(w[k] for w in warm) for k in cold},
        }
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--methods", default="rise", help="comma-separated batched perturbation methods")
    parser.add_argument("--states", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=2, help="warm calls after the first")
    parser.add_argument("--child", choices=VARIANTS, help=argparse.SUPPRESS)
    args = parser.parse_args()
    methods = args.methods.split(",")
    if args.child:
        print(json.dumps(child(args.child, methods, args.states, args.repeats)))
        return
    from common import write_result

    plain = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")}  # glibc's defaults
    runs = {}
    for variant in VARIANTS:
        command = [sys.executable, __file__, "--child", variant, "--methods", args.methods]
        command += ["--states", str(args.states), "--repeats", str(args.repeats)]
        proc = subprocess.run(
            command, env=plain, capture_output=True, text=True, check=True, cwd=os.path.dirname(__file__)
        )
        runs[variant] = json.loads(proc.stdout.strip().splitlines()[-1])
        for name, r in runs[variant].items():
            for when in ("cold", "warm"):
                m = r[when]
                print(
                    f"{variant:6s} {name:10s} {when}: minor faults per map {m['minor_faults_per_map']:9.0f}  "
                    f"system {m['system_seconds_per_map'] * 1e3:7.1f} ms  wall {m['wall_seconds_per_map'] * 1e3:7.1f} ms per map"
                )
    ratios = {
        name: {
            when: runs["before"][name][when]["minor_faults_per_map"]
            / max(1.0, runs["after"][name][when]["minor_faults_per_map"])
            for when in ("cold", "warm")
        }
        for name in methods
    }
    for name, r in ratios.items():
        print(f"{name}: before / after minor faults per map: cold {r['cold']:.0f}x, warm {r['warm']:.0f}x")
    result = {
        "agent": "red-fetch-green (zoo)",
        "states": args.states,
        "state_shape": [3, 64, 64],
        "threads": 1,
        "repeats": args.repeats,
        "malloc": "glibc defaults (no MALLOC_* variables, no tune_malloc)",
        "cpu_affinity": sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "load_average_at_end": os.getloadavg(),
        "runs": runs,
        "faults_before_over_after": ratios,
    }
    print(f"wrote {write_result('faults', result)}")


if __name__ == "__main__":
    main()
