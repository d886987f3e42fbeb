"""``xrl reproduce``: one command per table or figure of the four papers that we can re-run.

Each target lives in its own module (``digr``, ``visionmask``, ``rexl``, ``fls``, ``analyses``)
and is registered in :data:`TARGETS`; :func:`xrl.reproduce.core.run_target` runs (or resumes) one
into an output folder. The ledger of what was reproduced is ``docs/reproduction.md``.

    from xrl.reproduce import TARGETS, run_target
    run_target(TARGETS.get("digr-table1"), "reproduce/digr-table1", quick=True)
"""
from __future__ import annotations

from xrl.reproduce import analyses, digr, fls, rexl, visionmask
from xrl.reproduce.core import PAPERS, Registry, Run, Target, paired_interval, run_target

TARGETS = Registry()
for _target in (digr.TABLE1, digr.ATTACKS, digr.HIGHWAY, visionmask.TABLE1, rexl.DELETION, fls.FREE_LUNCH, fls.LOCALIZATION,
                fls.METRICS, analyses.RISE_COVERAGE, analyses.ZOO_BASELINES, analyses.DIGR_SNAPSHOTS):
    TARGETS.add(_target)

__all__ = ["TARGETS", "PAPERS", "Run", "Target", "paired_interval", "run_target"]
