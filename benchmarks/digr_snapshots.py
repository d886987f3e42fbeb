"""A DIGR student's saliency and behaviour over training, from the snapshots that
``xrl train digr --snapshots true`` saves at every evaluation:

- localization of its vanilla gradient (Eq. 2's quantity, ``targets=DIGR_TARGET``) on labelled
  states: important and unimportant saliency (sums of min-max-normalised maps) and ROC AUC;
- its greedy return / success rate over ``--episodes`` seeded episodes (seeds ``--seed`` + i,
  chosen apart from the cards' 10,000 + i so that a snapshot picked here is scored afresh).

Use a validation dataset (collected with another seed than the test states) to pick an update;
then score the picked snapshot on the test states with ``digr_evidence.py``.

Usage::

    xrl collect --agent red-fetch-green --episodes 16 --seed 5000 --out results/rfg-val.h5
    python benchmarks/digr_snapshots.py --run runs/digr-rfg-a1 --data results/rfg-val.h5 \
        --teacher red-fetch-green --out benchmarks/results/digr_rfg_a1_snapshots
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

import xrl
from xrl.data.dataset import StateDataset
from xrl.envs import INFO_ONLY_SETTINGS
from xrl.files import write_json
from xrl.train.agent import evaluate
from xrl.train.digr import DIGR_TARGET
from xrl.viz.overlay import line_panels


def _seen(env: dict) -> tuple:
    """What an agent sees of an env: its name and settings but the info-only ones (labels)."""
    return env["name"], {k: v for k, v in (env.get("settings") or {}).items() if k not in INFO_ONLY_SETTINGS}


def score_snapshot(model, states, labels, episodes: int, seed: int) -> dict:
    maps = xrl.get_explainer("gradient", model).explain(states, DIGR_TARGET)
    loc = xrl.get_metric("localization")(states=states, saliency=maps, labels=labels)
    env = model.info["env"]
    ret = evaluate(model, env["name"], env.get("settings") or {}, episodes=episodes, seed=seed, progress=False, batch=10)
    return {**{k: float(np.nanmean(v.numpy())) for k, v in loc.items()},
            "mean_return": ret["mean_return"], "success_rate": ret.get("success_rate")}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--run", required=True, help="a DIGR run folder with snapshots/")
    p.add_argument("--data", required=True, help="labelled StateDataset of the teacher (xrl collect)")
    p.add_argument("--n-states", type=int, default=64)
    p.add_argument("--episodes", type=int, default=100)
    p.add_argument("--seed", type=int, default=30_000)
    p.add_argument("--updates", default=None, help="comma-separated updates to score (default: every snapshot)")
    p.add_argument("--teacher", default=None, help="also score the teacher on the same states and episodes")
    p.add_argument("--out", required=True, help="writes <out>.json and <out>.png")
    args = p.parse_args()
    torch.set_num_threads(1)
    snapshots = sorted(Path(args.run, "snapshots").glob("agent-*.pt"))
    if args.updates:
        wanted = {int(u) for u in args.updates.split(",")}
        snapshots = [p for p in snapshots if int(p.stem.split("-")[1]) in wanted]
    if not snapshots:
        raise SystemExit(f"{args.run}/snapshots/ holds no agent-*.pt: train with --snapshots true")
    with StateDataset.open(args.data) as ds:
        if ds.labels() is None:
            raise SystemExit(f"{args.data} has no ground-truth labels")
        rows = np.sort(np.random.default_rng(0).choice(len(ds), size=min(args.n_states, len(ds)), replace=False))
        states, labels = ds.states(rows), torch.as_tensor(ds.labels(rows))
    out = Path(args.out)
    results = []
    for path in tqdm(snapshots, desc="snapshots"):
        model = xrl.load_agent(path)
        if _seen(model.info["env"]) != _seen(ds.env):
            raise SystemExit(f"{path} was trained on {model.info['env']}, {args.data} holds {ds.env}")
        results.append({"update": int(path.stem.split("-")[1]), **score_snapshot(model, states, labels,
                                                                                args.episodes, args.seed)})
        tqdm.write(json.dumps(results[-1]))
    teacher = None
    if args.teacher:
        teacher = score_snapshot(xrl.load_agent(args.teacher), states, labels, args.episodes, args.seed)
        print(f"teacher  AUC {teacher['auc']:.3f}  return {teacher['mean_return']:.3f}  "
              f"success {teacher['success_rate']:.3f}")
    write_json(out.with_suffix(".json"), {"run": args.run, "data": args.data, "n_states": len(rows),
                                          "episodes": args.episodes, "seed": args.seed, "teacher": teacher,
                                          "snapshots": results})
    u = [r["update"] for r in results]
    line_panels({"vanilla-gradient AUC": {"DIGR": (u, [r["auc"] for r in results], None)},
                 "success rate": {"DIGR": (u, [r["success_rate"] for r in results], None),
                                  **({"teacher": ([u[0], u[-1]], [teacher["success_rate"]] * 2, None)}
                                     if teacher else {})}},
                out.with_suffix(".png"), xlabel="update", ylabel="")
    for r in results:
        print(f"{r['update']:>6}  AUC {r['auc']:.3f}  important {r['important']:.2f}  "
              f"unimportant {r['unimportant']:.2f}  return {r['mean_return']:.3f}  success {r['success_rate']:.2f}")


if __name__ == "__main__":
    main()
