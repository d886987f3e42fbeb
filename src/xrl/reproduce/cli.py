"""The ``xrl reproduce`` subcommand: its parser and handler (``xrl.cli`` only registers them)."""

from __future__ import annotations

import json
import textwrap
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

from xrl.settings import OnDevice

DEFAULT_OUT = "reproduce"


@dataclass
class ReproduceSettings(OnDevice):
    HELP: ClassVar[str] = (
        "re-run a table or figure of the four papers (DIGR, VisionMask, RExL, FLS) on zoo agents; resumable; "
        "--list shows every target"
    )

    target: str | None = field(default=None, metadata={"positional": True})
    """the target's name (see --list)"""
    list_targets: bool = field(default=False, metadata={"switch": True, "flag": "list"})
    """list the targets: what each re-runs, its budget, its time here"""
    quick: bool = field(default=False, metadata={"switch": True})
    """tiny budgets: the same code path in seconds (for tests)"""
    out: str | None = None
    """output folder (default reproduce/<target>, or reproduce/<target>-quick with --quick)"""
    overrides: dict = field(default_factory=dict, metadata={"flag": "set", "lists": True})
    """override a budget setting (JSON values, or comma-separated lists), e.g. --set n_states=16"""


def list_targets() -> str:
    from xrl.reproduce import TARGETS
    from xrl.reproduce.core import PAPERS

    lines = []
    for t in TARGETS.targets.values():
        last = Path(DEFAULT_OUT) / t.name / "run.json"
        here = ""
        if last.exists():
            r = json.loads(last.read_text())
            here = f"; last run in ./{last.parent}: {r['seconds'] / 60:.1f} min"
        paper = PAPERS.get(t.paper, "our own analysis").split(":")[0]
        lines.append(f"{t.name}  [{paper}] {t.claim}")
        for label, text in (
            ("re-runs", t.reruns),
            ("budget", json.dumps(t.settings)),
            ("takes here", t.measured + here),
            ("docs", t.docs),
        ):
            lines.append(textwrap.fill(text, 110, initial_indent=f"    {label}: ", subsequent_indent="      "))
        for setting, note in t.notes.items():
            lines.append(
                textwrap.fill(note, 110, initial_indent=f"    note on {setting}: ", subsequent_indent="      ")
            )
    return "\n".join(lines)


def cmd_reproduce(args: ReproduceSettings) -> int:
    from xrl.ops import resolve_device
    from xrl.reproduce import TARGETS
    from xrl.reproduce.core import run_target

    if args.list_targets or not args.target:
        print(list_targets())
        return 0
    target = TARGETS.get(args.target)
    target.resolved(args.overrides)  # unknown settings fail before anything runs (one line: ValueError)
    device = resolve_device(args.device)  # auto: CUDA when available; a missing CUDA device fails here, too
    out = args.out or str(Path(DEFAULT_OUT) / (args.target + ("-quick" if args.quick else "")))
    run_target(target, out, quick=args.quick, overrides=args.overrides, device=device)
    return 0
