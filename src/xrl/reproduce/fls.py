"""FLS (Nikulin et al. 2019, arXiv:1908.02511): the free-lunch claim (``fls-free-lunch``), where
the attention lies (``fls-localization``) and the attention next to every post-hoc method on
every metric (``fls-metrics``, the ``fls_rfg`` bench spec).

``fls-free-lunch``: every agent of a group (one architecture, one agent per training seed) plays
the same seeded greedy episodes (episode i seeded ``seed + i``); a uniformly random policy plays
them too, as the floor. Against the baseline group: ``ratio`` = (group - random) / (baseline -
random) ("within 10%" = ratio >= 0.9), and the differences in mean return and success with a
paired bootstrap interval over the episodes.

``fls-localization``: localization ROC AUC of the ``attention`` explainer drawn four ways
(``transposed``: the paper's unit kernel over each cell's receptive field; ``transposed_mean``;
``bilinear``; ``nearest``) and of gradient and guided backprop, on every state of each
Red-Fetch-Green FLS agent's own seeded episodes, against the cell labels, the object labels and
the agent-goal rectangle (a hypothesis made after looking at the pictures, reported to test that
reading); ``shifted_nearest``: the cell-by-cell drawing with the grid moved by one tile. On
Pong: every method's AUC against RAM ground truth (ball and paddles).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from xrl.reproduce.core import TargetRun, format_interval, nanmean, paired_interval

TILE = 8
GROUPS = {
    "red-fetch-green": {
        "grid_cnn": ["red-fetch-green-cnn-500k-0", "red-fetch-green-cnn-500k-1"],
        "grid_sparse_fls": ["red-fetch-green-sparse-fls-0", "red-fetch-green-sparse-fls-1"],
    },
    "pong": {
        "nature_cnn": ["pong-nature-cnn-1m-0", "pong-nature-cnn-1m-1"],
        "sparse_fls": ["pong-sparse-fls-1m-0", "pong-sparse-fls-1m-1"],
    },
}


def random_returns(env_name: str, settings: dict, *, episodes: int, seed: int) -> list[float]:
    """Uniformly random actions on the same seeded episodes (action stream seeded per episode)."""
    from xrl.envs import make_env
    from xrl.rollout import Uniform, evaluate_policy

    env = make_env(env_name, **settings)
    try:
        return evaluate_policy(Uniform(env.action_space), env, episodes=episodes, seed=seed).returns
    finally:
        env.close()


def run_free_lunch(run: TargetRun) -> None:
    s = run.settings
    rows, curves = [], {}
    for env_key in s["envs"]:
        groups = GROUPS[env_key]
        episodes = s["episodes"][env_key] if isinstance(s["episodes"], dict) else s["episodes"]
        returns, (env_name, settings) = _group_returns(run, env_key, episodes)
        floor = np.asarray(
            run.row(
                f"{env_key}-random",
                lambda: {"returns": random_returns(env_name, dict(settings), episodes=episodes, seed=s["seed"])},
            )["returns"],
            dtype=float,
        )
        rows += _free_lunch_rows(env_key, groups, returns, floor, episodes)
        curves[env_key] = {g: float(_mean_of(returns, g).mean()) for g in groups} | {"random": float(floor.mean())}
    run.table(
        "free_lunch",
        rows,
        [
            "env",
            "group",
            "episodes",
            "mean return",
            "per seed",
            "success",
            "ratio to baseline",
            "return diff (95% CI)",
            "success diff (95% CI)",
        ],
        title=f"FLS free lunch: greedy return of each architecture's agents (one per training seed) on the same "
        f"seeded episodes (seeds {s['seed']}+); ratio = (group - random) / (baseline - random)",
        notes=[
            "Paired intervals over the same episodes (group mean per episode minus the baseline's), 95% "
            "percentile bootstrap; bold = excludes 0."
        ],
    )
    from xrl.viz.overlay import figure, save_figure

    fig, axes = figure(1, len(curves), (4 * len(curves), 3))
    for ax, (env_key, means) in zip(axes[0], curves.items()):
        ax.bar(list(means), list(means.values()), color=["tab:grey", "tab:red", "tab:blue"][: len(means)])
        ax.set_title(f"{env_key}: mean greedy return", fontsize=9)
        ax.tick_params(labelsize=7)
    save_figure(fig, run.figure("free_lunch"), "FLS: attention agents against the baseline, same budget")


def _group_returns(run: TargetRun, env_key: str, episodes: int) -> tuple[dict, tuple]:
    """``{(group, agent): returns (episodes,)}`` of every agent of ``env_key``'s groups on the same
    seeded greedy episodes (one row each), and the ``(env name, settings)`` they share."""
    from xrl.rollout import evaluate_policy

    s = run.settings
    returns, envs = {}, set()
    for group, names in GROUPS[env_key].items():
        for name in names:
            model = run.load_agent(name)
            env = model.info.get("env") or {}
            envs.add((env.get("name"), tuple(sorted((env.get("settings") or {}).items()))))
            returns[(group, name)] = np.asarray(
                run.row(
                    f"{env_key}-{name}",
                    lambda model=model, env=env: {
                        "returns": evaluate_policy(
                            model,
                            env["name"],
                            env_settings=env.get("settings") or {},
                            episodes=episodes,
                            seed=s["seed"],
                            n_envs=s["batch"],
                        ).returns
                    },
                )["returns"],
                dtype=float,
            )
    if len(envs) != 1:
        raise ValueError(f"the {env_key} agents were made for different envs or settings: {sorted(envs, key=str)}")
    return returns, next(iter(envs))


def _mean_of(returns: dict, group: str) -> np.ndarray:
    """``(episodes,)``: the group's agents' returns averaged per episode."""
    return np.mean([r for (g, _), r in returns.items() if g == group], axis=0)


def _free_lunch_rows(env_key: str, groups: dict, returns: dict, floor: np.ndarray, episodes: int) -> list[dict]:
    """One row per group (the first is the baseline: ratio and paired intervals against it), and
    the random policy's."""

    def won(group):
        return np.mean([(r > 0) for (g, _), r in returns.items() if g == group], axis=0)

    rows = []
    baseline = next(iter(groups))
    base = _mean_of(returns, baseline)
    for group in groups:
        mine = _mean_of(returns, group)
        row = {
            "env": env_key,
            "group": group + (" (baseline)" if group == baseline else ""),
            "episodes": episodes,
            "mean return": float(mine.mean()),
            "per seed": ", ".join(f"{r.mean():.3f}" for (g, _), r in returns.items() if g == group),
            "success": float(won(group).mean()),
        }
        if group != baseline:
            progress = base.mean() - floor.mean()
            row["ratio to baseline"] = float((mine.mean() - floor.mean()) / progress) if progress > 0 else None
            row["return diff (95% CI)"] = format_interval(paired_interval(mine, base))
            row["success diff (95% CI)"] = format_interval(paired_interval(won(group), won(baseline)))
        rows.append(row)
    rows.append(
        {
            "env": env_key,
            "group": "random policy",
            "episodes": episodes,
            "mean return": float(floor.mean()),
            "success": float((floor > 0).mean()),
        }
    )
    return rows


def rectangle_labels(cells: np.ndarray) -> np.ndarray:
    """``(B, H, W)`` cell labels -> the rectangle of tiles spanned by the important tiles."""
    from xrl.envs.labels import EXCLUDED, IMPORTANT, UNIMPORTANT

    out = cells.copy()
    for b, lab in enumerate(cells):
        rows, cols = np.nonzero(lab == IMPORTANT)
        if rows.size == 0:
            continue
        r0, r1 = rows.min() // TILE * TILE, (rows.max() // TILE + 1) * TILE
        c0, c1 = cols.min() // TILE * TILE, (cols.max() // TILE + 1) * TILE
        inside = np.zeros(lab.shape, dtype=bool)
        inside[r0:r1, c0:c1] = True
        floor = lab != EXCLUDED
        out[b][floor & inside] = IMPORTANT
        out[b][floor & ~inside] = UNIMPORTANT
    return out


RFG_METHODS = {
    "attention (transposed)": ("attention", {"upsample": "transposed"}),
    "attention (transposed_mean)": ("attention", {"upsample": "transposed_mean"}),
    "attention (bilinear)": ("attention", {"upsample": "bilinear"}),
    "attention (nearest)": ("attention", {"upsample": "nearest"}),
    "gradient": ("gradient", {}),
    "guided_backprop": ("guided_backprop", {}),
}
PONG_METHODS = {
    "attention (transposed)": ("attention", {"upsample": "transposed"}),
    "attention (transposed_mean)": ("attention", {"upsample": "transposed_mean"}),
    "attention (bilinear)": ("attention", {"upsample": "bilinear"}),
    "gradient": ("gradient", {}),
    "guided_backprop": ("guided_backprop", {}),
    "smoothgrad": ("smoothgrad", {}),
    "greydanus": ("greydanus", {}),
    "rise": ("rise", {}),
    "grad_cam": ("grad_cam", {}),
    "normgrad": ("normgrad", {}),
    "random": ("random", {}),
}


def _auc(states, saliency, labels) -> list:
    """Per-state localization ROC AUC of ``saliency`` against ``labels`` (numpy, read from a file)."""
    import torch

    from xrl.metrics import get_metric

    labels = torch.as_tensor(labels, device="cpu").to(saliency.device)
    value = get_metric("localization")(states=states, saliency=saliency, labels=labels)["auc"]  # type: ignore[index]
    return value.double().cpu().tolist()


def run_localization(run: TargetRun) -> None:
    s = run.settings
    rows, shifted_rows, figure = [], [], None
    for name in s["rfg_agents"]:
        agent_rows, shifted, drawn = _rfg_agent(run, name, draw=figure is None)
        rows += agent_rows
        shifted_rows.append(shifted)
        figure = figure if figure is not None else drawn
    run.table(
        "red_fetch_green",
        rows,
        ["agent", "method", "states", "AUC cells", "AUC objects", "AUC rectangle"],
        title="FLS attention on Red-Fetch-Green: localization ROC AUC on every state of each agent's seeded "
        "episodes, against cell labels, object labels and the agent-goal rectangle",
    )
    run.table(
        "shifted",
        shifted_rows,
        ["agent", *[f"{dy},{dx}" for dy in (-1, 0, 1) for dx in (-1, 0, 1)], "best shift"],
        title="Cell-by-cell attention with the cell grid moved by (rows, cols) tiles, AUC against cell labels "
        "(does the attention sit one tile off the objects?)",
    )
    pong_rows = [row for name in s["pong_agents"] for row in _pong_rows(run, name)]
    if pong_rows:
        run.table(
            "pong",
            pong_rows,
            ["agent", "method", "states", "AUC"],
            title="FLS attention on Pong: localization ROC AUC against RAM ground truth (ball and both paddles)",
        )
    if figure is not None:
        from xrl.viz.overlay import explanation_grid

        frames, maps, actions, names, agent = figure
        explanation_grid(
            frames,
            maps,
            run.figure("attention"),
            actions=actions,
            action_names=names,
            title=f"{agent}: FLS attention next to the gradient",
        )


def _rfg_agent(run: TargetRun, name: str, *, draw: bool) -> tuple[list[dict], dict, tuple | None]:
    """One Red-Fetch-Green FLS agent: a row per method of :data:`RFG_METHODS` (AUC against cell,
    object and rectangle labels on every state of its seeded episodes), its shifted-grid row, and
    (``draw``) the figure's frames, maps (on the CPU), actions, action names and agent name."""
    from xrl.data.dataset import StateDataset
    from xrl.evaluation import explain_dataset

    s = run.settings
    model = run.load_agent(name)
    cells_path = run.collect(
        f"{name}-cells", model, episodes=s["episodes"], env_settings={"labels": "cells"}, max_steps=s["max_steps"]
    )
    objects_path = run.collect(
        f"{name}-objects", model, episodes=s["episodes"], env_settings={"labels": "objects"}, max_steps=s["max_steps"]
    )
    rows, figure = [], None
    with StateDataset.open(cells_path) as ds, StateDataset.open(objects_path) as dso:
        index = np.arange(len(ds))
        if not np.array_equal(dso.actions[:], ds.actions[:]):
            raise ValueError(f"{objects_path} holds other episodes than {cells_path} (actions differ)")
        cells = ds.labels(index)
        labels = {"cells": cells, "objects": dso.labels(index), "rectangle": rectangle_labels(cells)}  # type: ignore[arg-type]
        states = run.to_device(ds.states(index))
        for method, (explainer, settings) in RFG_METHODS.items():

            def compute(explainer=explainer, settings=settings):
                maps = explain_dataset(model, ds, explainer, settings, rows=index)
                return {kind: _auc(states, maps, lab) for kind, lab in labels.items()}

            v = run.row(f"{name}-{method}", compute)
            rows.append(
                {
                    "agent": name,
                    "method": method,
                    "states": len(index),
                    **{f"AUC {k}": nanmean(x) for k, x in v.items()},
                }
            )
        if draw:
            pick = index[:: max(1, len(index) // 4)][:4]
            maps = {  # brought back to the CPU to be drawn
                m: explain_dataset(model, ds, e, st, rows=pick).cpu()
                for m, (e, st) in RFG_METHODS.items()
                if m in ("attention (transposed)", "attention (transposed_mean)", "gradient")
            }
            figure = (ds.frames(pick), maps, ds.actions[pick], model.action_names, name)
    shifted = run.row(f"{name}-shifted", lambda: _shifted_aucs(model, states, labels["cells"]))
    best = max(shifted, key=lambda k: shifted[k] if shifted[k] is not None else -1)
    return rows, {"agent": name, **shifted, "best shift": best}, figure


def _shifted_aucs(model, states, cells) -> dict:
    """``{"dy,dx": mean AUC}``: the cell-by-cell attention with its grid rolled by (dy, dx) tiles,
    drawn nearest, against the cell labels."""
    import torch

    from xrl.explainers.attention import find_attention

    attention: Any = find_attention(model)  # an FLS attention module (attention_maps)
    with torch.no_grad():
        grid = attention.attention_maps(states)[0]  # (B, h, w)
    out = {}
    for dy in (-1, 0, 1):
        for dx in (-1, 0, 1):
            moved = torch.roll(grid, shifts=(dy, dx), dims=(1, 2))[:, None]
            up = torch.nn.functional.interpolate(moved, size=tuple(states.shape[-2:]), mode="nearest")[:, 0]
            out[f"{dy},{dx}"] = nanmean(_auc(states, up, cells))
    return out


def _pong_rows(run: TargetRun, name: str) -> list[dict]:
    """A row per method of :data:`PONG_METHODS` on Pong agent ``name``: AUC against the RAM ground
    truth on ``pong_states`` states of its seeded episodes (drawn with ``default_rng(0)``)."""
    from xrl.data.dataset import StateDataset
    from xrl.evaluation import explain_dataset

    s = run.settings
    model = run.load_agent(name)
    path = run.collect(
        f"{name}-ram", model, episodes=s["pong_episodes"], env_settings={"labels": True}, max_steps=s["pong_max_steps"]
    )
    rows = []
    with StateDataset.open(path) as ds:
        index = np.sort(np.random.default_rng(0).choice(len(ds), size=min(s["pong_states"], len(ds)), replace=False))
        states, labels = run.to_device(ds.states(index)), ds.labels(index)
        for method, (explainer, settings) in PONG_METHODS.items():
            settings = {**settings, **s["method_settings"].get(explainer, {})}
            v = run.row(
                f"{name}-{method}",
                lambda explainer=explainer, settings=settings: {
                    "auc": _auc(states, explain_dataset(model, ds, explainer, settings, rows=index), labels)
                },
            )
            rows.append({"agent": name, "method": method, "states": len(index), "AUC": nanmean(v["auc"])})
    return rows


def run_metrics(run: TargetRun) -> None:
    """The ``fls_rfg`` bench spec (every method, the attention among them, on every metric) through
    ``run_bench``: its jobs are the rows (``<out>/bench/jobs/``), so a killed run resumes."""
    import tomllib

    from xrl.bench import find_spec, load_results, parse_spec, run_bench
    from xrl.bench.results import group_table
    from xrl.report import build_report

    s = run.settings
    data = tomllib.loads(find_spec("fls_rfg").read_text())
    data["n_states"] = s["n_states"]
    data["gallery"] = min(data.get("gallery", 4), s["n_states"])
    for agent in data["agents"]:
        agent["episodes"] = s["episodes"]
        if s["max_steps"]:
            agent["max_steps"] = s["max_steps"]
    data["agents"] = [a for a in data["agents"] if a["agent"] in s["agents"]]
    if s["methods"] != "all":
        data["methods"] = list(s["methods"])
        data["method_settings"] = {k: v for k, v in data.get("method_settings", {}).items() if k in s["methods"]}
    if s["metrics"] != "all":
        data["metrics"] = list(s["metrics"])
    for section in ("method_settings", "metric_settings"):
        for name, extra in s[section].items():
            data.setdefault(section, {}).setdefault(name, {}).update(extra)
    spec = parse_spec(data, device=str(run.device))  # the jobs compute on the run's device (not in their results)
    folder = run.out / "bench"
    run_bench(spec, folder, progress=run.progress)
    build_report(folder)
    doc = load_results(folder)
    rows = []
    columns = [
        "deletion",
        "insertion",
        "localization.auc",
        "accuracy",
        "sparseness",
        "lipschitz",
        "sanity.passed",
        "time_per_map",
    ]
    for g in doc["groups"]:
        run.note(f"{g['agent']} (seed {g['seed']}):\n\n```\n{group_table(g)}\n```\n")
        for method in g["methods"]:
            means = g["means"][method]
            rows.append({"agent": g["agent"], "method": method, **{c: means.get(c) for c in columns}})
    run.table(
        "metrics",
        rows,
        ["agent", "method", *columns],
        title="FLS attention next to every post-hoc method on every metric (the fls_rfg bench spec; full "
        "tables and report in bench/)",
    )


# the runs of this module's targets; their declarations (claim, settings, budget) are in targets.json
RUNS = {"fls-free-lunch": run_free_lunch, "fls-localization": run_localization, "fls-metrics": run_metrics}
