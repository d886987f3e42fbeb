"""Return under attack: how an agent's episode return falls as the attack radius grows (DIGR Fig. 8).

Episodes are played by :func:`xrl.rollout.evaluate_policy` (no Stable-Baselines3 is loaded to
score them). Every step of every episode the agent sees the attacked observation: ``s' = attack(s)`` with the
attacked action the agent's own choice on ``s``, then it acts greedily on ``s'``. Episode ``i``
is reset with ``seed + i`` and the attack's random stream is reseeded with the same number, so
two agents (a teacher and its student) meet the same episodes and the same random starts. A
recurrent agent carries its recurrent state from step to step on the attacked observations it
saw, and the attack is computed under that state (:class:`xrl.rollout.Greedy`).

Example::

    curves = return_under_attack(model, ["fgsm", "pgd"], [0, 0.01, 0.02], episodes=50)
    curves["pgd"][1]["mean_return"]       # at eps = 0.01
"""

from __future__ import annotations

import csv
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

from tqdm.auto import tqdm

from xrl.agents.model import Model
from xrl.attacks.attacks import ATTACKS, get_attack
from xrl.files import atomic_path, write_json
from xrl.rollout import evaluate_policy


def return_under_attack(
    model: Model,
    attacks: Sequence[str],
    eps: Sequence[float],
    *,
    episodes: int = 50,
    seed: int = 0,
    env: str | None = None,
    env_settings: Mapping | None = None,
    attack_settings: Mapping[str, Mapping] | None = None,
    batch: int = 8,
    progress: bool = True,
) -> dict[str, list[dict]]:
    """``{attack: [{"eps", "mean_return", "std_return", "success_rate", ...} per eps]}``.

    ``env``/``env_settings`` default to the ones recorded with the agent (its card).
    ``attack_settings`` gives each attack's extra settings (``{"pgd": {"steps": 20}}``).
    ``batch`` episodes are played side by side, attacked in one batch per step (each with its
    own seeded random stream: the same episodes as one at a time, several times faster).
    """
    for name in attacks:
        ATTACKS.get(name)  # unknown names fail before any episode runs
    eps = [float(e) for e in eps]
    if not eps or any(not e >= 0 for e in eps):
        raise ValueError(f"eps must be a non-empty list of radii >= 0, got {eps}")
    if isinstance(batch, bool) or int(batch) < 1:
        raise ValueError(f"batch must be a positive number of episodes, got {batch!r}")
    recorded = model.info.get("env") or {}
    env = env or recorded.get("name")
    if env is None:
        raise ValueError("the agent records no env; pass env= (a registered env name)")
    settings = dict(env_settings if env_settings is not None else recorded.get("settings") or {})
    attack_settings = attack_settings or {}
    out: dict = {}
    with tqdm(total=len(attacks) * len(eps), desc="attacks", disable=not progress) as bar:
        for name in attacks:
            out[name] = []
            for e in eps:
                attack = get_attack(name, model, eps=e, **dict(attack_settings.get(name, {})))
                bar.set_postfix(attack=name, eps=e)
                played = evaluate_policy(
                    model, env, env_settings=settings, episodes=episodes, seed=seed, perturb=attack, n_envs=int(batch)
                )
                out[name].append({"eps": e, **played.summary()})
                bar.update(1)
    return out


def write_attack_results(
    results: Mapping[str, list[dict]], out: str | os.PathLike, *, agents: Mapping[str, Mapping] | None = None
) -> Path:
    """``attacks.json`` (every figure) and ``attacks.csv`` (one row per attack and eps) in ``out``;
    ``results`` may also be ``{agent: {attack: [...]}}`` with ``agents`` naming their sources."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    nested = all(isinstance(v, Mapping) for v in results.values())
    table = results if nested else {"agent": results}
    write_json(out / "attacks.json", {"results": table, "agents": dict(agents or {})})
    with atomic_path(out / "attacks.csv") as tmp, tmp.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["agent", "attack", "eps", "mean_return", "std_return", "success_rate", "episodes"])
        for agent, per_attack in table.items():
            for attack, rows in per_attack.items():  # type: ignore[union-attr]
                for r in rows:
                    writer.writerow(
                        [agent, attack, r["eps"], r["mean_return"], r["std_return"], r["success_rate"], r["episodes"]]
                    )
    return out
