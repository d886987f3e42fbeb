"""Faithfulness: does the agent's answer follow the pixels the saliency map points at?

* ``deletion`` / ``insertion``: the target's score while pixels are removed from (deletion) or
  added to (insertion) the state in order of decreasing saliency; the value is the area under
  that curve. Three named protocols (``protocol=``), see :data:`CURVE_PROTOCOLS` and
  ``docs/metrics.md``:

  - ``"rise"`` (default): exactly the ``CausalMetric`` of Petsiuk, Das & Saenko 2018, "RISE:
    Randomized Input Sampling for Explanation of Black-box Models" (BMVC 2018, arXiv:1806.07421),
    code github.com/eclique/RISE, file ``evaluation.py`` (with the settings of its
    ``Evaluation.ipynb``), in the model's input space;
  - ``"xrl"``: the protocol xrl used before (2 % steps, 31-tap replicate-padded blur, reading
    order for ties);
  - ``"latec"``: LATEC's ``Insertion`` / ``Deletion`` (Klein et al. 2024, arXiv:2409.16756;
    github.com/IML-DKFZ/latec, ``src/modules/components/insertion_deletion.py``), which
    VisionMask follows: 50 pixels a step, 9-tap sigma-5 torchvision blur, no unperturbed and no
    fully perturbed point, ``dx = 1 / T``.

* ``accuracy`` (VisionMask, section 4.2): does the agent keep its action on the state seen
  through the map, ``s * m + r * (1 - m)``?

Common to the curve protocols:

* Pixels are the ``(H, W)`` locations; all channels and stacked frames at a location are
  removed or added together (RISE: all three colour channels of a pixel).
* A removed pixel takes its value from the substrate ``r (B, C, H, W)``: ``blur`` (the state
  blurred, per channel; the blur is the protocol's), ``noise`` (uniform [0, 1) noise drawn once
  from ``seed``, the same image for every state), ``black`` (0), ``mean`` (each channel's mean over
  the state), ``background`` (a given ``(C, H, W)`` image). Defaults: ``black`` for deletion,
  ``blur`` for insertion (RISE's ``torch.zeros_like`` and its ``gkern`` blur).
* The score is the softmax probability of the target (``score="probability"``; RISE wraps its
  classifier in ``nn.Softmax``), its raw score (``"logit"``) or the sigmoid of it (``"sigmoid"``,
  multi-label models). Targets default to the agent's
  action (argmax) on the unperturbed state (RISE: the top class of the clean image).
* ``metric.curve(...)`` returns the curve's x axis ``(T,)`` and scores ``(B, T)``; the value is
  ``torch.trapezoid(scores, x)``. Perturbed states are scored in chunks of ``batch_size``; the
  value does not depend on it.
"""

from __future__ import annotations

import functools
import math

import torch
import torch.nn.functional as F

from xrl.agents.model import Model
from xrl.metrics.base import METRICS, Metric, check_saliency
from xrl.ops import chunks, gaussian_blur, guarded, minmax, positive_int, target_function

SUBSTRATES = ("blur", "noise", "black", "mean", "background")
SCORES = ("probability", "logit", "sigmoid")
#: the named deletion/insertion protocols; the first is the default
CURVE_PROTOCOLS = ("rise", "xrl", "latec")
BLURS = ("xrl", "rise", "latec")
#: LATEC's ``Insertion``/``Deletion`` default ``pixel_batch_size`` (and its configs' value): pixels a step
LATEC_STEP = 50


@functools.lru_cache(maxsize=16)
def rise_kernel(klen: int, nsig: float) -> torch.Tensor:
    """RISE's ``gkern(klen, nsig)`` (``evaluation.py``), one ``(klen, klen)`` float32 plane.

    RISE builds it as ``scipy.ndimage.gaussian_filter`` (defaults: ``mode="reflect"``,
    ``truncate=4.0``) of a ``klen x klen`` Dirac at ``(klen // 2, klen // 2)``. That filter is
    separable and the Dirac is an outer product, so the kernel is ``outer(g, g)`` with ``g`` the
    1-D filter of a length-``klen`` Dirac: Gaussian weights ``exp(-x^2 / (2 nsig^2))`` for
    ``|x| <= int(4 nsig + 0.5)``, normalised to sum 1, read through half-sample-symmetric
    reflection (``d c b a | a b c d | d c b a``), repeated when the radius exceeds ``klen``.
    With ``nsig=5`` the radius is 20 > 11 taps, so the reflections fold the Gaussian's tails back
    into the window: the kernel sums to 1 but is flatter than a truncated Gaussian of std 5.
    Computed in float64 and cast to float32, as RISE does. Checked against scipy in ``tests/test_metric_protocols.py``.
    """
    radius = int(4.0 * float(nsig) + 0.5)
    cpu = torch.device("cpu")  # a constant, the same on every device: built on the CPU, moved by the caller
    x = torch.arange(-radius, radius + 1, dtype=torch.float64, device=cpu)
    weights = torch.exp(-0.5 * x**2 / float(nsig) ** 2)
    weights = weights / weights.sum()
    centre = klen // 2
    source = torch.arange(klen, device=cpu)[:, None] + torch.arange(-radius, radius + 1, device=cpu)[None]
    source = source % (2 * klen)
    source = torch.where(source >= klen, 2 * klen - 1 - source, source)  # (klen, taps) reflected
    g = (weights[None].expand(klen, -1) * (source == centre)).sum(1)  # (klen,)
    return torch.outer(g, g).float()


def rise_blur(states: torch.Tensor, klen: int = 11, nsig: float = 5.0) -> torch.Tensor:
    """RISE's insertion substrate: ``conv2d(x, gkern(klen, nsig), padding=klen // 2)`` with the
    kernel on the diagonal of the channel matrix (every channel blurred separately), zero padding
    (the image darkens towards 0 near its borders), same size out. RISE hard-codes 3 channels;
    here every one of the state's ``C`` channels is blurred the same way."""
    c = states.shape[1]
    kernel = rise_kernel(int(klen), float(nsig)).to(states)
    return F.conv2d(states, kernel.expand(c, 1, -1, -1), padding=int(klen) // 2, groups=c)


def latec_blur(states: torch.Tensor, kernel_size: int = 9, sigma: float = 5.0) -> torch.Tensor:
    """LATEC's insertion substrate, ``torchvision.transforms.GaussianBlur(kernel_size, sigma)``
    (github.com/IML-DKFZ/latec, ``src/modules/components/insertion_deletion.py``): torchvision's
    ``gaussian_blur``, every channel separately with the separable kernel
    ``exp(-x^2 / (2 sigma^2))`` at ``x = -(k - 1) / 2 ... (k - 1) / 2``, normalised to sum 1, borders
    ``reflect``-padded (whole-sample mirror), same size out. Checked against scipy in
    ``tests/test_metric_protocols.py``."""
    from torchvision.transforms.functional import gaussian_blur as tv_blur

    return tv_blur(states, [int(kernel_size)] * 2, [float(sigma)] * 2)


class Substrate:
    """What removed pixels are replaced with: ``substrate(states (B, C, H, W)) -> (B, C, H, W)``.

    ``blur`` is the protocol's blur: ``blur="xrl"`` a separable Gaussian of std ``blur_sigma``,
    ``blur_kernel`` taps (``None``: ``2 * ceil(3 * blur_sigma) + 1``), image borders replicated;
    ``blur="rise"`` RISE's ``gkern(klen=blur_kernel, nsig=blur_sigma)`` convolution with zero
    padding (``None``: 11 taps), see :func:`rise_blur`; ``blur="latec"`` torchvision's
    ``GaussianBlur(blur_kernel, blur_sigma)`` with reflected borders (``None``: 9 taps), see
    :func:`latec_blur`.
    """

    def __init__(
        self,
        kind: str = "blur",
        *,
        blur_sigma: float = 5.0,
        blur_kernel: int | None = None,
        background: torch.Tensor | None = None,
        seed: int = 0,
        blur: str = "xrl",
    ) -> None:
        if kind not in SUBSTRATES:
            raise ValueError(f"substrate must be one of {SUBSTRATES}, got {kind!r}")
        if blur not in BLURS:
            raise ValueError(f"blur must be one of {BLURS}, got {blur!r}")
        if not blur_sigma > 0:
            raise ValueError(f"blur_sigma must be positive, got {blur_sigma!r}")
        if blur_kernel is None:
            blur_kernel = {"rise": 11, "latec": 9}.get(blur, 2 * math.ceil(3 * blur_sigma) + 1)
        if int(blur_kernel) < 1 or int(blur_kernel) % 2 == 0:
            raise ValueError(f"blur_kernel must be a positive odd integer, got {blur_kernel!r}")
        if kind == "background":
            if not isinstance(background, torch.Tensor) or background.dim() != 3:
                raise ValueError(
                    "substrate='background' needs background= a (C, H, W) tensor in the "
                    f"model's input space, got {type(background).__name__}"
                    f"{tuple(background.shape) if isinstance(background, torch.Tensor) else ''}"
                )
        elif background is not None:
            raise ValueError(f"background= is only used with substrate='background', not {kind!r}")
        self.kind = kind
        self.blur = blur
        self.blur_sigma = float(blur_sigma)
        self.blur_kernel = int(blur_kernel)
        self.background = background
        self.seed = int(seed)

    def __call__(self, states: torch.Tensor) -> torch.Tensor:
        if self.kind == "black":
            return torch.zeros_like(states)
        if self.kind == "mean":
            return states.mean(dim=(2, 3), keepdim=True).expand_as(states)
        if self.kind == "blur":
            if self.blur == "rise":
                return rise_blur(states, self.blur_kernel, self.blur_sigma)
            if self.blur == "latec":
                return latec_blur(states, self.blur_kernel, self.blur_sigma)
            return gaussian_blur(states, self.blur_sigma, kernel_size=self.blur_kernel)
        if self.kind == "noise":
            # drawn on the CPU so the same seed gives the same image on every device
            gen = torch.Generator(device="cpu").manual_seed(self.seed)
            noise = torch.rand(states.shape[1:], generator=gen, device="cpu")
            return noise.to(states).expand_as(states)
        assert self.background is not None  # kind == "background": __init__ checked it
        if tuple(self.background.shape) != tuple(states.shape[1:]):
            raise ValueError(
                f"background has shape {tuple(self.background.shape)} but states are "
                f"(B, {', '.join(map(str, states.shape[1:]))})"
            )
        return self.background.to(states).expand_as(states)


def target_indices(model: Model, states: torch.Tensor, targets) -> torch.Tensor:
    """``(B,)`` action indices: validated ``targets``, or the model's argmax when ``None``."""
    if callable(targets) and not isinstance(targets, torch.Tensor):
        raise TypeError("this metric needs target indices (None, an int or a (B,) tensor), not a callable")
    index = target_function(model, states, targets).index
    assert index is not None  # targets are not a callable
    return index


def _check_model(model: Model, states: torch.Tensor) -> None:
    if not isinstance(model, Model):
        raise TypeError(f"metrics take an xrl Model, got {type(model).__name__}; wrap it with xrl.as_model")
    model.check_states(states)


class _Curve(Metric):
    """Deletion and insertion differ only in which image the top-ranked pixels come from.

    Settings (constructor keywords, so ``get_metric(name, protocol=..., ...)``, a bench spec's
    ``[metric_settings.deletion]`` and ``xrl evaluate --setting deletion.protocol=...`` all work):

    * ``protocol="rise"`` (default) — RISE's ``CausalMetric`` (Petsiuk, Das & Saenko 2018,
      arXiv:1806.07421; github.com/eclique/RISE, ``evaluation.py``):

      - ``step`` = ``W`` pixels (one image row; RISE's notebook uses ``step=224`` on 224 x 224
        images), ``n_steps = ceil(H * W / step)``, ``n_steps + 1`` points: after ``i`` steps the
        top ``min(i * step, H * W)`` pixels have moved;
      - order ``np.flip(np.argsort(saliency))``: largest first. RISE's ``np.argsort`` is numpy's
        default quicksort, which is not stable (equal values come out in an unspecified order that
        depends on the numpy build); here ties fall as ``np.flip(np.argsort(s, kind="stable"))``:
        among equal values the *later* pixel in reading order goes first (a constant map is
        deleted from the bottom-right corner). Tie-free maps are ranked exactly as RISE ranks them;
      - deletion substrate zeros, insertion substrate :func:`rise_blur` (``gkern(11, 5)``, zero
        padding);
      - score = softmax probability of the target; AUC = RISE's ``auc``,
        ``(sum - first / 2 - last / 2) / n_steps``: the curve's x axis is ``i / n_steps``.

      Differences from RISE's code: any ``H x W`` and any number of channels (RISE: 3 x 224 x 224,
      3 colour channels); the model's input space is whatever the agent takes (RISE's images are
      ImageNet-normalised, so its zero substrate is the dataset mean colour, here 0 is 0 of the
      state, black for frames in [0, 1]); targets may be given (RISE: always its top class); the tie
      order above; float64 AUC.

      Other settings compose with it, each as a change to one of RISE's arguments:
      ``step_fraction=f`` sets RISE's ``step`` to ``ceil(f * H * W)`` pixels (the last step may be
      shorter; the x axis stays ``i / n_steps``, as in RISE); ``substrate`` replaces RISE's
      ``substrate_fn``; ``blur_sigma`` / ``blur_kernel`` are ``gkern``'s ``nsig`` / ``klen``
      (defaults 5 / 11); ``score="logit"`` scores the raw output (RISE with a model not wrapped in
      softmax).
    * ``protocol="xrl"`` — xrl's protocol before issue 23: a point after every
      ``ceil(step_fraction * H * W)`` pixels (``step_fraction=0.02`` by default; the last step may
      be shorter), x axis = fraction of pixels moved ``k / (H * W)``; ties in reading order (a
      stable sort of ``-saliency``); ``blur`` = separable Gaussian, ``blur_sigma=5``,
      ``2 * ceil(3 * blur_sigma) + 1`` = 31 taps, borders replicated. Same substrates, scores and
      trapezoid AUC.
    * ``protocol="latec"`` — LATEC's ``Insertion`` / ``Deletion`` (Klein et al. 2024, "Navigating
      the Maze of Explainable AI: A Systematic Approach to Evaluating Methods and Metrics",
      arXiv:2409.16756; github.com/IML-DKFZ/latec, ``src/modules/components/insertion_deletion.py``
      with ``configs/eval_metric/image_*.yaml``), the protocol VisionMask says it follows:

      - ``step`` = 50 pixels (``pixel_batch_size: 50``; ``step_pixels`` changes it);
      - order ``torch.topk(saliency.flatten(), H * W)``: largest first (ties as ``topk`` returns them);
      - a score after each step *before* the last: pixels moved ``k = step, 2 step, ...`` while
        ``k < H * W`` (their loop breaks before scoring the fully perturbed state), so
        ``T = ceil(H * W / step) - 1`` points, **no unperturbed point and no fully perturbed point**;
      - deletion substrate zeros (``torch.zeros_like``); insertion substrate :func:`latec_blur`,
        ``GaussianBlur(kernel_size=9, sigma=5.0)`` (the class defaults; LATEC's ImageNet config
        passes ``kernel_size: 15``: ``blur_kernel=15``), reflected borders;
      - score = softmax probability of the target; AUC = ``scipy.integrate.trapezoid(scores,
        dx=1 / T)``: the x axis is ``j / T``, ``j = 1 ... T`` (it spans ``(T - 1) / T``, not 1).

      Differences from LATEC's code: LATEC ranks every entry of its attribution (Captum maps of a
      ``3 x H x W`` image have ``3 H W`` entries, each location appearing up to 3 times, every
      appearance spending one of the step's 50); here the ``(H, W)`` map's ``H W`` locations. LATEC feeds
      inputs with more than 3 channels as volumes (``unsqueeze(1)``); here the state goes to the
      model as it is. Targets may be left out (LATEC: the dataset's labels). Fewer than 2 points
      (``H * W <= 2 * step``) are refused (LATEC's AUC would be 0). Float64 AUC.

    ``score``: ``"probability"`` (softmax, every protocol's default), ``"logit"`` (the raw score),
    ``"sigmoid"`` (``sigmoid`` of the raw score, for multi-label models whose outputs are
    independent logits, as the RExL explainer's ``score="sigmoid"``).

    ``substrate=None`` takes the metric's default: ``black`` for deletion, ``blur`` for insertion.
    """

    requires = ("model",)
    category = "faithfulness"
    insert: bool
    default_substrate: str

    def __init__(
        self,
        *,
        protocol: str = "rise",
        substrate: str | None = None,
        step_fraction: float | None = None,
        step_pixels: int | None = None,
        score: str = "probability",
        batch_size: int = 256,
        seed: int = 0,
        blur_sigma: float = 5.0,
        blur_kernel: int | None = None,
        background: torch.Tensor | None = None,
    ) -> None:
        if protocol not in CURVE_PROTOCOLS:
            raise ValueError(f"protocol must be one of {CURVE_PROTOCOLS}, got {protocol!r}")
        if step_fraction is None:
            step_fraction = 0.02 if protocol == "xrl" else None
        if step_fraction is not None and not 0 < step_fraction <= 1:
            raise ValueError(f"step_fraction must be in (0, 1], got {step_fraction!r}")
        if step_pixels is not None:
            if protocol == "xrl" or step_fraction is not None:
                raise ValueError("step_pixels= is the step of protocol='rise'/'latec' and replaces step_fraction=")
            positive_int("step_pixels", step_pixels)
        elif protocol == "latec" and step_fraction is None:
            step_pixels = LATEC_STEP
        if score not in SCORES:
            raise ValueError(f"score must be one of {SCORES}, got {score!r}")
        positive_int("batch_size", batch_size)
        kind = self.default_substrate if substrate is None else substrate
        self.protocol = protocol
        self.substrate = Substrate(
            kind, blur_sigma=blur_sigma, blur_kernel=blur_kernel, background=background, seed=seed, blur=protocol
        )
        self.step_fraction = None if step_fraction is None else float(step_fraction)
        self.step_pixels = None if step_pixels is None else int(step_pixels)
        self.score = score
        self.batch_size = int(batch_size)

    def step(self, height: int, width: int) -> int:
        """Pixels moved per step on ``height x width`` states."""
        if self.step_pixels is not None:
            return self.step_pixels
        if self.step_fraction is None:  # protocol="rise": one image row, as RISE's step=224
            return width
        return max(1, math.ceil(round(self.step_fraction * height * width, 9)))

    def curve(
        self, *, model: Model, states: torch.Tensor, saliency: torch.Tensor, targets=None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The curve's x axis ``(T,)`` and the target's score there ``(B, T)``.

        x is the fraction of pixels moved, ``k / (H * W)``, for ``protocol="xrl"``, RISE's
        ``i / n_steps`` for ``"rise"`` (the same unless the last step is shorter) and LATEC's
        ``j / T`` (``dx = 1 / T``) for ``"latec"``.
        """
        check_saliency(states, saliency)
        _check_model(model, states)
        b, _, h, w = states.shape
        n = h * w
        with guarded(model, states), torch.no_grad():
            index = target_indices(model, states, targets)
            reference = self.substrate(states)
            source, start = (states, reference) if self.insert else (reference, states)
            flat = saliency.reshape(b, n)
            if self.protocol == "rise":  # np.flip(np.argsort(s, kind="stable")): ties, last first
                order = torch.argsort(flat, dim=1, stable=True).flip(1)
            elif self.protocol == "latec":  # LATEC: torch.topk(a.flatten(), num_pixels)
                order = torch.topk(flat, n, dim=1).indices
            else:  # ties in reading order
                order = torch.argsort(flat, dim=1, descending=True, stable=True)
            rank = torch.empty_like(order).scatter_(1, order, torch.arange(n, device=order.device).expand(b, n))
            step = self.step(h, w)
            if self.protocol == "rise":
                n_steps = (n + step - 1) // step
                counts = (torch.arange(n_steps + 1, device=states.device) * step).clamp(max=n)  # (T,)
                x = torch.arange(n_steps + 1, dtype=torch.float64, device=states.device) / n_steps
            elif self.protocol == "latec":  # scored after every step but the last; dx = 1 / T
                t = (n + step - 1) // step - 1
                if t < 2:
                    raise ValueError(
                        f"protocol='latec' scores ceil(H*W / step) - 1 points: {t} on {h}x{w} states with "
                        f"{step}-pixel steps; use a smaller step_pixels"
                    )
                counts = torch.arange(1, t + 1, device=states.device) * step  # (T,), all < H*W
                x = torch.arange(1, t + 1, dtype=torch.float64, device=states.device) / t
            else:
                d = states.device
                counts = torch.cat([torch.arange(0, n, step, device=d), torch.tensor([n], device=d)])  # (T,)
                x = counts.double() / n
            t = counts.numel()
            scores = torch.empty(b * t, dtype=torch.float64, device=states.device)
            for part in chunks(b * t, self.batch_size):
                pairs = torch.arange(part.start, part.stop, device=states.device)
                i, k = pairs // t, counts[pairs % t]
                moved = (rank[i] < k[:, None]).view(-1, 1, h, w)  # (chunk, 1, H, W): all channels
                out = model(torch.where(moved, source[i], start[i]))  # (chunk, K)
                if self.score == "probability":
                    out = torch.softmax(out, dim=-1)
                elif self.score == "sigmoid":
                    out = torch.sigmoid(out)
                scores[part] = out.gather(1, index[i, None]).squeeze(1).double()
        return x, scores.view(b, t)

    def compute(self, *, model, states, saliency, targets=None, **_) -> torch.Tensor:
        x, scores = self.curve(model=model, states=states, saliency=saliency, targets=targets)
        return torch.trapezoid(scores, x, dim=1).float()


@METRICS.register("deletion")
class Deletion(_Curve):
    """AUC of the target's probability as the most salient pixels are replaced by the substrate
    (default ``black``: RISE's zeros). Lower is better. ``protocol="rise"`` (default) is RISE's
    ``CausalMetric`` deletion game, ``"xrl"`` xrl's earlier protocol; see :class:`_Curve`."""

    higher_is_better = False
    insert = False
    default_substrate = "black"


@METRICS.register("insertion")
class Insertion(_Curve):
    """AUC of the target's probability as the most salient pixels are put back into the substrate
    (default ``blur``: with ``protocol="rise"`` RISE's zero-padded ``gkern(11, 5)`` blur). Higher
    is better. ``protocol="rise"`` (default) is RISE's ``CausalMetric`` insertion game, ``"xrl"``
    xrl's earlier protocol; see :class:`_Curve`."""

    higher_is_better = True
    insert = True
    default_substrate = "blur"


@METRICS.register("accuracy")
class Accuracy(Metric):
    """1 when the agent's action on ``s * m + r * (1 - m)`` is the target, else 0 (VisionMask).

    ``m (B, 1, H, W)`` is the saliency min-max normalised per map (``normalize="minmax"``; a
    constant map keeps nothing) or taken as is (``"none"``, for maps already in [0, 1] such as
    VisionMask's masks). ``r`` is the substrate, ``black`` by default (VisionMask's own default
    is an environment-specific background image: pass ``substrate="background",
    background=...``). Targets default to the action on the unmasked state.
    """

    higher_is_better = True
    category = "faithfulness"
    requires = ("model",)

    def __init__(
        self,
        *,
        substrate: str = "black",
        normalize: str = "minmax",
        seed: int = 0,
        blur_sigma: float = 5.0,
        blur_kernel: int | None = None,
        background: torch.Tensor | None = None,
    ) -> None:
        if normalize not in ("minmax", "none"):
            raise ValueError(f"normalize must be 'minmax' or 'none', got {normalize!r}")
        self.normalize = normalize
        self.substrate = Substrate(
            substrate, blur_sigma=blur_sigma, blur_kernel=blur_kernel, background=background, seed=seed
        )

    def compute(self, *, model, states, saliency, targets=None, **_) -> torch.Tensor:
        _check_model(model, states)
        if self.normalize == "none" and ((saliency < 0) | (saliency > 1)).any():
            raise ValueError("normalize='none' needs saliency in [0, 1]; use normalize='minmax'")
        mask = (minmax(saliency) if self.normalize == "minmax" else saliency).unsqueeze(1)
        with guarded(model, states), torch.no_grad():
            index = target_indices(model, states, targets)
            masked = states * mask + self.substrate(states) * (1 - mask)
            kept = model(masked).argmax(-1) == index
        return kept.float()
