"""Corruption fuzzing (issue 46): each artifact kind damaged at 200 seeded random byte offsets and
truncations (tests/fuzz_artifacts.py, in a subprocess so that a crash by a signal would show);
every load either gives the intact content (a damaged newest checkpoint: the previous one's) or
fails with an error the CLI prints as one line — never a traceback, never a signal."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).parent / "fuzz_artifacts.py"
#: kind -> the artifact kinds its run prints
RUNS = {
    "agent": ["agent .pt", "card JSON"],
    "zip": ["SB3 .zip"],
    "h5": ["StateDataset .h5"],
    "spec": ["spec TOML"],
    "checkpoint": ["checkpoint state.json", "checkpoint tensors.pt", "checkpoint complete.json"],
    "rows": ["reproduce row"],
}


@pytest.mark.slow
@pytest.mark.parametrize("run", list(RUNS))
def test_every_damaged_artifact_loads_the_same_or_is_one_error(run, tmp_path):
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), str(tmp_path), run], capture_output=True, text=True, timeout=900
    )
    assert proc.returncode == 0, f"exit {proc.returncode}; last case: {proc.stderr.strip().splitlines()[-1:]}"
    results = [json.loads(line) for line in proc.stdout.splitlines()]
    assert [r["kind"] for r in results] == RUNS[run]
    for r in results:
        assert r["cases"] == 200 and r["same"] + r["refused"] + r["shorter"] + len(r["bad"]) == 200
        assert r["bad"] == [], (r["kind"], r["bad"][:5])
        if not r["kind"].startswith(("checkpoint", "reproduce")):  # those fall back / compute again instead
            assert r["refused"] > 0  # the damage was seen
