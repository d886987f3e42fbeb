"""Incremental inference (xrl/incremental.py): the scores of local perturbations from the state's
own activations equal a dense forward pass of every perturbed state (an independent computation:
the perturbed batch built here and run through the network), on random networks of every
supported shape and on zoo agents; unsupported networks fall back to the dense path."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from xrl import incremental
from xrl.agents.model import as_model
from xrl.explainers import get_explainer


def rand(*shape, seed=0):
    return torch.rand(*shape, generator=torch.Generator().manual_seed(seed))


class Functional(nn.Module):
    """A chain written with torch.flatten / F.relu in forward, as SB3 and user code do."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(2, 5, 3, stride=2, padding=1)
        self.fc = nn.Linear(5 * 10 * 10, 3)

    def forward(self, x):
        return self.fc(torch.flatten(torch.relu(self.conv(x)), 1))


NETS = {
    # Nature-CNN shape (no padding, strides 4 and 2), small
    "nature": lambda: nn.Sequential(
        nn.Conv2d(4, 8, 8, stride=4),
        nn.ReLU(),
        nn.Conv2d(8, 8, 4, stride=2),
        nn.ReLU(),
        nn.Conv2d(8, 8, 3),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(8 * 7 * 7, 16),
        nn.ReLU(),
        nn.Linear(16, 6),
    ),
    # padding, max pooling, batch norm (eval), a non-square kernel
    "padded": lambda: nn.Sequential(
        nn.Conv2d(2, 6, 3, padding=1),
        nn.BatchNorm2d(6),
        nn.LeakyReLU(0.1),
        nn.MaxPool2d(2),
        nn.Conv2d(6, 4, (3, 5), stride=(1, 2), padding=(1, 2)),
        nn.Tanh(),
        nn.Flatten(),
        nn.Linear(4 * 10 * 5, 5),
    ),
    "functional": Functional,
}
SHAPES = {"nature": (4, 84, 84), "padded": (2, 20, 20), "functional": (2, 20, 20)}


def dense_scores(net, state, fill, masks):
    """Reference: every perturbed state built in full and run through the network."""
    with torch.no_grad():
        perturbed = state * (1 - masks[:, None]) + fill * masks[:, None]
        return net(state[None])[0], net(perturbed)


@pytest.mark.parametrize("name", sorted(NETS))
def test_plan_scores_equal_a_dense_forward_pass(name):
    torch.manual_seed(0)
    net = NETS[name]().eval()
    if name == "padded":  # non-trivial running statistics
        net[1].running_mean.uniform_(-1, 1)
        net[1].running_var.uniform_(0.5, 2)
    shape = SHAPES[name]
    plan = incremental.plan(net)
    assert plan is not None
    state, fill = rand(*shape), rand(*shape, seed=1)
    h, w = shape[1:]
    # boxes of different sizes and places, borders included; soft (Gaussian-like) values inside
    masks = torch.zeros(7, h, w)
    for n, (top, left, size) in enumerate(
        [(0, 0, 5), (h - 5, w - 5, 5), (3, 7, 4), (0, w - 3, 3), (h // 2, 0, 6), (1, 1, 1), (h - 6, w // 3, 6)]
    ):
        masks[n, top : top + size, left : left + size] = rand(size, size, seed=n + 2)
    boxes = incremental.mask_boxes(masks)
    base, perturbed = plan.scores(state, fill, masks, boxes)
    ref_base, ref = dense_scores(net, state, fill, masks)
    torch.testing.assert_close(base, ref_base, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(perturbed, ref, rtol=1e-5, atol=1e-5)


def test_unsupported_networks_have_no_plan():
    assert incremental.plan(nn.Sequential(nn.Flatten(), nn.Linear(12, 2))) is None  # no spatial layer
    assert (
        incremental.plan(nn.Sequential(nn.Conv2d(1, 2, 3), nn.AdaptiveMaxPool2d(1), nn.Flatten(), nn.Linear(2, 2)))
        is None
    )  # global pooling reads everything

    class Residual(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(1, 1, 3, padding=1)
            self.fc = nn.Linear(16, 2)

        def forward(self, x):
            return self.fc((x + self.conv(x)).flatten(1))

    assert incremental.plan(Residual()) is None
    bn = nn.Sequential(nn.Conv2d(1, 2, 3), nn.BatchNorm2d(2), nn.Flatten(), nn.Linear(8, 2))
    plan = incremental.plan(bn)
    assert plan is not None and not plan.usable()  # training mode: batch statistics
    bn.eval()
    assert plan.usable()


@pytest.mark.parametrize(
    "name,settings",
    [
        ("occlusion", {}),
        ("occlusion", {"window": 12, "stride": 6, "fill": 0.5}),
        ("greydanus", {"stride": 7, "radius": 2.0}),
        ("sarfa", {"stride": 7, "radius": 2.0}),
    ],
)
def test_incremental_maps_equal_dense_maps(name, settings):
    torch.manual_seed(0)
    model = as_model(NETS["nature"](), input_shape=(4, 84, 84))
    x = rand(2, 4, 84, 84)
    dense = get_explainer(name, model, **settings)
    fast = get_explainer(name, model, incremental=True, **settings)
    torch.testing.assert_close(fast.explain_all(x), dense.explain_all(x), rtol=0, atol=1e-4)
    torch.testing.assert_close(fast.explain(x), dense.explain(x), rtol=0, atol=1e-4)
    assert (fast.explain_all(x) - dense.explain_all(x)).abs().max() <= 1e-4 * max(1.0, dense.explain_all(x).abs().max())


def test_incremental_falls_back_to_dense_for_unsupported_networks():
    net = nn.Sequential(
        nn.Conv2d(2, 3, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(2), nn.Flatten(), nn.Linear(12, 3)
    )
    model = as_model(net, input_shape=(2, 12, 12))
    x = rand(2, 2, 12, 12)
    settings = {"window": 4, "stride": 2}
    fast = get_explainer("occlusion", model, incremental=True, **settings).explain_all(x)
    assert torch.equal(fast, get_explainer("occlusion", model, **settings).explain_all(x))


def test_incremental_setting_is_checked():
    model = as_model(NETS["nature"](), input_shape=(4, 84, 84))
    with pytest.raises(ValueError, match="incremental"):
        get_explainer("occlusion", model, incremental="yes")


ZOO = Path(__file__).resolve().parents[1] / "zoo"


@pytest.mark.slow
@pytest.mark.parametrize("agent", ["breakout", "red-fetch-green"])
def test_incremental_occlusion_on_zoo_agents(agent):
    if not (ZOO / agent / "agent.pt").exists():
        pytest.skip(f"zoo agent {agent} not present")
    from xrl import load_agent

    model = load_agent(str(ZOO / agent / "agent.pt"))
    assert incremental.plan(model.net) is not None  # the zoo's CNN agents take the incremental path
    x = rand(2, *model.input_shape)
    dense = get_explainer("occlusion", model).explain_all(x)
    fast = get_explainer("occlusion", model, incremental=True).explain_all(x)
    assert (fast - dense).abs().max() <= 1e-4
