"""Gradient family: guided backprop, Grad-CAM, NormGrad, integrated gradients, SmoothGrad.

Known values on tiny analytic models; the contract itself is tested in test_explainers.py.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from xrl.agents.model import as_model
from xrl.explainers import get_explainer

#: every method of the family with tiny budgets
FAMILY = {
    "gradient": {},
    "guided_backprop": {},
    "grad_cam": {},
    "normgrad": {},
    "integrated_gradients": {"n_steps": 8},
    "smoothgrad": {"n_samples": 5},
}
PER_CHANNEL = ["gradient", "guided_backprop", "integrated_gradients", "smoothgrad"]


def rand(*shape: int, seed: int = 0) -> torch.Tensor:
    return torch.rand(*shape, generator=torch.Generator().manual_seed(seed))


class ReLUNet(nn.Module):
    """conv -> nn.ReLU -> linear on (2, 6, 6) states, 3 scores."""

    def __init__(self, act: nn.Module | None = None) -> None:
        super().__init__()
        self.conv = nn.Conv2d(2, 4, 3, stride=2, padding=1)
        self.act = act if act is not None else nn.ReLU()
        self.head = nn.Linear(4 * 3 * 3, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.act(self.conv(x)).flatten(1))


def relu_model(act: nn.Module | None = None):
    torch.manual_seed(0)
    return as_model(ReLUNet(act), input_shape=(2, 6, 6))


def smooth_model():
    """A smooth non-linear model (tanh), for integrated-gradients completeness."""
    return relu_model(nn.Tanh())


# ---------------------------------------------------------------- every method


@pytest.mark.parametrize("name", sorted(FAMILY))
def test_batch_equals_loop_for_every_batch_size(name):
    model, x = relu_model(), rand(4, 2, 6, 6)
    targets, diff = torch.tensor([0, 2, 1, 2]), (lambda s: s[:, 0] - s[:, 1])
    reference = get_explainer(name, model, **FAMILY[name], batch_size=1000).explain(x, targets=targets)
    for batch_size in (1, 3, 1000):
        explainer = get_explainer(name, model, **FAMILY[name], batch_size=batch_size)
        batch = explainer.explain(x, targets=targets)
        loop = torch.cat([explainer.explain(x[i : i + 1], targets=int(t)) for i, t in enumerate(targets)])
        torch.testing.assert_close(batch, loop, rtol=1e-5, atol=1e-7)
        torch.testing.assert_close(batch, reference, rtol=1e-5, atol=1e-7)
        loop = torch.cat([explainer.explain(x[i : i + 1], targets=diff) for i in range(4)])
        torch.testing.assert_close(explainer.explain(x, targets=diff), loop, rtol=1e-5, atol=1e-7)


class LastFrame(nn.Module):
    """Reads only the last of 4 stacked frames."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 3, 3, padding=1)
        self.act = nn.ReLU()
        self.head = nn.Linear(3 * 6 * 6, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.act(self.conv(x[:, -1:])).flatten(1))


def last_frame_states() -> torch.Tensor:
    x = rand(2, 4, 6, 6)
    x[:, 3, 0, :2] = torch.tensor([0.0, 1.0])  # range 1 whatever the other frames hold (SmoothGrad's sigma)
    return x


@pytest.mark.parametrize("name", PER_CHANNEL)
def test_last_frame_model_gets_exactly_zero_on_other_frames(name):
    torch.manual_seed(0)
    model = as_model(LastFrame(), input_shape=(4, 6, 6), frame_stack=4)
    x = last_frame_states()
    settings = {"base_settings": {"reduce": "sum"}} if name == "smoothgrad" else {"reduce": "sum"}
    explainer = get_explainer(name, model, **FAMILY[name], **settings)
    grads = explainer.channel_gradients(x)
    assert torch.equal(grads[:, :3], torch.zeros_like(grads[:, :3])) and grads[:, 3].abs().sum() > 0
    torch.testing.assert_close(explainer.explain(x), grads[:, 3].abs())  # the explicit sum reduction


@pytest.mark.parametrize("name", sorted(FAMILY))
def test_last_frame_model_maps_ignore_other_frames(name):
    torch.manual_seed(0)
    model = as_model(LastFrame(), input_shape=(4, 6, 6), frame_stack=4)
    x = last_frame_states()
    y = x.clone()
    y[:, :3] = rand(2, 3, 6, 6, seed=5)
    explainer = get_explainer(name, model, **FAMILY[name])
    torch.testing.assert_close(explainer.explain(y), explainer.explain(x), rtol=1e-6, atol=1e-7)


# ---------------------------------------------------------------- integrated gradients


@pytest.mark.parametrize("method, n_steps, tol", [("gausslegendre", 50, 1e-4), ("riemann", 300, 1e-2)])
def test_integrated_gradients_completeness(method, n_steps, tol):
    model, x = smooth_model(), rand(3, 2, 6, 6)
    baselines = {0.0: torch.zeros(2, 6, 6), 0.5: torch.full((2, 6, 6), 0.5), "state": rand(2, 6, 6, seed=9)}
    for baseline, reference in baselines.items():
        setting = reference if baseline == "state" else baseline
        explainer = get_explainer("integrated_gradients", model, baseline=setting, n_steps=n_steps, method=method)
        for targets, f in ((2, lambda s: s[:, 2]), (lambda s: s.logsumexp(-1), lambda s: s.logsumexp(-1))):
            attributions = explainer.channel_gradients(x, targets=targets)
            with torch.no_grad():
                expected = f(model(x)) - f(model(reference.expand_as(x)))
            gap = (attributions.sum((1, 2, 3)) - expected).abs()
            assert (gap <= tol * expected.abs().clamp_min(1e-2)).all(), (baseline, gap, expected)


def test_integrated_gradients_is_zero_when_the_baseline_is_the_state():
    model, x = smooth_model(), rand(1, 2, 6, 6)
    explainer = get_explainer("integrated_gradients", model, baseline=x[0].clone())
    assert torch.equal(explainer.channel_gradients(x), torch.zeros_like(x))
    assert torch.equal(explainer.explain(x, targets=lambda s: s.logsumexp(-1)), torch.zeros(1, 6, 6))


def test_integrated_gradients_riemann_is_the_right_riemann_sum():
    model, x = smooth_model(), rand(2, 2, 6, 6)
    a = get_explainer("integrated_gradients", model, method="riemann", n_steps=7).channel_gradients(x)
    b = get_explainer("integrated_gradients", model, method="riemann_right", n_steps=7).channel_gradients(x)
    assert torch.equal(a, b)
    # two right-Riemann steps from black: (x - 0) * mean of the gradients at x / 2 and at x
    two = get_explainer("integrated_gradients", model, method="riemann", n_steps=2).channel_gradients(x, targets=1)
    gradient = get_explainer("gradient", model)
    grads = (gradient.channel_gradients(x / 2, targets=1) + gradient.channel_gradients(x, targets=1)) / 2
    torch.testing.assert_close(two, grads * x)


@pytest.mark.parametrize(
    "bad, error",
    [
        ({"n_steps": 1}, ValueError),
        ({"n_steps": 2.5}, ValueError),
        ({"method": "simpson"}, ValueError),
        ({"baseline": torch.zeros(3, 6, 6)}, ValueError),
        ({"baseline": torch.zeros(2, 6, 6, dtype=torch.long)}, TypeError),
        ({"baseline": torch.zeros(2, 2, 6, 6)}, ValueError),
        ({"baseline": float("nan")}, TypeError),
        ({"baseline": "black"}, TypeError),
        ({"reduce": "median"}, ValueError),
    ],
)
def test_integrated_gradients_rejects_bad_settings(bad, error):
    with pytest.raises(error):
        get_explainer("integrated_gradients", smooth_model(), **bad)


# ---------------------------------------------------------------- guided backprop


def test_gradient_equals_captums_saliency():
    from captum.attr import Saliency

    model, x = relu_model(), rand(5, 2, 6, 6)
    targets = torch.tensor([0, 2, 1, 1, 0])
    explainer = get_explainer("gradient", model, batch_size=2)
    theirs = Saliency(model).attribute(x.clone().requires_grad_(), target=targets, abs=False)
    torch.testing.assert_close(explainer.channel_gradients(x, targets), theirs)
    value = lambda s: s.logsumexp(-1)  # noqa: E731 - a callable target
    theirs = Saliency(lambda s: value(model(s))).attribute(x.clone().requires_grad_(), abs=False)
    torch.testing.assert_close(explainer.channel_gradients(x, value), theirs)


def test_guided_backprop_without_relus_is_the_gradient():
    model, x = smooth_model(), rand(3, 2, 6, 6)
    for targets in (None, lambda s: s[:, 0] - s[:, 2]):
        guided = get_explainer("guided_backprop", model).channel_gradients(x, targets=targets)
        torch.testing.assert_close(guided, get_explainer("gradient", model).channel_gradients(x, targets=targets))


def test_guided_backprop_hand_computed():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Flatten(), nn.Linear(4, 5), nn.ReLU(), nn.Linear(5, 2))
    model = as_model(net, input_shape=(1, 2, 2))
    x = rand(3, 1, 2, 2) - 0.5
    w1, w2 = net[1].weight.detach(), net[3].weight.detach()
    pre = x.flatten(1) @ w1.T + net[1].bias.detach()  # (3, 5)
    for k in range(2):
        # ReLU passes back max(R, 0) where its input was positive; plain gradient: R where positive
        guided = ((pre > 0) * w2[k].clamp_min(0)) @ w1
        plain = ((pre > 0) * w2[k]) @ w1
        assert not torch.allclose(guided, plain)
        got = get_explainer("guided_backprop", model).channel_gradients(x, targets=k)
        torch.testing.assert_close(got, guided.view(3, 1, 2, 2))


def test_guided_backprop_inplace_relu_and_functional_relu_warning():
    x = rand(3, 2, 6, 6)
    expected = get_explainer("guided_backprop", relu_model()).channel_gradients(x)
    inplace = get_explainer("guided_backprop", relu_model(nn.ReLU(inplace=True))).channel_gradients(x)
    torch.testing.assert_close(inplace, expected)

    class Functional(ReLUNet):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.head(torch.relu(self.conv(x)).flatten(1))

    torch.manual_seed(0)
    model = as_model(Functional(), input_shape=(2, 6, 6))
    with pytest.warns(UserWarning, match="ReLU as a function .* 1 time"):
        get_explainer("guided_backprop", model).explain(x)


# ---------------------------------------------------------------- Grad-CAM


class ChannelReader(nn.Module):
    """Conv ``k x k``, stride ``k``: channel ``c`` is ``(1 + c) *`` the block mean of input channel
    ``c``; score ``c`` is the mean of conv channel ``c`` at ``POSITIONS[c]`` (layer grid)."""

    POSITIONS = ([(1, 1), (1, 2)], [(4, 3)])

    def __init__(self, k: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(2, 2, k, stride=k, bias=False)
        with torch.no_grad():
            self.conv.weight.zero_()
            self.conv.weight[0, 0], self.conv.weight[1, 1] = 1 / k**2, 2 / k**2

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = self.conv(x)
        return torch.stack([torch.stack([a[:, c, i, j] for i, j in self.POSITIONS[c]], 1).mean(1) for c in range(2)], 1)


def channel_reader_states(k: int) -> torch.Tensor:
    """Channel c is bright (0.8) on the input blocks of POSITIONS[c], dim (< 0.2) elsewhere."""
    x = 0.2 * rand(2, 2, 6 * k, 6 * k)
    for c, positions in enumerate(ChannelReader.POSITIONS):
        for i, j in positions:
            x[:, c, i * k : (i + 1) * k, j * k : (j + 1) * k] = 0.8
    return x


def test_grad_cam_equals_captums_layer_grad_cam():
    from captum.attr import LayerAttribution, LayerGradCam

    model, x = relu_model(), rand(5, 2, 6, 6)
    targets = torch.tensor([0, 2, 1, 1, 0])
    explainer = get_explainer("grad_cam", model, batch_size=2)
    layer = dict(model.net.named_modules())[explainer.layer]
    theirs = LayerGradCam(model, layer).attribute(x, target=targets, relu_attributions=True)
    theirs = LayerAttribution.interpolate(theirs, (6, 6), "bilinear")[:, 0]
    torch.testing.assert_close(explainer.explain(x, targets), theirs)


def test_grad_cam_exact_at_full_resolution():
    model = as_model(ChannelReader(1), input_shape=(2, 6, 6))
    x = channel_reader_states(1)
    explainer = get_explainer("grad_cam", model)
    assert explainer.layer == "conv"
    # alpha_c = mean_p d score_c / d A^c(p) = 1 / 36 for the read channel, 0 for the other
    torch.testing.assert_close(explainer.explain(x, targets=0), x[:, 0] / 36)
    torch.testing.assert_close(explainer.explain(x, targets=1), 2 * x[:, 1] / 36)
    torch.testing.assert_close(explainer.explain(x, targets=lambda s: s[:, 1]), 2 * x[:, 1] / 36)


def test_grad_cam_peaks_at_the_read_positions_after_upsampling():
    k = 3
    model = as_model(ChannelReader(k), input_shape=(2, 18, 18))
    x = channel_reader_states(k)
    maps = get_explainer("grad_cam", model).explain_all(x)  # (2, 2, 18, 18)
    assert maps.shape == (2, 2, 18, 18)
    for c, positions in enumerate(ChannelReader.POSITIONS):
        inside = torch.zeros(18, 18, dtype=torch.bool)
        for i, j in positions:
            inside[i * k : (i + 1) * k, j * k : (j + 1) * k] = True
        peak = maps[:, c].flatten(1).argmax(1)
        assert inside.flatten()[peak].all()  # the other, brighter channel does not leak in
        assert (maps[:, c][:, inside].amin(1) > maps[:, c][:, ~inside].amax(1)).all()


def test_grad_cam_and_normgrad_need_a_conv_layer():
    linear = as_model(nn.Sequential(nn.Flatten(), nn.Linear(72, 3)), input_shape=(2, 6, 6))
    for name in ("grad_cam", "normgrad"):
        with pytest.raises(ValueError, match="no nn.Conv2d"):
            get_explainer(name, linear)
        with pytest.raises(ValueError, match="no module named 'nope'.*conv"):
            get_explainer(name, relu_model(), layer="nope")
        with pytest.raises(ValueError, match="feature maps"):  # a 2-d layer
            get_explainer(name, relu_model(), layer="head").explain(rand(2, 2, 6, 6))
        explainer = get_explainer(name, linear, layer="1")  # a named layer, even without convs...
        with pytest.raises(ValueError, match="feature maps"):  # ...must give feature maps
            explainer.explain(rand(2, 2, 6, 6))


def test_grad_cam_layer_setting_names_the_activation():
    model, x = relu_model(), rand(3, 2, 6, 6)
    conv = get_explainer("grad_cam", model).explain(x)
    rectified = get_explainer("grad_cam", model, layer="act").explain(x)
    assert conv.shape == rectified.shape == (3, 6, 6) and (rectified >= 0).all()
    assert not torch.allclose(conv, rectified)


# ---------------------------------------------------------------- NormGrad


def test_normgrad_is_activation_norm_times_gradient_norm():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(2, 3, 1), nn.Flatten(), nn.Linear(3 * 5 * 4, 2))
    model = as_model(net, input_shape=(2, 5, 4))
    x = rand(2, 2, 5, 4)
    with torch.no_grad():
        acts = net[0](x)  # (2, 3, 5, 4)
    w = net[2].weight.detach().view(2, 3, 5, 4)  # d score_k / d acts
    explainer = get_explainer("normgrad", model)
    assert explainer.layer == "0"
    for targets, g in ((1, w[1]), (lambda s: s[:, 0] - s[:, 1], w[0] - w[1])):
        expected = acts.norm(dim=1) * g.norm(dim=0)
        torch.testing.assert_close(explainer.explain(x, targets=targets), expected)


def test_normgrad_upsamples_and_ignores_inplace_ops():
    x = rand(3, 2, 6, 6)
    maps = get_explainer("normgrad", relu_model(), layer="act").explain(x)
    inplace = get_explainer("normgrad", relu_model(nn.ReLU(inplace=True)), layer="conv").explain(x)
    torch.testing.assert_close(inplace, get_explainer("normgrad", relu_model()).explain(x))
    assert maps.shape == (3, 6, 6) and (maps >= 0).all()


# ---------------------------------------------------------------- SmoothGrad


@pytest.mark.parametrize("base", ["gradient", "guided_backprop", "integrated_gradients", "grad_cam", "normgrad"])
def test_smoothgrad_with_zero_noise_is_its_base(base):
    model, x = relu_model(), rand(3, 2, 6, 6)
    settings = {"n_steps": 8} if base == "integrated_gradients" else {}
    smooth = get_explainer("smoothgrad", model, base=base, base_settings=settings, sigma=0.0, n_samples=4, batch_size=5)
    plain = get_explainer(base, model, **settings)
    for targets in (None, 2, lambda s: s.logsumexp(-1)):
        torch.testing.assert_close(smooth.explain(x, targets=targets), plain.explain(x, targets=targets))


def test_smoothgrad_averages_gradients():
    model, x = relu_model(), rand(3, 2, 6, 6)
    explainer = get_explainer("smoothgrad", model, n_samples=6, sigma=0.2, seed=1)
    noisy = explainer.channel_gradients(x, targets=0)
    # by hand: the seeded noise, scaled by 0.2 * each state's range
    noise = torch.randn(6, 2, 6, 6, generator=torch.Generator().manual_seed(1))
    scale = 0.2 * (x.amax((1, 2, 3)) - x.amin((1, 2, 3)))
    copies = (x[:, None] + scale[:, None, None, None, None] * noise).flatten(0, 1)
    grads = get_explainer("gradient", model).channel_gradients(copies, targets=0).view(3, 6, 2, 6, 6)
    torch.testing.assert_close(noisy, grads.mean(1))
    squared = get_explainer("smoothgrad", model, n_samples=6, sigma=0.2, seed=1, squared=True)
    torch.testing.assert_close(squared.channel_gradients(x, targets=0), (grads**2).mean(1))
    assert not torch.allclose(noisy, get_explainer("gradient", model).channel_gradients(x, targets=0))
    other_seed = get_explainer("smoothgrad", model, n_samples=6, sigma=0.2, seed=2).channel_gradients(x, targets=0)
    assert not torch.allclose(noisy, other_seed)


def test_smoothgrad_of_a_linear_model_is_its_gradient():
    torch.manual_seed(0)
    model = as_model(nn.Sequential(nn.Flatten(), nn.Linear(72, 3)), input_shape=(2, 6, 6))
    x = rand(2, 2, 6, 6)
    smooth = get_explainer("smoothgrad", model, sigma=0.5, n_samples=7).explain_all(x)
    torch.testing.assert_close(smooth, get_explainer("gradient", model).explain_all(x))


@pytest.mark.parametrize(
    "bad",
    [
        {"base": "greydanus"},
        {"base": "smoothgrad"},
        {"base": "nope"},
        {"n_samples": 0},
        {"sigma": -0.1},
        {"base_settings": {"reduce": "median"}},
    ],
)
def test_smoothgrad_rejects_bad_settings(bad):
    with pytest.raises(ValueError):
        get_explainer("smoothgrad", relu_model(), **bad)


def test_smoothgrad_channel_gradients_need_a_per_channel_base():
    with pytest.raises(ValueError, match="maps, not per-channel"):
        get_explainer("smoothgrad", relu_model(), base="grad_cam").channel_gradients(rand(1, 2, 6, 6))
