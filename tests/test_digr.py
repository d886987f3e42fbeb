"""DIGR: the losses against hand computations, PCGrad as defined, the saliency dataset, and a tiny
training run that resumes to the same result, refuses mismatched inputs and stops on NaN."""

import json

import numpy as np
import pytest
import torch
from torch import nn

import xrl
from xrl.data.dataset import StateDataset
from xrl.train import digr
from xrl.train.digr import (
    DigrArgs,
    distillation_loss,
    igr_loss,
    make_saliency_dataset,
    pcgrad,
    policy_saliency,
    train_digr,
)


def linear_model(weight):
    lin = nn.Linear(weight.shape[1], weight.shape[0], bias=False)
    with torch.no_grad():
        lin.weight.copy_(weight)
    return xrl.as_model(nn.Sequential(nn.Flatten(), lin), input_shape=(1, 2, 2))


def test_igr_loss_matches_a_hand_computation():
    w = torch.tensor([[1.0, -2.0, 0.5, 3.0], [0.0, 1.0, 1.0, -1.0], [2.0, 0.0, -1.0, 0.5]])
    x = torch.tensor([0.2, 0.9, 0.4, 0.6])
    model = linear_model(w)
    # by hand: pi = softmax(Wx); d(1/2 sum pi^2)/dx = W^T (diag(pi) - pi pi^T) pi
    wn, xn = w.double().numpy(), x.double().numpy()
    z = wn @ xn
    pi = np.exp(z - z.max()) / np.exp(z - z.max()).sum()
    grad = wn.T @ (pi * pi - pi * (pi @ pi))
    mg = np.abs(grad) / np.abs(grad).max()
    teacher = torch.tensor([[[0.1, 2.0], [1.0, 0.16]]])  # normalised: 0.05, 1, 0.5, 0.08
    expected = (mg[0] + mg[3]) / 4  # pixels (0,0) and (1,1) are at or below the threshold 0.1
    loss = igr_loss(model, x.view(1, 1, 2, 2), teacher, threshold=0.1)
    assert loss.item() == pytest.approx(expected, rel=1e-5)
    assert torch.allclose(policy_saliency(model, x.view(1, 1, 2, 2)).double().flatten(), torch.as_tensor(mg), atol=1e-6)


def test_igr_loss_is_differentiable_in_the_weights_and_zero_when_nothing_is_penalised():
    model = linear_model(torch.randn(3, 4, generator=torch.Generator().manual_seed(0)))
    x = torch.rand(5, 1, 2, 2, generator=torch.Generator().manual_seed(1))
    loss = igr_loss(model, x, torch.ones(5, 2, 2), threshold=0.1)
    assert loss.item() == 0
    loss = igr_loss(model, x, torch.zeros(5, 2, 2), threshold=0.1)  # flat teacher maps: all penalised
    (grad,) = torch.autograd.grad(loss, [next(model.parameters())])
    assert grad.abs().sum() > 0


def test_distillation_loss_is_the_kl_divergence():
    teacher = linear_model(torch.randn(3, 4, generator=torch.Generator().manual_seed(0)))
    student = linear_model(torch.randn(3, 4, generator=torch.Generator().manual_seed(1)))
    x = torch.rand(4, 1, 2, 2, generator=torch.Generator().manual_seed(2))
    p, q = teacher.probs(x), student.probs(x)
    expected = (p * (p.log() - q.log())).sum(-1).mean()
    assert distillation_loss(teacher, student, x).item() == pytest.approx(expected.item(), rel=1e-5)
    assert distillation_loss(teacher, teacher, x).item() == pytest.approx(0, abs=1e-7)


def test_pcgrad_projects_conflicting_gradients_and_keeps_agreeing_ones():
    g1, g2 = torch.tensor([1.0, 0.0]), torch.tensor([-1.0, 1.0])
    # g1 - (g1.g2)/|g2|^2 g2 = (0.5, 0.5); g2 - (g2.g1)/|g1|^2 g1 = (0, 1)
    assert torch.allclose(pcgrad([g1, g2]), torch.tensor([0.5, 1.5]))
    agree = [torch.tensor([1.0, 2.0]), torch.tensor([0.5, 0.1])]
    assert torch.equal(pcgrad(agree), agree[0] + agree[1])
    # each projected gradient no longer conflicts with the other task
    a, b = torch.randn(50, generator=torch.Generator().manual_seed(0)), None
    b = -a + 0.1 * torch.randn(50, generator=torch.Generator().manual_seed(1))
    pa = a - (a @ b) / (b @ b) * b
    assert abs(float(pa @ b)) < 1e-4


def tiny_args(tmp_path, name, **kw):
    settings = dict(
        teacher="red-fetch-green",
        data=str(tmp_path / "digr-data.h5"),
        out=str(tmp_path / name),
        updates=6,
        batch_size=4,
        buffer_size=16,
        n_envs=2,
        n_states=6,
        stride=16,
        eval_every=3,
        eval_episodes=1,
        final_eval_episodes=2,
        checkpoint_every=3,
        progress=False,
    )
    settings.update(kw)
    return DigrArgs(**settings)


def test_saliency_dataset_holds_the_teachers_kl_maps(tmp_path):
    teacher = xrl.load_agent("red-fetch-green")
    out = make_saliency_dataset(teacher, tmp_path / "d.h5", n_states=5, stride=16, progress=False)
    with StateDataset.open(out) as ds:
        assert len(ds) >= 5 and ds.collect_settings["sample"] is True
        assert ds.saliency_settings("digr") == {"radius": 4.0, "stride": 16, "score": "kl"}
        rows = [0, len(ds) - 1]
        expected = xrl.get_explainer("greydanus", teacher, radius=4.0, stride=16, score="kl").explain(ds.states(rows))
        assert np.allclose(ds.saliency("digr", rows), expected.numpy(), atol=1e-7)
    assert not (tmp_path / "d.h5.maps.partial").exists()
    with pytest.raises(ValueError, match="choose another out"):
        make_saliency_dataset(teacher, out, n_states=5, stride=8, progress=False)


def test_saliency_dataset_resumes_after_an_interruption(tmp_path, monkeypatch):
    teacher = xrl.load_agent("red-fetch-green")
    from xrl.data.collect import collect

    collect(teacher, episodes=2, out=tmp_path / "d.h5", seed=0, sample=True, progress=False)  # killed here
    real, calls = digr._chunk_maps, []

    def dies_after_one(*a):
        if calls:
            raise KeyboardInterrupt
        calls.append(1)
        return real(*a)

    monkeypatch.setattr(digr, "_chunk_maps", dies_after_one)
    with pytest.raises(KeyboardInterrupt):  # killed after the first chunk of maps
        make_saliency_dataset(teacher, tmp_path / "d.h5", n_states=12, stride=16, chunk=4, progress=False)
    assert len(list((tmp_path / "d.h5.maps.partial").glob("*.npy"))) == 1
    monkeypatch.setattr(digr, "_chunk_maps", real)
    out = make_saliency_dataset(teacher, tmp_path / "d.h5", n_states=12, stride=16, chunk=4, progress=False)
    whole = make_saliency_dataset(teacher, tmp_path / "whole.h5", n_states=12, stride=16, chunk=4, progress=False)
    with StateDataset.open(out) as a, StateDataset.open(whole) as b:
        n = min(len(a), len(b))  # episode i is seeded seed + i in both: the same first rows
        assert n >= 12 and np.array_equal(a.saliency("digr")[:n], b.saliency("digr")[:n])


def test_a_resumed_digr_run_equals_an_uninterrupted_one(tmp_path, capsys):
    whole = train_digr(tiny_args(tmp_path, "whole"))
    stopped = train_digr(tiny_args(tmp_path, "split", snapshots=True), stop_at=3)
    assert stopped.parent.name == "checkpoints" and not (tmp_path / "split" / "agent.pt").exists()
    assert not list((tmp_path / "split").rglob("*.pkl"))  # no pickle in the run folder
    resumed = train_digr(tiny_args(tmp_path, "split", snapshots=True))
    assert "new episodes" not in capsys.readouterr().err  # every env's episode was replayed, none restarted
    a = torch.load(whole, weights_only=True)["state_dict"]
    b = torch.load(resumed, weights_only=True)["state_dict"]
    assert all(torch.equal(a[k], b[k]) for k in a)  # snapshots do not change the run
    snaps = sorted((tmp_path / "split" / "snapshots").glob("*.pt"))
    assert [p.name for p in snaps] == ["agent-000003.pt", "agent-000006.pt"]
    last = torch.load(snaps[-1], weights_only=True)["state_dict"]
    assert all(torch.equal(a[k], last[k]) for k in a)
    assert json.loads(snaps[0].with_suffix(".json").read_text())["updates"] == 3
    card = json.loads(whole.with_suffix(".json").read_text())
    assert card["arch"] == "grid_cnn" and card["updates"] == 6 and "teacher_score" in card
    history = json.loads((tmp_path / "whole" / "history.json").read_text())
    assert [e["update"] for e in history["log"]] == [3, 6] and "teacher" in history
    student = xrl.load_agent(whole)  # an ordinary xrl agent: explainers take it
    assert student.action_names == xrl.load_agent("red-fetch-green").action_names


def test_training_changes_the_student_and_igr_lowers_its_loss(tmp_path):
    args = tiny_args(tmp_path, "learn", updates=30, checkpoint_every=30, eval_every=30, learning_rate=3e-3)
    path = train_digr(args)
    teacher = xrl.load_agent("red-fetch-green")
    student = xrl.load_agent(path)
    with StateDataset.open(args.data) as ds:
        x, maps = ds.states(), torch.as_tensor(ds.saliency("digr"))
    torch.manual_seed(0)
    fresh = xrl.load_agent(path)
    init = xrl.agents.load.build_policy("grid_cnn", teacher.input_shape, teacher.n_actions)
    fresh.net.policy.load_state_dict(init.state_dict())
    assert igr_loss(student, x, maps, 0.1).item() < igr_loss(fresh, x, maps, 0.1).item()


def test_nan_loss_stops_training_and_keeps_the_last_good_checkpoint(tmp_path, monkeypatch):
    real, calls = digr.distillation_loss, {"n": 0}

    def poisoned(*a):
        calls["n"] += 1
        return real(*a) * (float("nan") if calls["n"] == 5 else 1.0)

    monkeypatch.setattr(digr, "distillation_loss", poisoned)
    with pytest.raises(FloatingPointError, match=r"update 4.*last good checkpoint \(update 3\)"):
        train_digr(tiny_args(tmp_path, "nan"))
    from xrl.train.run import latest_checkpoint

    assert json.loads((latest_checkpoint(tmp_path / "nan") / "state.json").read_text())["update"] == 3


def test_mismatched_inputs_are_refused(tmp_path):
    with pytest.raises(ValueError, match="differs from the teacher's 'grid_cnn'"):
        train_digr(tiny_args(tmp_path, "arch", arch="nature_cnn"))
    # a dataset made by another agent (an untrained one of the same env)
    from xrl.agents.load import build_policy, model_from_policy

    other = model_from_policy(
        build_policy("grid_cnn", (3, 64, 64), 4),
        info={"env": {"name": "red-fetch-green", "settings": {}}, "source": "untrained"},
    )
    data = make_saliency_dataset(other, tmp_path / "other.h5", n_states=3, stride=16, progress=False)
    with pytest.raises(ValueError, match="made by another agent"):
        train_digr(tiny_args(tmp_path, "other", data=str(data)))
    train_digr(tiny_args(tmp_path, "settings", updates=3))
    with pytest.raises(ValueError, match="other settings"):
        train_digr(tiny_args(tmp_path, "settings", alpha=1.0))


def test_xrl_train_digr_command(tmp_path, capsys):
    from xrl.cli import main

    args = tiny_args(tmp_path, "cli", updates=3)
    flags = ["train", "digr", "--teacher", args.teacher, "--data", args.data, "--out", args.out]
    for name in (
        "updates",
        "batch_size",
        "buffer_size",
        "n_envs",
        "n_states",
        "stride",
        "eval_every",
        "eval_episodes",
        "final_eval_episodes",
        "checkpoint_every",
    ):
        flags += [f"--{name.replace('_', '-')}", str(getattr(args, name))]
    assert main(flags + ["--use-pcgrad", "false"]) == 0
    assert "student:" in capsys.readouterr().out
    card = json.loads((tmp_path / "cli" / "agent.json").read_text())
    assert card["digr"]["use_pcgrad"] is False and card["command"].startswith(
        "xrl train digr --teacher red-fetch-green"
    )
    with pytest.raises(SystemExit):  # argparse: "expected true or false"
        main(flags + ["--use-pcgrad", "maybe"])
    assert "expected true or false, got 'maybe'" in capsys.readouterr().err


class _Payload:
    """Unpickling this creates a file (a harmless stand-in for code an attacker would run)."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        from pathlib import Path

        return (Path.touch, (self.marker,))


@pytest.mark.slow
def test_an_old_pickle_checkpoint_runs_nothing_unless_trusted(tmp_path):
    """checkpoint.pkl (what DIGR wrote before run.py) is refused without trust_pickle, so a crafted
    one runs nothing; a genuine one resumes when trusted and its next checkpoint has no pickle."""
    import dataclasses
    import gzip
    import pickle

    import cloudpickle

    args = tiny_args(tmp_path, "old")
    settings = {k: v for k, v in dataclasses.asdict(args).items() if k != "trust_pickle"}
    run = tmp_path / "old"
    run.mkdir()
    (run / "args.json").write_text(json.dumps(settings))
    marker = tmp_path / "pwned"
    (run / "checkpoint.pkl").write_bytes(gzip.compress(pickle.dumps(_Payload(marker))))
    with pytest.raises(ValueError, match=r"old pickle format \(checkpoint.pkl\).*--trust-pickle"):
        train_digr(args)
    assert not marker.exists() and (run / "checkpoint.pkl").exists()
    # a genuine old checkpoint, as the old _save wrote it (the whole state, cloudpickled)
    teacher = xrl.load_agent("red-fetch-green")
    state = digr._fresh(args, teacher, "grid_cnn")
    del state["episodes"]
    blob = {
        **state,
        "optimiser": state["optimiser"].state_dict(),
        "torch_gen": state["torch_gen"].get_state(),
        "rng": state["rng"].bit_generator.state,
    }
    (run / "checkpoint.pkl").write_bytes(gzip.compress(cloudpickle.dumps(blob)))
    path = train_digr(dataclasses.replace(args, trust_pickle=True))
    assert path.exists() and not list(run.rglob("*.pkl"))
    from xrl.train.run import latest_checkpoint

    assert json.loads((latest_checkpoint(run) / "state.json").read_text())["update"] == 6
