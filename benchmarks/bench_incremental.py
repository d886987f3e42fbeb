"""Incremental occlusion (``incremental=True``, :mod:`xrl.incremental`) against the dense floor.

Occlusion with 8x8 windows at stride 4 (400 windows + the state = 401 rows per state) on
random 84x84x4 states and a Nature-CNN policy (6 actions), all actions (``explain_all``), in one
process, interleaved rounds, at each thread count of ``--threads``:

- ``incremental``: ``get_explainer("occlusion", model, incremental=True).explain_all(states)``;
- ``dense``      : the same without ``incremental`` (the perturbed batch through the network);
- ``floor``      : the network alone on as many rows, in one batch (``floor/all``) and in chunks
  of the explainer's ``batch_size`` (``floor/512``); the dense floor is the faster of the two.

Reports ``floor / incremental`` (target >= 1.5: faster than the dense floor) and the largest
difference between the incremental and the dense maps (target <= 1e-4), and writes
``benchmarks/results/incremental.json``. Run::

    .venv/bin/python benchmarks/bench_incremental.py [--states 4] [--repeats 7] [--threads 1,2]
"""

from __future__ import annotations

import argparse
import os
import statistics

import torch
from common import interleaved, nature_cnn_policy, write_result

import xrl
from xrl.ops import tune_malloc


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--states", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--threads", default="1,2")
    args = parser.parse_args()
    tuned = tune_malloc()
    torch.manual_seed(0)
    model = nature_cnn_policy()
    states = torch.rand(args.states, 4, 84, 84)
    fast = xrl.get_explainer("occlusion", model, window=8, stride=4, incremental=True)
    dense = xrl.get_explainer("occlusion", model, window=8, stride=4)
    rows = args.states * (len(dense.masks(84, 84)) + 1)
    batch = torch.rand(rows, 4, 84, 84)
    max_diff = (fast.explain_all(states) - dense.explain_all(states)).abs().max().item()
    peak = dense.explain_all(states).abs().max().item()

    def floor(size: int):
        def run():
            with torch.inference_mode():
                for start in range(0, rows, size):
                    model(batch[start : start + size])

        return run

    result = {
        "model": "nature_cnn + linear(512, 6)",
        "state_shape": [4, 84, 84],
        "window": 8,
        "stride": 4,
        "states": args.states,
        "rows": rows,
        "torch": torch.__version__,
        "repeats": args.repeats,
        "malloc": "tuned" if tuned else "default",
        "load_average_at_start": os.getloadavg(),
        "max_abs_diff_vs_dense": max_diff,
        "peak_abs_value": peak,
        "by_threads": {},
    }
    for threads in (int(t) for t in args.threads.split(",")):
        torch.set_num_threads(threads)
        times = interleaved(
            {
                "incremental": lambda: fast.explain_all(states),
                "dense": lambda: dense.explain_all(states),
                "floor/all": floor(rows),
                f"floor/{dense.batch_size}": floor(dense.batch_size),
            },
            args.repeats,
        )
        median = {k: statistics.median(v) / args.states for k, v in times.items()}
        best_floor = min(v for k, v in median.items() if k.startswith("floor"))
        row = {
            "seconds_per_map_median": median,
            "seconds_per_map_min": {k: min(v) / args.states for k, v in times.items()},
            "floor_over_incremental": best_floor / median["incremental"],
            "dense_over_incremental": median["dense"] / median["incremental"],
            "dense_over_floor": median["dense"] / best_floor,
        }
        result["by_threads"][threads] = row
        print(
            f"{threads} thread(s): ms per map (median of {args.repeats}) "
            + ", ".join(f"{k} {v * 1e3:.1f}" for k, v in median.items())
            + f"; floor / incremental {row['floor_over_incremental']:.2f} (target >= 1.5), "
            f"dense / incremental {row['dense_over_incremental']:.2f}"
        )
    result["load_average_at_end"] = os.getloadavg()
    print(f"max |incremental - dense| = {max_diff:.2e} (maps peak at {peak:.2e}; target <= 1e-4)")
    print(f"wrote {write_result('incremental', result)}")


if __name__ == "__main__":
    main()
