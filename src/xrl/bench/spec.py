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
(:class:`SpecError`), before anything runs: unknown keys and names, wrong types, settings a
method or metric refuses, an agent trained on another env, a dataset of another env.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import tomllib
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from xrl.agents.model import Model

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
}
_AGENT = {"name", "agent", "env", "env_settings", "data", "episodes", "max_steps", "sample"}


class SpecError(ValueError):
    """Every problem of a spec, one per line: ``file:line: place: message``."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        super().__init__(f"the spec has {len(problems)} problem(s):\n  " + "\n  ".join(problems))


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
    fingerprint (:func:`network_identity`): a retrained network makes another key; "" for the rest"""

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
    (:func:`network_identity`), part of their jobs' keys"""
    text: str | None = None
    path: str | None = None
    models: dict[str, Model] = field(default_factory=dict, repr=False)

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


def _is_word(name) -> bool:
    """A name that is one file name inside its folder: letters, digits, ``_ . -``, and not ``.``
    or ``..`` (which would write results into or above the output folder's parent)."""
    return isinstance(name, str) and bool(re.fullmatch(r"[\w.-]+", name)) and set(name) != {"."}


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


def load_spec(name_or_path: str | os.PathLike, *, load_weights: bool = True) -> Spec:
    """Read and check a spec file (or a shipped spec by name); raises :class:`SpecError`.
    ``load_weights=False`` (``xrl bench --check``) checks it without reading any agent's weights
    (:func:`parse_spec`)."""
    path = find_spec(name_or_path)
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        raise SpecError([f"{path}: not UTF-8 text ({err.reason} at byte {err.start}); a spec is a TOML file"]) from None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as err:
        raise SpecError([f"{path}: not valid TOML: {err}"]) from None
    return parse_spec(data, text=text, path=path, load_weights=load_weights)


def parse_spec(
    data: dict, *, text: str | None = None, path: str | os.PathLike | None = None, load_weights: bool = True
) -> Spec:
    """Check a spec given as a dict (what ``tomllib`` reads); ``text`` locates problems by line.

    ``load_weights=False`` checks it without reading any agent's weights (nothing in an agent file
    runs either way): each agent is built from its file's settings with stand-in weights and the
    fingerprint its card records (``load_agent(weights=False)``), which is enough to check envs,
    data, methods and metrics; the Spec returned is for checking, not for running."""
    from xrl.explainers import EXPLAINERS, get_explainer
    from xrl.metrics import METRICS, get_metric

    where = _Locator(text or "", str(path) if path else "<spec>")
    base = Path(path).parent if path else Path.cwd()
    problems: list[str] = []

    def bad(place: tuple, message: str) -> None:
        problems.append(f"{where(place)}: {message}")

    for key in sorted(set(data) - _TOP):
        bad((key,), f"unknown key {key!r}; known keys: {', '.join(sorted(_TOP))}")

    name = data.get("name", Path(path).stem if path else "bench")
    if not _is_word(name):
        bad(("name",), f"name must be a word (letters, digits, _ . -, not only dots), got {name!r}")
    seeds = data.get("seeds", [0])
    if not (isinstance(seeds, list) and seeds and all(_is_int(s, 0) for s in seeds) and len(set(seeds)) == len(seeds)):
        bad(("seeds",), f"seeds must be a non-empty list of distinct integers >= 0, got {seeds!r}")
        seeds = [0]
    numbers = {}
    for key, default, low, high in (("n_states", 32, 1, 10**6), ("threads", 1, 1, 1024), ("gallery", 4, 0, 1000)):
        value = data.get(key, default)
        if not _is_int(value, low) or value > high:
            bad((key,), f"{key} must be an integer >= {low} (at most {high:,}), got {value!r}")
            value = default
        numbers[key] = value
    store = data.get("store_saliency", False)
    if not isinstance(store, bool):
        bad(("store_saliency",), f"store_saliency must be true or false, got {store!r}")

    methods = _selection(data, "methods", EXPLAINERS.names(), bad)
    metrics = _selection(data, "metrics", METRICS.names(), bad)
    method_settings = _settings_tables(data, "method_settings", methods, bad)
    metric_settings = _settings_tables(data, "metric_settings", metrics, bad)

    agents: list[AgentSpec] = []
    models: dict[str, Model] = {}
    loaded: list[Model] = []  # also agents with other problems: their methods' settings are checked
    raw_agents = data.get("agents")
    if not isinstance(raw_agents, list) or not raw_agents or not all(isinstance(a, dict) for a in raw_agents):
        bad(("agents",), "expected at least one [[agents]] table naming an agent")
        raw_agents = []
    for i, raw in enumerate(raw_agents):
        agent = _agent(
            raw,
            i,
            base,
            bad,
            models,
            loaded,
            labels_needed=[m for m in metrics if "labels" in METRICS.get(m).requires and data.get("metrics") != "all"],
            load_weights=load_weights,
        )
        if agent is not None:
            if agent.name in {a.name for a in agents}:
                bad(("agents", i, "name"), f"two agents are named {agent.name!r}; give each a distinct name")
            agents.append(agent)
            if numbers["n_states"] == data.get("n_states", 32):  # (a bad one is already refused)
                _check_n_states(numbers["n_states"], agent, bad)

    # settings are checked by building each method and metric once (unknown or bad settings,
    # a trained network that is not there): the same constructors the jobs call
    # With methods = "all", a method that cannot explain an agent at its default settings (e.g.
    # one that needs an attention module the agent lacks) is not run for that agent, and the
    # results say why; a method named in the spec, or given settings, must work.
    every = data.get("methods", "all") == "all"
    not_run: dict[str, dict[str, str]] = {a.name: {} for a in agents}
    networks: dict[str, dict[str, str]] = {a.name: {} for a in agents}
    checks = [(a.name, models[a.name]) for a in agents] or [(None, m) for m in loaded[:1]]  # type: ignore[misc]
    for m in methods:
        for agent_name, model in checks:
            try:
                explainer = get_explainer(m, model, **method_settings.get(m, {}))
                identity = network_identity(explainer)
                if identity and agent_name is not None:
                    networks[agent_name][m] = identity
            except (TypeError, ValueError, FileNotFoundError) as err:
                if every and m not in method_settings and agent_name is not None:
                    not_run[agent_name][m] = str(err)
                    continue
                if m in method_settings:
                    bad(
                        _setting_place("method_settings", m, method_settings[m], err),
                        f"method {m!r} refuses its settings: {err}",
                    )
                else:
                    bad(("methods",), f"method {m!r} cannot explain agent {agent_name or ''!r}: {err}")
                break
    for m in metrics:
        try:
            get_metric(m, **metric_settings.get(m, {}))
        except (TypeError, ValueError, FileNotFoundError) as err:
            bad(
                _setting_place("metric_settings", m, metric_settings.get(m, {}), err),
                f"metric {m!r} refuses its settings: {err}",
            )

    if problems:  # in the order of the file
        raise SpecError(sorted(problems, key=lambda p: int(m.group(1)) if (m := re.match(r"[^:]*:(\d+):", p)) else 0))  # type: ignore[attr-defined]
    return Spec(
        name=name,
        seeds=list(seeds),
        n_states=numbers["n_states"],
        threads=numbers["threads"],
        gallery=numbers["gallery"],
        store_saliency=store,
        agents=agents,
        methods={m: method_settings.get(m, {}) for m in methods},
        metrics={m: metric_settings.get(m, {}) for m in metrics},
        not_run=not_run,
        networks={a: n for a, n in networks.items() if n},
        text=text,
        path=str(path) if path else None,
        models=models,
    )


def network_identity(explainer) -> str:
    """The weights fingerprints of the trained networks ``explainer`` runs (a mask network's
    ``network_source``, RExL's ``agent_paths``), ``;``-joined in its order; "" when it runs none
    (or was handed a network object, which has no file). Each is the fingerprint its card records
    when the card's sha256 is the file's (the card belongs to these bytes), else ``sha256:`` and
    the file's own hash (a network without a card, or one overwritten without a new card)."""
    from xrl.artifacts import ArtifactError, read_card, sha256

    files = []
    source = getattr(explainer, "network_source", None)
    if isinstance(source, str) and source != "given":
        files.append(source)
    files += [str(p) for p in getattr(explainer, "agent_paths", None) or []]
    ids = []
    for f in files:
        digest = sha256(f)
        try:
            card = read_card(f)
        except ArtifactError:
            card = {}
        ids.append(
            card["fingerprint"] if card.get("fingerprint") and card.get("sha256") == digest else f"sha256:{digest[:16]}"
        )
    return ";".join(ids)


def _fingerprint(model: Model) -> str | None:
    """The model's weights fingerprint; for one built without its weights, the one its card
    records (None when it records none)."""
    try:
        return model.fingerprint()
    except ValueError:
        return None


def _setting_place(table: str, name: str, settings: dict, err: Exception) -> tuple:
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


def _agent(
    raw: dict, i: int, base: Path, bad, models: dict, loaded: list, labels_needed: list[str], load_weights: bool = True
) -> AgentSpec | None:
    from xrl.agents.load import load_agent
    from xrl.data.dataset import StateDataset
    from xrl.envs import ENVS, make_env

    place = ("agents", i)
    ok = True
    for key in sorted(set(raw) - _AGENT):
        bad(place + (key,), f"unknown key {key!r} in [[agents]]; known keys: {', '.join(sorted(_AGENT))}")
        ok = False
    source = raw.get("agent")
    if not isinstance(source, str) or not source:
        bad(place, 'every [[agents]] table needs agent = "<zoo name, .zip or .pt path>"')
        return None
    for key, low in (("episodes", 1), ("max_steps", 1)):
        if key in raw and not _is_int(raw[key], low):
            bad(place + (key,), f"{key} must be an integer >= {low}, got {raw[key]!r}")
            ok = False
    if "sample" in raw and not isinstance(raw["sample"], bool):
        bad(place + ("sample",), f"sample must be true or false, got {raw['sample']!r}")
        ok = False
    env_settings = raw.get("env_settings")
    if env_settings is not None and not isinstance(env_settings, dict):
        bad(place + ("env_settings",), f"env_settings must be a table, got {env_settings!r}")
        ok = False
    name = raw.get("name", _agent_name(source))
    if not _is_word(name):
        bad(place + ("name",), f"name must be a word (letters, digits, _ . -, not only dots), got {name!r}")
        ok = False

    path = base / source
    source = str(path) if path.exists() else source
    try:
        model = load_agent(source, weights=load_weights)
    except (ValueError, TypeError, FileNotFoundError, RuntimeError) as err:
        bad(place + ("agent",), f"cannot load agent {raw['agent']!r}: {err}")
        return None
    loaded.append(model)
    trained = (model.info.get("env") or {}).get("name")
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
    has_labels = None
    if data is not None:
        data_path = base / str(data)
        try:
            with StateDataset.open(data_path) as ds:
                if ds.env["name"] != env:
                    bad(place + ("data",), f"dataset {data} holds {ds.env['name']!r} states, the agent plays {env!r}")
                    ok = False
                if tuple(ds.state_shape) != tuple(model.input_shape):
                    bad(
                        place + ("data",),
                        f"dataset {data} holds states of shape {ds.state_shape}, "
                        f"the agent takes {tuple(model.input_shape)}",
                    )
                    ok = False
                collected_by, mine = (ds.agent or {}).get("fingerprint"), _fingerprint(model)
                if collected_by and mine and collected_by != mine:
                    bad(
                        place + ("data",),
                        f"dataset {data} was collected by another agent ({(ds.agent or {}).get('source')}, "
                        f"weights {collected_by}) than {raw['agent']!r} (weights {mine}); its actions are "
                        "that agent's: collect this agent's states (leave data out)",
                    )
                    ok = False
                has_labels = ds.has_labels
            data = str(data_path)
        except (ValueError, FileNotFoundError) as err:
            bad(place + ("data",), str(err))
            ok = False
    elif labels_needed and ok:
        settings = env_settings if env_settings is not None else (model.info.get("env") or {}).get("settings") or {}
        try:
            environment = make_env(env, **settings)
            _, info = environment.reset(seed=0)
            environment.close()
            has_labels = "labels" in info
        except (TypeError, ValueError) as err:
            bad(place + ("env_settings",), f"env {env!r} refuses its settings: {err}")
            ok = False
    if labels_needed and has_labels is False:
        bad(
            ("metrics",),
            f"{', '.join(labels_needed)} need ground-truth labels, which agent "
            f'{name!r} ({env}) has none of; drop them or use metrics = "all" '
            "(metrics without data are then reported as skipped)",
        )
        ok = False
    if not ok:
        return None
    models[name] = model
    inputs = _fingerprint(model) or "weights not loaded"
    if data is not None:
        stat = Path(data).stat()
        inputs += f";data {stat.st_size} bytes, mtime {stat.st_mtime_ns}"
    return AgentSpec(
        name=name,
        agent=source,
        env=env,
        inputs=inputs,
        env_settings=dict(env_settings)
        if env_settings is not None
        else dict((model.info.get("env") or {}).get("settings") or {}),
        data=data,
        episodes=raw.get("episodes", 16),
        max_steps=raw.get("max_steps"),
        sample=raw.get("sample", False),
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
