"""The machinery every ``xrl reproduce`` target shares: settings, resumable rows, tables, intervals.

A *target* (:class:`Target`) re-runs one table or figure of a paper on zoo agents. Every target
is declared in ``targets.json`` beside this file (its claim, what it re-runs, its full and quick
settings, how long it took here); its ``run`` function lives in the paper's module, which lists
it in ``RUNS``, and :func:`load_targets` binds the two. The ``run`` function receives a
:class:`TargetRun` and computes the table row by row with :meth:`TargetRun.row`: each row is a JSON file
in ``<out>/rows/`` written atomically when it finishes, holding a key that hashes the target,
its settings and the row's name. Running the same command again reuses every row
whose key matches, so a killed run goes on where it stopped and a changed setting recomputes the
rows it changes. Data a target collects goes to ``<out>/data/`` (``collect`` itself resumes).
At the end :meth:`TargetRun.table` writes each table as Markdown, CSV and JSON, figures are PNG files
beside them, and ``<out>/summary.md`` + ``<out>/run.json`` record the settings, the command and
the wall time.

``quick=True`` applies the target's ``quick`` settings over its full budget: the same code path on
a handful of states and episodes, for the tests.

``device`` (``xrl reproduce --device``) is where every row computes: the run loads its agents and
mask networks there (:meth:`TargetRun.load_agent`, :meth:`TargetRun.load_mask_network`) and puts
the states it reads there (:meth:`TargetRun.to_device`); seeded draws stay on CPU generators
(``docs/architecture.md#devices``). The device is recorded in ``run.json`` and ``summary.md`` but
enters neither the rows' keys nor the settings, so rows computed on one device are reused on another.
"""

from __future__ import annotations

import csv
import hashlib
import json
import math
import os
import re
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from xrl.files import FolderLock, _finite, atomic_path, write_json
from xrl.stats import paired_interval  # noqa: F401  (re-exported: the papers' modules use it from here)

PAPERS = {
    "digr": 'DIGR: Xing, Nagata, Zou, Neftci & Krichmar 2022, "Policy Distillation with Selective Input '
    'Gradient Regularization for Efficient Interpretability", arXiv:2205.08685',
    "visionmask": 'VisionMask: Zuo, Khan, Wang, Katz & Qiu 2025, "Why the Agent Made that Decision: '
    'Contrastive Explanation Learning for Reinforcement Learning", arXiv:2411.16120',
    "rexl": 'RExL: Agarwal, Iqbal, Buridi, Manjusha & Das 2021, "Reinforcement Explanation Learning", arXiv:2111.13406',
    "fls": 'FLS: Nikulin, Ianina, Aliev & Nikolenko 2019, "Free-Lunch Saliency via Attention in Atari '
    'Agents", arXiv:1908.02511',
}


@dataclass
class Target:
    """One table or figure of a paper that ``xrl reproduce NAME`` re-runs."""

    name: str
    paper: str
    """key of :data:`PAPERS` (or ``"xrl"`` for our own analyses)"""
    claim: str
    """which table/figure of the paper, in a few words"""
    reruns: str
    """what it re-runs here, on which zoo agents"""
    settings: dict
    """the full budget (every setting with its default)"""
    quick: dict
    """settings laid over ``settings`` by ``--quick``"""
    run: Callable[[TargetRun], None]
    measured: str = "not measured yet"
    """how long the full budget took here, and under which load (``--list`` prints it)"""
    docs: str = ""
    selectors: tuple = ()
    """settings that only choose which rows run (lists of agents, settings, attacks...): each row
    names its item, so these are left out of the rows' keys and narrowing them reuses rows"""
    notes: dict = field(default_factory=dict)
    """remarks on single settings (``--list`` prints them), e.g. how a budget differs from the paper's"""

    def resolved(self, overrides: Mapping | None = None, *, quick: bool = False) -> dict:
        settings = dict(self.settings)
        if quick:
            settings.update(self.quick)
        for key, value in (overrides or {}).items():
            if key not in self.settings:
                raise ValueError(
                    f"{self.name} has no setting {key!r}; its settings: {', '.join(sorted(self.settings))}"
                )
            if isinstance(self.settings[key], list) and not isinstance(value, list):
                value = [value]  # --set agents=pong: a list of one
            settings[key] = value
        return settings


class TargetRun:
    """One run of a target into ``out``: resumable rows, data, tables and figures (what a
    target's ``run`` function receives)."""

    def __init__(
        self,
        target: Target,
        out: str | os.PathLike,
        settings: dict,
        *,
        quick: bool = False,
        progress: bool = True,
        device: str | torch.device = "cpu",
    ) -> None:
        from xrl.ops import resolve_device

        #: where the rows compute (resolved first: a CUDA device that is not there is refused
        #: before the output folder is made); not in the rows' keys
        self.device: torch.device = resolve_device(device)
        self.target, self.out, self.settings, self.quick = target, Path(out), settings, quick
        self.progress = progress
        self.out.mkdir(parents=True, exist_ok=True)
        self.computed: list[str] = []  # rows computed in this run (not reused)
        self.reused: list[str] = []
        self.tables: dict[str, str] = {}
        self.figures: list[str] = []
        self.notes: list[str] = []
        #: what the summary says the run re-runs: the target's text unless the run replaces it
        #: (a DIGR target given another teacher than the paper's)
        self.reruns: str = target.reruns

    # -- rows -------------------------------------------------------------------------------------
    def key(self, name: str) -> str:
        # settings left at None are unused (an optional override), so adding one keeps old rows
        settings = {k: v for k, v in self.settings.items() if k not in self.target.selectors and v is not None}
        text = json.dumps({"target": self.target.name, "settings": settings, "row": name}, sort_keys=True, default=str)
        return hashlib.sha256(text.encode()).hexdigest()[:16]

    def row(self, name: str, compute: Callable[..., dict]) -> dict:  # ...: lambdas binding loop variables as defaults
        """The row ``name``: read from ``rows/<name>.json`` when it holds this run's key, else
        computed by ``compute()`` (a JSON-able dict) and written atomically."""
        path = self.out / "rows" / f"{_safe(name)}.json"
        key = self.key(name)
        if path.exists():
            try:
                stored = json.loads(path.read_text())
            except (OSError, ValueError):  # cut, damaged or not text: computed again
                stored = {}
            if (
                isinstance(stored, dict)
                and stored.get("key") == key
                and "value" in stored
                and stored.get("sha256", _digest(stored["value"])) == _digest(stored["value"])
            ):  # a row written with its digest is reused only when its value still matches it
                self.reused.append(name)
                return stored["value"]
        if self.progress:
            print(f"[{self.target.name}] {name} ...", flush=True)
        start = time.perf_counter()
        value = compute()
        value = json.loads(json.dumps(_finite(value), default=str))  # as JSON gives it back (NaN: None)
        write_json(
            path,
            {"key": key, "row": name, "seconds": time.perf_counter() - start, "value": value, "sha256": _digest(value)},
        )
        self.computed.append(name)
        _row_done(self, name)
        # what was written is what a resumed run reads: NaN becomes None in both
        return json.loads(path.read_text())["value"]

    # -- the device -------------------------------------------------------------------------------
    def load_agent(self, source: str | os.PathLike):
        """:func:`xrl.load_agent` of ``source`` onto the run's device."""
        from xrl.agents.load import load_agent

        return load_agent(source, device=self.device)

    def load_mask_network(self, path: str | os.PathLike, *, method: str | None = None):
        """:func:`xrl.agents.mask_nets.load_mask_network` of ``path``, built on the CPU (where its
        file is read) and moved to the run's device."""
        from xrl.agents.mask_nets import load_mask_network

        with torch.device("cpu"):  # load_mask_network builds the network on the default device
            network = load_mask_network(path, method=method)
        return network.to(self.device)

    def to_device(self, tensor: torch.Tensor) -> torch.Tensor:
        """``tensor`` (states, actions or labels read from a file, made on the CPU) on the run's device."""
        return tensor.to(self.device)

    # -- data -------------------------------------------------------------------------------------
    def collect(
        self,
        name: str,
        agent,
        *,
        episodes: int,
        seed: int = 0,
        env_settings: Mapping | None = None,
        max_steps: int | None = None,
        sample: bool = False,
    ) -> Path:
        """``<out>/data/<name>.h5``: the agent's seeded episodes (``xrl collect``; resumes)."""
        from xrl.data.collect import collect

        return collect(
            agent,
            episodes=episodes,
            out=self.out / "data" / f"{name}.h5",
            seed=seed,
            env_settings=env_settings,
            max_steps=max_steps,
            sample=sample,
            progress=False,
        )

    # -- outputs ----------------------------------------------------------------------------------
    def table(
        self,
        name: str,
        rows: Sequence[Mapping],
        columns: Sequence[str],
        *,
        title: str,
        notes: Sequence[str] = (),
        extra: Mapping | None = None,
        digits: int = 3,
    ) -> Path:
        """``<name>.md``, ``<name>.csv`` and ``<name>.json`` (rows, columns, title, notes,
        ``extra``: e.g. paired intervals or per-state values)."""
        lines = [f"### {title}", "", "| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
        lines += ["| " + " | ".join(_cell(r.get(c), digits) for c in columns) + " |" for r in rows]
        if notes:
            lines += [""] + list(notes)
        md = "\n".join(lines) + "\n"
        with atomic_path(self.out / f"{name}.md") as tmp:
            tmp.write_text(md)
        with atomic_path(self.out / f"{name}.csv") as tmp, tmp.open("w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(columns)
            for r in rows:
                writer.writerow(["" if r.get(c) is None else r.get(c) for c in columns])
        write_json(
            self.out / f"{name}.json",
            {
                "title": title,
                "columns": list(columns),
                "rows": [dict(r) for r in rows],
                "notes": list(notes),
                **dict(extra or {}),
            },
        )
        self.tables[name] = md
        if self.progress:
            print(md)
        return self.out / f"{name}.md"

    def figure(self, name: str) -> Path:
        """The path of figure ``name`` (a PNG in the output folder), recorded in the summary."""
        self.figures.append(f"{name}.png")
        return self.out / f"{name}.png"

    def note(self, text: str) -> None:
        self.notes.append(text)
        if self.progress:
            print(text)


def _digest(value: Any) -> str:
    """The sha256 of a row's value as canonical JSON (a damaged row file is computed again)."""
    return hashlib.sha256(json.dumps(value, sort_keys=True, default=str).encode()).hexdigest()


def _row_done(run: TargetRun, name: str) -> None:
    """Called after every row is written (the tests replace it to inject a kill)."""


def run_target(
    target: Target,
    out: str | os.PathLike,
    *,
    quick: bool = False,
    overrides: Mapping | None = None,
    progress: bool = True,
    command: str | None = None,
    device: str | torch.device = "cpu",
) -> TargetRun:
    """Run (or resume) ``target`` into ``out`` and write ``summary.md`` and ``run.json``;
    ``device``: where every row computes (``"auto"``, ``"cpu"``, ``"cuda"``, ``"cuda:N"``; a CUDA
    device that is not there is a ValueError before anything is written)."""

    settings = target.resolved(overrides, quick=quick)
    run = TargetRun(target, out, settings, quick=quick, progress=progress, device=device)
    with FolderLock(run.out / ".lock", str(run.out), "wait for it to finish or use another --out"):
        return _run_locked(target, run, settings, quick, overrides, progress, command)


def _run_locked(
    target: Target, run: TargetRun, settings: dict, quick: bool, overrides, progress: bool, command: str | None
) -> TargetRun:
    """:func:`run_target` once it holds the output folder's lock (one run at a time per folder)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    start, cpu = time.perf_counter(), time.process_time()
    try:
        target.run(run)
    finally:
        torch.set_num_threads(threads)
    seconds, cpu_seconds = time.perf_counter() - start, time.process_time() - cpu
    command = command or f"xrl reproduce {target.name}" + (" --quick" if quick else "") + "".join(
        f" --set {k}={_flag(v)}" for k, v in (overrides or {}).items()
    ) + ("" if run.device.type == "cpu" else f" --device {run.device}")
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    record = {
        "target": target.name,
        "paper": PAPERS.get(target.paper, target.paper),
        "claim": target.claim,
        "command": command,
        "quick": quick,
        "settings": settings,
        "device": str(run.device),
        "seconds": seconds,
        "cpu_seconds": cpu_seconds,
        "load_average_at_end": load,
        "rows_computed": len(run.computed),
        "rows_reused": len(run.reused),
        "tables": list(run.tables),
        "figures": run.figures,
        "notes": run.notes,
        "torch_threads": 1,
        "python": sys.version.split()[0],
        "torch": torch.__version__,
    }
    write_json(run.out / "run.json", record)
    text = [
        f"# {target.name}: {target.claim}",
        "",
        f"Paper: {PAPERS.get(target.paper, target.paper)}",
        "",
        f"Re-runs: {run.reruns}",
        "",
        f"Command: `{command}`",
        "",
        f"Settings: `{json.dumps(settings, sort_keys=True)}`",
        "",
        f"Device: {_device_name(run.device)}",
        "",
    ]
    text += [run.tables[name] for name in run.tables]
    text += [f"![{f}]({f})\n" for f in run.figures]
    text += run.notes
    text += [
        "",
        f"Took {seconds:.0f} s of wall time ({cpu_seconds:.0f} s of CPU in this process; "
        f"{len(run.computed)} rows computed, {len(run.reused)} reused from an earlier run; load average "
        f"{load if load is None else round(load, 2)} at the end).",
    ]
    with atomic_path(run.out / "summary.md") as tmp:
        tmp.write_text("\n".join(text) + "\n")
    if progress:
        print(
            f"wrote {run.out}/summary.md, run.json, "
            + ", ".join(f"{t}.md/.csv/.json" for t in run.tables)
            + ("" if not run.figures else ", " + ", ".join(run.figures))
        )
    return run


# -- statistics ------------------------------------------------------------------------------------
def format_interval(d: Mapping | None, digits: int = 3) -> str:
    """``+0.012 [-0.003, +0.030]``, bold when the interval excludes 0."""
    if not d or d.get("mean") is None:
        return "–"
    if d.get("low") is None:
        return f"{d['mean']:+.{digits}f}"
    text = f"{d['mean']:+.{digits}f} [{d['low']:+.{digits}f}, {d['high']:+.{digits}f}]"
    return f"**{text}**" if d["low"] > 0 or d["high"] < 0 else text


def nanmean(values: Sequence) -> float | None:
    v = np.asarray([np.nan if x is None else x for x in values], dtype=np.float64)
    v = v[~np.isnan(v)]
    return float(v.mean()) if v.size else None


# -- helpers ---------------------------------------------------------------------------------------
def _device_name(device: torch.device) -> str:
    """``cpu``, or ``cuda:0 (NVIDIA H100 80GB HBM3)``: the device a run computed on, for its summary."""
    if device.type != "cuda":
        return str(device)
    index = device.index if device.index is not None else torch.cuda.current_device()
    return f"cuda:{index} ({torch.cuda.get_device_name(index)})"


def _safe(name: str) -> str:
    return re.sub(r"[^\w.-]+", "_", name)


def _cell(value: Any, digits: int) -> str:
    if value is None:
        return "–"
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return "–"
        if value != 0 and (abs(value) < 10**-digits or abs(value) >= 1e5):
            return f"{value:.2e}"
        return f"{value:.{digits}f}"
    return str(value)


def _flag(value: Any) -> str:
    return ",".join(map(str, value)) if isinstance(value, (list, tuple)) else str(value)


@dataclass
class Targets:
    """The declared targets by name (``xrl.reproduce.TARGETS``, made by :func:`load_targets`); ``get``
    of an unknown name lists the known ones."""

    targets: dict[str, Target] = field(default_factory=dict)

    def add(self, target: Target) -> Target:
        if target.name in self.targets:
            raise ValueError(f"two reproduce targets named {target.name!r}")
        self.targets[target.name] = target
        return target

    def get(self, name: str) -> Target:
        if name not in self.targets:
            raise ValueError(f"unknown reproduce target {name!r}; known: {', '.join(self.targets)}")
        return self.targets[name]


TARGET_KEYS = {"name", "paper", "claim", "reruns", "settings", "quick", "measured", "docs", "selectors", "notes"}
REQUIRED_KEYS = {"name", "paper", "claim", "reruns", "settings", "quick"}


def load_targets(runs: Mapping[str, Callable[[TargetRun], None]], path: str | os.PathLike | None = None) -> Targets:
    """The registry of the targets declared in ``targets.json`` (or ``path``), each bound to its
    run function in ``runs`` (target name -> function); a declaration without a run, a run
    without a declaration, or a malformed declaration is an error that names it."""
    if path is None:
        path = Path(__file__).with_name("targets.json")
    try:
        declared = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise ValueError(f"{path}: not a readable JSON list of reproduce targets ({err})") from None
    if not isinstance(declared, list):
        raise ValueError(f"{path}: expected a JSON list of target objects, got {type(declared).__name__}")
    registry = Targets()
    for i, entry in enumerate(declared):
        name = entry.get("name", "unnamed") if isinstance(entry, dict) else repr(entry)
        where = f"{path}: target {i} ({name})"
        if not isinstance(entry, dict):
            raise ValueError(f"{where}: expected an object with keys {', '.join(sorted(REQUIRED_KEYS))}")
        missing, unknown = REQUIRED_KEYS - entry.keys(), entry.keys() - TARGET_KEYS
        if missing or unknown:
            raise ValueError(
                f"{where}: missing keys {sorted(missing)}, unknown keys {sorted(unknown)}; "
                f"a target has {', '.join(sorted(TARGET_KEYS))}"
            )
        if not isinstance(entry["settings"], dict) or not isinstance(entry["quick"], dict):
            raise ValueError(f"{where}: settings and quick must be objects")
        if not set(entry["quick"]) <= set(entry["settings"]):
            raise ValueError(
                f"{where}: quick sets {sorted(set(entry['quick']) - set(entry['settings']))}, "
                "which are not among its settings"
            )
        if entry["name"] not in runs:
            raise ValueError(f"{where}: no run function; the paper's module must list it in RUNS")
        registry.add(Target(**{**entry, "selectors": tuple(entry.get("selectors", ()))}, run=runs[entry["name"]]))
    extra = set(runs) - set(registry.targets)
    if extra:
        raise ValueError(f"{path}: run functions without a declaration: {', '.join(sorted(extra))}")
    return registry
