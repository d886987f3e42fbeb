"""Frames per second each method sustains in ``xrl watch`` on the zoo Red-Fetch-Green agent.

Plays seeded episodes (seeds 0, 1, ... until ``--steps`` frames) with one method at a time,
each run writing a GIF into a temporary folder, and reports the mean time of
``explain`` on one state, i.e. the frame rate the method alone allows; the game, the model's own
forward pass and the video encoding come on top. Writes ``benchmarks/results/watch.json``. Run::

    .venv/bin/python benchmarks/bench_watch.py [--steps 30] [--threads 1]
"""

from __future__ import annotations

import argparse
import os
import tempfile
from pathlib import Path

import torch
from common import write_result

import xrl
from xrl.watch import watch

# the settings the demo uses for Red-Fetch-Green (xrl/bench/specs/quick.toml)
SETTINGS = {"greydanus": {"radius": 4, "stride": 4}, "sarfa": {"radius": 4, "stride": 4}, "rise": {"n_masks": 1000}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    model = xrl.load_agent("red-fetch-green")
    result = {
        "agent": "red-fetch-green",
        "steps": args.steps,
        "threads": args.threads,
        "cpus": os.cpu_count(),
        "torch": torch.__version__,
        "settings": SETTINGS,
        "seconds_per_map": {},
        "frames_per_second": {},
    }
    with tempfile.TemporaryDirectory() as tmp:
        for method in xrl.list_explainers():
            try:
                xrl.get_explainer(method, model, **SETTINGS.get(method, {}))
            except ValueError as err:  # e.g. a method that needs another kind of agent
                print(f"{method:24s} not applicable: {err}")
                continue
            frames, seconds, seed = 0, 0.0, 0
            while frames < args.steps:  # episodes are short: play seeds 0, 1, ... until enough frames
                r = watch(
                    model,
                    methods={method: SETTINGS.get(method, {})},
                    seed=seed,
                    max_steps=args.steps - frames,
                    out=Path(tmp) / method,
                    formats=("gif",),
                    progress=False,
                )
                frames += r.steps
                seconds += r.seconds_per_map[method] * r.steps
                seed += 1
            per_map = seconds / frames
            result["seconds_per_map"][method] = per_map
            result["frames_per_second"][method] = 1 / per_map
            print(
                f"{method:24s} {per_map * 1000:9.2f} ms per map  {1 / per_map:8.1f} frames/s  "
                f"({frames} frames, {seed} episodes)",
                flush=True,
            )
    result["load_average_at_end"] = os.getloadavg()
    print(f"wrote {write_result('watch', result)}")


if __name__ == "__main__":
    main()
