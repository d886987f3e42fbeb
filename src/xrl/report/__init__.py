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
from xrl.report import glossary, svg
from xrl.report.verdict import DETAIL_COLUMNS, verdict

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
    means, curves, values = {}, {}, {}
    for m in methods:
        means[m], values[m] = {}, {}
        for c in columns:
            vals = [g["means"][m].get(c, math.nan) for g in done]
            vals = [v for v in vals if v is not None and math.isfinite(v)]
            means[m][c] = float(np.mean(vals)) if vals else math.nan
            # per state, every seed's states one after another (the verdict pairs methods on them)
            values[m][c] = [
                v for g in done for v in ((g.get("values") or {}).get(m, {}).get(c) or [None] * len(g["rows"] or []))
            ]
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
        "values": values,
        "curves": curves,
        "maps": {},
        **merged,
    }


def with_inside(g: dict) -> dict:
    """``g`` with the column ``localization.inside`` after ``localization.auc``: per state the
    share of the normalised map's mass on important pixels, ``important / (important +
    unimportant)`` (NaN when both are 0), averaged over the states. The raw sums reward small
    maps; the share does not."""
    if not {"localization.important", "localization.unimportant"} <= set(g["columns"]):
        return g
    g = {**g, "values": dict(g.get("values") or {}), "means": dict(g["means"])}
    for m in g["methods"]:
        vals = g["values"].get(m, {})
        imp = np.asarray([np.nan if x is None else x for x in vals.get("localization.important", [])], float)
        un = np.asarray([np.nan if x is None else x for x in vals.get("localization.unimportant", [])], float)
        total = imp + un
        with np.errstate(invalid="ignore", divide="ignore"):
            inside = np.where(total > 0, imp / np.where(total > 0, total, 1.0), np.nan)
        g["values"][m] = {**vals, "localization.inside": [None if np.isnan(x) else float(x) for x in inside]}
        finite = inside[np.isfinite(inside)]
        g["means"][m] = {**g["means"][m], "localization.inside": float(finite.mean()) if finite.size else math.nan}
    columns = [c for c in g["columns"] if c != "localization.inside"]
    at = columns.index("localization.auc") + 1 if "localization.auc" in columns else len(columns)
    g["columns"] = columns[:at] + ["localization.inside"] + columns[at:]
    g["higher_is_better"] = {**g["higher_is_better"], "localization.inside": True}
    g["categories"] = {**g["categories"], "localization.inside": "localization"}
    return g


def build_report(
    results: str | os.PathLike,
    out: str | os.PathLike | None = None,
    *,
    include_flagged: bool = False,
    sections: list[dict] | None = None,
    papers: dict | None = None,
) -> Path:
    """Write the report of the results folder ``results``; returns its path.

    ``include_flagged``: methods that fail the sanity check may still be the verdict's best.
    ``sections``: other results folders of the same run summarised and linked from this report
    (``[{"name", "title", "results": folder}]``; ``xrl demo``'s DIGR and FLS sections);
    ``papers``: a table ``{"columns": [...], "rows": [[cell, ...], ...], "note": str}`` shown
    as "The papers in this run"."""
    folder = Path(results)
    doc = load_results(folder)
    folder = folder if folder.is_dir() else folder.parent
    out = Path(out) if out is not None else folder / "report.html"
    groups = _groups(doc, folder, include_flagged=include_flagged)
    linked = []
    for s in sections or []:
        sdoc = load_results(s["results"])
        sgroups = _groups(sdoc, Path(s["results"]), include_flagged=include_flagged, gallery=False)
        href = os.path.relpath(Path(s["results"]) / "report.html", out.parent)
        beside = None
        if s.get("beside") and groups and s["beside"]["method"] in groups[0]["methods"]:
            # a row of this report's headline group shown in the section's table (DIGR: the teacher)
            beside = {"label": s["beside"]["label"], "cells": groups[0]["cells"][s["beside"]["method"]]}
        linked.append({**s, "href": href, "beside": beside, "groups": [g for g in sgroups if g["headline"]]})
    from xrl.viz.overlay import key_colours

    env = jinja2.Environment(autoescape=True, undefined=jinja2.StrictUndefined)
    columns = list(dict.fromkeys(c for g in groups + [g for s in linked for g in s["groups"]] for c in g["columns"]))
    hib = {c: h for g in groups + [g for s in linked for g in s["groups"]] for c, h in g["higher_is_better"].items()}
    html = env.from_string(_TEMPLATE.read_text()).render(
        name=doc["spec"]["name"],
        created=doc["created"],
        folder=str(folder),
        jobs=doc["jobs"],
        groups=groups,
        sections=linked,
        papers=papers,
        key=key_colours(),
        glossary=[glossary.entry(c, hib[c]) for c in columns],
        failed=doc["failed"],
        versions=doc["versions"],
        spec=doc["spec_text"] or json.dumps(doc["spec"], indent=2),
    )
    with atomic_path(out) as tmp:
        tmp.write_text(html)
    return out


def _groups(doc: dict, folder: Path, *, include_flagged: bool, gallery: bool = True) -> list[dict]:
    """Every group of the results to show: per agent the mean over seeds (when several seeds
    finished) then each seed; the first of each agent is its headline (the verdict at the top)."""
    groups = []
    for agent in dict.fromkeys(g["agent"] for g in doc["groups"]):
        mine = [g for g in doc["groups"] if g["agent"] == agent]
        shown = ([over_seeds(mine)] if len([g for g in mine if g["methods"]]) > 1 else []) + mine
        for i, g in enumerate(shown):
            groups.append(
                {
                    **_group(g, doc["spec"], folder, include_flagged=include_flagged, gallery=gallery),
                    "headline": i == 0,
                }
            )
    return groups


def _group(g: dict, spec: dict, folder: Path, *, include_flagged: bool = False, gallery: bool = True) -> dict:
    g = with_inside(g)
    methods = g["methods"]
    v = verdict(g, include_flagged=include_flagged) if methods else None
    flagged = set(v["flagged"]) if v else set()
    ranked = v["columns"] if v else {}
    cells = {}
    for m in methods:
        cells[m] = {}
        for c in g["columns"]:
            r = ranked.get(c)
            mean = g["means"][m].get(c, math.nan)
            cells[m][c] = {
                "raw": repr(float(mean)),
                "text": format_value(mean),
                "best": bool(r and r["ranked"] and r["leader"] == m),
                "tied": bool(r and r["ranked"] and m in r["best"] and r["leader"] != m),
            }
    main = [c for c in g["columns"] if c not in DETAIL_COLUMNS]
    detail = [c for c in ("localization.inside", *DETAIL_COLUMNS) if c in g["columns"]]
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
    scores = category_scores({**g, "columns": main}) if methods else {}
    # one method alone has nothing to be placed between: every axis would read "the best"
    radars = (
        [svg.radar(scores[m], title=m, colour_=svg.colour(i)) for i, m in enumerate(methods)]
        if len(methods) > 1
        else []
    )
    sanity_cols = [c for c in g["columns"] if g["categories"][c] == "sanity"]
    sanity = None
    if sanity_cols:
        verdicts = {}
        for m in methods:
            passed = [g["means"][m][c] for c in sanity_cols if c.endswith(".passed")]
            verdicts[m] = (
                "n/a"
                if not passed or not math.isfinite(passed[0])
                else "passed"
                if passed[0] >= 0.5
                else "flagged: maps barely change with random weights"
            )
        sanity = {"columns": sanity_cols, "verdict": verdicts}
    times = None
    if "time_per_map" in g["columns"]:
        times = svg.bars(
            {m: g["means"][m]["time_per_map"] * 1000 for m in methods}, title="time per map (log scale)", unit="ms"
        )
    return {
        **g,
        "n_states": len(g["rows"] or []),
        "main_columns": main,
        "detail_columns": detail,
        "verdict": v,
        "flagged": flagged,
        "cells": cells,
        "curves": curves,
        "radars": radars,
        "sanity": sanity,
        "times": times,
        "timing": timing_table(g, methods),
        "arrows": {c: "↑" if g["higher_is_better"][c] else "↓" for c in g["columns"]},
        "help": {c: glossary.entry(c, g["higher_is_better"][c]) for c in g["columns"]},
        "gallery": _gallery(g, folder) if methods and gallery else [],
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

    def text(v: float) -> str:  # 3 significant digits: most steps of a quick run take well under 0.1 s
        return "–" if not math.isfinite(v) else f"{v:.3g}"

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
        probs = torch.softmax(torch.as_tensor(ds.scores[rows], device="cpu"), -1).numpy()
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
