"""The report's verdict: per metric category, which method is best, with paired bootstrap intervals.

Every method of a (agent, seed) group was scored on the same states, so two methods are compared
on the per-state differences of their values (``xrl.stats.paired_interval``: the mean difference
with a seeded percentile-bootstrap interval, pairs with a NaN left out). Per column:

* the methods are ordered by their mean, following the column's direction;
* the **leader** is the first *eligible* method: not flagged by the sanity check
  (mean ``sanity.passed`` below 0.5: its maps barely change when the agent's weights are
  randomized) unless ``include_flagged``, and on ``cost`` not a trivial baseline (``random``
  draws noise: it is cheap because it explains nothing);
* every other eligible method whose paired interval against the leader holds 0 is **tied** with
  it; the leader and the methods tied with it are the column's **best**;
* neighbours in the order whose paired interval holds 0 are joined by "=" in the ranking, else
  by ">";
* a column whose methods all have the same mean cannot tell them apart: it is not ranked and not
  starred (say ``sanity.passed`` when every method passes). Sanity columns are a gate, not a
  ranking.

A category's best are the eligible methods best on the most of its ranked columns. The paragraph
in words is generated from these numbers only.
"""

from __future__ import annotations

import math

import numpy as np

from xrl.stats import paired_interval

#: categories ranked by the verdict, in the order it shows them (``sanity`` is the gate)
CATEGORIES = ("faithfulness", "localization", "robustness", "human_agreement", "complexity", "cost")
#: methods that explain nothing (noise): never the best on ``cost``
BASELINES = ("random",)
#: columns moved to the localization detail table (raw sums: a method with small maps "wins")
DETAIL_COLUMNS = ("localization.important", "localization.unimportant")
RESAMPLES = 2_000
LEVEL = 0.95


def flagged_methods(g: dict) -> dict[str, bool]:
    """``{method: True}`` for the methods whose mean ``sanity.passed`` is below 0.5 (the sanity
    metric's own threshold); methods without a sanity value are not flagged."""
    out = {}
    for m in g["methods"]:
        v = g["means"][m].get("sanity.passed", math.nan)
        out[m] = v is not None and math.isfinite(v) and v < 0.5
    return out


def _values(g: dict, m: str, c: str) -> np.ndarray:
    vals = (g.get("values") or {}).get(m, {}).get(c)
    if vals is None:
        return np.full(len(g.get("rows") or []), np.nan)
    return np.asarray([np.nan if v is None else v for v in vals], dtype=np.float64)


def rank_column(
    g: dict,
    c: str,
    *,
    flagged: dict[str, bool],
    include_flagged: bool = False,
    resamples: int = RESAMPLES,
    seed: int = 0,
) -> dict:
    """The ranking of one column (see the module's docstring). Returns ``{"column", "category",
    "higher_is_better", "ranked": bool, "why": reason when not ranked, "order": [{"method", "mean",
    "eligible", "flagged", "vs_best": interval of leader minus it (signed: > 0 = the leader is
    better), "vs_next": interval against the next in the order, "tied": with the leader}],
    "leader", "best": [methods]}``."""
    hib = bool(g["higher_is_better"][c])
    category = g["categories"][c]
    sign = 1.0 if hib else -1.0
    means = {m: g["means"][m].get(c, math.nan) for m in g["methods"]}
    finite = [m for m in g["methods"] if means[m] is not None and math.isfinite(means[m])]
    out = {
        "column": c,
        "category": category,
        "higher_is_better": hib,
        "ranked": False,
        "why": None,
        "order": [],
        "leader": None,
        "best": [],
    }
    if category == "sanity":
        out["why"] = "a check, not a ranking: methods that fail it are flagged"
        return out
    if not finite:
        out["why"] = "no method has a value"
        return out
    if len(finite) == 1:
        out["why"] = "one method: nothing to compare it with"
        return out
    if len({means[m] for m in finite}) == 1:
        out["why"] = "all methods equal: it cannot tell them apart"
        return out

    def eligible(m: str) -> bool:
        if flagged.get(m) and not include_flagged:
            return False
        return not (category == "cost" and m in BASELINES)

    order = sorted(finite, key=lambda m: -sign * means[m])  # stable: ties keep the table's order
    leaders = [m for m in order if eligible(m)]
    if not leaders:
        out["why"] = "no eligible method (all fail the sanity check)"
        return out
    leader = leaders[0]
    signed = {m: sign * _values(g, m, c) for m in order}
    rows = []
    for i, m in enumerate(order):
        vs_best = None if m == leader else paired_interval(signed[leader], signed[m], resamples=resamples, seed=seed)
        vs_next = (
            paired_interval(signed[m], signed[order[i + 1]], resamples=resamples, seed=seed)
            if i + 1 < len(order)
            else None
        )
        rows.append(
            {
                "method": m,
                "mean": float(means[m]),
                "eligible": eligible(m),
                "flagged": bool(flagged.get(m)),
                "vs_best": vs_best,
                "vs_next": vs_next,
                "tied": m != leader and eligible(m) and holds_zero(vs_best),
                "tied_next": vs_next is not None and holds_zero(vs_next),
                "text": f"{means[m]:.4g}",
                "vs_best_text": interval_text(vs_best),
            }
        )
    out.update(
        ranked=True,
        order=rows,
        leader=leader,
        best=[leader] + [r["method"] for r in rows if r["tied"]],
    )
    out["ranking"] = ranking_text(out)
    return out


def holds_zero(interval: dict | None) -> bool:
    """True when a paired interval cannot tell the two apart: it holds 0, or there are too few
    pairs for one (fewer than 2)."""
    if interval is None or interval.get("mean") is None or interval.get("low") is None:
        return True
    return interval["low"] <= 0.0 <= interval["high"]


def interval_text(d: dict | None) -> str:
    """``+0.012 [-0.003, +0.030]`` (``–`` for the leader, the mean alone with too few pairs)."""
    if not d or d.get("mean") is None:
        return "–"
    if d.get("low") is None:
        return f"{d['mean']:+.4g} (too few states for an interval)"
    return f"{d['mean']:+.4g} [{d['low']:+.4g}, {d['high']:+.4g}]"


def ranking_text(r: dict) -> str:
    """``a > b = c > d``: "=" where the paired interval of neighbours holds 0."""
    parts = []
    for i, row in enumerate(r["order"]):
        if i:
            parts.append(" = " if r["order"][i - 1]["tied_next"] else " > ")
        parts.append(row["method"])
    return "".join(parts)


def verdict(
    g: dict,
    *,
    include_flagged: bool = False,
    resamples: int = RESAMPLES,
    seed: int = 0,
) -> dict:
    """The verdict of one group: ``{"columns": {column: rank_column(...)}, "categories": [{"name",
    "columns": [ranked columns], "best": [methods], "wins": {method: n columns best},
    "n_ranked"}], "flagged": [methods], "unranked": {column: why}, "paragraph": str,
    "n_states", "resamples", "level"}``."""
    flagged = flagged_methods(g)
    columns = {
        c: rank_column(g, c, flagged=flagged, include_flagged=include_flagged, resamples=resamples, seed=seed)
        for c in g["columns"]
        if c not in DETAIL_COLUMNS
    }
    categories = []
    for cat in CATEGORIES:
        ranked = [r for r in columns.values() if r["category"] == cat and r["ranked"]]
        if not ranked:
            continue
        wins = {m: sum(m in r["best"] for r in ranked) for m in g["methods"]}
        top = max(wins.values())
        best = [m for m in g["methods"] if top > 0 and wins[m] == top]
        categories.append({"name": cat, "columns": ranked, "best": best, "wins": wins, "n_ranked": len(ranked)})
    out = {
        "columns": columns,
        "categories": categories,
        "flagged": [m for m in g["methods"] if flagged[m]],
        "include_flagged": include_flagged,
        "unranked": {c: r["why"] for c, r in columns.items() if not r["ranked"]},
        # the same, one entry per reason (the report's rows)
        "unranked_rows": [
            {
                "why": why,
                "columns": [c for c, r in columns.items() if not r["ranked"] and r["why"] == why],
                "categories": list(
                    dict.fromkeys(r["category"] for r in columns.values() if not r["ranked"] and r["why"] == why)
                ),
            }
            for why in dict.fromkeys(r["why"] for r in columns.values() if not r["ranked"])
        ],
        "n_states": len(g.get("rows") or []),
        "resamples": resamples,
        "level": LEVEL,
    }
    out["paragraph"] = paragraph(g, out)
    return out


def _names(methods: list[str]) -> str:
    if len(methods) <= 1:
        return "".join(methods)
    return ", ".join(methods[:-1]) + " and " + methods[-1]


def _value(c: str, v: float) -> str:
    if c == "time_per_map":
        return f"{v * 1000:.3g} ms per map"
    return f"{c} {v:.3g}"


def paragraph(g: dict, v: dict) -> str:
    """What to use for what, in words, from the verdict's numbers."""
    if len(g["methods"]) < 2:
        return f"Only {_names(g['methods'])} here: nothing to rank it against in this table."
    if not v["categories"]:
        return "No metric column tells the methods apart here, so no method is recommended."
    sentences = []
    for cat in v["categories"]:
        name = cat["name"].replace("_", " ")
        if not cat["best"]:
            continue
        if len(cat["columns"]) == 1:
            r = cat["columns"][0]
            lead = next(row for row in r["order"] if row["method"] == r["leader"])
            text = f"for {name} use {r['leader']} ({_value(r['column'], lead['mean'])}"
            others = r["best"][1:]
            text += f"; tied with {_names(others)})" if others else ")"
        else:
            best = cat["best"]
            n = cat["wins"][best[0]]
            cols = ", ".join(r["column"] for r in cat["columns"])
            text = (
                f"for {name} use {_names(best).replace(' and ', ' or ')} (best or tied with the best on "
                f"{n} of its {cat['n_ranked']} columns: {cols})"
            )
        sentences.append(text)
    what = "; ".join(sentences) + "."
    what = what[0].upper() + what[1:]
    notes = []
    if v["flagged"]:
        verb = "fails" if len(v["flagged"]) == 1 else "fail"
        left = (
            "kept in the ranking as asked"
            if v["include_flagged"]
            else "left out of the best (its maps do not depend on the agent enough to explain it)"
        )
        notes.append(f"{_names(v['flagged'])} {verb} the sanity check: {left}.")
    baselines = [m for m in BASELINES if m in g["methods"] and m not in v["flagged"]]
    if "time_per_map" in v["columns"] and baselines:
        notes.append(f"{_names(baselines)} draws noise: it is never the best on cost.")
    if v["unranked"]:
        quiet = [c for c, why in v["unranked"].items() if why.startswith("all methods equal")]
        if quiet:
            notes.append(f"{_names(quiet)} cannot tell the methods apart (all equal) and is not ranked.")
    tie = (
        f"Ties: paired {v['level']:.0%} bootstrap intervals over the {v['n_states']} states "
        f"({v['resamples']} resamples) that hold 0."
    )
    return " ".join([what, *notes, tie])


__all__ = ["verdict", "rank_column", "flagged_methods", "ranking_text", "holds_zero", "CATEGORIES", "BASELINES"]
