"""Occlusion saliency (Zeiler & Fergus 2014, "Visualizing and Understanding Convolutional
Networks", section 4.2: occlusion sensitivity).

A square ``window`` of ``w x w`` pixels slides over the state in steps of ``stride``; inside it every
channel (stacked frames included) is replaced by ``fill``. The saliency of a pixel is the average
drop of the explained target ``f`` over the windows ``W_i`` that cover it::

    saliency(p) = mean over {i : p in W_i} of  f(s) - f(s_i),    s_i = s * (1 - M_i) + fill * M_i

signed: negative where hiding the pixel raises ``f``. ``f`` is an action's score (logit or
Q-value) or any callable of the scores (a value, "A minus B"). ``explain_all[:, k]`` is the map of
action ``k``, all K from the same perturbed batch, so ``explain_all`` costs what ``explain`` costs.

Windows start at ``0, stride, 2 * stride, ...`` along each axis; the last one is clipped at the
border (``ceil((H - w) / stride) + 1`` positions per axis), so every pixel is covered: these are
Captum's ``Occlusion`` windows, and the maps equal Captum's with
``sliding_window_shapes=(C, w, w)``, ``strides=(C, stride, stride)``, ``baselines=fill`` (tested).
The stride may not exceed the window (pixels between windows would never be occluded).

Settings: Zeiler & Fergus occlude ImageNet images with a grey square. States here are in
``[0, 1]``, not mean-subtracted, so ``fill`` is explicit: a float
(default 0, black, Captum's default baseline; on Atari frames most of the background is black,
so black patches hide objects and leave the background unchanged) or a baseline tensor
broadcastable to ``(C, H, W)``, e.g. a dataset's mean state or 0.5 for mid-grey.
``window=8, stride=4`` (defaults) give 400 windows on 84x84 Atari states and 225 on 64x64
Red-Fetch-Green states (one 8-pixel grid cell per window).

**Incremental inference** (``incremental=True``, opt-in): a window changes only its receptive
field in each convolution, so :mod:`xrl.incremental` computes each occluded state's scores from
the state's own activations (Nakandala et al. 2019, "Incremental and Approximate Inference for
Faster Occlusion-based Deep CNN Explanations"): for chains of Conv2d/pointwise/MaxPool2d layers
followed by Linear layers (the Nature CNN, the grid CNN), with the dense path as the automatic
fallback for any other network. Same maps within float rounding (1e-8 measured, 1e-4 tested);
on the Nature CNN with the default windows ~1.6x faster than the dense floor at one thread
(``benchmarks/bench_incremental.py``).

Cost: ``B * (n_windows + 1)`` forward passes (each state rides along with its windows), run in
chunks of ``batch_size`` rows under ``torch.inference_mode()``; results do not depend on
``batch_size``. Window masks are built once per ``(H, W, window, stride, device)`` and cached.
Measured on 84x84x4 states with a Nature CNN (2 shared CPU cores): ~1.3x the floor (the same
number of forward passes in one batch) for all actions at once; Captum's ``Occlusion`` with the
same windows (``perturbations_per_eval=400``) took ~7x longer for one action, same maps to 1e-8.
"""

from __future__ import annotations

import math

import torch

from xrl.agents.model import Model
from xrl.explainers.base import EXPLAINERS
from xrl.explainers.masks import byte_cache
from xrl.explainers.perturbation import Masks, PerturbationExplainer, drop
from xrl.limits import check_memory
from xrl.ops import positive_int

Fill = float | torch.Tensor


@EXPLAINERS.register("occlusion")
class Occlusion(PerturbationExplainer):
    """Occlusion (Zeiler & Fergus 2014): mean drop of the target over the sliding windows covering each pixel.

    Example::

        explainer = get_explainer("occlusion", model, window=8, stride=4, fill=0.0)
        saliency = explainer.explain(states, targets=lambda q: q[:, 2] - q[:, 3])  # (B, H, W)
        per_action = explainer.explain_all(states)                                 # (B, K, H, W)
    """

    def __init__(
        self,
        model: Model,
        *,
        window: int = 8,
        stride: int = 4,
        fill: Fill = 0.0,
        incremental: bool = False,
        batch_size: int = 512,
        seed: int = 0,
    ) -> None:
        super().__init__(model, batch_size=batch_size, seed=seed, incremental=incremental)
        window, stride = positive_int("window (pixels)", window), positive_int("stride (pixels)", stride)
        if stride > window:
            raise ValueError(
                f"stride {stride} may not exceed window {window}: pixels between windows would never be occluded"
            )
        self.window, self.stride = window, stride
        self.fill = _check_fill(fill, model.input_shape)

    def fill_states(self, states: torch.Tensor, masks: Masks) -> torch.Tensor:
        return torch.as_tensor(self.fill, dtype=states.dtype, device=states.device).expand_as(states)

    def effects(self, base, perturbed, target_fn):
        return drop(base, perturbed, target_fn)

    def project(self, drops: torch.Tensor, states: torch.Tensor, masks: Masks) -> torch.Tensor:
        """``(B, K, N)`` drops per window -> ``(B, K, H, W)`` mean over the windows covering each pixel."""
        height, width = states.shape[-2:]
        windows = self.masks(height, width, device=states.device).flatten(1)  # (N, H*W), 0/1
        total = drops.to(windows.dtype) @ windows  # (B, K, H*W)
        return (total / windows.sum(0)).view(*drops.shape[:2], height, width)

    def masks(self, height: int, width: int, device: torch.device | str = "cpu") -> torch.Tensor:
        """The cached 0/1 window masks ``(N, H, W)``, row-major over window positions."""
        if self.window > min(height, width):
            raise ValueError(f"window {self.window} is larger than the state ({height}x{width})")
        n = (math.ceil((height - self.window) / self.stride) + 1) * (math.ceil((width - self.window) / self.stride) + 1)
        check_memory(n * height * width * 4, f"{n} occlusion masks of {height}x{width}", "use a larger stride")
        return window_masks(height, width, self.window, self.stride, torch.device(device))


@byte_cache
def window_masks(height: int, width: int, window: int, stride: int, device: torch.device) -> torch.Tensor:
    """0/1 masks ``(N, H, W)`` of the windows, ``N = n_rows * n_cols`` with
    ``n = ceil((size - window) / stride) + 1`` positions per axis, clipped at the border.
    Cached: the same arguments return the same tensor (do not modify it)."""
    with torch.inference_mode(False):  # cached: must stay usable by autograd later
        rows = _window_axis(height, window, stride)  # (n_rows, H)
        cols = _window_axis(width, window, stride)  # (n_cols, W)
        masks = rows[:, None, :, None] * cols[None, :, None, :]  # (n_rows, n_cols, H, W)
        return masks.reshape(-1, height, width).to(device)


def _window_axis(size: int, window: int, stride: int) -> torch.Tensor:
    starts = torch.arange(math.ceil((size - window) / stride) + 1, device="cpu") * stride  # moved by window_masks
    pixel = torch.arange(size, device="cpu")
    return ((pixel >= starts[:, None]) & (pixel < starts[:, None] + window)).float()


def _check_fill(fill: Fill, input_shape: tuple[int, ...]) -> Fill:
    if isinstance(fill, torch.Tensor):
        if not fill.is_floating_point() or not torch.isfinite(fill).all():
            raise ValueError(f"a fill tensor must be finite floats, got dtype {fill.dtype}")
        try:
            fits = torch.broadcast_shapes(fill.shape, tuple(input_shape)) == tuple(input_shape)
        except RuntimeError:
            fits = False
        if not fits:
            raise ValueError(
                f"a fill tensor must broadcast to the state shape {tuple(input_shape)}, got {tuple(fill.shape)}"
            )
        return fill.detach().clone()
    if isinstance(fill, bool) or not isinstance(fill, (int, float)) or not math.isfinite(fill):
        raise ValueError(f"fill must be a finite number or a baseline tensor, got {fill!r}")
    return float(fill)
