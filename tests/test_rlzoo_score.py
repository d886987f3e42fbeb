"""The rl-zoo score on an Atari card is what SB3's own pipeline gives (issue 42, point 4).

The test plays the card's first game itself through Stable-Baselines3's ``make_atari_env`` and
``VecFrameStack`` — rl-zoo's evaluation pipeline — with the zoo agent's greedy action, and reads
the ``Monitor``'s full-game return: it must equal the first of the card's ``score_rlzoo`` returns.
"""

import json

import numpy as np
import pytest
import torch

import xrl


def _first_game(agent: str, game_id: str, seed: int) -> float:
    from stable_baselines3.common.env_util import make_atari_env
    from stable_baselines3.common.vec_env import VecFrameStack

    from xrl.envs.atari import _register_ale

    _register_ale()
    model = xrl.load_agent(agent)
    venv = VecFrameStack(make_atari_env(game_id, n_envs=1, seed=seed), n_stack=4)
    obs = venv.reset()
    try:
        for _ in range(27_000):
            x = torch.from_numpy(obs.transpose(0, 3, 1, 2).copy()).float() / 255  # (1, 4, 84, 84)
            with torch.no_grad():
                action = int(model(x)[0].argmax())
            obs, _, _, infos = venv.step(np.array([action]))
            if "episode" in infos[0]:
                return float(infos[0]["episode"]["r"])
    finally:
        venv.close()
    raise AssertionError("the game did not end in 27,000 steps")


def test_the_breakout_cards_rlzoo_score_is_sb3s_pipeline():
    from xrl.agents.load import ZOO_DIR

    card = json.loads((ZOO_DIR / "breakout" / "agent.json").read_text())
    score = card["score_rlzoo"]
    assert score["episodes"] == len(score["returns"]) and score["truncated"] == 0
    assert score["mean_return"] == pytest.approx(np.mean(score["returns"]))
    assert _first_game("breakout", "BreakoutNoFrameskip-v4", score["seed"]) == score["returns"][0]
    # and the rl-zoo protocol differs from xrl's own score, which idles after a lost life
    assert score["mean_return"] > card["score"]["mean_return"]


def test_rlzoo_score_refuses_a_model_of_another_shape():
    from xrl.train.rlzoo import rlzoo_score

    model = xrl.load_agent("red-fetch-green")
    with pytest.raises(ValueError, match=r"\(4, 84, 84\)"):
        rlzoo_score(model, "breakout", episodes=1, progress=False)
