"""``make_env("gym:ID", ...)``: any registered Gymnasium env with image observations, in xrl's
layout (uint8, channels first, frames stacked on channels), with the preprocessing named; the
observations equal the same steps computed by hand from the raw env."""

import cv2
import gymnasium as gym
import numpy as np
import pytest
import torch
from minigrid.wrappers import ImgObsWrapper, RGBImgObsWrapper

import xrl

ID = "MiniGrid-Empty-5x5-v0"
RGB = ["minigrid.wrappers.RGBImgObsWrapper", "minigrid.wrappers.ImgObsWrapper"]


def _raw(steps, seed=0):
    """The raw RGB observations (H, W, 3) of the same steps, straight from MiniGrid."""
    import minigrid  # noqa: F401  (registers the ids)

    env = ImgObsWrapper(RGBImgObsWrapper(gym.make(ID)))
    out = [env.reset(seed=seed)[0]]
    out += [env.step(a)[0] for a in steps]
    return out


def _play(env, steps, seed=0):
    out = [env.reset(seed=seed)[0]]
    out += [env.step(a)[0] for a in steps]
    return out


STEPS = [2, 1, 2, 0, 2]


def test_the_documented_minigrid_example():
    env = xrl.make_env(f"gym:{ID}", wrappers=RGB)
    obs, info = env.reset(seed=0)
    assert obs.shape == (3, 40, 40) and obs.dtype == np.uint8 and "labels" not in info
    assert env.render().shape[-1] == 3
    assert env.unwrapped.xrl_spec["name"] == f"gym:{ID}"
    assert env.unwrapped.xrl_spec["settings"]["wrappers"] == RGB
    for ours, raw in zip(_play(env, STEPS), _raw(STEPS)):
        np.testing.assert_array_equal(ours, raw.transpose(2, 0, 1))


def test_resize_gray_and_frame_stack_as_computed_by_hand():
    env = xrl.make_env(f"gym:{ID}", wrappers=RGB, resize=[20, 24], gray=True, frame_stack=3)
    assert env.observation_space.shape == (3, 20, 24)
    frames = [
        cv2.cvtColor(cv2.resize(o, (24, 20), interpolation=cv2.INTER_AREA), cv2.COLOR_RGB2GRAY) for o in _raw(STEPS)
    ]
    ours = _play(env, STEPS)
    for t, obs in enumerate(ours):
        want = [frames[max(0, t - k)] for k in (2, 1, 0)]  # oldest first; the reset frame repeated at the start
        np.testing.assert_array_equal(obs, np.stack(want))
    rgb = xrl.make_env(f"gym:{ID}", wrappers=RGB, frame_stack=2, frame_stack_padding="zero")
    first, second = _play(rgb, STEPS[:1])
    raw = _raw(STEPS[:1])
    assert first.shape == (6, 40, 40) and not first[:3].any()  # zero padding, then the frame's 3 channels
    np.testing.assert_array_equal(first[3:], raw[0].transpose(2, 0, 1))
    np.testing.assert_array_equal(second, np.concatenate([raw[0], raw[1]], axis=2).transpose(2, 0, 1))


def test_collect_in_a_gym_env(tmp_path):
    env = xrl.make_env(f"gym:{ID}", wrappers=RGB)
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 40 * 40, env.action_space.n))
    model = xrl.as_model(net, input_shape=(3, 40, 40))
    from xrl.data.collect import collect
    from xrl.data.dataset import StateDataset

    out = collect(
        model,
        episodes=1,
        out=tmp_path / "g.h5",
        env=f"gym:{ID}",
        env_settings={"wrappers": RGB},
        max_steps=4,
        progress=False,
    )
    with StateDataset.open(out) as ds:
        assert len(ds) == 4 and ds.env["name"] == f"gym:{ID}"
        np.testing.assert_array_equal(ds.states([0]).numpy()[0] * 255, _raw([])[0].transpose(2, 0, 1))


@pytest.mark.parametrize(
    ("name", "settings", "words"),
    [
        (ID, {}, "observes a Dict space; expected a Box of uint8 images.*RGBImgObsWrapper"),
        ("CartPole-v1", {}, r"observes Box\(.*\(4,\).*expected a Box of uint8 images"),
        ("No-Such-Env-v0", {}, "a registered Gymnasium id is expected"),
        (ID, {"wrappers": ["os.system"]}, "not allowed; expected a class of gymnasium.wrappers or minigrid.wrappers"),
        (ID, {"wrappers": RGB, "resize": 0}, "resize must be H or"),
        (ID, {"wrappers": RGB, "atari": "sb3"}, "applies to ALE games"),
    ],
)
def test_bad_envs_and_settings_say_what_was_expected(name, settings, words):
    with pytest.raises(ValueError, match=words):
        xrl.make_env(f"gym:{name}", **settings)
