"""Benchmark specs: a TOML file naming agents, methods, metrics and seeds, checked as a whole.

Format (every key but ``[[agents]]`` optional; see ``docs/bench.md``)::

    name = "quick"
    seeds = [0]             # each seed: which episodes are collected and which states are drawn
    n_states = 32           # states scored per (agent, seed)
    threads = 1             # torch threads per job
    gallery = 4             # states shown with every method's overlay in the report
    store_saliency = false  # keep every job's maps in jobs/*.npz (gallery maps are always kept)
    methods = "all"         # or a list of registered names
    metrics = "all"
    device = "auto"         # where jobs compute: "auto" (CUDA when available), "cpu", "cuda", "cuda:N"
    gpus_per_job = 1        # Ray's num_gpus per job (default 1 on CUDA, else 0; fractions allowed)

    [[agents]]
    agent = "red-fetch-green"   # zoo name, SB3 .zip or xrl .pt (paths relative to the spec)
    env = "red-fetch-green"     # default: the env the agent was trained on
    episodes = 16
    # data = "states.h5"        # a StateDataset to use instead of collecting

    [method_settings.greydanus]
    radius = 4

    [metric_settings.lipschitz]
    n_samples = 8

:func:`load_spec` reports *every* problem at once, each with its line in the file
(:class:`SpecError`), before anything runs: unknown keys and names, wrong types, a setting a
method does not have or of the wrong type, settings a metric refuses, an agent trained on
another env, a dataset of another env or shape or collected by another agent. A spec is
configuration: checking it reads the TOML, the agents' cards and headers and the datasets'
headers, never an agent's weights, and builds no explainer and no env. What needs the agents
themselves (a method that cannot explain an agent or refuses a value, an env without the labels
a metric needs, a device that is not there) is checked by :func:`xrl.bench.runner.prepare`
before the first job, with the same one-line problems naming the spec's lines.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import tomllib
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

SPECS_DIR = Path(__file__).parent / "specs"

_TOP = {
    "name",
    "seeds",
    "n_states",
    "threads",
    "gallery",
    "store_saliency",
    "methods",
    "metrics",
    "agents",
    "method_settings",
    "metric_settings",
    "device",
    "gpus_per_job",
}
_AGENT = {"name", "agent", "env", "env_settings", "data", "episodes", "max_steps", "sample"}


class SpecError(ValueError):
    """Every problem of a spec, one per line: ``file:line: place: message``."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        super().__init__(f"the spec has {len(problems)} problem(s):\n  " + "\n  ".join(problems))

    @classmethod
    def in_file_order(cls, problems: list[str]) -> SpecError:
        """The error listing ``problems`` (``file:line: ...``) in the order of their lines."""
        return cls(sorted(problems, key=lambda p: int(m.group(1)) if (m := re.match(r"[^:]*:(\d+):", p)) else 0))


@dataclass
class AgentSpec:
    name: str
    agent: str
    env: str
    env_settings: dict
    data: str | None = None
    episodes: int = 16
    max_steps: int | None = None
    sample: bool = False
    inputs: str = ""
    """what the states depend on beyond these fields: the agent's weights fingerprint, and the
    size and modification time of a given data file (so a retrained agent or a new file is not
    mistaken for the one a stored result was computed with)"""


@dataclass(frozen=True)
class Job:
    """One cell of the grid: one method on one agent's states for one seed, scored by every metric."""

    agent: str
    seed: int
    method: str
    settings: dict
    metrics: dict
    n_states: int
    threads: int
    gallery: int
    store_saliency: bool
    states: dict
    """the agent's entry of the spec (source, env, collection settings, inputs): the job's states"""
    network: str = ""
    """for a learned explainer (VisionMask, Stalder Explainer, RExL), the weights fingerprint of
    every network it runs, whether named in its settings or found in the zoo by the agent's
    fingerprint (:func:`xrl.bench.prepare.network_identity`): a retrained network makes another key; "" for the rest"""

    @property
    def id(self) -> str:
        return f"{self.agent}/seed{self.seed}/{self.method}"

    @property
    def key(self) -> str:
        """Hash of everything that determines the job's result (a stored result with another
        key is stale and run again). ``network`` enters only when set, so the keys of methods
        without a network are the ones they had before it existed."""
        fields = asdict(self)
        if not fields["network"]:
            del fields["network"]
        text = json.dumps(fields, sort_keys=True, default=str)
        return hashlib.sha256(text.encode()).hexdigest()[:16]


@dataclass
class Spec:
    """A checked spec: configuration only (no model, env or explainer). :func:`xrl.bench.runner.prepare`
    fills in what needs the agents (``not_run``, ``networks``, each agent's ``inputs`` from its
    loaded weights) and returns it with the models."""

    name: str
    seeds: list[int]
    n_states: int
    threads: int
    gallery: int
    store_saliency: bool
    agents: list[AgentSpec]
    methods: dict[str, dict]
    metrics: dict[str, dict]
    not_run: dict[str, dict[str, str]] = field(default_factory=dict)
    """``{agent: {method: why}}``: methods of ``methods = "all"`` that cannot explain that agent"""
    networks: dict[str, dict[str, str]] = field(default_factory=dict)
    """``{agent: {method: fingerprints}}``: the networks learned explainers run for that agent
    (:func:`xrl.bench.prepare.network_identity`), part of their jobs' keys"""
    text: str | None = None
    path: str | None = None
    device: str = "auto"
    """where the jobs compute: ``"auto"`` (CUDA where the job runs, when there is one), ``"cpu"``,
    ``"cuda"``, ``"cuda:N"`` (:func:`xrl.ops.resolve_device`); not part of the results"""
    gpus_per_job: float | None = None
    """Ray's ``num_gpus`` per job; None: 1 when :attr:`device` is CUDA, else 0 (:meth:`gpus`)"""
    every_method: bool = False
    """``methods = "all"``: a method that cannot explain an agent is left out (``not_run``), not an error"""
    every_metric: bool = False
    """``metrics = "all"``: a metric the data has no labels for is skipped, not an error"""

    def jobs(self) -> list[Job]:
        """The grid, agents × seeds × methods, in that order."""
        return [
            Job(
                a.name,
                s,
                m,
                self.methods[m],
                self.metrics,
                self.n_states,
                self.threads,
                self.gallery,
                self.store_saliency,
                asdict(a),
                self.networks.get(a.name, {}).get(m, ""),
            )
            for a in self.agents
            for s in self.seeds
            for m in self.methods
            if m not in self.not_run.get(a.name, {})
        ]

    def resolved(self) -> dict:
        """The spec with every choice made (JSON), as recorded in the results."""
        return {
            "name": self.name,
            "seeds": self.seeds,
            "n_states": self.n_states,
            "threads": self.threads,
            "gallery": self.gallery,
            "store_saliency": self.store_saliency,
            "agents": [asdict(a) for a in self.agents],
            "methods": self.methods,
            "metrics": self.metrics,
            "not_run": self.not_run,
            "networks": self.networks,
        }

    def with_device(self, device: str | None) -> Spec:
        """This spec computing on ``device`` (``xrl bench --device``; None: as the spec says). A
        ``gpus_per_job`` the spec sets stays; the default follows the new device."""
        if device is None:
            return self
        if not _is_device(device):
            raise ValueError(f"device must be 'auto', 'cpu', 'cuda' or 'cuda:N', got {device!r}")
        return replace(self, device=device)

    def gpus(self) -> float:
        """Ray's ``num_gpus`` for each job: ``gpus_per_job``, else 1 when the device is CUDA
        (``"auto"``: when this machine has one) and 0 otherwise."""
        if self.gpus_per_job is not None:
            return self.gpus_per_job
        if self.device == "auto":
            import torch

            return 1 if torch.cuda.is_available() else 0
        return 1 if self.device.startswith("cuda") else 0

    def where(self, place: tuple) -> str:
        """``file:line: place`` of a key of the spec, for a problem found after parsing."""
        return _Locator(self.text or "", self.path or "<spec>")(place)


def _is_word(name) -> bool:
    """A name that is one file name inside its folder: letters, digits, ``_ . -``, and not ``.``
    or ``..`` (which would write results into or above the output folder's parent)."""
    return isinstance(name, str) and bool(re.fullmatch(r"[\w.-]+", name)) and set(name) != {"."}


def _is_device(value) -> bool:
    return isinstance(value, str) and bool(re.fullmatch(r"auto|cpu|cuda(:\d+)?", value))


def find_spec(name_or_path: str | os.PathLike) -> Path:
    """A spec file path, or the shipped spec of that name (``quick``, ``full``)."""
    path = Path(name_or_path)
    if path.is_file():
        return path
    shipped = SPECS_DIR / f"{name_or_path}.toml"
    if shipped.is_file():
        return shipped
    known = ", ".join(sorted(p.stem for p in SPECS_DIR.glob("*.toml")))
    raise FileNotFoundError(
        f"no spec file {str(name_or_path)!r} and no shipped spec of that name; shipped specs: {known}"
    )


def load_spec(name_or_path: str | os.PathLike, *, device: str | None = None, load_weights: bool | None = None) -> Spec:
    """Read and check a spec file (or a shipped spec by name); raises :class:`SpecError`. No
    weights are read (:func:`parse_spec`). ``device`` overrides the spec's (:meth:`Spec.with_device`,
    ``xrl bench --device``). ``load_weights`` is ignored (a spec never reads weights; kept for
    callers from when it did)."""
    path = find_spec(name_or_path)
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        raise SpecError([f"{path}: not UTF-8 text ({err.reason} at byte {err.start}); a spec is a TOML file"]) from None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as err:
        raise SpecError([f"{path}: not valid TOML: {err}"]) from None
    return parse_spec(data, text=text, path=path, device=device)


def parse_spec(
    data: dict,
    *,
    text: str | None = None,
    path: str | os.PathLike | None = None,
    device: str | None = None,
    load_weights: bool | None = None,
) -> Spec:
    """Check a spec given as a dict (what ``tomllib`` reads); ``text`` locates problems by line.

    Reads the agents' cards and headers (``load_agent(weights=False)``: the network described by
    the file, stand-in weights, nothing of the file run) and the datasets' headers, never weights;
    builds no explainer and no env. ``device`` overrides the spec's; ``load_weights`` is ignored."""
    from xrl.explainers import EXPLAINERS
    from xrl.metrics import METRICS

    where = _Locator(text or "", str(path) if path else "<spec>")
    problems: list[str] = []

    def bad(place: tuple, message: str) -> None:
        problems.append(f"{where(place)}: {message}")

    for key in sorted(set(data) - _TOP):
        bad((key,), f"unknown key {key!r}; known keys: {', '.join(sorted(_TOP))}")
    top = _top_level(data, path, bad)
    methods = _selection(data, "methods", EXPLAINERS.names(), bad)
    metrics = _selection(data, "metrics", METRICS.names(), bad)
    method_settings = _settings_tables(data, "method_settings", methods, bad)
    metric_settings = _settings_tables(data, "metric_settings", metrics, bad)
    _check_method_settings(method_settings, bad)
    _check_metric_settings({m: metric_settings.get(m, {}) for m in metrics}, bad)
    labels_needed = [m for m in metrics if "labels" in METRICS.get(m).requires and data.get("metrics") != "all"]
    agents = _agents(data, Path(path).parent if path else Path.cwd(), bad, labels_needed)
    if top["n_states"] == data.get("n_states", 32):  # (a bad one is already refused)
        for agent in agents:
            _check_n_states(top["n_states"], agent, bad)
    if problems:
        raise SpecError.in_file_order(problems)
    spec = Spec(
        agents=agents,
        methods={m: method_settings.get(m, {}) for m in methods},
        metrics={m: metric_settings.get(m, {}) for m in metrics},
        text=text,
        path=str(path) if path else None,
        every_method=data.get("methods", "all") == "all",
        every_metric=data.get("metrics", "all") == "all",
        **top,
    )
    return spec.with_device(device)


def _top_level(data: dict, path, bad) -> dict:
    """The spec's own settings (name, seeds, budgets, device), checked; a bad one is refused and
    its default stands in, so the rest is still checked."""
    name = data.get("name", Path(path).stem if path else "bench")
    if not _is_word(name):
        bad(("name",), f"name must be a word (letters, digits, _ . -, not only dots), got {name!r}")
    seeds = data.get("seeds", [0])
    if not (isinstance(seeds, list) and seeds and all(_is_int(s, 0) for s in seeds) and len(set(seeds)) == len(seeds)):
        bad(("seeds",), f"seeds must be a non-empty list of distinct integers >= 0, got {seeds!r}")
        seeds = [0]
    top: dict = {"name": name, "seeds": list(seeds)}
    for key, default, low, high in (("n_states", 32, 1, 10**6), ("threads", 1, 1, 1024), ("gallery", 4, 0, 1000)):
        value = data.get(key, default)
        if not _is_int(value, low) or value > high:
            bad((key,), f"{key} must be an integer >= {low} (at most {high:,}), got {value!r}")
            value = default
        top[key] = value
    top["store_saliency"] = data.get("store_saliency", False)
    if not isinstance(top["store_saliency"], bool):
        bad(("store_saliency",), f"store_saliency must be true or false, got {top['store_saliency']!r}")
    top["device"] = data.get("device", "auto")
    if not _is_device(top["device"]):
        bad(("device",), f'device must be "auto", "cpu", "cuda" or "cuda:N", got {top["device"]!r}')
        top["device"] = "auto"
    gpus = top["gpus_per_job"] = data.get("gpus_per_job")
    if gpus is not None and (
        isinstance(gpus, bool) or not isinstance(gpus, (int, float)) or not 0 <= gpus < 1e6 or round(gpus, 4) != gpus
    ):
        bad(
            ("gpus_per_job",),
            f"gpus_per_job must be a number >= 0, Ray's num_gpus per job (a fraction such as 0.25 shares a GPU, "
            f"at most 4 decimals), got {gpus!r}",
        )
        top["gpus_per_job"] = None
    return top


def _check_method_settings(tables: dict[str, dict], bad) -> None:
    """Each setting is one the method's constructor has, of the type it declares
    (:func:`xrl.method_settings.check_method_settings`); the values themselves are checked when the
    runner builds each method for its agents (:func:`xrl.bench.runner.prepare`)."""
    from xrl.explainers import EXPLAINERS
    from xrl.method_settings import check_method_settings

    for m, settings in tables.items():
        for key, value in settings.items():
            try:
                check_method_settings(EXPLAINERS, {m: {key: value}}, "setting")
            except ValueError as err:
                bad(("method_settings", m, key), f"method {m!r} refuses its settings: {str(err).split(' ', 1)[1]}")


def _check_metric_settings(tables: dict[str, dict], bad) -> None:
    """Each metric built once with its settings: the constructor the jobs call (no model needed)."""
    from xrl.metrics import get_metric

    for m, settings in tables.items():
        try:
            get_metric(m, **settings)
        except (TypeError, ValueError, FileNotFoundError) as err:
            bad(setting_place("metric_settings", m, settings, err), f"metric {m!r} refuses its settings: {err}")


def setting_place(table: str, name: str, settings: dict, err: Exception) -> tuple:
    """The setting an error message names (``'radus'``, ``step_fraction``), else the table."""
    for key in settings:
        if re.search(rf"\b{re.escape(key)}\b", str(err)):
            return (table, name, key)
    return (table, name)


def _check_n_states(n_states: int, agent: AgentSpec, bad) -> None:
    """``n_states`` is at most the states the agent has: its dataset's rows, or ``episodes x
    max_steps`` when it is collected with a step limit (more would quietly score fewer)."""
    if agent.data is not None:
        from xrl.data.dataset import StateDataset

        with StateDataset.open(agent.data) as ds:
            most, where = len(ds), f"its dataset {agent.data} holds"
    elif agent.max_steps is not None:
        most, where = agent.episodes * agent.max_steps, "episodes x max_steps collects at most"
    else:
        return
    if n_states > most:
        bad(("n_states",), f"n_states = {n_states} but agent {agent.name!r} has fewer states: {where} {most}")


def _agent_name(source: str) -> str:
    """``zoo/pong/agent.pt`` -> ``pong``, ``runs/x.zip`` -> ``x``, a zoo name stays itself."""
    if source.startswith("hf://"):  # hf://ORG/REPO[@REV] -> REPO
        return source.split("/")[-1].split("@")[0]
    path = Path(source)
    if path.suffix not in (".pt", ".zip"):
        return source
    return path.parent.name if path.stem == "agent" and path.parent.name else path.stem


def _is_int(value: Any, low: int) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= low


def _selection(data: dict, key: str, known: list[str], bad) -> list[str]:
    value = data.get(key, "all")
    if value == "all":
        return list(known)
    if not isinstance(value, list) or not value or not all(isinstance(v, str) for v in value):
        bad((key,), f'{key} must be "all" or a non-empty list of names, got {value!r}')
        return []
    for v in value:
        if v not in known:
            bad((key,), f"unknown {key[:-1]} {v!r}; known: {', '.join(known)}")
    if len(set(value)) != len(value):
        bad((key,), f"{key} lists a name twice: {value!r}")
    return [v for v in dict.fromkeys(value) if v in known]


def _settings_tables(data: dict, key: str, selected: list[str], bad) -> dict[str, dict]:
    tables = data.get(key, {})
    if not isinstance(tables, dict):
        bad((key,), f"[{key}.NAME] tables expected, got {tables!r}")
        return {}
    out = {}
    for name, settings in tables.items():
        if name not in selected:
            bad(
                (key, name),
                f"settings for {name!r}, which is not among the {key.split('_')[0]}s "
                f"run ({', '.join(selected) or 'none'})",
            )
        elif not isinstance(settings, dict):
            bad((key, name), f"[{key}.{name}] must be a table of settings, got {settings!r}")
        else:
            out[name] = dict(settings)
    return out


def _agents(data: dict, base: Path, bad, labels_needed: list[str]) -> list[AgentSpec]:
    raw_agents = data.get("agents")
    if not isinstance(raw_agents, list) or not raw_agents or not all(isinstance(a, dict) for a in raw_agents):
        bad(("agents",), "expected at least one [[agents]] table naming an agent")
        return []
    agents: list[AgentSpec] = []
    for i, raw in enumerate(raw_agents):
        agent = _agent(raw, i, base, bad, labels_needed)
        if agent is not None:
            if agent.name in {a.name for a in agents}:
                bad(("agents", i, "name"), f"two agents are named {agent.name!r}; give each a distinct name")
            agents.append(agent)
    return agents


def _agent_keys(raw: dict, place: tuple, bad) -> bool:
    """The keys of an ``[[agents]]`` table and the types of its plain settings."""
    ok = True
    for key in sorted(set(raw) - _AGENT):
        bad(place + (key,), f"unknown key {key!r} in [[agents]]; known keys: {', '.join(sorted(_AGENT))}")
        ok = False
    for key, low in (("episodes", 1), ("max_steps", 1)):
        if key in raw and not _is_int(raw[key], low):
            bad(place + (key,), f"{key} must be an integer >= {low}, got {raw[key]!r}")
            ok = False
    if "sample" in raw and not isinstance(raw["sample"], bool):
        bad(place + ("sample",), f"sample must be true or false, got {raw['sample']!r}")
        ok = False
    if raw.get("env_settings") is not None and not isinstance(raw["env_settings"], dict):
        bad(place + ("env_settings",), f"env_settings must be a table, got {raw['env_settings']!r}")
        ok = False
    name = raw.get("name", _agent_name(raw["agent"]))
    if not _is_word(name):
        bad(place + ("name",), f"name must be a word (letters, digits, _ . -, not only dots), got {name!r}")
        ok = False
    return ok


def agent_header(source: str) -> dict:
    """What a spec needs to know of an agent, read from its card and header without its weights
    (``load_agent(weights=False)``; nothing of the file runs): the env it was trained on (name and
    settings), its input shape and its weights fingerprint (None when its card records none)."""
    from xrl.agents.load import load_agent

    model = load_agent(source, weights=False)
    env = model.info.get("env") or {}
    return {
        "env": env.get("name"),
        "env_settings": dict(env.get("settings") or {}),
        "input_shape": tuple(model.input_shape),
        "fingerprint": model.info.get("fingerprint"),
    }


def _agent(raw: dict, i: int, base: Path, bad, labels_needed: list[str]) -> AgentSpec | None:
    from xrl.envs import ENVS

    place = ("agents", i)
    source = raw.get("agent")
    if not isinstance(source, str) or not source:
        bad(place, 'every [[agents]] table needs agent = "<zoo name, .zip or .pt path>"')
        return None
    ok = _agent_keys(raw, place, bad)
    path = base / source
    source = str(path) if path.exists() else source
    try:
        header = agent_header(source)
    except (ValueError, TypeError, FileNotFoundError, RuntimeError) as err:
        bad(place + ("agent",), f"cannot load agent {raw['agent']!r}: {err}")
        return None
    trained = header["env"]
    env = raw.get("env", trained)
    if env is None:
        bad(place, f'agent {raw["agent"]!r} does not record its env; add env = "<name>"')
        return None
    if env not in ENVS and not str(env).startswith("gym:"):  # gym:ID: any Gymnasium image env
        bad(place + ("env",), f"unknown env {env!r}; known envs: {', '.join(ENVS.names())}")
        return None
    if trained is not None and env != trained:
        bad(place + ("env",), f"agent {raw['agent']!r} was trained on {trained!r}, not {env!r}")
        ok = False
    data = raw.get("data")
    if data is not None:
        data = _agent_data(raw, str(data), base, env, header, place, bad, labels_needed)
        ok = ok and data is not None
    if not ok:
        return None
    inputs = header["fingerprint"] or "weights not loaded"
    return AgentSpec(
        name=raw.get("name", _agent_name(raw["agent"])),
        agent=source,
        env=env,
        inputs=inputs + (_data_stamp(data) if data is not None else ""),
        env_settings=dict(raw["env_settings"]) if raw.get("env_settings") is not None else header["env_settings"],
        data=data,
        episodes=raw.get("episodes", 16),
        max_steps=raw.get("max_steps"),
        sample=raw.get("sample", False),
    )


def _data_stamp(data: str) -> str:
    """What of a given data file enters the jobs' keys: its size and modification time."""
    stat = Path(data).stat()
    return f";data {stat.st_size} bytes, mtime {stat.st_mtime_ns}"


def _agent_data(
    raw: dict, data: str, base: Path, env: str, header: dict, place: tuple, bad, labels_needed: list[str]
) -> str | None:
    """The path of an agent's ``data`` file once its header fits the agent (env, state shape, the
    agent that collected it, labels for the metrics named); None when it does not."""
    from xrl.data.dataset import StateDataset

    place += ("data",)
    data_path = base / data
    try:
        with StateDataset.open(data_path) as ds:
            problems = []
            if ds.env["name"] != env:
                problems.append(f"dataset {data} holds {ds.env['name']!r} states, the agent plays {env!r}")
            if tuple(ds.state_shape) != header["input_shape"]:
                problems.append(
                    f"dataset {data} holds states of shape {ds.state_shape}, the agent takes {header['input_shape']}"
                )
            collected_by, mine = (ds.agent or {}).get("fingerprint"), header["fingerprint"]
            if collected_by and mine and collected_by != mine:
                problems.append(
                    f"dataset {data} was collected by another agent ({(ds.agent or {}).get('source')}, "
                    f"weights {collected_by}) than {raw['agent']!r} (weights {mine}); its actions are "
                    "that agent's: collect this agent's states (leave data out)"
                )
            has_labels = ds.has_labels
    except (ValueError, FileNotFoundError) as err:
        bad(place, str(err))
        return None
    for problem in problems:
        bad(place, problem)
    if labels_needed and not has_labels:
        bad(("metrics",), labels_missing(labels_needed, raw.get("name", _agent_name(raw["agent"])), env))
        return None
    return None if problems else str(data_path)


def labels_missing(metrics: list[str], agent: str, env: str) -> str:
    """The problem of metrics named in a spec that need labels an agent's states lack."""
    return (
        f"{', '.join(metrics)} need ground-truth labels, which agent {agent!r} ({env}) has none of; drop them "
        'or use metrics = "all" (metrics without data are then reported as skipped)'
    )


class _Locator:
    """Line numbers of the tables and keys of a TOML text, for error messages.

    A place is a key path such as ``("method_settings", "greydanus", "radius")`` or
    ``("agents", 1, "env")`` (index of an ``[[agents]]`` table); the deepest known prefix is used."""

    def __init__(self, text: str, filename: str) -> None:
        self.filename = filename
        self.lines: dict[tuple, int] = {}
        current: tuple = ()
        counts: dict[tuple, int] = {}
        for n, line in enumerate(text.splitlines(), 1):
            line = line.split("#", 1)[0].strip()
            if m := re.fullmatch(r"\[\[\s*([^\]]+?)\s*\]\]", line):
                table = self._key(m.group(1))
                counts[table] = counts.get(table, -1) + 1
                current = table + (counts[table],)
                self.lines.setdefault(table, n)
            elif m := re.fullmatch(r"\[\s*([^\]]+?)\s*\]", line):
                current = self._key(m.group(1))
            elif m := re.match(r"([\w.\"' -]+?)\s*=", line):
                current_key = current + self._key(m.group(1))
                self.lines.setdefault(current_key, n)
                continue
            else:
                continue
            self.lines.setdefault(current, n)

    @staticmethod
    def _key(text: str) -> tuple:
        return tuple(part.strip().strip("\"'") for part in text.split("."))

    def __call__(self, place: tuple) -> str:
        label = ".".join(f"[{p}]" if isinstance(p, int) else str(p) for p in place).replace(".[", "[")
        for end in range(len(place), 0, -1):
            if place[:end] in self.lines:
                return f"{self.filename}:{self.lines[place[:end]]}: {label}"
        return f"{self.filename}: {label}"
