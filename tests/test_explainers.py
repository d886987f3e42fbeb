"""Explainers: one contract test over every registered method, then exact values on tiny models."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
import torch.nn.modules.module as module_globals
from torch import nn

from xrl.agents.attention import FLSModule, receptive_field
from xrl.agents.mask_nets import MaskNetwork
from xrl.agents.model import as_model
from xrl.explainers import EXPLAINERS, Explainer, get_explainer, list_explainers
from xrl.explainers.masks import perturbation_masks, upsample_grid
from xrl.ops import gaussian_blur, gaussian_kernel

SHAPE = (2, 12, 12)  # (C, H, W): two stacked frames
K = 3
NAMES = list_explainers()
#: tiny budgets so every method runs in well under a second on 12x12 states
SETTINGS = {"greydanus": {"stride": 3, "radius": 2.0}, "extremal_perturbation": {"iterations": 20}}


class TinyCNN(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(SHAPE[0], 4, 3, stride=2, padding=1)
        self.relu = nn.ReLU()  # a module, as in SB3 networks (guided backprop replaces its backward)
        self.head = nn.Linear(4 * 6 * 6, K)
        self.fail = False  # set to make the forward raise (error-path tests)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.fail:
            raise RuntimeError("forward failed on purpose")
        return self.head(self.relu(self.conv(x)).flatten(1))


class TinyAttentionCNN(TinyCNN):
    """TinyCNN with an FLS attention module after its conv (the attention protocol of
    ``xrl.agents.attention``: ``attention_maps`` and ``receptive_fields``)."""

    def __init__(self) -> None:
        super().__init__()
        self.fls = FLSModule(4, hidden=8)
        self.receptive_fields = [receptive_field([(3, 2, 1)])]

    def attention_maps(self, x: torch.Tensor) -> list[torch.Tensor]:
        return [self.fls(self.relu(self.conv(x))).squeeze(1)]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.fail:
            raise RuntimeError("forward failed on purpose")
        h = self.relu(self.conv(x))
        return self.head((h * self.fls(h)).flatten(1))


#: Explainers whose class attribute ``requires`` names more than the Model contract get a tiny
#: model that has it: "attention" = a network with an attention module.
NETS_FOR_REQUIREMENT = {"attention": TinyAttentionCNN}
#: ... or settings that provide it: "mask_network" = a mask network initialised (untrained) for
#: the tiny model, for the learned explainers (visionmask, stalder_explainer).
SETTINGS_FOR_REQUIREMENT = {
    "mask_network": lambda cls, model: {"network": MaskNetwork.for_model(model, method=cls.method, reference="black")},
    "rexl_agent": lambda cls, model: {"agent": _rexl_agent(model), "extractor": nn.Flatten()},
}


def _rexl_agent(model):
    """An untrained dataset-specific RExL agent (4x4 grid, flattened states as features) for ``model``."""
    import tempfile
    from pathlib import Path

    from xrl.train.rexl import untrained_agent

    return untrained_agent(model, Path(tempfile.mkdtemp()) / "rexl.pt", grid=4, extractor=nn.Flatten())


def tiny_model(name: str | None = None):
    """The contract test's model for explainer ``name`` (TinyCNN unless the method requires more)."""
    torch.manual_seed(0)
    needs = [r for r in getattr(EXPLAINERS.get(name), "requires", ()) if r in NETS_FOR_REQUIREMENT] if name else []
    assert len(needs) <= 1, f"{name} requires {needs}: teach tiny_model to build a model with all of them"
    return as_model(NETS_FOR_REQUIREMENT[needs[0]]() if needs else TinyCNN(), input_shape=SHAPE)


def make(name, model, **settings):
    cls = EXPLAINERS.get(name)
    needed = [
        SETTINGS_FOR_REQUIREMENT[r](cls, model) for r in getattr(cls, "requires", ()) if r in SETTINGS_FOR_REQUIREMENT
    ]
    return get_explainer(
        name, model, **{k: v for d in needed for k, v in d.items()}, **{**SETTINGS.get(name, {}), **settings}
    )


def states(b: int = 3, seed: int = 1) -> torch.Tensor:
    return torch.rand(b, *SHAPE, generator=torch.Generator().manual_seed(seed))


def hook_count(model: nn.Module) -> int:
    n = sum(
        len(getattr(module_globals, g))
        for g in (
            "_global_forward_hooks",
            "_global_forward_pre_hooks",
            "_global_backward_hooks",
            "_global_backward_pre_hooks",
        )
    )
    for m in model.modules():
        n += len(m._forward_hooks) + len(m._forward_pre_hooks) + len(m._backward_hooks) + len(m._backward_pre_hooks)
    return n + sum(len(p._backward_hooks or {}) for p in model.parameters())


def check_map(saliency: torch.Tensor, shape: tuple, like: torch.Tensor) -> None:
    assert saliency.shape == shape
    assert saliency.dtype == torch.float32 and saliency.device == like.device
    assert torch.isfinite(saliency).all()
    assert not saliency.requires_grad and not saliency.is_inference()


# ---------------------------------------------------------------- contract, every explainer


@pytest.mark.parametrize("name", NAMES)
def test_output_contract(name):
    model, x = tiny_model(name), states()
    explainer = make(name, model)
    check_map(explainer.explain(x), (3, 12, 12), x)
    check_map(explainer.explain_all(x), (3, K, 12, 12), x)


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("train_mode", [False, True])
def test_no_side_effects(name, train_mode):
    model, x = tiny_model(name), states()
    model.train(train_mode)
    x.requires_grad_(True)
    x.grad = torch.full_like(x, 7.0)
    before = x.detach().clone()
    explainer = make(name, model)

    def by_callable():
        if explainer.callable_targets:
            return explainer.explain(x, targets=lambda s: s[:, 0] - s[:, 1])
        with pytest.raises(TypeError, match="callable"):  # refused (documented), also without side effects
            explainer.explain(x, targets=lambda s: s[:, 0] - s[:, 1])

    for call in (lambda: explainer.explain(x), by_callable, lambda: explainer.explain_all(x)):
        call()
        assert torch.equal(x.detach(), before) and x.requires_grad and torch.equal(x.grad, torch.full_like(x, 7.0))
        assert all(p.grad is None and p.requires_grad for p in model.parameters())
        assert all(m.training == train_mode for m in model.modules())
        assert hook_count(model) == 0


@pytest.mark.parametrize("name", NAMES)
def test_state_restored_when_the_call_raises(name):
    model, x = tiny_model(name), states()
    model.train()
    model.net.fail = True
    explainer = make(name, model)
    with pytest.raises(RuntimeError, match="on purpose"):  # targets=None runs the model
        explainer.explain(x)
    for call in (explainer.explain, explainer.explain_all):  # explain_all may not need the model
        try:
            call(x)
        except RuntimeError as error:
            assert "on purpose" in str(error)
        assert all(m.training for m in model.modules())
        assert all(p.grad is None for p in model.parameters()) and hook_count(model) == 0
        assert not x.requires_grad and x.grad is None


@pytest.mark.parametrize("name", NAMES)
def test_same_seed_same_maps(name):
    model, x = tiny_model(name), states()
    a, b = make(name, model, seed=3), make(name, model, seed=3)
    assert torch.equal(a.explain(x), b.explain(x))
    assert torch.equal(a.explain_all(x), b.explain_all(x))


@pytest.mark.parametrize("name", NAMES)
def test_batch_equals_per_sample_loop(name):
    model, x = tiny_model(name), states(4)
    targets = torch.tensor([0, 2, 1, 2])
    # RExL's map comes from 49 sequential forward passes, each on the state the previous picks
    # masked; batched and single-state matmuls round differently (seen: 2e-5 on values ~0.06) and
    # that compounds over the episode. A different pick would differ by a whole cell weight.
    tol = dict(rtol=1e-3, atol=1e-4) if name == "rexl" else dict(rtol=1e-5, atol=1e-6)
    for small in (make(name, model), make(name, model, batch_size=3)):  # chunks split states
        batch = small.explain(x)
        loop = torch.cat([small.explain(x[i : i + 1]) for i in range(len(x))])
        torch.testing.assert_close(batch, loop, **tol)
        batch = small.explain(x, targets=targets)
        loop = torch.cat([small.explain(x[i : i + 1], targets=int(t)) for i, t in enumerate(targets)])
        torch.testing.assert_close(batch, loop, **tol)


@pytest.mark.parametrize("name", NAMES)
def test_every_form_of_targets(name):
    model, x = tiny_model(name), states()
    explainer = make(name, model)
    by_int = explainer.explain(x, targets=1)
    torch.testing.assert_close(explainer.explain(x, targets=torch.tensor([1, 1, 1])), by_int)
    torch.testing.assert_close(explainer.explain(x, targets=torch.tensor(1)), by_int)
    own = model(x).argmax(-1)
    torch.testing.assert_close(explainer.explain(x), explainer.explain(x, targets=own))
    for fn in (lambda s: s[:, 0] - s[:, 1], lambda s: s.logsumexp(-1)):  # "why 0 not 1", soft value
        if explainer.callable_targets:
            check_map(explainer.explain(x, targets=fn), (3, 12, 12), x)
        else:  # methods that need action indices say so
            with pytest.raises(TypeError, match="callable"):
                explainer.explain(x, targets=fn)


@pytest.mark.parametrize("name", NAMES)
def test_explain_all_is_explain_per_action(name):
    model, x = tiny_model(name), states()
    explainer = make(name, model)
    if type(explainer)._explain_all is not Explainer._explain_all:
        pytest.skip("explain_all is method-specific (documented in the method; tested below)")
    maps = explainer.explain_all(x)
    for k in range(K):
        torch.testing.assert_close(maps[:, k], explainer.explain(x, targets=k))


BAD_CALLS = {
    "wrong shape": (lambda x: x[:, :1], None, ValueError),
    "uint8 states": (lambda x: (x * 255).to(torch.uint8), None, TypeError),
    "not a tensor": (lambda x: x.numpy(), None, TypeError),
    "empty batch": (lambda x: x[:0], None, ValueError),
    "NaN": (lambda x: x.index_fill(0, torch.tensor([1]), float("nan")), None, ValueError),
    "target out of range": (lambda x: x, K, ValueError),
    "negative target": (lambda x: x, torch.tensor([0, -1, 0]), ValueError),
    "bool target": (lambda x: x, True, TypeError),
    "float target tensor": (lambda x: x, torch.tensor([0.0, 1.0, 2.0]), TypeError),
    "wrong number of targets": (lambda x: x, torch.tensor([0, 1]), ValueError),
    "string target": (lambda x: x, "left", TypeError),
}


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("case", sorted(BAD_CALLS))
def test_bad_input_is_refused(name, case):
    model = tiny_model(name)
    edit, targets, error = BAD_CALLS[case]
    with pytest.raises(error):
        make(name, model).explain(edit(states()), targets=targets)
    if targets is None:
        with pytest.raises(error):
            make(name, model).explain_all(edit(states()))


def test_registry_errors():
    with pytest.raises(ValueError, match="greydanus"):
        get_explainer("no_such_method", tiny_model())
    with pytest.raises(TypeError, match="as_model"):
        get_explainer("gradient", TinyCNN())
    with pytest.raises(ValueError):
        get_explainer("gradient", tiny_model(), batch_size=0)


# ---------------------------------------------------------------- vanilla gradient


def linear_model(shape=(2, 4, 5), k=3):
    torch.manual_seed(0)
    return as_model(nn.Sequential(nn.Flatten(), nn.Linear(int(torch.tensor(shape).prod()), k)), input_shape=shape)


@pytest.mark.parametrize("reduce", ["max", "sum", "mean"])
def test_gradient_of_linear_model_is_its_weights(reduce):
    model = linear_model()
    w = model.net[1].weight.detach().view(3, 2, 4, 5)
    x = torch.rand(2, 2, 4, 5)
    explainer = get_explainer("gradient", model, reduce=reduce)
    expected = {"max": w.abs().amax(1), "sum": w.abs().sum(1), "mean": w.abs().mean(1)}[reduce]
    torch.testing.assert_close(explainer.explain(x, targets=2), expected[2].expand(2, 4, 5))
    torch.testing.assert_close(explainer.explain_all(x), expected.expand(2, 3, 4, 5))
    torch.testing.assert_close(explainer.channel_gradients(x, targets=torch.tensor([0, 1])), w[:2])
    diff = explainer.channel_gradients(x, targets=lambda s: s[:, 0] - s[:, 1])
    torch.testing.assert_close(diff, (w[0] - w[1]).expand(2, 2, 4, 5))


def test_gradient_of_last_frame_model_is_zero_on_other_frames():
    class LastFrame(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(1, 3, 3, padding=1)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.tanh(self.conv(x[:, -1:])).mean((2, 3))

    torch.manual_seed(0)
    model = as_model(LastFrame(), input_shape=(4, 6, 6), frame_stack=4)
    x = torch.rand(2, 4, 6, 6)
    explainer = get_explainer("gradient", model, batch_size=1)
    grads = explainer.channel_gradients(x)
    assert torch.equal(grads[:, :3], torch.zeros_like(grads[:, :3])) and grads[:, 3].abs().sum() > 0
    torch.testing.assert_close(explainer.explain(x), grads[:, 3].abs())


def test_gradient_rejects_unknown_reduction():
    with pytest.raises(ValueError, match="reduce"):
        get_explainer("gradient", tiny_model(), reduce="median")


# ---------------------------------------------------------------- Gaussian-blur perturbation


def region_model(shape=(1, 16, 16)):
    """Scores depend only on pixels R = rows 2..4, cols 2..4."""

    class Region(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.head = nn.Linear(shape[0] * 9, 3)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.head(x[:, :, 2:5, 2:5].flatten(1))

    torch.manual_seed(0)
    return as_model(Region(), input_shape=shape)


@pytest.mark.parametrize("score", ["l2", "kl", "target"])
def test_greydanus_is_zero_beyond_the_mask_support(score):
    model, x = region_model(), torch.rand(2, 1, 16, 16, generator=torch.Generator().manual_seed(0))
    saliency = get_explainer("greydanus", model, stride=1, radius=1.0, score=score).explain(x)
    # masks vanish beyond truncate * radius = 4 pixels: centres at rows/cols >= 9 cannot reach R.
    # Zero up to float32 rounding of the batched forward (a row's rounding in a GEMM may depend on
    # its position): ~1 ulp of the scores for the linear "target" drop, its square for l2/kl.
    tol = 1e-6 if score == "target" else 1e-10
    assert saliency[:, 9:, :].abs().max() < tol and saliency[:, :, 9:].abs().max() < tol
    assert (saliency[:, 2:5, 2:5] > 0).all()


def naive_greydanus(model, x, stride, radius, score):
    """One perturbation at a time, straight from the paper's formula."""
    _, _, h, w = x.shape
    blurred, out = gaussian_blur(x, 3.0), torch.zeros(x.shape[0], h, w)
    p = model(x).softmax(-1)
    for n, mask in enumerate(perturbation_masks(h, w, stride, radius)):
        q = model(x * (1 - mask) + blurred * mask).softmax(-1)
        value = 0.5 * ((p - q) ** 2).sum(-1) if score == "l2" else (p * (p.log() - q.log())).sum(-1)
        out[:, n // w, n % w] = value
    return out


@pytest.mark.parametrize("score", ["l2", "kl"])
def test_greydanus_matches_the_formula(score):
    model, x = tiny_model(), states(2)
    with torch.no_grad():
        expected = naive_greydanus(model, x, 1, 2.0, score)
    explainer = get_explainer("greydanus", model, stride=1, radius=2.0, score=score, batch_size=50)
    # float32 cancellation in log p - log q costs KL ~2e-4 of the peak (both sides, vs float64)
    tol = {"rtol": 1e-4, "atol": (1e-5 if score == "l2" else 1e-3) * expected.max().item()}
    torch.testing.assert_close(explainer.explain(x), expected, **tol)
    # per-action terms from the same perturbed batch sum to the score
    torch.testing.assert_close(explainer.explain_all(x).sum(1), expected, **tol)


def test_greydanus_target_score_honours_targets():
    model, x = tiny_model(), states(2)
    explainer = get_explainer("greydanus", model, score="target", stride=3, radius=2.0)
    maps = explainer.explain_all(x)
    for k in range(K):
        torch.testing.assert_close(maps[:, k], explainer.explain(x, targets=k))
    assert not torch.allclose(maps[:, 0], maps[:, 1])
    # the l2 score ignores targets (documented)
    l2 = get_explainer("greydanus", model, stride=3, radius=2.0)
    assert torch.equal(l2.explain(x, targets=0), l2.explain(x, targets=2))


def test_greydanus_batch_size_invariance():
    model, x = tiny_model(), states(3)
    maps = [
        get_explainer("greydanus", model, stride=2, radius=2.0, batch_size=bs).explain_all(x) for bs in (1, 7, 36, 4096)
    ]
    for other in maps[1:]:
        torch.testing.assert_close(other, maps[0], rtol=1e-5, atol=1e-7)


def test_greydanus_masks_are_cached():
    explainer = get_explainer("greydanus", tiny_model(), stride=3, radius=2.0)
    masks = explainer.masks(12, 12)
    assert explainer.masks(12, 12) is masks
    assert perturbation_masks(12, 12, 3, 2.0, device=torch.device("cpu")) is masks
    assert masks.shape == (16, 12, 12) and masks.amax((1, 2)).eq(1).all()
    assert masks[5, 3, 3] == 1  # mask 5 = grid (1, 1) = pixel (3, 3)


@pytest.mark.parametrize("bad", [{"radius": 0}, {"stride": 0}, {"stride": 1.5}, {"blur_sigma": -1}, {"score": "l1"}])
def test_greydanus_rejects_bad_settings(bad):
    with pytest.raises(ValueError):
        get_explainer("greydanus", tiny_model(), **bad)


def test_blur_and_upsampling_helpers():
    assert gaussian_kernel(3.0).sum().item() == pytest.approx(1.0) and gaussian_kernel(3.0).numel() == 25
    flat = torch.full((1, 2, 5, 7), 0.3)
    torch.testing.assert_close(gaussian_blur(flat, 3.0), flat)
    x = torch.rand(1, 1, 9, 9)
    assert torch.equal(gaussian_blur(x, 0), x)
    kernel = gaussian_kernel(1.5)  # the separable blur is a 2-D convolution, borders replicated
    padded = F.pad(x, (6, 6, 6, 6), mode="replicate")
    torch.testing.assert_close(gaussian_blur(x, 1.5), F.conv2d(padded, torch.outer(kernel, kernel)[None, None]))
    with torch.inference_mode():  # cached matrices built here must still work with autograd
        gaussian_blur(x, 1.25)
    gaussian_blur(x.clone().requires_grad_(), 1.25).sum().backward()
    grid = torch.rand(2, 3, 4, 5)
    fine = upsample_grid(grid, 12, 14, 3)  # grid points at 0, 3, 6, 9 / 0, 3, ..., 12
    assert fine.shape == (2, 3, 12, 14)
    torch.testing.assert_close(fine[..., ::3, ::3], grid)
    torch.testing.assert_close(fine[..., 1, 0], (2 * grid[..., 0, 0] + grid[..., 1, 0]) / 3)
    torch.testing.assert_close(fine[..., 10:, 13], grid[..., 3:, 4].expand(2, 3, 2))


# ---------------------------------------------------------------- random control


def test_random_maps_depend_on_seed_and_state_only():
    model, x = tiny_model(), states(3)
    maps = get_explainer("random", model, seed=0).explain(x)
    assert ((maps >= 0) & (maps < 1)).all()
    assert not torch.equal(maps[0], maps[1])
    assert not torch.equal(maps, get_explainer("random", model, seed=1).explain(x))
    repeated = get_explainer("random", model, seed=0).explain(torch.stack([x[2], x[0], x[2]]))
    assert torch.equal(repeated, maps[[2, 0, 2]])
