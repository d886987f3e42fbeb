"""Round-trip latency of ``xrl serve``: what the page waits for a map, a poke and a frame.

Starts ``xrl serve`` in its own process on a free port of 127.0.0.1 (this process is the client,
as a browser would be: a client thread inside the server's process would share its GIL), records seeded
episodes of zoo agents, and times each HTTP request from sending it to having parsed the JSON
answer (keep-alive connection, as a browser's): ``/api/saliency`` on frames not computed before
(so nothing comes from the cache), once more on the same frames (cached), ``/api/probabilities``
with a rectangle poked into the frame, and ``/api/frame``. The answer includes the overlay PNG,
so the time is everything the page needs to draw the map.

Fast methods: ``gradient`` on the zoo Red-Fetch-Green agent and on its DIGR student,
``visionmask`` (the zoo network for that agent), ``attention`` on the zoo sparse-FLS agent. The
slow one: ``rise`` at its default settings (2000 masks), on a few frames only.

Writes ``benchmarks/results/serve.json`` and ``serve.md``. Run (one core, one thread)::

    OMP_NUM_THREADS=1 taskset -c 0 .venv/bin/python benchmarks/bench_serve.py [--frames 30]
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time

import torch
from common import RESULTS, write_with_table

CASES = [  # (label, agent, method, frames cap)
    ("gradient", "red-fetch-green", "gradient", None),
    ("visionmask", "red-fetch-green", "visionmask:red-fetch-green-visionmask", None),
    ("attention (FLS agent)", "red-fetch-green-sparse-fls-0", "attention", None),
    ("gradient (DIGR student)", "red-fetch-green-digr", "gradient", None),
    ("rise (slow, 2000 masks)", "red-fetch-green", "rise", 5),
]


class Client:
    def __init__(self, port: int) -> None:
        self.conn = http.client.HTTPConnection("127.0.0.1", port, timeout=600)

    def call(self, method: str, path: str, body=None) -> tuple[int, dict, float]:
        start = time.perf_counter()
        data = None if body is None else json.dumps(body)
        self.conn.request(method, path, body=data, headers={"Content-Type": "application/json"})
        r = self.conn.getresponse()
        payload = json.loads(r.read())
        return r.status, payload, time.perf_counter() - start

    def settled(self, method: str, path: str, body=None) -> tuple[dict, float]:
        """The answer and the time until it came, following a 202 job (polling every 20 ms)."""
        start = time.perf_counter()
        while True:
            status, payload, _ = self.call(method, path, body)
            if status == 200:
                return payload, time.perf_counter() - start
            if status != 202:
                raise RuntimeError(f"{path}: {status} {payload}")
            while True:
                _, job, _ = self.call("GET", f"/api/jobs/{payload['job']}")
                if job["state"] in ("done", "error"):
                    break
                time.sleep(0.02)


def summary(times: list[float]) -> dict:
    ms = sorted(1000 * t for t in times)
    return {
        "n": len(ms),
        "median_ms": round(statistics.median(ms), 1),
        "p90_ms": round(ms[min(len(ms) - 1, int(0.9 * len(ms)))], 1),
        "mean_ms": round(statistics.fmean(ms), 1),
        "max_ms": round(ms[-1], 1),
    }


def frames_of(client: Client, agent: str, n: int) -> list[tuple[int, int]]:
    """(seed, step) pairs of the agent's greedy episodes, seeds 0, 1, ... until ``n`` frames."""
    out, seed = [], 0
    while len(out) < n:
        episode, _ = client.settled("POST", "/api/episode", {"agent": agent, "seed": seed})
        out += [(seed, t) for t in range(episode["length"])]
        seed += 1
    return out[:n]


def start_server(cache: str) -> tuple[subprocess.Popen, int]:
    """``xrl serve --port 0`` in a child process (same CPU affinity) and the port it printed."""
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "xrl.cli",
            "serve",
            "--agent",
            "red-fetch-green",
            "--port",
            "0",
            "--cache",
            cache,
            "--max-steps",
            "100",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    for line in proc.stdout:
        if m := re.search(r"open http://127\.0\.0\.1:(\d+)/", line):
            return proc, int(m.group(1))
    raise RuntimeError(f"xrl serve did not start (exit {proc.wait()})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--frames", type=int, default=30, help="frames timed per fast method")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        proc, port = start_server(tmp)
        result = {
            "command": "OMP_NUM_THREADS=1 taskset -c 0 .venv/bin/python benchmarks/bench_serve.py "
            f"--frames {args.frames}",
            "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS"),
            "cpus": os.cpu_count(),
            "affinity": sorted(os.sched_getaffinity(0)),
            "load_average_at_start": os.getloadavg(),
            "torch": torch.__version__,
            "frames": args.frames,
            "cases": {},
        }
        try:
            client = Client(port)
            for label, agent, method, cap in CASES:
                warm, *frames = frames_of(client, agent, 1 + (cap or args.frames))
                # warm-up on a frame not timed: the lanes' copies of the agent and the explainer are
                # built once per server
                client.settled(
                    "POST", "/api/saliency", {"agent": agent, "seed": warm[0], "t": warm[1], "method": method}
                )
                fresh, cached, pokes, shown = [], [], [], []
                for seed, t in frames:
                    body = {"agent": agent, "seed": seed, "t": t, "method": method}
                    fresh.append(client.settled("POST", "/api/saliency", body)[1])
                    cached.append(client.settled("POST", "/api/saliency", body)[1])
                    if cap is None:
                        rect = {"x0": 0.3, "y0": 0.3, "x1": 0.6, "y1": 0.6, "kind": "blur"}
                        pokes.append(
                            client.settled(
                                "POST", "/api/probabilities", {"agent": agent, "seed": seed, "t": t, "rects": [rect]}
                            )[1]
                        )
                        shown.append(client.settled("GET", f"/api/frame?agent={agent}&seed={seed}&t={t}")[1])
                case = {
                    "agent": agent,
                    "method": method,
                    "saliency": summary(fresh),
                    "saliency_cached": summary(cached),
                }
                if pokes:
                    case["poke_probabilities"] = summary(pokes)
                    case["frame"] = summary(shown)
                result["cases"][label] = case
                print(
                    f"{label:28s} map {case['saliency']['median_ms']:8.1f} ms median "
                    f"(p90 {case['saliency']['p90_ms']:.1f}), cached {case['saliency_cached']['median_ms']:.1f} ms"
                    + (f", poke {case['poke_probabilities']['median_ms']:.1f} ms" if pokes else ""),
                    flush=True,
                )
        finally:
            proc.terminate()
            proc.wait(timeout=60)
    result["load_average_at_end"] = os.getloadavg()
    lines = [
        "| method (agent) | map, not cached: median / p90 ms | cached map ms | poke (new probabilities) ms | frame ms |",
        "|---|---|---|---|---|",
    ]
    for label, case in result["cases"].items():
        s, c = case["saliency"], case["saliency_cached"]
        p, f = case.get("poke_probabilities"), case.get("frame")
        lines.append(
            f"| {label} ({case['agent']}) | {s['median_ms']} / {s['p90_ms']} (n={s['n']}) | {c['median_ms']} | "
            f"{p['median_ms'] if p else '–'} | {f['median_ms'] if f else '–'} |"
        )
    write_with_table(RESULTS / "serve.json", result, lines)


if __name__ == "__main__":
    main()
