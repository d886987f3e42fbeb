"""``xrl reproduce digr-highway`` (DIGR on highway-fast, the stand-in for CARLA): the quick run's
student is a DIGR student of the zoo highway agent, its tables are what the rows give when
recomputed here, and the temperature of the distillation is the KL of Rusu et al.'s policy
distillation computed by hand."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

pytest.importorskip("highway_env")

from xrl.reproduce import TARGETS  # noqa: E402


def test_distillation_temperature_against_a_hand_computed_kl():
    from xrl.agents.model import as_model
    from xrl.train.digr import distillation_loss

    torch.manual_seed(0)
    teacher_net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(6, 5))
    student_net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(6, 5))
    teacher, student = as_model(teacher_net, input_shape=(1, 2, 3)), as_model(student_net, input_shape=(1, 2, 3))
    x = torch.randn(7, 1, 2, 3)
    q = teacher_net(x).detach().double().numpy()
    s = student_net(x).detach().double().numpy()
    for tau in (None, 1.0, 0.1):
        z = q / (tau or 1.0)
        p = np.exp(z - z.max(1, keepdims=True))
        p /= p.sum(1, keepdims=True)
        log_q = s - s.max(1, keepdims=True)
        log_q -= np.log(np.exp(log_q).sum(1, keepdims=True))
        expected = (p * (np.log(p) - log_q)).sum(1).mean()
        assert distillation_loss(teacher, student, x, tau).item() == pytest.approx(expected, rel=1e-5)
    assert distillation_loss(teacher, student, x, 0.1).item() != pytest.approx(
        distillation_loss(teacher, student, x).item(), rel=1e-3
    )


@pytest.mark.slow
def test_digr_highway_quick(quick_reproduction):
    import xrl
    from xrl.reproduce.core import paired_interval

    target = TARGETS.get("digr-highway")
    run, out = quick_reproduction("digr-highway")  # the quick run test_reproduce.py checks too (tests/conftest.py)
    students = list(out.glob("student-*/agent.pt"))
    assert len(students) == 1
    card = json.loads(students[0].with_suffix(".json").read_text())
    assert card["digr"]["teacher"] == "highway-fast" and card["digr"]["alpha"] == 1.0
    assert card["digr"]["temperature"] == 0.1 and card["env"]["name"] == "highway-fast"
    assert card["updates"] == target.quick["updates"]
    # the behaviour table from the rows' per-episode returns, recomputed here
    rows = {json.loads(p.read_text())["row"]: json.loads(p.read_text())["value"] for p in (out / "rows").glob("*.json")}
    teacher, student = np.asarray(rows["score-teacher"]["returns"]), np.asarray(rows["score-DIGR"]["returns"])
    table = {r["agent"]: r for r in json.loads((out / "behaviour.json").read_text())["rows"]}
    assert table["DIGR"]["mean return"] == pytest.approx(student.mean())
    assert table["DIGR"]["return / teacher"] == pytest.approx(student.mean() / teacher.mean())
    assert table["DIGR"]["return minus teacher (95% CI)"].strip("*").startswith(f"{(student - teacher).mean():+.3f}")
    assert paired_interval(student, teacher)["mean"] == pytest.approx((student - teacher).mean())
    # a student's greedy episode replayed by hand from the same seed gives the row's return
    from xrl.envs import make_env

    model = xrl.load_agent(str(students[0]))
    env = make_env("highway-fast")
    obs, _ = env.reset(seed=10_000)
    total, done = 0.0, False
    while not done:
        obs, reward, terminated, truncated, _ = env.step(int(model.act(np.asarray(obs)[None])[0]))
        total, done = total + float(reward), terminated or truncated
    assert student[0] == pytest.approx(total, rel=1e-5)
    # Table 1 on the car masks: one row per method, the student's VG among them
    table1 = json.loads((out / "table1.json").read_text())
    assert {(r["agent"], r["method"]) for r in table1["rows"]} >= {
        ("DIGR", "VG"),
        ("teacher", "VG"),
        ("teacher", "GB Perturbation"),
    }
    assert "auc_cars" in table1["columns"]
    # the agreement: the student's greedy action against the teacher's stored one, recomputed here
    from xrl.data.dataset import StateDataset

    with StateDataset.open(out / "data" / "teacher-cars.h5") as ds:
        n = target.quick["n_states"]
        picked = np.sort(np.random.default_rng(0).choice(len(ds), size=min(n, len(ds)), replace=False))
        states, actions = ds.states(picked), np.asarray(ds.actions[picked])
    with torch.no_grad():
        same = (model(states).argmax(-1).numpy() == actions).mean()
    agreement = json.loads((out / "agreement.json").read_text())["rows"][0]
    assert agreement["takes the teacher's action"] == pytest.approx(same)
    # resumes: nothing is computed again, the student is not retrained
    again = run.again()  # run_target(target, out, quick=True) on the same folder
    assert again.computed == [] and sorted(again.reused) == sorted(run.computed)
