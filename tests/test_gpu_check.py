"""benchmarks/gpu_check.py, the prepared GPU check (issue 40), run on the CPU against itself with
tiny budgets: every explainer and metric, the four trainers, and its checks pass; a GPU run is
the same command with ``--device cuda`` (docs/explainers.md#speed)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import torch

from xrl.explainers import list_explainers
from xrl.metrics import list_metrics

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

import gpu_check  # noqa: E402


def test_gpu_check_runs_on_the_cpu_against_itself(tmp_path):
    out = tmp_path / "check.json"
    run = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "gpu_check.py"), "--device", "cpu", "--tiny", "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    result = json.loads(out.read_text())
    assert result["device"] == "cpu" and result["failed"] == 0
    rows = result["explainers"]
    assert sorted({r["method"] for r in rows}) == list_explainers()
    for r in rows:  # the CPU against itself: the same maps, the same draws
        assert r["map_relative_difference"] == 0.0 and not r["problems"], r
    seeded = {r["method"] for r in rows if r["seeded"]}
    assert {"rise", "lime", "smoothgrad", "random", "extremal_perturbation"} <= seeded
    assert all(r["same_draws"] for r in rows if r["seeded"])
    with_metrics = [r for r in rows if r["metrics"]]
    assert {r["method"] for r in with_metrics} == set(gpu_check.TINY_METRICS_WITH)
    assert all(set(r["metrics"]) == set(list_metrics()) for r in with_metrics)
    trainers = {r["trainer"]: r for r in result["trainers"]}
    assert set(trainers) == {"ppo_update_2048_steps", "digr_100_updates", "visionmask_epoch", "acer_1000_steps"}
    assert all(not r["problems"] and r["cpu_s"] > 0 and r["device_s"] > 0 for r in trainers.values())
    assert (out.with_suffix(".md")).read_text().count("| ") > len(rows)


def test_the_checks_can_fail():
    """The comparisons the check makes: a relative difference, and draws recorded with the
    device they were made on (a draw on the device would not pass as a CPU draw)."""
    a = torch.tensor([1.0, -2.0, 4.0])
    assert gpu_check.relative(a, a) == 0.0
    assert abs(gpu_check.relative(a, a + torch.tensor([0.0, 0.0, 4e-4])) - 1e-4) < 1e-6  # float32 inputs
    assert gpu_check.relative(torch.tensor([float("nan"), 1.0]), torch.tensor([float("nan"), 1.0])) == 0.0
    with gpu_check.Draws() as draws:
        torch.rand(2, generator=torch.Generator(device="cpu").manual_seed(0), device="cpu")
        torch.ones(2, device="meta").uniform_()
    assert [d for d, _ in draws.log] == ["cpu", "meta"]
