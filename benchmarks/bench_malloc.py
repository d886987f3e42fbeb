"""glibc's allocator and the perturbation methods: ratio to the floor and system time, with
glibc's default settings and with :data:`xrl.ops.MALLOC_SETTINGS` (what the ``xrl`` command sets).

Runs itself twice as a child process (one with ``MALLOC_MMAP_THRESHOLD_``/``MALLOC_TRIM_THRESHOLD_``/
``MALLOC_TOP_PAD_`` set as :func:`xrl.ops.tune_malloc` would, one without); each child times
``explain_all`` of every method against its floor (the same rows through the network in chunks
of ``batch_size``), interleaved, median of ``--repeats``, and reads user and system CPU time with
``resource.getrusage``. Writes ``benchmarks/results/malloc.json``. Run::

    .venv/bin/python benchmarks/bench_malloc.py [--methods greydanus,occlusion,rise] [--states 2]
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

import torch

SETTINGS = {
    "MALLOC_MMAP_THRESHOLD_": "33554432",
    "MALLOC_TRIM_THRESHOLD_": "1073741824",
    "MALLOC_TOP_PAD_": "268435456",
}


def child(methods: list[str], states_n: int, repeats: int) -> dict:
    from common import nature_cnn_policy

    import xrl

    torch.manual_seed(0)
    model = nature_cnn_policy()
    states = torch.rand(states_n, 4, 84, 84)
    out = {}
    for name in methods:
        explainer = xrl.get_explainer(name, model)
        rows = [0]
        hook = model.net.register_forward_hook(lambda m, i, o: rows.__setitem__(0, rows[0] + i[0].shape[0]))
        explainer.explain_all(states)
        hook.remove()
        n, bs = rows[0], explainer.batch_size
        batch = torch.rand(min(n, bs), 4, 84, 84)

        def floor():
            with torch.inference_mode():
                for start in range(0, n, bs):
                    model(batch[: min(bs, n - start)])

        fns = {"xrl": lambda: explainer.explain_all(states), "floor": floor}
        for fn in fns.values():
            fn()
        wall = {k: [] for k in fns}
        cpu = {k: [] for k in fns}
        for _ in range(repeats):
            for k, fn in fns.items():
                r0, t0 = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
                fn()
                wall[k].append(time.perf_counter() - t0)
                r1 = resource.getrusage(resource.RUSAGE_SELF)
                cpu[k].append((r1.ru_utime - r0.ru_utime, r1.ru_stime - r0.ru_stime))
        out[name] = {
            "rows": n,
            "ratio_to_floor": statistics.median(wall["xrl"]) / statistics.median(wall["floor"]),
            "seconds_per_map": {k: statistics.median(v) / states_n for k, v in wall.items()},
            "user_seconds": {k: statistics.median(u for u, _ in v) for k, v in cpu.items()},
            "system_seconds": {k: statistics.median(s for _, s in v) for k, v in cpu.items()},
        }
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--methods", default="greydanus,occlusion,rise")
    parser.add_argument("--states", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    methods = args.methods.split(",")
    if args.child:
        print(json.dumps(child(methods, args.states, args.repeats)))
        return
    from common import write_result

    clean = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")}
    runs = {}
    for label, env in (("default", clean), ("tuned", {**clean, **SETTINGS})):
        proc = subprocess.run(
            [
                sys.executable,
                __file__,
                "--child",
                "--methods",
                args.methods,
                "--states",
                str(args.states),
                "--repeats",
                str(args.repeats),
            ],
            env=env,
            capture_output=True,
            text=True,
            check=True,
            cwd=os.path.dirname(__file__),
        )
        runs[label] = json.loads(proc.stdout.strip().splitlines()[-1])
        for name, r in runs[label].items():
            print(
                f"{label:8s} {name:10s} ratio to floor {r['ratio_to_floor']:.2f}  "
                f"sys/user s: xrl {r['system_seconds']['xrl']:.2f}/{r['user_seconds']['xrl']:.2f}, "
                f"floor {r['system_seconds']['floor']:.2f}/{r['user_seconds']['floor']:.2f}"
            )
    result = {
        "threads": torch.get_num_threads(),
        "states": args.states,
        "repeats": args.repeats,
        "load_average_at_end": os.getloadavg(),
        "settings": SETTINGS,
        "runs": runs,
    }
    print(f"wrote {write_result('malloc', result)}")


if __name__ == "__main__":
    main()
