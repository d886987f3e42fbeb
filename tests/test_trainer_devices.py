"""The trainers' ``device`` setting (issue 40; docs/architecture.md#devices): RExL (ACER and SB3),
VisionMask, the Stalder Explainer and the classifier.

On this CPU-only machine ``device="auto"`` is the CPU, so a run asked for ``"cpu"`` must give the
weights of the same run left at the default, bit for bit (and the default must keep giving the
weights the trainers gave before they took a device: the card's command omits it). A bad device
is refused in one line before anything is written; the device is not part of a run's identity,
so a run started with ``device="cpu"`` resumes with ``"auto"``, and a run recorded before the
setting existed (``args.json`` without ``"device"``) resumes too. Checkpoints hold CPU tensors.
With a GPU, a run started there resumes on the CPU (skipped without one).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

import xrl
from xrl.train.run import latest_checkpoint

AGENT = "red-fetch-green"
TRAINERS = ("rexl", "rexl-a2c", "visionmask", "stalder", "classifier")


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    """A tiny untrained classifier (what RExL explains) and a tiny expert dataset of the zoo agent."""
    from xrl.classifiers import ShapesCNN, save_classifier
    from xrl.data.collect import collect

    folder = tmp_path_factory.mktemp("inputs")
    torch.manual_seed(0)
    save_classifier(ShapesCNN(4), folder / "cls.pt", arch="shapes_cnn", size=16, class_names=list("abcd"), card={})
    collect(xrl.load_agent(AGENT), episodes=6, out=folder / "rfg.h5", max_steps=16, sample=True, progress=False)
    return folder


def make(trainer: str, inputs: Path, out: Path, **kw):
    """``(args, train)`` of a tiny run of ``trainer`` with 3 checkpoints (updates or epochs)."""
    if trainer.startswith("rexl"):
        from xrl.train.rexl import RExLArgs, train_rexl

        settings = dict(model=str(inputs / "cls.pt"), grid=4, n_envs=2, n_steps=16, total_steps=3 * 32)
        settings.update(n_images=24, replay_start=32, checkpoint_every=1, progress=False)
        if trainer == "rexl-a2c":
            settings.update(algo="a2c", n_envs=1, total_steps=40)
        return RExLArgs(out=str(out), **{**settings, **kw}), train_rexl
    if trainer in ("visionmask", "stalder"):
        from xrl.train.visionmask import StalderArgs, VisionMaskArgs, train_stalder, train_visionmask

        cls, train = (VisionMaskArgs, train_visionmask) if trainer == "visionmask" else (StalderArgs, train_stalder)
        settings = dict(agent=AGENT, data=str(inputs / "rfg.h5"), epochs=3, batch_size=16, progress=False)
        return cls(out=str(out), **{**settings, **kw}), train
    from xrl.train.classifier import ClassifierArgs, train_classifier

    settings = dict(size=16, n_train=48, n_val=16, batch_size=16, epochs=3, progress=False)
    return ClassifierArgs(out=str(out), **{**settings, **kw}), train_classifier


def state(path: Path) -> dict:
    """The exported weights and the newest checkpoint's tensors of the run that wrote ``path``."""
    out = {"exported": torch.load(path, map_location="cpu", weights_only=True)["state_dict"]}
    latest = latest_checkpoint(path.parent)
    if latest is not None and (latest / "state.pt").exists():
        out["checkpoint"] = torch.load(latest / "state.pt", weights_only=True)  # no map_location: CPU tensors
    return out


def tensors(tree, prefix=""):
    """``{path: tensor}`` of every tensor in a nested checkpoint."""
    if isinstance(tree, torch.Tensor):
        return {prefix: tree}
    items = tree.items() if isinstance(tree, dict) else enumerate(tree) if isinstance(tree, (list, tuple)) else ()
    return {k: v for key, value in items for k, v in tensors(value, f"{prefix}/{key}").items()}


def assert_same(a: dict, b: dict) -> None:
    ta, tb = tensors(a), tensors(b)
    assert ta.keys() == tb.keys()
    for key, value in ta.items():
        assert value.dtype == tb[key].dtype and torch.equal(value, tb[key]), key


@pytest.mark.parametrize("trainer", TRAINERS)
def test_cpu_gives_the_weights_of_the_default_bit_for_bit(trainer, inputs, tmp_path):
    args, train = make(trainer, inputs, tmp_path / "default")
    assert args.device == "auto"
    default = train(args)
    cpu = train(make(trainer, inputs, tmp_path / "cpu", device="cpu")[0])
    a, b = state(default), state(cpu)
    assert_same(a, b)
    assert a["exported"] and all(t.device.type == "cpu" for t in tensors(a).values())
    if "checkpoint" in a:  # the run's own tensors, not only the network's, are checkpointed on the CPU
        assert len(tensors(a["checkpoint"])) > len(a["exported"])
    commands = [json.loads(p.with_suffix(".json").read_text())["command"] for p in (default, cpu)]
    assert "--device" not in commands[0] and "--device cpu" in commands[1]  # the default is left out


@pytest.mark.parametrize("trainer", TRAINERS)
def test_a_run_on_the_cpu_resumes_with_auto_and_an_old_run_without_a_device(trainer, inputs, tmp_path):
    if trainer == "rexl-a2c":  # SB3 resumes from the newest weights and step count, not bit-identically
        args, train = make(trainer, inputs, tmp_path / "part", device="cpu", total_steps=20)
        train(args)
        config = tmp_path / "part" / "args.json"
        config.write_text(json.dumps({k: v for k, v in json.loads(config.read_text()).items() if k != "device"}))
        path = train(make(trainer, inputs, tmp_path / "part", total_steps=40)[0])
        assert json.loads((tmp_path / "part" / "history.json").read_text())["sb3"]["timesteps"] == 40
        assert json.loads(config.read_text())["device"] == "auto" and path.exists()
        return
    args, train = make(trainer, inputs, tmp_path / "straight")
    straight = train(args)
    args, train = make(trainer, inputs, tmp_path / "part", device="cpu")
    train(args, stop_at=1)
    config = tmp_path / "part" / "args.json"
    assert json.loads(config.read_text())["device"] == "cpu"
    train(make(trainer, inputs, tmp_path / "part")[0], stop_at=2)  # cpu -> auto: not refused
    assert json.loads(config.read_text())["device"] == "auto"  # recorded as a new budget is
    # a run recorded before the setting existed
    config.write_text(json.dumps({k: v for k, v in json.loads(config.read_text()).items() if k != "device"}))
    resumed = train(make(trainer, inputs, tmp_path / "part")[0])
    assert_same(state(straight), state(resumed))


@pytest.mark.parametrize("trainer", TRAINERS)
@pytest.mark.parametrize("device", ["gpu", "cuda:7", "tpu"])
def test_a_bad_device_is_refused_in_one_line_before_anything_is_written(trainer, device, inputs, tmp_path):
    if device == "cuda:7" and torch.cuda.device_count() > 7:
        pytest.skip("this machine has a cuda:7")
    args, train = make(trainer, inputs, tmp_path / "run", device=device)
    with pytest.raises(ValueError) as error:
        train(args)
    message = str(error.value)
    assert "\n" not in message and repr(device) in message
    assert ("'auto', 'cpu', 'cuda' or 'cuda:N'" in message) if device != "cuda:7" else ("not available" in message)
    assert not (tmp_path / "run").exists()


@pytest.fixture(scope="module")
def parser():
    from xrl.cli import build_parser

    return build_parser()


@pytest.mark.parametrize("command", ["rexl", "visionmask", "stalder-explainer", "classifier"])
def test_the_train_commands_take_a_device(command, parser, capsys):
    required = {"rexl": ["--model", "m.pt"], "classifier": []}.get(command, ["--agent", "a", "--data", "d.h5"])
    assert parser.parse_args(["train", command, *required]).device == "auto"
    assert parser.parse_args(["train", command, *required, "--device", "cuda:1"]).device == "cuda:1"
    with pytest.raises(SystemExit):
        parser.parse_args(["train", command, "--help"])
    out = " ".join(capsys.readouterr().out.split())
    assert "--device" in out and "auto|cpu|cuda|cuda:N; auto = CUDA when available" in out


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("trainer", TRAINERS)
def test_a_run_on_cuda_starts_from_the_cpus_weights_and_resumes_on_the_cpu(trainer, inputs, tmp_path):
    """The networks are initialised on the CPU and the draws made there, so a CUDA run starts from
    the CPU run's weights and ends near them: a few optimiser steps of at most a few learning
    rates each (float differences only; another initialisation would differ by the weights'
    scale). A run started on CUDA saves CPU tensors and resumes on the CPU."""
    args, train = make(trainer, inputs, tmp_path / "cpu", device="cpu")
    cpu = state(train(args))
    cuda = state(train(make(trainer, inputs, tmp_path / "cuda", device="cuda")[0]))
    ours, theirs = tensors(cpu), tensors(cuda)
    assert ours.keys() == theirs.keys() and all(t.device.type == "cpu" for t in theirs.values())
    for key, value in tensors(cpu["exported"]).items():
        other = tensors(cuda["exported"])[key]
        if value.is_floating_point():
            assert torch.isfinite(other).all() and (value - other).abs().max() < 0.05, key
    if trainer != "rexl-a2c":
        train(make(trainer, inputs, tmp_path / "moved", device="cuda")[0], stop_at=1)
        assert train(make(trainer, inputs, tmp_path / "moved", device="cpu")[0]).exists()
