"""The Model contract (xrl.Model, xrl.as_model): scores, probabilities, preprocessing of raw
observations, input checks with errors that say what was expected."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

import xrl
from xrl import Model, as_model

SHAPE = (3, 4, 5)  # C, H, W all different, so a swapped layout cannot pass by accident
N_IN = 3 * 4 * 5


def linear_net(k: int = 3, seed: int = 0) -> nn.Module:
    with torch.random.fork_rng():  # seeded weights without touching the global RNG
        torch.manual_seed(seed)
        return nn.Sequential(nn.Flatten(), nn.Linear(N_IN, k))


class TupleNet(nn.Module):
    """Returns ``(logits, extra)`` like many RL code bases."""

    def __init__(self) -> None:
        super().__init__()
        self.body = linear_net()

    def forward(self, x):
        return self.body(x), x.mean()


@pytest.fixture
def model() -> Model:
    return as_model(linear_net(), input_shape=SHAPE, action_names=["noop", "left", "right"])


def test_package_exports():
    assert xrl.Model is Model and xrl.as_model is as_model


def test_forward_shape_dtype_and_values(model):
    states = torch.rand(5, *SHAPE)
    scores = model(states)
    assert scores.shape == (5, 3) and scores.dtype == torch.float32
    torch.testing.assert_close(scores, model.net(states), rtol=0, atol=0)
    assert model.n_actions == 3 and model.action_names == ["noop", "left", "right"]
    assert model.input_shape == SHAPE and model.score_kind == "logits"


def test_n_actions_inferred_when_no_names_are_given():
    model = as_model(linear_net(k=6), input_shape=SHAPE)
    assert model.n_actions == 6 and model.action_names == [str(i) for i in range(6)]


def test_tuple_output_uses_the_first_element():
    net = TupleNet()
    model = as_model(net, input_shape=SHAPE, action_names=["a", "b", "c"])
    states = torch.rand(2, *SHAPE)
    torch.testing.assert_close(model(states), net.body(states), rtol=0, atol=0)


def test_tuple_output_without_action_names_infers_n_actions():
    net = TupleNet()
    model = as_model(net, input_shape=SHAPE)
    assert model.n_actions == 3
    torch.testing.assert_close(model(torch.ones(1, *SHAPE)), net.body(torch.ones(1, *SHAPE)))


def test_probs_are_a_softmax_summing_to_one(model):
    states = torch.rand(7, *SHAPE) * 10
    probs = model.probs(states)
    assert probs.shape == (7, 3) and (probs >= 0).all()
    torch.testing.assert_close(probs.sum(-1), torch.ones(7))
    torch.testing.assert_close(probs, torch.softmax(model.net(states), -1))


def test_wrapped_model_is_in_eval_mode():
    net = nn.Sequential(nn.Flatten(), nn.Dropout(0.5), linear_net())
    net.train()
    model = as_model(net, input_shape=SHAPE)
    assert not model.training and not net.training
    states = torch.rand(4, *SHAPE)
    torch.testing.assert_close(model(states), model(states), rtol=0, atol=0)  # dropout is off


def test_preprocess_uint8_chw_single_and_batched(model):
    rng = np.random.default_rng(0)
    obs = rng.integers(0, 256, size=SHAPE, dtype=np.uint8)
    obs[0, 0, 0], obs[0, 0, 1] = 0, 255
    states = model.preprocess(obs)
    assert states.shape == (1, *SHAPE) and states.dtype == torch.float32
    assert states.min() == 0.0 and states.max() == 1.0
    torch.testing.assert_close(states[0], torch.from_numpy(obs).float() / 255)
    batch = rng.integers(0, 256, size=(4, *SHAPE), dtype=np.uint8)
    states = model.preprocess(batch)
    assert states.shape == (4, *SHAPE)
    assert ((states >= 0) & (states <= 1)).all()
    torch.testing.assert_close(states, torch.from_numpy(batch).float() / 255)
    # a torch uint8 tensor is accepted the same way
    torch.testing.assert_close(model.preprocess(torch.from_numpy(batch)), states)
    model.check_states(states)  # what preprocess makes is valid input


def test_preprocess_with_obs_scale_one_keeps_values():
    model = as_model(linear_net(), input_shape=SHAPE, obs_scale=1.0)
    obs = np.arange(N_IN, dtype=np.uint8).reshape(SHAPE)
    torch.testing.assert_close(model.preprocess(obs)[0], torch.from_numpy(obs).float())


@pytest.mark.parametrize("shape", [(4, 5, 3), (1, 4, 5, 3), (3, 5, 4), (1, 4, 5)])
def test_preprocess_refuses_other_layouts(model, shape):
    obs = np.zeros(shape, dtype=np.uint8)
    with pytest.raises(ValueError) as err:
        model.preprocess(obs)
    message = str(err.value)
    assert "(3, 4, 5)" in message and "channels first" in message


def test_act_is_the_greedy_action(model):
    obs = np.random.default_rng(1).integers(0, 256, size=(6, *SHAPE), dtype=np.uint8)
    actions = model.act(obs)
    assert isinstance(actions, np.ndarray) and actions.shape == (6,)
    expected = model.net(torch.from_numpy(obs).float() / 255).argmax(-1).numpy()
    np.testing.assert_array_equal(actions, expected)


def test_check_states_accepts_valid_states(model):
    model.check_states(torch.rand(2, *SHAPE))


@pytest.mark.parametrize(
    "states, error, expected",
    [
        (np.zeros((2, *SHAPE), dtype=np.float32), TypeError, "must be a torch.Tensor"),
        (torch.zeros(2, *SHAPE, dtype=torch.uint8), TypeError, "must be float"),
        (torch.zeros(2, *SHAPE, dtype=torch.int64), TypeError, "model.preprocess(obs)"),
        (torch.zeros(2, 4, 5, 3), ValueError, "must have shape (B, 3, 4, 5), got (2, 4, 5, 3)"),
        (torch.zeros(*SHAPE), ValueError, "must have shape (B, 3, 4, 5), got (3, 4, 5)"),
        (torch.zeros(2, 1, *SHAPE), ValueError, "must have shape (B, 3, 4, 5)"),
        (torch.zeros(0, *SHAPE), ValueError, "empty batch"),
        (
            torch.zeros(2, *SHAPE, dtype=torch.float64),
            TypeError,
            "states are torch.float64 but the model's weights are torch.float32; convert them with states.to(torch.float32)",
        ),
    ],
)
def test_check_states_errors_say_what_was_expected(model, states, error, expected):
    with pytest.raises(error) as err:
        model.check_states(states)
    assert expected in str(err.value)


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_check_states_refuses_non_finite_values(model, bad):
    states = torch.rand(3, *SHAPE)
    states[1, 2, 3, 4] = bad
    with pytest.raises(ValueError, match="NaN or Inf"):
        model.check_states(states)


def test_declared_input_range_refuses_states_on_the_wrong_scale():
    ranged = as_model(linear_net(), input_shape=SHAPE, input_range=(0, 1))
    ranged.check_states(torch.rand(2, *SHAPE))
    # noise-perturbed states (SmoothGrad, Local Lipschitz) stay legal: within one range width
    ranged.check_states(torch.rand(2, *SHAPE) * 1.6 - 0.3)
    raw = torch.randint(0, 256, (2, *SHAPE)).float()
    with pytest.raises(ValueError) as err:
        ranged.check_states(raw)
    assert str(err.value).startswith(
        f"states range over [{raw.min():g}, {raw.max():g}] but the model "
        "consumes states in [0, 1]; did you forget to divide by 255?"
    )
    with pytest.raises(ValueError, match=r"states range over \[-3, .*\[0, 1\]$"):
        ranged.check_states(torch.full((1, *SHAPE), -3.0))
    # explainers check first, before any forward pass
    with pytest.raises(ValueError, match="divide by 255"):
        xrl.get_explainer("gradient", ranged).explain(raw)
    # without a declared range nothing is checked (a plain nn.Module may take any range)
    as_model(linear_net(), input_shape=SHAPE).check_states(raw)


@pytest.mark.parametrize("bad", [(1, 0), (0, float("inf")), "ab", (0,), None])
def test_input_range_itself_is_checked(bad):
    if bad is None:
        assert as_model(linear_net(), input_shape=SHAPE, input_range=bad).input_range is None
        return
    with pytest.raises(ValueError, match="input_range must be"):
        as_model(linear_net(), input_shape=SHAPE, input_range=bad)


def test_value_head(model):
    with pytest.raises(ValueError, match="no value head"):
        model.value(torch.rand(2, *SHAPE))
    with_value = as_model(linear_net(), input_shape=SHAPE, value_fn=lambda x: x.flatten(1).sum(1, keepdim=True))
    states = torch.rand(4, *SHAPE)
    value = with_value.value(states)
    assert value.shape == (4,)
    torch.testing.assert_close(value, states.flatten(1).sum(1))


def test_conv_layers_in_forward_order():
    net = nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 2, 3, padding=1), nn.Flatten(), nn.Linear(2 * 4 * 5, 3)
    )
    model = as_model(net, input_shape=SHAPE)
    layers = model.conv_layers()
    assert list(layers) == ["0", "2"]
    assert layers["0"] is net[0] and layers["2"] is net[2]


def test_as_model_passes_models_through_and_refuses_non_modules(model):
    assert as_model(model, input_shape=SHAPE) is model
    with pytest.raises(TypeError, match="expects an nn.Module, got function"):
        as_model(lambda x: x, input_shape=SHAPE)


@pytest.mark.parametrize(
    "kwargs, expected",
    [
        ({"input_shape": (4, 5)}, "input_shape must be (C, H, W), got (4, 5)"),
        ({"input_shape": (1, 3, 4, 5)}, "input_shape must be (C, H, W)"),
        ({"input_shape": SHAPE, "score_kind": "probabilities"}, "score_kind must be one of"),
    ],
)
def test_bad_model_settings(kwargs, expected):
    with pytest.raises(ValueError) as err:
        as_model(linear_net(), **kwargs)
    assert expected in str(err.value)


class Returns(nn.Module):
    def __init__(self, fn) -> None:
        super().__init__()
        self.fn = fn

    def forward(self, x):
        return self.fn(x)


@pytest.mark.parametrize(
    "module, names",
    [
        (Returns(lambda x: x), None),  # (B, C, H, W)
        (Returns(lambda x: x.flatten(1).sum(1)), None),  # (B,)
        (Returns(lambda x: x.flatten(1)[:1, :3]), None),  # (1, K) whatever B is
        (nn.Sequential(nn.Flatten(), nn.Linear(7, 3)), None),  # does not accept input_shape
        (linear_net(k=3), ["a", "b"]),  # 3 scores, 2 names
    ],
)
def test_as_model_refuses_outputs_that_are_not_batch_by_actions(module, names):
    with pytest.raises(ValueError, match=r"\(B, K\)"):
        as_model(module, input_shape=SHAPE, action_names=names)


def test_fingerprint_hashes_the_models_weights():
    import hashlib

    model = as_model(linear_net(seed=0), input_shape=SHAPE)
    h = hashlib.sha256()  # independent computation: name, dtype, shape, then the bytes of each entry
    for name, t in model.state_dict().items():
        h.update(f"{name}:{t.dtype}:{tuple(t.shape)}".encode())
        h.update(t.numpy().tobytes())
    assert model.fingerprint() == h.hexdigest()[:16]
    assert as_model(linear_net(seed=0), input_shape=SHAPE).fingerprint() == model.fingerprint()
    assert as_model(linear_net(seed=1), input_shape=SHAPE).fingerprint() != model.fingerprint()


def test_a_model_built_without_its_weights_reports_its_cards_fingerprint():
    stand_in = Model(linear_net(seed=5), input_shape=SHAPE, info={"weights": "not loaded", "fingerprint": "abc"})
    assert stand_in.fingerprint() == "abc"
    unknown = Model(linear_net(seed=5), input_shape=SHAPE, info={"weights": "not loaded", "source": "x.pt"})
    with pytest.raises(ValueError, match="x.pt was built without its weights and its card records no fingerprint"):
        unknown.fingerprint()
