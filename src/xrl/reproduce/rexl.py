"""RExL (Agarwal et al. 2021, arXiv:2111.13406) Tables 1-4: ``rexl-deletion``.

For each setting — the zoo Red-Fetch-Green agent (actions as classes, K = 8) and the zoo shapes
classifier (K = 7) — deletion (lower is better) and insertion (higher is better) as RISE's
``CausalMetric`` (``protocol="rise"``, the metrics' default) of RExL-DS and RExL-CS against RISE
with the paper's 5000 masks, Extremal Perturbations (contrastive reward, area 0.12, appendix
A.3), Grad-CAM and NormGrad, with localization ROC AUC against the ground truth; paired
bootstrap intervals of RExL minus RISE over the same states (Tables 1-2); the λ ablation of
RExL-DS (Table 4); seconds per map one state at a time, interleaved in one run (Table 3).

Targets: the labels (shapes) or the model's argmax (agent states). States whose target has no
class-specific agent are left out of every method's means. ``ds`` / ``cs`` replace the zoo's
RExL agents (e.g. ``--set ds=runs/rexl-rfg-ds-sb/rexl.pt --set 'cs=[]'``: a DS agent alone).

Test states of the Red-Fetch-Green agent come from fresh greedy episodes on seeds
``test_seed + i`` (default 200,000 on: disjoint from the seeds of every dataset the zoo RExL agents
were trained on — ``xrl train rexl --data episodes`` uses 100,000-100,999, the older agents
``zoo/red-fetch-green-digr/data.h5``'s 0-199), collected into ``<out>/data/``. ``curve`` (a
folder of ``xrl train rexl --snapshot-every`` snapshots per setting) adds the learning curve: the
test deletion of each snapshot against its training steps.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from xrl.reproduce.core import TargetRun, format_interval, nanmean, paired_interval

LAMBDAS = (0.0, 0.7, 0.8, 1.0)
#: the methods RExL is compared with, state by state (paired intervals), as the paper's Table 1
BASELINES = ("RISE", "Extremal", "Grad-CAM")
#: the snapshot of the learning curve with the lowest deletion on validation states (never the test states)
CHOSEN = "RExL-DS val.-chosen"
#: validation episodes are seeded from here: disjoint from training (100,000 on) and test (200,000 on)
VALIDATION_SEED = 300_000


def _zoo(*parts) -> str:
    from xrl.agents.load import ZOO_DIR

    return str(Path(ZOO_DIR).joinpath(*parts))


def setting(name: str) -> dict:
    """Model, data and RExL agents of a setting (zoo paths)."""
    if name == "red-fetch-green":
        return {
            "model": "red-fetch-green",
            "data": "episodes",
            "first_row": 0,
            "ds": _zoo("red-fetch-green-rexl-ds", "rexl.pt"),
            "cs": [_zoo("red-fetch-green-rexl-cs", f"class{c}", "rexl.pt") for c in range(4)],
        }
    if name == "shapes":
        return {
            "model": _zoo("shapes-cnn", "classifier.pt"),
            "data": "shapes",
            "first_row": 0,
            "ds": _zoo("shapes-rexl-ds", "rexl.pt"),
            "cs": [_zoo("shapes-rexl-cs", f"class{c}", "rexl.pt") for c in range(4)],
        }
    raise ValueError(f"rexl-deletion: unknown setting {name!r}; known: red-fetch-green, shapes")


def load_states(
    model,
    data: str,
    n: int,
    first_row: int,
    seed: int,
    run: TargetRun | None = None,
    test_seed: int = 0,
    name: str = "test-episodes",
    part: str = "test",
):
    """States, targets and labels (or None) of the evaluation images, on the model's device.
    ``data="episodes"``: the first ``n`` states of fresh greedy episodes of the agent on seeds
    ``test_seed + i`` (as many episodes as it takes, collected into the run's ``data/``);
    ``data="shapes"``: the first ``n`` images of the shapes split ``part`` (``test`` or ``val``)."""
    import torch

    device = model.device  # the states follow the model (the run's device)

    if data == "episodes":
        from xrl.data.dataset import StateDataset

        episodes, done = 8, run.out / "data" / f"{name}.h5"  # type: ignore[union-attr]
        if done.exists():  # an earlier run collected more: its first n states are the same
            with StateDataset.open(done) as ds:
                episodes = max(episodes, ds.n_episodes)
        while True:
            path = run.collect(  # type: ignore[union-attr]
                name, model, episodes=episodes, seed=test_seed, env_settings={"labels": "cells"}
            )
            with StateDataset.open(path) as ds:
                if len(ds) >= n or episodes >= 4096:
                    rows = np.arange(min(n, len(ds)))
                    states = ds.states(rows).to(device)
                    labels = torch.from_numpy(ds.labels(rows)).to(device) if ds.has_labels else None
                    break
            episodes *= 2
        with torch.no_grad():
            targets = model(states).argmax(-1)
        return states, targets, labels

    if data == "shapes":
        from xrl.data.shapes import object_labels, split

        test = split(part, n, size=model.input_shape[-1], seed=seed)
        return (
            torch.from_numpy(test.images).to(device).float() / 255,
            torch.from_numpy(test.labels).to(device),
            object_labels(test.masks).to(device),
        )
    from xrl.data.dataset import StateDataset

    with StateDataset.open(data) as ds:
        rows = np.arange(first_row, min(len(ds), first_row + n))
        states = ds.states(rows).to(device)
        labels = torch.from_numpy(ds.labels(rows)).to(device) if ds.has_labels else None
    with torch.no_grad():
        targets = model(states).argmax(-1)
    return states, targets, labels


def scores(model, states, targets, labels, saliency) -> dict[str, list[float]]:
    """Per-state deletion, insertion and (with labels) localization ROC AUC of one method's maps,
    in one batch (:func:`xrl.pipeline.score`)."""
    from xrl.pipeline import score

    metrics = ["deletion", "insertion", *(["localization"] if labels is not None else [])]
    v = score(model, states, {"maps": saliency}, metrics, targets, labels, batch_size=max(1, len(states)))
    out = {"deletion": v.values["maps"]["deletion"], "insertion": v.values["maps"]["insertion"]}
    if labels is not None:
        out["localization_auc"] = v.values["maps"]["localization.auc"]
    return out


def _explain(model, states, targets, methods: dict, *, batch_size: int | None = None):
    """:func:`xrl.pipeline.explain` of ``methods`` (names or built explainers) in chunks of
    ``batch_size`` states (default: one batch)."""
    from xrl.pipeline import explain

    return explain(model, states, methods, targets, batch_size=batch_size or max(1, len(states)))


def run_deletion(run: TargetRun) -> None:
    s = run.settings
    tables: dict = {"table1": [], "lambda": [], "time": [], "paired": [], "curve": [], "per_state": {}}
    for name in s["settings"]:
        _setting(run, name, tables)
    _write_tables(run, tables)


def _inputs(run: TargetRun, name: str) -> tuple:
    """``(cfg, model, states, targets, labels, explainers)`` of a setting: its model and test
    states, each compared method built once (RISE, Extremal Perturbations, Grad-CAM, NormGrad,
    RExL-DS and -CS), the states left out whose target has no class-specific agent."""
    import torch

    from xrl.explainers import get_explainer
    from xrl.train.rexl import load_explained

    s = run.settings
    cfg = setting(name)
    model = load_explained(cfg["model"], device=run.device)
    n = s["n_states"][name] if isinstance(s["n_states"], dict) else s["n_states"]
    states, targets, labels = load_states(
        model, cfg["data"], n, cfg["first_row"], s["seed"], run, s.get("test_seed", 200_000)
    )
    cfg["ds"] = s["ds"] or cfg["ds"]
    cfg["cs"] = cfg["cs"] if s["cs"] is None else s["cs"]
    methods = {
        "RExL-DS": ("rexl", {"agent": cfg["ds"], "seed": s["seed"]}),
        **({"RExL-CS": ("rexl", {"agent": cfg["cs"], "seed": s["seed"]})} if cfg["cs"] else {}),
        "RISE": ("rise", {"n_masks": s["rise_masks"], "grid": 7, "p": 0.5, "seed": s["seed"]}),
        "Extremal": (
            "extremal_perturbation",
            {"area": 0.12, "reward": "contrastive", "seed": s["seed"], **s["extremal"]},
        ),
        "Grad-CAM": ("grad_cam", {}),
        "NormGrad": ("normgrad", {}),
    }
    explainers = {k: get_explainer(m, model, **kw) for k, (m, kw) in methods.items()}
    if "RExL-CS" in explainers:  # the states every method can explain (a class with no CS agent is left out)
        agents = explainers["RExL-CS"].agents  # type: ignore[attr-defined]
        covered = torch.tensor([int(t) in agents for t in targets.tolist()], dtype=torch.bool, device=targets.device)
        states, targets = states[covered], targets[covered]
        labels = labels[covered] if labels is not None else None
    return cfg, model, states, targets, labels, explainers


def _setting(run: TargetRun, name: str, tables: dict) -> None:
    """Every row of one setting (methods, learning curve, paired intervals, λ ablation, timing)
    into ``tables``."""
    import torch

    s = run.settings
    cfg, model, states, targets, labels, explainers = _inputs(run, name)
    with torch.no_grad():
        accuracy = float((model(states).argmax(-1) == targets).float().mean().cpu())

    def head(method: str) -> dict:
        return {"setting": name, "method": method, "states": len(states), "accuracy": accuracy}

    values = {}
    for method, explainer in explainers.items():

        def compute(method=method, explainer=explainer):
            maps = _explain(model, states, targets, {method: explainer}, batch_size=25)
            return {
                **scores(model, states, targets, labels, maps[method]),
                "batched_seconds_per_map": maps.seconds[method] / len(states),
            }

        values[method] = run.row(f"{name}-{method}", compute)
        tables["table1"].append({**head(method), **_means(values[method])})
    if (s.get("curve") or {}).get(name):
        rows, (steps, chosen) = _curve(run, name, model, cfg, s, states, targets, labels, values)
        tables["curve"].extend(rows)
        values[CHOSEN] = chosen
        tables["table1"].append(
            {
                **head(f"{CHOSEN} ({steps} steps)"),
                **_means(chosen),
                "batched_seconds_per_map": values["RExL-DS"]["batched_seconds_per_map"],
            }
        )
    tables["paired"] += _paired_rows(name, values)
    for lam in LAMBDAS:

        def ablate(lam=lam):
            ds = {"rexl": {"agent": cfg["ds"], "lam": lam, "seed": s["seed"]}}
            return scores(model, states, targets, labels, _explain(model, states, targets, ds)["rexl"])

        v = run.row(f"{name}-lambda-{lam}", ablate)
        tables["lambda"].append({"setting": name, "lambda": lam, **{k: nanmean(x) for k, x in v.items()}})
    tables["time"] += _timing(run, name, explainers, states, targets)
    tables["per_state"][name] = {"values": values, "targets": targets.cpu().tolist()}


def _means(value: dict) -> dict:
    """The means of a row's per-state lists, and its ``batched_seconds_per_map``."""
    out = {k: nanmean(v) for k, v in value.items() if isinstance(v, list)}
    return (
        {**out, "batched_seconds_per_map": value["batched_seconds_per_map"]}
        if "batched_seconds_per_map" in value
        else out
    )


def _paired_rows(name: str, values: dict) -> list[dict]:
    """RExL (DS, CS, the validation-chosen snapshot) minus each baseline, per column."""
    rows = []
    for col in ("deletion", "insertion", "localization_auc"):
        for base in BASELINES:
            if col in values[base]:
                rows.append(
                    {
                        "setting": name,
                        "column": col,
                        "baseline": base,
                        **{
                            f"{m} minus baseline": format_interval(paired_interval(values[m][col], values[base][col]))
                            for m in ("RExL-DS", "RExL-CS", CHOSEN)
                            if m in values
                        },
                    }
                )
    return rows


def _timing(run: TargetRun, name: str, explainers: dict, states, targets) -> list[dict]:
    """Table 3: seconds per map, one state at a time, the methods interleaved (the first round
    warms up)."""
    s = run.settings
    timed = {k: explainers[k] for k in ("RExL-DS", "RExL-CS", "RISE", "Extremal") if k in explainers}

    def time_maps() -> dict:
        wall: dict[str, list[float]] = {k: [] for k in timed}
        cpu: dict[str, list[float]] = {k: [] for k in timed}
        for i in range(min(s["n_time"], len(states) - 1) + 1):  # interleaved; the first round warms up
            for k, explainer in timed.items():
                start, start_cpu = time.perf_counter(), time.process_time()
                explainer.explain(states[i : i + 1], targets[i : i + 1])
                if i > 0:
                    wall[k].append(time.perf_counter() - start)
                    cpu[k].append(time.process_time() - start_cpu)
        return {
            "wall": {k: float(np.mean(v)) for k, v in wall.items()},
            "cpu": {k: float(np.mean(v)) for k, v in cpu.items()},
            "n_timed": len(wall["RISE"]),
        }

    t = run.row(f"{name}-time", time_maps)
    return [
        {
            "setting": name,
            "method": k,
            "wall s / map": t["wall"][k],
            "CPU s / map": t["cpu"][k],
            "RISE CPU ÷ this": t["cpu"]["RISE"] / t["cpu"][k],
            "maps timed": t["n_timed"],
        }
        for k in timed
    ]


def _write_tables(run: TargetRun, tables: dict) -> None:
    """``table1``, ``paired``, ``curve`` (with a learning curve), ``lambda``, ``time`` and the figures."""
    s = run.settings
    cols = ["setting", "method", "states", "deletion", "insertion", "localization_auc", "batched_seconds_per_map"]
    run.table(
        "table1",
        tables["table1"],
        cols,
        title="RExL Tables 1-2: deletion ↓ and insertion ↑ (RISE's CausalMetric, softmax probability of the "
        f"target), localization ROC AUC ↑; RISE with {s['rise_masks']} masks",
        extra={"per_state": tables["per_state"]},
    )
    run.table(
        "paired",
        tables["paired"],
        [
            "setting",
            "column",
            "baseline",
            "RExL-DS minus baseline",
            "RExL-CS minus baseline",
            f"{CHOSEN} minus baseline",
        ],
        title="RExL minus each baseline over the same states (mean, 95% percentile bootstrap interval; bold = "
        "excludes 0; deletion: negative = RExL better)",
    )
    if tables["curve"]:
        run.table(
            "curve",
            tables["curve"],
            ["setting", "agent", "steps", "validation deletion", "deletion", "insertion", "deletion minus RISE"],
            title="Learning curve: test deletion ↓ and insertion ↑ of RExL-DS snapshots against ACER steps "
            "(the same test states; RISE's deletion beside); validation deletion on other states "
            "(fresh episodes; shapes: its val split) picks "
            f"{CHOSEN}",
        )
        _curve_figure(run, tables["curve"])
    run.table(
        "lambda",
        tables["lambda"],
        ["setting", "lambda", "deletion", "insertion", "localization_auc"],
        title="RExL Table 4: the λ ablation of RExL-DS",
    )
    run.table(
        "time",
        tables["time"],
        ["setting", "method", "wall s / map", "CPU s / map", "RISE CPU ÷ this", "maps timed"],
        title="RExL Table 3: seconds per map, one state at a time, interleaved, one thread",
    )
    _figure(run, tables["table1"])


def _curve(
    run: TargetRun, name: str, model, cfg: dict, s: dict, states, targets, labels, values: dict
) -> tuple[list[dict], tuple[int, dict]]:
    """Rows of the learning curve: each snapshot of ``s["curve"][name]`` (a folder of
    ``rexl-<steps>.pt``, ``xrl train rexl --snapshot-every``) scored on the test states and, for
    the choice, on validation states (an agent's: fresh greedy episodes from
    :data:`VALIDATION_SEED`, disjoint from the test and training seeds; the shapes classifier's:
    its ``val`` split); returns the rows and ``(steps, test values)`` of the
    snapshot with the lowest validation deletion."""
    folder = Path(s["curve"][name])
    if not folder.is_absolute() and not folder.exists():  # a zoo folder: red-fetch-green-rexl-ds/snapshots
        folder = Path(_zoo(s["curve"][name]))
    snaps = sorted(folder.glob("rexl-*.pt"), key=lambda p: int(p.stem.split("-")[1]))
    if not snaps:
        raise ValueError(f"rexl-deletion: curve folder {folder} holds no rexl-<steps>.pt snapshots")
    if s.get("curve_snapshots") is not None:  # at most this many, evenly spaced, the last included
        keep = np.unique(np.linspace(0, len(snaps) - 1, max(1, int(s["curve_snapshots"]))).round().astype(int))
        snaps = [snaps[i] for i in keep]
    val_states, val_targets, _ = load_states(  # shapes: the val split; agents: fresh validation episodes
        model,
        "shapes" if cfg["data"] == "shapes" else "episodes",
        len(states),
        0,
        s["seed"],
        run,
        VALIDATION_SEED,
        "validation-episodes",
        part="val",
    )
    rows, chosen, best = [], None, float("inf")
    for snap in snaps:
        steps = int(snap.stem.split("-")[1])

        def validate(snap=snap):
            from xrl.pipeline import score

            maps = _explain(model, val_states, val_targets, {"rexl": {"agent": str(snap), "seed": s["seed"]}})
            deletion = score(model, val_states, maps, ["deletion"], val_targets, batch_size=len(val_states))
            return {"deletion": deletion.values["rexl"]["deletion"]}

        val = nanmean(run.row(f"{name}-validation-{steps}", validate)["deletion"])

        def compute(snap=snap):
            maps = _explain(model, states, targets, {"rexl": {"agent": str(snap), "seed": s["seed"]}}, batch_size=25)
            return scores(model, states, targets, labels, maps["rexl"])

        v = run.row(f"{name}-curve-{steps}", compute)
        if val is not None and val < best:
            best, chosen = val, (steps, v)
        rows.append(
            {
                "setting": name,
                "agent": s["curve"][name],  # as given (a zoo folder, or a path)
                "steps": steps,
                "validation deletion": val,
                "deletion": nanmean(v["deletion"]),
                "insertion": nanmean(v["insertion"]),
                "deletion minus RISE": format_interval(paired_interval(v["deletion"], values["RISE"]["deletion"])),
            }
        )
    if chosen is None:
        raise ValueError(f"rexl-deletion: no snapshot in {folder} has a validation deletion")
    return rows, chosen


def _curve_figure(run: TargetRun, rows: list[dict]) -> None:
    from xrl.viz.overlay import figure, save_figure

    fig, axes = figure(1, 1, (5, 3.2))
    ax = axes[0][0]
    for name in dict.fromkeys(r["setting"] for r in rows):
        mine = [r for r in rows if r["setting"] == name]
        ax.plot([r["steps"] for r in mine], [r["deletion"] for r in mine], marker="o", label=f"{name} RExL-DS")
    ax.set_xlabel("ACER steps", fontsize=8)
    ax.set_ylabel("test deletion ↓", fontsize=8)
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    save_figure(fig, run.figure("learning_curve"), "RExL-DS learning curve")


def _figure(run: TargetRun, rows: list[dict]) -> None:
    from xrl.viz.overlay import figure, save_figure

    settings = list(dict.fromkeys(r["setting"] for r in rows))
    fig, axes = figure(1, len(settings), (4.5 * len(settings), 3.2))
    for ax, name in zip(axes[0], settings):
        mine = [r for r in rows if r["setting"] == name]
        ax.scatter([r["deletion"] for r in mine], [r["insertion"] for r in mine])
        for r in mine:
            ax.annotate(r["method"], (r["deletion"], r["insertion"]), fontsize=7)
        ax.set_xlabel("deletion ↓", fontsize=8)
        ax.set_ylabel("insertion ↑", fontsize=8)
        ax.set_title(name, fontsize=9)
        ax.grid(alpha=0.3)
    save_figure(fig, run.figure("deletion_insertion"), "RExL Tables 1-2")


# the runs of this module's targets; their declarations (claim, settings, budget) are in targets.json
RUNS = {"rexl-deletion": run_deletion}
