"""``xrl demo``: the README's main job, end to end on Red-Fetch-Green, through ``bench`` and ``report``.

1. the agent: the zoo ``red-fetch-green`` agent, or a quickly trained one when the zoo has none;
2. the shipped ``quick`` bench spec (``xrl/bench/specs/quick.toml``) with that agent: seeded greedy
   episodes stored as a StateDataset (with ground truth), every registered explainer on the same
   states (targets = the actions taken), every registered metric on every method;
3. a results folder: ``report.html`` (open it in a browser: tables, curves, radar, sanity, time
   per map, gallery), ``results.json``/``results.csv``, ``explain.png`` (frame and one overlay
   per method), ``summary.md`` (table, agent card, settings), ``data/`` and ``jobs/``.

Running it again resumes: finished jobs are kept. ``quick=True`` shrinks every budget so the
tests can run the whole path in seconds.
"""
from __future__ import annotations

import json
import os
import time
import tomllib
from pathlib import Path

import numpy as np
import torch

from xrl.agents.load import ZOO_DIR
from xrl.bench import find_spec, load_results, parse_spec, run_bench
from xrl.bench.results import group_table
from xrl.bench.runner import _npz
from xrl.data.dataset import StateDataset
from xrl.files import atomic_path
from xrl.report import build_report
from xrl.viz.overlay import explanation_grid

ENV = "red-fetch-green"
QUICK = {"n_states": 6, "episodes": 2, "max_steps": 12, "lipschitz_samples": 2}


def demo_agent(out: Path, *, zoo: Path | None = None, quick: bool = False) -> tuple[Path, dict]:
    """The zoo agent's checkpoint and card, or train one into ``out/agent`` (resumable) when it
    is absent."""
    zoo = Path(zoo or ZOO_DIR) / ENV / "agent.pt"
    if zoo.exists():
        return zoo, json.loads(zoo.with_suffix(".json").read_text())
    from xrl.train.agent import AgentArgs, train_agent
    print(f"no zoo agent at {zoo}: training one (resumes if interrupted)")
    args = AgentArgs(env=ENV, total_timesteps=4_096 if quick else 300_000, n_envs=4 if quick else None,
                     eval_episodes=5 if quick else 100, checkpoint_every=2_048 if quick else 50_000,
                     out=str(out / "agent"), progress=not quick)
    path = train_agent(args)
    return path, json.loads(path.with_suffix(".json").read_text())


def demo_spec(agent: Path, *, quick: bool, seed: int):
    """The shipped ``quick`` spec with ``agent``, ``seed`` and (``quick=True``) tiny budgets."""
    data = tomllib.loads(find_spec("quick").read_text())
    data["name"] = "demo"
    data["seeds"] = [seed]
    data["agents"][0]["agent"] = str(Path(agent).resolve())
    if quick:
        data["n_states"] = QUICK["n_states"]
        data["agents"][0].update(episodes=QUICK["episodes"], max_steps=QUICK["max_steps"])
        data["metric_settings"]["lipschitz"]["n_samples"] = QUICK["lipschitz_samples"]
    return parse_spec(data)


def run_demo(out: str | os.PathLike = "demo-results", *, quick: bool = False,
             zoo: str | os.PathLike | None = None, seed: int = 0) -> Path:
    """Run the demo and return the results folder."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    started = time.time()
    agent, card = demo_agent(out, zoo=Path(zoo) if zoo else None, quick=quick)
    spec = demo_spec(agent, quick=quick, seed=seed)
    run_bench(spec, out, progress=not quick)
    build_report(out)

    doc = load_results(out)
    (g,) = doc["groups"]
    rows = g["gallery_rows"]
    maps = {m: torch.as_tensor(_npz(out / g["maps"][m])["gallery"]) for m in g["methods"]}
    with StateDataset.open(out / g["data"]) as ds:
        probs = torch.softmax(torch.as_tensor(ds.scores[rows]), -1).numpy()
        explanation_grid(ds.frames(rows), maps, out / "explain.png", actions=ds.actions[np.asarray(rows)],
                         action_names=ds.action_names, probs=probs,
                         title=f"{ENV}: saliency of the action taken")
        n_states = len(ds)

    table = group_table(g)
    print(table)
    failed = "".join(f"\nFailed: {f['id']}: {f['error']}" for f in doc["failed"])
    with atomic_path(out / "summary.md") as tmp:
        tmp.write_text(
            f"# xrl demo: {ENV}\n\nAgent: {card.get('what')} — `{card.get('command')}`; "
            f"score {json.dumps(card.get('score'))}\n\n"
            f"States: {n_states} from seeded greedy episodes; {len(g['rows'] or [])} scored per "
            f"method (seed {seed}).\n\nSpec: the shipped `quick` spec"
            f"{' with tiny budgets' if quick else ''}: method settings "
            f"{json.dumps({m: s for m, s in spec.methods.items() if s})}; metric settings "
            f"{json.dumps({m: s for m, s in spec.metrics.items() if s})}; every other setting is "
            f"the default.\n\n```\n{table}\n```\n{failed}\n\nFull report: [report.html](report.html)"
            f"\n\n![explanations](explain.png)\n\nTook {time.time() - started:.0f} s.\n")
    print(f"wrote {out}/report.html (open it in a browser), results.json, results.csv, explain.png, "
          "summary.md")
    return out
