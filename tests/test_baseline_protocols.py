"""Baselines as their authors ran them (issue 23): each option that claims to follow the authors'
code is compared with an independent numpy/scipy/scikit-image re-implementation of that code's
procedure, written here from its description (not copied):

- Greydanus et al. 2018, github.com/greydanus/visualize_atari ``saliency.py`` (``get_mask``,
  ``occlude``, ``score_frame``);
- RISE, Petsiuk et al. 2018, github.com/eclique/RISE ``explanations.py`` (``generate_masks``,
  ``RISE.forward``) with the model wrapped in a softmax (their ``Saliency.py``);
- TorchRay's RISE (``preset="torchray"``), github.com/facebookresearch/TorchRay
  ``torchray/attribution/rise.py`` (``rise``, ``_upsample_reflect``), ported line by line;
- LIME, Ribeiro et al. 2016, github.com/marcotcr/lime ``lime/lime_image.py``
  (``ImageExplanation.get_image_and_mask``) and ``lime/lime_base.py`` (the ordering of
  ``local_exp``);
- extremal perturbations, Fong et al. 2019, github.com/facebookresearch/TorchRay
  ``torchray/attribution/extremal_perturbation.py`` (the defaults of ``extremal_perturbation``).
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy.ndimage import gaussian_filter
from torch import nn

from xrl.agents.model import as_model
from xrl.explainers import get_explainer


def small_net(channels=1, side=20, k=4, seed=0):
    torch.manual_seed(seed)
    net = nn.Sequential(
        nn.Conv2d(channels, 6, 3, stride=2, padding=1), nn.ELU(), nn.Flatten(), nn.Linear(6 * ((side + 1) // 2) ** 2, k)
    )
    return as_model(net, input_shape=(channels, side, side))


def rand(*shape, seed=0):
    return torch.rand(*shape, generator=torch.Generator().manual_seed(seed))


# ---------------------------------------------------------------- Greydanus


def reference_mask(centre, shape, r):
    """Their ``get_mask``: the pixels within distance 1 of ``centre``, blurred by scipy (std r,
    default reflect borders), divided by the maximum."""
    rows, cols = np.meshgrid(np.arange(shape[0]), np.arange(shape[1]), indexing="ij")
    spot = ((rows - centre[0]) ** 2 + (cols - centre[1]) ** 2 <= 1).astype(np.float64)
    spot = gaussian_filter(spot, sigma=r)
    return spot / spot.max()


def reference_score_frame(model, frame, r, d, blur=3.0):
    """Their ``score_frame`` on one 2-D frame (mode "actor": raw outputs), coarse grid only:
    ``0.5 * ||L - l||^2`` for a mask centred on every d-th pixel, with their ``occlude``
    ``I * (1 - M) + gaussian_filter(I, sigma=3) * M``."""
    height, width = frame.shape

    def run(image):
        return model(torch.from_numpy(image).float()[None, None])[0].double().numpy()

    base = run(frame)
    blurred = gaussian_filter(frame, sigma=blur)
    grid = np.zeros((len(range(0, height, d)), len(range(0, width, d))))
    for i in range(0, height, d):
        for j in range(0, width, d):
            mask = reference_mask((i, j), (height, width), r)
            moved = run(frame * (1 - mask) + blurred * mask)
            grid[i // d, j // d] = 0.5 * ((base - moved) ** 2).sum()
    return grid


@pytest.mark.parametrize("r, d", [(2.0, 3), (5.0, 5)])
def test_greydanus_logits_score_matches_score_frame(r, d):
    model, x = small_net(), rand(2, 1, 20, 20)
    explainer = get_explainer("greydanus", model, radius=r, stride=d, score="logits", mask="greydanus")
    coarse = explainer.explain(x)[:, ::d, ::d].double()  # each grid value sits on its own pixel
    with torch.no_grad():
        expected = np.stack([reference_score_frame(model, s[0].double().numpy(), r, d) for s in x])
    np.testing.assert_allclose(coarse.numpy(), expected, rtol=1e-4, atol=1e-6 * expected.max())
    # per-action terms of the logits score sum to it
    torch.testing.assert_close(explainer.explain_all(x).sum(1), explainer.explain(x), rtol=1e-5, atol=1e-8)
    # the masks themselves are get_mask's
    masks = explainer.masks(20, 20).double().numpy()
    centres = [(i, j) for i in range(0, 20, d) for j in range(0, 20, d)]
    reference = np.stack([reference_mask(c, (20, 20), r) for c in centres])
    np.testing.assert_allclose(masks, reference, atol=1e-6)


def test_greydanus_default_mask_agrees_with_score_frame_away_from_the_border():
    """Our Gaussian masks (replicated blur borders) differ from get_mask (a blurred 5-pixel plus,
    folded at the borders; reflect blur borders): for radius 5 the coarse scores of centres at
    least 20 pixels from every border agree within 2% of the peak (measured 1.3%)."""
    side, r, d = 60, 5.0, 5
    model, x = small_net(side=side), rand(1, 1, side, side, seed=3)
    ours = get_explainer("greydanus", model, radius=r, stride=d).explain(x)[0, ::d, ::d].double().numpy()
    with torch.no_grad():
        theirs = reference_score_frame(model, x[0, 0].double().numpy(), r, d)
    inner = slice(4, -4)
    a, b = ours[inner, inner], theirs[inner, inner]
    assert np.abs(a - b).max() / b.max() < 0.02
    assert np.corrcoef(a.ravel(), b.ravel())[0, 1] > 0.999
    assert np.corrcoef(ours.ravel(), theirs.ravel())[0, 1] > 0.98  # the whole grid (borders too)


def test_greydanus_scores_and_their_names():
    model, x = small_net(), rand(2, 1, 20, 20)
    default = get_explainer("greydanus", model, stride=4, radius=2.0)
    assert default.score == "logits" and default.mask == "gaussian"
    assert get_explainer("greydanus", model, score="l2").score == "probability"  # the old name
    old = get_explainer("greydanus", model, stride=4, radius=2.0, score="l2").explain(x)
    new = get_explainer("greydanus", model, stride=4, radius=2.0, score="probability").explain(x)
    assert torch.equal(old, new)
    with torch.no_grad():
        logits = model(x)
    probs_only = get_explainer(
        "greydanus",
        as_model(nn.Sequential(model.net, nn.LogSoftmax(-1)), input_shape=(1, 20, 20)),
        stride=4,
        radius=2.0,
    )
    # the logits score of a model whose outputs are log-probabilities is not the probability score
    assert not torch.allclose(probs_only.explain(x), new)
    assert logits.shape == (2, 4)


# ---------------------------------------------------------------- RISE


def our_draws(height, width, n, s, p1, seed):
    """The random numbers our masks use, drawn as rise_masks draws them: cells, row shifts, column shifts."""
    generator = torch.Generator().manual_seed(seed)
    cell = (math.ceil(height / s), math.ceil(width / s))
    grid = (torch.rand(n, 1, s, s, generator=generator) < p1).float()[:, 0].numpy()
    rows = torch.randint(0, cell[0], (n,), generator=generator).numpy()
    cols = torch.randint(0, cell[1], (n,), generator=generator).numpy()
    return grid, rows, cols


def reference_masks(height, width, grid, rows, cols):
    """Their ``generate_masks`` with given draws: each binary grid resized with scikit-image
    (linear, reflect borders, no anti-aliasing) to ``(s + 1) * cell_size`` and cropped at the shift."""
    from skimage.transform import resize

    s = grid.shape[-1]
    cell = np.ceil(np.array([height, width]) / s)
    up = ((s + 1) * cell).astype(int)
    return np.stack(
        [
            resize(g, up, order=1, mode="reflect", anti_aliasing=False)[x : x + height, y : y + width]
            for g, x, y in zip(grid, rows, cols)
        ]
    )


@pytest.mark.parametrize("height, width, s, p1", [(20, 20, 4, 0.5), (21, 17, 3, 0.3), (84, 84, 8, 0.5)])
def test_rise_masks_match_generate_masks(height, width, s, p1):
    n = 200
    model = small_net(side=max(height, width))  # only used to build the explainer
    ours = get_explainer("rise", model, n_masks=n, grid=s, p=p1, seed=5).masks(height, width).double().numpy()
    theirs = reference_masks(height, width, *our_draws(height, width, n, s, p1, seed=5))
    np.testing.assert_allclose(ours, theirs, atol=2e-7)


def test_rise_saliency_matches_the_authors_formula():
    model, x = small_net(k=5), rand(2, 1, 20, 20, seed=2)
    n, s, p1 = 300, 4, 0.5
    explainer = get_explainer("rise", model, n_masks=n, grid=s, p=p1, seed=1, batch_size=77)
    assert explainer.score == "probability"  # the default: the authors' softmax-wrapped model
    masks = reference_masks(20, 20, *our_draws(20, 20, n, s, p1, seed=1))  # (N, H, W)
    for b in range(2):
        frame = x[b].double().numpy()
        with torch.no_grad():  # RISE.forward: p = softmax(model(masks * x)); sal = p^T M / N / p1
            p = torch.softmax(model(torch.from_numpy(masks[:, None] * frame).float()), -1).double().numpy()
        expected = (p.T @ masks.reshape(n, -1)).reshape(5, 20, 20) / n / p1
        np.testing.assert_allclose(
            explainer.explain_all(x[b : b + 1])[0].double().numpy(), expected, rtol=1e-4, atol=1e-6
        )
    raw = get_explainer("rise", model, n_masks=n, grid=s, p=p1, seed=1, score="logits").explain_all(x[:1])[0]
    with torch.no_grad():
        scores = model(torch.from_numpy(masks[:, None] * x[0].double().numpy()).float()).double().numpy()
    np.testing.assert_allclose(
        raw.double().numpy(), (scores.T @ masks.reshape(n, -1)).reshape(5, 20, 20) / n / p1, rtol=1e-4, atol=1e-5
    )


# ---------------------------------------------------------------- TorchRay's RISE


def torchray_upsample_reflect(x, size):
    """TorchRay's ``_upsample_reflect``: reflect-pad by one cell, bilinear resize to
    ``cell * (n + 2)``, slice ``size`` from ``cell`` on."""
    orig_size = x.shape[2:]
    cell_size = [int(np.ceil(s / orig_size[i])) for i, s in enumerate(size)]
    pad_size = [int(cell_size[i] * (orig_size[i] + 2)) for i in range(len(orig_size))]
    x_padded = torch.nn.functional.pad(x, (1, 1, 1, 1), mode="reflect")
    x_up = torch.nn.functional.interpolate(x_padded, pad_size, mode="bilinear", align_corners=False)
    return x_up[:, :, cell_size[0] : cell_size[0] + size[0], cell_size[1] : cell_size[1] + size[1]]


def torchray_rise(model, input, seed=0, num_masks=8000, num_cells=7, batch_size=32, p=0.5):
    """TorchRay's ``rise`` (CPU inputs, no filter_masks, resize=False): every class's map."""
    with torch.no_grad():
        height, width = input.shape[2], input.shape[3]
        num_classes = model(input).shape[1]
        saliency = torch.zeros([input.shape[0], num_classes, height, width])
        cell_size = tuple(int(np.ceil(s / num_cells)) for s in input.shape[2:])
        up_size = tuple(input.shape[2 + i] + cell_size[i] for i in range(2))
        state = torch.get_rng_state()
        torch.manual_seed(seed)
        num_chunks = (num_masks + batch_size - 1) // batch_size
        for chunk in range(num_chunks):
            mask_bs = min(num_masks - batch_size * chunk, batch_size)
            grid = (torch.rand(mask_bs, 1, num_cells, num_cells) < p).float()
            masks_up = torchray_upsample_reflect(grid, up_size)
            masks = torch.empty(mask_bs, 1, height, width)
            shift_x = torch.randint(0, cell_size[0], (mask_bs,))
            shift_y = torch.randint(0, cell_size[1], (mask_bs,))
            for i in range(mask_bs):
                masks[i] = masks_up[i, :, shift_x[i] : shift_x[i] + height, shift_y[i] : shift_y[i] + width]
            for i, inp in enumerate(input):
                out = torch.sigmoid(model(inp.unsqueeze(0) * masks))
                sal = torch.matmul(out.data.transpose(0, 1), masks.view(mask_bs, height * width))
                saliency[i] = saliency[i] + sal.view((num_classes, height, width))
        saliency /= num_masks
        torch.set_rng_state(state)
        return saliency


@pytest.mark.parametrize("side, cells, n, seed", [(20, 7, 100, 0), (17, 4, 70, 3)])
def test_rise_torchray_preset_matches_torchrays_rise(side, cells, n, seed):
    model, x = small_net(side=side, k=5), rand(2, 1, side, side, seed=seed)
    explainer = get_explainer("rise", model, preset="torchray", n_masks=n, grid=cells, seed=seed, batch_size=33)
    expected = torchray_rise(model, x, seed=seed, num_masks=n, num_cells=cells)
    np.testing.assert_allclose(explainer.explain_all(x).numpy(), expected.numpy(), rtol=1e-5, atol=1e-6)
    targets = torch.tensor([1, 3])
    np.testing.assert_allclose(
        explainer.explain(x, targets).numpy(), expected[torch.arange(2), targets].numpy(), rtol=1e-5, atol=1e-6
    )
    # not eclique's RISE: another mask generator, sigmoid scores, no division by p
    assert not torch.allclose(get_explainer("rise", model, n_masks=n, grid=cells, seed=seed).explain_all(x), expected)


def test_rise_presets_set_what_they_say():
    model = small_net()
    torchray = get_explainer("rise", model, preset="torchray")
    assert (torchray.n_masks, torchray.grid, torchray.p, torchray.score) == (8000, 7, 0.5, "sigmoid")
    default = get_explainer("rise", model)
    assert (default.preset, default.n_masks, default.grid, default.p, default.score) == (
        "eclique",
        2000,
        8,
        0.5,
        "probability",
    )
    mixed = get_explainer("rise", model, preset="torchray", n_masks=100, score="probability")
    assert (mixed.n_masks, mixed.grid, mixed.score) == (100, 7, "probability")
    with pytest.raises(ValueError, match="preset"):
        get_explainer("rise", model, preset="captum")
    with pytest.raises(ValueError, match="grid"):
        get_explainer("rise", model, preset="torchray", grid=1)


# ---------------------------------------------------------------- LIME


def reference_lime_mask(beta, num_features, positive_only=True, negative_only=False, min_weight=0.0):
    """lime's ``get_image_and_mask`` mask over superpixels, from coefficients as lime_base
    returns them (``local_exp``: (feature, weight) pairs sorted by decreasing |weight|)."""
    local_exp = sorted(enumerate(beta.tolist()), key=lambda fw: abs(fw[1]), reverse=True)
    mask = np.zeros(len(beta))
    if positive_only or negative_only:
        if positive_only:
            keep = [f for f, w in local_exp if w > 0 and w > min_weight]
        else:
            keep = [f for f, w in local_exp if w < 0 and abs(w) > min_weight]
        mask[keep[:num_features]] = 1
        return mask
    for f, w in local_exp[:num_features]:
        if abs(w) < min_weight:
            continue
        mask[f] = -1 if w < 0 else 1
    return mask


@pytest.mark.parametrize(
    "options",
    [
        {},
        {"num_features": 3},
        {"num_features": 20},
        {"positive_only": False},
        {"positive_only": False, "min_weight": 0.05},
        {"positive_only": False, "negative_only": True},
        {"min_weight": 0.05},
    ],
)
def test_lime_binary_output_is_get_image_and_mask(options):
    model, x = small_net(channels=2, side=16, k=3), rand(2, 2, 16, 16, seed=4)
    settings = {"segmentation": "grid", "cell": 4, "n_samples": 200, "fill": "black"}
    coefficients = get_explainer("lime", model, **settings)
    binary = get_explainer("lime", model, output="binary", **settings, **options)
    beta_maps, binary_maps = coefficients.explain_all(x), binary.explain_all(x)  # (B, K, 16, 16)
    reference_options = {"num_features": 5, **options}
    for b in range(2):
        for k in range(3):
            beta = beta_maps[b, k, ::4, ::4].flatten().double().numpy()  # one pixel per 4x4 cell
            expected = reference_lime_mask(beta, **reference_options)
            got = binary_maps[b, k, ::4, ::4].flatten().double().numpy()
            np.testing.assert_array_equal(got, expected)
            # constant on each superpixel
            torch.testing.assert_close(
                binary_maps[b, k],
                torch.from_numpy(expected).float().view(4, 4).repeat_interleave(4, 0).repeat_interleave(4, 1),
            )
    torch.testing.assert_close(binary.explain(x, targets=1), binary_maps[:, 1])


def test_lime_binary_rejects_bad_settings():
    model = small_net(channels=2, side=16, k=3)
    for bad in ({"output": "mask"}, {"num_features": 0}, {"positive_only": True, "negative_only": True}):
        with pytest.raises(ValueError):
            get_explainer("lime", model, **bad)


# ---------------------------------------------------------------- extremal perturbations

#: TorchRay's extremal_perturbation() defaults as its code sets them (max_iter, the SGD
#: optimiser's lr, pmask = ones, step, sigma, Perturbation's max_blur and num_levels, areas,
#: regul_weight and its 1.0035 growth per iteration, coldness = 20)
TORCHRAY = {
    "iterations": 800,
    "lr": 0.01,
    "optimizer": "sgd",
    "init": 1.0,
    "step": 7,
    "sigma": 21.0,
    "max_blur": 20.0,
    "num_levels": 8,
    "area": 0.1,
    "area_weight": 300.0,
    "temperature": 1 / 20,
}
FAST = {
    "iterations": 100,
    "lr": 0.05,
    "optimizer": "adam",
    "init": 1.0,
    "step": 4,
    "sigma": 8.0,
    "max_blur": 8.0,
    "num_levels": 8,
    "area": 0.12,
    "area_weight": 300.0,
    "temperature": 0.05,
}


@pytest.mark.parametrize("preset, expected, growth", [("torchray", TORCHRAY, 1.0035**800), ("fast", FAST, 16.0)])
def test_extremal_presets_set_what_they_say(preset, expected, growth):
    model = small_net()
    explainer = get_explainer("extremal_perturbation", model, preset=preset)
    for name, value in expected.items():
        assert getattr(explainer, name) == value, name
    assert explainer.area_growth == pytest.approx(growth)
    # TorchRay's weight at iteration t is 300 * 1.0035^t: ours is area_weight * growth^(t / T)
    if preset == "torchray":
        t = 517
        assert 300 * explainer.area_growth ** (t / explainer.iterations) == pytest.approx(300 * 1.0035**t)
    assert explainer.reward == "simple"


def test_extremal_default_is_the_fast_preset_and_explicit_settings_win():
    model = small_net()
    default = get_explainer("extremal_perturbation", model)
    assert default.preset == "fast" and all(getattr(default, k) == v for k, v in FAST.items())
    mixed = get_explainer("extremal_perturbation", model, preset="torchray", iterations=50, init=0.5, lr=0.02)
    assert (mixed.iterations, mixed.init, mixed.lr) == (50, 0.5, 0.02)
    assert (mixed.optimizer, mixed.step, mixed.sigma, mixed.area) == ("sgd", 7, 21.0, 0.1)  # the rest: torchray
    fast = get_explainer("extremal_perturbation", model, preset="fast", optimizer="sgd", area=0.2)
    assert (fast.optimizer, fast.area, fast.iterations) == ("sgd", 0.2, 100)
    with pytest.raises(ValueError):
        get_explainer("extremal_perturbation", model, preset="paper")
    with pytest.raises(ValueError):
        get_explainer("extremal_perturbation", model, optimizer="lbfgs")
    with pytest.raises(ValueError):
        get_explainer("extremal_perturbation", model, init=1.5)


def test_extremal_torchray_settings_run():
    """The SGD optimiser and a start at 0.5 run and give masks in [0, 1] (few iterations: fast)."""
    model, x = small_net(side=28), rand(1, 1, 28, 28)
    for settings in ({"preset": "torchray", "iterations": 5}, {"iterations": 5, "init": 0.5}):
        mask = get_explainer("extremal_perturbation", model, **settings).explain(x)
        assert mask.shape == (1, 28, 28) and mask.min() >= 0 and mask.max() <= 1
