"""Metrics: known values on toy models, oracle > random > inverted, batch-size invariance, errors."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from xrl import as_model
from xrl.explainers.base import Explainer
from xrl.metrics import METRICS, get_metric, list_metrics
from xrl.metrics.base import CATEGORIES
from xrl.metrics.faithfulness import Substrate
from xrl.ops import gaussian_blur

# --- toy models and explainers ------------------------------------------------------------------


class TopRowFraction(nn.Module):
    """2 classes on (1, 2, 2) states; p(class 0) = mean of the top row, exactly."""

    def forward(self, x):
        a = x[:, 0, 0, :].mean(dim=1)
        return torch.stack([a.log(), (1 - a).log()], dim=1)


class Linear2(nn.Module):
    """logits = [sum(w * x) - bias, 0] on one-channel states."""

    def __init__(self, w: torch.Tensor, bias: float = 0.0):
        super().__init__()
        self.w = nn.Parameter(w.clone(), requires_grad=False)
        self.bias = bias

    def forward(self, x):
        z = (x[:, 0] * self.w).flatten(1).sum(1) - self.bias
        return torch.stack([z, torch.zeros_like(z)], dim=1)


class FirstPixel(nn.Module):
    """logits = [x[0, 0, 0], 0.5]: action 0 iff the first pixel is above 0.5."""

    def forward(self, x):
        z = x[:, 0, 0, 0]
        return torch.stack([z, torch.full_like(z, 0.5)], dim=1)


class MeanAboveHalf(nn.Module):
    def forward(self, x):
        z = x.flatten(1).mean(1) - 0.5
        return torch.stack([z, torch.zeros_like(z)], dim=1)


class Scaled(Explainer):
    """e(x) = c * x on one-channel states: its Lipschitz constant is |c|."""

    def __init__(self, model, *, c: float):
        super().__init__(model)
        self.c = c

    def _explain(self, states, target_fn):
        return self.c * states[:, 0]


class Constant(Explainer):
    def _explain(self, states, target_fn):
        return torch.ones(states.shape[0], *states.shape[2:])


class TargetIndex(Explainer):
    """A map filled with the explained action's index (reads the target back from target_fn)."""

    def _explain(self, states, target_fn):
        k = self.model.n_actions
        index = target_fn(torch.arange(k, dtype=torch.float32).expand(states.shape[0], k))
        return index[:, None, None].expand(-1, *states.shape[2:])


def fraction_model():
    return as_model(TopRowFraction(), input_shape=(1, 2, 2), n_actions=2)


TOP = torch.tensor([[[1.0, 1.0], [0.0, 0.0]]])
BOTTOM = torch.tensor([[[0.0, 0.0], [1.0, 1.0]]])


# --- deletion / insertion -----------------------------------------------------------------------


@pytest.mark.parametrize(
    "name, saliency, expected, protocol",
    [
        ("deletion", TOP, 0.25, "rise"),  # p = 1, 1/2, 0, 0, 0
        ("deletion", BOTTOM, 0.75, "rise"),  # p = 1, 1, 1, 1/2, 0
        ("insertion", TOP, 0.75, "rise"),  # p = 0, 1/2, 1, 1, 1
        ("insertion", BOTTOM, 0.25, "rise"),  # p = 0, 0, 0, 1/2, 1
        ("deletion", TOP, 0.25, "xrl"),
        ("deletion", torch.ones(1, 2, 2), 0.25, "xrl"),  # ties: reading order, top row first
        ("deletion", torch.ones(1, 2, 2), 0.75, "rise"),  # ties: np.flip(stable argsort), last pixel first
    ],
)
def test_curve_auc_by_hand(name, saliency, expected, protocol):
    metric = get_metric(name, protocol=protocol, substrate="black", step_fraction=0.25)
    value = metric(model=fraction_model(), states=torch.ones(1, 1, 2, 2), saliency=saliency)
    assert value.dtype == torch.float32 and value.shape == (1,)
    assert value.item() == pytest.approx(expected, abs=1e-7)


@pytest.mark.parametrize("protocol, sign", [("xrl", -1.0), ("rise", 1.0)])
def test_ties_are_broken_deterministically(protocol, sign):
    # xrl: reading order (first pixel first); rise: np.flip(np.argsort(s, kind="stable")) (last first)
    w = torch.randn(10, 10, generator=torch.Generator().manual_seed(2))
    model = as_model(Linear2(w), input_shape=(1, 10, 10))
    states = torch.rand(1, 1, 10, 10, generator=torch.Generator().manual_seed(3))
    metric = get_metric("deletion", protocol=protocol, substrate="black", step_fraction=0.03)
    _, tied = metric.curve(model=model, states=states, saliency=torch.ones(1, 10, 10))
    _, ordered = metric.curve(model=model, states=states, saliency=sign * torch.arange(100.0).view(1, 10, 10))
    assert torch.equal(tied, ordered)


@pytest.mark.parametrize(
    "protocol, x, auc",
    [
        ("xrl", [0.0, 0.75, 1.0], 0.375),  # x = fraction of pixels moved
        ("rise", [0.0, 0.5, 1.0], 0.25),  # x = i / n_steps, RISE's auc = (sum - first/2 - last/2) / n_steps
    ],
)
def test_curve_points_and_short_last_step(protocol, x, auc):
    metric = get_metric("deletion", protocol=protocol, substrate="black", step_fraction=0.75)  # 3 pixels, then 1
    fractions, scores = metric.curve(model=fraction_model(), states=torch.ones(1, 1, 2, 2), saliency=TOP)
    assert fractions.tolist() == x
    assert scores.tolist() == [[1.0, 0.0, 0.0]]
    assert metric(model=fraction_model(), states=torch.ones(1, 1, 2, 2), saliency=TOP).item() == auc


def test_logit_score_by_hand():
    model = as_model(Linear2(torch.tensor([[4.0, 3.0], [2.0, 1.0]])), input_shape=(1, 2, 2))
    metric = get_metric("deletion", substrate="black", step_fraction=0.25, score="logit")
    saliency = torch.tensor([[[4.0, 3.0], [2.0, 1.0]]])
    # logit = 10, 6, 3, 1, 0 -> 0.25 * (8 + 4.5 + 2 + 0.5)
    assert metric(model=model, states=torch.ones(1, 1, 2, 2), saliency=saliency).item() == pytest.approx(3.75)


def test_all_channels_are_perturbed_together():
    # the model reads only channel 1 (the last stacked frame): deleting a location must reach it
    net = nn.Sequential(nn.Conv2d(2, 1, 1, bias=False), nn.Flatten(), nn.Linear(4, 2))
    with torch.no_grad():
        net[0].weight.copy_(torch.tensor([0.0, 1.0]).view(1, 2, 1, 1))
    model = as_model(net, input_shape=(2, 2, 2))
    states = torch.rand(1, 2, 2, 2) + 0.5
    target = model(states).argmax(1)
    _, scores = get_metric("deletion", substrate="black", step_fraction=0.5).curve(
        model=model, states=states, saliency=TOP
    )
    top_removed = states.clone()
    top_removed[:, :, 0, :] = 0
    expected = [model.probs(s)[0, target].item() for s in (states, top_removed, torch.zeros_like(states))]
    assert scores[0].tolist() == pytest.approx(expected, abs=1e-6)


def linear_setup(b=4, side=6):
    gen = torch.Generator().manual_seed(0)
    w = torch.rand(side, side, generator=gen) + 0.1
    states = torch.rand(b, 1, side, side, generator=gen) * 0.8 + 0.2
    model = as_model(Linear2(w, bias=float((w * 0.3).sum())), input_shape=(1, side, side))
    oracle = w * states[:, 0]  # each pixel's contribution to the target logit (vs black)
    random = torch.rand(b, side, side, generator=gen)
    return model, states, oracle, random


def test_oracle_beats_random_beats_inverted():
    model, states, oracle, random = linear_setup()
    for name in ("deletion", "insertion"):
        metric = get_metric(name, substrate="black", step_fraction=0.05)
        o, r, i = (metric(model=model, states=states, saliency=s) for s in (oracle, random, -oracle))
        if name == "deletion":  # lower is better
            assert metric.higher_is_better is False
            assert (o < r).all() and (r < i).all()
        else:
            assert metric.higher_is_better is True
            assert (o > r).all() and (r > i).all()


@pytest.mark.parametrize("substrate", ["blur", "noise", "mean", "black"])
def test_batch_size_and_batch_composition_never_change_the_value(substrate):
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(2, 3, 3), nn.ReLU(), nn.Flatten(), nn.Linear(3 * 4 * 4, 3))
    model = as_model(net, input_shape=(2, 6, 6))
    states, saliency = torch.rand(3, 2, 6, 6), torch.rand(3, 6, 6)
    for name in ("deletion", "insertion"):
        values = [
            get_metric(name, substrate=substrate, step_fraction=0.1, batch_size=n)(
                model=model, states=states, saliency=saliency
            )
            for n in (1, 5, 1000)
        ]
        for v in values[1:]:
            torch.testing.assert_close(v, values[0], rtol=0, atol=1e-6)
        alone = get_metric(name, substrate=substrate, step_fraction=0.1)(
            model=model, states=states[1:2], saliency=saliency[1:2]
        )
        torch.testing.assert_close(alone, values[0][1:2], rtol=0, atol=1e-6)


def test_substrates():
    states = torch.rand(2, 3, 5, 4)
    constant = torch.full((1, 2, 5, 4), 0.3)
    torch.testing.assert_close(gaussian_blur(constant, 5.0, kernel_size=31), constant)  # borders replicated
    blurred = Substrate("blur", blur_sigma=1.0)(states)  # kernel 2 * ceil(3 * 1) + 1 = 7 taps
    g = torch.exp(-0.5 * torch.arange(-3.0, 4.0) ** 2)
    g = torch.outer(g, g) / g.sum() ** 2
    padded = torch.nn.functional.pad(states, (3, 3, 3, 3), mode="replicate")
    expected = torch.nn.functional.conv2d(padded.flatten(0, 1)[:, None], g[None, None]).view_as(states)
    torch.testing.assert_close(blurred, expected)
    noise = Substrate("noise", seed=3)(states)
    assert torch.equal(noise, Substrate("noise", seed=3)(states)) and torch.equal(noise[0], noise[1])
    assert not torch.equal(noise, Substrate("noise", seed=4)(states))
    assert ((noise >= 0) & (noise < 1)).all()
    mean = Substrate("mean")(states)
    torch.testing.assert_close(mean[1, 2, 4, 3], states[1, 2].mean())
    background = torch.rand(3, 5, 4)
    assert torch.equal(Substrate("background", background=background)(states)[1], background)
    with pytest.raises(ValueError, match=r"background has shape \(3, 4, 5\)"):
        Substrate("background", background=torch.rand(3, 4, 5))(states)


def test_blur_substrate_on_a_flat_state_leaves_the_curve_flat():
    model, _, oracle, _ = linear_setup(b=1)
    states = torch.full((1, 1, 6, 6), 0.7)
    p = model.probs(states).max().item()
    for name in ("deletion", "insertion"):
        # xrl's blur replicates the borders (RISE's zero-padded blur darkens them)
        value = get_metric(name, protocol="xrl", substrate="blur", step_fraction=0.1)(
            model=model, states=states, saliency=oracle
        )
        assert value.item() == pytest.approx(p, abs=1e-6)


def test_targets_choose_the_curve():
    model = fraction_model()
    states = torch.ones(1, 1, 2, 2)
    metric = get_metric("deletion", substrate="black", step_fraction=0.25)
    # p(class 1) = 1 - p(class 0) = 0, 1/2, 1, 1, 1 -> 0.75
    value = metric(model=model, states=states, saliency=TOP, targets=torch.tensor([1]))
    assert value.item() == pytest.approx(0.75)


# --- accuracy ------------------------------------------------------------------------------------


def test_accuracy_by_hand():
    model = as_model(FirstPixel(), input_shape=(1, 1, 2))
    states = torch.ones(4, 1, 1, 2)  # action 0 on every state
    saliency = torch.tensor([[[1.0, 0.0]], [[0.0, 1.0]], [[0.3, 0.3]], [[5.0, 2.0]]])
    value = get_metric("accuracy")(model=model, states=states, saliency=saliency)
    assert value.tolist() == [1.0, 0.0, 0.0, 1.0]  # kept / first pixel blacked out / constant keeps nothing
    raw = get_metric("accuracy", normalize="none")
    masks = torch.tensor([[[0.6, 0.0]], [[0.4, 1.0]]])
    assert raw(model=model, states=states[:2], saliency=masks).tolist() == [1.0, 0.0]
    # "why action 1?": the map hiding the first pixel keeps action 1
    assert get_metric("accuracy")(
        model=model, states=states[:1], saliency=saliency[1:2], targets=torch.tensor([1])
    ).tolist() == [1.0]
    with pytest.raises(ValueError, match="normalize='none' needs saliency in"):
        raw(model=model, states=states[:1], saliency=torch.full((1, 1, 2), 2.0))


# --- sparseness ----------------------------------------------------------------------------------


def test_gini_known_values():
    n = 25
    metric = get_metric("sparseness")
    uniform = torch.stack([torch.full((5, 5), 0.2), torch.full((5, 5), -2.0)])
    assert metric(states=torch.zeros(2, 1, 5, 5), saliency=uniform).tolist() == [0.0, 0.0]
    one_hot = torch.zeros(2, 5, 5)
    one_hot[0, 1, 3], one_hot[1, 4, 4] = 3.0, -0.5
    expected = torch.tensor((n - 1) / n, dtype=torch.float32)
    assert torch.equal(metric(states=torch.zeros(2, 1, 5, 5), saliency=one_hot), expected.expand(2))
    half = torch.tensor([[[0.0, 1.0], [1.0, 0.0]]])  # two equal values among four -> 1/2
    assert metric(states=torch.zeros(1, 1, 2, 2), saliency=half).item() == pytest.approx(0.5)
    assert metric(states=torch.zeros(1, 1, 2, 2), saliency=torch.zeros(1, 2, 2)).isnan().all()


# --- localization --------------------------------------------------------------------------------


def brute_force_auc(score, labels):
    pos = score[labels == 1].tolist()
    neg = score[labels == 0].tolist()
    wins = sum(1.0 if p > q else 0.5 if p == q else 0.0 for p in pos for q in neg)
    return wins / (len(pos) * len(neg))


def test_localization_known_values():
    labels = torch.tensor([[[1, 0, 0], [0, -1, 1], [0, 0, 0]]]).expand(3, 3, 3)
    important = (labels[:1] == 1).float()
    saliency = torch.cat([important, 1 - important, torch.full((1, 3, 3), 0.4)])
    out = get_metric("localization")(states=torch.zeros(3, 1, 3, 3), saliency=saliency, labels=labels)
    assert set(out) == {"auc", "important", "unimportant"}
    assert out["auc"].tolist() == [1.0, 0.0, 0.5]
    assert out["important"].tolist() == [2.0, 0.0, 0.0]
    assert out["unimportant"].tolist() == [0.0, 6.0, 0.0]  # the excluded pixel is not counted


def test_localization_sums_are_of_minmax_normalised_saliency():
    saliency = torch.tensor([[[2.0, 1.0], [-2.0, 4.0]]])  # -> [[2/3, 1/2], [0, 1]]
    labels = torch.tensor([[[1, 0], [0, -1]]])
    out = get_metric("localization")(states=torch.zeros(1, 1, 2, 2), saliency=saliency, labels=labels)
    assert out["important"].item() == pytest.approx(2 / 3)
    assert out["unimportant"].item() == pytest.approx(0.5)


def test_localization_auc_matches_brute_force_with_ties():
    gen = torch.Generator().manual_seed(1)
    saliency = torch.randint(0, 4, (4, 5, 6), generator=gen).float()  # many ties
    labels = torch.randint(-1, 2, (4, 5, 6), generator=gen)
    out = get_metric("localization")(states=torch.zeros(4, 1, 5, 6), saliency=saliency, labels=labels)
    for i in range(4):
        assert out["auc"][i].item() == pytest.approx(brute_force_auc(saliency[i], labels[i]), abs=1e-7)


def test_localization_nan_without_positives_or_negatives():
    labels = torch.tensor([[[0, 0], [-1, 0]], [[1, 1], [-1, -1]]])
    out = get_metric("localization")(states=torch.zeros(2, 1, 2, 2), saliency=torch.rand(2, 2, 2), labels=labels)
    assert out["auc"].isnan().all()
    assert out["important"].isfinite().all()


def test_localization_directions():
    metric = get_metric("localization")
    assert metric.outputs[0] == "auc"
    assert metric.higher_is_better == {"auc": True, "important": True, "unimportant": False}


# --- lipschitz -----------------------------------------------------------------------------------


def one_channel_model(h=3, w=3):
    return as_model(Linear2(torch.ones(h, w)), input_shape=(1, h, w))


@pytest.mark.parametrize("c", [-2.5, 0.7])
def test_lipschitz_of_scaled_input_is_abs_c(c):
    # on raw maps (protocol "xrl-raw", scale-dependent); the default normalises every map
    model = one_channel_model()
    explainer = Scaled(model, c=c)
    states = torch.rand(3, 1, 3, 3)
    metric = get_metric("lipschitz", protocol="xrl-raw", radius=0.1, n_samples=5, batch_size=4)
    value = metric(states=states, saliency=explainer.explain(states), explainer=explainer)
    torch.testing.assert_close(value, torch.full((3,), abs(c)), rtol=1e-5, atol=0)


def test_lipschitz_of_constant_explanation_is_zero_and_batch_free():
    model = one_channel_model()
    explainer = Constant(model)
    states = torch.rand(3, 1, 3, 3)
    metric = get_metric("lipschitz", n_samples=4)
    assert metric(states=states, saliency=explainer.explain(states), explainer=explainer).tolist() == [0.0] * 3
    scaled = Scaled(model, c=1.3)
    whole = metric(states=states, saliency=scaled.explain(states), explainer=scaled)
    alone = get_metric("lipschitz", n_samples=4, batch_size=1)(
        states=states[2:], saliency=scaled.explain(states[2:]), explainer=scaled
    )
    torch.testing.assert_close(alone, whole[2:])


def test_lipschitz_keeps_the_targets_of_the_original_state():
    model = as_model(MeanAboveHalf(), input_shape=(1, 3, 3))
    explainer = TargetIndex(model)
    states = torch.full((1, 1, 3, 3), 0.501)  # the argmax flips inside the ball
    flipped = explainer.explain(torch.full((1, 1, 3, 3), 0.4))
    assert not torch.equal(flipped, explainer.explain(states))  # the control: the map follows the argmax
    value = get_metric("lipschitz", radius=0.5, n_samples=16)(
        states=states, saliency=explainer.explain(states), explainer=explainer
    )
    assert value.tolist() == [0.0]


# --- cost ----------------------------------------------------------------------------------------


def test_time_per_map_is_positive_finite_and_equal():
    model = one_channel_model()
    explainer = Scaled(model, c=1.0)
    states = torch.rand(4, 1, 3, 3)
    value = get_metric("time_per_map", repeats=2)(
        states=states, saliency=explainer.explain(states), explainer=explainer, targets=torch.zeros(4, dtype=torch.long)
    )
    assert value.shape == (4,) and (value > 0).all() and value.isfinite().all()
    assert (value == value[0]).all()


# --- contract and bad input ----------------------------------------------------------------------


@pytest.mark.parametrize("name", list_metrics())
def test_every_metric_follows_the_contract(name):
    metric = get_metric(name)
    assert metric.category in CATEGORIES
    assert set(metric.requires) <= {"model", "labels", "explainer"}
    if metric.outputs:
        assert isinstance(metric.higher_is_better, dict) and set(metric.higher_is_better) == set(metric.outputs)
    else:
        assert isinstance(metric.higher_is_better, bool)
    model = one_channel_model(4, 4)
    model.train()  # metrics must not change it
    states = torch.rand(3, 1, 4, 4)
    before = states.clone()
    explainer = Scaled(model, c=1.0)
    out = metric(
        model=model,
        states=states,
        saliency=explainer.explain(states),
        labels=torch.randint(0, 2, (3, 4, 4)),
        explainer=explainer,
    )
    values = out if metric.outputs else {"value": out}
    for v in values.values():
        assert v.shape == (3,) and v.dtype == torch.float32 and v.device == states.device
        assert v.isfinite().all()
    assert model.training and torch.equal(states, before)


def test_bad_input_is_refused_with_a_message():
    model = one_channel_model()
    states = torch.rand(2, 1, 3, 3)
    deletion = get_metric("deletion")
    with pytest.raises(ValueError, match=r"saliency must have shape \(B, H, W\) = \(2, 3, 3\)"):
        deletion(model=model, states=states, saliency=torch.rand(2, 3, 4))
    with pytest.raises(ValueError, match="saliency must have shape"):
        deletion(model=model, states=states, saliency=torch.rand(2, 1, 3, 3))
    with pytest.raises(ValueError, match="NaN or Inf"):
        deletion(model=model, states=states, saliency=torch.full((2, 3, 3), math.nan))
    with pytest.raises(ValueError, match="needs model"):
        deletion(states=states, saliency=torch.rand(2, 3, 3))
    with pytest.raises(ValueError, match="needs labels"):
        get_metric("localization")(states=states, saliency=torch.rand(2, 3, 3))
    with pytest.raises(ValueError, match="needs explainer"):
        get_metric("lipschitz")(states=states, saliency=torch.rand(2, 3, 3))
    with pytest.raises(ValueError, match=r"labels must have the saliency's shape"):
        get_metric("localization")(
            states=states, saliency=torch.rand(2, 3, 3), labels=torch.zeros(2, 3, 4, dtype=torch.long)
        )
    with pytest.raises(ValueError, match=r"labels must hold only .* got \[2\]"):
        get_metric("localization")(states=states, saliency=torch.rand(2, 3, 3), labels=torch.full((2, 3, 3), 2))
    with pytest.raises(TypeError, match="labels must be an integer tensor"):
        get_metric("localization")(states=states, saliency=torch.rand(2, 3, 3), labels=torch.zeros(2, 3, 3))
    with pytest.raises(ValueError, match=r"target indices must be in \[0, 2\)"):
        deletion(model=model, states=states, saliency=torch.rand(2, 3, 3), targets=torch.tensor([0, 5]))
    with pytest.raises(TypeError, match="needs target indices"):
        deletion(model=model, states=states, saliency=torch.rand(2, 3, 3), targets=lambda s: s[:, 0])
    with pytest.raises(TypeError, match="wrap it with xrl.as_model"):
        deletion(model=Linear2(torch.ones(3, 3)), states=states, saliency=torch.rand(2, 3, 3))
    with pytest.raises(ValueError, match="states must have shape"):
        deletion(model=model, states=torch.rand(2, 2, 3, 3), saliency=torch.rand(2, 3, 3))


def test_bad_settings_are_refused():
    with pytest.raises(ValueError, match="substrate must be one of"):
        get_metric("deletion", substrate="gray")
    with pytest.raises(ValueError, match="needs background="):
        get_metric("insertion", substrate="background")
    with pytest.raises(ValueError, match="step_fraction must be in"):
        get_metric("deletion", step_fraction=0.0)
    with pytest.raises(ValueError, match="score must be one of"):
        get_metric("insertion", score="prob")
    with pytest.raises(ValueError, match="blur_kernel must be a positive odd"):
        get_metric("insertion", blur_kernel=4)
    with pytest.raises(ValueError, match="radius must be positive"):
        get_metric("lipschitz", radius=0)
    with pytest.raises(ValueError, match="unknown metric 'auc'; known metrics: accuracy"):
        get_metric("auc")
    assert set(METRICS.names()) >= {
        "deletion",
        "insertion",
        "accuracy",
        "sparseness",
        "lipschitz",
        "localization",
        "time_per_map",
    }
