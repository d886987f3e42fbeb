"""Merge finished jobs into ``results.json`` / ``results.csv``, and read them back (the report).

``results.json``::

    {"format": "xrl.bench.results", "spec": <resolved spec>, "spec_text": <the TOML or null>,
     "versions": {"xrl": ..., "torch": ..., ...}, "created": <UTC time>,
     "jobs": {"total", "done", "failed", "missing"},
     "failed": [{"id", "error", "traceback"}], "missing": [<job id>],
     "groups": [{"agent", "env", "seed", "data", "rows", "gallery_rows",
                 "methods", "columns", "higher_is_better", "categories",
                 "means": {method: {column: mean}}, "values": {method: {column: [per state]}},
                 "skipped": {metric: why}, "not_run": {method: why}, "curves": {method: {"deletion": {"x", "y"}}},
                 "seconds": {method: wall time of the job},
                 "seconds_by_step": {method: {"explain" | metric | "<curve> curve": wall time}},
                 "maps": {method: npz path}}]}

``results.csv``: one row per (agent, seed, method) with the means of every column.
NaN (undefined) is written as null in JSON and as an empty cell in CSV.
"""

from __future__ import annotations

import csv
import json
import math
import os
import platform
import time
from importlib import metadata
from pathlib import Path

from xrl.bench.layout import Plan, gallery_positions, is_done, job_paths, plan, relative
from xrl.bench.spec import Spec
from xrl.files import atomic_path, write_json

FORMAT = "xrl.bench.results"
_PACKAGES = ("xrl", "torch", "numpy", "gymnasium", "stable-baselines3", "captum", "ray")


def versions() -> dict[str, str]:
    out = {"python": platform.python_version(), "platform": platform.platform()}
    for name in _PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    return out


def merge(spec: Spec, out: str | os.PathLike) -> dict:
    """Gather every job of ``spec`` found in ``out`` into ``results.json`` and ``results.csv``."""
    return write_results(plan(spec, out))


def write_results(laid: Plan) -> dict:
    """:func:`merge` of a spec already laid out in its folder (:func:`xrl.bench.layout.plan`)."""
    spec, out = laid.spec, laid.out
    groups, failed, missing = [], [], []
    by_group: dict[tuple, dict] = {}
    for job in laid.jobs:
        g = by_group.get((job.agent, job.seed))
        if g is None:
            agent = next(a for a in spec.agents if a.name == job.agent)
            g = by_group[(job.agent, job.seed)] = {
                "agent": job.agent,
                "env": agent.env,
                "seed": job.seed,
                "data": relative(laid.data[job.agent, job.seed], out),
                "rows": None,
                "gallery_rows": None,
                "methods": [],
                "columns": [],
                "higher_is_better": {},
                "categories": {},
                "means": {},
                "values": {},
                "skipped": {},
                "curves": {},
                "seconds": {},
                "seconds_by_step": {},
                "maps": {},
                "not_run": spec.not_run.get(job.agent, {}),
            }
            groups.append(g)
        paths = job_paths(out, job)
        if is_done(out, job):
            r = json.loads(paths["json"].read_text())
            g["methods"].append(job.method)
            g["rows"] = r["rows"]
            for c in r["columns"]:
                if c not in g["columns"]:
                    g["columns"].append(c)
            g["higher_is_better"].update(r["higher_is_better"])
            g["categories"].update(r["categories"])
            g["skipped"].update(r["skipped"])
            g["means"][job.method] = r["means"]
            g["values"][job.method] = r["values"]
            g["curves"][job.method] = r["curves"]
            g["seconds"][job.method] = r["seconds"]
            g["seconds_by_step"][job.method] = r.get("seconds_by_step", {})  # absent in jobs before it
            g["maps"][job.method] = relative(paths["npz"], out)
        elif paths["error"].exists():
            e = json.loads(paths["error"].read_text())
            failed.append({"id": job.id, "error": e["error"], "traceback": e["traceback"]})
        else:
            missing.append(job.id)
    if groups:
        for g in groups:
            if g["rows"] is not None:
                g["gallery_rows"] = [g["rows"][i] for i in gallery_positions(len(g["rows"]), spec.gallery)]
    n = len(laid.jobs)
    doc = {
        "format": FORMAT,
        "spec": laid.resolved,
        "spec_text": spec.text,
        "versions": versions(),
        "created": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
        "jobs": {"total": n, "done": n - len(failed) - len(missing), "failed": len(failed), "missing": len(missing)},
        "failed": failed,
        "missing": missing,
        "groups": groups,
    }
    write_json(out / "results.json", doc)
    columns = list(dict.fromkeys(c for g in groups for c in g["columns"]))
    with atomic_path(out / "results.csv") as tmp:
        with open(tmp, "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["agent", "env", "seed", "method", *columns])
            for g in groups:
                for m in g["methods"]:
                    w.writerow([g["agent"], g["env"], g["seed"], m, *(_cell(g["means"][m].get(c)) for c in columns)])
    return doc


def _cell(x) -> str:
    return "" if x is None or (isinstance(x, float) and math.isnan(x)) else repr(float(x))


def load_results(folder: str | os.PathLike) -> dict:
    """``results.json`` of a bench results folder, checked; NaN restored where JSON has null."""
    folder = Path(folder)
    path = folder / "results.json" if folder.is_dir() else folder
    if not path.exists():
        raise FileNotFoundError(
            f"no results.json in {folder}; expected the folder written by `xrl bench SPEC --out FOLDER`"
        )
    try:
        doc = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"{path} is not valid JSON ({err}); run `xrl bench` again to rewrite it") from None
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        raise ValueError(f"{path} is not an xrl bench results file (format {FORMAT!r})")
    for g in doc["groups"]:
        for m in g["means"]:
            g["means"][m] = {c: math.nan if v is None else v for c, v in g["means"][m].items()}
    return doc


def group_table(g: dict) -> str:
    """The plain-text table of one (agent, seed) group, best per column marked (``Evaluation.table``)."""
    from xrl.evaluation import Evaluation

    return Evaluation(
        g["methods"],
        g["columns"],
        g["higher_is_better"],
        values=g["values"],
        skipped=g["skipped"],
        rows=g["rows"] or [],
    ).table()
