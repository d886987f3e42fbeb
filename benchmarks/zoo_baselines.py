"""What a zoo agent's score means: the agent against trivial policies on the same seeded episodes.

Plays ``--episodes`` episodes (episode i seeded ``seed + i``, the same starts for every policy)
with the agent's greedy policy (argmax, as on its card), its sampled policy (actions drawn from
its softmax, PPO agents only), uniformly random actions, and every constant action ("always
IDLE"). Reports mean and std of the return, the mean episode length and the share of episodes
that ended by termination (a crash, a death, the goal) rather than by the time limit.

    python benchmarks/zoo_baselines.py --agent zoo/highway-fast --episodes 20 \\
        --out benchmarks/results/highway_baselines.json
"""
from __future__ import annotations

import argparse
import sys
from typing import Callable

import numpy as np
import torch
from tqdm import tqdm

import xrl
from common import write_with_table
from xrl.envs import make_env

Policy = Callable[[np.ndarray, np.random.Generator], int]


def play(env_name: str, settings: dict, policy: Policy, *, episodes: int, seed: int, desc: str) -> dict:
    """``episodes`` seeded episodes of ``policy(obs, rng)`` (``rng`` seeded per episode)."""
    env = make_env(env_name, **settings)
    returns, lengths, terminated_share = [], [], []
    for i in tqdm(range(episodes), desc=desc, leave=False):
        obs, _ = env.reset(seed=seed + i)
        rng = np.random.default_rng(seed + i)
        total, steps, terminated, truncated = 0.0, 0, False, False
        while not (terminated or truncated):
            obs, reward, terminated, truncated, _ = env.step(policy(np.asarray(obs), rng))
            total, steps = total + float(reward), steps + 1
        returns.append(total)
        lengths.append(steps)
        terminated_share.append(bool(terminated))
    env.close()
    return {"mean_return": float(np.mean(returns)), "std_return": float(np.std(returns)),
            "mean_length": float(np.mean(lengths)), "terminated": float(np.mean(terminated_share)),
            "returns": [float(r) for r in returns]}


def policies(model: xrl.Model) -> dict[str, Policy]:
    def greedy(obs, rng):
        return int(model.act(obs[None])[0])

    def sampled(obs, rng):
        with torch.inference_mode():
            p = model.probs(model.preprocess(obs[None]))[0].double().numpy()
        return int(rng.choice(len(p), p=p / p.sum()))

    out: dict[str, Policy] = {"agent greedy": greedy}
    if model.score_kind == "logits":
        out["agent sampled"] = sampled
    out["random"] = lambda obs, rng: int(rng.integers(model.n_actions))
    for a, name in enumerate(model.action_names):
        out[f"always {name}"] = lambda obs, rng, a=a: a
    return out


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--agent", required=True, help="zoo name, run folder or agent file")
    parser.add_argument("--episodes", type=int, default=20)
    parser.add_argument("--seed", type=int, default=30_000, help="episode i is seeded seed + i")
    parser.add_argument("--out", required=True, help="JSON file (a .md table is written beside it)")
    args = parser.parse_args(argv)
    model = xrl.load_agent(args.agent)
    env = model.info.get("env") or {}
    if not env.get("name"):
        raise SystemExit(f"{args.agent} has no card naming its env")
    rows = {name: play(env["name"], env.get("settings") or {}, policy, episodes=args.episodes, seed=args.seed,
                       desc=name)
            for name, policy in policies(model).items()}
    card = model.info.get("card") or {}
    result = {"agent": args.agent, "env": env, "algo": card.get("algo"), "timesteps": card.get("timesteps"),
              "episodes": args.episodes, "seed": args.seed, "policies": rows,
              "command": "python benchmarks/zoo_baselines.py " + " ".join(sys.argv[1:] if argv is None else argv)}
    lines = [f"{args.agent} ({env['name']}), {args.episodes} seeded episodes (seeds {args.seed}.."
             f"{args.seed + args.episodes - 1}), the same for every policy.", "",
             "| policy | mean return | std | mean length | ended by termination |", "|---|---|---|---|---|"]
    lines += [f"| {name} | {r['mean_return']:.2f} | {r['std_return']:.2f} | {r['mean_length']:.1f} | "
              f"{r['terminated']:.0%} |" for name, r in rows.items()]
    write_with_table(args.out, result, lines)
    return result


if __name__ == "__main__":
    main()
