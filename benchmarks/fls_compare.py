"""FLS's "free lunch" claim, checked: attention agents play as well as the baseline at the same budget.

Every agent plays the same seeded greedy episodes (episode i seeded ``seed + i``); a uniformly
random policy plays them too, in the same run, as the floor. Per group (one architecture, one
agent per training seed) the score is the mean over its agents. Reported against the baseline
group:

- ``ratio``: (group - random) / (baseline - random), the share of the baseline's progress over
  random play that the group reaches (the issue: "within 10%" means ratio >= 0.9);
- ``difference``: group - baseline in mean return and success rate, with a 95% bootstrap
  interval over the episodes (paired: episode i is the same start for every agent).

    python benchmarks/fls_compare.py --episodes 1000 \\
        --group grid_cnn=red-fetch-green-cnn-500k-0,red-fetch-green-cnn-500k-1 \\
        --group grid_sparse_fls=red-fetch-green-sparse-fls-0,red-fetch-green-sparse-fls-1 \\
        --out benchmarks/results/fls_rfg.json
"""
from __future__ import annotations

import argparse
import sys

import numpy as np

import xrl
from common import write_with_table
from xrl.envs import make_env
from xrl.train.agent import evaluate


def random_returns(env_name: str, settings: dict, *, episodes: int, seed: int) -> list[float]:
    """Uniformly random actions on the same seeded episodes (action stream seeded per episode)."""
    env, returns = make_env(env_name, **settings), []
    for i in range(episodes):
        env.reset(seed=seed + i)
        env.action_space.seed(seed + i)
        total, done = 0.0, False
        while not done:
            _, reward, terminated, truncated, _ = env.step(env.action_space.sample())
            total, done = total + float(reward), terminated or truncated
        returns.append(total)
    env.close()
    return returns


def paired_interval(a: np.ndarray, b: np.ndarray, *, draws: int = 10_000, seed: int = 0) -> list[float]:
    """95% bootstrap interval of mean(a - b), resampling episodes."""
    diff = a - b
    idx = np.random.default_rng(seed).integers(0, len(diff), size=(draws, len(diff)))
    return [float(v) for v in np.percentile(diff[idx].mean(1), [2.5, 97.5])]


def parse_group(text: str) -> tuple[str, list[str]]:
    name, sep, paths = text.partition("=")
    if not sep or not name or not paths:
        raise SystemExit(f"--group wants NAME=AGENT[,AGENT...], got {text!r}")
    return name, paths.split(",")


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--group", action="append", required=True, help="NAME=AGENT[,AGENT...] (one per seed)")
    parser.add_argument("--baseline", help="group the others are compared with (default: the first)")
    parser.add_argument("--episodes", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=20_000, help="episode i is seeded seed + i")
    parser.add_argument("--batch", type=int, default=20, help="episodes played side by side")
    parser.add_argument("--out", required=True, help="JSON file (a .md table is written beside it)")
    args = parser.parse_args(argv)
    groups = dict(parse_group(g) for g in args.group)
    baseline = args.baseline or next(iter(groups))
    if baseline not in groups:
        raise SystemExit(f"--baseline {baseline!r} is not a group; groups: {sorted(groups)}")

    agents, envs = {}, set()
    for name, paths in groups.items():
        for path in paths:
            model = xrl.load_agent(path)
            env = model.info.get("env") or {}
            envs.add((env.get("name"), tuple(sorted((env.get("settings") or {}).items()))))
            agents[(name, path)] = model
    if len(envs) != 1:
        raise SystemExit(f"the agents were made for different envs or settings: {sorted(envs, key=str)}")
    env_name, settings = next(iter(envs))
    settings = dict(settings)

    per_agent, returns = [], {}
    for (name, path), model in agents.items():
        score = evaluate(model, env_name, settings, episodes=args.episodes, seed=args.seed,
                         batch=args.batch, per_episode=True)
        returns[(name, path)] = np.asarray(score.pop("returns"))
        card = model.info.get("card") or {}
        per_agent.append({"group": name, "agent": path, "timesteps": card.get("timesteps"),
                          "arch": card.get("arch"), **score})
        print(f"{name:<20} {path:<50} return {score['mean_return']:.3f}  success {score['success_rate']:.3f}")
    floor = np.asarray(random_returns(env_name, settings, episodes=args.episodes, seed=args.seed))

    def group_returns(name: str) -> np.ndarray:  # (episodes,): mean over the group's agents
        return np.mean([r for (g, _), r in returns.items() if g == name], axis=0)

    base = group_returns(baseline)
    table = {}
    for name in groups:
        mine = group_returns(name)
        entry = {"agents": len(groups[name]), "mean_return": float(mine.mean()),
                 "success_rate": float(np.mean([(r > 0).mean() for (g, _), r in returns.items() if g == name])),
                 "seed_means": [float(r.mean()) for (g, _), r in returns.items() if g == name]}
        if name != baseline:
            progress = base.mean() - floor.mean()
            entry["ratio"] = float((mine.mean() - floor.mean()) / progress) if progress > 0 else None
            entry["return_difference"] = float(mine.mean() - base.mean())
            entry["return_difference_ci95"] = paired_interval(mine, base)
            won = lambda g: np.mean([(r > 0) for (n, _), r in returns.items() if n == g], axis=0)  # noqa: E731
            entry["success_difference"] = float(won(name).mean() - won(baseline).mean())
            entry["success_difference_ci95"] = paired_interval(won(name), won(baseline))
        table[name] = entry
    result = {"env": {"name": env_name, "settings": settings}, "episodes": args.episodes, "seed": args.seed,
              "baseline": baseline, "random": {"mean_return": float(floor.mean()),
                                               "success_rate": float((floor > 0).mean())},
              "groups": table, "agents": per_agent,
              "command": "python benchmarks/fls_compare.py " + " ".join(sys.argv[1:] if argv is None else argv)}

    lines = [f"{args.episodes} seeded episodes (seeds {args.seed}..{args.seed + args.episodes - 1}) of {env_name}, "
             f"the same for every agent; random policy {floor.mean():.3f} (success {(floor > 0).mean():.3f}).", "",
             "| group | agents | mean return (per seed) | success | ratio to baseline | return diff (95% CI) | success diff (95% CI) |",
             "|---|---|---|---|---|---|---|"]
    for name, e in table.items():
        seeds = ", ".join(f"{v:.3f}" for v in e["seed_means"])
        if name == baseline:
            lines.append(f"| {name} (baseline) | {e['agents']} | {e['mean_return']:.3f} ({seeds}) | {e['success_rate']:.3f} | 1 | – | – |")
        else:
            ci, sci = e["return_difference_ci95"], e["success_difference_ci95"]
            ratio = "–" if e["ratio"] is None else f"{e['ratio']:.3f}"
            lines.append(f"| {name} | {e['agents']} | {e['mean_return']:.3f} ({seeds}) | {e['success_rate']:.3f} | {ratio} | "
                         f"{e['return_difference']:+.3f} ({ci[0]:+.3f}, {ci[1]:+.3f}) | "
                         f"{e['success_difference']:+.3f} ({sci[0]:+.3f}, {sci[1]:+.3f}) |")
    write_with_table(args.out, result, lines)
    return result


if __name__ == "__main__":
    main()
