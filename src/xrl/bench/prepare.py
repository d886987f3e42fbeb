"""What the runner checks and resolves before the first job, with the agents themselves.

A :class:`~xrl.bench.spec.Spec` is configuration, checked without weights (:func:`xrl.bench.spec.parse_spec`).
:func:`prepare` loads each agent (its weights, on the CPU: the states are collected there, so a
run on any device collects the same episodes) and checks what only the agents can tell, with the
same one-line problems naming the spec's lines (:class:`~xrl.bench.spec.SpecError`):

- each method built once per agent with its settings (the constructor the jobs call): a value it
  refuses, an agent it cannot explain (with ``methods = "all"`` left out of that agent's jobs,
  ``not_run``), and the trained networks it runs (``networks``, found in the zoo by the agent's
  weights fingerprint: part of the jobs' keys);
- an env that gives no labels for the metrics named that need them, or refuses its settings;
- a ``device`` this machine does not have (not for a Ray cluster, whose workers resolve it);
- each agent's ``inputs`` from its loaded weights (the fingerprint its card records, or the
  weights' own when it records none).
"""

from __future__ import annotations

from dataclasses import replace

from xrl.agents.model import Model
from xrl.bench.spec import AgentSpec, Spec, SpecError, labels_missing, setting_place


def prepare(spec: Spec, *, here: bool = True) -> tuple[Spec, dict[str, Model]]:
    """The spec with ``not_run``, ``networks`` and the agents' ``inputs`` filled in, and the
    agents loaded (``{name: Model}`` on the CPU); raises :class:`SpecError` listing every problem.
    ``here``: the jobs run on this machine (in process, local processes, a local Ray), so
    ``device`` must be on it."""
    from xrl.agents.load import load_agent
    from xrl.ops import resolve_device

    problems: list[str] = []

    def bad(place: tuple, message: str) -> None:
        problems.append(f"{spec.where(place)}: {message}")

    if here:
        try:
            resolve_device(spec.device)
        except ValueError as err:
            bad(("device",), str(err))
    models: dict[str, Model] = {}
    for i, agent in enumerate(spec.agents):
        try:
            models[agent.name] = load_agent(agent.agent, device="cpu")
        except (ValueError, TypeError, FileNotFoundError, RuntimeError) as err:
            bad(("agents", i, "agent"), f"cannot load agent {agent.agent!r}: {err}")
    if not problems:
        _check_labels(spec, bad)
    not_run, networks = _check_methods(spec, models, bad) if not problems else ({}, {})
    if problems:
        raise SpecError.in_file_order(problems)
    agents = [_with_inputs(a, models[a.name]) for a in spec.agents]
    return replace(spec, agents=agents, not_run=not_run, networks={a: n for a, n in networks.items() if n}), models


def _check_methods(spec: Spec, models: dict[str, Model], bad) -> tuple[dict, dict]:
    """Each method built for each agent: ``not_run`` and ``networks`` (see the module docstring).
    With ``methods = "all"``, a method without settings that cannot explain an agent is not run
    for it; a method named, or given settings, must work."""
    from xrl.explainers import get_explainer

    not_run: dict[str, dict[str, str]] = {a.name: {} for a in spec.agents}
    networks: dict[str, dict[str, str]] = {a.name: {} for a in spec.agents}
    for m, settings in spec.methods.items():
        for agent in spec.agents:
            try:
                identity = network_identity(get_explainer(m, models[agent.name], **settings))
            except (TypeError, ValueError, FileNotFoundError) as err:
                if spec.every_method and not settings:
                    not_run[agent.name][m] = str(err)
                    continue
                if settings:
                    place = setting_place("method_settings", m, settings, err)
                    bad(place, f"method {m!r} refuses its settings: {err}")
                else:
                    bad(("methods",), f"method {m!r} cannot explain agent {agent.name!r}: {err}")
                break
            if identity:
                networks[agent.name][m] = identity
    return not_run, networks


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


def _check_labels(spec: Spec, bad) -> None:
    """Metrics named in the spec that need labels: each collected agent's env gives them (one
    reset; a given dataset's header was checked with the spec)."""
    from xrl.envs import make_env
    from xrl.metrics import METRICS

    needed = [m for m in spec.metrics if "labels" in METRICS.get(m).requires]
    if spec.every_metric or not needed:
        return
    for i, agent in enumerate(spec.agents):
        if agent.data is not None:
            continue
        try:
            environment = make_env(agent.env, **agent.env_settings)
            _, info = environment.reset(seed=0)
            environment.close()
        except (TypeError, ValueError) as err:
            bad(("agents", i, "env_settings"), f"env {agent.env!r} refuses its settings: {err}")
            continue
        if "labels" not in info:
            bad(("metrics",), labels_missing(needed, agent.name, agent.env))


def _with_inputs(agent: AgentSpec, model: Model) -> AgentSpec:
    """``inputs`` with the loaded weights' fingerprint in place of the card's (the same when the
    card records one: loading checks it) or of "weights not loaded" (a file without a card)."""
    try:
        fingerprint = model.fingerprint()
    except ValueError:
        return agent
    _, data = agent.inputs.split(";", 1) if ";" in agent.inputs else (agent.inputs, None)
    return replace(agent, inputs=fingerprint + (f";{data}" if data is not None else ""))
