"""Named metric protocols checked against their reference code, not against xrl.

* ``deletion`` / ``insertion`` with ``protocol="rise"``: an independent numpy/scipy port of
  RISE's ``CausalMetric.single_run`` and ``auc`` (Petsiuk, Das & Saenko 2018, arXiv:1806.07421;
  github.com/eclique/RISE, ``evaluation.py``, settings of ``Evaluation.ipynb``: ``step=224`` =
  one row, ``gkern(11, 5)``, zero-padded blur, ``torch.zeros_like`` deletion, softmax model).
* ``lipschitz`` with ``protocol="quantus"``: Quantus' ``LocalLipschitzEstimate`` itself when it
  imports (fed xrl's noise draws), and a line-by-line numpy port of it otherwise.
* ``deletion`` / ``insertion`` and ``lipschitz`` with ``protocol="latec"``: ports of LATEC's code
  (Klein et al. 2024, arXiv:2409.16756; github.com/IML-DKFZ/latec,
  ``src/modules/components/insertion_deletion.py`` ``Insertion`` / ``Deletion`` /
  ``PixelPerturber``, and ``src/modules/registry/eval_metrics_registry.py`` +
  ``configs/eval_metric/image_imagenet.yaml`` for ``LocalLipschitzEstimate`` of the Quantus fork
  github.com/lukaskln/Quantus, ``quantus/metrics/robustness/local_lipschitz_estimate.py``,
  ``functions/normalise_func.py``, ``perturb_func.py``, ``similarity_func.py``).

Nothing here calls xrl's metric code to build the expected values.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.ndimage import correlate, gaussian_filter
from torch import nn

from xrl import as_model
from xrl.explainers.base import Explainer
from xrl.metrics import get_metric

# --- RISE's CausalMetric, re-implemented from github.com/eclique/RISE evaluation.py ----------------


def gkern(klen: int, nsig: float) -> np.ndarray:
    """RISE's kernel: scipy's gaussian_filter of a centred klen x klen Dirac, float32."""
    inp = np.zeros((klen, klen))
    inp[klen // 2, klen // 2] = 1
    return gaussian_filter(inp, nsig).astype(np.float32)


def rise_blur(img: np.ndarray, klen: int = 11, nsig: float = 5.0) -> np.ndarray:
    """conv2d(x, kern, padding=klen // 2) with kern[c, c] = k: each channel alone, zero padding."""
    k = gkern(klen, nsig)
    return np.stack(
        [
            correlate(img[c].astype(np.float64), k.astype(np.float64), mode="constant", cval=0.0)
            for c in range(img.shape[0])
        ]
    ).astype(np.float32)


def rise_auc(arr: np.ndarray) -> float:
    return float((arr.sum() - arr[0] / 2 - arr[-1] / 2) / (arr.shape[0] - 1))


def causal_metric(probs, img: np.ndarray, explanation: np.ndarray, mode: str, step: int) -> np.ndarray:
    """``CausalMetric(model, mode, step, substrate_fn).single_run(img, explanation)`` for one
    ``(C, H, W)`` image: the scores at every step. ``probs`` maps ``(1, C, H, W)`` float32 to
    softmax probabilities (RISE's model is ``nn.Sequential(net, nn.Softmax(dim=1))``)."""
    c_dim, h, w = img.shape
    hw = h * w
    c = int(np.argmax(probs(img[None])[0]))
    n_steps = (hw + step - 1) // step
    if mode == "del":
        start, finish = img.copy(), np.zeros_like(img)
    else:
        start, finish = rise_blur(img), img.copy()
    scores = np.empty(n_steps + 1)
    salient_order = np.flip(np.argsort(explanation.reshape(-1, hw), axis=1), axis=-1)
    for i in range(n_steps + 1):
        scores[i] = probs(start[None])[0, c]
        if i < n_steps:
            coords = salient_order[:, step * i : step * (i + 1)]
            start.reshape(1, c_dim, hw)[0, :, coords] = finish.reshape(1, c_dim, hw)[0, :, coords]
    return scores


def small_net(channels: int, h: int, w: int, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv2d(channels, 4, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(4, 4, 3, stride=2),
        nn.ReLU(),
        nn.Flatten(),
        nn.LazyLinear(5),
    ).eval()


def setup(c: int, h: int, w: int, b: int = 3, seed: int = 0):
    net = small_net(c, h, w, seed)
    gen = torch.Generator().manual_seed(seed + 1)
    states = torch.rand(b, c, h, w, generator=gen)
    with torch.no_grad():
        net(states)  # materialise the lazy layer
        for p in net.parameters():  # larger weights: probabilities that move along the curve
            p.mul_(3.0)
    saliency = torch.rand(b, h, w, generator=gen)
    assert all(len(set(m.flatten().tolist())) == h * w for m in saliency)  # tie-free
    return as_model(net, input_shape=(c, h, w)), net, states, saliency


def probs_of(net):
    def probs(x: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return torch.softmax(net(torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))), 1).numpy()

    return probs


@pytest.mark.parametrize("c, h, w", [(3, 12, 12), (2, 7, 13), (4, 10, 6)])
@pytest.mark.parametrize("name, mode", [("deletion", "del"), ("insertion", "ins")])
def test_rise_protocol_matches_rise_causal_metric(c, h, w, name, mode):
    model, net, states, saliency = setup(c, h, w)
    ours = get_metric(name, protocol="rise")(model=model, states=states, saliency=saliency)
    _, curve = get_metric(name, protocol="rise").curve(model=model, states=states, saliency=saliency)
    reference = [
        causal_metric(probs_of(net), states[i].numpy(), saliency[i].numpy(), mode, step=w)
        for i in range(states.shape[0])
    ]
    assert curve.shape == (states.shape[0], h + 1)  # n_steps = ceil(H*W / W) = H, n_steps + 1 points
    np.testing.assert_allclose(curve.numpy(), np.stack(reference), rtol=0, atol=1e-5)
    expected = np.array([rise_auc(r) for r in reference])
    np.testing.assert_allclose(ours.numpy(), expected, rtol=0, atol=1e-5)
    assert np.ptp(np.stack(reference)) > 0.05  # the curves move: the comparison is not vacuous


def test_rise_is_the_default_protocol():
    model, _, states, saliency = setup(2, 7, 13)
    for name in ("deletion", "insertion"):
        torch.testing.assert_close(
            get_metric(name)(model=model, states=states, saliency=saliency),
            get_metric(name, protocol="rise")(model=model, states=states, saliency=saliency),
        )


def test_rise_protocol_with_a_step_fraction_is_rises_step_argument():
    # step_fraction=f sets RISE's step to ceil(f * H * W) pixels; the last step is shorter here
    model, net, states, saliency = setup(2, 7, 13)
    step = int(np.ceil(0.15 * 7 * 13))  # 14 pixels, 7 steps, the last one 7 pixels
    for name, mode in (("deletion", "del"), ("insertion", "ins")):
        ours = get_metric(name, protocol="rise", step_fraction=0.15)(model=model, states=states, saliency=saliency)
        expected = [
            rise_auc(causal_metric(probs_of(net), states[i].numpy(), saliency[i].numpy(), mode, step))
            for i in range(states.shape[0])
        ]
        np.testing.assert_allclose(ours.numpy(), expected, rtol=0, atol=1e-5)


def test_rise_blur_is_scipys_gkern_zero_padded():
    from xrl.metrics.faithfulness import Substrate

    states = torch.rand(2, 3, 9, 14, generator=torch.Generator().manual_seed(4))
    ours = Substrate("blur", blur="rise")(states)
    expected = np.stack([rise_blur(s.numpy()) for s in states])
    np.testing.assert_allclose(ours.numpy(), expected, rtol=0, atol=1e-6)
    ours = Substrate("blur", blur="rise", blur_kernel=5, blur_sigma=1.5)(states)
    expected = np.stack([rise_blur(s.numpy(), 5, 1.5) for s in states])
    np.testing.assert_allclose(ours.numpy(), expected, rtol=0, atol=1e-6)


def test_protocols_refuse_unknown_names():
    with pytest.raises(ValueError, match="protocol must be one of"):
        get_metric("deletion", protocol="RISE")
    with pytest.raises(ValueError, match="protocol must be one of"):
        get_metric("lipschitz", protocol="captum")
    with pytest.raises(ValueError, match="protocol must be one of"):
        get_metric("insertion", protocol="LATEC")


# --- Quantus' LocalLipschitzEstimate ----------------------------------------------------------------


class SmoothGrad(Explainer):
    """A deterministic, non-linear explainer: the gradient of the target score times the input,
    squared channel sum (maps of varying scale and sign-free)."""

    def _explain(self, states, target_fn):
        x = states.detach().clone().requires_grad_(True)
        score = target_fn(self.model(x)).sum()
        (grad,) = torch.autograd.grad(score, x)
        return (grad * x).sum(1).detach()


class Signed(Explainer):
    """Signed maps: the gradient's channel sum (negative values, all-zero impossible)."""

    def _explain(self, states, target_fn):
        x = states.detach().clone().requires_grad_(True)
        (grad,) = torch.autograd.grad(target_fn(self.model(x)).sum(), x)
        return grad.sum(1).detach() * 100.0


def quantus_port(explain, x: np.ndarray, y: np.ndarray, a: np.ndarray, noise: np.ndarray) -> np.ndarray:
    """Line-by-line numpy port of Quantus 0.6 ``LocalLipschitzEstimate.evaluate_batch`` with its
    defaults, for a batch of ONE state at a time (Quantus' batch_size=1), the noise given:
    ``noise[step_id]`` replaces ``np.random.normal(0, 0.1, size)`` of ``batch_gaussian_noise``."""

    def normalise_by_max(arr):  # quantus/functions/normalise_func.py, normalise_axes=None
        if np.all(arr == 0.0):
            return arr
        return arr / np.max(np.abs(arr), axis=tuple(range(arr.ndim)), keepdims=True)

    def distance_euclidean(p, q):  # quantus/functions/similarity_func.py
        return ((p - q) ** 2).sum(axis=-1) ** 0.5

    out = []
    for i in range(x.shape[0]):
        x_batch, y_batch = x[i : i + 1], y[i : i + 1]
        a_batch = normalise_by_max(a[i : i + 1]).reshape(1, -1)  # general_preprocess: normalise, abs=False
        similarities = np.zeros((1, noise.shape[0])) * np.nan
        for step_id in range(noise.shape[0]):
            arr = x_batch.reshape(1, -1)
            x_perturbed = arr.copy()
            x_perturbed[:] = arr + noise[step_id].reshape(1, -1)  # float64 sum stored in float32
            x_perturbed = x_perturbed.reshape(*x_batch.shape)
            a_perturbed = normalise_by_max(explain(x_perturbed, y_batch)).reshape(1, -1)
            similarities[:, step_id] = distance_euclidean(a_batch, a_perturbed) / (
                distance_euclidean(x_batch.reshape(1, -1), x_perturbed.reshape(1, -1)) + 1e-10
            )
        out.append(np.nanmax(similarities, axis=1)[0])
    return np.array(out)


def lipschitz_setup(explainer_cls=SmoothGrad):
    model, net, states, _ = setup(2, 6, 5, b=3, seed=3)
    explainer = explainer_cls(model)
    targets = model(states).argmax(1)
    return model, explainer, states, targets


def explain_np(explainer):
    def explain(x: np.ndarray, y: np.ndarray) -> np.ndarray:
        return explainer.explain(
            torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)), torch.from_numpy(np.asarray(y))
        ).numpy()

    return explain


def documented_noise(n_samples: int, shape, std: float, seed: int) -> np.ndarray:
    """The draws the docstring promises: torch.randn((n_samples, C, H, W), generator) * std."""
    return (torch.randn((n_samples, *shape), generator=torch.Generator().manual_seed(seed)) * std).numpy()


@pytest.mark.parametrize("explainer_cls", [SmoothGrad, Signed])
def test_quantus_protocol_matches_a_line_by_line_port(explainer_cls):
    _, explainer, states, targets = lipschitz_setup(explainer_cls)
    saliency = explainer.explain(states, targets)
    metric = get_metric("lipschitz", protocol="quantus", n_samples=12, seed=5)
    ours = metric(states=states, saliency=saliency, explainer=explainer, targets=targets)
    noise = documented_noise(12, tuple(states.shape[1:]), 0.1, seed=5)
    expected = quantus_port(explain_np(explainer), states.numpy(), targets.numpy(), saliency.numpy(), noise)
    np.testing.assert_allclose(ours.numpy(), expected, rtol=1e-5)
    # targets=None is the action on the clean state
    torch.testing.assert_close(metric(states=states, saliency=saliency, explainer=explainer), ours)


def test_quantus_protocol_defaults():
    metric = get_metric("lipschitz", protocol="quantus")
    assert (metric.n_samples, metric.std) == (200, 0.1)
    with pytest.raises(ValueError, match="radius= is the L-inf ball"):
        get_metric("lipschitz", protocol="quantus", radius=0.02)
    with pytest.raises(ValueError, match="std= is the Gaussian noise"):
        get_metric("lipschitz", std=0.1)


def test_quantus_protocol_matches_quantus_itself():
    quantus = pytest.importorskip("quantus")
    _, explainer, states, targets = lipschitz_setup()
    saliency = explainer.explain(states, targets)
    n = 10
    noise = documented_noise(n, tuple(states.shape[1:]), 0.1, seed=0)
    calls = []

    def perturb_func(arr, indices, **kwargs):  # Quantus' batch_gaussian_noise with our draws
        out = arr.copy()
        step_id = len(calls) % n
        calls.append(step_id)
        out[np.arange(arr.shape[0])[:, None], indices] = (arr + noise[step_id].reshape(1, -1))[
            np.arange(arr.shape[0])[:, None], indices
        ]
        return out

    def explain_func(model, inputs, targets, **kwargs):
        return explain_np(explainer)(inputs, targets)

    lle = quantus.LocalLipschitzEstimate(nr_samples=n, perturb_func=perturb_func, disable_warnings=True)
    # one state per call: Quantus normalises the given maps by the max over the whole a_batch of the
    # call and the neighbours' maps by the max over each batch_size chunk; xrl normalises per map
    theirs = [
        lle(
            model=explainer.model.net,
            x_batch=states[i : i + 1].numpy(),
            y_batch=targets[i : i + 1].numpy(),
            a_batch=saliency[i : i + 1].numpy(),
            explain_func=explain_func,
            channel_first=True,
            batch_size=1,
            device="cpu",
        )[0]
        for i in range(states.shape[0])
    ]
    assert len(calls) == n * states.shape[0]
    ours = get_metric("lipschitz", protocol="quantus", n_samples=n)(
        states=states, saliency=saliency, explainer=explainer, targets=targets
    )
    np.testing.assert_allclose(ours.numpy(), np.asarray(theirs), rtol=1e-5)


@pytest.mark.parametrize("protocol", ["xrl", "quantus"])
def test_lipschitz_default_is_scale_free(protocol):
    class Times(Explainer):
        def __init__(self, model, *, inner, c):
            super().__init__(model)
            self.inner, self.c = inner, c

        def _explain(self, states, target_fn):
            return self.inner._explain(states, target_fn) * self.c

    model, explainer, states, targets = lipschitz_setup()
    settings = {} if protocol == "xrl" else {"protocol": protocol, "n_samples": 8}
    values = []
    for c in (1.0, 1000.0):
        scaled = Times(model, inner=explainer, c=c)
        values.append(
            get_metric("lipschitz", **settings)(
                states=states, saliency=scaled.explain(states, targets), explainer=scaled, targets=targets
            )
        )
    torch.testing.assert_close(values[1], values[0], rtol=1e-5, atol=0)
    assert (values[0] > 0).all()
    raw = [
        get_metric("lipschitz", protocol="xrl-raw")(
            states=states,
            saliency=Times(model, inner=explainer, c=c).explain(states, targets),
            explainer=Times(model, inner=explainer, c=c),
            targets=targets,
        )
        for c in (1.0, 1000.0)
    ]
    torch.testing.assert_close(raw[1], raw[0] * 1000, rtol=1e-4, atol=0)  # xrl-raw scales with the maps


def test_lipschitz_all_zero_maps_give_zero_and_values_do_not_depend_on_the_batch():
    class Zero(Explainer):
        def _explain(self, states, target_fn):
            return torch.zeros(states.shape[0], *states.shape[2:])

    model, explainer, states, targets = lipschitz_setup()
    zero = Zero(model)
    for protocol in ("xrl", "quantus", "xrl-raw"):
        metric = get_metric("lipschitz", protocol=protocol, n_samples=4)
        assert metric(states=states, saliency=zero.explain(states), explainer=zero).tolist() == [0.0] * 3
        whole = metric(states=states, saliency=explainer.explain(states, targets), explainer=explainer, targets=targets)
        alone = get_metric("lipschitz", protocol=protocol, n_samples=4, batch_size=1)(
            states=states[1:2],
            saliency=explainer.explain(states[1:2], targets[1:2]),
            explainer=explainer,
            targets=targets[1:2],
        )
        torch.testing.assert_close(alone, whole[1:2])


# --- LATEC's Insertion / Deletion, re-implemented from github.com/IML-DKFZ/latec ---------------------
# src/modules/components/insertion_deletion.py: per state, torch.topk over the flattened map,
# np.unravel_index, a PixelPerturber that copies [:, r, c] from its baseline, a while loop that
# perturbs pixel_batch_size pixels, *breaks* once every pixel is perturbed and otherwise scores
# softmax(model(current))[target]; AUC = scipy.integrate.trapezoid(scores, dx=1 / len(scores)).


def latec_curve(
    net,
    img: torch.Tensor,
    attribution: torch.Tensor,
    target: int,
    mode: str,
    pixel_batch_size=50,
    kernel_size=9,
    sigma=5.0,
):
    from scipy.integrate import trapezoid
    from torchvision.transforms import GaussianBlur

    num_pixels = attribution.numel()
    _, indices = torch.topk(attribution.flatten(), num_pixels)
    indices = np.unravel_index(indices.numpy(), tuple(attribution.size()))
    if mode == "ins":  # PixelPerturber(blurred_input, x): start blurred, copy the image's pixels in
        current, baseline = GaussianBlur(kernel_size, sigma)(img).clone(), img
    else:  # PixelPerturber(x, torch.zeros_like(x))
        current, baseline = img.clone(), torch.zeros_like(img)
    scores = []
    replaced = 0
    while replaced < num_pixels:
        batch = min(num_pixels - replaced, pixel_batch_size)
        for pixel in range(batch):
            r, c = indices[-2][replaced + pixel], indices[-1][replaced + pixel]
            current[:, r, c] = baseline[:, r, c]
        replaced += batch
        if replaced == num_pixels:
            break
        with torch.no_grad():
            scores.append(float(torch.softmax(net(current[None]), dim=-1)[0, target]))
    scores = np.array(scores)
    return scores, trapezoid(scores, dx=1.0 / len(scores))


@pytest.mark.parametrize("c, h, w, step", [(3, 12, 12, 10), (2, 7, 13, 9), (4, 15, 16, 50)])
@pytest.mark.parametrize("name, mode", [("deletion", "del"), ("insertion", "ins")])
def test_latec_protocol_matches_latecs_insertion_deletion(c, h, w, step, name, mode):
    model, net, states, saliency = setup(c, h, w)
    settings = {"protocol": "latec"} if step == 50 else {"protocol": "latec", "step_pixels": step}
    metric = get_metric(name, **settings)
    ours = metric(model=model, states=states, saliency=saliency)
    _, curve = metric.curve(model=model, states=states, saliency=saliency)
    targets = model(states).argmax(1)
    reference = [latec_curve(net, states[i], saliency[i], int(targets[i]), mode, step) for i in range(3)]
    assert curve.shape == (3, -(-h * w // step) - 1)  # no unperturbed, no fully perturbed point
    np.testing.assert_allclose(curve.numpy(), np.stack([r[0] for r in reference]), rtol=0, atol=1e-5)
    np.testing.assert_allclose(ours.numpy(), [r[1] for r in reference], rtol=0, atol=1e-5)
    assert np.ptp(np.stack([r[0] for r in reference])) > 0.05  # the curves move
    # LATEC's ImageNet config blurs with 15 taps
    if mode == "ins" and min(h, w) > 7:
        wide = get_metric(name, **settings, blur_kernel=15)(model=model, states=states, saliency=saliency)
        expected = [latec_curve(net, states[i], saliency[i], int(targets[i]), mode, step, 15)[1] for i in range(3)]
        np.testing.assert_allclose(wide.numpy(), expected, rtol=0, atol=1e-5)


def test_latec_protocol_settings():
    metric = get_metric("deletion", protocol="latec")
    assert metric.step(84, 84) == 50 and metric.substrate.kind == "black"
    insertion = get_metric("insertion", protocol="latec")
    assert (insertion.substrate.blur, insertion.substrate.blur_kernel, insertion.substrate.blur_sigma) == (
        "latec",
        9,
        5.0,
    )
    model, _, states, saliency = setup(2, 7, 13)
    with pytest.raises(ValueError, match="smaller step_pixels"):  # ceil(91 / 50) - 1 = 1 point
        metric(model=model, states=states, saliency=saliency)
    with pytest.raises(ValueError, match="step_pixels"):
        get_metric("deletion", protocol="xrl", step_pixels=10)
    with pytest.raises(ValueError, match="step_pixels"):
        get_metric("deletion", protocol="latec", step_pixels=0)


def test_latec_blur_is_torchvisions_gaussian_blur_with_reflected_borders():
    """An independent scipy computation of torchvision's GaussianBlur: the 1-D kernel
    exp(-x^2 / 2 sigma^2) on x = -(k-1)/2 .. (k-1)/2, normalised, mirrored borders without
    repeating the edge (numpy's and scipy's "mirror" = torch's "reflect")."""
    from scipy.ndimage import correlate1d

    from xrl.metrics.faithfulness import Substrate

    states = torch.rand(2, 3, 11, 14, generator=torch.Generator().manual_seed(6))
    for k, sigma in ((9, 5.0), (15, 5.0), (5, 1.5)):
        x = np.linspace(-(k - 1) / 2, (k - 1) / 2, k)
        g = np.exp(-0.5 * (x / sigma) ** 2)
        g /= g.sum()
        expected = correlate1d(correlate1d(states.double().numpy(), g, axis=2, mode="mirror"), g, axis=3, mode="mirror")
        ours = Substrate("blur", blur="latec", blur_kernel=k, blur_sigma=sigma)(states)
        np.testing.assert_allclose(ours.numpy(), expected, rtol=0, atol=1e-6)


def test_sigmoid_score_is_the_sigmoid_of_the_target_logit():
    """score="sigmoid" (multi-label models): RISE's CausalMetric loop with sigmoid in place of softmax."""
    model, net, states, saliency = setup(3, 12, 12)

    def sigmoid(x: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return torch.sigmoid(net(torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)))).numpy()

    targets = model(states).argmax(1)  # the argmax of the logits = the argmax of the sigmoids
    for name, mode in (("deletion", "del"), ("insertion", "ins")):
        ours = get_metric(name, score="sigmoid")(model=model, states=states, saliency=saliency)
        expected = [
            rise_auc(causal_metric(sigmoid, states[i].numpy(), saliency[i].numpy(), mode, 12)) for i in range(3)
        ]
        np.testing.assert_allclose(ours.numpy(), expected, rtol=0, atol=1e-5)
        assert not np.allclose(ours.numpy(), get_metric(name)(model=model, states=states, saliency=saliency).numpy())
    assert targets.shape == (3,)


# --- LATEC's LocalLipschitzEstimate (the Quantus fork github.com/lukaskln/Quantus) ----------------


def latec_lle_port(explain, x: np.ndarray, y: np.ndarray, a: np.ndarray, noise: np.ndarray, normalise=True):
    """The fork's ``LocalLipschitzEstimate.evaluate_batch`` as LATEC configures it (nr_samples 5,
    perturb_std 0.1, perturb_mean 0, gaussian_noise, distance_euclidean both ways,
    lipschitz_constant, normalise=True, abs=False) on one state per call; ``noise[step_id]``
    replaces ``np.random.normal(0.0, 0.1, size)`` of ``gaussian_noise``."""

    def normalise_by_max(arr, normalise_axes=None):  # quantus/functions/normalise_func.py (fork)
        if np.all(arr == 0.0):
            return arr
        if normalise_axes is None:
            normalise_axes = list(range(np.ndim(arr)))
        a_max = np.max(np.abs(arr), axis=tuple(normalise_axes), keepdims=True)
        return np.divide(arr, a_max + 0.0000000000001)

    def euclidean(u, v):  # scipy.spatial.distance.euclidean
        return float(np.sqrt(((u.astype(np.float64) - v.astype(np.float64)) ** 2).sum()))

    out = []
    for i in range(x.shape[0]):
        x_batch, y_batch = x[i : i + 1], y[i : i + 1]
        a_batch = a[i : i + 1]
        if normalise:  # base.general_preprocess: normalise_axes = all but the batch axis
            a_batch = normalise_by_max(a_batch, normalise_axes=list(range(np.ndim(a_batch)))[1:])
        similarities = np.zeros((1, noise.shape[0])) * np.nan
        for step_id in range(noise.shape[0]):
            x_perturbed = x_batch.copy()
            x_perturbed[0] = x_batch[0] + noise[step_id]  # gaussian_noise, stored in float32
            a_perturbed = explain(x_perturbed, y_batch)
            if normalise:
                a_perturbed = normalise_by_max(a_perturbed)
            similarities[0, step_id] = euclidean(a_batch[0].flatten(), a_perturbed[0].flatten()) / (
                euclidean(x_batch[0].flatten(), x_perturbed[0].flatten()) + 1e-10
            )
        out.append(np.nanmax(similarities, axis=1)[0])
    return np.array(out)


@pytest.mark.parametrize("explainer_cls", [SmoothGrad, Signed])
@pytest.mark.parametrize("normalise", [True, False])
def test_latec_lipschitz_matches_a_port_of_latecs_quantus(explainer_cls, normalise):
    _, explainer, states, targets = lipschitz_setup(explainer_cls)
    saliency = explainer.explain(states, targets)
    settings = {"protocol": "latec", "seed": 2} | ({} if normalise else {"normalise": False})
    metric = get_metric("lipschitz", **settings)
    assert (metric.n_samples, metric.std) == (5, 0.1)
    ours = metric(states=states, saliency=saliency, explainer=explainer, targets=targets)
    noise = documented_noise(5, tuple(states.shape[1:]), 0.1, seed=2)
    expected = latec_lle_port(
        explain_np(explainer), states.numpy(), targets.numpy(), saliency.numpy(), noise, normalise
    )
    np.testing.assert_allclose(ours.numpy(), expected, rtol=1e-5)
    with pytest.raises(ValueError, match="normalise"):
        get_metric("lipschitz", protocol="quantus", normalise=False)
    with pytest.raises(ValueError, match="radius"):
        get_metric("lipschitz", protocol="latec", radius=0.02)
