"""How much faster attacks run when episodes are played side by side (``return_under_attack``'s
``batch``): attacked states per second at batch 1 (one episode at a time) and batch B, for each
attack, on one thread, interleaved in one run, next to the floor of one batched forward pass.

Usage::

    python benchmarks/attack_batch.py --agent pong --data results/pong-states.h5 \
        --out benchmarks/results/attack_batch_pong.json
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

import xrl
from xrl.attacks import get_attack, list_attacks
from xrl.data.dataset import StateDataset
from xrl.files import write_json


def rate(fn, states: torch.Tensor, batch: int, repeats: int) -> float:
    """States per second of ``fn`` applied to ``states`` in chunks of ``batch`` (best of repeats)."""
    fn(states[:batch])  # warm-up
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        for i in range(0, len(states), batch):
            fn(states[i : i + batch])
        best = min(best, time.perf_counter() - start)
    return len(states) / best


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--agent", required=True)
    p.add_argument("--data", required=True, help="StateDataset of the agent's states")
    p.add_argument("--n", type=int, default=64, help="states attacked per measurement")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--eps", type=float, default=0.01)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--out", required=True)
    args = p.parse_args()
    torch.set_num_threads(1)
    model = xrl.load_agent(args.agent)
    with StateDataset.open(args.data) as ds:
        states = ds.states(np.arange(min(args.n, len(ds))))

    def forward(x):
        with torch.inference_mode():
            return model(x)

    rows = {
        "forward (floor)": {
            1: rate(forward, states, 1, args.repeats),
            args.batch: rate(forward, states, args.batch, args.repeats),
        }
    }
    for name in list_attacks():
        attack = get_attack(name, model, eps=args.eps)
        rows[name] = {b: rate(attack, states, b, args.repeats) for b in (1, args.batch)}
    result = {
        "agent": args.agent,
        "n_states": len(states),
        "batch": args.batch,
        "eps": args.eps,
        "threads": 1,
        "states_per_second": {k: {str(b): v for b, v in r.items()} for k, r in rows.items()},
        "speedup": {k: r[args.batch] / r[1] for k, r in rows.items()},
    }
    write_json(args.out, result)
    print(f"| | states/s, batch 1 | states/s, batch {args.batch} | speed-up |\n|---|---|---|---|")
    for k, r in rows.items():
        print(f"| {k} | {r[1]:.0f} | {r[args.batch]:.0f} | {r[args.batch] / r[1]:.1f}x |")


if __name__ == "__main__":
    main()
