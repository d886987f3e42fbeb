"""``xrl reproduce``: one command per table or figure of the four papers that we can re-run.

Each target is declared in ``targets.json`` (claim, settings, budget) and run by a function in
its paper's module (``digr``, ``visionmask``, ``rexl``, ``fls``, ``analyses``), which lists it in
``RUNS``; :data:`TARGETS` binds the two; :func:`xrl.reproduce.core.run_target` runs (or resumes) one
into an output folder. The ledger of what was reproduced is ``docs/reproduction.md``.

    from xrl.reproduce import TARGETS, run_target
    run_target(TARGETS.get("digr-table1"), "reproduce/digr-table1", quick=True)
"""

from __future__ import annotations

from xrl.reproduce import analyses, digr, fls, rexl, visionmask
from xrl.reproduce.core import PAPERS, Target, TargetRun, load_targets, paired_interval, run_target

TARGETS = load_targets({**digr.RUNS, **visionmask.RUNS, **rexl.RUNS, **fls.RUNS, **analyses.RUNS})

__all__ = ["TARGETS", "PAPERS", "Target", "TargetRun", "paired_interval", "run_target"]
