"""The ``device`` setting of ``xrl train agent`` (SB3's own ``device=``) and ``xrl train digr``
(teacher, student and batches), issue 40 point 2.

On this CPU-only machine ``device="auto"`` is the CPU: a run asked for ``"cpu"`` gives the
weights and scores of the run left at the default, bit for bit, and the default gives what the
trainers gave before they took a device (the card's command omits it). The device is not part of
a run's identity: a run started with ``"cpu"`` resumes with ``"auto"``, and so does a run recorded
before the setting existed (``args.json`` without ``"device"``). A bad device is refused in one
line before anything is written.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from test_agents import tiny_args

from xrl.train.agent import AgentArgs, train_agent
from xrl.train.digr import DigrArgs, train_digr


def agent_args(out: Path, **kw) -> AgentArgs:
    return tiny_args(out, **kw)  # test_agents' tiny PPO run


def digr_args(tmp: Path, out: str, **kw) -> DigrArgs:
    settings = dict(teacher="red-fetch-green", data=str(tmp / "data.h5"), out=str(tmp / out), updates=6)
    settings.update(batch_size=4, buffer_size=16, n_envs=2, n_states=6, stride=16, eval_every=3, eval_episodes=1)
    settings.update(final_eval_episodes=2, checkpoint_every=3, progress=False)
    return DigrArgs(**{**settings, **kw})  # type: ignore[arg-type]


def weights(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)["state_dict"]


def same_weights(a: Path, b: Path) -> bool:
    wa, wb = weights(a), weights(b)
    return wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)


def card(path: Path) -> dict:
    return json.loads(path.with_suffix(".json").read_text())


TRAINERS = ("agent", "digr")


def make(trainer: str, tmp: Path, out: str, **kw):
    if trainer == "agent":
        return agent_args(tmp / out, **kw), train_agent
    return digr_args(tmp, out, **kw), train_digr


@pytest.fixture(scope="module")
def default_runs(tmp_path_factory):
    """Each trainer's tiny run at the default device (one DIGR dataset shared by every run)."""
    tmp, runs = tmp_path_factory.mktemp("default"), {}
    for trainer in TRAINERS:
        args, train = make(trainer, tmp, f"{trainer}-default")
        runs[trainer] = train(args)
    return tmp, runs


@pytest.mark.parametrize("trainer", list(TRAINERS))
def test_cpu_gives_the_weights_and_scores_of_the_default(trainer, default_runs):
    tmp, runs = default_runs
    args, train = make(trainer, tmp, f"{trainer}-cpu", device="cpu")
    assert make(trainer, tmp, "x")[0].device == "auto"
    cpu = train(args)
    assert same_weights(runs[trainer], cpu)
    a, b = card(runs[trainer]), card(cpu)
    assert a["score"] == b["score"] and a.get("score_sampled") == b.get("score_sampled")
    assert "--device" not in a["command"] and b["command"].endswith("--device cpu")  # the default is left out
    if trainer == "digr":
        assert a["teacher_score"] == b["teacher_score"] and "device" not in a["digr"]
        latest = sorted((tmp / f"{trainer}-cpu" / "checkpoints").iterdir())[-1]
        saved = torch.load(latest / "tensors.pt", weights_only=True)  # no map_location: CPU tensors
        assert all(t.device.type == "cpu" for t in saved["policy"].values())


@pytest.mark.parametrize("trainer", list(TRAINERS))
def test_a_run_started_on_the_cpu_resumes_with_auto_and_without_a_recorded_device(trainer, default_runs):
    tmp, runs = default_runs
    stop = {"agent": 256, "digr": 3}[trainer]
    args, train = make(trainer, tmp, f"{trainer}-part", device="cpu")
    train(args, stop_at=stop)
    config = tmp / f"{trainer}-part" / "args.json"
    assert json.loads(config.read_text())["device"] == "cpu"
    config.write_text(json.dumps({k: v for k, v in json.loads(config.read_text()).items() if k != "device"}))
    resumed = train(make(trainer, tmp, f"{trainer}-part")[0])  # auto, and the old args.json: not refused
    assert same_weights(runs[trainer], resumed)
    assert card(runs[trainer])["score"] == card(resumed)["score"]


@pytest.mark.parametrize("trainer", list(TRAINERS))
@pytest.mark.parametrize("device", ["gpu", "cuda:7"])
def test_a_bad_device_is_refused_in_one_line_before_anything_is_written(trainer, device, tmp_path):
    if device == "cuda:7" and torch.cuda.device_count() > 7:
        pytest.skip("this machine has a cuda:7")
    args, train = make(trainer, tmp_path, "run", device=device)
    with pytest.raises(ValueError) as error:
        train(args)
    message = str(error.value)
    assert "\n" not in message and repr(device) in message
    assert ("'auto', 'cpu', 'cuda' or 'cuda:N'" in message) if device == "gpu" else ("not available" in message)
    assert not (tmp_path / "run").exists() and not (tmp_path / "data.h5").exists()


@pytest.mark.parametrize("command", ["agent", "digr"])
def test_the_train_commands_take_a_device(command, capsys):
    from xrl.cli import build_parser

    parser = build_parser()
    required = {"agent": ["--env", "red-fetch-green", "--out", "o"], "digr": ["--teacher", "t", "--data", "d"]}[command]
    assert parser.parse_args(["train", command, *required]).device == "auto"
    assert parser.parse_args(["train", command, *required, "--device", "cuda:1"]).device == "cuda:1"
    with pytest.raises(SystemExit):
        parser.parse_args(["train", command, "--help"])
    out = " ".join(capsys.readouterr().out.split())
    assert "--device" in out and "auto|cpu|cuda|cuda:N; auto = CUDA when available" in out
