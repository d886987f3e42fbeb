"""What ``xrl serve`` computes, without HTTP: agents, recorded episodes, maps, pokes, scores.

:class:`Engine` is the server's state. Every question it answers is named by plain values —
an agent id (a zoo name or an agent given on the command line), an episode seed, a step, a
method id, its settings, a target action and the rectangles poked into the frame — so the
HTTP layer (:mod:`xrl.serve.app`) only parses requests and the tests can call it directly.

* **Agents** are the zoo's (``zoo_cards``) and the ones given on the command line; the page
  names them by id, never by path (:meth:`Engine.agent_id`), so the server reads no file the
  person who started it did not point it at.
* **Episodes** are recorded once per (agent, seed) with the agent's greedy policy into a
  StateDataset (``xrl.data.collect``), with the env's ground truth when it has some; the same
  seed always gives the same episode. A recurrent agent's episode keeps the recurrent state of
  each step, and everything computed on step ``t`` (scores, maps, pokes, curves) is computed
  under it (docs/agents.md#recurrent-agents).
* **Methods** are every registered explainer that can explain the agent at its default
  settings, plus one entry per zoo network trained for this agent (``visionmask``,
  ``stalder_explainer``, ``rexl``): ids ``"<method>"`` or ``"<method>:<zoo folder>"``.
* **Maps** are cached per (agent, seed, step, method, settings, target, rectangles) in memory;
  per-action methods compute all K maps at once (``explain_all``).
* Work runs on two lanes, each a single thread with its own copy of the agent: ``fast``
  (gradient-like methods, pokes, scores) and ``slow`` (RISE, LIME, extremal perturbations,
  RExL, episode recording, videos), so a long RISE run never delays a gradient map. A request
  waits a short while for its job; when the job is not done by then the caller gets the job
  (its id, its progress in forward passes of the agent) to poll.
"""

from __future__ import annotations

import copy
import hashlib
import itertools
import json
import math
import os
import queue
import re
import tempfile
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

#: methods sent to the slow lane (seconds per map on a CPU); every other method runs on the fast lane
SLOW_METHODS = frozenset({"rise", "lime", "extremal_perturbation", "rexl"})
#: methods whose network comes from the zoo, and the setting that names it
NETWORK_METHODS = {"visionmask": "network", "stalder_explainer": "network", "rexl": "agent"}
#: settings the page may never set: they name files
PATH_SETTINGS = frozenset({"network", "agent", "extractor", "background", "path", "data", "out"})
PERTURBATIONS = ("blur", "black", "noise")
MAX_RECTS = 32


class RequestError(ValueError):
    """A bad request: the page sent something the server refuses (HTTP 4xx)."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


# ---------------------------------------------------------------- jobs


@dataclass
class Job:
    """Work queued on a lane; ``progress()`` counts the agent's forward passes."""

    id: str
    what: str
    fn: Callable[[Job], Any]
    started: float = 0.0
    finished: float = 0.0
    state: str = "queued"  # queued, running, done, error
    result: Any = None
    error: str | None = None
    status: int = 500
    forwards: int = 0
    expected: int | None = None
    done_event: threading.Event = field(default_factory=threading.Event)

    def progress(self) -> dict:
        elapsed = (self.finished or time.perf_counter()) - self.started if self.started else 0.0
        fraction = None
        if self.state == "done":
            fraction = 1.0
        elif self.expected:
            fraction = min(0.99, self.forwards / self.expected)
        return {
            "job": self.id,
            "what": self.what,
            "state": self.state,
            "elapsed": round(elapsed, 3),
            "forwards": self.forwards,
            "expected_forwards": self.expected,
            "fraction": fraction,
        }


class Lane:
    """One worker thread with its own copy of each agent; jobs run one at a time, in order."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.jobs: queue.Queue[Job] = queue.Queue()
        self.current: Job | None = None
        self.models: dict[str, Any] = {}
        self.thread = threading.Thread(target=self._run, name=f"xrl-serve-{name}", daemon=True)
        self.thread.start()

    def _run(self) -> None:
        torch.set_grad_enabled(True)
        while True:
            job = self.jobs.get()
            if job is None:  # shutdown
                return
            self.current = job
            job.state, job.started = "running", time.perf_counter()
            try:
                job.result = job.fn(job)
                job.state = "done"
            except RequestError as err:
                job.state, job.error, job.status = "error", str(err), err.status
            except MemoryError as err:  # an estimate over XRL_MAX_ALLOC_GB: the request asks too much
                job.state, job.error, job.status = "error", str(err) or "out of memory", 413
            except Exception as err:  # reported to the page as a message, never a traceback
                job.state, job.error, job.status = "error", f"{type(err).__name__}: {err}", 500
            finally:
                job.finished = time.perf_counter()
                self.current = None
                job.done_event.set()

    def model(self, engine: Engine, agent: str):
        """This lane's copy of the agent, with a forward hook counting passes for progress."""
        if agent not in self.models:
            model = copy.deepcopy(engine.model(agent))

            def count(*_):
                if self.current is not None:
                    self.current.forwards += 1

            model.net.register_forward_pre_hook(count)
            self.models[agent] = model
        return self.models[agent]

    def stop(self) -> None:
        self.jobs.put(None)  # type: ignore[arg-type]


# ---------------------------------------------------------------- helpers


def _lru_put(cache: OrderedDict, key, value, limit: int) -> None:
    cache[key] = value
    cache.move_to_end(key)
    while len(cache) > limit:
        cache.popitem(last=False)


def _digest(value: Any) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True).encode()).hexdigest()[:16]


def check_settings(settings: Any) -> dict:
    """Settings the page may send: a JSON object of numbers, booleans and short words; no
    file paths (a path sent by the page is refused)."""
    if settings is None:
        return {}
    if not isinstance(settings, dict):
        raise RequestError(f"settings must be a JSON object of method settings, got {type(settings).__name__}")
    for key, value in settings.items():
        if key in PATH_SETTINGS:
            raise RequestError(
                f"setting {key!r} names a file; the page may not send paths (the server "
                "reads only the zoo and the paths given on its command line)",
                403,
            )
        if not re.fullmatch(r"[a-z_][a-z0-9_]*", key):
            raise RequestError(f"setting names are words (a-z, 0-9, _), got {key!r}")
        if isinstance(value, str):
            if not re.fullmatch(r"[A-Za-z0-9_\-]{1,40}", value):
                raise RequestError(
                    f"setting {key}={value!r}: text values are single words "
                    "(letters, digits, _ and -); paths are refused",
                    403 if ("/" in value or "\\" in value or ".." in value) else 400,
                )
        elif value is not None and not isinstance(value, (bool, int, float)):
            raise RequestError(f"setting {key} must be a number, a boolean or a word, got {type(value).__name__}")
        elif isinstance(value, float) and not math.isfinite(value):
            raise RequestError(f"setting {key} must be finite, got {value!r}")
    return dict(settings)


def check_scale(scale: Any) -> tuple[float, float] | None:
    """The colour scale of an overlay: ``null`` (the map's own min-max) or ``[lo, hi]``, two
    finite numbers with lo < hi (a scale the page shares between maps)."""
    if scale is None:
        return None
    if (
        not isinstance(scale, list)
        or len(scale) != 2
        or not all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in scale)
        or not scale[0] < scale[1]
    ):
        raise RequestError(f"scale must be null (each map its own min-max) or [lo, hi] with lo < hi, got {scale!r}")
    return float(scale[0]), float(scale[1])


def check_rects(rects: Any) -> list[dict]:
    """Rectangles poked into the frame: ``[{"x0", "y0", "x1", "y1", "kind"}]`` in frame
    fractions (0 = left/top, 1 = right/bottom), applied in order."""
    if rects is None:
        return []
    if not isinstance(rects, list):
        raise RequestError("rects must be a list of {x0, y0, x1, y1, kind} objects")
    if len(rects) > MAX_RECTS:
        raise RequestError(f"at most {MAX_RECTS} rectangles, got {len(rects)}")
    out = []
    for i, r in enumerate(rects):
        if not isinstance(r, dict):
            raise RequestError(f"rects[{i}] must be an object {{x0, y0, x1, y1, kind}}")
        extra = set(r) - {"x0", "y0", "x1", "y1", "kind"}
        if extra:
            raise RequestError(f"rects[{i}] has unknown keys {sorted(extra)}; expected x0, y0, x1, y1, kind")
        coords = {}
        for k in ("x0", "y0", "x1", "y1"):
            v = r.get(k)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0 <= v <= 1:
                raise RequestError(f"rects[{i}].{k} must be a number in [0, 1] (a fraction of the frame), got {v!r}")
            coords[k] = float(v)
        if not (coords["x0"] < coords["x1"] and coords["y0"] < coords["y1"]):
            raise RequestError(f"rects[{i}] is empty: expected x0 < x1 and y0 < y1, got {coords}")
        kind = r.get("kind", "blur")
        if kind not in PERTURBATIONS:
            raise RequestError(f"rects[{i}].kind must be one of {', '.join(PERTURBATIONS)}, got {kind!r}")
        out.append({**coords, "kind": kind})
    return out


def rect_mask(rect: dict, height: int, width: int) -> torch.Tensor:
    """``(H, W)`` bool: the pixels of an ``H x W`` image the rectangle overlaps (at least one)."""
    r0, r1 = math.floor(rect["y0"] * height), math.ceil(rect["y1"] * height)
    c0, c1 = math.floor(rect["x0"] * width), math.ceil(rect["x1"] * width)
    r0, c0 = min(r0, height - 1), min(c0, width - 1)
    mask = torch.zeros(height, width, dtype=torch.bool)
    mask[r0 : max(r1, r0 + 1), c0 : max(c1, c0 + 1)] = True
    return mask


def perturb_states(states: torch.Tensor, rects: list[dict]) -> torch.Tensor:
    """States ``(B, C, H, W)`` with each rectangle blurred (xrl's Gaussian blur, std 5 px, as
    ``xrl watch``'s counterfactual), blacked out (0) or replaced by uniform noise (seed 0), in order."""
    from xrl.metrics.faithfulness import Substrate

    out = states
    h, w = states.shape[-2:]
    for rect in rects:
        mask = rect_mask(rect, h, w).to(states.device)
        out = torch.where(mask, Substrate(rect["kind"])(out), out)
    return out


def perturb_frame(frame: np.ndarray, rects: list[dict], state_height: int) -> np.ndarray:
    """The display frame ``(h, w, 3)`` uint8 with the same rectangles perturbed at its own
    resolution (the blur's std scaled by ``h / state_height``), to show what was poked."""
    from xrl.ops import gaussian_blur

    if not rects:
        return frame
    x = torch.from_numpy(np.ascontiguousarray(frame)).permute(2, 0, 1)[None].float() / 255
    h, w = frame.shape[:2]
    for rect in rects:
        mask = rect_mask(rect, h, w)
        if rect["kind"] == "black":
            sub = torch.zeros_like(x)
        elif rect["kind"] == "noise":
            sub = torch.rand(x.shape[1:], generator=torch.Generator().manual_seed(0)).expand_as(x)
        else:
            sigma = 5.0 * h / state_height
            sub = gaussian_blur(x, sigma, kernel_size=2 * math.ceil(3 * sigma) + 1)
        x = torch.where(mask, sub, x)
    return (x[0].permute(1, 2, 0) * 255).round().clamp(0, 255).to(torch.uint8).numpy()


def scores_view(model, scores: torch.Tensor) -> dict:
    """What the bar chart shows: probabilities for policies, raw values for Q-networks."""
    scores = scores.float()
    if model.score_kind == "q_values":
        return {"kind": "q_values", "values": scores.tolist(), "action": int(scores.argmax())}
    return {"kind": "probabilities", "values": torch.softmax(scores, -1).tolist(), "action": int(scores.argmax())}


# ---------------------------------------------------------------- the engine


@dataclass
class Episode:
    agent: str
    seed: int
    path: Path
    states: np.ndarray  # (T, C, H, W) uint8
    frames: np.ndarray  # (T, h, w, 3) uint8
    actions: np.ndarray
    scores: np.ndarray  # (T, K)
    labels: np.ndarray | None
    episode_return: float
    recurrent: np.ndarray | None = None  # (T, *recurrent_shape) float32 of a recurrent agent


class Engine:
    """The server's state; thread-safe (the HTTP layer calls it from its worker threads).

    ``agents``: ``{id: path}`` given on the command line (they are listed with the zoo's);
    ``zoo``: the zoo folder (default: ``load_agent``'s); ``cache``: folder for recorded
    episodes and videos (default: a temporary folder); ``max_steps``: steps recorded per episode."""

    def __init__(
        self,
        *,
        agents: dict[str, str] | None = None,
        zoo: str | os.PathLike | None = None,
        cache: str | os.PathLike | None = None,
        max_steps: int = 500,
        wait: float = 0.4,
        cache_size: int = 4000,
        device: str = "cpu",
    ) -> None:
        from xrl.agents.load import ZOO_DIR
        from xrl.ops import resolve_device

        self.device = str(resolve_device(device))  # where the agents and their maps compute (xrl serve --device)

        self.zoo = Path(zoo) if zoo is not None else ZOO_DIR
        self.given = {k: str(v) for k, v in (agents or {}).items()}
        self._own_cache = cache is None  # a temporary folder, removed by close()
        self.cache_dir = Path(cache) if cache is not None else Path(tempfile.mkdtemp(prefix="xrl-serve-"))
        self.cache_dir.mkdir(parents=True, exist_ok=True)
        if int(max_steps) < 1:
            raise ValueError(f"max_steps must be >= 1, got {max_steps!r}")
        self.max_steps = int(max_steps)
        self.wait_seconds = float(wait)
        self.cache_size = int(cache_size)
        self._lock = threading.RLock()
        self._models: dict[str, Any] = {}
        self._methods: dict[str, dict] = {}
        self._episodes: dict[tuple[str, int], Episode] = {}
        self._maps: OrderedDict = OrderedDict()
        self._explainers: OrderedDict = OrderedDict()
        self._forwards_per_map: dict[tuple, int] = {}
        self._jobs: OrderedDict[str, Job] = OrderedDict()
        self._running: dict[tuple, Job] = {}
        self._downloads: dict[str, Path] = {}
        self._ids = itertools.count(1)
        self.lanes = {"fast": Lane("fast"), "slow": Lane("slow")}
        for _name, path in self.given.items():
            if not Path(path).exists() and not (self.zoo / path / "agent.pt").exists() and not path.startswith("hf://"):
                raise ValueError(f"--agent {path!r}: no such file or folder and no zoo agent of that name")

    def preload(self, agent: str) -> list[Job]:
        """Load the agent and its method list, and each lane's copy, in the background (the first
        page then answers at once)."""
        jobs = [
            self.submit(name, f"load {agent}", None, lambda job, lane=lane: lane.model(self, agent))
            for name, lane in self.lanes.items()
        ]
        jobs.append(self.submit("fast", f"methods of {agent}", None, lambda job: self.methods(agent)))
        return jobs

    def close(self) -> None:
        for lane in self.lanes.values():
            lane.stop()
        for lane in self.lanes.values():  # a job still running ends first (torch must not be torn down under it)
            if lane.thread is not threading.current_thread():
                lane.thread.join(timeout=30)
        if self._own_cache:
            import shutil

            shutil.rmtree(self.cache_dir, ignore_errors=True)

    # ------------------------------------------------------------ agents

    def agents(self) -> list[dict]:
        """Agents the page may pick: command-line ones first, then the zoo's (cards)."""
        from xrl.agents.load import zoo_cards

        rows = [
            {
                "id": name,
                "source": "command line",
                "env": "",
                "arch": "",
                "kind": "agent",
                "score": "",
                "command": "",
                "finished": True,
            }
            for name in self.given
        ]
        try:
            cards = zoo_cards(self.zoo) if self.zoo.is_dir() else []
        except ValueError:
            cards = []
        for card in cards:
            if card["kind"] == "classifier" or card["name"] in self.given:
                continue
            if not (self.zoo / card["name"] / "agent.pt").exists():
                continue
            rows.append(
                {
                    "id": card["name"],
                    "source": "zoo",
                    "role": _role(card),
                    **{
                        k: card[k]
                        for k in ("env", "arch", "kind", "score", "command", "finished", "trained", "planned")
                    },
                }
            )
        return rows

    def agent_id(self, value: Any) -> str:
        """Check an agent id sent by the page: a zoo name or a command-line agent, never a path."""
        if not isinstance(value, str) or not value:
            raise RequestError("agent must be the id of an agent listed by /api/agents")
        if value in self.given:
            return value
        if (
            re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.\-]*", value)
            and ".." not in value
            and (self.zoo / value / "agent.pt").is_file()
        ):
            return value
        if "/" in value or "\\" in value or value.startswith("."):
            raise RequestError(
                f"agent {value!r} looks like a path; the page may name only the zoo's agents "
                "and those given on the command line (xrl serve --agent PATH)",
                403,
            )
        known = [a["id"] for a in self.agents()]
        raise RequestError(f"unknown agent {value!r}; known agents: {', '.join(known) or '(none)'}", 404)

    def model(self, agent: str):
        """The agent's Model (loaded once)."""
        from xrl.agents.load import load_agent

        with self._lock:
            if agent not in self._models:
                source = self.given.get(agent) or str(self.zoo / agent / "agent.pt")
                model = load_agent(source, device=self.device)
                model.eval()
                self._models[agent] = model
            return self._models[agent]

    # ------------------------------------------------------------ methods

    def methods(self, agent: str) -> dict:
        """``{"methods": [{id, name, per_action, lane, network}], "unavailable": {name: why}}``."""
        from xrl.explainers import EXPLAINERS, get_explainer

        with self._lock:
            if agent in self._methods:
                return self._methods[agent]
        model = self.model(agent)
        methods, unavailable = [], {}
        for name in EXPLAINERS.names():
            if name in NETWORK_METHODS:
                variants = self._zoo_networks(name, model)
                if not variants:
                    unavailable[name] = f"no {name} network trained for this agent in the zoo"
                for folder, value in variants:
                    methods.append(
                        self._method_row(
                            f"{name}:{folder}", name, EXPLAINERS.get(name), {NETWORK_METHODS[name]: value}, folder
                        )
                    )
                continue
            try:
                get_explainer(name, model)
            except (TypeError, ValueError, FileNotFoundError) as err:
                unavailable[name] = str(err)
                continue
            methods.append(self._method_row(name, name, EXPLAINERS.get(name), {}, None))
        order = {"gradient": 0}
        methods.sort(key=lambda m: (m["lane"] == "slow", order.get(m["name"], 1), m["id"]))
        result = {"methods": methods, "unavailable": unavailable}
        with self._lock:
            self._methods[agent] = result
        return result

    @staticmethod
    def _method_row(method_id: str, name: str, cls, fixed: dict, network: str | None) -> dict:
        return {
            "id": method_id,
            "name": name,
            # what the page lists: a learned explainer says which trained network it runs
            "label": name if network is None else f"{name} · explainer network {network}",
            "per_action": bool(getattr(cls, "per_action", False)),
            "lane": "slow" if name in SLOW_METHODS else "fast",
            "network": network,
            "fixed": {k: (v if isinstance(v, str) else [str(p) for p in v]) for k, v in fixed.items()},
        }

    def _zoo_networks(self, name: str, model) -> list[tuple[str, Any]]:
        """Zoo folders holding a ``name`` network trained for this agent, with the setting value."""
        from xrl.explainers import get_explainer

        if not self.zoo.is_dir():
            return []
        found = []
        for folder in sorted(p for p in self.zoo.iterdir() if p.is_dir()):
            file = "rexl.pt" if name == "rexl" else f"{name}.pt"
            candidates: list = []
            if (folder / file).is_file():
                candidates.append(str(folder / file))
            if name == "rexl":
                classes = sorted(str(p) for p in folder.glob("class*/rexl.pt"))
                if classes:
                    candidates.append(classes)
            for value in candidates:
                try:
                    get_explainer(name, model, **{NETWORK_METHODS[name]: value})
                except (TypeError, ValueError, FileNotFoundError, RuntimeError, KeyError):
                    continue
                found.append((folder.name, value))
        return found

    def method(self, agent: str, method_id: Any) -> dict:
        if not isinstance(method_id, str) or not method_id:
            raise RequestError("method must be a method id listed by /api/methods")
        listing = self.methods(agent)
        for m in listing["methods"]:
            if m["id"] == method_id:
                return m
        if method_id in listing["unavailable"]:
            raise RequestError(
                f"method {method_id!r} cannot explain agent {agent!r}: {listing['unavailable'][method_id]}", 422
            )
        known = ", ".join(m["id"] for m in listing["methods"])
        raise RequestError(f"unknown method {method_id!r} for agent {agent!r}; available: {known}", 404)

    def explainer(self, lane: Lane, agent: str, method: dict, settings: dict):
        """An explainer on the lane's copy of the agent (built once per settings)."""
        from xrl.explainers import get_explainer

        key = (lane.name, agent, method["id"], json.dumps(settings, sort_keys=True))
        with self._lock:  # both lanes use the cache
            if key in self._explainers:
                self._explainers.move_to_end(key)
                return self._explainers[key]
        try:  # each lane builds only its own explainers: no race on the same key
            explainer = get_explainer(method["name"], lane.model(self, agent), **settings, **method["fixed"])
        except (TypeError, ValueError) as err:
            raise RequestError(
                f"method {method['id']!r} refuses settings {settings}: {err}; "
                f"its settings: {accepted_settings(method['name'], method['fixed'])}",
                422,
            ) from err
        with self._lock:
            _lru_put(self._explainers, key, explainer, 64)
        return explainer

    # ------------------------------------------------------------ jobs

    def submit(
        self, lane: str, what: str, key: tuple | None, fn: Callable[..., Any], expected: int | None = None
    ) -> Job:
        """Queue ``fn`` on a lane, or return the job already running for the same ``key``."""
        with self._lock:
            if key is not None and key in self._running and self._running[key].state in ("queued", "running"):
                return self._running[key]
            job = Job(id=f"j{next(self._ids)}", what=what, fn=fn, expected=expected)
            _lru_put(self._jobs, job.id, job, 500)
            if key is not None:
                self._running[key] = job
                if len(self._running) > 1000:
                    for k in [k for k, j in self._running.items() if j.state in ("done", "error")]:
                        del self._running[k]
        self.lanes[lane].jobs.put(job)
        return job

    def job(self, job_id: Any) -> Job:
        if not isinstance(job_id, str):
            raise RequestError("job must be a job id")
        with self._lock:
            job = self._jobs.get(job_id)
        if job is None:
            raise RequestError(f"unknown job {job_id!r} (finished jobs are kept for a while only)", 404)
        return job

    def wait(self, job: Job, timeout: float | None = None) -> Job:
        job.done_event.wait(self.wait_seconds if timeout is None else timeout)
        return job

    # ------------------------------------------------------------ episodes

    def check_seed(self, seed: Any) -> int:
        if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < 2**31:
            raise RequestError(f"seed must be an integer in [0, 2^31), got {seed!r}")
        return seed

    def episode(self, agent: str, seed: int) -> Episode | Job:
        """The recorded episode, or the job recording it."""
        with self._lock:
            if (agent, seed) in self._episodes:
                return self._episodes[(agent, seed)]
        return self.submit(
            "slow",
            f"record {agent} seed {seed}",
            ("episode", agent, seed),
            lambda job: self._record(job, agent, seed),
            expected=self.max_steps,
        )

    def loaded_episode(self, agent: str, seed: int) -> Episode:
        with self._lock:
            episode = self._episodes.get((agent, seed))
        if episode is None:
            raise RequestError(
                f"episode of agent {agent!r} with seed {seed} is not recorded yet; POST /api/episode first", 409
            )
        return episode

    def _record(self, job: Job, agent: str, seed: int) -> Episode:
        from xrl.data.collect import _resolve_env, collect
        from xrl.data.dataset import StateDataset
        from xrl.envs import make_env

        model = self.lanes["slow"].model(self, agent)
        name, settings = _resolve_env(model, None, None)
        extra = (
            {}
            if _has_labels(make_env, name, settings)
            else ({"labels": True} if _has_labels(make_env, name, {**settings, "labels": True}) else {})
        )
        from xrl.data.collect import agent_record

        # the file is named by everything the episode depends on (the weights included), so a
        # kept --cache never shows an episode of an older agent of the same name
        key = _digest([agent, self.given.get(agent), seed, self.max_steps, extra, agent_record(model)])
        safe = re.sub(r"[^A-Za-z0-9_.-]", "_", agent)
        out = self.cache_dir / "episodes" / f"{safe}-seed{seed}-{key}.h5"
        out.parent.mkdir(parents=True, exist_ok=True)
        try:
            path = collect(
                model,
                episodes=1,
                out=out,
                seed=seed,
                max_steps=self.max_steps,
                env_settings=extra or None,
                progress=False,
            )
        except ValueError as err:  # a cache file recorded by another xrl version: record it again
            if "already holds" not in str(err):
                raise
            path = collect(
                model,
                episodes=1,
                out=out,
                seed=seed,
                max_steps=self.max_steps,
                env_settings=extra or None,
                progress=False,
                overwrite=True,
            )
        with StateDataset.open(path) as ds:
            labels = ds.labels() if ds.has_labels else None
            episode = Episode(
                agent,
                seed,
                path,
                ds.raw_states(),
                ds.frames(),
                ds.actions,
                ds.scores,
                labels,
                float(ds.episode_returns[0]),
                ds.recurrent(),
            )
        with self._lock:
            self._episodes[(agent, seed)] = episode
        return episode

    def step_of(self, episode: Episode, t: Any) -> int:
        n = len(episode.actions)
        if isinstance(t, bool) or not isinstance(t, int) or not 0 <= t < n:
            raise RequestError(f"t must be a step of the episode, an integer in [0, {n - 1}], got {t!r}")
        return t

    def episode_info(self, episode: Episode) -> dict:
        model = self.model(episode.agent)
        scores = torch.as_tensor(episode.scores)
        h, w = episode.frames.shape[1:3]
        has_labels = episode.labels is not None and bool((episode.labels >= 0).any())
        return {
            "agent": episode.agent,
            "seed": episode.seed,
            "length": int(len(episode.actions)),
            "return": episode.episode_return,
            "actions": episode.actions.tolist(),
            "action_names": list(model.action_names),
            "score_kind": model.score_kind,
            "frame_size": [int(h), int(w)],
            "state_shape": list(episode.states.shape[1:]),
            "has_labels": has_labels,
            # recording stops at max_steps: an episode that long was cut there, not ended
            "max_steps": self.max_steps,
            "truncated": bool(len(episode.actions) >= self.max_steps),
            "dataset": episode.path.name,
            "confidence": [scores_view(model, s)["values"][int(a)] for s, a in zip(scores, episode.actions)],
        }

    def state(self, episode: Episode, t: int, rects: list[dict] | None = None) -> torch.Tensor:
        model = self.model(episode.agent)
        states = model.preprocess(episode.states[t])  # (1, C, H, W), the network's input
        return perturb_states(states, rects) if rects else states

    @staticmethod
    def memory(episode: Episode, t: int) -> np.ndarray | None:
        """The recurrent state step ``t`` was scored with (a recurrent agent's), else None: what
        ``model.recurrent`` takes around everything computed on that step."""
        return None if episode.recurrent is None else episode.recurrent[t]

    # ------------------------------------------------------------ per frame

    def probabilities(self, episode: Episode, t: int, rects: list[dict]) -> dict:
        """The agent's bars on the recorded (or poked) state; computed on the fast lane."""
        lane = self.lanes["fast"]

        def run(job: Job) -> dict:
            model = lane.model(self, episode.agent)
            with torch.no_grad(), model.recurrent(self.memory(episode, t)):
                scores = model(self.state(episode, t, rects))[0]
            return scores_view(model, scores)

        job = self.submit("fast", "scores", None, run)
        return self._result(self.wait(job, 60.0))

    def saliency(
        self, episode: Episode, t: int, method: dict, settings: dict, target: int | None, rects: list[dict]
    ) -> np.ndarray | Job:
        """The ``(H, W)`` map of ``target`` (None: the recorded action, or the poked state's
        action) from the cache, or the job computing it."""
        self.model(episode.agent)
        base = (
            episode.agent,
            episode.seed,
            t,
            method["id"],
            json.dumps(settings, sort_keys=True),
            json.dumps(rects, sort_keys=True),
        )
        with self._lock:
            hit = self._maps.get(base + (target,))
            if hit is not None:
                self._maps.move_to_end(base + (target,))
                return hit
        lane = self.lanes[method["lane"]]
        recipe = (episode.agent, method["id"], json.dumps(settings, sort_keys=True))

        def run(job: Job) -> np.ndarray:
            with self._lock:
                if (hit := self._maps.get(base + (target,))) is not None:
                    return hit
            explainer = self.explainer(lane, episode.agent, method, settings)
            states = self.state(episode, t, rects)
            lane_model = lane.model(self, episode.agent)
            with lane_model.recurrent(self.memory(episode, t)):
                return self._maps_of(job, explainer, lane_model, states, method, target, base, recipe)

        with self._lock:
            expected = self._forwards_per_map.get(recipe)
        return self.submit(
            method["lane"], f"{method['id']} step {t}", ("map",) + base + (target,), run, expected=(expected or None)
        )

    def _maps_of(self, job: Job, explainer, lane_model, states, method: dict, target, base: tuple, recipe: tuple):
        """The map of ``target`` on ``states`` (every action's for a per-action method), cached."""
        with torch.no_grad():
            action = int(lane_model(states)[0].argmax())
        try:
            if method["per_action"]:
                maps = explainer.explain_all(states)[0].cpu().numpy()  # (K, H, W)
                results = {k: maps[k] for k in range(maps.shape[0])}
            else:
                k = action if target is None else target
                results = {k: explainer.explain(states, k)[0].cpu().numpy()}
        except (TypeError, ValueError) as err:
            raise RequestError(f"method {method['id']!r} failed on this frame: {err}", 422) from err
        with self._lock:
            self._forwards_per_map[recipe] = job.forwards  # the whole job: progress of the next one
            for k, m in results.items():
                _lru_put(self._maps, base + (k,), m, self.cache_size)
            if action in results:
                _lru_put(self._maps, base + (None,), results[action], self.cache_size)
        return results[action if target is None else target]

    def curves(
        self, episode: Episode, t: int, method: dict, settings: dict, target: int | None, saliency: np.ndarray
    ) -> dict:
        """Deletion and insertion curves (RISE's protocol, xrl's defaults) of one map, and its
        localization against the env's ground truth where the episode has some: one
        :func:`xrl.pipeline.score` of the map."""
        from xrl.pipeline import score

        lane = self.lanes["fast"]

        def run(job: Job) -> dict:
            model = lane.model(self, episode.agent)
            states = self.state(episode, t)
            memory = self.memory(episode, t)
            with torch.no_grad(), model.recurrent(memory):
                action = int(model(states)[0].argmax())
            k = action if target is None else target
            labels = None if episode.labels is None else torch.as_tensor(episode.labels[t : t + 1]).long()
            located = labels is not None and bool((labels >= 0).any())
            metrics = ["deletion", "insertion", *(["localization"] if located else [])]
            maps = {"map": torch.as_tensor(saliency)[None].float()}
            result = score(
                model,
                states,
                maps,
                metrics,
                torch.tensor([k]),
                labels if located else None,
                curves=metrics[:2],
                recurrent=None if memory is None else torch.as_tensor(memory)[None],
            )
            out: dict[str, Any] = {"target": k}
            for name in metrics[:2]:
                x, y = result.curves["map"][name]["x"], result.curves["map"][name]["y"]
                out[name] = {
                    "x": x,
                    "y": y,
                    "auc": float(
                        torch.trapezoid(torch.tensor(y, dtype=torch.float64), torch.tensor(x, dtype=torch.float64))
                    ),
                    "higher_is_better": result.higher_is_better[name],
                }
            if located:
                values = result.values["map"]
                out["localization"] = {o: values[f"localization.{o}"][0] for o in ("auc", "important", "unimportant")}
                out["localization"] = {k2: (None if math.isnan(v) else v) for k2, v in out["localization"].items()}
            else:
                out["localization"] = None
                out["localization_reason"] = "this env records no ground truth for this frame"
            return out

        job = self.submit("fast", f"scores {method['id']} step {t}", None, run)
        return self._result(self.wait(job, 120.0))

    # ------------------------------------------------------------ video

    def video(self, agent: str, seed: int, methods: list[dict], settings: dict) -> Job:
        """``xrl watch`` of the episode (same seed, same greedy policy) as an MP4, on the slow lane;
        ``settings`` are the first method's (the others run at their defaults)."""
        from xrl.watch import watch

        episode = self.loaded_episode(agent, seed)
        ids = [m["id"] for m in methods]
        key = ("video", agent, seed, tuple(ids), json.dumps(settings, sort_keys=True))
        lane = self.lanes["slow"]
        # watch takes {method name: settings}: one network per method name
        by_name = {m["name"]: {**(settings if i == 0 else {}), **m["fixed"]} for i, m in enumerate(methods)}
        if len(by_name) != len(methods):
            raise RequestError(
                f"the video shows one network per method (watch names its panels by method); got {', '.join(ids)}", 422
            )

        def run(job: Job) -> dict:
            model = lane.model(self, agent)
            out = self.cache_dir / "videos" / f"{_digest(list(key))}"
            out.parent.mkdir(parents=True, exist_ok=True)
            result = watch(
                model,
                methods=by_name,
                seed=seed,
                max_steps=len(episode.actions),
                out=out,
                formats=("mp4",),
                progress=False,
            )
            token = _digest([str(result.paths[0]), time.time()])
            with self._lock:
                self._downloads[token] = result.paths[0]
            return {
                "download": f"/api/download/{token}",
                "steps": result.steps,
                "same_episode": result.actions == episode.actions.tolist(),
                "seconds_per_map": result.seconds_per_map,
            }

        return self.submit("slow", f"video {','.join(ids)}", key, run, expected=None)

    def download(self, token: Any) -> Path:
        if not isinstance(token, str) or not re.fullmatch(r"[0-9a-f]{16}", token):
            raise RequestError("download tokens are 16 hex digits from an export job", 400)
        with self._lock:
            path = self._downloads.get(token)
        if path is None or not path.is_file():
            raise RequestError(f"unknown download {token!r}", 404)
        return path

    # ------------------------------------------------------------ misc

    @staticmethod
    def _result(job: Job):
        if job.state == "done":
            return job.result
        if job.state == "error":
            raise RequestError(job.error or "failed", job.status)
        raise RequestError(f"{job.what} did not finish in time", 503)


def _role(card: dict) -> str:
    """What kind of agent a zoo card is, in words the agent list shows (a DIGR student, an FLS
    attention agent), or ``""`` for a plain agent."""
    teacher = card.get("teacher") or ""
    if teacher:
        name = Path(teacher).parent.name if teacher.endswith(".pt") else teacher
        return f"DIGR student of {name}"
    if "fls" in str(card.get("arch", "")):
        return f"FLS attention agent ({card['arch']})"
    return ""


def accepted_settings(name: str, fixed: dict | None = None) -> str:
    """The constructor settings of the explainer ``name`` with their defaults (what an unknown
    setting is answered with), those the server fixes (a zoo network) left out."""
    import inspect

    from xrl.explainers import EXPLAINERS

    params = inspect.signature(EXPLAINERS.get(name).__init__).parameters
    parts = []
    for p in params.values():
        if p.name in ("self", "model") or p.name in (fixed or {}) or p.kind in (p.VAR_KEYWORD, p.VAR_POSITIONAL):
            continue
        parts.append(p.name if p.default is inspect.Parameter.empty else f"{p.name}={p.default!r}")
    return ", ".join(parts) or "(none)"


def _has_labels(make_env, name: str, settings: dict) -> bool:
    """Whether the env gives ground truth (``info["labels"]``) with these settings."""
    try:
        env = make_env(name, **settings)
    except (TypeError, ValueError):
        return False
    try:
        _, info = env.reset(seed=0)
        return info.get("labels") is not None
    finally:
        env.close()
