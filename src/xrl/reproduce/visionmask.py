"""VisionMask (Zuo et al. 2025, arXiv:2411.16120) Table 1: ``visionmask-table1``.

Accuracy, deletion, insertion, local Lipschitz estimate and sparseness of VisionMask, the
Stalder Explainer, LIME, RISE, Greydanus and SARFA on the *test split* of the expert dataset the
zoo mask networks were trained on (the 80/10/10 split of ``xrl.train.visionmask.split_indices``),
for the zoo Red-Fetch-Green and Pong agents, plus VisionMask's speed (every action's mask in one
batched pass) next to Greydanus's.

Protocol (the same for every method, as ``xrl evaluate``): targets are the dataset's actions (the
expert data was collected greedily, so they are the agent's argmax actions, which the networks
explain); ``accuracy`` keeps ``s * m + r * (1 - m)`` with ``m`` the map min-max normalised and
``r`` the VisionMask network's reference (the per-pixel median background of the training
split); VisionMask's accuracy with its raw mask (the paper's definition) is its own row;
deletion and insertion are RISE's ``CausalMetric`` (``protocol="rise"``); the local Lipschitz
estimate divides each map by its largest magnitude (``protocol="xrl"``); RISE scores softmax
probabilities and Greydanus the logits (``docs/metrics.md``, ``docs/explainers.md``).
``curve_substrate="reference"`` runs deletion and insertion against the network's reference
instead (what it was trained with).

Two protocols (``protocols=``), each with its own tables: ``"xrl"`` is the protocol above
(``table1``, ``paired``, ``table1.png``); ``"visionmask"`` runs the baselines and metrics as
VisionMask compared them (``table1-visionmask``, ``paired-visionmask``): the settings of
``visionmask_protocol`` — RISE as TorchRay's (``preset="torchray"``: 8,000 masks, 7 cells,
sigmoid, sum / N; the paper: "we use the public implementation from torchray"), LIME's binary
explanation mask (``output="binary"``: ``get_image_and_mask``'s top 5 positive superpixels;
the paper: "the binary mask of LIME"), deletion, insertion and the local Lipschitz estimate as
LATEC's code (``protocol="latec"``; the paper: "we closely follow the LATEC benchmark") with
``latec_lipschitz_samples`` neighbours (None: LATEC's 5). Accuracy and sparseness are the same
in both. The zoo VisionMask networks were trained without the authors' Adam
``weight_decay=0.01`` (``xrl train visionmask --weight-decay``, default 0.01 since issue 42);
they are scored as they are. ``visionmask=PATH`` scores another network of the agent
(the Table 2 ablations, e.g. ``--set agents=red-fetch-green --set visionmask=runs/vm-amax0.2/visionmask.pt
--set 'baselines=[]'``).
"""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any

import numpy as np

from xrl.reproduce.core import TargetRun, format_interval, nanmean, paired_interval

AGENTS = {
    "red-fetch-green": ("red-fetch-green", "zoo/red-fetch-green-visionmask"),
    "pong": ("pong", "zoo/pong-visionmask"),
}
COLUMNS = ["accuracy", "deletion", "insertion", "lipschitz", "sparseness"]
HIGHER = {"accuracy": True, "deletion": False, "insertion": True, "lipschitz": False, "sparseness": True}
# the paper's Table 1 claim, in words (its numbers are for Atari/SMB agents we do not have)
PAPER = "VisionMask: best insertion, top-two deletion, accuracy >= 90% on every agent (Table 1)"


def _folder(name: str):
    from xrl.agents.load import ZOO_DIR

    agent, folder = AGENTS[name]
    return agent, Path(ZOO_DIR) / Path(folder).name


def run_table1(run: TargetRun) -> None:
    import torch

    s = run.settings
    for protocol in s["protocols"]:
        if protocol not in PROTOCOLS:
            raise ValueError(f"visionmask-table1: unknown protocol {protocol!r}; known: {', '.join(PROTOCOLS)}")
    out: dict[str, dict[str, Any]] = {p: {"rows": [], "paired": [], "extra": {}} for p in s["protocols"]}
    speed_rows = []
    for env in s["agents"]:
        if env not in AGENTS:
            raise ValueError(f"visionmask-table1: unknown agent {env!r}; known: {', '.join(AGENTS)}")
        speed_rows.append(_agent_rows(run, env, out))
        torch.set_num_threads(1)
    _write_tables(run, out, speed_rows)


def _networks(run: TargetRun, env: str, model) -> tuple[Any, dict, dict, dict, Path]:
    """``(visionmask network, {method: network settings}, accuracy substrate, curves substrate,
    expert data)`` of one agent: the zoo networks, or ``visionmask=PATH`` (then no Stalder
    network), loaded once onto the run's device (the explainers are given them)."""
    s = run.settings
    _, folder = _folder(env)
    vm_path, st_path, data = folder / "visionmask.pt", folder / "stalder_explainer.pt", folder / "expert.h5"
    if s["visionmask"]:  # another network for this agent (an ablation of Table 2), without the Stalder one
        if len(s["agents"]) != 1:
            raise ValueError("visionmask= replaces the network of one agent: give agents= one agent too")
        vm_path, st_path = Path(s["visionmask"]), Path("/nonexistent")
    network = run.load_mask_network(vm_path, method="visionmask")
    network.check_agent(model)
    background = network.reference_image if network.reference in ("background", "mean") else None
    substrate = (
        dict(substrate="background", background=background) if background is not None else dict(substrate="black")
    )
    curve = substrate if s["curve_substrate"] == "reference" else {}
    networks: dict = {"visionmask": {"network": network}}
    if st_path.exists():
        networks["stalder_explainer"] = {"network": run.load_mask_network(st_path, method="stalder_explainer")}
    return network, networks, substrate, curve, data


def _agent_rows(run: TargetRun, env: str, out: dict) -> dict:
    """Every protocol's rows for agent ``env`` into ``out`` (the test split read once, each row
    explained and scored by :func:`xrl.pipeline.evaluate_batch`); returns its speed row."""
    from xrl.data.dataset import StateDataset
    from xrl.pipeline import evaluate_batch, read_batch
    from xrl.train.visionmask import split_indices

    s = run.settings
    model = run.load_agent(_folder(env)[0])
    network, networks, substrate, curve, data = _networks(run, env, model)
    with StateDataset.open(data) as ds:
        test = split_indices(len(ds), s["split_seed"])["test"][: s["n_states"]]
        read: list = []  # the test rows' states, targets and labels: read once, when a row needs them

        def scored(methods: dict, metrics: dict) -> dict:
            if not read:
                read.append(read_batch(model, ds, test))  # on the model's device
            start = time.perf_counter()
            result = evaluate_batch(model, read[0], methods, metrics)
            return {"values": result.values[next(iter(methods))], "seconds": time.perf_counter() - start}

        by_protocol = {}
        for protocol in s["protocols"]:
            metrics, methods = _protocol(s, protocol, substrate, curve, networks)
            # protocol "xrl" keeps its row names (rows cached by earlier runs stay valid)
            by_protocol[protocol] = {
                method: run.row(
                    f"{env}-{method}" if protocol == "xrl" else f"{env}-{protocol}-protocol-{method}",
                    lambda method=method, settings=settings, metrics=metrics: scored({method: settings}, metrics),
                )["values"]
                for method, settings in methods.items()
            }
        raw_accuracy = run.row(
            f"{env}-visionmask-raw-accuracy",
            lambda: scored({"visionmask": networks["visionmask"]}, {"accuracy": dict(substrate, normalize="none")})[
                "values"
            ],
        )["accuracy"]
        speed_states = run.to_device(ds.states(np.arange(min(s["speed_states"], len(ds)))))
    _collect_rows(out, env, by_protocol, raw_accuracy, test)
    speed = run.row(
        f"{env}-speed", lambda: _speed(model, network, speed_states, s["method_settings"].get("greydanus", {}))
    )
    return {
        "agent": env,
        "states": len(speed_states),
        **speed,
        "ratio": speed["visionmask_states_per_s"] / speed["greydanus_states_per_s"],
    }


def _collect_rows(out: dict, env: str, by_protocol: dict, raw_accuracy: list, test: np.ndarray) -> None:
    """Each protocol's table rows (means), paired rows (VisionMask minus each method) and
    per-state values of one agent, into ``out[protocol]``."""
    for protocol, values in by_protocol.items():
        for method, v in values.items():
            row = {"agent": env, "method": method, **{c: nanmean(v[c]) for c in COLUMNS}}
            if method == "visionmask":
                row["accuracy (raw mask)"] = nanmean(raw_accuracy)
            out[protocol]["rows"].append(row)
        for col in ("deletion", "insertion"):
            prow = {"agent": env, "column": col}
            for method, v in values.items():
                if method != "visionmask":
                    prow[method] = format_interval(paired_interval(values["visionmask"][col], v[col]))
            out[protocol]["paired"].append(prow)
        out[protocol]["extra"][env] = {"test_rows": test.tolist(), "values": values, "raw_accuracy": raw_accuracy}


def _write_tables(run: TargetRun, out: dict, speed_rows: list) -> None:
    """Each protocol's ``table1``/``paired`` (best value per column and agent marked), ``speed``
    and the figures."""
    s = run.settings
    for protocol, tables in out.items():
        rows_out, suffix = tables["rows"], "" if protocol == "xrl" else f"-{protocol}"
        names = list(dict.fromkeys(r["method"] for r in rows_out))
        for r in rows_out:  # mark the best value of each column per agent
            for c in COLUMNS:
                vals = [x[c] for x in rows_out if x["agent"] == r["agent"] and x[c] is not None]
                if r[c] is not None and vals and r[c] == (max(vals) if HIGHER[c] else min(vals)):
                    r[f"{c} best"] = True
        run.table(
            f"table1{suffix}",
            rows_out,
            ["agent", "method", *COLUMNS, "accuracy (raw mask)"],
            title=f"VisionMask Table 1 on {s['n_states']} test-split states of each zoo agent's expert data, "
            f"{PROTOCOLS[protocol]} (↑ accuracy, ↓ deletion, ↑ insertion, ↓ lipschitz, ↑ sparseness; curves "
            f"substrate: {s['curve_substrate']})",
            extra={"per_state": tables["extra"], "protocol": protocol, "settings": _settings_of(s, protocol)},
        )
        run.table(
            f"paired{suffix}",
            tables["paired"],
            ["agent", "column", *[m for m in names if m != "visionmask"]],
            title=f"{PROTOCOLS[protocol]}: VisionMask minus each method over the same states (mean, 95% "
            "percentile bootstrap interval; bold = excludes 0; deletion: positive = VisionMask worse; insertion: "
            "negative = VisionMask worse)",
        )
    run.table(
        "speed",
        speed_rows,
        ["agent", "states", "visionmask_states_per_s", "greydanus_states_per_s", "ratio"],
        title="States per second: VisionMask's every-action masks in one batched pass per 64 states against "
        "Greydanus's map of one action (best of 3, one thread)",
        digits=1,
    )
    for protocol, tables in out.items():
        short = "xrl's protocol" if protocol == "xrl" else "as VisionMask compared (TorchRay RISE, binary LIME, LATEC)"
        _figure(run, tables["rows"], "table1" if protocol == "xrl" else f"table1-{protocol}", short)


#: the protocols of ``protocols=`` and their titles
PROTOCOLS = {
    "visionmask": "baselines and metrics as VisionMask ran them (TorchRay's RISE, LIME's binary mask, LATEC's "
    "deletion, insertion and LLE)",
    "xrl": "xrl's protocol (eclique's RISE, LIME coefficients, RISE's CausalMetric, normalised LLE)",
}


def _settings_of(s: dict, protocol: str) -> dict:
    """The method and metric settings a protocol lays over the run's (``visionmask_protocol`` for
    ``"visionmask"``, nothing for ``"xrl"``)."""
    if protocol == "xrl":
        return {"method_settings": {}, "metric_settings": {"lipschitz": {"n_samples": s["lipschitz_samples"]}}}
    laid = s["visionmask_protocol"]
    metric_settings = {k: dict(v) for k, v in laid.get("metric_settings", {}).items()}
    if s["latec_lipschitz_samples"] is not None:
        metric_settings.setdefault("lipschitz", {})["n_samples"] = s["latec_lipschitz_samples"]
    return {"method_settings": laid.get("method_settings", {}), "metric_settings": metric_settings}


def _protocol(s: dict, protocol: str, substrate: dict, curve: dict, networks: dict) -> tuple[dict, dict]:
    """``(metrics, methods)`` of one protocol: the run's ``method_settings`` (e.g. ``--quick``'s
    budgets) laid over the protocol's method settings, its metric settings over the curves'
    substrate."""
    laid = _settings_of(s, protocol)
    metric_settings = laid["metric_settings"]
    metrics = {
        "accuracy": substrate,
        "deletion": {**curve, **metric_settings.get("deletion", {})},
        "insertion": {**curve, **metric_settings.get("insertion", {})},
        "lipschitz": dict(metric_settings.get("lipschitz", {})),
        "sparseness": {},
    }
    methods = dict(networks)
    methods.update(
        {m: {**laid["method_settings"].get(m, {}), **s["method_settings"].get(m, {})} for m in s["baselines"]}
    )
    return metrics, methods


def _speed(model, network, states, greydanus_settings) -> dict:
    from xrl.explainers import get_explainer

    vm = get_explainer("visionmask", model, network=network, batch_size=64)
    gd = get_explainer("greydanus", model, **greydanus_settings)
    vm.explain_all(states[:8])
    gd.explain(states[:2])
    times = {}
    for name, fn, n in (
        ("visionmask", lambda: vm.explain_all(states), len(states)),
        ("greydanus", lambda: gd.explain(states[:16]), min(16, len(states))),
    ):
        best = math.inf
        for _ in range(3):
            start = time.perf_counter()
            fn()
            best = min(best, time.perf_counter() - start)
        times[f"{name}_states_per_s"] = n / best
    return times


def _figure(run: TargetRun, rows: list[dict], name: str = "table1", protocol: str = "") -> None:
    from xrl.viz.overlay import figure, save_figure

    agents = list(dict.fromkeys(r["agent"] for r in rows))
    fig, axes = figure(len(agents), 3, (11, 2.8 * len(agents)))
    for i, agent in enumerate(agents):
        mine = [r for r in rows if r["agent"] == agent]
        for j, col in enumerate(("accuracy", "deletion", "insertion")):
            ax = axes[i, j]
            ax.barh(
                [r["method"] for r in mine],
                [r[col] or 0 for r in mine],
                color=["tab:red" if r["method"] == "visionmask" else "tab:grey" for r in mine],
            )
            ax.set_title(f"{agent}: {col} {'↑' if HIGHER[col] else '↓'}", fontsize=9)
            ax.tick_params(labelsize=7)
    save_figure(fig, run.figure(name), f"VisionMask Table 1 on the zoo agents: {protocol}")


# the runs of this module's targets; their declarations (claim, settings, budget) are in targets.json
RUNS = {"visionmask-table1": run_table1}
