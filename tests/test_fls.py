"""FLS, DAQN and RS-PPO architectures and the attention explainer: sizes against the paper's
Table 2, receptive fields against autograd, drawing a single cell, save -> load, refusals."""

from __future__ import annotations

import math

import gymnasium as gym
import numpy as np
import pytest
import torch
from stable_baselines3 import PPO
from stable_baselines3.common.vec_env import DummyVecEnv
from torch import nn

import xrl
from xrl.agents.attention import VARIANTS, AttentionExtractor, FLSModule, ReceptiveField, draw, has_attention
from xrl.agents.load import build_policy, load_agent, model_from_policy, save_agent
from xrl.agents.nets import ARCHS, GridCNN
from xrl.explainers import get_explainer

ATARI = (4, 84, 84)
GRID = (3, 64, 64)


def extractor(arch: str, shape=ATARI) -> AttentionExtractor:
    torch.manual_seed(0)
    return build_policy(arch, shape, 4).features_extractor


# --------------------------------------------------------------------------- sizes (Table 2)

#: FLS Table 2: parameters of the whole PPO network (Breakout: 4 actions, policy + value heads)
TABLE_2 = {
    "nature_cnn": 1_686_693,
    "daqn": 130_726,
    "rs_ppo": 1_720_999,
    "sparse_fls": 1_836_710,
    "sparse_fls_pool": 263_846,
    "dense_fls_pool": 280_358,
    "sparse_fls_first": 1_762_982,
    "sparse_fls_each": 2_063_016,
}


@pytest.mark.parametrize("arch", sorted(TABLE_2))
def test_parameter_counts_match_the_paper(arch):
    policy = build_policy(arch, ATARI, 4)
    assert sum(p.numel() for p in policy.parameters()) == TABLE_2[arch]


def test_every_variant_is_registered_for_both_trunks():
    for name in VARIANTS:
        assert name in ARCHS and f"grid_{name}" in ARCHS


@pytest.mark.parametrize("shape", [GRID, (3, 8, 8)])
def test_grid_trunk_is_the_grid_cnn_trunk(shape):
    space = gym.spaces.Box(0, 255, shape, np.uint8)
    ours = [
        (m.in_channels, m.out_channels, m.kernel_size, m.stride, m.padding)
        for m in AttentionExtractor(space, 256, convs="grid_sparse").convs
    ]
    theirs = [
        (m.in_channels, m.out_channels, m.kernel_size, m.stride, m.padding)
        for m in GridCNN(space).modules()
        if isinstance(m, nn.Conv2d)
    ]
    assert ours == theirs


# --------------------------------------------------------------------------- the attention modules


def test_fls_with_zero_weights_gives_ln2_and_softplus2_gives_one():
    x = torch.rand(2, 8, 5, 5)
    for base2, expected in ((False, math.log(2)), (True, 1.0)):
        fls = FLSModule(8, base2=base2)
        for p in fls.parameters():
            nn.init.zeros_(p)
        torch.testing.assert_close(fls(x), torch.full((2, 1, 5, 5), expected))


@pytest.mark.parametrize(
    "arch,total",
    [("sparse_fls_norm", 1.0), ("daqn", 1.0), ("rs_ppo", 2.0), ("grid_daqn", 1.0), ("grid_rs_ppo_nopad", 2.0)],
)
def test_normalised_attention_sums_to_its_total(arch, total):
    shape = GRID if arch.startswith("grid") else ATARI
    ext = extractor(arch, shape)
    (att,) = ext.attention_maps(torch.rand(3, *shape))
    torch.testing.assert_close(att.sum((1, 2)), torch.full((3,), total))


def test_attention_is_positive_and_shaped_like_the_last_feature_map():
    assert [a.shape for a in extractor("sparse_fls").attention_maps(torch.rand(2, *ATARI))] == [(2, 7, 7)]
    assert [a.shape for a in extractor("sparse_fls_each").attention_maps(torch.rand(2, *ATARI))] == [
        (2, 20, 20),
        (2, 9, 9),
        (2, 7, 7),
    ]
    assert [a.shape for a in extractor("grid_sparse_fls", GRID).attention_maps(torch.rand(2, *GRID))] == [(2, 8, 8)]
    assert [a.shape for a in extractor("rs_ppo").attention_maps(torch.rand(2, *ATARI))] == [(2, 7, 7)]
    assert all((a > 0).all() for a in extractor("sparse_fls_1x1").attention_maps(torch.rand(2, *ATARI)))


# --------------------------------------------------------------------------- receptive fields and drawing


def cell_support(ext: AttentionExtractor, k: int, shape, i: int, j: int) -> torch.Tensor:
    """Input pixels that feature cell (i, j) after conv ``k`` depends on, by autograd: the trunk with
    all-ones weights and zero biases on an all-ones input (every ReLU passes, no cancellation)."""
    convs = nn.ModuleList(
        nn.Conv2d(c.in_channels, c.out_channels, c.kernel_size, c.stride, c.padding) for c in ext.convs[: k + 1]
    )
    for c in convs:
        nn.init.ones_(c.weight)
        nn.init.zeros_(c.bias)
    x = torch.ones(1, *shape, requires_grad=True)
    y = torch.nn.functional.pad(x, (ext.input_padding,) * 4)
    for c in convs:
        y = torch.relu(c(y))
    y[0, :, i, j].sum().backward()
    return x.grad[0].sum(0) > 0  # (H, W)


CASES = [
    ("sparse_fls", ATARI),
    ("rs_ppo", ATARI),
    ("dense_fls_pool", (4, 24, 24)),
    ("sparse_fls_first", ATARI),
    ("sparse_fls_each", ATARI),
    ("grid_sparse_fls", GRID),
    ("grid_rs_ppo", GRID),
    ("grid_daqn", (3, 8, 8)),
    ("grid_dense_fls_pool", (3, 20, 20)),
]


@pytest.mark.parametrize("arch,shape", CASES)
def test_a_single_active_cell_is_drawn_exactly_on_its_receptive_field(arch, shape):
    ext = extractor(arch, shape)
    maps = ext.attention_maps(torch.rand(1, *shape))
    for m, (att, k) in enumerate(zip(maps, ext.after)):
        h, w = att.shape[1:]
        for i, j in {(0, 0), (h - 1, w - 1), (h // 2, w // 3)}:
            cells = [torch.zeros_like(a) for a in maps]
            cells[m][0, i, j] = 1.0
            drawn = draw(cells, ext.receptive_fields, shape[1:])
            support = cell_support(ext, k, shape, i, j)
            assert torch.equal(drawn[0], support.float()), (arch, m, i, j)


def test_drawing_adds_each_cell_over_its_field():
    ext = extractor("sparse_fls")
    (att,) = ext.attention_maps(torch.rand(2, *ATARI))
    (field,) = ext.receptive_fields
    assert (field.size, field.stride, field.offset) == (36, 8, 0)  # authors' visualisation parameters
    expected = torch.zeros(2, 84, 84)
    for i in range(7):
        for j in range(7):
            expected[:, 8 * i : 8 * i + 36, 8 * j : 8 * j + 36] += att[:, i, j, None, None]
    torch.testing.assert_close(draw([att], [field], (84, 84)), expected)
    ones = draw([torch.ones(1, 7, 7)], [field], (84, 84))[0]
    assert ones[0, 0] == 1 and ones[40, 40] == 25  # rows 40: cells 1..5 overlap, squared


def test_transposed_mean_gives_each_pixel_the_mean_of_the_cells_that_see_it():
    (field,) = extractor("sparse_fls").receptive_fields
    att = torch.rand(2, 7, 7)
    total, count = torch.zeros(2, 84, 84), torch.zeros(84, 84)
    for i in range(7):
        for j in range(7):
            total[:, 8 * i : 8 * i + 36, 8 * j : 8 * j + 36] += att[:, i, j, None, None]
            count[8 * i : 8 * i + 36, 8 * j : 8 * j + 36] += 1
    torch.testing.assert_close(draw([att], [field], (84, 84), mode="transposed_mean"), total / count)
    # a uniform attention draws uniform (the paper's drawing peaks where most fields overlap)
    flat = draw([torch.full((1, 7, 7), 0.3)], [field], (84, 84), mode="transposed_mean")
    torch.testing.assert_close(flat, torch.full((1, 84, 84), 0.3))
    # pixels no field covers (the padded Red-Fetch-Green trunk's fields end before the last rows) get 0
    grid = draw([torch.ones(1, 2, 2)], [ReceptiveField(18, 8, -7)], (30, 30), mode="transposed_mean")[0]
    assert torch.equal(grid[:19, :19], torch.ones(19, 19)) and grid[19:].abs().sum() == 0


def test_bilinear_upscaling_of_a_constant_grid_is_constant():
    ext = extractor("sparse_fls")
    up = draw([torch.full((1, 7, 7), 0.3)], ext.receptive_fields, (84, 84), mode="bilinear")
    torch.testing.assert_close(up, torch.full((1, 84, 84), 0.3))
    with pytest.raises(ValueError, match="transposed"):
        draw([torch.ones(1, 7, 7)], ext.receptive_fields, (84, 84), mode="cubic")


def test_nearest_upscaling_puts_each_cell_on_its_block():
    att = torch.zeros(1, 8, 8)
    att[0, 2, 5] = 1.0
    up = draw([att], [ReceptiveField(18, 8, -7)], (64, 64), mode="nearest")[0]
    expected = torch.zeros(64, 64)
    expected[16:24, 40:48] = 1.0  # tile (2, 5) of the Red-Fetch-Green screen
    torch.testing.assert_close(up, expected)


# --------------------------------------------------------------------------- training, save -> load


class RandomFrames(gym.Env):
    """Random uint8 stacks of the Atari layout; reward 1 for action 0 (something to learn)."""

    observation_space = gym.spaces.Box(0, 255, ATARI, np.uint8)
    action_space = gym.spaces.Discrete(4)

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        return self.observation_space.sample(), {}

    def step(self, action):
        return self.observation_space.sample(), float(action == 0), False, False, {}


TRAINED = [
    "sparse_fls",
    "sparse_fls_pool",
    "sparse_fls_norm",
    "sparse_fls_1x1",
    "sparse_fls_sp2",
    "sparse_fls_norelu",
    "sparse_fls_norelu_pool",
    "sparse_fls_first",
    "sparse_fls_each",
    "daqn",
    "rs_ppo",
    "rs_ppo_nopad",
]


@pytest.mark.parametrize("arch", TRAINED)
def test_trains_with_sb3_ppo_and_loads_with_identical_actions(arch, tmp_path):
    env = DummyVecEnv([RandomFrames])
    env.seed(0)
    algo = PPO(
        "CnnPolicy",
        env,
        n_steps=32,
        batch_size=16,
        n_epochs=1,
        seed=0,
        device="cpu",
        policy_kwargs=ARCHS.get(arch).policy_kwargs(),
    )
    before = {k: v.clone() for k, v in algo.policy.state_dict().items()}
    algo.learn(32)
    assert any(not torch.equal(before[k], v) for k, v in algo.policy.state_dict().items())  # it trained
    path = save_agent(algo, tmp_path / "agent.pt", arch=arch, card={"what": "test"})
    loaded = load_agent(path)
    trained = model_from_policy(algo.policy)
    obs = np.stack([RandomFrames.observation_space.sample() for _ in range(6)])
    np.testing.assert_array_equal(loaded.act(obs), trained.act(obs))
    states = loaded.preprocess(obs)
    torch.testing.assert_close(loaded(states), trained(states), rtol=0, atol=0)
    maps = get_explainer("attention", loaded).explain(states)
    torch.testing.assert_close(maps, get_explainer("attention", trained).explain(states), rtol=0, atol=0)


@pytest.mark.parametrize("arch", ["dense_fls_pool", "dense_fls_norelu_pool"])
def test_dense_variants_save_and_load(arch, tmp_path):  # a full PPO update of the dense block takes seconds
    algo = PPO(
        "CnnPolicy",
        DummyVecEnv([RandomFrames]),
        n_steps=8,
        batch_size=8,
        seed=0,
        device="cpu",
        policy_kwargs=ARCHS.get(arch).policy_kwargs(),
    )
    loaded = load_agent(save_agent(algo, tmp_path / "agent.pt", arch=arch, card={}))
    obs = np.stack([RandomFrames.observation_space.sample() for _ in range(2)])
    np.testing.assert_array_equal(loaded.act(obs), model_from_policy(algo.policy).act(obs))
    assert get_explainer("attention", loaded).explain(loaded.preprocess(obs)).shape == (2, 84, 84)


def test_train_agent_command_path_on_red_fetch_green(tmp_path):
    from xrl.train.agent import AgentArgs, train_agent

    args = AgentArgs(
        env="red-fetch-green",
        arch="grid_sparse_fls",
        total_timesteps=64,
        n_envs=2,
        n_steps=32,
        batch_size=32,
        eval_episodes=1,
        checkpoint_every=64,
        out=str(tmp_path),
        progress=False,
    )
    path = train_agent(args)
    pt, zip_ = load_agent(path), load_agent(tmp_path / "checkpoint.zip")  # xrl checkpoint vs SB3 zip
    env = xrl.make_env("red-fetch-green")
    obs = np.stack([env.reset(seed=s)[0] for s in range(4)])
    np.testing.assert_array_equal(pt.act(obs), zip_.act(obs))
    states = pt.preprocess(obs)
    for upsample in ("transposed", "bilinear", "nearest"):
        a = get_explainer("attention", pt, upsample=upsample).explain(states)
        assert a.shape == (4, 64, 64) and torch.equal(
            a, get_explainer("attention", zip_, upsample=upsample).explain(states)
        )


# --------------------------------------------------------------------------- the explainer's refusals


def test_attention_explainer_refuses_models_without_attention():
    model = model_from_policy(build_policy("nature_cnn", ATARI, 4))
    assert not has_attention(model)
    with pytest.raises(ValueError, match="needs an agent with an attention module.*sparse_fls"):
        get_explainer("attention", model)
    fls = model_from_policy(build_policy("sparse_fls", ATARI, 4))
    assert has_attention(fls)
    with pytest.raises(ValueError, match="upsample must be one of"):
        get_explainer("attention", fls, upsample="cubic")
    with pytest.raises(ValueError, match="no attention module named 'head'.*features_extractor"):
        get_explainer("attention", fls, module="head")


def test_attention_explainer_draws_the_named_module():
    policy = build_policy("sparse_fls", ATARI, 4)
    model = model_from_policy(policy)
    x = torch.rand(2, *ATARI)
    name = next(n for n, m in model.named_modules() if m is policy.features_extractor)
    explained = get_explainer("attention", model, module=name).explain(x)
    expected = draw(policy.features_extractor.attention_maps(x), policy.features_extractor.receptive_fields, (84, 84))
    assert explained.shape == (2, 84, 84)
    torch.testing.assert_close(explained, expected)


def test_cam_methods_default_to_the_trunks_last_conv():
    policy = build_policy("sparse_fls_each", ATARI, 4)
    layers = model_from_policy(policy).conv_layers()
    assert list(layers.values())[-1] is policy.features_extractor.convs[-1]
