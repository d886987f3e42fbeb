"""Our own analyses behind the papers' tables (the scripts that were in ``benchmarks/``):

- ``rise-coverage``: how much of a RISE map is its masks' own coverage (why RISE on probabilities
  fails the sanity check on the confident zoo agent; ``docs/results.md``);
- ``zoo-baselines``: what a zoo agent's score means, against trivial policies on the same seeded
  episodes (the highway-fast agent stands in for DIGR's CARLA driver; ``docs/envs.md``);
- ``digr-snapshots``: a DIGR student's localization and success over training, from the
  snapshots ``xrl train digr --snapshots true`` saves (how the zoo's α = 1 student was chosen,
  ``docs/digr.md``).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from xrl.reproduce.core import TargetRun, nanmean


def run_rise_coverage(run: TargetRun) -> None:
    import torch
    from scipy.stats import spearmanr

    from xrl.data.dataset import StateDataset
    from xrl.explainers import get_explainer

    s = run.settings
    model = run.load_agent(s["agent"])
    path = run.collect("states", model, episodes=s["episodes"], seed=0, max_steps=s["max_steps"])
    with StateDataset.open(path) as ds:
        start, stop, step = s["rows"]
        states = run.to_device(ds.states(list(range(start, min(stop, len(ds)), step))))
    with torch.no_grad():
        top = model(states).softmax(-1).amax(-1).cpu().tolist()
    rows = []
    for score in ("probability", "logits"):

        def compute(score=score):
            explainer = get_explainer("rise", model, score=score, n_masks=s["n_masks"])
            maps = explainer.explain(states).cpu()
            coverage = explainer.masks(*states.shape[-2:]).sum(0).flatten().cpu().numpy()
            return {"rho": [float(spearmanr(m.flatten().numpy(), coverage).statistic) for m in maps]}

        rho = run.row(f"rise-{score}", compute)["rho"]
        rows.append(
            {
                "RISE score": score,
                "states": len(rho),
                "mean rank correlation with coverage": nanmean(rho),
                "per state": " ".join(f"{r:.2f}" for r in rho),
            }
        )
    run.table(
        "coverage",
        rows,
        ["RISE score", "states", "mean rank correlation with coverage", "per state"],
        title=f"Spearman correlation between RISE's map and its masks' coverage Σ M_i ({s['agent']}; the "
        "agent's top probability per state: " + " ".join(f"{p:.3f}" for p in top) + ")",
    )


def run_zoo_baselines(run: TargetRun) -> None:
    import gymnasium as gym

    from xrl.rollout import Constant, Greedy, Policy, Sampled, Uniform, evaluate_policy

    s = run.settings
    model = run.load_agent(s["agent"])
    env = model.info.get("env") or {}
    if not env.get("name"):
        raise ValueError(f"{s['agent']} has no card naming its env")

    def policies() -> dict[str, Policy]:
        out: dict[str, Policy] = {"agent greedy": Greedy(model)}
        if model.score_kind == "logits":
            out["agent sampled"] = Sampled(model)
        out["random"] = Uniform(gym.spaces.Discrete(model.n_actions))
        for a, name in enumerate(model.action_names):
            out[f"always {name}"] = Constant(a)
        return out

    def play(policy: Policy) -> dict:
        played = evaluate_policy(
            policy,
            env["name"],
            env_settings=env.get("settings") or {},
            episodes=s["episodes"],
            seed=s["seed"],
            max_steps=s["max_steps"] or None,
        )
        return {"returns": played.returns, "lengths": played.lengths, "terminated": played.terminated}

    rows = []
    for name, policy in policies().items():
        r = run.row(f"policy-{name}", lambda policy=policy: play(policy))
        rows.append(
            {
                "policy": name,
                "mean return": float(np.mean(r["returns"])),
                "std": float(np.std(r["returns"])),
                "mean length": float(np.mean(r["lengths"])),
                "ended by termination": float(np.mean(r["terminated"])),
            }
        )
    run.table(
        "baselines",
        rows,
        ["policy", "mean return", "std", "mean length", "ended by termination"],
        title=f"{s['agent']} ({env['name']}) against trivial policies, {s['episodes']} seeded episodes (seeds "
        f"{s['seed']}+), the same for every policy",
    )


def run_digr_snapshots(run: TargetRun) -> None:
    import torch

    from xrl.data.dataset import StateDataset
    from xrl.envs import INFO_ONLY_SETTINGS
    from xrl.viz.overlay import line_panels

    s = run.settings
    if not s["run"]:
        raise ValueError(
            "digr-snapshots needs the DIGR run folder: --set run=runs/digr-rfg-a1 (a run trained with "
            "xrl train digr --snapshots true)"
        )
    snapshots = sorted(Path(s["run"], "snapshots").glob("agent-*.pt"))
    if s["updates"]:
        wanted = {int(u) for u in s["updates"]}
        snapshots = [p for p in snapshots if int(p.stem.split("-")[1]) in wanted]
    if not snapshots:
        raise ValueError(f"{s['run']}/snapshots/ holds no agent-*.pt: train with --snapshots true")
    teacher = run.load_agent(s["teacher"])
    path = run.collect(
        "validation",
        teacher,
        episodes=s["data_episodes"],
        seed=s["data_seed"],
        env_settings={"labels": s["labels"]},
        max_steps=s["max_steps"],
    )
    with StateDataset.open(path) as ds:
        rows = np.sort(np.random.default_rng(0).choice(len(ds), size=min(s["n_states"], len(ds)), replace=False))
        states = run.to_device(ds.states(rows))
        labels = run.to_device(torch.as_tensor(ds.labels(rows), device="cpu"))
        seen = (
            ds.env["name"],
            {k: v for k, v in (ds.env.get("settings") or {}).items() if k not in INFO_ONLY_SETTINGS},
        )

    def score(model) -> dict:
        return _snapshot_score(model, states, labels, episodes=s["episodes"], seed=s["seed"])

    results = []
    for p in snapshots:
        model = run.load_agent(p)
        env = model.info["env"]
        if (env["name"], {k: v for k, v in (env.get("settings") or {}).items() if k not in INFO_ONLY_SETTINGS}) != seen:
            raise ValueError(f"{p} was trained on {env}, the validation states are {seen}")
        results.append({"update": int(p.stem.split("-")[1]), **run.row(f"snapshot-{p.stem}", lambda m=model: score(m))})
    t = run.row("teacher", lambda: score(teacher))
    results.append({"update": "teacher", **t})
    run.table(
        "snapshots",
        results,
        ["update", "auc", "important", "unimportant", "mean_return", "success_rate"],
        title=f"DIGR student snapshots of {s['run']}: vanilla-gradient localization on {len(rows)} validation "
        f"states ({s['labels']} labels) and greedy success over {s['episodes']} episodes (seeds "
        f"{s['seed']}+)",
    )
    u = [r["update"] for r in results[:-1]]
    line_panels(
        {
            "vanilla-gradient AUC": {"DIGR": (u, [r["auc"] for r in results[:-1]], None)},
            "success rate": {
                "DIGR": (u, [r["success_rate"] for r in results[:-1]], None),
                "teacher": ([u[0], u[-1]], [t["success_rate"]] * 2, None),
            },
        },
        run.figure("snapshots"),
        xlabel="update",
        ylabel="",
    )


def _snapshot_score(model, states, labels, *, episodes: int, seed: int) -> dict:
    """Vanilla-gradient localization of Eq. 2's target on the validation states, and the greedy
    return and success over ``episodes`` seeded episodes (10 side by side)."""
    from xrl.explainers import get_explainer
    from xrl.metrics import get_metric
    from xrl.rollout import evaluate_policy
    from xrl.train.digr import DIGR_TARGET

    maps = get_explainer("gradient", model).explain(states, DIGR_TARGET)
    loc = get_metric("localization")(states=states, saliency=maps, labels=labels)
    env = model.info["env"]
    ret = evaluate_policy(
        model, env["name"], env_settings=env.get("settings") or {}, episodes=episodes, seed=seed, n_envs=10
    ).summary()
    return {
        **{k: nanmean(v.double().cpu().tolist()) for k, v in loc.items()},  # type: ignore[union-attr]
        "mean_return": ret["mean_return"],
        "success_rate": ret.get("success_rate"),
    }


# the runs of this module's targets; their declarations (claim, settings, budget) are in targets.json
RUNS = {"rise-coverage": run_rise_coverage, "zoo-baselines": run_zoo_baselines, "digr-snapshots": run_digr_snapshots}
