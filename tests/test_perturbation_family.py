"""Occlusion, SARFA and RISE: exact values on tiny analytic models, per-action maps from one
batch, batch == per-sample loop for every batch_size. (The contract test in test_explainers.py
covers them too.)"""

from __future__ import annotations

import pytest
import torch
from captum.attr import Occlusion as CaptumOcclusion
from torch import nn

from xrl.agents.model import as_model
from xrl.explainers import get_explainer
from xrl.explainers.masks import perturbation_masks
from xrl.explainers.rise import rise_masks
from xrl.ops import gaussian_blur

#: tiny budgets: every method runs in milliseconds on these states
TINY = {
    "occlusion": {"window": 3, "stride": 2},
    "sarfa": {"radius": 1.5, "stride": 2},
    "rise": {"n_masks": 64, "grid": 4},
}
METHODS = sorted(TINY)


def make(name, model, **settings):
    return get_explainer(name, model, **{**TINY[name], **settings})


def rand(*shape, seed=0):
    return torch.rand(*shape, generator=torch.Generator().manual_seed(seed))


class TinyCNN(nn.Module):
    def __init__(self, channels=2, k=3, side=12) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, 4, 3, stride=2, padding=1)
        self.head = nn.Linear(4 * ((side + 1) // 2) ** 2, k)

    def forward(self, x):
        return self.head(torch.tanh(self.conv(x)).flatten(1))


def tiny_model(channels=2, k=3, side=12):
    torch.manual_seed(0)
    return as_model(TinyCNN(channels, k, side), input_shape=(channels, side, side))


class Lambda(nn.Module):
    def __init__(self, fn) -> None:
        super().__init__()
        self.fn = fn

    def forward(self, x):
        return self.fn(x)


def fn_model(fn, shape):
    return as_model(Lambda(fn), input_shape=shape)


class Counter:
    """Counts the model's forward calls (and rows) with a forward hook, removed on exit."""

    def __init__(self, model) -> None:
        self.model, self.calls, self.rows = model, 0, 0

    def __enter__(self):
        def hook(module, inputs, output):
            self.calls += 1
            self.rows += inputs[0].shape[0]

        self.handle = self.model.register_forward_hook(hook)
        return self

    def __exit__(self, *exc) -> None:
        self.handle.remove()


# ---------------------------------------------------------------- every method


@pytest.mark.parametrize("name", METHODS)
def test_explain_all_is_explain_per_action_from_one_batch(name):
    model, x = tiny_model(), rand(3, 2, 12, 12)
    explainer = make(name, model, batch_size=100_000)
    with Counter(model) as all_actions:
        maps = explainer.explain_all(x)
    with Counter(model) as one_action:
        explainer.explain(x, targets=torch.tensor([2, 0, 1]))
    # one forward pass each, of the same rows: all K maps cost what one costs
    assert all_actions.calls == one_action.calls == 1 and all_actions.rows == one_action.rows
    for k in range(3):
        torch.testing.assert_close(maps[:, k], explainer.explain(x, targets=k), rtol=1e-5, atol=1e-7)
    with Counter(model) as own_action:  # targets=None adds one pass of the B states (the argmax)
        own = explainer.explain(x)
    torch.testing.assert_close(own, maps[torch.arange(3), model(x).argmax(-1)])
    assert own_action.calls == 2 and own_action.rows == all_actions.rows + 3


@pytest.mark.parametrize("name", METHODS)
def test_batch_equals_per_sample_loop_for_every_batch_size(name):
    model, x = tiny_model(), rand(4, 2, 12, 12, seed=1)
    targets = torch.tensor([0, 2, 1, 2])
    reference = make(name, model)
    loop_all = torch.cat([reference.explain_all(x[i : i + 1]) for i in range(4)])
    loop = torch.cat([reference.explain(x[i : i + 1], targets=int(t)) for i, t in enumerate(targets)])
    for batch_size in (1, 7, 100_000):
        explainer = make(name, model, batch_size=batch_size)
        torch.testing.assert_close(explainer.explain_all(x), loop_all, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(explainer.explain(x, targets=targets), loop, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name", METHODS)
def test_last_frame_model_ignores_the_other_frames(name):
    """Perturbations are spatial (every frame at once), so maps are (H, W): what is exactly
    checkable is that a model reading only the last frame gets the same maps whatever the
    other frames hold."""
    torch.manual_seed(0)
    conv = nn.Conv2d(1, 3, 3, padding=1)
    model = as_model(
        nn.Sequential(Lambda(lambda x: x[:, -1:]), conv, nn.Tanh(), nn.Flatten(), nn.Linear(3 * 12 * 12, 3)),
        input_shape=(4, 12, 12),
        frame_stack=4,
    )
    x = rand(2, 4, 12, 12)
    other = x.clone()
    other[:, :3] = rand(2, 3, 12, 12, seed=5)
    explainer = make(name, model)
    assert torch.equal(explainer.explain_all(x), explainer.explain_all(other))


def test_occlusion_and_rise_take_callable_targets_linearly():
    """Occlusion and RISE are linear in the explained quantity: "why 0 and not 1" is map 0 - map 1."""
    model, x = tiny_model(), rand(2, 2, 12, 12)
    for name in ("occlusion", "rise"):
        explainer = make(name, model)
        maps = explainer.explain_all(x)
        diff = explainer.explain(x, targets=lambda s: s[:, 0] - s[:, 1])
        torch.testing.assert_close(diff, maps[:, 0] - maps[:, 1], rtol=1e-4, atol=1e-5)


# ---------------------------------------------------------------- occlusion


def linear_model(shape=(2, 6, 7), k=3):
    torch.manual_seed(0)
    return as_model(nn.Sequential(nn.Flatten(), nn.Linear(int(torch.tensor(shape).prod()), k)), input_shape=shape)


def test_occlusion_of_an_additive_model_is_the_occluded_contribution():
    model, x = linear_model(), rand(2, 2, 6, 7)
    w = model.net[1].weight.detach().view(3, 2, 6, 7)
    baseline = rand(2, 1, 7, seed=3)  # broadcast over rows
    for fill, filled in ((0.25, torch.tensor(0.25)), (baseline, baseline)):
        contribution = torch.einsum("kchw,bchw->bkhw", w, x - filled)  # (B, K, H, W)
        # one-pixel windows: each pixel's map is exactly its own contribution
        maps = get_explainer("occlusion", model, window=1, stride=1, fill=fill).explain_all(x)
        torch.testing.assert_close(maps, contribution, rtol=1e-5, atol=1e-6)
        # 3x3 windows at stride 2: the mean over covering windows of their summed contribution
        maps = get_explainer("occlusion", model, window=3, stride=2, fill=fill).explain_all(x)
        total, count = torch.zeros_like(maps), torch.zeros(6, 7)
        for top in (0, 2, 4):  # ceil((6 - 3) / 2) + 1 = 3 rows of windows, the last clipped at row 6
            for left in (0, 2, 4):  # ceil((7 - 3) / 2) + 1 = 3 columns, none clipped
                rows, cols = slice(top, top + 3), slice(left, left + 3)
                total[..., rows, cols] += contribution[..., rows, cols].sum((-2, -1), keepdim=True)
                count[rows, cols] += 1
        torch.testing.assert_close(maps, total / count, rtol=1e-5, atol=1e-6)


def test_occlusion_equals_captum():
    model, x = tiny_model(), rand(3, 2, 12, 12)
    targets = torch.tensor([0, 2, 1])
    ours = get_explainer("occlusion", model, window=4, stride=3, fill=0.3).explain(x, targets=targets)
    theirs = CaptumOcclusion(model).attribute(
        x, sliding_window_shapes=(2, 4, 4), strides=(2, 3, 3), baselines=0.3, target=targets
    )
    torch.testing.assert_close(ours, theirs[:, 0], rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(theirs[:, 1], theirs[:, 0])  # all channels occluded together


def region_reader(shape=(1, 16, 16)):
    """Scores read pixels rows 2..4, cols 2..4 only."""
    torch.manual_seed(0)
    head = nn.Linear(shape[0] * 9, 3)
    return as_model(nn.Sequential(Lambda(lambda x: x[:, :, 2:5, 2:5].flatten(1)), head), input_shape=shape)


def test_occlusion_is_zero_where_no_window_touches_what_the_model_reads():
    model, x = region_reader(), rand(2, 1, 16, 16)
    maps = get_explainer("occlusion", model, window=3, stride=1).explain_all(x)
    # a window covering row (col) >= 7 spans rows >= 5: it never touches the region, so the drop
    # there is zero up to float32 rounding of the batched forward (~1 ulp of the scores: a row's
    # rounding in a GEMM may depend on its position in the batch)
    assert maps[..., 7:, :].abs().max() < 1e-6 and maps[..., :, 7:].abs().max() < 1e-6
    assert (maps[..., 2:5, 2:5].abs() > 1e-3).any()
    assert (maps[..., 2:5, 2:5] != 0).all()


def test_occlusion_masks_are_cached_and_cover_every_pixel():
    explainer = get_explainer("occlusion", tiny_model(), window=5, stride=4)
    masks = explainer.masks(12, 12)
    assert explainer.masks(12, 12) is masks
    assert masks.shape == (9, 12, 12)  # ceil((12 - 5) / 4) + 1 = 3 positions per axis: 0, 4, 8 (clipped)
    assert masks.sum(0).min() >= 1 and masks[8, 8:, 8:].eq(1).all() and masks[8].sum() == 16


@pytest.mark.parametrize(
    "bad",
    [
        {"window": 0},
        {"window": (2, 3)},
        {"stride": 1.5},
        {"window": 2, "stride": 3},
        {"fill": float("nan")},
        {"fill": "grey"},
        {"fill": torch.zeros(3, 12, 12)},
    ],
)
def test_occlusion_rejects_bad_settings(bad):
    with pytest.raises(ValueError):
        get_explainer("occlusion", tiny_model(), **bad)


def test_occlusion_rejects_a_window_larger_than_the_state():
    with pytest.raises(ValueError, match="larger than the state"):
        get_explainer("occlusion", tiny_model(), window=13, stride=1).explain(rand(1, 2, 12, 12))


# ---------------------------------------------------------------- SARFA


def naive_sarfa(model, x, action, stride, radius):
    """One perturbation at a time, in float64, as the authors' code: scipy.stats.entropy(p, q)
    renormalises both vectors of the other actions' probabilities."""
    _, _, h, w = x.shape
    blurred = gaussian_blur(x, 3.0)
    p = model(x).double().softmax(-1)[0]
    rest = [j for j in range(p.numel()) if j != action]
    coarse = []
    for mask in perturbation_masks(h, w, stride, radius):
        q = model(x * (1 - mask) + blurred * mask).double().softmax(-1)[0]
        d_p = (p[action] - q[action]).item()
        p_rem, q_rem = p[rest] / p[rest].sum(), q[rest] / q[rest].sum()
        relevance = 1 / (1 + (p_rem * (p_rem / q_rem).log()).sum().item())
        coarse.append(2 * d_p * relevance / (d_p + relevance) if d_p > 0 else 0.0)
    side = len(range(0, h, stride))
    return torch.tensor(coarse).view(side, -1)


def test_sarfa_matches_the_formula():
    model, x = tiny_model(k=4), rand(1, 2, 12, 12, seed=2) * 3
    explainer = get_explainer("sarfa", model, stride=1, radius=1.5)
    maps = explainer.explain_all(x)
    with torch.no_grad():
        for action in range(4):
            expected = naive_sarfa(model, x, action, 1, 1.5).float()
            torch.testing.assert_close(maps[0, action], expected, rtol=1e-3, atol=1e-6 + 1e-3 * expected.max().item())
            assert (expected > 0).any()


def fetch_like_model():
    """24x24 states. Action 0's logit is 3x the mean of region B (rows/cols 18..20); actions 1
    and 2 have logits log(1 + u), log(1 - u) with u = tanh(4 * mean of region A (rows/cols 2..4)) / 2:
    region A moves actions 1 and 2 apart but leaves P(action 0) = e^b / (e^b + (1 + u) + (1 - u))
    unchanged (up to rounding); only region B changes it."""

    def scores(x):
        u = torch.tanh(x[:, 0, 2:5, 2:5].mean((1, 2)) * 4) / 2
        return torch.stack([3 * x[:, 0, 18:21, 18:21].mean((1, 2)), (1 + u).log(), (1 - u).log()], 1)

    return fn_model(scores, (1, 24, 24))


def test_sarfa_is_specific_and_relevant():
    model = fetch_like_model()
    x = torch.zeros(2, 1, 24, 24)
    x[0, 0, 2:5, 2:5] = 1.0  # region A bright in both states
    x[1, 0, 2:5, 2:5] = 1.0
    x[0, 0, 18:21, 18:21] = 1.0  # state 0: region B bright on black: blurring it lowers P(0)
    x[1, 0, 16:23, 16:23] = 1.0  # state 1: region B black in a bright square: blurring raises P(0)
    x[1, 0, 18:21, 18:21] = 0.0
    sarfa = get_explainer("sarfa", model, stride=1, radius=1.5)
    saliency = sarfa.explain(x, targets=0)
    greydanus = get_explainer("greydanus", model, stride=1, radius=1.5).explain(x)
    # masks reach 4 * radius = 6 pixels: centres in rows/cols 0..10 touch A, never B
    near_a = (slice(None), slice(0, 11), slice(0, 11))
    assert (greydanus[near_a] > 1e-4).any()  # the policy changes there (actions 1 and 2)...
    assert saliency[near_a].abs().max() < 1e-6  # ...but not P(action 0): no saliency
    # state 1: blurring B raises P(0) -> exactly zero saliency around B (and none elsewhere)
    assert torch.equal(saliency[1, 12:, 12:], torch.zeros(12, 12)) and saliency[1].abs().max() < 1e-6
    assert (greydanus[1, 12:, 12:] > 1e-4).any()
    # state 0 around B: P(0) drops and actions 1 and 2 keep their ratio (KL = 0, relevance 1),
    # so saliency = 2 dP / (dP + 1), positive
    blurred = gaussian_blur(x[:1], 3.0)
    masks = perturbation_masks(24, 24, 1, 1.5)
    with torch.no_grad():
        for row, col in ((19, 19), (17, 20), (21, 15)):
            mask = masks[row * 24 + col]
            d_p = model(x[:1]).softmax(-1)[0, 0] - model(x[:1] * (1 - mask) + blurred * mask).softmax(-1)[0, 0]
            assert d_p > 0
            torch.testing.assert_close(saliency[0, row, col], 2 * d_p / (d_p + 1), rtol=1e-4, atol=1e-7)


def test_sarfa_refuses_callable_targets_and_says_why():
    explainer = get_explainer("sarfa", tiny_model(), stride=3, radius=2.0)
    assert not explainer.callable_targets
    with pytest.raises(TypeError, match="action indices"):
        explainer.explain(rand(2, 2, 12, 12), targets=lambda s: s[:, 0] - s[:, 1])


def test_sarfa_of_a_single_action_model_is_zero():
    model = fn_model(lambda x: x.mean((1, 2, 3))[:, None], (2, 12, 12))
    saliency = get_explainer("sarfa", model, stride=3, radius=2.0).explain_all(rand(2, 2, 12, 12))
    assert saliency.shape == (2, 1, 12, 12) and torch.equal(saliency, torch.zeros_like(saliency))


# ---------------------------------------------------------------- RISE


def test_rise_matches_the_formula():
    model, x = tiny_model(), rand(2, 2, 12, 12)
    # raw scores (score="logits"); the default softmax probabilities are checked against the
    # authors' formula in test_baseline_protocols.py
    explainer = get_explainer("rise", model, n_masks=40, grid=3, p=0.3, batch_size=17, score="logits")
    masks = explainer.masks(12, 12)
    with torch.no_grad():
        scores = torch.stack([model(x * m) for m in masks], 1)  # (B, N, K)
    expected = torch.einsum("bnk,nhw->bkhw", scores, masks) / (40 * 0.3)
    torch.testing.assert_close(explainer.explain_all(x), expected, rtol=1e-4, atol=1e-6)


def test_rise_ranks_the_one_pixel_a_model_reads_first():
    pixels = [(int(r), int(c)) for r, c in torch.randint(0, 16, (20, 2), generator=torch.Generator().manual_seed(0))]
    model = fn_model(
        lambda x: torch.stack([x[:, 0, r, c] for r, c in pixels], 1), (2, 16, 16)
    )  # action k reads pixel k
    x = rand(1, 2, 16, 16) * 0.5 + 0.5
    for grid, within in ((16, 0), (8, 1)):  # pixel-sized cells: exactly first; cells of 2: within one pixel
        # raw scores: each action is one pixel's value (the softmax default couples the 20 actions)
        maps = get_explainer("rise", model, n_masks=1000, grid=grid, score="logits").explain_all(x)[0]  # (K, H, W)
        top = maps.flatten(1).argmax(1)
        found = torch.stack([top // 16, top % 16], 1)
        assert (found - torch.tensor(pixels)).abs().amax().item() <= within


def test_rise_masks_are_seeded_and_cached():
    explainer = get_explainer("rise", tiny_model(), n_masks=300, grid=4, p=0.25, seed=7)
    masks = explainer.masks(12, 12)
    assert explainer.masks(12, 12) is masks
    assert rise_masks(12, 12, 300, 4, 0.25, 7, torch.device("cpu")) is masks
    assert masks.shape == (300, 12, 12) and masks.min() >= 0 and masks.max() <= 1
    assert abs(masks.mean().item() - 0.25) < 0.03  # E[M] = p
    assert not torch.equal(masks, get_explainer("rise", tiny_model(), n_masks=300, grid=4, p=0.25).masks(12, 12))
    # smooth: neighbouring pixels differ by at most one cell's slope (1 / cell = 1/3)
    assert (masks.diff(dim=-1).abs().max() <= 1 / 3 + 1e-6) and (masks.diff(dim=-2).abs().max() <= 1 / 3 + 1e-6)


@pytest.mark.parametrize("bad", [{"n_masks": 0}, {"grid": 0}, {"grid": 2.5}, {"p": 0}, {"p": 1.5}, {"score": "l2"}])
def test_rise_rejects_bad_settings(bad):
    with pytest.raises(ValueError):
        get_explainer("rise", tiny_model(), **bad)


def test_mask_caches_are_bounded_in_bytes(monkeypatch):
    from xrl.explainers import masks as mask_module

    mask_module.perturbation_masks.cache_clear()
    monkeypatch.setattr(mask_module, "MASK_CACHE_BYTES", 3 * 16 * 16 * 4 * 64)  # three 64-mask sets of 16x16
    kept = [mask_module.perturbation_masks(16, 16, 2, r) for r in (1.0, 2.0, 3.0)]
    assert mask_module.cached_bytes() == 3 * 64 * 16 * 16 * 4
    assert mask_module.perturbation_masks(16, 16, 2, 1.0) is kept[0]  # most recently used now
    mask_module.perturbation_masks(16, 16, 2, 4.0)  # evicts the least recently used (radius 2)
    assert mask_module.cached_bytes() <= mask_module.MASK_CACHE_BYTES
    assert mask_module.perturbation_masks(16, 16, 2, 1.0) is kept[0]
    assert mask_module.perturbation_masks(16, 16, 2, 2.0) is not kept[1]  # rebuilt, equal
    assert torch.equal(mask_module.perturbation_masks(16, 16, 2, 2.0), kept[1])
    big = mask_module.perturbation_masks(16, 16, 1, 1.0)  # 256 masks: over the bound, not kept
    assert mask_module.perturbation_masks(16, 16, 1, 1.0) is not big
    mask_module.perturbation_masks.cache_clear()


def test_memory_is_estimated_before_large_allocations(monkeypatch):
    monkeypatch.setenv("XRL_MAX_ALLOC_GB", "0.001")  # 1 MB
    model = as_model(
        nn.Sequential(nn.Conv2d(1, 2, 3), nn.Flatten(), nn.Linear(2 * 62 * 62, 3)), input_shape=(1, 64, 64)
    )
    x = rand(1, 1, 64, 64)
    with pytest.raises(MemoryError, match="larger stride"):
        get_explainer("greydanus", model, stride=1).explain(x)  # 4096 masks of 64x64: 64 MB
    with pytest.raises(MemoryError, match="occlusion masks.*larger stride"):
        get_explainer("occlusion", model, window=2, stride=1).explain(x)
    with pytest.raises(MemoryError, match="n_masks"):
        get_explainer("rise", model, n_masks=2000).explain(x)
    with pytest.raises(MemoryError, match="batch_size"):
        get_explainer("greydanus", model, stride=16, batch_size=512).explain(torch.rand(20, 1, 64, 64))
    monkeypatch.setenv("XRL_MAX_ALLOC_GB", "abc")
    with pytest.raises(ValueError, match="XRL_MAX_ALLOC_GB"):
        get_explainer("greydanus", model, stride=16).explain(x)


@pytest.mark.parametrize("name", ["occlusion", "greydanus", "rise"])
def test_a_model_returning_a_view_of_its_input_keeps_every_chunk(name):
    # the batch buffer is reused from chunk to chunk: scores that alias it must be copied
    view = fn_model(lambda x: x.flatten(1)[:, :3], (1, 6, 6))
    copy = fn_model(lambda x: x.flatten(1)[:, :3].clone(), (1, 6, 6))
    x = rand(3, 1, 6, 6)
    settings = {
        "greydanus": {"stride": 2, "radius": 1.0},
        "occlusion": {"window": 2, "stride": 2},
        "rise": {"n_masks": 16, "grid": 2},
    }[name]
    a = get_explainer(name, view, batch_size=5, **settings).explain_all(x)
    b = get_explainer(name, copy, batch_size=5, **settings).explain_all(x)
    assert torch.equal(a, b)


@pytest.mark.parametrize("name", METHODS)
def test_cpu_chunks_hold_at_most_resident_bytes_and_give_the_same_maps(name, monkeypatch):
    """Issue 45: on the CPU a chunk holds at most RESIDENT_BYTES of states (fewer rows than
    batch_size), so the network's activations stay mapped without allocator settings; the maps
    are those of chunks of batch_size rows."""
    from xrl.explainers import perturbation

    model = tiny_model(side=12)
    states = rand(3, 2, 12, 12, seed=4)
    row_bytes = 2 * 12 * 12 * 4
    monkeypatch.setattr(perturbation, "RESIDENT_BYTES", 5 * row_bytes + 3)  # 5 rows per chunk
    calls = []
    hook = model.net.register_forward_hook(lambda m, i, o: calls.append(i[0].shape[0]))
    maps = make(name, model, batch_size=64).explain_all(states)
    hook.remove()
    assert max(calls) == 5 and sum(calls) > 5
    monkeypatch.setattr(perturbation, "RESIDENT_BYTES", 2**62)  # chunks of batch_size rows, as before
    calls.clear()
    hook = model.net.register_forward_hook(lambda m, i, o: calls.append(i[0].shape[0]))
    torch.testing.assert_close(make(name, model, batch_size=64).explain_all(states), maps, rtol=0, atol=1e-6)
    hook.remove()
    assert max(calls) == 64
