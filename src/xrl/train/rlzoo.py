"""Score an Atari agent as rl-zoo does, so its card can be compared with rl-zoo's benchmark table.

xrl's own score (``score`` in a card, :func:`xrl.train.agent.evaluate`) plays xrl's env: SB3's
``AtariWrapper`` with ``terminal_on_life_loss=False``, so FIRE is pressed at the reset only and a
greedy Breakout agent that never picks FIRE idles after its first lost life. rl-zoo (DLR-RM,
``rl_zoo3/enjoy.py`` and ``rl_zoo3/exp_manager.py``) evaluates through Stable-Baselines3's own
pipeline instead: ``make_atari_env`` (``Monitor`` around the raw ``NoFrameskip-v4`` game, then
``AtariWrapper``: 30 no-op starts, frame skip 4 with max-pooling, ``EpisodicLifeEnv`` — a lost
life ends the wrapped episode and the next reset presses FIRE —, 84×84 gray, reward clipping)
and ``VecFrameStack(4)``; the score is the ``Monitor``'s full-game return (every life, unclipped).

:func:`rlzoo_score` plays exactly that pipeline (SB3's code, not a re-implementation), episode
``i`` from ``make_atari_env(..., seed=seed + i)``, with the greedy action of the xrl model on the
stacked frames, and caps a game at 27,000 agent steps (108,000 frames, rl-zoo's Atari time limit
``max_episode_steps`` of the ``NoFrameskip-v4`` ids is 400,000 frames; the cap only stops a game
stuck in a loop and is recorded). Differences from rl-zoo's ``enjoy.py``: one env per episode,
seeded ``seed + i`` (rl-zoo seeds one env once and plays on), greedy actions (rl-zoo's
``--deterministic`` default for Atari is stochastic=False too).
"""

from __future__ import annotations

import numpy as np
import torch
from tqdm.auto import tqdm

from xrl.agents.model import Model

#: agent steps after which a game is stopped (108,000 frames at frame skip 4)
MAX_STEPS = 27_000
PROTOCOL = (
    "rl-zoo: SB3 make_atari_env (Monitor, AtariWrapper: 30 no-op starts, frame skip 4, a lost life ends "
    "the wrapped episode and FIRE restarts it) + VecFrameStack(4); full-game Monitor return; greedy; "
    "episode i seeded seed + i; at most 27,000 agent steps a game"
)


def rlzoo_score(
    model: Model,
    game: str,
    *,
    episodes: int = 10,
    seed: int = 10_000,
    max_steps: int = MAX_STEPS,
    progress: bool = True,
) -> dict:
    """Mean and std of the full-game return of ``episodes`` greedy games of ``model`` on the xrl
    Atari game ``game`` (``breakout``, ``pong``...), played through SB3's ``make_atari_env`` as
    rl-zoo evaluates; ``returns`` per game and ``truncated`` (games stopped at ``max_steps``)."""
    from xrl.compat import quiet_old_gym
    from xrl.envs.atari import _register_ale, ale_id

    quiet_old_gym()
    from stable_baselines3.common.env_util import make_atari_env
    from stable_baselines3.common.vec_env import VecFrameStack

    if tuple(model.input_shape) != (4, 84, 84):
        raise ValueError(
            f"rl-zoo's Atari pipeline gives (4, 84, 84) stacked gray frames; the model takes {model.input_shape}"
        )
    _register_ale()
    env_id = ale_id(game, "v4")
    returns, truncated = [], 0
    for i in tqdm(range(episodes), desc=f"rl-zoo score {game}", unit="game", disable=not progress):
        venv = VecFrameStack(make_atari_env(env_id, n_envs=1, seed=seed + i), n_stack=4)
        try:
            obs = venv.reset()
            for _ in range(max_steps):
                states = model.preprocess(np.ascontiguousarray(obs[0].transpose(2, 0, 1)))  # (4, 84, 84)
                with torch.no_grad():
                    action = int(model(states)[0].argmax())
                obs, _, _, infos = venv.step(np.array([action]))
                if "episode" in infos[0]:  # the Monitor's full game ended
                    returns.append(float(infos[0]["episode"]["r"]))
                    break
            else:
                truncated += 1
                returns.append(float(sum(venv.envs[0].get_wrapper_attr("rewards"))))  # the Monitor's so far
        finally:
            venv.close()
    return {
        "episodes": episodes,
        "seed": seed,
        "mean_return": float(np.mean(returns)),
        "std_return": float(np.std(returns)),
        "returns": returns,
        "truncated": truncated,
        "protocol": PROTOCOL,
    }


def score_card(agent_dir: str, *, episodes: int | None = None, seed: int | None = None, progress: bool = True) -> dict:
    """Add ``score_rlzoo`` (:func:`rlzoo_score` of the agent's game; by default the episodes and
    seeds of its card's ``score``) to the card of the zoo agent or run folder ``agent_dir``
    (``zoo/breakout``); returns it."""
    from pathlib import Path

    from xrl.agents.load import load_agent
    from xrl.artifacts import read_card, write_card

    path = Path(agent_dir) / "agent.pt" if Path(agent_dir).is_dir() else Path(agent_dir)
    card = read_card(path, required=True)
    game = (card.get("env") or {}).get("name")
    settings = (card.get("env") or {}).get("settings") or {}
    if settings.get("version") != "v4":
        raise ValueError(f"{path}: rl-zoo's pipeline plays NoFrameskip-v4 games; this agent's env is {card.get('env')}")
    own = card.get("score") or {}
    episodes = int(own.get("episodes", 10)) if episodes is None else episodes
    seed = int(own.get("seed", 10_000)) if seed is None else seed
    score = rlzoo_score(load_agent(str(path)), game, episodes=episodes, seed=seed, progress=progress)  # type: ignore[arg-type]
    card["score_rlzoo"] = score
    write_card(path, card)
    return score


if __name__ == "__main__":  # python -m xrl.train.rlzoo zoo/breakout [zoo/pong ...]
    import sys

    for folder in sys.argv[1:]:
        s = score_card(folder)
        print(f"{folder}: rl-zoo score {s['mean_return']:.1f} ± {s['std_return']:.1f} over {s['episodes']} games")
