"""``xrl reproduce --device`` (issue 40): every row computes on the run's device, the device is in
neither the rows' keys nor the settings (rows computed before stay valid), a CUDA device that is
not there is one line before anything is written, and a quick target names the device of every
tensor it makes (the meta default-device test of tests/test_default_device.py). No GPU here:
CUDA itself is not run by these tests."""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

import pytest
import torch
from test_default_device import cold_caches as _cold_caches

from xrl.reproduce import TARGETS, TargetRun, run_target

#: the quickest targets (well under a second each with --quick): RISE maps of collected states,
#: and seeded episodes of the agent and of trivial policies
QUICKEST = ["rise-coverage", "zoo-baselines"]
MODULES = ["digr", "visionmask", "rexl", "fls", "analyses"]


def rows_of(out: Path) -> dict[str, dict]:
    """``{row name: {"key", "value"}}`` of a run's folder (the seconds each took left out)."""
    rows = {}
    for path in sorted((out / "rows").glob("*.json")):
        stored = json.loads(path.read_text())
        rows[stored["row"]] = {"key": stored["key"], "value": stored["value"]}
    return rows


@pytest.fixture
def cold_caches():
    """xrl's caches (RISE masks, kernels...) emptied, so a meta-default run builds them itself
    (the fixture of tests/test_default_device.py, not autouse here)."""
    yield from _cold_caches.__wrapped__()


def test_device_cpu_gives_the_rows_and_keys_of_the_run_without_it(tmp_path, capsys):
    from xrl.cli import main

    name = "rise-coverage"
    plain, flagged = tmp_path / "plain", tmp_path / "flagged"
    assert main(["reproduce", name, "--quick", "--out", str(plain)]) == 0
    assert main(["reproduce", name, "--quick", "--device", "cpu", "--out", str(flagged)]) == 0
    capsys.readouterr()
    rows = rows_of(plain)
    assert rows and rows == rows_of(flagged)
    # the key is the hash of target, settings and row name alone (as core.TargetRun.key documents):
    # the device is not in it, so the rows committed under docs/reproduce/ stay valid
    target = TARGETS.get(name)
    settings = {k: v for k, v in target.resolved(quick=True).items() if k not in target.selectors and v is not None}
    for row, stored in rows.items():
        text = json.dumps({"target": name, "settings": settings, "row": row}, sort_keys=True, default=str)
        assert stored["key"] == hashlib.sha256(text.encode()).hexdigest()[:16]
    for out in (plain, flagged):
        record = json.loads((out / "run.json").read_text())
        assert record["device"] == "cpu" and "device" not in record["settings"]
        assert "--device" not in record["command"]  # auto is the CPU here: the command is the one of before
        assert "\nDevice: cpu\n" in (out / "summary.md").read_text()
    # a run asking for the CPU explicitly reuses every row of a run that did not name a device
    again = run_target(TARGETS.get(name), plain, quick=True, progress=False, device="cpu")
    assert again.computed == [] and sorted(again.reused) == sorted(rows)


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA: the refusal is for machines without")
@pytest.mark.parametrize("device", ["cuda", "cuda:1"])
def test_a_missing_cuda_device_is_one_line_and_writes_nothing(tmp_path, capsys, device):
    from xrl.cli import main

    out = tmp_path / "out"
    assert main(["reproduce", "rise-coverage", "--quick", "--device", device, "--out", str(out)]) == 2
    captured = capsys.readouterr()
    err = captured.err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("xrl reproduce: error: device "), err
    assert "not available" in err[0] and captured.out == ""
    assert not out.exists()
    with pytest.raises(ValueError, match="not available"):  # the library refuses it the same way
        run_target(TARGETS.get("rise-coverage"), out, quick=True, progress=False, device=device)
    assert not out.exists()


def test_a_bad_device_name_is_refused_by_the_parser(tmp_path, capsys):
    from xrl.cli import main

    out = tmp_path / "out"
    with pytest.raises(SystemExit) as exit_:
        main(["reproduce", "rise-coverage", "--quick", "--device", "gpu", "--out", str(out)])
    assert exit_.value.code == 2 and "expected auto, cpu, cuda or cuda:N" in capsys.readouterr().err
    assert not out.exists()


#: quick targets that run whole under a meta default device (``digr-table1`` and
#: ``fls-localization`` draw their figures through ``xrl.viz.overlay.normalize``, which makes its
#: tensor on the default device; ``rexl-deletion`` and ``fls-metrics`` stop in ``xrl.explainers.rexl``
#: and ``xrl.bench``: not this change's files)
META_SLOW = ["digr-attacks", "fls-free-lunch", "visionmask-table1"]
TIMING = re.compile(r"second|time|per_s")


def untimed(value):
    """A row's value without its timings (they differ from run to run)."""
    if isinstance(value, dict):
        return {k: untimed(v) for k, v in value.items() if not TIMING.search(k)}
    if isinstance(value, list):
        return [untimed(v) for v in value]
    return value


@pytest.mark.parametrize("name", QUICKEST + [pytest.param(n, marks=pytest.mark.slow) for n in META_SLOW])
def test_quick_target_under_a_meta_default_device(tmp_path, cold_caches, quick_reproduction, name):
    """With the default device set to ``meta`` around the run and ``device="cpu"``, a tensor made
    without naming its device lands on ``meta`` (no data) and the run fails; it must give the
    rows (and keys) of the plain run instead (timings aside)."""
    _, plain = quick_reproduction(name)  # run_target(..., quick=True), once per test run
    with torch.device("meta"):
        meta = run_target(TARGETS.get(name), tmp_path / "meta", quick=True, progress=False, device="cpu")
    expected = rows_of(plain)
    assert sorted(meta.computed) == sorted(expected) and expected
    got = rows_of(tmp_path / "meta")
    assert {k: v["key"] for k, v in got.items()} == {k: v["key"] for k, v in expected.items()}
    assert {k: untimed(v["value"]) for k, v in got.items()} == {k: untimed(v["value"]) for k, v in expected.items()}


def test_the_run_helpers_put_agents_networks_and_tensors_on_its_device(tmp_path, monkeypatch):
    """``TargetRun.load_agent``, ``load_mask_network`` and ``to_device`` on a run whose device is
    not the CPU (``meta``, the stand-in for a GPU here); the default stays the CPU."""
    import xrl.agents.load
    from xrl.agents.load import ZOO_DIR

    target = TARGETS.get("rise-coverage")
    assert TargetRun(target, tmp_path / "cpu", target.resolved(quick=True)).device == torch.device("cpu")
    run = TargetRun(target, tmp_path / "meta", target.resolved(quick=True), device="meta")
    assert run.device == torch.device("meta")
    assert run.to_device(torch.zeros(2, 3, device="cpu")).device.type == "meta"
    network = run.load_mask_network(Path(ZOO_DIR) / "red-fetch-green-visionmask" / "visionmask.pt", method="visionmask")
    assert {p.device.type for p in network.parameters()} | {b.device.type for b in network.buffers()} == {"meta"}
    # an agent's weights cannot be read onto meta (its fingerprint reads them): see what load_agent is asked
    asked = []
    monkeypatch.setattr(xrl.agents.load, "load_agent", lambda source, **kw: asked.append((source, kw)) or "agent")
    assert run.load_agent("red-fetch-green") == "agent"
    assert asked == [("red-fetch-green", {"device": torch.device("meta")})]


def test_the_reproduce_modules_load_through_the_run():
    """Every agent and mask network the targets load, and every dataset read into a computation,
    goes through the run's device: no direct ``load_agent``/``load_mask_network`` in the modules."""
    root = Path(__file__).resolve().parents[1] / "src" / "xrl" / "reproduce"
    for module in MODULES:
        text = (root / f"{module}.py").read_text()
        direct = re.findall(r"(?<![.\w])(load_agent|load_mask_network)\(", text)
        assert not direct, f"{module}.py calls {direct} directly: use run.load_agent / run.load_mask_network"
        assert 'load_explained(cfg["model"])' not in text
