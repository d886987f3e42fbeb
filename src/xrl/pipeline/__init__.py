"""One explain-and-score pipeline, shaped like Quantus' ``evaluate(metrics, xai_methods, model,
x_batch, y_batch, a_batch)``; ``xrl evaluate``, bench jobs, the reproduce tables and serve's
scores all run through it (docs/architecture.md, *Pipeline*).

- :func:`explain` ``(model, states, methods, targets)`` -> :class:`Explanations`: the maps per
  method, each explainer built once (kept in ``.explainers``, with ``.seconds``);
- :func:`score` ``(model, states, maps, metrics, targets, labels, explainers)`` ->
  :class:`Evaluation`: every metric on every method's maps, per-sample values, the mean
  deletion/insertion curves asked for (``curves=``);
- :func:`evaluate` ``(model, dataset, rows, methods, metrics)``: the rows' states, targets and
  labels read once (:func:`read_batch` -> :class:`Batch`), then both steps
  (:func:`evaluate_batch`, for a batch already read).

Example::

    from xrl.pipeline import explain, score
    maps = explain(model, states, {"rise": {"n_masks": 500}, "gradient": {}}, targets)
    result = score(model, states, maps, ["deletion", "sparseness"], targets, curves=["deletion"])
    result.means(), result.curves["rise"]["deletion"]
"""

from xrl.pipeline.data import (
    TARGETS,
    Batch,
    check_rows,
    dataset_targets,
    evaluate,
    evaluate_batch,
    read_batch,
    sample_rows,
)
from xrl.pipeline.result import Evaluation
from xrl.pipeline.steps import NO_LABELS, Explanations, build_explainers, build_metrics, explain, score

__all__ = [
    "TARGETS",
    "NO_LABELS",
    "Batch",
    "Evaluation",
    "Explanations",
    "build_explainers",
    "build_metrics",
    "check_rows",
    "dataset_targets",
    "evaluate",
    "evaluate_batch",
    "explain",
    "read_batch",
    "sample_rows",
    "score",
]
