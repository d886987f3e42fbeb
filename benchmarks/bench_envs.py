"""Environment speed: agent steps per second of every registered env (one process, one env,
uniformly random seeded actions, resets included), and with ``labels=True`` where ground truth
exists. Writes ``benchmarks/results/envs.json``.

Two rates per env: per wall second (what a run on this machine, as loaded, got) and per CPU
second of the process and its live children (ViZDoom runs its engine as a child process), which
is close to the rate of one free core and does not depend on what else runs.

    python benchmarks/bench_envs.py [--seconds 8] [--envs pong,mario]

Training budgets follow from these numbers: PPO on CPU adds the network's cost on top, so the
env rate is an upper bound for the training rate with one env per core.
"""

from __future__ import annotations

import argparse
import os
import platform
import time
from pathlib import Path

import numpy as np
from common import write_result

from xrl.envs import EXTRAS, env_spec, extra_installed, list_envs, make_env

#: settings timed in addition to the defaults: the ground truth labels
LABELLED = {
    "pong": {"labels": True},
    "breakout": {"labels": True},
    "ms-pacman": {"labels": True},
    "red-fetch-green": {},
    "vizdoom-basic": {"labels": True},
    "vizdoom-defend-the-center": {"labels": True},
    "highway-fast": {"labels": True},
}


def cpu_seconds() -> float:
    """CPU time of this process plus its live child processes (Linux ``/proc``)."""
    total = time.process_time()
    tick = os.sysconf("SC_CLK_TCK")
    for task in Path("/proc/self/task").iterdir():
        for pid in (task / "children").read_text().split():
            try:
                fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            except FileNotFoundError:
                continue
            total += (int(fields[11]) + int(fields[12])) / tick  # utime, stime
    return total


def steps_per_second(name: str, settings: dict, seconds: float, seed: int = 0) -> dict:
    env = make_env(name, **settings)
    rng = np.random.default_rng(seed)
    env.reset(seed=seed)
    for _ in range(20):  # warm-up
        _, _, terminated, truncated, _ = env.step(int(rng.integers(env.action_space.n)))
        if terminated or truncated:
            env.reset()
    steps, episodes, start, cpu = 0, 0, time.perf_counter(), cpu_seconds()
    while time.perf_counter() - start < seconds:
        _, _, terminated, truncated, _ = env.step(int(rng.integers(env.action_space.n)))
        steps += 1
        if terminated or truncated:
            episodes += 1
            env.reset()
    elapsed, cpu = time.perf_counter() - start, cpu_seconds() - cpu
    spec = env_spec(env)
    env.close()
    return {
        "env": name,
        "settings": spec["settings"],
        "steps": steps,
        "episodes_ended": episodes,
        "seconds": round(elapsed, 2),
        "cpu_seconds": round(cpu, 2),
        "steps_per_s": round(steps / elapsed, 1),
        "steps_per_cpu_s": round(steps / cpu, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=8.0, help="timed wall seconds per env")
    parser.add_argument("--envs", default=None, help="comma-separated; default every registered env")
    args = parser.parse_args()
    names = args.envs.split(",") if args.envs else list_envs()
    load_before = os.getloadavg()
    rows, skipped = [], {}
    for name in names:
        if name in EXTRAS and not extra_installed(name):
            skipped[name] = f"extra {EXTRAS[name]!r} not installed"
            continue
        for settings in ({}, LABELLED.get(name) or None):
            if settings is None or (settings == {} and rows and rows[-1]["env"] == name):
                continue
            row = steps_per_second(name, settings, args.seconds)
            rows.append(row)
            print(
                f"{name:26s} labels={bool(settings.get('labels'))!s:5s} {row['steps_per_s']:8.1f} steps/s "
                f"{row['steps_per_cpu_s']:8.1f} steps/CPU-s"
            )
    result = {
        "what": "agent steps per wall second and per CPU second (process + children), one env in one "
        "process, random actions, resets included",
        "machine": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "loadavg_before": [round(x, 2) for x in load_before],
            "loadavg_after": [round(x, 2) for x in os.getloadavg()],
        },
        "command": f"python benchmarks/bench_envs.py --seconds {args.seconds:g}",
        "results": rows,
        "skipped": skipped,
    }
    print(f"wrote {write_result('envs', result)}")


if __name__ == "__main__":
    main()
