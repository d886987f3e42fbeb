"""DIGR (Xing et al. 2022, arXiv:2205.08685): Table 1 with Fig. 3, 9 and the cost claim
(``digr-table1``), and Fig. 8, return under attack (``digr-attacks``).

Agents: the zoo teacher ``red-fetch-green``, the DIGR student ``red-fetch-green-digr-a1`` (α = 1,
update 18k, chosen on validation data: ``docs/digr.md``) and the distillation-only student
``red-fetch-green-digr-kl`` (``--igr false``). States: the teacher's seeded greedy episodes,
collected twice, with object labels (the drawn agent and green ball important) and with the
default cell labels; the rows drawn with ``numpy.random.default_rng(0)`` as ``digr_evidence.py``
did before it moved here.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from xrl.reproduce.core import TargetRun, format_interval, nanmean, paired_interval

# Table 1 of the paper: important, unimportant, AUC
PAPER_TABLE1 = {
    "VG": (56.04, 278.10, 0.840),
    "Guided BP": (82.84, 35.67, 0.993),
    "Grad-CAM": (43.12, 364.97, 0.686),
    "SmoothGrad": (83.05, 84.76, 0.991),
    "Integrated G": (67.79, 232.09, 0.900),
    "GB Perturbation": (86.11, 77.81, 0.989),
    "SARFA": (58.40, 42.17, 0.895),
    "DIGR VG": (72.52, 0.00, 0.997),
}


def teacher_methods(s: dict) -> dict:
    from xrl.train.digr import DIGR_TARGET

    return {
        "VG": ("gradient", {}, DIGR_TARGET),
        "VG (action)": ("gradient", {}, None),
        "Guided BP": ("guided_backprop", {}, None),
        "Grad-CAM": ("grad_cam", {}, None),
        "SmoothGrad": (
            "smoothgrad",
            {"base": "guided_backprop", "n_samples": s["smoothgrad_samples"], "sigma": 0.15},
            None,
        ),
        "Integrated G": ("integrated_gradients", {"n_steps": s["ig_steps"]}, None),
        "GB Perturbation": ("greydanus", {"score": "kl", "radius": s["radius"], "stride": s["stride"]}, None),
        "SARFA": ("sarfa", {"radius": s["radius"], "stride": s["stride"]}, None),
    }


def student_methods(s: dict) -> dict:
    from xrl.train.digr import DIGR_TARGET

    return {"VG": ("gradient", {}, DIGR_TARGET), "VG (action)": ("gradient", {}, None)}


def _agents(run: TargetRun) -> dict:
    """The teacher and the students of the run's settings, on the run's device."""
    s = run.settings
    agents = {"teacher": run.load_agent(s["teacher"]), "DIGR": run.load_agent(s["student"])}
    if s.get("distilled"):
        agents["distillation only"] = run.load_agent(s["distilled"])
    return agents


#: label names whose env setting is not the name itself (highway-fast: ``labels=True``, car pixels)
LABEL_SETTINGS = {"cars": True}


def _states(run: TargetRun, teacher, labels: str, s: dict):
    """Rows, states, actions, labels and frames of the labelled test states (``labels``: objects,
    cells on Red-Fetch-Green; cars on highway-fast); states, actions and labels on the run's device."""
    from xrl.data.dataset import StateDataset

    path = run.collect(
        f"teacher-{labels}",
        teacher,
        episodes=s["episodes"],
        seed=s["collect_seed"],
        env_settings={"labels": LABEL_SETTINGS.get(labels, labels)},
        max_steps=s["max_steps"],
    )
    with StateDataset.open(path) as ds:
        if ds.labels() is None:
            raise ValueError(f"{path} has no ground-truth labels; DIGR's Table 1 needs them")
        rows = np.sort(np.random.default_rng(0).choice(len(ds), size=min(s["n_states"], len(ds)), replace=False))
        return (
            rows,
            run.to_device(ds.states(rows)),
            run.to_device(torch.as_tensor(ds.actions[rows], device="cpu")),
            run.to_device(torch.as_tensor(ds.labels(rows), device="cpu")),
            ds.frames(rows),
        )


def _maps(model, method, settings, target, states, actions):
    """The maps of one method on ``states`` in one batch, with its explainer
    (:func:`xrl.pipeline.explain`); ``target``: the method's own (DIGR's), else the actions."""
    from xrl.pipeline import explain

    return explain(model, states, {method: settings}, target if target is not None else actions, batch_size=len(states))


def _localization_row(model, method, settings, target, states, actions, label_maps, time_repeats: int) -> dict:
    """One row of Table 1: the method's maps scored by ``localization`` against ``label_maps`` and
    its seconds per map (``time_per_map`` on the first 8 states), through :mod:`xrl.pipeline`."""
    from xrl.pipeline import score

    maps = _maps(model, method, settings, target, states, actions)
    located = score(model, states, maps, ["localization"], labels=label_maps, batch_size=len(states))
    n = min(8, len(states))
    timed = score(
        model,
        states[:n],
        {method: maps[method][:n]},
        {"time_per_map": {"repeats": time_repeats}},
        target if target is not None else actions[:n],
        explainers=maps.explainers,
        batch_size=n,
    )
    values = located.values[method]
    return {
        **{out: values[f"localization.{out}"] for out in ("auc", "important", "unimportant")},
        "seconds_per_map": timed.values[method]["time_per_map"][0],
    }


#: the environment of the paper's Table 1 (its Fig. 8 adds CARLA; it has neither on Breakout)
PAPER_ENV = "red-fetch-green"


def _other_teacher(run: TargetRun, agents: dict) -> bool:
    """True when the teacher does not play the paper's Red-Fetch-Green: the summary then names
    the agents given instead of the target's zoo Red-Fetch-Green text."""
    env = agents["teacher"].info["env"]["name"]
    if env == PAPER_ENV:
        return False
    s = run.settings
    names = ", ".join(
        f"{a} `{s[k]}`"
        for a, k in (("teacher", "teacher"), ("DIGR student", "student"), ("distillation-only student", "distilled"))
        if s.get(k)
    )
    run.reruns = f"on {env} (not the paper's Red-Fetch-Green): the {names}; " + {
        "digr-table1": "the teacher's 7 saliency methods and the students' vanilla gradient on labelled states, "
        "and the agents' greedy return over the same seeded episodes",
        "digr-attacks": "the agents' greedy return on the same seeded episodes under each attack and eps",
    }.get(run.target.name, "as the target describes")
    return True


def run_table1(run: TargetRun) -> None:
    agents = _agents(run)
    other = _other_teacher(run, agents)
    if other:
        run.note(
            f"The paper's Table 1 is on Red-Fetch-Green; this teacher plays "
            f"{agents['teacher'].info['env']['name']}, so no paper numbers are printed beside ours."
        )
    table1(run, agents, run.settings, paper={} if other else PAPER_TABLE1)


def table1(run: TargetRun, agents: dict, s: dict, *, paper: dict) -> None:
    """Table 1, Fig. 3, Fig. 9 and the agents' returns for ``agents`` (``teacher`` first, then
    students) on the teacher's labelled states; ``paper``: the paper's rows to print beside ours
    (empty when the paper has none for this task)."""
    table, per_state, first = _table1_rows(run, agents, s)
    _write_table1(run, table, per_state, s, paper, n_states=len(first[0]))
    _fig3(run, agents, s, first)
    _fig9(run, agents)
    _behaviour(run, agents, s)


def _table1_rows(run: TargetRun, agents: dict, s: dict) -> tuple[dict, dict, tuple]:
    """``(table, per_state, first)``: a row per (agent, method) with its mean AUC per labelling
    (and, for the first, important, unimportant, seconds per map), each state's AUC per row and
    labelling, and the first labelling's ``(rows, states, actions, frames)``."""
    per_state: dict[str, dict[str, list]] = {}
    table: dict[tuple[str, str], dict] = {}
    first = None
    for labels in s["labels"]:
        rows, states, actions, label_maps, frames = _states(run, agents["teacher"], labels, s)
        if first is None:
            first = (rows, states, actions, frames)
        for agent, model in agents.items():
            methods = teacher_methods(s) if agent == "teacher" else student_methods(s)
            for name, (method, settings, target) in methods.items():

                def compute(model=model, method=method, settings=settings, target=target):
                    return _localization_row(
                        model, method, settings, target, states, actions, label_maps, s["time_repeats"]
                    )

                value = run.row(f"table1-{labels}-{agent}-{name}", compute)
                per_state.setdefault(f"{agent}: {name}", {})[labels] = value["auc"]
                entry = table.setdefault((agent, name), {"agent": agent, "method": name})
                entry[f"auc_{labels}"] = nanmean(value["auc"])
                if labels == s["labels"][0]:
                    entry["important"] = nanmean(value["important"])
                    entry["unimportant"] = nanmean(value["unimportant"])
                    entry["seconds_per_map"] = value["seconds_per_map"]
    assert first is not None  # s["labels"] is never empty
    return table, per_state, first


def _write_table1(run: TargetRun, table: dict, per_state: dict, s: dict, paper: dict, *, n_states: int) -> None:
    """``table1``: the rows, the paper's beside them, the DIGR student's VG AUC minus each row's
    (paired intervals over the same states) and the perturbation/DIGR time ratio."""
    for (agent, name), entry in table.items():
        key = "DIGR VG" if agent == "DIGR" and name == "VG" else name if agent == "teacher" else None
        if key in paper and (agent != "teacher" or name != "VG (action)"):
            entry["paper important"], entry["paper unimportant"], entry["paper AUC"] = paper[key]
    # paired intervals: the DIGR student's VG AUC minus every other row's, on the same states
    primary = s["labels"][0]
    paired = {
        k: paired_interval(per_state["DIGR: VG"][primary], v[primary]) for k, v in per_state.items() if k != "DIGR: VG"
    }
    for (agent, name), entry in table.items():
        entry["DIGR VG AUC minus this (95% CI)"] = format_interval(paired.get(f"{agent}: {name}"))
    speed = {f"{a}: {n}": e["seconds_per_map"] for (a, n), e in table.items()}
    ratio = speed["teacher: GB Perturbation"] / speed["DIGR: VG"]
    columns = (
        ["agent", "method", "important", "unimportant"]
        + [f"auc_{lab}" for lab in s["labels"]]
        + [
            *(["paper important", "paper unimportant", "paper AUC"] if paper else []),
            "DIGR VG AUC minus this (95% CI)",
            "seconds_per_map",
        ]
    )
    run.table(
        "table1",
        list(table.values()),
        columns,
        title=f"DIGR Table 1 on {n_states} states of {s['episodes']} seeded teacher episodes "
        f"(important/unimportant: sums of min-max-normalised maps under {primary} labels; AUC: ROC AUC "
        "against the ground truth)",
        notes=[
            f"Perturbation map / DIGR vanilla gradient time per map: {ratio:.0f}x (same run, one thread).",
            f"Paired intervals: mean over the same states of the DIGR student's VG AUC minus each row's "
            f"({primary} labels), 95% percentile bootstrap; bold = excludes 0.",
        ],
        extra={"paired_auc_vs_digr_vg": paired, "per_state_auc": per_state, "perturbation_over_digr_time": ratio},
    )


def _fig3(run: TargetRun, agents: dict, s: dict, first: tuple) -> None:
    """Fig. 3: states with the teacher's VG, its perturbation map and the DIGR student's VG (and
    the distillation-only student's, the ablation, when given)."""
    from xrl.viz.overlay import explanation_grid

    rows, states, actions, frames = first
    pick = list(range(0, len(rows), max(1, len(rows) // 4)))[:4]
    figure_maps = {}
    panels = [
        ("teacher VG", "teacher", teacher_methods(s)["VG"]),
        ("GB perturbation", "teacher", teacher_methods(s)["GB Perturbation"]),
        ("DIGR VG", "DIGR", student_methods(s)["VG"]),
    ]
    if "distillation only" in agents:
        panels.append(("distillation-only VG", "distillation only", student_methods(s)["VG"]))
    for label, agent, (method, settings, target) in panels:
        figure_maps[label] = _maps(agents[agent], method, settings, target, states[pick], actions[pick])[method].cpu()
    explanation_grid(
        frames[pick],
        figure_maps,
        run.figure("fig3"),
        actions=actions[pick].cpu().numpy(),
        action_names=agents["teacher"].action_names,
        title="teacher vanilla gradient, perturbation, DIGR student"
        + (", distillation-only student" if "distillation only" in agents else ""),
    )


def _fig9(run: TargetRun, agents: dict) -> None:
    """Fig. 9: the students' return during training (their history.json) against the teacher's."""
    from xrl.viz.overlay import line_panels

    curves = {}
    for agent in ("DIGR", "distillation only"):
        if agent not in agents:
            continue
        source = Path(agents[agent].info["source"])
        for path in (source.parent / "history.json", source.parent.parent / "history.json"):
            if path.exists():
                h = json.loads(path.read_text())
                log = [e for e in h["log"] if "student" in e]
                curves[agent] = (
                    [e["update"] for e in log],
                    [e["student"]["mean_return"] for e in log],
                    [e["student"]["std_return"] for e in log],
                )
                t = h["teacher"]["mean_return"]
                curves.setdefault("teacher", ([log[0]["update"], log[-1]["update"]], [t, t], None))  # type: ignore[arg-type]
                break
    if curves:
        line_panels({"return during DIGR training": curves}, run.figure("fig9"), xlabel="update", ylabel="return")


def _behaviour(run: TargetRun, agents: dict, s: dict) -> None:
    """``behaviour``: every agent on the same seeded greedy episodes (the cards' seeds 10000 + i)."""
    from xrl.train.agent import evaluate

    env = agents["teacher"].info["env"]
    returns = {}
    for agent, model in agents.items():
        returns[agent] = run.row(
            f"score-{agent}",
            lambda model=model: evaluate(
                model,
                env["name"],
                env.get("settings") or {},
                episodes=s["score_episodes"],
                seed=10_000,
                progress=False,
                batch=20,
                per_episode=True,
            ),
        )
    base = np.asarray(returns["teacher"]["returns"])
    score_rows, paired_returns = [], {}
    for agent, r in returns.items():
        won = np.asarray(r["returns"]) > 0
        row = {
            "agent": agent,
            "mean return": r["mean_return"],
            "std return": r["std_return"],
            "return / teacher": r["mean_return"] / returns["teacher"]["mean_return"],
            "success": float(won.mean()),
        }
        if agent != "teacher":
            paired_returns[agent] = paired_interval(r["returns"], base)
            row["return minus teacher (95% CI)"] = format_interval(paired_returns[agent])
            row["success minus teacher (95% CI)"] = format_interval(
                paired_interval(won.astype(float), (base > 0).astype(float))
            )
        score_rows.append(row)
    run.table(
        "behaviour",
        score_rows,
        [
            "agent",
            "mean return",
            "std return",
            "return / teacher",
            "return minus teacher (95% CI)",
            "success",
            "success minus teacher (95% CI)",
        ],
        title=f"Greedy return over the same {s['score_episodes']} seeded episodes (seeds 10000+) for every "
        "agent (the paper's Fig. 9: the student's performance matches the teacher's; success = "
        "positive return)",
        notes=["Paired intervals over the same seeded episodes, 95% percentile bootstrap; bold = excludes 0."],
        extra={"returns": {a: r["returns"] for a, r in returns.items()}, "paired_return_vs_teacher": paired_returns},
    )


def half_return_eps(curve: list[dict]) -> float | None:
    """The smallest eps where the return is at most half the clean return (None if never)."""
    clean = curve[0]["mean_return"]
    for r in curve[1:]:
        if r["mean_return"] <= clean / 2:
            return r["eps"]
    return None


def run_attacks(run: TargetRun) -> None:
    s = run.settings
    agents = _agents(run)
    _other_teacher(run, agents)
    attacks(run, agents, s, max_steps=s["max_steps"])


def attacks(
    run: TargetRun, agents: dict, s: dict, *, env_overrides: dict | None = None, max_steps: int | None = None
) -> None:
    """Fig. 8 for ``agents`` (``teacher`` first): every attack of ``s["attacks"]`` at every eps of
    ``s["eps"]`` on ``s["episodes"]`` seeded episodes; ``env_overrides``: env settings laid over
    the agents'; ``max_steps``: every episode ends after this many steps (the quick runs, on any
    env)."""
    from xrl.viz.overlay import attack_curves

    results = _returns_under_attack(run, agents, s, env_overrides=env_overrides, max_steps=max_steps)
    attack_curves(results, run.figure("fig8"))
    _fig8_tables(run, agents, s, results)


def _returns_under_attack(
    run: TargetRun, agents: dict, s: dict, *, env_overrides: dict | None, max_steps: int | None
) -> dict[str, dict[str, list[dict]]]:
    """``results[agent][attack]``: the return at every eps (0 first: the clean episodes), one row each."""
    from xrl.attacks import get_attack
    from xrl.train.agent import evaluate

    eps = sorted({0.0, *map(float, s["eps"])})
    results: dict[str, dict[str, list[dict]]] = {}
    for agent, model in agents.items():
        env = dict(model.info["env"])
        if env_overrides:
            env["settings"] = {**(env.get("settings") or {}), **env_overrides}
        clean = run.row(
            f"clean-{agent}",
            lambda model=model, env=env: evaluate(
                model,
                env["name"],
                env.get("settings") or {},
                episodes=s["episodes"],
                seed=0,
                progress=False,
                batch=s["batch"],
                per_episode=True,
                max_steps=max_steps,
            ),
        )
        results[agent] = {}
        for attack in s["attacks"]:
            curve = [{"eps": 0.0, **clean}]
            for e in eps[1:]:

                def compute(model=model, env=env, attack=attack, e=e):
                    perturb = get_attack(attack, model, eps=e)
                    return evaluate(
                        model,
                        env["name"],
                        env.get("settings") or {},
                        episodes=s["episodes"],
                        seed=0,
                        perturb=perturb,
                        progress=False,
                        batch=s["batch"],
                        per_episode=True,
                        max_steps=max_steps,
                    )

                curve.append({"eps": e, **run.row(f"attack-{agent}-{attack}-{e:g}", compute)})
            results[agent][attack] = curve
    return results


def _fig8_tables(run: TargetRun, agents: dict, s: dict, results: dict) -> None:
    """``fig8`` (every agent at the eps where the teacher's return halves, paired intervals) and
    ``curves`` (every agent, attack and eps)."""
    rows, half = [], {}
    for attack in s["attacks"]:
        e = half_return_eps(results["teacher"][attack])
        half[attack] = e
        row = {"attack": attack, "teacher's half-return eps": e}
        if e is not None:
            at = {agent: next(r for r in curves[attack] if r["eps"] == e) for agent, curves in results.items()}
            for agent, r in at.items():
                row[agent] = r["mean_return"]
                if agent != "teacher":
                    row[f"{agent} minus teacher (95% CI)"] = format_interval(
                        paired_interval(r["returns"], at["teacher"]["returns"])
                    )
        rows.append(row)
    others = [a for a in agents if a != "teacher"]
    columns = ["attack", "teacher's half-return eps", *agents, *[f"{a} minus teacher (95% CI)" for a in others]]
    run.table(
        "fig8",
        rows,
        columns,
        title=f"DIGR Fig. 8: greedy return under attack at the eps where the teacher's return halves "
        f"({s['episodes']} seeded episodes per point, the same for every agent and eps)",
        notes=[
            "Paired intervals over the same seeded episodes (each attack's random stream reseeded per "
            "episode), 95% percentile bootstrap; bold = excludes 0."
        ],
        extra={
            "curves": {
                a: {k: [{kk: vv for kk, vv in r.items() if kk != "returns"} for r in c] for k, c in per.items()}
                for a, per in results.items()
            },
            "teacher_half_return_eps": half,
        },
    )
    curve_rows = [
        {
            "agent": a,
            "attack": k,
            "eps": r["eps"],
            "mean_return": r["mean_return"],
            "std_return": r["std_return"],
            "success_rate": r.get("success_rate"),
        }
        for a, per in results.items()
        for k, c in per.items()
        for r in c
    ]
    run.table(
        "curves",
        curve_rows,
        ["agent", "attack", "eps", "mean_return", "std_return", "success_rate"],
        title="Return under attack, every agent, attack and eps (the curves of fig8.png)",
    )


# -- DIGR on a driving task: highway-fast stands in for CARLA ----------------------------------------
#: the DigrArgs a digr-highway setting sets (setting name -> DigrArgs field)
HIGHWAY_TRAINING = {
    "updates": "updates",
    "batch_size": "batch_size",
    "alpha": "alpha",
    "temperature": "temperature",
    "learning_rate": "learning_rate",
    "threshold": "threshold",
    "buffer_size": "buffer_size",
    "n_envs": "n_envs",
    "eval_every": "eval_every",
    "eval_episodes": "eval_episodes",
    "final_eval_episodes": "final_eval_episodes",
    "train_seed": "seed",
}
HIGHWAY_DATA = ("teacher", "data_states", "data_stride", "data_radius", "train_seed")
#: training settings a run may change and still resume (DigrArgs.IGNORED): not in the folder's name
HIGHWAY_BUDGET = ("updates", "eval_episodes", "final_eval_episodes")


def _digest(settings: dict, keys) -> str:
    import hashlib

    text = json.dumps({k: settings[k] for k in keys}, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:10]


def highway_student(run: TargetRun, *, igr: bool = True) -> Path:
    """The perturbation saliency dataset of the teacher and the DIGR student distilled from it, in
    ``<out>/data/digr-<hash>.h5`` and ``<out>/student-<hash>/`` (the hashes of the settings each
    depends on, so a changed setting makes a new one; more ``updates`` continue the same run);
    ``igr=False``: the distillation-only student of the same settings, ``<out>/distilled-<hash>/``
    (Fig. 8's ablation). Both resume when interrupted:
    :func:`xrl.train.digr.make_saliency_dataset` keeps finished chunks of maps, :func:`train_digr`
    its checkpoints."""
    from xrl.train.digr import DigrArgs, make_saliency_dataset, train_digr

    s = run.settings
    data = run.out / "data" / f"digr-{_digest(s, HIGHWAY_DATA)}.h5"
    data.parent.mkdir(parents=True, exist_ok=True)
    teacher = run.load_agent(s["teacher"])
    if run.progress:
        print(f"[{run.target.name}] perturbation saliency dataset {data} ...", flush=True)
    make_saliency_dataset(
        teacher,
        data,
        n_states=s["data_states"],
        radius=s["data_radius"],
        stride=s["data_stride"],
        seed=s["train_seed"],
        progress=run.progress,
    )
    name = "student" if igr else "distilled"
    folder = (
        run.out / f"{name}-{_digest(s, [*HIGHWAY_DATA, *(k for k in HIGHWAY_TRAINING if k not in HIGHWAY_BUDGET)])}"
    )
    card = folder / "agent.json"
    if card.exists() and json.loads(card.read_text()).get("updates") == s["updates"]:
        return folder / "agent.pt"  # trained (more updates resume the run from its last checkpoint)
    if run.progress:
        print(f"[{run.target.name}] {'DIGR' if igr else 'distillation-only'} student {folder} ...", flush=True)
    args = DigrArgs(
        teacher=s["teacher"],
        data=str(data),
        out=str(folder),
        n_states=s["data_states"],
        igr=igr,
        stride=s["data_stride"],
        checkpoint_every=max(1, min(250, s["updates"])),
        progress=run.progress,
        device=str(run.device),  # not in the run's identity (DigrArgs.IGNORED) nor its card's settings
        **{field: s[key] for key, field in HIGHWAY_TRAINING.items()},
    )
    return train_digr(args)


def run_highway(run: TargetRun) -> None:
    s = run.settings
    student = highway_student(run)
    agents = {"teacher": run.load_agent(s["teacher"]), "DIGR": run.load_agent(str(student))}
    run.note(f"DIGR student: {student} (the teacher's perturbation dataset and the training run beside it)")
    if s["distilled"]:
        distilled = highway_student(run, igr=False)
        agents["distillation only"] = run.load_agent(str(distilled))
        run.note(f"distillation-only student: {distilled}")
    table1(run, agents, s, paper={})
    agreement(run, agents, s)
    attacks(
        run,
        agents,
        {**s, "episodes": s["attack_episodes"]},
        env_overrides={"duration": s["attack_duration"]} if s["attack_duration"] else {},
    )


@torch.no_grad()
def _same(model, states: torch.Tensor, actions: torch.Tensor) -> list[float]:
    return (model(states).argmax(-1) == actions).double().cpu().tolist()


def agreement(run: TargetRun, agents: dict, s: dict) -> None:
    """How often each student takes the teacher's action on the labelled test states (the
    teacher's greedy episodes): the distillation's fidelity where the teacher drives."""
    for labels in s["labels"][:1]:
        _, states, actions, _, _ = _states(run, agents["teacher"], labels, s)
        rows = []
        for agent, model in agents.items():
            if agent == "teacher":
                continue
            value = run.row(f"agreement-{agent}", lambda model=model: {"same": _same(model, states, actions)})
            same = np.asarray(value["same"])
            rows.append({"agent": agent, "states": len(same), "takes the teacher's action": float(same.mean())})
        counts = np.bincount(actions.cpu().numpy(), minlength=agents["teacher"].n_actions)
        names = agents["teacher"].action_names
        run.table(
            "agreement",
            rows,
            ["agent", "states", "takes the teacher's action"],
            title=f"Share of the {len(actions)} test states (the teacher's greedy episodes) where the student's "
            "greedy action is the teacher's",
            notes=[
                "The teacher's actions on these states: "
                + ", ".join(f"{names[a] if names else a} {c / len(actions):.0%}" for a, c in enumerate(counts) if c)
                + " (a student always taking the most frequent one would agree on "
                f"{counts.max() / len(actions):.0%})."
            ],
            extra={"teacher_action_counts": counts.tolist()},
        )


# the runs of this module's targets; their declarations (claim, settings, budget) are in targets.json
RUNS = {"digr-table1": run_table1, "digr-attacks": run_attacks, "digr-highway": run_highway}
