"""The pipeline on a :class:`~xrl.data.dataset.StateDataset`: :func:`read_batch` reads the rows'
states, targets and labels once; :func:`evaluate` explains and scores them (:func:`explain`,
:func:`score`).

**Targets and the dataset's agent.** A dataset records the weights fingerprint of the agent that
collected it. Explaining it with another agent is refused: the stored actions are the other
agent's choices, not this one's. ``targets="agent"`` (CLI ``--targets agent``) explains the
explained agent's own greedy actions on those states instead, ``targets="dataset"`` the stored
actions anyway. A dataset written before fingerprints were recorded gets a warning.

**Recurrent agents.** A recurrent agent's states are explained with the recurrent state carried
over from the unchanged history (:func:`dataset_memory`): the one the dataset recorded when
this agent collected it, else the agent's own state replayed along each episode's stored
observations from its start.
"""

from __future__ import annotations

import sys
import warnings
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from types import FrameType

import numpy as np
import torch
from tqdm.auto import tqdm

from xrl.agents.model import Model
from xrl.data.dataset import StateDataset
from xrl.ops import chunks
from xrl.pipeline.result import Evaluation
from xrl.pipeline.steps import Methods, Metrics, build_metrics, check_budgets, columns_of, explain, named, score

TARGETS = ("dataset", "agent")


@dataclass
class Batch:
    """What an evaluation reads from a dataset, once (Quantus' ``x_batch``, ``y_batch`` and the
    ground truth): the ``rows``, their ``states (n, C, H, W)``, the ``targets (n,)`` the maps
    explain, the ground-truth ``labels (n, H, W)`` (None when the dataset has none) and, for a
    recurrent agent, each state's ``recurrent`` state ``(n, *model.recurrent_shape)`` (None for
    a feed-forward one; :func:`dataset_memory`)."""

    rows: np.ndarray
    states: torch.Tensor
    targets: torch.Tensor
    labels: torch.Tensor | None
    recurrent: torch.Tensor | None = None


def check_rows(rows, n: int) -> np.ndarray:
    """``rows`` as a flat int64 array of rows of an ``n``-row dataset, or a one-line error."""
    rows = np.asarray(rows, dtype=np.int64).reshape(-1)
    if rows.size == 0 or rows.min() < 0 or rows.max() >= n:
        raise ValueError(f"rows must be a non-empty list of dataset rows in [0, {n}), got {rows.tolist()[:10]}")
    return rows


def sample_rows(n: int, n_states: int | None, seed: int = 0) -> np.ndarray:
    """The seeded sample of ``n_states`` of ``n`` rows, sorted (all rows when None or ``>= n``)."""
    if n_states is not None and (
        isinstance(n_states, bool) or not isinstance(n_states, (int, np.integer)) or n_states < 1
    ):
        raise ValueError(f"n_states must be a positive number of states (or None for all), got {n_states!r}")
    if n_states is None or n_states >= n:
        return np.arange(n)
    return np.sort(np.random.default_rng(seed).choice(n, size=n_states, replace=False))


def dataset_targets(
    model: Model,
    dataset: StateDataset,
    rows: np.ndarray,
    targets: str | None = None,
    *,
    batch_size: int = 64,
    states: torch.Tensor | None = None,
    memory: torch.Tensor | None = None,
) -> torch.Tensor:
    """The actions ``(n,)`` to explain on dataset ``rows``: the stored ones when the dataset was
    collected by ``model`` (same weights fingerprint) or ``targets="dataset"``; the model's own
    greedy actions with ``targets="agent"`` (on ``states``, the rows' states when already read).
    Another agent's dataset without ``targets`` is refused; a dataset without a recorded
    fingerprint gets a warning. ``memory``: a recurrent agent's state of each row
    (:func:`dataset_memory`), what ``targets="agent"`` scores each state under."""
    if targets is not None and targets not in TARGETS:
        raise ValueError(
            f"targets must be one of {TARGETS} (or None: the stored actions of the model's own "
            f"dataset), got {targets!r}"
        )
    if targets == "agent":
        states = dataset.states(rows) if states is None else states
        with torch.no_grad():  # not inference_mode: gradient explainers save the targets for backward
            if memory is not None:  # a recurrent agent: each state under its own recurrent state
                return torch.cat(
                    [model.step(states[i : i + 1], memory[i])[0].argmax(-1).cpu() for i in range(len(rows))]
                )
            return torch.cat([model(states[part]).argmax(-1).cpu() for part in chunks(len(rows), batch_size)])
    if targets is None:
        recorded = (dataset.agent or {}).get("fingerprint")
        source = (dataset.agent or {}).get("source")
        if not recorded:
            warnings.warn(
                f"{dataset.path}: the dataset records no agent fingerprint (written before they were "
                "recorded); its stored actions are explained as this agent's",
                stacklevel=_caller_level(),
            )
        elif recorded != model.fingerprint():
            raise ValueError(
                f"{dataset.path} was collected by another agent ({source}, weights {recorded}) than the one "
                f"explained ({model.info.get('source')}, weights {model.fingerprint()}); its stored actions are "
                "that agent's choices. Explain the explained agent's own actions (targets='agent', CLI "
                "--targets agent) or the stored ones anyway (targets='dataset', --targets dataset)"
            )
    return torch.as_tensor(dataset.actions[rows], dtype=torch.long, device="cpu")  # beside the dataset's states


def _caller_level() -> int:
    """The ``stacklevel`` (from the function calling this) of the first frame outside the pipeline
    and ``xrl/evaluation.py``: a warning names the caller's line, whichever wrapper it came through."""
    inside = (str(Path(__file__).parent), str(Path(__file__).parents[1] / "evaluation.py"))
    frame: FrameType | None = sys._getframe(1)
    level = 1
    while frame is not None and frame.f_code.co_filename.startswith(inside):
        frame, level = frame.f_back, level + 1
    return level


def dataset_memory(model: Model, dataset: StateDataset, rows: np.ndarray) -> torch.Tensor | None:
    """A recurrent agent's state ``(n, *model.recurrent_shape)`` of each of the dataset ``rows``
    (None for a feed-forward agent): the state the dataset recorded when this agent (same weights
    fingerprint) collected it; else the agent's own, replayed from the zero state along the
    episode's stored observations up to the row (a dataset of another agent, or without states)."""
    shape = model.recurrent_shape
    if shape is None:
        return None
    stored = dataset.recurrent(rows)
    if stored is not None and stored.shape[1:] == shape and dataset.agent.get("fingerprint") == model.fingerprint():
        return torch.as_tensor(stored, device="cpu").to(model.device)
    episodes, steps = dataset.episode, dataset.step
    out = torch.zeros(len(rows), *shape, device=model.device)
    for e in np.unique(episodes[rows]):
        history = np.flatnonzero(episodes == e)  # rows in order, steps 0, 1, ... (as collect writes them)
        history = history[np.argsort(steps[history], kind="stable")]
        if not np.array_equal(steps[history], np.arange(len(history))):
            raise ValueError(
                f"{dataset.path}: episode {e} does not hold its steps from 0 on, so a recurrent agent's state "
                "cannot be replayed from its start"
            )
        wanted = rows[episodes[rows] == e]
        last = int(steps[wanted].max())
        seen = dataset.states(history[:last]).to(model.device)  # the observations before the last row asked
        memory = torch.zeros(1, *shape, device=model.device)
        at_step = [memory[0]]
        with torch.no_grad():
            for t in range(last):
                _, memory = model.step(seen[t : t + 1], memory)
                at_step.append(memory[0])
        for i in np.flatnonzero(episodes[rows] == e):
            out[i] = at_step[int(steps[rows[i]])]
    return out


def read_batch(model: Model, dataset: StateDataset, rows, targets: str | None = None, *, batch_size: int = 64) -> Batch:
    """The :class:`Batch` of dataset ``rows``: states, targets (:func:`dataset_targets`; with
    ``targets="agent"`` the model runs once over the states), labels and a recurrent agent's
    states (:func:`dataset_memory`), each read once and put on the model's device."""
    rows = check_rows(rows, len(dataset))
    device = model.device  # the states go where the model computes (--device)
    states = dataset.states(rows).to(device)
    memory = dataset_memory(model, dataset, rows)
    target_index = dataset_targets(
        model, dataset, rows, targets, batch_size=batch_size, states=states, memory=memory
    ).to(device)
    stored = dataset.labels(rows)
    labels = torch.as_tensor(stored, device="cpu").to(device) if stored is not None else None
    return Batch(rows, states, target_index, labels, memory)


def evaluate_batch(
    model: Model,
    batch: Batch,
    methods: Methods,
    metrics: Metrics,
    *,
    batch_size: int = 64,
    curves: Iterable[str] = (),
    progress: bool = False,
    saliency: dict[str, torch.Tensor] | None = None,
) -> Evaluation:
    """:func:`explain` ``batch.states`` with every method (each explainer built once), then
    :func:`score` every map with every metric (the same explainers, targets and labels). Metric
    memory budgets are checked before anything is explained; computed maps are put in
    ``saliency`` when a dict is given; ``Evaluation.seconds`` holds each method's ``"explain"``."""
    methods = named(methods, "methods")
    metric_objs = build_metrics(metrics)
    if not methods or not metric_objs:
        raise ValueError("evaluate needs at least one method and one metric")
    _, _, skipped = columns_of(metric_objs, batch.labels is not None)
    check_budgets(metric_objs, skipped, min(len(batch.rows), batch_size), tuple(batch.states.shape[1:]))
    work = len(methods) * (1 + len(metric_objs) - len(skipped))
    with tqdm(total=work, desc="evaluate", disable=not progress) as bar:
        maps = explain(
            model, batch.states, methods, batch.targets, batch_size=batch_size, progress=bar, recurrent=batch.recurrent
        )
        if saliency is not None:
            saliency.update(maps)
        result = score(
            model,
            batch.states,
            maps,
            metric_objs,
            batch.targets,
            batch.labels,
            maps.explainers,
            batch_size=batch_size,
            curves=curves,
            rows=batch.rows.tolist(),
            progress=bar,
            recurrent=batch.recurrent,
        )
    result.seconds = {m: {"explain": maps.seconds[m], **result.seconds[m]} for m in result.methods}
    return result


def evaluate(
    model: Model,
    dataset: StateDataset,
    rows,
    methods: Methods,
    metrics: Metrics,
    *,
    targets: str | None = None,
    batch_size: int = 64,
    curves: Iterable[str] = (),
    progress: bool = False,
    saliency: dict[str, torch.Tensor] | None = None,
) -> Evaluation:
    """Explain and score dataset ``rows``: their states, targets and labels read once
    (:func:`read_batch`), every explainer built once, the model run once for ``targets="agent"``
    (:func:`evaluate_batch`). ``targets``: see :func:`dataset_targets`; ``curves``: see
    :func:`score`."""
    if not named(methods, "methods") or not named(metrics, "metrics"):
        raise ValueError("evaluate needs at least one method and one metric")
    batch = read_batch(model, dataset, rows, targets, batch_size=batch_size)
    return evaluate_batch(
        model, batch, methods, metrics, batch_size=batch_size, curves=curves, progress=progress, saliency=saliency
    )
