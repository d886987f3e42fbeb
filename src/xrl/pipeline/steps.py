"""The two steps of every explain-and-score procedure: :func:`explain` (maps per method, each
explainer built once) and :func:`score` (every metric on every method's maps, into an
:class:`~xrl.pipeline.result.Evaluation`, with the mean deletion/insertion curves asked for).

**Recurrent agents.** Given ``recurrent`` (``(n, *model.recurrent_shape)``, each state's
recurrent state, e.g. :attr:`Batch.recurrent <xrl.pipeline.data.Batch>`), both steps take the
states one at a time, each under its own recurrent state (:meth:`Model.recurrent
<xrl.agents.model.Model.recurrent>`, shared by every perturbed copy of the state and every
forward a method or a metric makes for it): :func:`state_parts` is where that happens
(docs/agents.md#recurrent-agents)."""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import ExitStack
from typing import Any

import torch
from tqdm.auto import tqdm

from xrl.agents.model import Model
from xrl.errors import SettingTypeError
from xrl.explainers import Explainer, get_explainer
from xrl.metrics import get_metric
from xrl.metrics.base import Metric
from xrl.ops import Targets, chunks
from xrl.pipeline.result import Evaluation

#: ``["gradient", "rise"]``, ``{"rise": {"n_masks": 500}}``, or ``{"label": explainer}`` (built already)
Methods = Mapping[str, Mapping[str, Any] | Explainer] | Sequence[str]
#: ``["deletion", "sparseness"]``, ``{"lipschitz": {"n_samples": 4}}``, or ``{"name": metric}`` (built already)
Metrics = Mapping[str, Mapping[str, Any] | Metric] | Sequence[str]
#: why a metric that needs ground truth is skipped when no labels are given (``Evaluation.skipped``)
NO_LABELS = "the dataset has no ground-truth labels"


class Explanations(dict[str, torch.Tensor]):
    """The maps ``(n, H, W)`` of :func:`explain`, one per method in the order given, with
    ``explainers`` (the explainer that made each, what :func:`score` hands the metrics that
    explain again: sanity, robustness, cost) and ``seconds`` (wall time of each method's maps)."""

    def __init__(self) -> None:
        super().__init__()
        self.explainers: dict[str, Explainer] = {}
        self.seconds: dict[str, float] = {}


def named(items: Mapping[str, Any] | Sequence[str], what: str) -> dict[str, Any]:
    """``{name: settings or object}`` from a list of names or a mapping; refuses a bare string."""
    if isinstance(items, Mapping):
        return dict(items)
    if isinstance(items, str) or not isinstance(items, Iterable):
        raise SettingTypeError(f"{what} must be a list of names or a {{name: settings}} mapping, got {items!r}")
    return {name: {} for name in items}


def build_explainers(model: Model, methods: Methods) -> dict[str, Explainer]:
    """One explainer per method, each built once: ``get_explainer(name, model, **settings)``, or
    the :class:`~xrl.explainers.base.Explainer` given as the value (used as it is)."""
    out = {}
    for name, value in named(methods, "methods").items():
        out[name] = value if isinstance(value, Explainer) else get_explainer(name, model, **dict(value or {}))
    return out


def build_metrics(metrics: Metrics) -> dict[str, Metric]:
    """One metric object per name: ``get_metric(name, **settings)``, or the metric given."""
    return {
        name: value if isinstance(value, Metric) else get_metric(name, **dict(value or {}))
        for name, value in named(metrics, "metrics").items()
    }


def part_of(targets: Any, part: slice, n: int) -> Any:
    """The targets of the states ``part`` of ``n``: a ``(n,)`` tensor is sliced, anything else
    (None, an int, a 0-d tensor, a callable) holds for every state as it is."""
    if isinstance(targets, torch.Tensor) and targets.ndim == 1 and targets.shape[0] == n:
        return targets[part]
    return targets


def state_parts(models: Sequence[Model], n: int, batch_size: int, recurrent: torch.Tensor | None) -> Iterator[slice]:
    """The chunks of ``n`` states an explanation or a metric takes at once: slices of at most
    ``batch_size`` states; with ``recurrent`` (``(n, *recurrent_shape)``) one state at a time,
    each yielded with ``models`` (the agent, the explainers' copies of it) under that state's
    recurrent state."""
    if recurrent is None:
        yield from chunks(n, batch_size)
        return
    shape = models[0].recurrent_shape
    if shape is None or tuple(recurrent.shape) != (n, *shape):
        raise ValueError(
            f"recurrent must hold the recurrent state of each of the {n} states, shape ({n}, *{shape}) "
            f"for this model, got {tuple(recurrent.shape)}"
            if shape is not None
            else "recurrent states were given but the model is not recurrent"
        )
    unique = list({id(m): m for m in models}.values())
    for i in range(n):
        with ExitStack() as stack:
            for m in unique:
                stack.enter_context(m.recurrent(recurrent[i]))
            yield slice(i, i + 1)


def progress_bar(progress: bool | tqdm, total: int, desc: str) -> tuple[tqdm, bool]:
    """``(bar, owned)``: the caller's bar, or a new one (disabled unless ``progress``) to close."""
    if isinstance(progress, tqdm):
        return progress, False
    return tqdm(total=total, desc=desc, disable=not progress), True


def explain(
    model: Model,
    states: torch.Tensor,
    methods: Methods,
    targets: Targets = None,
    *,
    batch_size: int = 64,
    progress: bool | tqdm = False,
    recurrent: torch.Tensor | None = None,
) -> Explanations:
    """Maps ``(n, H, W)`` of every method on ``states (n, C, H, W)``, explained in chunks of
    ``batch_size`` states; each method's explainer is built once (:func:`build_explainers`) and
    kept in the result's ``explainers`` for :func:`score`.

    ``methods``: names, ``{name: settings}`` or ``{label: explainer}``. ``targets``: what every
    method explains, as :meth:`Explainer.explain` takes it (None: the model's argmax; an int; a
    ``(n,)`` tensor of action indices, sliced per chunk; a callable). ``recurrent``: a recurrent
    agent's state of each state (module docstring; None: the model as it is)."""
    model.check_states(states)
    explainers = build_explainers(model, methods)
    n = states.shape[0]
    out = Explanations()
    bar, owned = progress_bar(progress, len(explainers), "explain")
    for name, explainer in explainers.items():
        bar.set_postfix_str(f"{name}: explaining")
        started = time.perf_counter()
        out[name] = torch.cat(
            [
                explainer.explain(states[part], part_of(targets, part, n))
                for part in state_parts([model, explainer.model], n, batch_size, recurrent)
            ]
        )
        out.seconds[name] = time.perf_counter() - started
        out.explainers[name] = explainer
        bar.update()
    if owned:
        bar.close()
    return out


def columns_of(metrics: Mapping[str, Metric], has_labels: bool) -> tuple[list[str], dict[str, bool], dict[str, str]]:
    """``(columns, higher_is_better per column, skipped)``: a metric's column is its name, or
    ``name.output`` for each output of a multi-output metric; a metric needing labels is skipped
    (with the reason) when there are none."""
    columns: list[str] = []
    directions: dict[str, bool] = {}
    skipped: dict[str, str] = {}
    for name, metric in metrics.items():
        if "labels" in metric.requires and not has_labels:
            skipped[name] = NO_LABELS
            continue
        for out in metric.outputs or (None,):
            col = name if out is None else f"{name}.{out}"
            columns.append(col)
            hib = metric.higher_is_better
            directions[col] = hib[out] if isinstance(hib, dict) and out else bool(hib)
    return columns, directions, skipped


def check_budgets(metrics: Mapping[str, Metric], skipped: Mapping[str, str], batch: int, shape: tuple) -> None:
    """Each metric's memory estimate for ``batch`` states of ``shape`` (``XRL_MAX_ALLOC_GB``),
    before anything is computed."""
    for name, metric in metrics.items():
        if name not in skipped and hasattr(metric, "check_budget"):
            metric.check_budget(batch, shape)


def score(
    model: Model,
    states: torch.Tensor,
    maps: Mapping[str, torch.Tensor],
    metrics: Metrics,
    targets: Targets = None,
    labels: torch.Tensor | None = None,
    explainers: Mapping[str, Explainer] | None = None,
    *,
    batch_size: int = 64,
    curves: Iterable[str] = (),
    rows: Sequence[int] | None = None,
    progress: bool | tqdm = False,
    recurrent: torch.Tensor | None = None,
) -> Evaluation:
    """Every metric on every method's maps ``(n, H, W)`` of ``states (n, C, H, W)``, in chunks of
    ``batch_size`` states; per-sample values in an :class:`Evaluation` (methods in the order of
    ``maps``, columns in the order of ``metrics``).

    ``metrics``: names, ``{name: settings}`` or ``{name: metric}``. ``targets``: the ``(n,)``
    action indices the maps explain, sliced per chunk (None: the model's argmax; a metric that
    explains again, e.g. ``time_per_map``, also takes an int or a callable, held for every chunk). ``labels``: ground truth
    ``(n, H, W)``; without them a metric that needs them is reported in ``skipped``.
    ``explainers``: each method's explainer, for the metrics that explain again (default: the
    ``explainers`` of an :class:`Explanations`). ``curves``: curve metrics (``deletion``,
    ``insertion``) among ``metrics`` whose mean curve goes to ``Evaluation.curves``; their
    per-state values are the AUCs of the same curves (what the metric returns), computed once.
    ``rows``: what ``Evaluation.rows`` records (default ``0..n-1``). ``recurrent``: a recurrent
    agent's state of each state (module docstring)."""
    model.check_states(states)
    n = states.shape[0]
    metric_objs = build_metrics(metrics)
    if not metric_objs:
        raise ValueError("score needs at least one metric")
    curved = _curve_names(curves, metric_objs)
    explainers = dict(getattr(maps, "explainers", {}) if explainers is None else explainers)
    for method, m in maps.items():
        if not isinstance(m, torch.Tensor) or m.ndim != 3 or m.shape[0] != n:
            got = tuple(m.shape) if isinstance(m, torch.Tensor) else type(m).__name__
            raise ValueError(f"maps[{method!r}] must be ({n}, H, W), one map per state; got {got}")
    columns, directions, skipped = columns_of(metric_objs, labels is not None)
    check_budgets(metric_objs, skipped, min(n, batch_size), tuple(states.shape[1:]))
    result = Evaluation(
        list(maps), columns, directions, skipped=skipped, rows=list(range(n)) if rows is None else list(rows)
    )
    bar, owned = progress_bar(progress, len(maps) * (len(metric_objs) - len(skipped)), "score")
    models = [model, *(e.model for e in explainers.values())]
    for method, m in maps.items():
        result.values[method], result.seconds[method] = {}, {}
        for name, metric in metric_objs.items():
            if name in skipped:
                continue
            bar.set_postfix_str(f"{method}: {name}")
            if name in curved:
                chunked = state_parts(models, n, batch_size, recurrent)
                curve = _curve(metric, model, states, m, targets, chunked, result.seconds[method], name)
                result.curves.setdefault(method, {})[name] = curve.pop("mean")
                result.values[method][name] = curve["values"]
            else:
                started = time.perf_counter()
                result.values[method].update(
                    _values(
                        metric,
                        name,
                        model,
                        states,
                        m,
                        targets,
                        labels,
                        explainers.get(method),
                        state_parts(models, n, batch_size, recurrent),
                    )
                )
                result.seconds[method][name] = time.perf_counter() - started
            bar.update()
    if owned:
        bar.close()
    return result


def _curve_names(curves: Iterable[str], metrics: Mapping[str, Metric]) -> list[str]:
    names = [curves] if isinstance(curves, str) else list(curves)
    for name in names:
        if name not in metrics:
            raise ValueError(f"curves: {name!r} is not among the metrics scored ({', '.join(metrics)})")
        if not hasattr(metrics[name], "curve"):
            raise ValueError(f"curves: metric {name!r} has no curve (deletion and insertion have)")
    return names


def _values(
    metric: Metric, name: str, model, states, maps, targets, labels, explainer, chunked: Iterator[slice]
) -> dict[str, list[float]]:
    """``{column: per-state values}`` of one metric on one method's maps, chunk by chunk (``chunked``: :func:`state_parts`)."""
    n = states.shape[0]
    values: dict[str, list[torch.Tensor]] = {}
    for part in chunked:
        v = metric(
            model=model,
            states=states[part],
            saliency=maps[part],
            targets=part_of(targets, part, n),
            labels=labels[part] if labels is not None else None,
            explainer=explainer,
        )
        for key, t in v.items() if isinstance(v, dict) else [(None, v)]:
            values.setdefault(name if key is None else f"{name}.{key}", []).append(t)
    return {col: torch.cat(parts).double().cpu().tolist() for col, parts in values.items()}


def _curve(metric: Metric, model, states, maps, targets, chunked: Iterator[slice], seconds: dict, name: str) -> dict:
    """``{"mean": {"x", "y"}, "values": per-state AUCs}`` of a curve metric, chunk by chunk (the
    AUCs equal the metric's own values bit for bit); seconds to ``seconds["<name> curve"]`` (the
    curves) and ``seconds[name]`` (their AUCs)."""
    started = time.perf_counter()
    n = states.shape[0]
    parts = [
        metric.curve(model=model, states=states[part], saliency=maps[part], targets=part_of(targets, part, n))  # type: ignore[attr-defined]
        for part in chunked
    ]
    x, y = parts[0][0], torch.cat([scores for _, scores in parts])
    seconds[f"{name} curve"] = time.perf_counter() - started
    started = time.perf_counter()
    values = torch.cat([torch.trapezoid(scores, xs, dim=1).float() for xs, scores in parts])
    seconds[name] = time.perf_counter() - started
    return {"mean": {"x": x.tolist(), "y": y.mean(0).tolist()}, "values": values.double().cpu().tolist()}
