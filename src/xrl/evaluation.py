"""Score explainers with metrics on the states of a StateDataset: the table behind
``xrl evaluate`` and ``xrl demo``; the public face of :mod:`xrl.pipeline` on a dataset.

Every method explains the same states with the same targets (the actions the agent took, stored
in the dataset), every metric scores every method with the same code, and per-sample values are
kept so that means can be recomputed and compared. A metric a dataset cannot support (e.g.
``localization`` without ground truth) is reported as skipped, not silently zero. The work is
:func:`xrl.pipeline.evaluate`: states, targets and labels read once, each explainer built once.

**Targets and the dataset's agent.** A dataset records the weights fingerprint of the agent that
collected it. Explaining it with another agent is refused: the stored actions are the other
agent's choices, not this one's. ``targets="agent"`` (CLI ``--targets agent``) explains the
explained agent's own greedy actions on those states instead, ``targets="dataset"`` the stored
actions anyway. A dataset written before fingerprints were recorded gets a warning.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import numpy as np
import torch

from xrl import pipeline
from xrl.agents.model import Model
from xrl.data.dataset import StateDataset
from xrl.pipeline import TARGETS, Evaluation, check_rows, dataset_targets, sample_rows

__all__ = ["TARGETS", "Evaluation", "dataset_targets", "evaluate", "explain_dataset"]


def explain_dataset(
    model: Model,
    dataset: StateDataset,
    method: str,
    settings: Mapping | None = None,
    *,
    rows: np.ndarray,
    batch_size: int = 64,
    targets: str | None = None,
) -> torch.Tensor:
    """Saliency ``(n, H, W)`` of ``method`` on the dataset ``rows``; targets = the stored actions
    (``targets``: see :func:`dataset_targets`). One method: :func:`xrl.pipeline.explain`."""
    batch = pipeline.read_batch(model, dataset, rows, targets, batch_size=batch_size)
    return pipeline.explain(
        model,
        batch.states,
        {method: dict(settings or {})},
        batch.targets,
        batch_size=batch_size,
        recurrent=batch.recurrent,
    )[method]


def evaluate(
    model: Model,
    dataset: StateDataset,
    methods: Mapping[str, Mapping] | list[str],
    metrics: Mapping[str, Mapping] | list[str],
    *,
    n_states: int | None = 64,
    seed: int = 0,
    batch_size: int = 64,
    progress: bool = True,
    saliency: dict[str, torch.Tensor] | None = None,
    rows: np.ndarray | None = None,
    targets: str | None = None,
    curves: Iterable[str] = (),
) -> Evaluation:
    """Explain ``n_states`` dataset states (a seeded sample; all when None) with every method and
    score every map with every metric. ``methods``/``metrics``: names or ``{name: settings}``.
    ``rows``: score exactly these dataset rows instead (e.g. a test split); ``n_states`` and
    ``seed`` are then unused. Computed maps are stored in ``saliency`` when a dict is given.
    ``targets``: the stored actions of the model's own dataset (default), ``"agent"`` (the model's
    greedy actions) or ``"dataset"`` (the stored actions of another agent's dataset); another
    agent's dataset is refused without it (:func:`dataset_targets`). ``curves``: the curve
    metrics whose mean curve to keep (:func:`xrl.pipeline.score`)."""
    methods = {m: {} for m in methods} if not isinstance(methods, Mapping) else dict(methods)
    metrics = {m: {} for m in metrics} if not isinstance(metrics, Mapping) else dict(metrics)
    if not methods or not metrics:
        raise ValueError("evaluate needs at least one method and one metric")
    n = len(dataset)
    rows = check_rows(rows, n) if rows is not None else sample_rows(n, n_states, seed)
    return pipeline.evaluate(
        model,
        dataset,
        rows,
        methods,
        metrics,
        targets=targets,
        batch_size=batch_size,
        curves=curves,
        progress=progress,
        saliency=saliency,
    )
