"""LIME for images (Ribeiro, Singh & Guestrin 2016, "Why Should I Trust You?": Explaining the
Predictions of Any Classifier"), on superpixels of the state.

1. The state is cut into superpixels (``segmentation``):

   - ``"quickshift"`` (default, as the ``lime`` package): scikit-image quickshift with lime's
     ``ratio=0.2, max_dist=200`` and ``kernel_size=1``. **Decision:** lime uses
     ``kernel_size=4``, made for 224-299 pixel photographs; on 84x84 Atari and 64x64
     Red-Fetch-Green states it gives 2-5 superpixels, so the default is scaled to our
     resolution (~100 superpixels on Atari frame stacks, ~70 on Red-Fetch-Green);
     ``kernel_size=4`` gives lime's segmentation of an RGB state.
   - ``"slic"``: scikit-image SLIC with ``n_segments`` (100) and ``compactness`` (10).
   - ``"grid"``: square ``cell`` x ``cell`` pixel cells (8), no image content involved.
   - a callable ``state (C, H, W) -> labels (H, W)`` integer tensor (e.g. object masks).

   Segmentation sees every channel: an RGB state (3 channels, ``frame_stack == 1``) is
   converted to Lab as lime does; other states (stacked grey frames) are scaled to ``[0, 100]``,
   the range of Lab lightness, so lime's ``ratio``/``max_dist`` keep their meaning.
2. ``n_samples`` (1000, as lime) binary vectors ``z`` switch superpixels on/off with probability
   1/2 each, the first one all on (the state itself, as lime). Off superpixels are replaced by
   ``fill``: ``"mean"`` (each superpixel by its own mean per channel, lime's default
   ``hide_color=None``), ``"blur"`` (Gaussian blur of std ``blur_sigma``, 5 as the metrics' blur
   substrate), ``"black"`` (0, lime's ``hide_color=0``) or a float constant.
3. Weights ``pi(z) = sqrt(exp(-d^2 / width^2))`` with ``d`` the cosine distance between ``z`` and
   the all-on vector and ``width = kernel_width = 0.25`` (lime's image kernel).
4. Ridge regression with intercept, ``min sum_i pi_i (y_i - c - z_i . beta)^2 + alpha |beta|^2``
   (``alpha=1`` as lime's ``Ridge()``; ``alpha=0``: plain weighted least squares), solved in
   float64 with one ``torch.linalg.lstsq``. ``y`` is the explained target of the model's
   *scores* (logits / Q-values, or any callable of them), not softmax probabilities.

**Output** (``output=``):

- ``"coefficients"`` (default): the saliency of a pixel is the coefficient ``beta_j`` of its
  superpixel (signed: negative = evidence against the target).
- ``"binary"``: the explanation image LIME's users look at and VisionMask compared against,
  ``ImageExplanation.get_image_and_mask(label, positive_only=True, num_features=k)`` of the
  ``lime`` package (github.com/marcotcr/lime, ``lime/lime_image.py``): 1 on the selected
  superpixels, 0 elsewhere. As lime does it: the coefficients are ordered by decreasing
  ``|beta_j|`` (``lime/lime_base.py`` returns ``local_exp`` sorted by absolute value; ties keep
  superpixel order here, lime's feature order there), then with ``positive_only=True`` (default)
  the first ``num_features`` (5) with ``beta_j > max(0, min_weight)`` are selected, i.e. the k
  largest positive coefficients (fewer if fewer are positive); with ``negative_only=True`` the
  first k with ``beta_j < 0`` and ``|beta_j| > min_weight`` (also marked 1, as lime's mask);
  with both False the first k by ``|beta_j|``, skipping ``|beta_j| < min_weight``, marked +1 or
  -1 by sign (lime's signed mask; ``beta_j = 0`` counts as +1). ``hide_rest`` only changes
  lime's returned image, not its mask, so it has no counterpart here. A binary map ties most
  pixels: metrics that rank pixels (deletion, insertion) order ties by reading order, which is
  why the signed coefficients stay the default.

Differences from lime's ``explain_instance`` besides the segmentation (above): lime regresses
the classifier's probabilities (``classifier_fn`` returns ``predict_proba``), here the model's
scores; its default ``num_features=100000`` with ``feature_selection="auto"`` keeps every
superpixel (``highest_weights`` then selects all), as here. ``explain_all`` regresses all K scores on the same samples: one
least-squares solve with K right-hand sides, so it costs what ``explain`` costs.

Cost: ``B * n_samples`` forward passes in chunks of ``batch_size`` rows under
``torch.inference_mode()``, plus segmentation on the CPU (~10 ms per 84x84 state) and one small
float64 solve per state (states have different superpixel counts). Measured on 84x84x4 states
and a Nature CNN: ~1.2x the floor of the forward passes alone, all 6 actions at once; Captum's
``Lime`` (same samples and superpixels) took ~4x longer for one action. Each state's samples come from a generator seeded with ``seed``
alone, so maps do not depend on the batch, its chunking or the state's position in it.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

from xrl.agents.model import Model
from xrl.explainers.base import EXPLAINERS
from xrl.explainers.perturbation import Masks, PerturbationExplainer
from xrl.limits import check_memory
from xrl.ops import gaussian_blur, positive_int

SEGMENTATIONS = ("quickshift", "slic", "grid")
FILLS = ("mean", "blur", "black")
OUTPUTS = ("coefficients", "binary")
Segmentation = str | Callable[[torch.Tensor], torch.Tensor]


@EXPLAINERS.register("lime")
class Lime(PerturbationExplainer):
    """LIME (Ribeiro et al. 2016): a weighted linear surrogate of the scores over superpixels.

    Example::

        explainer = get_explainer("lime", model, n_samples=1000, fill="mean")
        saliency = explainer.explain(states)        # (B, H, W) surrogate coefficients
        per_action = explainer.explain_all(states)  # (B, K, H, W), same perturbed batch
        labels = explainer.segments(states)         # (B, H, W) superpixel indices
    """

    include_state = False  # the first sample is the state itself (all superpixels on), as lime

    def __init__(
        self,
        model: Model,
        *,
        n_samples: int = 1000,
        segmentation: Segmentation = "quickshift",
        kernel_size: float = 1.0,
        max_dist: float = 200.0,
        ratio: float = 0.2,
        n_segments: int = 100,
        compactness: float = 10.0,
        cell: int = 8,
        fill: str | float = "mean",
        blur_sigma: float = 5.0,
        kernel_width: float = 0.25,
        alpha: float = 1.0,
        output: str = "coefficients",
        num_features: int = 5,
        positive_only: bool = True,
        negative_only: bool = False,
        min_weight: float = 0.0,
        batch_size: int = 512,
        seed: int = 0,
    ) -> None:
        super().__init__(model, batch_size=batch_size, seed=seed)
        n_samples = positive_int("n_samples", n_samples, low=2)
        if not callable(segmentation) and segmentation not in SEGMENTATIONS:
            raise ValueError(f"segmentation must be one of {SEGMENTATIONS} or a callable, got {segmentation!r}")
        cell = positive_int("cell", cell)
        if fill not in FILLS and (isinstance(fill, (str, bool)) or not isinstance(fill, (int, float))):
            raise ValueError(f"fill must be one of {FILLS} or a float, got {fill!r}")
        for name, value in (("kernel_size", kernel_size), ("kernel_width", kernel_width)):
            if not float(value) > 0:
                raise ValueError(f"{name} must be positive, got {value!r}")
        if not float(blur_sigma) >= 0 or not float(alpha) >= 0:
            raise ValueError(f"blur_sigma and alpha must be >= 0, got {blur_sigma!r} and {alpha!r}")
        self.n_samples = int(n_samples)
        self.segmentation = segmentation
        self.kernel_size, self.max_dist, self.ratio = float(kernel_size), float(max_dist), float(ratio)
        self.n_segments, self.compactness, self.cell = int(n_segments), float(compactness), int(cell)
        self.fill = fill if isinstance(fill, str) else float(fill)
        self.blur_sigma = float(blur_sigma)
        self.kernel_width = float(kernel_width)
        self.alpha = float(alpha)
        if output not in OUTPUTS:
            raise ValueError(f"output must be one of {OUTPUTS}, got {output!r}")
        num_features = positive_int("num_features", num_features)
        if positive_only and negative_only:
            raise ValueError("positive_only and negative_only cannot both be True (as lime)")
        self.output, self.num_features = output, int(num_features)
        self.positive_only, self.negative_only = bool(positive_only), bool(negative_only)
        self.min_weight = float(min_weight)

    def effects(self, base, scores, target_fn):
        """The regression targets ``(B, K', N)``: the explained target, or every action's score."""
        if target_fn is None:
            return scores.transpose(1, 2)
        return target_fn(scores.flatten(0, 1)).view(*scores.shape[:2], 1).transpose(1, 2)

    def project(self, y: torch.Tensor, states: torch.Tensor, masks: SuperpixelSamples) -> torch.Tensor:  # type: ignore[override]  # perturbations() gives SuperpixelSamples
        """Targets ``(B, K', N)`` -> each superpixel's surrogate coefficient on its pixels ``(B, K', H, W)``."""
        return self._paint(self._select(self._fit(masks.samples, y.transpose(1, 2))), masks.segments)

    def segments(self, states: torch.Tensor) -> torch.Tensor:
        """Superpixel labels ``(B, H, W)`` int64, ``0 .. S_b - 1`` for each state."""
        labels = []
        for state in states.detach():
            if callable(self.segmentation):
                raw = torch.as_tensor(self.segmentation(state))
                if tuple(raw.shape) != tuple(state.shape[-2:]):
                    raise ValueError(
                        f"a segmentation callable must return (H, W) = {tuple(state.shape[-2:])} "
                        f"labels, got shape {tuple(raw.shape)}"
                    )
            else:
                raw = torch.from_numpy(np.ascontiguousarray(self._superpixels(state)))
            labels.append(torch.unique(raw.long().cpu(), return_inverse=True)[1])  # 0 .. S - 1
        return torch.stack(labels).to(states.device)

    def _superpixels(self, state: torch.Tensor) -> np.ndarray:
        channels, height, width = state.shape
        if self.segmentation == "grid":
            cols = -(-width // self.cell)
            rows, columns = np.arange(height)[:, None] // self.cell, np.arange(width)[None] // self.cell
            return rows * cols + columns
        from skimage.segmentation import quickshift, slic  # imported here: only LIME needs it

        image = state.permute(1, 2, 0).double().cpu().numpy()  # (H, W, C)
        lab = channels == 3 and self.model.frame_stack == 1
        image = image.clip(0, 1) if lab else image * 100.0  # Lab's lightness range
        if self.segmentation == "quickshift":
            return quickshift(
                image,
                ratio=self.ratio,
                kernel_size=self.kernel_size,
                max_dist=self.max_dist,
                convert2lab=lab,
                rng=self.seed,
            )
        return slic(
            image,
            n_segments=self.n_segments,
            compactness=self.compactness,
            convert2lab=lab,
            channel_axis=-1,
            start_label=0,
        )

    def perturbations(self, states: torch.Tensor) -> SuperpixelSamples:
        """Superpixels ``(B, H, W)`` and each state's on/off samples ``(N, S_b)``."""
        segments = self.segments(states)
        s = int(segments.max()) + 1
        n = self.n_samples
        check_memory(  # each state's on/off samples, and the float64 regression (design, weights, solution)
            4 * states.shape[0] * n * s + 8 * (n * (s + 1) * 3 + n * self.model.n_actions),
            f"lime with n_samples={n} over {s} superpixels of {tuple(states.shape[-2:])} states",
            "lower lime.n_samples, or use fewer superpixels (a larger kernel_size / cell, fewer n_segments)",
        )
        samples = []
        for seg in segments:
            z = torch.randint(0, 2, (self.n_samples, int(seg.max()) + 1), generator=self.generator(), device="cpu")
            z[0] = 1  # the state itself, as lime
            samples.append(z.to(states.device, states.dtype))
        return SuperpixelSamples(segments, samples)

    def fill_states(self, states: torch.Tensor, masks: SuperpixelSamples) -> torch.Tensor:  # type: ignore[override]  # as project
        """What switched-off superpixels become, ``(B, C, H, W)``."""
        if self.fill == "blur":
            return gaussian_blur(states, self.blur_sigma)
        if self.fill == "mean":  # each superpixel's mean per channel, painted back on it
            segments = masks.segments
            b, c = states.shape[:2]
            s = int(segments.max()) + 1
            index = segments.flatten(1)[:, None].expand(b, c, -1)  # (B, C, H*W)
            sums = states.new_zeros(b, c, s).scatter_add_(2, index, states.flatten(2))
            counts = states.new_zeros(b, 1, s).scatter_add_(2, index[:, :1], torch.ones_like(states[:, :1].flatten(2)))
            return (sums / counts.clamp_min(1)).gather(2, index).view_as(states)
        return torch.full_like(states, 0.0 if self.fill == "black" else float(self.fill))

    def combine(self, state, fill, keep, out) -> None:
        """``fill + z_i[segments] * (state - fill)``: superpixels switched off take the fill."""
        torch.lerp(fill, state, keep, out=out)

    def _fit(self, samples: list[torch.Tensor], y: torch.Tensor) -> list[torch.Tensor]:
        """Each state's surrogate coefficients ``(K, S_b)`` for targets ``y (B, N, K)``."""
        coefficients = []
        for z, yb in zip(samples, y.detach().double().cpu()):
            z = z.double().cpu()  # (N, S)
            distance = 1.0 - (z.sum(1) / z.shape[1]).sqrt()  # cosine distance to all-on; 1 if all off
            weight = torch.exp(-(distance**2) / self.kernel_width**2).sqrt()  # lime's kernel
            centre_z = (weight @ z) / weight.sum()
            centre_y = (weight @ yb) / weight.sum()
            root = weight.sqrt()[:, None]
            a = root * (z - centre_z)  # intercept fitted by centring, not penalised (as sklearn)
            rhs = root * (yb - centre_y)
            if self.alpha > 0:
                a = torch.cat([a, torch.eye(z.shape[1], dtype=a.dtype, device=a.device) * self.alpha**0.5])
                rhs = torch.cat([rhs, rhs.new_zeros(z.shape[1], rhs.shape[1])])
            beta = torch.linalg.lstsq(a, rhs, driver="gelsd").solution  # (S, K)
            coefficients.append(beta.T.to(device=y.device, dtype=torch.float32))
        return coefficients

    def _select(self, coefficients: list[torch.Tensor]) -> list[torch.Tensor]:
        """With ``output="binary"``, lime's ``get_image_and_mask`` mask of each row of each
        ``(K, S_b)`` coefficient matrix; otherwise the coefficients unchanged."""
        if self.output == "coefficients":
            return coefficients
        return [torch.stack([self._binary(row) for row in beta]) if beta.shape[0] else beta for beta in coefficients]

    def _binary(self, beta: torch.Tensor) -> torch.Tensor:
        """lime's mask over superpixels for one coefficient vector ``(S,)``."""
        order = torch.sort(beta.abs(), descending=True, stable=True).indices  # lime's local_exp order
        values = beta[order]
        if self.positive_only:
            chosen = order[(values > 0) & (values > self.min_weight)][: self.num_features]
            marks = torch.ones(len(chosen), dtype=beta.dtype, device=beta.device)
        elif self.negative_only:
            chosen = order[(values < 0) & (values.abs() > self.min_weight)][: self.num_features]
            marks = torch.ones(len(chosen), dtype=beta.dtype, device=beta.device)
        else:
            first = order[: self.num_features]
            chosen = first[beta[first].abs() >= self.min_weight]
            marks = torch.where(beta[chosen] < 0, -1.0, 1.0).to(beta.dtype)
        return torch.zeros_like(beta).index_put_((chosen,), marks)

    @staticmethod
    def _paint(coefficients: list[torch.Tensor], segments: torch.Tensor) -> torch.Tensor:
        """Coefficients ``(K, S_b)`` on their superpixels' pixels: ``(B, K, H, W)``."""
        return torch.stack([beta[:, seg] for beta, seg in zip(coefficients, segments)])


class SuperpixelSamples(Masks):
    """LIME's perturbations: superpixels ``segments (B, H, W)`` and per state the on/off samples
    ``(N, S_b)``; the kept pixels of samples ``start:stop`` of state ``b`` are built on demand."""

    def __init__(self, segments: torch.Tensor, samples: list[torch.Tensor]) -> None:
        self.segments, self.samples = segments, samples
        self.n = samples[0].shape[0] if samples else 0

    def rows(self, b: int, start: int, stop: int) -> torch.Tensor:
        segments = self.segments[b]
        keep = torch.index_select(self.samples[b][start:stop], 1, segments.flatten())  # ~3x faster than z[:, seg]
        return keep.view(stop - start, 1, *segments.shape)  # (n, 1, H, W) of 0/1
