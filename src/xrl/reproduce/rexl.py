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
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from xrl.reproduce.core import Run, format_interval, nanmean, paired_interval

LAMBDAS = (0.0, 0.7, 0.8, 1.0)


def _zoo(*parts) -> str:
    from xrl.agents.load import ZOO_DIR

    return str(Path(ZOO_DIR).joinpath(*parts))


def setting(name: str) -> dict:
    """Model, data and RExL agents of a setting (zoo paths)."""
    if name == "red-fetch-green":
        return {
            "model": "red-fetch-green",
            "data": _zoo("red-fetch-green-digr", "data.h5"),
            "first_row": 1100,
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


def load_states(model, data: str, n: int, first_row: int, seed: int):
    """States, targets and labels (or None) of the evaluation images."""
    import torch

    if data == "shapes":
        from xrl.data.shapes import object_labels, split

        test = split("test", n, size=model.input_shape[-1], seed=seed)
        return (torch.from_numpy(test.images).float() / 255, torch.from_numpy(test.labels), object_labels(test.masks))
    from xrl.data.dataset import StateDataset

    with StateDataset.open(data) as ds:
        rows = np.arange(first_row, min(len(ds), first_row + n))
        states = ds.states(rows)
        labels = torch.from_numpy(ds.labels(rows)) if ds.has_labels else None
    with torch.no_grad():
        targets = model(states).argmax(-1)
    return states, targets, labels


def scores(model, states, targets, labels, saliency) -> dict[str, list[float]]:
    from xrl.metrics import get_metric

    out = {
        "deletion": get_metric("deletion")(model=model, states=states, saliency=saliency, targets=targets),
        "insertion": get_metric("insertion")(model=model, states=states, saliency=saliency, targets=targets),
    }
    if labels is not None:
        out["localization_auc"] = get_metric("localization")(
            model=model, states=states, saliency=saliency, targets=targets, labels=labels
        )["auc"]
    return {k: v.double().tolist() for k, v in out.items()}


def run_deletion(run: Run) -> None:
    import torch

    from xrl.explainers import get_explainer
    from xrl.train.rexl import load_explained

    s = run.settings
    table, ablation, timing, paired_rows, extra = [], [], [], [], {}
    for name in s["settings"]:
        cfg = setting(name)
        model = load_explained(cfg["model"])
        n = s["n_states"][name] if isinstance(s["n_states"], dict) else s["n_states"]
        states, targets, labels = load_states(model, cfg["data"], n, cfg["first_row"], s["seed"])
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
            covered = torch.tensor([int(t) in explainers["RExL-CS"].agents for t in targets])
            states, targets = states[covered], targets[covered]
            labels = labels[covered] if labels is not None else None
        with torch.no_grad():
            accuracy = float((model(states).argmax(-1) == targets).float().mean())
        values = {}
        for method, explainer in explainers.items():

            def compute(explainer=explainer):
                start = time.perf_counter()
                maps = torch.cat(
                    [explainer.explain(states[i : i + 25], targets[i : i + 25]) for i in range(0, len(states), 25)]
                )
                seconds = time.perf_counter() - start
                return {
                    **scores(model, states, targets, labels, maps),
                    "batched_seconds_per_map": seconds / len(states),
                }

            values[method] = run.row(f"{name}-{method}", compute)
            table.append(
                {
                    "setting": name,
                    "method": method,
                    "states": len(states),
                    "accuracy": accuracy,
                    **{k: nanmean(v) for k, v in values[method].items() if isinstance(v, list)},
                    "batched_seconds_per_map": values[method]["batched_seconds_per_map"],
                }
            )
        for col in ("deletion", "insertion", "localization_auc"):
            if col in values["RISE"]:
                paired_rows.append(
                    {
                        "setting": name,
                        "column": col,
                        **{
                            f"{m} minus RISE": format_interval(paired_interval(values[m][col], values["RISE"][col]))
                            for m in ("RExL-DS", "RExL-CS")
                            if m in values
                        },
                    }
                )
        for lam in LAMBDAS:

            def ablate(lam=lam):
                saliency = get_explainer("rexl", model, agent=cfg["ds"], lam=lam, seed=s["seed"]).explain(
                    states, targets
                )
                return scores(model, states, targets, labels, saliency)

            v = run.row(f"{name}-lambda-{lam}", ablate)
            ablation.append({"setting": name, "lambda": lam, **{k: nanmean(x) for k, x in v.items()}})

        timed = {k: explainers[k] for k in ("RExL-DS", "RExL-CS", "RISE", "Extremal") if k in explainers}

        def time_maps():
            wall = {k: [] for k in timed}
            cpu = {k: [] for k in timed}
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
        for k in timed:
            timing.append(
                {
                    "setting": name,
                    "method": k,
                    "wall s / map": t["wall"][k],
                    "CPU s / map": t["cpu"][k],
                    "RISE CPU ÷ this": t["cpu"]["RISE"] / t["cpu"][k],
                    "maps timed": t["n_timed"],
                }
            )
        extra[name] = {"values": values, "targets": targets.tolist()}
    cols = ["setting", "method", "states", "deletion", "insertion", "localization_auc", "batched_seconds_per_map"]
    run.table(
        "table1",
        table,
        cols,
        title="RExL Tables 1-2: deletion ↓ and insertion ↑ (RISE's CausalMetric, softmax probability of the "
        f"target), localization ROC AUC ↑; RISE with {s['rise_masks']} masks",
        extra={"per_state": extra},
    )
    run.table(
        "paired",
        paired_rows,
        ["setting", "column", "RExL-DS minus RISE", "RExL-CS minus RISE"],
        title="RExL minus RISE over the same states (mean, 95% percentile bootstrap interval; bold = excludes 0; "
        "deletion: negative = RExL better)",
    )
    run.table(
        "lambda",
        ablation,
        ["setting", "lambda", "deletion", "insertion", "localization_auc"],
        title="RExL Table 4: the λ ablation of RExL-DS",
    )
    run.table(
        "time",
        timing,
        ["setting", "method", "wall s / map", "CPU s / map", "RISE CPU ÷ this", "maps timed"],
        title="RExL Table 3: seconds per map, one state at a time, interleaved, one thread",
    )
    _figure(run, table)


def _figure(run: Run, rows: list[dict]) -> None:
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
