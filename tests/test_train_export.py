"""An unfinished training run can be exported (and shipped) without training further."""

import json

import pytest

import xrl
from xrl.train.agent import AgentArgs, train_agent


def test_export_only_writes_the_checkpoint_reached(tmp_path):
    args = AgentArgs(
        env="red-fetch-green",
        total_timesteps=2048,
        n_envs=2,
        n_steps=64,
        batch_size=64,
        checkpoint_every=256,
        eval_episodes=1,
        out=str(tmp_path / "run"),
        progress=False,
    )
    with pytest.raises(FileNotFoundError, match="no checkpoint"):
        train_agent(args, export_only=True)
    train_agent(args, stop_at=256)
    path = train_agent(args, export_only=True)
    card = json.loads(path.with_suffix(".json").read_text())
    assert 256 <= card["timesteps"] < 2048 and card["timesteps_planned"] == 2048
    assert card["train_seconds_this_run"] == 0.0  # exporting trains nothing (evaluating is not training)
    assert xrl.load_agent(path).action_names == ["left", "right", "forward", "pickup"]
