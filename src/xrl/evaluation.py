"""Score explainers with metrics on the states of a StateDataset: the table behind
``xrl evaluate`` and ``xrl demo``.

Every method explains the same states with the same targets (the actions the agent took, stored
in the dataset), every metric scores every method with the same code, and per-sample values are
kept so that means can be recomputed and compared. A metric a dataset cannot support (e.g.
``localization`` without ground truth) is reported as skipped, not silently zero.

**Targets and the dataset's agent.** A dataset records the weights fingerprint of the agent that
collected it. Explaining it with another agent is refused: the stored actions are the other
agent's choices, not this one's. ``targets="agent"`` (CLI ``--targets agent``) explains the
explained agent's own greedy actions on those states instead, ``targets="dataset"`` the stored
actions anyway. A dataset written before fingerprints were recorded gets a warning.
"""

from __future__ import annotations

import csv
import math
import os
import time
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from xrl.agents.model import Model
from xrl.data.dataset import StateDataset
from xrl.explainers import get_explainer
from xrl.files import atomic_path, write_json
from xrl.metrics import METRICS, get_metric
from xrl.metrics.base import Metric
from xrl.ops import chunks


@dataclass
class Evaluation:
    """Per-sample values ``values[method][column]`` (column = metric or ``metric.output``),
    and each column's direction."""

    methods: list[str]
    columns: list[str]
    higher_is_better: dict[str, bool]
    values: dict[str, dict[str, list[float]]] = field(default_factory=dict)
    skipped: dict[str, str] = field(default_factory=dict)
    rows: list[int] = field(default_factory=list)
    """the dataset rows scored, in the order of the per-sample values"""
    seconds: dict[str, dict[str, float]] = field(default_factory=dict)
    """wall time per method: ``"explain"`` (its maps) and each metric (scoring them)"""

    def means(self) -> dict[str, dict[str, float]]:
        """NaN-free mean of every column (NaN = undefined for that sample, left out)."""
        out: dict = {}
        for method in self.methods:
            out[method] = {}
            for col in self.columns:
                v = np.asarray(self.values[method].get(col, []), dtype=np.float64)
                v = v[~np.isnan(v)]
                out[method][col] = float(v.mean()) if v.size else math.nan
        return out

    def table(self) -> str:
        """A plain-text table; the best value of each column is marked with ``*``."""
        means = self.means()
        arrows = {c: ("↑" if self.higher_is_better[c] else "↓") for c in self.columns}
        best = {}
        for c in self.columns:
            vals = [means[m][c] for m in self.methods if not math.isnan(means[m][c])]
            if vals:
                best[c] = max(vals) if self.higher_is_better[c] else min(vals)
        header = ["method"] + [f"{c} {arrows[c]}" for c in self.columns]
        rows = [
            [m] + [_fmt(means[m][c]) + ("*" if best.get(c) == means[m][c] else " ") for c in self.columns]
            for m in self.methods
        ]
        widths = [max(len(r[i]) for r in [header] + rows) for i in range(len(header))]
        lines = ["  ".join(x.ljust(w) for x, w in zip(header, widths))]
        lines += ["  ".join(x.ljust(w) for x, w in zip(r, widths)) for r in rows]
        lines += [f"(skipped {k}: {v})" for k, v in self.skipped.items()]
        for c in self.columns:  # a `<metric>.passed` column: methods failing it on average
            metric, _, out = c.rpartition(".")
            failed = [m for m in self.methods if out == "passed" and means[m][c] < 0.5]
            if failed:
                reason = getattr(METRICS.get(metric), "flagged", None) if metric in METRICS else None
                lines.append(f"flagged: {', '.join(failed)} ({reason or f'mean {c} < 0.5'})")
        return "\n".join(lines)

    def write(self, folder: str | os.PathLike) -> tuple[Path, Path]:
        """``metrics.csv`` (means) and ``metrics.json`` (means, per-sample values, directions)."""
        folder = Path(folder)
        means = self.means()
        with atomic_path(folder / "metrics.csv") as tmp:
            with open(tmp, "w", newline="") as f:
                w = csv.writer(f)
                w.writerow(["method"] + self.columns)
                for m in self.methods:
                    w.writerow([m] + [means[m][c] for c in self.columns])
        write_json(
            folder / "metrics.json",
            {
                "methods": self.methods,
                "columns": self.columns,
                "higher_is_better": self.higher_is_better,
                "means": means,
                "values": self.values,
                "skipped": self.skipped,
                "rows": self.rows,
            },
        )
        return folder / "metrics.csv", folder / "metrics.json"


def _fmt(x: float) -> str:
    if math.isnan(x):
        return "nan"
    return f"{x:.4g}" if abs(x) < 1000 else f"{x:.1f}"


TARGETS = ("dataset", "agent")


def dataset_targets(
    model: Model, dataset: StateDataset, rows: np.ndarray, targets: str | None = None, *, batch_size: int = 64
) -> torch.Tensor:
    """The actions ``(n,)`` to explain on dataset ``rows``: the stored ones when the dataset was
    collected by ``model`` (same weights fingerprint) or ``targets="dataset"``; the model's own
    greedy actions with ``targets="agent"``. Another agent's dataset without ``targets`` is
    refused; a dataset without a recorded fingerprint gets a warning."""
    if targets is not None and targets not in TARGETS:
        raise ValueError(
            f"targets must be one of {TARGETS} (or None: the stored actions of the model's own "
            f"dataset), got {targets!r}"
        )
    if targets == "agent":
        states = dataset.states(rows)
        with torch.inference_mode():
            return torch.cat([model(states[part]).argmax(-1).cpu() for part in chunks(len(rows), batch_size)])
    if targets is None:
        recorded = (dataset.agent or {}).get("fingerprint")
        source = (dataset.agent or {}).get("source")
        if not recorded:
            warnings.warn(
                f"{dataset.path}: the dataset records no agent fingerprint (written before they were "
                "recorded); its stored actions are explained as this agent's",
                stacklevel=3,
            )
        elif recorded != model.fingerprint():
            raise ValueError(
                f"{dataset.path} was collected by another agent ({source}, weights {recorded}) than the one "
                f"explained ({model.info.get('source')}, weights {model.fingerprint()}); its stored actions are "
                "that agent's choices. Explain the explained agent's own actions (targets='agent', CLI "
                "--targets agent) or the stored ones anyway (targets='dataset', --targets dataset)"
            )
    return torch.as_tensor(dataset.actions[rows], dtype=torch.long, device="cpu")  # beside the dataset's states


def explain_dataset(
    model: Model,
    dataset: StateDataset,
    method: str,
    settings: Mapping | None = None,
    *,
    rows: np.ndarray,
    batch_size: int = 64,
    targets: str | None = None,
) -> torch.Tensor:
    """Saliency ``(n, H, W)`` of ``method`` on the dataset ``rows``; targets = the stored actions
    (``targets``: see :func:`dataset_targets`)."""
    explainer = get_explainer(method, model, **dict(settings or {}))
    actions = dataset_targets(model, dataset, rows, targets, batch_size=batch_size)
    maps = []
    for part in chunks(len(rows), batch_size):
        maps.append(explainer.explain(dataset.states(rows[part]), actions[part]))
    return torch.cat(maps)


def evaluate(
    model: Model,
    dataset: StateDataset,
    methods: Mapping[str, Mapping] | list[str],
    metrics: Mapping[str, Mapping] | list[str],
    *,
    n_states: int | None = 64,
    seed: int = 0,
    batch_size: int = 64,
    progress: bool = True,
    saliency: dict[str, torch.Tensor] | None = None,
    rows: np.ndarray | None = None,
    targets: str | None = None,
) -> Evaluation:
    """Explain ``n_states`` dataset states (a seeded sample; all when None) with every method and
    score every map with every metric. ``methods``/``metrics``: names or ``{name: settings}``.
    ``rows``: score exactly these dataset rows instead (e.g. a test split); ``n_states`` and
    ``seed`` are then unused. Computed maps are stored in ``saliency`` when a dict is given.
    ``targets``: the stored actions of the model's own dataset (default), ``"agent"`` (the model's
    greedy actions) or ``"dataset"`` (the stored actions of another agent's dataset); another
    agent's dataset is refused without it (:func:`dataset_targets`)."""
    methods = {m: {} for m in methods} if not isinstance(methods, Mapping) else dict(methods)
    metrics = {m: {} for m in metrics} if not isinstance(metrics, Mapping) else dict(metrics)
    if not methods or not metrics:
        raise ValueError("evaluate needs at least one method and one metric")
    n = len(dataset)
    if rows is not None:
        rows = np.asarray(rows, dtype=np.int64).reshape(-1)
        if rows.size == 0 or rows.min() < 0 or rows.max() >= n:
            raise ValueError(f"rows must be a non-empty list of dataset rows in [0, {n}), got {rows.tolist()[:10]}")
    else:
        if n_states is not None and (
            isinstance(n_states, bool) or not isinstance(n_states, (int, np.integer)) or n_states < 1
        ):
            raise ValueError(f"n_states must be a positive number of states (or None for all), got {n_states!r}")
        rows = (
            np.arange(n)
            if n_states is None or n_states >= n
            else np.sort(np.random.default_rng(seed).choice(n, size=n_states, replace=False))
        )
    states = dataset.states(rows)
    chosen = targets
    target_index = dataset_targets(model, dataset, rows, chosen, batch_size=batch_size)
    stored_labels = dataset.labels(rows)
    labels = torch.as_tensor(stored_labels, device="cpu") if stored_labels is not None else None

    metric_objs: dict[str, Metric] = {name: get_metric(name, **s) for name, s in metrics.items()}
    columns: list[str] = []
    directions: dict[str, bool] = {}
    skipped: dict[str, str] = {}
    for name, metric in metric_objs.items():
        if "labels" in metric.requires and labels is None:
            skipped[name] = "the dataset has no ground-truth labels"
            continue
        outs = metric.outputs or (None,)
        for out in outs:
            col = name if out is None else f"{name}.{out}"
            columns.append(col)
            hib = metric.higher_is_better
            directions[col] = hib[out] if isinstance(hib, dict) and out else bool(hib)

    for name, metric in metric_objs.items():  # memory estimates before anything is computed (XRL_MAX_ALLOC_GB)
        if name not in skipped and hasattr(metric, "check_budget"):
            metric.check_budget(min(len(rows), batch_size), tuple(dataset.state_shape))
    result = Evaluation(list(methods), columns, directions, skipped=skipped, rows=rows.tolist())
    work = [(m, k) for m in methods for k in metric_objs if k not in skipped]
    bar = tqdm(total=len(methods) + len(work), desc="evaluate", disable=not progress)
    for method, settings in methods.items():
        bar.set_postfix_str(f"{method}: explaining")
        started = time.perf_counter()
        maps = explain_dataset(
            model,
            dataset,
            method,
            settings,
            rows=rows,
            batch_size=batch_size,
            targets="dataset" if chosen is None else chosen,
        )
        result.seconds[method] = {"explain": time.perf_counter() - started}
        if saliency is not None:
            saliency[method] = maps
        bar.update()
        explainer = get_explainer(method, model, **settings)
        result.values[method] = {}
        for name, metric in metric_objs.items():
            if name in skipped:
                continue
            bar.set_postfix_str(f"{method}: {name}")
            started = time.perf_counter()
            values: dict = {}
            for part in chunks(len(rows), batch_size):
                v = metric(
                    model=model,
                    states=states[part],
                    saliency=maps[part],
                    targets=target_index[part],
                    labels=labels[part] if labels is not None else None,
                    explainer=explainer,
                )
                for key, t in v.items() if isinstance(v, dict) else [(None, v)]:
                    values.setdefault(name if key is None else f"{name}.{key}", []).append(t)
            for col, parts in values.items():
                result.values[method][col] = torch.cat(parts).double().cpu().tolist()
            result.seconds[method][name] = time.perf_counter() - started
            bar.update()
    bar.close()
    return result
