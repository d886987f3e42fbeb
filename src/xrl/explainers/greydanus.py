"""Gaussian-blur perturbation saliency (Greydanus, Koul, Dodge & Fern 2018, "Visualizing and
Understanding Atari Agents", ICML, arXiv:1711.00138; code github.com/greydanus/visualize_atari,
``saliency.py``: ``get_mask``, ``occlude``, ``score_frame``), the perturbation baseline of DIGR
and FLS.

For every ``stride``-th pixel ``(i, j)`` a mask ``M`` of std ``radius`` centred there blends the
state with a blurred copy, ``s' = s * (1 - M) + blur(s) * M`` (blur std ``blur_sigma`` = 3 as in
Greydanus' ``occlude``), and the saliency of ``(i, j)`` is how much the agent's output moves:

- ``score="logits"`` (default; Greydanus' ``score_frame``): ``1/2 ||l(s) - l(s')||^2`` on the
  model's raw scores ``l`` (their ``run_through_model(mode="actor")`` returns the actor head's
  logits, no softmax). For a Q-value model this is the same formula on Q-values.
- ``score="probability"`` (alias ``"l2"``, the default before issue 23):
  ``1/2 ||pi(s) - pi(s')||^2`` on softmax probabilities (for Q-values: the Boltzmann policy at
  temperature 1, :meth:`xrl.Model.probs`). Bounded in ``[0, 1]``, but it vanishes where the
  policy is saturated (``pi(a|s)`` ~ 1): float32 softmax then rounds most perturbations to
  exactly the same probabilities and the map is flat (ties).
- ``score="kl"`` (DIGR's actor-critic variant, Eq. 3): ``KL(pi(s) || pi(s'))``;
- ``score="target"``: ``|f(s) - f(s')|`` with ``f`` the explained target (an action's score, or
  any callable such as a value or a logit difference), e.g. ``|Q(s, a) - Q(s', a)|``.

**Default, decision:** ``"logits"``, what Greydanus et al. ran and what DIGR and FLS cite as
"Greydanus". It is scale-dependent (units of squared logits or squared Q-values), which does
not move the project's metrics that read rankings or normalised maps (deletion, insertion,
accuracy, localization, sparseness, sanity, nss, gaze_kl, shuffled_auc); of the metrics only
``lipschitz`` reads raw magnitudes, and it already compares maps in different units across
methods (gradients, probabilities, masks). ``"probability"`` keeps a bounded score one setting
away; it is not a monotone function of ``"logits"``, so the two rank pixels differently.

With ``"logits"``, ``"probability"`` and ``"kl"`` the score is over all actions and ``targets``
is ignored (it is still validated). ``explain_all`` returns each action's term of the score from
the same perturbed batch: ``1/2 (l_k(s) - l_k(s'))^2`` for ``"logits"``,
``1/2 (p_k(s) - p_k(s'))^2`` for ``"probability"`` and ``p_k(s) (log p_k(s) - log p_k(s'))``
for ``"kl"`` (signed), so the K maps sum to ``explain``; for ``"target"`` it is
``|score_k(s) - score_k(s')|``, i.e. ``explain_all[:, k] == explain(targets=k)``.

Masks (``mask=``):

- ``"gaussian"`` (default): ``exp(-d^2 / (2 radius^2))``, 1 at the centre, exactly 0 beyond
  ``4 radius``; the state is blurred with replicated borders (:func:`xrl.explainers.masks.
  gaussian_blur`). Shared with ``sarfa``.
- ``"greydanus"``: their ``get_mask`` and ``occlude`` as written: the pixels within distance 1
  of the centre (a 5-pixel plus, fewer at a border) blurred by ``scipy.ndimage.gaussian_filter``
  (std ``radius``, scipy's ``mode="reflect"``: half-sample symmetric borders, kernel radius
  ``int(4 radius + 0.5)``) and divided by its maximum; the state blurred the same way (std
  ``blur_sigma``, reflect borders). Computed here in float64 with separable blur matrices.

How the two differ (measured on 84x84): in the interior their mask is a Gaussian of std
``radius`` convolved with the 5-pixel plus, so slightly wider: the masks of centres at least
``4 radius`` from every border differ by at most 0.0059 for ``radius=5`` (0.0023 for 8, 0.0092
for 4, 0.037 for 2). Near a border their mask folds back at the edge (reflect), where ours is
cut off, and is renormalised by its maximum: there the masks differ by up to 0.59. Their
blurred state mirrors at the border where ours repeats the edge pixel. With ``mask="greydanus"``
the coarse scores match a numpy/scipy re-implementation of ``score_frame`` to float32 rounding
(max abs difference 6e-9, 1.3e-6 of the peak, and masks within 3e-8); with the default masks the
coarse scores of centres 20+ pixels from the borders agree within 1.3% of the peak for
``radius=5`` (correlation 0.9999), see ``tests/test_baseline_protocols.py``. The default stays
``"gaussian"``: it is shared with ``sarfa`` and DIGR's teacher maps, and it is exactly a
Gaussian of std ``radius`` everywhere, border included.

Upsampling (both masks): the score grid ``(H', W')`` is upsampled bilinearly to ``(H, W)``, each
grid value on its own pixel ``(i * stride, j * stride)``, pixels past the last centre repeating
it. Greydanus' ``score_frame`` differs: its array has ``int(80 / d) + 1`` rows and columns of
which only ``len(range(0, 80, d))`` are filled (for ``d = 5``: 16 of 17, the last row and column
stay 0), and it is resized to 80x80 with pixel-centre bilinear interpolation (``cv2.resize`` in
the current code, ``scipy.misc.imresize`` in the first version, which also quantised to uint8
and rescaled by ``pmax / max``), so grid value ``(i, j)`` lands near pixel ``4.7 i + 1.9`` and
the map fades to 0 at the bottom and right edges. Only the coarse grid is compared with theirs.

Masks of all stacked frames/channels are the same (the perturbation is spatial); Greydanus'
frames are single 80x80 grey images (their ``prepro``), so on a 1-channel state the two agree
channel for channel.

Settings from the papers: Greydanus use ``radius=5, stride=5`` on 80x80 Atari frames; DIGR use
``radius=4`` on Red-Fetch-Green, ``radius=8`` on Breakout and ``radius=5`` on CARLA, e.g.
``get_explainer("greydanus", model, radius=8)`` for Breakout.

``incremental=True`` computes the perturbed scores by incremental inference
(:mod:`xrl.incremental`; see ``occlusion``): the Gaussian masks are exactly 0 beyond
``4 radius`` pixels, so each perturbation changes a ``(8 radius + 1)``-pixel box; it pays off
when that box is small next to the state (small ``radius``), and falls back to the dense path
for networks it does not handle. Same maps within float rounding.

Cost: ``B * (ceil(H/stride) * ceil(W/stride) + 1)`` forward passes (each state rides along
with its perturbations), run in chunks of ``batch_size`` states under
``torch.inference_mode()``; the result does not depend on ``batch_size``. Masks are built
once per size and cached (:func:`perturbation_masks`, :func:`greydanus_masks`).
"""

from __future__ import annotations

import functools

import torch

from xrl.agents.model import Model
from xrl.explainers.base import EXPLAINERS
from xrl.explainers.masks import byte_cache, mask_centres, perturbation_masks, upsample_grid
from xrl.explainers.perturbation import Masks, PerturbationExplainer
from xrl.limits import check_memory
from xrl.ops import Targets, gaussian_blur, positive_int

SCORES = ("logits", "probability", "kl", "target")
#: older names still accepted: ``"l2"`` was the probability score
SCORE_ALIASES = {"l2": "probability"}
MASKS = ("gaussian", "greydanus")


@EXPLAINERS.register("greydanus")
class Greydanus(PerturbationExplainer):
    """Gaussian-blur perturbation saliency; see the module docstring.

    Example::

        explainer = get_explainer("greydanus", model, radius=8, stride=5)
        saliency = explainer.explain(states)        # (B, H, W)
        per_action = explainer.explain_all(states)  # (B, K, H, W)
        as_run = get_explainer("greydanus", model, mask="greydanus")  # their get_mask / occlude
    """

    def __init__(
        self,
        model: Model,
        *,
        radius: float = 5.0,
        stride: int = 5,
        blur_sigma: float = 3.0,
        score: str = "logits",
        mask: str = "gaussian",
        incremental: bool = False,
        batch_size: int = 512,  # a whole 84x84 state at stride 5 (290 rows, ~100 MB) in one pass
        seed: int = 0,
    ) -> None:
        super().__init__(model, batch_size=batch_size, seed=seed, incremental=incremental)
        if not float(radius) > 0:
            raise ValueError(f"radius (std of the Gaussian mask, pixels) must be positive, got {radius!r}")
        stride = positive_int("stride", stride)
        if not float(blur_sigma) >= 0:
            raise ValueError(f"blur_sigma must be >= 0, got {blur_sigma!r}")
        score = SCORE_ALIASES.get(score, score) if isinstance(score, str) else score
        if score not in SCORES:
            raise ValueError(f"score must be one of {SCORES} (or 'l2' = 'probability'), got {score!r}")
        if mask not in MASKS:
            raise ValueError(f"mask must be one of {MASKS}, got {mask!r}")
        self.radius = float(radius)
        self.stride = stride
        self.blur_sigma = float(blur_sigma)
        self.score = score
        self.mask = mask

    def explain(self, states: torch.Tensor, targets: Targets = None) -> torch.Tensor:
        """Saliency ``(B, H, W)``; unless ``score="target"``, given targets are validated, then unused."""
        if targets is None and self.score != "target":
            targets = _unused  # not resolving the argmax saves a forward pass of the states
        return super().explain(states, targets)

    def fill_states(self, states: torch.Tensor, masks: Masks) -> torch.Tensor:
        """The blurred states (Greydanus' ``occlude``)."""
        if self.mask == "greydanus":
            return reflect_blur(states, self.blur_sigma)
        return gaussian_blur(states, self.blur_sigma)

    def effects(self, base, perturbed, target_fn):
        if self.score == "target":
            if target_fn is None:
                return (perturbed - base[:, None]).abs().transpose(1, 2)
            n, m = perturbed.shape[:2]
            # target_fn repeats per-state indices for state-major copies: (B*N, K) -> (B*N,)
            return (target_fn(perturbed.flatten(0, 1)).view(n, m) - target_fn(base)[:, None]).abs()[:, None]
        terms = self._terms(base, perturbed)  # (B, N, K)
        if target_fn is None:
            return terms.transpose(1, 2)
        return terms.sum(-1).clamp_min(0)[:, None]  # (B, 1, N); KL >= 0 up to rounding

    def _terms(self, base: torch.Tensor, perturbed: torch.Tensor) -> torch.Tensor:
        """Per-action terms ``(B, N, K)`` of the logits, probability or KL score between s and s'."""
        if self.score == "logits":
            return 0.5 * (base[:, None] - perturbed) ** 2
        if self.score == "probability":
            return 0.5 * (base.softmax(-1)[:, None] - perturbed.softmax(-1)) ** 2
        log_p, log_q = base.log_softmax(-1)[:, None], perturbed.log_softmax(-1)
        return log_p.exp() * (log_p - log_q)

    def masks(self, height: int, width: int, device: torch.device | str = "cpu") -> torch.Tensor:
        """The cached perturbation masks ``(N, H, W)`` this explainer uses."""
        n = len(range(0, height, self.stride)) * len(range(0, width, self.stride))
        check_memory(n * height * width * 4, f"{n} perturbation masks of {height}x{width}", "use a larger stride")
        if self.mask == "greydanus":
            return greydanus_masks(height, width, self.stride, self.radius, torch.device(device))
        return perturbation_masks(height, width, self.stride, self.radius, device=torch.device(device))

    def project(self, coarse: torch.Tensor, states: torch.Tensor, masks: Masks | None = None) -> torch.Tensor:
        """``(B, K, N)`` grid scores -> ``(B, K, H, W)``, bilinear between the grid points."""
        height, width = states.shape[-2:]
        rows, cols = mask_centres(height, width, self.stride)
        grid = coarse.reshape(*coarse.shape[:2], len(rows), len(cols))  # (B, K, H', W')
        return upsample_grid(grid, height, width, self.stride)


def _unused(scores: torch.Tensor) -> torch.Tensor:
    raise AssertionError("the logits, probability and kl scores do not use targets")


@functools.lru_cache(maxsize=32)
def reflect_blur_matrix(n: int, sigma: float, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """``(n, n)`` matrix ``A`` with ``A @ x`` = ``scipy.ndimage.gaussian_filter1d(x, sigma)`` along
    the first axis: scipy's kernel (``exp(-x^2 / (2 sigma^2))``, normalised, radius
    ``int(4 sigma + 0.5)``) and its default ``mode="reflect"`` border (``d c b a | a b c d``,
    repeated for kernels wider than the signal). Float64 weights, cast to ``dtype``."""
    with torch.inference_mode(False):  # cached: must stay usable by autograd later
        half = int(4.0 * sigma + 0.5)
        cpu = torch.device("cpu")  # built on the CPU (the same on every device), moved at the end
        offsets = torch.arange(-half, half + 1, dtype=torch.float64, device=cpu)
        kernel = torch.exp(-0.5 * (offsets / sigma) ** 2)
        kernel = kernel / kernel.sum()
        source = torch.arange(n, device=cpu)[:, None] + torch.arange(-half, half + 1, device=cpu)[None]  # (n, taps)
        source = source.remainder(2 * n)  # half-sample symmetric extension has period 2n
        source = torch.where(source >= n, 2 * n - 1 - source, source)
        matrix = torch.zeros(n, n, dtype=torch.float64, device=cpu)
        matrix.scatter_add_(1, source, kernel.expand(n, -1).contiguous())
        return matrix.to(device=device, dtype=dtype)


def reflect_blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """``scipy.ndimage.gaussian_filter(frame, sigma)`` (reflect borders) of every ``(H, W)`` frame
    of ``x (..., H, W)``, as Greydanus' ``occlude``; ``sigma == 0`` is the identity."""
    if sigma == 0:
        return x.clone()
    rows = reflect_blur_matrix(x.shape[-2], float(sigma), x.device, x.dtype)
    cols = reflect_blur_matrix(x.shape[-1], float(sigma), x.device, x.dtype)
    return rows @ x @ cols.T


@byte_cache
def greydanus_masks(height: int, width: int, stride: int, radius: float, device: torch.device) -> torch.Tensor:
    """Greydanus' ``get_mask`` for every centre of the ``stride`` grid, ``(N, H, W)`` float32,
    mask ``n = r * W' + c`` centred on ``(r * stride, c * stride)``: the pixels within distance 1
    of the centre set to 1, blurred with scipy's ``gaussian_filter(sigma=radius)`` (reflect
    borders) and divided by the maximum. Float64, then float32; cached (do not modify)."""
    with torch.inference_mode(False):
        rows, cols = mask_centres(height, width, stride)
        blur_h = reflect_blur_matrix(height, float(radius), torch.device("cpu"), torch.float64)
        blur_w = reflect_blur_matrix(width, float(radius), torch.device("cpu"), torch.float64)
        y = torch.arange(height, device="cpu")[None, :, None]  # built on the CPU, moved at the end
        x = torch.arange(width, device="cpu")[None, None, :]
        masks = []
        for r in rows.tolist():
            disc = ((y - r) ** 2 + (x - cols[:, None, None]) ** 2 <= 1).double()  # (W', H, W)
            blurred = blur_h @ disc @ blur_w.T
            masks.append(blurred / blurred.amax((1, 2), keepdim=True))
        return torch.cat(masks).float().to(device)
