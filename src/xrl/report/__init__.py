"""``xrl report RESULTS``: one self-contained HTML file from a bench results folder.

Per (agent, seed): the metric table (best per column marked, direction shown), mean
deletion/insertion curves, a radar per method over metric categories, the sanity checks, time per
map and a gallery of states with every method's overlay, the action taken and its probabilities;
then failed jobs, the spec and the versions. Images are inline PNGs and charts inline SVG, so the
file can be mailed or opened anywhere.

    build_report("bench-results/quick")      # -> bench-results/quick/report.html
"""

from __future__ import annotations

import base64
import json
import math
import os
from pathlib import Path

import jinja2
import numpy as np

from xrl.bench.results import load_results
from xrl.files import atomic_path
from xrl.report import svg

_TEMPLATE = Path(__file__).with_name("template.html")


def format_value(v: float) -> str:
    """How a mean is shown in the tables (the exact value is in the cell's ``data-value``)."""
    if v is None or not math.isfinite(v):
        return "nan"
    return f"{v:.4g}" if abs(v) < 1000 else f"{v:.1f}"


def best_values(g: dict) -> dict[str, float]:
    """The best mean of each column, following its direction (NaN left out)."""
    best = {}
    for c in g["columns"]:
        vals = [g["means"][m].get(c, math.nan) for m in g["methods"]]
        vals = [v for v in vals if math.isfinite(v)]
        if vals:
            best[c] = max(vals) if g["higher_is_better"][c] else min(vals)
    return best


def category_scores(g: dict) -> dict[str, dict[str, float]]:
    """``{method: {category: score in [0, 1]}}``: per column, min-max over the methods with the
    best at 1 (all equal → 1), then the mean over the category's columns."""
    per_column: dict[str, dict[str, float]] = {m: {} for m in g["methods"]}
    for c in g["columns"]:
        vals = {m: g["means"][m].get(c, math.nan) for m in g["methods"]}
        finite = [v for v in vals.values() if math.isfinite(v)]
        if not finite:
            continue
        lo, hi = min(finite), max(finite)
        for m, v in vals.items():
            if not math.isfinite(v):
                continue
            s = 1.0 if hi == lo else (v - lo) / (hi - lo)
            per_column[m][c] = s if g["higher_is_better"][c] else (1.0 if hi == lo else 1 - s)
    categories = list(dict.fromkeys(g["categories"][c] for c in g["columns"]))
    out = {}
    for m in g["methods"]:
        out[m] = {}
        for cat in categories:
            xs = [s for c, s in per_column[m].items() if g["categories"][c] == cat]
            out[m][cat] = float(np.mean(xs)) if xs else math.nan
    return out


def over_seeds(groups: list[dict]) -> dict:
    """One agent's groups merged: per method and column the mean over seeds of the per-seed
    means (NaN left out), the mean curves averaged; methods finished for every seed only."""
    done = [g for g in groups if g["methods"]]
    methods = [m for m in done[0]["methods"] if all(m in g["methods"] for g in done)]
    columns = list(dict.fromkeys(c for g in done for c in g["columns"]))
    means, curves = {}, {}
    for m in methods:
        means[m] = {}
        for c in columns:
            vals = [g["means"][m].get(c, math.nan) for g in done]
            vals = [v for v in vals if v is not None and math.isfinite(v)]
            means[m][c] = float(np.mean(vals)) if vals else math.nan
        curves[m] = {}
        for name in done[0]["curves"].get(m, {}):
            ys = [g["curves"][m][name]["y"] for g in done if name in g["curves"].get(m, {})]
            if len(ys) == len(done) and len({len(y) for y in ys}) == 1:
                curves[m][name] = {"x": done[0]["curves"][m][name]["x"], "y": np.mean(ys, 0).tolist()}
    merged = {k: {} for k in ("higher_is_better", "categories", "skipped", "not_run")}
    for g in done:
        for k in merged:
            merged[k].update(g.get(k, {}))
    seeds = ", ".join(str(g["seed"]) for g in done)
    return {
        "agent": done[0]["agent"],
        "env": done[0]["env"],
        "seed": f"mean over {seeds}",
        "rows": [r for g in done for r in g["rows"] or []],
        "gallery_rows": [],
        "methods": methods,
        "columns": columns,
        "means": means,
        "curves": curves,
        "maps": {},
        **merged,
    }


def build_report(results: str | os.PathLike, out: str | os.PathLike | None = None) -> Path:
    """Write the report of the results folder ``results``; returns its path."""
    folder = Path(results)
    doc = load_results(folder)
    folder = folder if folder.is_dir() else folder.parent
    out = Path(out) if out is not None else folder / "report.html"
    groups = []
    for agent in dict.fromkeys(g["agent"] for g in doc["groups"]):
        mine = [g for g in doc["groups"] if g["agent"] == agent]
        if len([g for g in mine if g["methods"]]) > 1:
            groups.append(_group(over_seeds(mine), doc["spec"], folder))
        groups += [_group(g, doc["spec"], folder) for g in mine]
    env = jinja2.Environment(autoescape=True, undefined=jinja2.StrictUndefined)
    html = env.from_string(_TEMPLATE.read_text()).render(
        name=doc["spec"]["name"],
        created=doc["created"],
        folder=str(folder),
        jobs=doc["jobs"],
        groups=groups,
        failed=doc["failed"],
        versions=doc["versions"],
        spec=doc["spec_text"] or json.dumps(doc["spec"], indent=2),
    )
    with atomic_path(out) as tmp:
        tmp.write_text(html)
    return out


def _group(g: dict, spec: dict, folder: Path) -> dict:
    methods = g["methods"]
    best = best_values(g)
    cells = {
        m: {
            c: {
                "raw": repr(float(g["means"][m].get(c, math.nan))),
                "text": format_value(g["means"][m].get(c, math.nan)),
                "best": c in best and g["means"][m].get(c) == best[c],
            }
            for c in g["columns"]
        }
        for m in methods
    }
    curves = []
    for name in ("deletion", "insertion"):
        series = {
            m: (g["curves"][m][name]["x"], g["curves"][m][name]["y"]) for m in methods if name in g["curves"].get(m, {})
        }
        if series:
            seed = g["seed"] if isinstance(g["seed"], str) else f"seed {g['seed']}"
            curves.append(
                svg.line_chart(
                    series,
                    title=f"{name} ({g['agent']}, {seed})",
                    xlabel="fraction of pixels " + ("deleted" if name == "deletion" else "inserted"),
                    ylabel="p(action)",
                )
            )
    scores = category_scores(g) if methods else {}
    radars = [svg.radar(scores[m], title=m, colour_=svg.colour(i)) for i, m in enumerate(methods)]
    sanity_cols = [c for c in g["columns"] if g["categories"][c] == "sanity"]
    sanity = None
    if sanity_cols:
        verdict = {}
        for m in methods:
            passed = [g["means"][m][c] for c in sanity_cols if c.endswith(".passed")]
            verdict[m] = (
                "n/a"
                if not passed or not math.isfinite(passed[0])
                else "passed"
                if passed[0] >= 0.5
                else "flagged: maps barely change with random weights"
            )
        sanity = {"columns": sanity_cols, "verdict": verdict}
    times = None
    if "time_per_map" in g["columns"]:
        times = svg.bars(
            {m: g["means"][m]["time_per_map"] * 1000 for m in methods}, title="time per map (log scale)", unit="ms"
        )
    return {
        **g,
        "n_states": len(g["rows"] or []),
        "cells": cells,
        "curves": curves,
        "radars": radars,
        "sanity": sanity,
        "times": times,
        "timing": timing_table(g, methods),
        "arrows": {c: "↑" if g["higher_is_better"][c] else "↓" for c in g["columns"]},
        "gallery": _gallery(g, folder) if methods else [],
    }


def timing_table(g: dict, methods: list[str]) -> dict | None:
    """Wall time of every job split by step: ``{"columns": [...], "rows": [(method, [text]), ...],
    "totals": [text per column]}`` (explain, each metric, the curves, the whole job), or None
    for results written before jobs recorded their steps."""
    steps = g.get("seconds_by_step") or {}
    if not any(steps.get(m) for m in methods):
        return None
    present = {step for m in methods for step in steps.get(m, {})}
    metrics = list(dict.fromkeys(c.partition(".")[0] for c in g["columns"]))  # the table's order
    columns = [c for c in ["explain", *metrics] if c in present]
    columns += sorted(present - set(columns)) + ["job"]  # the curves

    def cell(m: str, c: str) -> float:
        value = g["seconds"].get(m) if c == "job" else steps.get(m, {}).get(c)
        return math.nan if value is None else float(value)

    def text(v: float) -> str:
        return "–" if not math.isfinite(v) else f"{v:.1f}"

    rows = [(m, [text(cell(m, c)) for c in columns]) for m in methods]
    totals = [text(sum(v for m in methods if math.isfinite(v := cell(m, c)))) for c in columns]
    return {"columns": columns, "rows": rows, "totals": totals}


def _gallery(g: dict, folder: Path) -> list[dict]:
    import torch

    from xrl.bench.layout import read_npz
    from xrl.data.dataset import StateDataset
    from xrl.viz.overlay import overlay
    from xrl.viz.video import encode_png

    rows = g["gallery_rows"] or []
    if not rows:
        return []
    data = folder / g["data"] if not os.path.isabs(g["data"]) else Path(g["data"])
    maps = {}
    for m, path in g["maps"].items():
        arrays = read_npz(folder / path)
        if list(arrays["gallery_rows"]) != list(rows):
            raise ValueError(
                f"{path} holds maps of rows {list(arrays['gallery_rows'])}, the results "
                f"list {rows}; run `xrl bench` again to rewrite the results"
            )
        maps[m] = arrays["gallery"]
    with StateDataset.open(data) as ds:
        frames = ds.frames(rows)
        actions = ds.actions[rows]
        probs = torch.softmax(torch.as_tensor(ds.scores[rows]), -1).numpy()
        names = ds.action_names
    out = []
    for i, row in enumerate(rows):
        a = int(actions[i])
        out.append(
            {
                "row": row,
                "action": f"{names[a]} ({probs[i][a]:.2f})",
                "probs": list(zip(names, probs[i].tolist())),
                "frame": _b64(encode_png(frames[i])),
                "maps": {m: _b64(encode_png(overlay(frames[i], maps[m][i]))) for m in g["methods"]},
            }
        )
    return out


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


__all__ = ["build_report", "format_value", "best_values", "category_scores", "over_seeds"]
