"""The ``xrl reproduce`` subcommand: its parser and handler (``xrl.cli`` only registers them)."""

from __future__ import annotations

import argparse
import json
import textwrap
from pathlib import Path

DEFAULT_OUT = "reproduce"


def add_parser(sub) -> argparse.ArgumentParser:
    p = sub.add_parser(
        "reproduce",
        help="re-run a table or figure of the four papers (DIGR, VisionMask, RExL, FLS) "
        "on zoo agents; resumable; --list shows every target",
        description="One command per table or figure of the papers that we can re-run. Each target "
        "writes its tables (Markdown, CSV, JSON) and figures into --out; running the same "
        "command again resumes. The ledger: docs/reproduction.md.",
    )
    p.add_argument("target", nargs="?", help="the target's name (see --list)")
    p.add_argument("--list", action="store_true", help="list the targets: what each re-runs, its budget, its time here")
    p.add_argument("--quick", action="store_true", help="tiny budgets: the same code path in seconds (for tests)")
    p.add_argument(
        "--out",
        default=None,
        help=f"output folder (default {DEFAULT_OUT}/<target>, or {DEFAULT_OUT}/<target>-quick with --quick)",
    )
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a budget setting (JSON values, or comma-separated lists), e.g. --set n_states=16",
    )
    p.set_defaults(fn=cmd_reproduce)
    return p


def _value(text: str):
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        if "," in text:
            return [_value(x) for x in text.split(",")]
        return text


def parse_overrides(pairs: list[str]) -> dict:
    out = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise SystemExit(f"--set wants KEY=VALUE, got {pair!r}")
        out[key] = _value(value)
    return out


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


def cmd_reproduce(args) -> int:
    from xrl.reproduce import TARGETS
    from xrl.reproduce.core import run_target

    if args.list or not args.target:
        print(list_targets())
        return 0
    try:
        target = TARGETS.get(args.target)
        overrides = parse_overrides(args.set)
        target.resolved(overrides)  # unknown settings fail before anything runs
    except ValueError as err:
        raise SystemExit(f"xrl reproduce: {err}") from None
    out = args.out or str(Path(DEFAULT_OUT) / (args.target + ("-quick" if args.quick else "")))
    run_target(target, out, quick=args.quick, overrides=overrides)
    return 0
