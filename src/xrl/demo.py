"""``xrl demo``: the README's main job, end to end on Red-Fetch-Green.

1. the agent: the zoo ``red-fetch-green`` agent, or a quickly trained one when the zoo has none;
2. states: seeded greedy episodes of that agent, stored as a StateDataset (with ground truth);
3. every registered explainer explains the same states (targets = the actions taken);
4. every registered metric scores every method;
5. a results folder: ``metrics.csv``/``metrics.json`` (the table), ``explain.png`` (frame and
   one overlay per method), ``summary.md`` (table, agent card, settings) and ``states.h5``.

``quick=True`` shrinks every budget so the tests can run the whole path in seconds.
"""
from __future__ import annotations

import json
import os
import time
from pathlib import Path

import numpy as np
import torch

from xrl.agents.load import ZOO_DIR, load_agent
from xrl.agents.model import Model
from xrl.data.collect import collect
from xrl.data.dataset import StateDataset
from xrl.evaluation import evaluate
from xrl.explainers import list_explainers
from xrl.files import atomic_path
from xrl.metrics import list_metrics
from xrl.viz.overlay import explanation_grid

ENV = "red-fetch-green"
# DIGR appendix A: the Gaussian-blur perturbation radius for Red-Fetch-Green's 64×64 image is half
# a grid cell; masks every 4 pixels cover each cell at four offsets. DIGR compares SARFA with the
# same perturbations.
# RISE with 1000 masks (default 2000) keeps the demo to minutes on a CPU.
METHOD_SETTINGS = {"greydanus": {"radius": 4, "stride": 4}, "sarfa": {"radius": 4, "stride": 4},
                   "rise": {"n_masks": 1000}}
# Local Lipschitz re-explains every state once per neighbour: 8 neighbours (default 16) keep the
# demo to minutes with the optimisation and sampling methods.
METRIC_SETTINGS = {"lipschitz": {"n_samples": 8}}
N_STATES = 32  # states scored per method


def demo_agent(out: Path, *, zoo: Path | None = None, quick: bool = False) -> tuple[Model, dict]:
    """The zoo agent with its card, or train one into ``out/agent`` (resumable) when it is absent."""
    zoo = Path(zoo or ZOO_DIR) / ENV / "agent.pt"
    if zoo.exists():
        return load_agent(zoo), json.loads(zoo.with_suffix(".json").read_text())
    from xrl.train.agent import AgentArgs, train_agent
    print(f"no zoo agent at {zoo}: training one (resumes if interrupted)")
    args = AgentArgs(env=ENV, total_timesteps=4_096 if quick else 300_000, n_envs=4 if quick else None,
                     eval_episodes=5 if quick else 100, checkpoint_every=2_048 if quick else 50_000,
                     out=str(out / "agent"), progress=not quick)
    path = train_agent(args)
    return load_agent(path), json.loads(path.with_suffix(".json").read_text())


def run_demo(out: str | os.PathLike = "demo-results", *, quick: bool = False,
             zoo: str | os.PathLike | None = None, seed: int = 0) -> Path:
    """Run the demo and return the results folder."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    started = time.time()
    model, card = demo_agent(out, zoo=Path(zoo) if zoo else None, quick=quick)

    data = collect(model, episodes=2 if quick else 16, out=out / "states.h5", env=ENV, seed=seed,
                   max_steps=12 if quick else None, progress=not quick)
    methods = {m: dict(METHOD_SETTINGS.get(m, {})) for m in list_explainers()}
    metrics = {m: dict(METRIC_SETTINGS.get(m, {})) for m in list_metrics()}
    if quick:
        metrics["lipschitz"] = {"n_samples": 2}
    saliency: dict[str, torch.Tensor] = {}
    with StateDataset.open(data) as ds:
        result = evaluate(model, ds, methods, metrics, n_states=6 if quick else N_STATES, seed=seed,
                          saliency=saliency, progress=not quick)
        result.write(out)
        pick = np.unique(np.linspace(0, len(result.rows) - 1, min(6, len(result.rows))).round().astype(int))
        rows = np.asarray(result.rows)[pick]
        maps = {m: saliency[m][pick] for m in methods}
        probs = torch.softmax(torch.as_tensor(ds.scores[rows]), -1).numpy()
        explanation_grid(ds.frames(rows), maps, out / "explain.png", actions=ds.actions[rows],
                         action_names=model.action_names, probs=probs,
                         title=f"{ENV}: saliency of the action taken")
        n_states = len(ds)

    table = result.table()
    print(table)
    with atomic_path(out / "summary.md") as tmp:
        tmp.write_text(
            f"# xrl demo: {ENV}\n\nAgent: {card.get('what')} — `{card.get('command')}`; "
            f"score {json.dumps(card.get('score'))}\n\n"
            f"States: {n_states} from seeded greedy episodes; "
            f"{min(n_states, 6 if quick else N_STATES)} scored per method (seed {seed}).\n\n"
            f"Method settings: {json.dumps(METHOD_SETTINGS)}; metric settings: "
            f"{json.dumps(METRIC_SETTINGS)}; every other setting is the default.\n\n"
            f"```\n{table}\n```\n\n![explanations](explain.png)\n\n"
            f"Took {time.time() - started:.0f} s.\n")
    print(f"wrote {out}/metrics.csv, metrics.json, explain.png, summary.md")
    return out

