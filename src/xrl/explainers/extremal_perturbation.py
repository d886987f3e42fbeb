"""Extremal perturbations (Fong, Patrick & Vedaldi 2019, "Understanding Deep Networks via
Extremal Perturbations and Smooth Masks", ICCV, arXiv:1910.08485; reference code TorchRay,
github.com/facebookresearch/TorchRay, ``torchray/attribution/extremal_perturbation.py``),
preservation game.

For a target area ``a`` the method looks for the smooth mask ``m`` of area ``a |Omega|`` whose
preserved region alone keeps the explained target highest:
``m_a = argmax_m f(m (x) s) - lambda * R_a(m)``, optimised by gradient steps (Adam by default).

- **Perturbation** ``m (x) s``: keep the state where ``m = 1``, blur it where ``m = 0``, with a
  spatially varying blur (Fong & Vedaldi 2017) made of ``num_levels`` (8) Gaussian blurs of the
  state, std ``max_blur * (1 - l / (L - 1))`` for level ``l``, blended linearly at
  ``m * (L - 1)``. ``max_blur``: the reference implementation's (TorchRay) 20 px on 224 px
  images scales to 8 px on 84 px states (the default).
- **Smooth masks**: parameters ``m_bar`` in ``[0, 1]`` on a grid of pitch ``step`` pixels
  (projected back into ``[0, 1]`` after each step), smooth max-convolution
  ``m(v) = smax_{u; T} k(v - u) m_bar(u)`` with the unnormalised Gaussian ``k`` (std ``sigma``
  pixels, ``k(0) = 1``, cut at 3 std) and the smooth max
  ``smax_T f = sum f exp(f / T) / sum exp(f / T)``, temperature ``T = 0.05``; computed on the
  grid and upsampled bilinearly to the state (each grid value on its own pixel). TorchRay uses
  ``step = 7, sigma = 21`` on 224 px images (``sigma / step = 3``); the defaults ``step = 4,
  sigma = 8`` on 84 px states keep the mask as smooth relative to the state and cost ~5x less
  per iteration than ``step = 3``.
- **Area constraint**: the paper's ranking loss ``R_a(m) = mean((sort(m) - r_a)^2)`` with
  ``r_a`` the sorted ideal mask (``(1 - a) |Omega|`` zeros then ``a |Omega|`` ones), computed as
  ``mean((m - top)^2)`` with ``top`` the indicator of the ``a |Omega|`` largest mask values (the
  same value and gradient, ~5x faster than sorting). Values are ranked rounded to ``1 /
  RANK_STEPS`` (1/4096), and equal ones in a fixed random order drawn from ``seed`` (by pixel
  index they would favour the bottom of the state): see "Tie-break" below. ``area``
  defaults to 0.12, the value RExL used for its Extremal Perturbation baseline. The weight
  ``lambda`` starts at ``area_weight = 300`` and grows geometrically by ``AREA_GROWTH = 16``
  over the run (``area_growth``; TorchRay multiplies it by 1.0035 per iteration, x16.4 over 800):
  soft while the region is found, hard at the end (areas within ~0.01 of ``a``).
- **Reward** ``f``: ``"simple"`` (the paper) is the explained target itself: the score of an
  action, or any callable of the scores (value, "A minus B"); ``"contrastive"`` (TorchRay's
  contrastive reward, which RExL used) is the target action's score minus the best other
  action's, and needs action indices.
- **Optimisation**: Adam (``optimizer="adam"``) or TorchRay's SGD with momentum 0.9 and
  dampening 0.9 (``optimizer="sgd"``), ``lr``, ``iterations``, parameters starting at ``init``
  and clamped to ``[0, 1]`` after each step.

**Presets** (``preset=``; any explicitly given setting overrides the preset's):

==============  =============================  ==============================================
setting         ``"fast"`` (default)           ``"torchray"`` (TorchRay's defaults)
==============  =============================  ==============================================
iterations      100                            800 (``max_iter``)
optimizer, lr   Adam, 0.05                     SGD momentum 0.9 dampening 0.9, 0.01
init            1 (whole state kept)           1 (``pmask = torch.ones(...)``)
step, sigma     4, 8 px (84 px states)         7, 21 px (224 px images)
max_blur        8 px                           20 px (``Perturbation`` default)
num_levels      8                              8
area            0.12 (RExL's baseline)         0.1 (``areas=[0.1]``)
area weight     300, x16 over the run          300, x1.0035 per iteration (x16.4 over 800)
temperature     0.05                           0.05 (``coldness = 20``)
reward          ``reward`` ("simple")          simple_reward (``reward`` is not set by presets)
==============  =============================  ==============================================

Differences from TorchRay that no preset removes: (1) TorchRay's smooth max-convolution kernel
is ``exp(-2 ((d / sigma - 1/2)_+)^2)`` (flat within ``sigma / 2``, then a Gaussian of std
``sigma / 2``), evaluated at every pixel of a mask with a ``sigma`` margin on a nearest-upsampled
parameter grid; ours is a Gaussian of std ``sigma`` evaluated on the parameter grid and
upsampled bilinearly, so the same ``sigma`` gives a narrower falloff there (it reaches
``exp(-2)`` at ``1.5 sigma``, ours at ``2 sigma``); (2) the area
loss is over the mask with its margin there (``reference`` has ``int(max_area (1 - a))`` zeros),
over the state here (``round(a H W)`` ones); (3) TorchRay flips the perturbed image horizontally
on even iterations (``jitter=True``): not done here, a flipped Atari frame swaps left and right
for the agent; (4) TorchRay's blur pyramid pads with zeros (``imsmooth`` constant padding), ours
replicates the border; (5) ``variant="preserve"`` only (no ``delete``/``dual``), no ``smooth``
post-blur (TorchRay's default ``smooth=0`` is none either).

**Default, decision:** ``"fast"``. Both presets start from the full state (TorchRay's code
initialises the parameters to ones; the value 0.5 sometimes attributed to the paper is not what
its code runs). Starting from the full state matters on RL agents: half-blurred states are far
from anything an agent saw, and on the zoo Red-Fetch-Green agent the score at 0.5 is flat (zero
gradient), so the area term alone placed the mask in the corners (observed when this default
was chosen; ``init=0.5`` runs that start).
From the full state the reward gradient is informative and the growing area weight removes what
matters least. On that agent 25, 100 and 300 iterations give the same masks, so the 800
iterations of ``"torchray"`` cost 8x the time (the method is already the slowest of the bench,
3-4 maps per second) for no change there; TorchRay's pixel sizes are also made for 224 px images
(``sigma=21`` px is a quarter of an 84 px state). ``preset="torchray"`` is one setting away for
a protocol comparison; raise ``iterations`` for harder models.

The saliency is the final mask ``m`` in ``[0, 1]`` (1 = preserved = important). Not per-action:
``explain_all`` optimises one mask per action. The masks of ``batch_size`` states are one tensor,
optimised together with a sum of per-sample losses, so each mask follows its own gradient.
**Batching (default) and ``exact=True``:** the states' optimisations are independent, so by
default each step runs all states of a chunk through the model in one forward and one backward
pass. Float rounding in a batched matmul differs with the batch size (~1e-8), so masks depend on
the batch within a tolerance: on 32 Red-Fetch-Green states (zoo agent, default settings, 100
iterations) the batched masks are within 2.4e-7 of the one-state runs (``exact=True``;
``tests/test_lime_extremal.py`` checks 1e-3 on a small network). ``exact=True`` runs the model on
one state per call, which makes masks bitwise independent of the batch and of ``batch_size``, at
about twice the time.

**Tie-break** (issue 45). The area loss picks the ``a |Omega|`` largest mask values, and where the
mask is flat (parameters clamped at 1) that choice used to follow the values' last bits: rounding
noise of one float32 ulp added to the smooth max-convolution moved the masks of 6 of those 32
states by more than 0.01 (up to 0.33), and another summation order by up to 0.94. Values are now
ranked rounded to ``1 / RANK_STEPS`` (1/4096; 1.0 is the middle of its step), ties in the seeded
order: the same noise moves no mask by more than 4.5e-7 (rounding to 2^-20 instead still moved
5 states, up to 0.35). This changed the masks themselves, as any other tie order would: against
the code before it, by up to 0.95 (median 0.003; 12 of the 32 states by more than 0.01), with the
same mean target score kept (3.53 against 3.47; 6.06 on the full states) and area (0.132, 0.129). Cost: ``iterations`` forward and backward passes per state; the smooth max-convolution
has its gradient written out (:class:`_SmoothMax`).
Measured on 16 84x84x4 Nature-CNN states (CPU, one thread; ``benchmarks/bench_methods.py``):
~2.2-2.4x the floor of one forward+backward of the 16 states per step (smooth max-convolution,
perturbation gathers, ranking loss and Adam take the rest), ~3.9-4.1x with ``exact=True``. Each
call frees one 32 MiB block first (:func:`xrl.explainers.perturbation.keep_resident`), so the
steps' tensors stay mapped in a process without allocator settings too.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F

from xrl.agents.model import Model
from xrl.explainers.base import EXPLAINERS, Explainer
from xrl.explainers.masks import mask_centres, upsample_grid
from xrl.explainers.perturbation import keep_resident
from xrl.ops import TargetFn, chunks, gaussian_blur, positive_int

REWARDS = ("simple", "contrastive")
OPTIMISERS = ("adam", "sgd")
#: the area loss ranks mask values rounded to this many steps per unit: values closer than that are
#: ties, and ties go in the seeded random order (see :func:`_ranking_loss`)
RANK_STEPS = 2**12
#: the area weight grows geometrically by this factor over the run (``preset="fast"``)
AREA_GROWTH = 16.0
#: named settings; explicit constructor arguments override them
PRESETS = {
    # ours, on 84 px states: see the module docstring ("fast")
    "fast": {
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
        "area_growth": AREA_GROWTH,
        "temperature": 0.05,
    },
    # TorchRay's extremal_perturbation() and Perturbation defaults, verbatim (pixel sizes for 224 px)
    "torchray": {
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
        "area_growth": 1.0035**800,
        "temperature": 1 / 20,
    },
}


@EXPLAINERS.register("extremal_perturbation")
class ExtremalPerturbation(Explainer):
    """Extremal perturbations (Fong et al. 2019): the smooth mask of a given area that best keeps the target.

    Example::

        explainer = get_explainer("extremal_perturbation", model, area=0.12)
        saliency = explainer.explain(states)                             # (B, H, W) masks
        value_map = explainer.explain(states, targets=lambda s: s.logsumexp(-1))
    """

    def __init__(
        self,
        model: Model,
        *,
        preset: str = "fast",
        area: float | None = None,
        reward: str = "simple",
        iterations: int | None = None,
        lr: float | None = None,
        optimizer: str | None = None,
        init: float | None = None,
        step: int | None = None,
        sigma: float | None = None,
        temperature: float | None = None,
        max_blur: float | None = None,
        num_levels: int | None = None,
        area_weight: float | None = None,
        area_growth: float | None = None,
        exact: bool = False,
        batch_size: int = 32,
        seed: int = 0,
    ) -> None:
        super().__init__(model, batch_size=batch_size, seed=seed)
        if preset not in PRESETS:
            raise ValueError(f"preset must be one of {tuple(PRESETS)}, got {preset!r}")
        given = {
            "area": area,
            "iterations": iterations,
            "lr": lr,
            "optimizer": optimizer,
            "init": init,
            "step": step,
            "sigma": sigma,
            "temperature": temperature,
            "max_blur": max_blur,
            "num_levels": num_levels,
            "area_weight": area_weight,
            "area_growth": area_growth,
        }
        explicit = {k: v for k, v in given.items() if v is not None}
        settings: dict[str, Any] = {**PRESETS[preset], **explicit}  # explicit wins
        area, iterations, lr = settings["area"], settings["iterations"], settings["lr"]
        step, sigma, temperature = settings["step"], settings["sigma"], settings["temperature"]
        max_blur, num_levels, area_weight = settings["max_blur"], settings["num_levels"], settings["area_weight"]
        if not 0 < float(area) < 1:
            raise ValueError(f"area (fraction of the state to preserve) must be in (0, 1), got {area!r}")
        if reward not in REWARDS:
            raise ValueError(f"reward must be one of {REWARDS}, got {reward!r}")
        if settings["optimizer"] not in OPTIMISERS:
            raise ValueError(f"optimizer must be one of {OPTIMISERS}, got {settings['optimizer']!r}")
        if not 0 <= float(settings["init"]) <= 1:
            raise ValueError(f"init (the starting mask parameter) must be in [0, 1], got {settings['init']!r}")
        for name, value, low in (("iterations", iterations, 1), ("step", step, 1), ("num_levels", num_levels, 2)):
            positive_int(name, value, low)
        for name, value in (
            ("lr", lr),
            ("sigma", sigma),
            ("temperature", temperature),
            ("max_blur", max_blur),
            ("area_growth", settings["area_growth"]),
        ):
            if not float(value) > 0:
                raise ValueError(f"{name} must be positive, got {value!r}")
        if not float(area_weight) >= 0:
            raise ValueError(f"area_weight must be >= 0, got {area_weight!r}")
        self.preset = preset
        self.area, self.reward = float(area), reward
        self.iterations, self.lr = int(iterations), float(lr)
        self.optimizer, self.init = settings["optimizer"], float(settings["init"])
        self.step, self.sigma, self.temperature = int(step), float(sigma), float(temperature)
        self.max_blur, self.num_levels = float(max_blur), int(num_levels)
        self.area_weight, self.area_growth = float(area_weight), float(settings["area_growth"])
        self.exact = bool(exact)

    def _explain(self, states: torch.Tensor, target_fn: TargetFn) -> torch.Tensor:
        index = target_fn.index  # (B,) action indices, None for the caller's own callable
        if self.reward == "contrastive" and index is None:
            raise ValueError(
                "reward='contrastive' compares the target action with the best other action "
                "and needs action indices as targets; for a callable target use reward='simple'"
            )
        if self.reward == "contrastive" and self.model.n_actions < 2:
            raise ValueError("reward='contrastive' needs a model with at least two actions")
        if index is not None:
            with torch.inference_mode(False):  # usable by autograd even if resolved in inference mode
                index = index.clone()
        if states.device.type == "cpu":
            keep_resident()  # the steps' tensors stay mapped without allocator settings (perturbation.py)
        masks = []
        for rows in chunks(states.shape[0], self.batch_size):
            if index is None:
                # a callable of the scores: any chunk of states works
                reward: Callable[[torch.Tensor], torch.Tensor] = target_fn
            else:
                reward = functools.partial(_reward, index=index[rows], contrastive=self.reward == "contrastive")
            masks.append(self._optimise(states[rows], reward))
        return torch.cat(masks)

    def _optimise(self, states: torch.Tensor, reward: Callable) -> torch.Tensor:
        """Masks ``(b, H, W)`` of a chunk of states, optimised together."""
        b, _, height, width = states.shape
        rows, cols = mask_centres(height, width, self.step)
        with torch.inference_mode(False), torch.enable_grad():
            with torch.no_grad():
                levels = self._levels(states.detach().clone())  # (b, L, C, H, W)
            kept = round(self.area * height * width)  # pixels of the ideal mask r_a that are 1
            # ties (a plateau of parameters clamped at 1) are ranked in a fixed random, seeded
            # order, not by pixel index, which would favour the bottom of the state
            priority = torch.randperm(height * width, generator=self.generator(), device="cpu").to(states.device)
            priority = priority.double() / (height * width)  # in [0, 1): below one rank step (RANK_STEPS)
            param = torch.full((b, 1, len(rows), len(cols)), self.init, device=states.device, dtype=states.dtype)
            param.requires_grad_(True)
            optimiser: torch.optim.Optimizer
            if self.optimizer == "adam":
                optimiser = torch.optim.Adam([param], lr=self.lr)
            else:  # TorchRay's: SGD, momentum 0.9, dampening 0.9
                optimiser = torch.optim.SGD([param], lr=self.lr, momentum=0.9, dampening=0.9)
            for t in range(self.iterations):
                weight = self.area_weight * self.area_growth ** (t / self.iterations)  # soft, then hard
                mask = self.mask(param, height, width)  # (b, H, W)
                perturbed = self._perturb(levels, mask)  # (b, C, H, W)
                if self.exact:  # one state per call: rounding as in a per-state run
                    scores = torch.cat([self.model(one) for one in perturbed.split(1)])
                else:
                    scores = self.model(perturbed)
                gain = reward(scores)  # (b,)
                area = _ranking_loss(mask.flatten(1), priority, kept)  # (b,)
                loss = (weight * area - gain).sum()  # per-sample losses: masks stay independent
                (param.grad,) = torch.autograd.grad(loss, [param])  # never touches the model's .grad
                optimiser.step()
                with torch.no_grad():
                    param.clamp_(0.0, 1.0)
            with torch.no_grad():
                return self.mask(param, height, width)

    def mask(self, param: torch.Tensor, height: int, width: int) -> torch.Tensor:
        """Smooth masks ``(b, H, W)`` from grid parameters ``(b, 1, H', W')`` by smooth
        max-convolution on the grid, then bilinear upsampling."""
        b, _, rows, cols = param.shape
        kernel, valid, radius = _smax_kernel(rows, cols, self.sigma / self.step, param.device, param.dtype)
        coarse = _SmoothMax.apply(param, kernel[0], kernel[1], valid, radius, self.temperature)
        return upsample_grid(coarse.view(b, 1, rows, cols), height, width, self.step)[:, 0]

    def _levels(self, states: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Blur pyramid ``(b, L, C, H, W)`` (level 0 blurred most, level L-1 the state itself)
        and the differences between consecutive levels ``(b, L - 1, C, H, W)``."""
        fractions = torch.linspace(0, 1, self.num_levels, device="cpu").tolist()
        levels = torch.stack([gaussian_blur(states, self.max_blur * (1 - f)) for f in fractions], dim=1)
        return levels, levels.diff(dim=1)

    def _perturb(self, levels: tuple[torch.Tensor, torch.Tensor], mask: torch.Tensor) -> torch.Tensor:
        """Spatially varying blur: level ``m * (L - 1)`` of the pyramid at each pixel, linear
        between the two nearest levels (two gathers, not a sum over all L levels)."""
        base, steps = levels  # (b, L, C, H, W) levels, (b, L - 1, C, H, W) differences
        position = mask[:, None, None] * (self.num_levels - 1)  # (b, 1, 1, H, W): one per pixel
        lower = position.detach().floor().clamp(max=self.num_levels - 2)
        index = lower.long().expand(-1, -1, base.shape[2], -1, -1)  # the same level on every channel
        return torch.addcmul(base.gather(1, index), position - lower, steps.gather(1, index)).squeeze(1)


def _ranking_loss(mask: torch.Tensor, priority: torch.Tensor, kept: int) -> torch.Tensor:
    """``mean((sort(m) - r_a)^2)`` per row of ``mask (b, N)``, with ``r_a`` = ``N - kept`` zeros
    then ``kept`` ones. Equal to ``mean((m - top)^2)`` with ``top`` the indicator of the ``kept``
    largest values, which ``topk`` finds ~5x faster than a sort.

    Values are ranked after rounding to ``1 / RANK_STEPS`` (1.0, the plateau of parameters clamped
    at 1, is the middle of its step), so values that differ only in their last bits (a batched
    matmul's rounding, another summation order) are ties, and ties are ranked in the fixed order
    ``priority`` (distinct values in ``[0, 1)``, seeded): the ranking, and with it the optimisation,
    does not follow rounding noise."""
    key = (mask.detach().double() * RANK_STEPS).round_() + priority  # unique keys, fixed tie order
    top = torch.zeros_like(mask).scatter_(1, key.topk(kept, dim=1).indices, 1.0)
    return (mask - top).pow(2).mean(1)


def _reward(scores: torch.Tensor, index: torch.Tensor, contrastive: bool) -> torch.Tensor:
    """The target action's score ``(b,)``, minus the best other action's when ``contrastive``."""
    target = scores.gather(1, index[:, None]).squeeze(1)
    if not contrastive:
        return target
    others = scores.scatter(1, index[:, None], -math.inf).amax(1)
    return target - others


class _SmoothMax(torch.autograd.Function):
    """``smax_u k(v - u) m(u)`` on the grid ``(b, H' * W')`` from parameters ``(b, 1, H', W')``.

    The forward pass is the plain tensor formula (unfold, softmax over the neighbours, sum), so
    its values are the same bit for bit as autograd through it gives: the area loss ranks the
    mask's pixels, and where the mask is flat their order is decided by the last bit of these
    values, which then steers the whole optimisation (another summation order moved masks by up
    to 0.9 on Red-Fetch-Green). The backward pass is written out,
    ``d smax / d f_i = s_i (1 + (f_i - smax) / T)`` with ``f_i = k_i m(u_i)`` and ``s_i`` the
    softmax share, then folded back onto the grid: 4 ops instead of autograd's ~12."""

    @staticmethod
    def forward(ctx, param, weights, inside, valid, radius, temperature):
        neighbours = F.unfold(param, 2 * radius + 1, padding=radius)[:, inside]  # (b, n, H'*W')
        values = weights[:, None] * neighbours  # k(v - u) m_bar(u)
        share = (values / temperature + valid).softmax(1)  # points off the grid excluded (-inf)
        out = (values * share).sum(1)  # (b, H'*W')
        ctx.save_for_backward(values, share, out, weights, inside)
        ctx.settings = (param.shape, radius, temperature)
        return out

    @staticmethod
    def backward(ctx, grad):
        values, share, out, weights, inside = ctx.saved_tensors
        shape, radius, temperature = ctx.settings
        d = (values - out[:, None]).mul_(1 / temperature).add_(1).mul_(share).mul_(grad[:, None])
        d.mul_(weights[:, None])
        window = 2 * radius + 1
        full = d.new_zeros(d.shape[0], window * window, d.shape[2])
        full[:, inside] = d
        return F.fold(full, shape[-2:], window, padding=radius), None, None, None, None, None


@functools.lru_cache(maxsize=16)
def _smax_kernel(rows: int, cols: int, sigma: float, device: torch.device, dtype: torch.dtype):
    """Gaussian weights of the grid offsets within 3 ``sigma`` (grid units), their positions in
    an unfold window, which neighbours lie on a ``rows x cols`` grid, and the window radius."""
    with torch.inference_mode(False):  # cached: must stay usable by autograd later
        return _build_smax_kernel(rows, cols, sigma, device, dtype)


def _build_smax_kernel(rows: int, cols: int, sigma: float, device: torch.device, dtype: torch.dtype):
    radius = max(1, math.ceil(3 * sigma))
    offsets = torch.arange(-radius, radius + 1, dtype=torch.float64, device="cpu")  # built on the CPU, moved
    d2 = (offsets[:, None] ** 2 + offsets[None] ** 2).flatten()
    inside = (d2 <= (3 * sigma) ** 2).nonzero().squeeze(1)
    weights = torch.exp(-d2[inside] / (2 * sigma**2)).to(device=device, dtype=dtype)
    ones = torch.ones(1, 1, rows, cols, dtype=torch.float64, device="cpu")
    on_grid = F.unfold(ones, 2 * radius + 1, padding=radius)[:, inside]  # (1, n, H'*W') of 0/1
    valid = torch.zeros_like(on_grid).masked_fill(on_grid == 0, -math.inf).to(device=device, dtype=dtype)
    return (weights, inside.to(device)), valid, radius
