"""DIGR's evidence (Xing et al. 2022, arXiv:2205.08685) for one teacher and its students, in one run:

- Table 1: localization (important / unimportant saliency, ROC AUC) of the teacher's vanilla
  gradient, guided backprop, Grad-CAM, SmoothGrad (on guided backprop, 20 samples, sigma 0.15, as
  appendix A), integrated gradients (50 steps), Gaussian-blur perturbation (KL, the env's
  radius) and SARFA, and of the students' vanilla gradient; "VG" is Eq. 2's quantity
  (``targets=DIGR_TARGET``), "VG (action)" the gradient of the chosen action's logit;
- Fig. 9: the students' return during training (their ``history.json``) against the teacher's;
- Fig. 8: return under FGSM, PGD, MI-FGSM and MAD across eps for the teacher and the students,
  and for each attack the eps where the teacher's return has fallen by half;
- time per map of the student's vanilla gradient vs the teacher's perturbation map (one run);
- Fig. 3: states with the teacher's VG, its perturbation map and the DIGR student's VG.

- every agent's return and success rate over the same ``--score-episodes`` seeded episodes.

Usage (Red-Fetch-Green; needs ground-truth labels in ``--data``, which may be repeated)::

    python benchmarks/digr_evidence.py --teacher red-fetch-green \
        --student zoo/red-fetch-green-digr/agent.pt --distilled runs/digr-rfg-kl/agent.pt \
        --data results/rfg-states.h5 --out docs/digr
"""
from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import numpy as np
import torch

import xrl
from xrl.attacks.evaluate import return_under_attack, write_attack_results
from xrl.data.dataset import StateDataset
from xrl.files import atomic_path, write_json
from xrl.train.agent import evaluate
from xrl.train.digr import DIGR_TARGET, RADIUS
from xrl.viz.overlay import attack_curves, explanation_grid, line_panels

TEACHER_METHODS = {
    "VG": ("gradient", {}, DIGR_TARGET),
    "VG (action)": ("gradient", {}, None),
    "Guided BP": ("guided_backprop", {}, None),
    "Grad-CAM": ("grad_cam", {}, None),
    "SmoothGrad": ("smoothgrad", {"base": "guided_backprop", "n_samples": 20, "sigma": 0.15}, None),
    "Integrated G": ("integrated_gradients", {"n_steps": 50}, None),
    "GB Perturbation": ("greydanus", {"score": "kl"}, None),
    "SARFA": ("sarfa", {}, None),
}
STUDENT_METHODS = {"VG": ("gradient", {}, DIGR_TARGET), "VG (action)": ("gradient", {}, None)}


def saliency(model, method, settings, target, states, actions):
    explainer = xrl.get_explainer(method, model, **settings)
    return explainer, explainer.explain(states, target if target is not None else actions)


def table1(models: dict, states, actions, labels, radius: float) -> tuple[list[dict], dict]:
    localization, cost = xrl.get_metric("localization"), xrl.get_metric("time_per_map", repeats=3)
    rows, maps = [], {}
    for agent, model in models.items():
        for name, (method, settings, target) in (TEACHER_METHODS if agent == "teacher" else STUDENT_METHODS).items():
            if method in ("greydanus", "sarfa"):
                settings = {**settings, "radius": radius}
            explainer, m = saliency(model, method, settings, target, states, actions)
            maps[f"{agent}: {name}"] = m
            v = localization(states=states, saliency=m, labels=labels)
            t = cost(states=states[:8], saliency=m[:8], explainer=explainer,
                     targets=target if target is not None else actions[:8])
            rows.append({"agent": agent, "method": name, **{k: float(np.nanmean(x.numpy())) for k, x in v.items()},
                         "seconds_per_map": float(t[0])})
    return rows, maps


def half_return_eps(curve: list[dict]) -> float | None:
    """The smallest eps where the return is at most half the clean return (None if never)."""
    clean = curve[0]["mean_return"]
    for r in curve[1:]:
        if r["mean_return"] <= clean / 2:
            return r["eps"]
    return None


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--teacher", required=True)
    p.add_argument("--student", required=True, help="the DIGR student (xrl train digr)")
    p.add_argument("--distilled", default=None, help="the distillation-only student (--igr false)")
    p.add_argument("--data", required=True, action="append",
                   help="StateDataset of the teacher with labels (xrl collect); repeat it for Table 1 under "
                        "other labels (e.g. red-fetch-green's labels=objects); the first one draws Fig. 3")
    p.add_argument("--n-states", type=int, default=64)
    p.add_argument("--eps", default="0,0.005,0.01,0.02,0.05,0.1")
    p.add_argument("--episodes", type=int, default=50)
    p.add_argument("--score-episodes", type=int, default=100,
                   help="greedy episodes (seeds 10000 + i, the cards') scoring every agent on the same episodes")
    p.add_argument("--out", default="docs/digr")
    args = p.parse_args()
    torch.set_num_threads(1)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    models = {"teacher": xrl.load_agent(args.teacher), "DIGR": xrl.load_agent(args.student)}
    if args.distilled:
        models["distillation only"] = xrl.load_agent(args.distilled)
    env = models["teacher"].info["env"]["name"]
    tables = {}
    for data in args.data:
        with StateDataset.open(data) as ds:
            if ds.labels() is None:
                raise SystemExit(f"{data} has no ground-truth labels; Table 1 needs them")
            rows = np.sort(np.random.default_rng(0).choice(len(ds), size=min(args.n_states, len(ds)), replace=False))
            states, actions = ds.states(rows), torch.as_tensor(ds.actions[rows])
            labels, frames = torch.as_tensor(ds.labels(rows)), ds.frames(rows)
            label_setting = (ds.env.get("settings") or {}).get("labels")
        table, maps = table1(models, states, actions, labels, RADIUS.get(env, 5.0))
        tables[data] = {"labels": label_setting, "table1": table}
        if data == args.data[0]:
            first = (rows, states, actions, frames, table, maps)
    rows, states, actions, frames, table, maps = first
    lines = []
    for data, t in tables.items():
        lines += [f"Table 1 on `{data}` (labels: {t['labels'] or 'default'}):", "",
                  "| agent | method | important ↑ | unimportant ↓ | AUC ↑ | seconds per map |",
                  "|---|---|---|---|---|---|"]
        lines += [f"| {r['agent']} | {r['method']} | {r['important']:.2f} | {r['unimportant']:.2f} | {r['auc']:.3f} | "
                  f"{r['seconds_per_map']:.2e} |" for r in t["table1"]]
        lines.append("")
    speed = {r["method"] + "/" + r["agent"]: r["seconds_per_map"] for r in table}
    ratio = speed["GB Perturbation/teacher"] / speed["VG/DIGR"]

    pick = list(range(0, len(rows), max(1, len(rows) // 4)))[:4]
    explanation_grid(frames[pick], {"teacher VG": maps["teacher: VG"][pick],
                                    "GB perturbation": maps["teacher: GB Perturbation"][pick],
                                    "DIGR VG": maps["DIGR: VG"][pick]}, out / "fig3.png",
                     actions=actions[pick].numpy(), action_names=models["teacher"].action_names,
                     title=f"{env}: teacher vanilla gradient, perturbation, DIGR student")

    history = {}
    for agent in ("DIGR", "distillation only"):
        if agent in models:
            source = Path(models[agent].info["source"])  # a run's agent.pt or one of its snapshots/
            for path in (source.parent / "history.json", source.parent.parent / "history.json"):
                if path.exists():
                    history[agent] = json.loads(path.read_text())
                    break
    if history:
        curves = {}
        for agent, h in history.items():
            log = [e for e in h["log"] if "student" in e]
            curves[agent] = ([e["update"] for e in log], [e["student"]["mean_return"] for e in log],
                             [e["student"]["std_return"] for e in log])
            teacher = h["teacher"]["mean_return"]
            curves.setdefault("teacher", ([log[0]["update"], log[-1]["update"]], [teacher, teacher], None))
        line_panels({"return during DIGR training": curves}, out / "fig9.png", xlabel="update", ylabel="return")

    scores = {agent: evaluate(m, env, m.info["env"].get("settings") or {}, episodes=args.score_episodes,
                              seed=10_000, progress=False, batch=20) for agent, m in models.items()}

    eps = [float(e) for e in args.eps.split(",")]
    attacks = {agent: return_under_attack(m, ["fgsm", "pgd", "mi_fgsm", "mad"], eps, episodes=args.episodes)
               for agent, m in models.items()}
    write_attack_results(attacks, out)
    attack_curves(attacks, out / "fig8.png")
    half = {a: half_return_eps(c) for a, c in attacks["teacher"].items()}
    at_half = {a: {agent: next(r["mean_return"] for r in attacks[agent][a] if r["eps"] == e)
                   for agent in models} for a, e in half.items() if e is not None}

    write_json(out / "evidence.json", {"table1": table, "table1_by_data": tables, "perturbation_over_digr_time": ratio,
                                       "scores": scores, "teacher_half_return_eps": half, "return_at_teacher_half_eps": at_half})
    summary = "\n".join(lines) + f"\n\nPerturbation map / DIGR vanilla gradient time: {ratio:.0f}x\n\n"
    summary += f"Return over {args.score_episodes} seeded episodes (the same for every agent): " + ", ".join(
        f"{agent} {s['mean_return']:.3f} (success {s['success_rate']:.3f})" for agent, s in scores.items()) + "\n\n"
    summary += "Return at the eps where the teacher's return halves:\n\n" + "\n".join(
        f"- {a} (eps {half[a]}): " + ", ".join(f"{agent} {v:.3f}" for agent, v in r.items()) for a, r in at_half.items())
    with atomic_path(out / "evidence.md") as tmp:
        tmp.write_text(summary + "\n")
    print(summary)


if __name__ == "__main__":
    main()
