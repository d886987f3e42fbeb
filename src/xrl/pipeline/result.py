"""The result of scoring: :class:`Evaluation`, per-sample values per method and column, their
means, a plain-text table, the files ``xrl evaluate`` writes, and the mean deletion/insertion
curves when they were asked for (:func:`xrl.pipeline.score`, ``curves=``)."""

from __future__ import annotations

import csv
import math
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from xrl.files import atomic_path, write_json
from xrl.metrics import METRICS


@dataclass
class Evaluation:
    """Per-sample values ``values[method][column]`` (column = metric or ``metric.output``),
    and each column's direction."""

    methods: list[str]
    columns: list[str]
    higher_is_better: dict[str, bool]
    values: dict[str, dict[str, list[float]]] = field(default_factory=dict)
    skipped: dict[str, str] = field(default_factory=dict)
    rows: list[int] = field(default_factory=list)
    """the dataset rows scored, in the order of the per-sample values"""
    seconds: dict[str, dict[str, float]] = field(default_factory=dict)
    """wall time per method: ``"explain"`` (its maps), each metric (scoring them) and
    ``"<metric> curve"`` for each curve kept"""
    curves: dict[str, dict[str, dict[str, list[float]]]] = field(default_factory=dict)
    """``curves[method][metric] = {"x": [...], "y": [...]}``: the mean curve over the states of each
    curve metric named in :func:`xrl.pipeline.score`'s ``curves`` (empty unless asked for)"""

    def means(self) -> dict[str, dict[str, float]]:
        """NaN-free mean of every column (NaN = undefined for that sample, left out)."""
        out: dict = {}
        for method in self.methods:
            out[method] = {}
            for col in self.columns:
                v = np.asarray(self.values[method].get(col, []), dtype=np.float64)
                v = v[~np.isnan(v)]
                out[method][col] = float(v.mean()) if v.size else math.nan
        return out

    def table(self) -> str:
        """A plain-text table; the best value of each column is marked with ``*``."""
        means = self.means()
        arrows = {c: ("↑" if self.higher_is_better[c] else "↓") for c in self.columns}
        best = {}
        for c in self.columns:
            vals = [means[m][c] for m in self.methods if not math.isnan(means[m][c])]
            if vals:
                best[c] = max(vals) if self.higher_is_better[c] else min(vals)
        header = ["method"] + [f"{c} {arrows[c]}" for c in self.columns]
        rows = [
            [m] + [_fmt(means[m][c]) + ("*" if best.get(c) == means[m][c] else " ") for c in self.columns]
            for m in self.methods
        ]
        widths = [max(len(r[i]) for r in [header] + rows) for i in range(len(header))]
        lines = ["  ".join(x.ljust(w) for x, w in zip(header, widths))]
        lines += ["  ".join(x.ljust(w) for x, w in zip(r, widths)) for r in rows]
        lines += [f"(skipped {k}: {v})" for k, v in self.skipped.items()]
        for c in self.columns:  # a `<metric>.passed` column: methods failing it on average
            metric, _, out = c.rpartition(".")
            failed = [m for m in self.methods if out == "passed" and means[m][c] < 0.5]
            if failed:
                reason = getattr(METRICS.get(metric), "flagged", None) if metric in METRICS else None
                lines.append(f"flagged: {', '.join(failed)} ({reason or f'mean {c} < 0.5'})")
        return "\n".join(lines)

    def write(self, folder: str | os.PathLike) -> tuple[Path, Path]:
        """``metrics.csv`` (means) and ``metrics.json`` (means, per-sample values, directions)."""
        folder = Path(folder)
        means = self.means()
        with atomic_path(folder / "metrics.csv") as tmp:
            with open(tmp, "w", newline="") as f:
                w = csv.writer(f)
                w.writerow(["method"] + self.columns)
                for m in self.methods:
                    w.writerow([m] + [means[m][c] for c in self.columns])
        write_json(
            folder / "metrics.json",
            {
                "methods": self.methods,
                "columns": self.columns,
                "higher_is_better": self.higher_is_better,
                "means": means,
                "values": self.values,
                "skipped": self.skipped,
                "rows": self.rows,
                **({"curves": self.curves} if self.curves else {}),
            },
        )
        return folder / "metrics.csv", folder / "metrics.json"


def _fmt(x: float) -> str:
    if math.isnan(x):
        return "nan"
    return f"{x:.4g}" if abs(x) < 1000 else f"{x:.1f}"
