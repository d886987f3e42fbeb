"""``xrl demo``: the README's main job, end to end on Red-Fetch-Green, through ``bench`` and ``report``.

1. the agent: the zoo ``red-fetch-green`` agent, or a quickly trained one when the zoo has none;
2. the shipped ``quick`` bench spec (``xrl/bench/specs/quick.toml``) with that agent: seeded greedy
   episodes stored as a StateDataset (with ground truth), every registered explainer on the same
   states (targets = the actions taken) — the baselines and the learned explainers of the papers
   (VisionMask, the Stalder Explainer, RExL), whose zoo networks are found by the agent's weights
   fingerprint — and every registered metric on every method;
3. the papers' agents, each a section of its own (the bench spec format has one method list for
   all agents): the zoo DIGR student's vanilla gradient (``quick_digr`` spec, shown beside the
   teacher's) and a zoo Sparse FLS agent's attention (``quick_fls``), scored by every metric;
4. a results folder: ``report.html`` (open it in a browser: tables, curves, radar, sanity, time
   per map, gallery), ``results.json``/``results.csv``, ``explain.png`` (frame and one overlay
   per method), ``summary.md`` (table, the papers' rows, agent card, settings, bench time),
   ``data/`` and ``jobs/``; the sections in ``digr/`` and ``fls/`` (each with its report).

Running it again resumes: finished jobs are kept. ``quick=True`` shrinks every budget so the
tests can run the whole path in seconds.
"""

from __future__ import annotations

import json
import os
import time
import tomllib
from pathlib import Path

import numpy as np
import torch

from xrl.agents.load import ZOO_DIR
from xrl.bench import find_spec, load_results, parse_spec, run_bench
from xrl.bench.layout import read_npz
from xrl.bench.results import group_table
from xrl.data.dataset import StateDataset
from xrl.files import atomic_path
from xrl.report import build_report
from xrl.viz.overlay import explanation_grid

ENV = "red-fetch-green"
QUICK = {"n_states": 6, "episodes": 2, "max_steps": 12, "lipschitz_samples": 2}
#: ``quick=True``'s method settings over the spec's: the slow methods' samples, steps and windows
#: cut ~5x (the sanity check re-explains every state once per randomized layer, so these set the
#: quick demo's time); the same code paths, not the spec's budgets
QUICK_METHODS = {
    "rise": {"n_masks": 100},
    "extremal_perturbation": {"iterations": 10},
    "lime": {"n_samples": 60},
    "occlusion": {"stride": 8},
    "greydanus": {"stride": 8},
    "sarfa": {"stride": 8},
    "smoothgrad": {"n_samples": 8},
    "integrated_gradients": {"n_steps": 8},
}
#: the papers' agents, one section each: folder -> (shipped spec, what it shows)
SECTIONS = {
    "digr": ("quick_digr", "DIGR student (Xing et al. 2022): its vanilla gradient, beside the teacher's"),
    "fls": ("quick_fls", "Sparse FLS agent (Nikulin et al. 2019): its attention, beside its gradient"),
}
#: the columns of the papers' rows in summary.md
PAPER_COLUMNS = (
    "localization.auc",
    "localization.unimportant",
    "deletion",
    "insertion",
    "accuracy",
    "sanity.passed",
    "time_per_map",
)
LEARNED = ("visionmask", "stalder_explainer", "rexl")


def demo_agent(out: Path, *, zoo: Path | None = None, quick: bool = False) -> tuple[Path, dict]:
    """The zoo agent's checkpoint and card, or train one into ``out/agent`` (resumable) when it
    is absent."""
    zoo = Path(zoo or ZOO_DIR) / ENV / "agent.pt"
    if zoo.exists():
        return zoo, json.loads(zoo.with_suffix(".json").read_text())
    from xrl.train.agent import AgentArgs, train_agent

    print(f"no zoo agent at {zoo}: training one (resumes if interrupted)")
    args = AgentArgs(
        env=ENV,
        total_timesteps=4_096 if quick else 300_000,
        n_envs=4 if quick else None,
        eval_episodes=5 if quick else 100,
        checkpoint_every=2_048 if quick else 50_000,
        out=str(out / "agent"),
        progress=not quick,
    )
    path = train_agent(args)
    return path, json.loads(path.with_suffix(".json").read_text())


def demo_spec(agent: Path, *, quick: bool, seed: int):
    """The shipped ``quick`` spec with ``agent``, ``seed`` and (``quick=True``) tiny budgets."""
    data = tomllib.loads(find_spec("quick").read_text())
    data["name"] = "demo"
    data["seeds"] = [seed]
    data["agents"][0]["agent"] = str(Path(agent).resolve())
    if quick:
        data["n_states"] = QUICK["n_states"]
        data["agents"][0].update(episodes=QUICK["episodes"], max_steps=QUICK["max_steps"])
        data["metric_settings"]["lipschitz"]["n_samples"] = QUICK["lipschitz_samples"]
        settings = data.setdefault("method_settings", {})
        for method, values in QUICK_METHODS.items():
            settings[method] = {**settings.get(method, {}), **values}
    return parse_spec(data)


def section_spec(name: str, *, quick: bool, seed: int, zoo: Path | None = None):
    """A section's shipped spec with ``seed`` and (``quick=True``) tiny budgets, or None when the
    zoo lacks its agent."""
    data = tomllib.loads(find_spec(SECTIONS[name][0]).read_text())
    data["seeds"] = [seed]
    agent = data["agents"][0]
    path = Path(zoo or ZOO_DIR) / agent["agent"] / "agent.pt"
    if not path.exists():
        return None
    agent["agent"] = str(path.resolve())
    if quick:
        data["n_states"] = QUICK["n_states"]
        data["gallery"] = min(data.get("gallery", 4), QUICK["n_states"])
        agent.update(episodes=QUICK["episodes"], max_steps=QUICK["max_steps"])
        data["metric_settings"]["lipschitz"]["n_samples"] = QUICK["lipschitz_samples"]
    return parse_spec(data)


def _cells(g: dict, method: str) -> list[str]:
    means = g["means"][method]
    cells = []
    for c in PAPER_COLUMNS:
        v = means.get(c)
        cells.append(
            "–"
            if v is None or (isinstance(v, float) and np.isnan(v))
            else f"{v:.2e}"
            if c == "time_per_map"
            else f"{v:.3f}"
        )
    return cells


def papers_rows(main: dict, sections: dict[str, dict]) -> list[list[str]]:
    """The papers' rows ``[agent, method, *PAPER_COLUMNS]``: the learned explainers on the demo
    agent, the DIGR student's gradient beside the teacher's, the FLS agent's attention beside its
    gradient."""
    rows = [[f"{ENV} (zoo network)", m, *_cells(main, m)] for m in LEARNED if m in main["methods"]]
    if "gradient" in main["methods"]:
        rows.append([f"{ENV} (DIGR's teacher)", "gradient", *_cells(main, "gradient")])
    for _name, g in sections.items():
        rows += [[g["agent"], m, *_cells(g, m)] for m in g["methods"]]
    return rows


def papers_table(main: dict, sections: dict[str, dict]) -> str:
    """:func:`papers_rows` as a Markdown table (summary.md)."""
    lines = ["| agent | method | " + " | ".join(PAPER_COLUMNS) + " |", "|---|---|" + "---|" * len(PAPER_COLUMNS)]
    lines += [f"| {r[0]} | `{r[1]}` | " + " | ".join(r[2:]) + " |" for r in papers_rows(main, sections)]
    return "\n".join(lines)


def run_demo(
    out: str | os.PathLike = "demo-results",
    *,
    quick: bool = False,
    zoo: str | os.PathLike | None = None,
    seed: int = 0,
    device: str | None = None,
) -> Path:
    """Run the demo and return the results folder. Its bench jobs run in one worker process per
    CPU (``run_bench(processes=...)``; one job per process at a time, one torch thread each, as
    in process: the same results); ``quick=True`` runs them in this process. ``device``: where
    the jobs compute (``xrl demo --device``; None: the specs' own, ``auto``)."""
    processes = (
        None if quick else (len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count())
    )
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    started = time.time()
    agent, card = demo_agent(out, zoo=Path(zoo) if zoo else None, quick=quick)
    spec = demo_spec(agent, quick=quick, seed=seed).with_device(device)
    bench_start = time.time()
    run_bench(spec, out, processes=processes, progress=not quick)
    seconds = {"main": time.time() - bench_start}
    sections, missing = _run_sections(out, seconds, quick=quick, seed=seed, zoo=zoo, processes=processes, device=device)
    doc = load_results(out)
    (g,) = doc["groups"]
    _report(out, g, sections)
    n_states = _explain_png(out, g)
    table = group_table(g)
    print(table)
    papers = papers_table(g, sections)
    print(papers)
    timing = ", ".join(f"{k} {v:.0f} s" for k, v in seconds.items())
    summary = _summary(
        doc, g, card, spec, sections, missing, table=table, papers=papers, n_states=n_states, seed=seed, quick=quick
    )
    with atomic_path(out / "summary.md") as tmp:
        tmp.write_text(
            f"{summary}\n\nBench time (this machine, one torch thread per job): {timing}; "
            f"took {time.time() - started:.0f} s in all.\n"
        )
    print(
        f"wrote {out}/report.html (open it in a browser), results.json, results.csv, explain.png, "
        f"summary.md{''.join(f', {n}/report.html' for n in sections)}; bench time: {timing}"
    )
    return out


def _run_sections(
    out: Path, seconds: dict, *, quick: bool, seed: int, zoo, processes, device: str | None = None
) -> tuple[dict, list]:
    """``(sections, missing)``: each section's bench run into ``out/<name>`` with its report and
    its group of results; the sections whose zoo agent is missing. Seconds go to ``seconds``."""
    sections, missing = {}, []
    for name in SECTIONS:
        section = section_spec(name, quick=quick, seed=seed, zoo=Path(zoo) if zoo else None)
        if section is None:
            missing.append(name)
            continue
        section = section.with_device(device)
        start = time.time()
        run_bench(section, out / name, processes=processes, progress=not quick)
        build_report(out / name)
        seconds[name] = time.time() - start
        (sections[name],) = load_results(out / name)["groups"]
    return sections, missing


def _report(out: Path, g: dict, sections: dict) -> None:
    """One report for the run: the main table, the sections summarised and linked, the papers' rows."""
    build_report(
        out,
        sections=[
            {
                "name": name,
                "title": SECTIONS[name][1],
                "results": out / name,
                **({"beside": {"method": "gradient", "label": f"teacher ({ENV}): gradient"}} if name == "digr" else {}),
            }
            for name in sections
        ],
        papers={
            "columns": ["agent", "method", *PAPER_COLUMNS],
            "rows": papers_rows(g, sections),
            "note": "VisionMask, the Stalder Explainer and RExL with the zoo networks made for this agent; "
            "DIGR's student beside its teacher's gradient and an FLS agent's attention beside its gradient "
            "(their sections above). docs/reproduction.md re-runs the papers' tables: xrl reproduce --list.",
        },
    )


def _explain_png(out: Path, g: dict) -> int:
    """``explain.png``: the gallery states, one overlay per method; returns the dataset's size."""
    rows = g["gallery_rows"]
    maps = {m: torch.as_tensor(read_npz(out / g["maps"][m])["gallery"]) for m in g["methods"]}
    with StateDataset.open(out / g["data"]) as ds:
        probs = torch.softmax(torch.as_tensor(ds.scores[rows], device="cpu"), -1).numpy()
        explanation_grid(
            ds.frames(rows),
            maps,
            out / "explain.png",
            actions=ds.actions[np.asarray(rows)],
            action_names=ds.action_names,
            probs=probs,
            title=f"{ENV}: saliency of the action taken",
        )
        return len(ds)


def _summary(
    doc: dict,
    g: dict,
    card: dict,
    spec,
    sections: dict,
    missing: list,
    *,
    table: str,
    papers: str,
    n_states: int,
    seed: int,
    quick: bool,
) -> str:
    """``summary.md`` up to the timing line: agent, states, spec, table, failures, the papers' rows
    and the sections."""
    failed = "".join(f"\nFailed: {f['id']}: {f['error']}" for f in doc["failed"])
    not_run = "".join(f"\n- `{m}` not run: {why}" for m, why in (g.get("not_run") or {}).items())
    section_text = "".join(
        f"\n\n## {SECTIONS[name][1]}\n\nSpec: the shipped `{SECTIONS[name][0]}` spec; full report: "
        f"[{name}/report.html]({name}/report.html)\n\n```\n{group_table(s)}\n```"
        for name, s in sections.items()
    )
    section_text += "".join(
        f"\n\nSection `{name}` not run: the zoo has no `{SECTIONS[name][0]}` agent." for name in missing
    )
    return (
        f"# xrl demo: {ENV}\n\nAgent: {card.get('what')} — `{card.get('command')}`; "
        f"score {json.dumps(card.get('score'))}\n\n"
        f"States: {n_states} from seeded greedy episodes; {len(g['rows'] or [])} scored per "
        f"method (seed {seed}).\n\nSpec: the shipped `quick` spec"
        f"{' with tiny budgets' if quick else ''}: method settings "
        f"{json.dumps({m: s for m, s in spec.methods.items() if s})}; metric settings "
        f"{json.dumps({m: s for m, s in spec.metrics.items() if s})}; every other setting is "
        f"the default.\n\n```\n{table}\n```\n{failed}{not_run}\n\nFull report: [report.html](report.html)"
        f"\n\n![explanations](explain.png)\n\n## The papers in this run\n\nVisionMask, the Stalder Explainer "
        f"and RExL with the zoo networks made for this agent; DIGR's student and an FLS agent in their "
        f"sections below (`docs/reproduction.md` re-runs the papers' tables: `xrl reproduce --list`).\n\n"
        f"{papers}{section_text}"
    )
