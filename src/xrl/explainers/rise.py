"""RISE, Randomized Input Sampling for Explanation (Petsiuk, Das & Saenko 2018, "RISE:
Randomized Input Sampling for Explanation of Black-box Models", BMVC, arXiv:1806.07421; code
github.com/eclique/RISE, ``explanations.py``: ``RISE.generate_masks``, ``RISE.forward``).

The state is multiplied by ``n_masks`` random masks ``M_i`` (the same on every channel and
stacked frame) and the saliency of a pixel is the expected score when that pixel is kept::

    saliency = sum_i f(s * M_i) * M_i / (n_masks * p)

**Score** (``score=``), what ``f`` is applied to:

- ``"probability"`` (default): softmax probabilities of the model's scores, what the authors
  explain: their ``Saliency.py`` wraps the model as ``nn.Sequential(model, nn.Softmax(dim=1))``
  before ``RISE``, their Keras ``Easy_start.ipynb`` explains ResNet50's softmax output, and
  ``explanations.py`` says ``p = nn.Softmax(dim=1)(model(stack))``. For a Q-value model the
  softmax of Q-values is not a probability of anything the agent does: it is the Boltzmann
  policy at temperature 1 (:meth:`xrl.Model.probs`, the same quantity the deletion/insertion
  metrics read), so the map is the expected Boltzmann probability of the action, which
  saturates (flat map) when Q-values differ by more than ~10 and depends on the reward scale.
  Use ``"logits"`` for the expected Q-value.
- ``"logits"`` (the behaviour before issue 23): the model's raw scores (policy logits, Q-values
  or class logits), unbounded; RISE's formula is linear in ``f``, so a map of raw scores is the
  expected score when the pixel is kept.

**Default, decision:** ``"probability"``: the authors' protocol, and the quantity the project's
faithfulness metrics (deletion, insertion) score for every model kind. ``targets`` is applied to
what ``score`` names: an action index picks that action's probability (or raw score); a
callable receives the ``(B, K)`` probabilities (or raw scores), e.g. ``score="logits",
targets=lambda s: s.logsumexp(-1)``. ``explain_all[:, k]`` is the map of action ``k``, all K
from the same masked batch (one matmul with the masks), so it costs what ``explain`` costs.

**Masks**, as the authors' ``generate_masks``: a ``grid x grid`` binary grid whose cells are 1
with probability ``p`` (their ``s``, ``p1``), upsampled with pixel-centre linear interpolation
to ``(grid + 1) * cell`` pixels per side (``cell = ceil(H / grid)``, their ``cell_size``,
``up_size``), borders as scikit-image's ``resize(order=1, mode="reflect",
anti_aliasing=False)`` (whole-sample mirror: outside the grid the interpolation continues
towards the mirrored cell), and cropped to ``H x W`` at a random shift in ``[0, cell)`` per
axis. Computed here with two separable ``(up, grid)`` interpolation matrices; they agree with
skimage's ``resize`` fed the same binary grids and shifts to float32 rounding (max abs
difference ~1e-7, ``tests/test_baseline_protocols.py``). (Before issue 23 the upsampling clamped
at the border instead: that changed the outer half cell of the upsampled grid, 6 pixels at
``grid=8`` on 84x84, by up to 0.46, 0.71 in its corners; 0.66 measured after the crop.) The only difference is the
random numbers: ours come from ``torch.Generator().manual_seed(seed)`` (all cells, then all row
shifts, then all column shifts), theirs from numpy's global state (cells, then per mask a row
and a column shift).

Settings: the paper uses thousands of masks (N = 8000) on 224x224 ImageNet images with
``p = 0.5``; here ``n_masks=2000`` (84x84 states have 7x fewer pixels than ImageNet images; every
mask costs one forward pass per state), ``grid=8`` (cells of 11 pixels on 84x84, one MiniGrid
tile on 64x64 Red-Fetch-Green states) and ``p=0.5``. The masks are a function of
``(H, W, n_masks, grid, p, seed)``: drawn once from a generator seeded with ``seed`` and cached,
so every state of every call sees the same masks and maps do not depend on the batch.

**Presets** (``preset=``; explicitly given ``n_masks``, ``grid``, ``p``, ``score`` win):

- ``"eclique"`` (default): the authors' RISE above at xrl's settings, ``n_masks=2000, grid=8,
  p=0.5, score="probability"``.
- ``"torchray"``: TorchRay's ``rise`` (Fong, Patrick & Vedaldi 2019, arXiv:1910.08485;
  github.com/facebookresearch/TorchRay, ``torchray/attribution/rise.py``), the RISE VisionMask
  compared with: ``n_masks=8000`` (``num_masks``), ``grid=7`` (``num_cells``), ``p=0.5``,
  ``score="sigmoid"`` (``torch.sigmoid(model(inp * masks))``: every output squashed on its own,
  not a softmax), the sum divided by ``n_masks`` only (not ``n_masks * p``), and TorchRay's masks
  (:func:`torchray_masks`: reflect-padded grids resized by ``F.interpolate``, TorchRay's random
  draws: the same masks as TorchRay for the same seed on CPU inputs). Differences from TorchRay:
  the masks are drawn on the CPU for every device (TorchRay draws the grids on the input's
  device, so CUDA inputs get other masks); all masks are summed in one matmul (TorchRay: per
  chunk of 32, float32 rounding apart the same); the map is picked by the target (TorchRay's
  ``rise`` returns every class, ``rise_class`` picks one); ``resize`` is not offered (maps are
  the state's size already).

Cost: ``B * (n_masks + 1)`` forward passes in chunks of ``batch_size`` rows under
``torch.inference_mode()``; memory for the cached masks is ``n_masks * H * W`` floats (56 MB for
2000 masks of 84x84). Measured on 84x84x4 states with a Nature CNN (2 shared CPU cores): ~1.2x
the floor (the same number of forward passes in one batch), all actions at once.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from xrl.agents.model import Model
from xrl.explainers.base import EXPLAINERS
from xrl.explainers.masks import byte_cache
from xrl.explainers.perturbation import Masks, PerturbationExplainer
from xrl.limits import check_memory
from xrl.ops import chunks, positive_int

SCORES = ("probability", "logits", "sigmoid")
#: ``preset=``: settings a preset gives (explicit settings win) and how its masks are made
PRESETS = {
    "eclique": {"n_masks": 2000, "grid": 8, "p": 0.5, "score": "probability"},
    # TorchRay's rise() defaults: num_masks=8000, num_cells=7, p=0.5, torch.sigmoid of the outputs
    "torchray": {"n_masks": 8000, "grid": 7, "p": 0.5, "score": "sigmoid"},
}


@EXPLAINERS.register("rise")
class Rise(PerturbationExplainer):
    """RISE (Petsiuk et al. 2018): the target's score weighted by random smooth masks keeping each pixel.

    Example::

        explainer = get_explainer("rise", model, n_masks=2000, grid=8, p=0.5, seed=0)
        saliency = explainer.explain(states)        # (B, H, W)
        per_action = explainer.explain_all(states)  # (B, K, H, W)
    """

    include_state = False  # RISE reads only the masked states

    def __init__(
        self,
        model: Model,
        *,
        n_masks: int | None = None,
        grid: int | None = None,
        p: float | None = None,
        score: str | None = None,
        preset: str = "eclique",
        batch_size: int = 512,
        seed: int = 0,
    ) -> None:
        super().__init__(model, batch_size=batch_size, seed=seed)
        if preset not in PRESETS:
            raise ValueError(f"preset must be one of {tuple(PRESETS)}, got {preset!r}")
        given = {"n_masks": n_masks, "grid": grid, "p": p, "score": score}
        explicit = {k: v for k, v in given.items() if v is not None}
        settings: dict[str, Any] = {**PRESETS[preset], **explicit}  # explicit wins
        n_masks, grid, p, score = settings["n_masks"], settings["grid"], settings["p"], settings["score"]
        n_masks, grid = positive_int("n_masks", n_masks), positive_int("grid", grid)
        if not 0 < float(p) <= 1:
            raise ValueError(f"p (the probability of keeping a grid cell) must be in (0, 1], got {p!r}")
        if score not in SCORES:
            raise ValueError(f"score must be one of {SCORES}, got {score!r}")
        if preset == "torchray" and grid < 2:
            raise ValueError(f"preset='torchray' reflect-pads the grid by one cell: grid must be >= 2, got {grid}")
        self.n_masks, self.grid, self.p = n_masks, grid, float(p)
        self.score, self.preset = score, preset

    def fill_states(self, states: torch.Tensor, masks: Masks) -> torch.Tensor:
        return states.new_zeros(()).expand_as(states)

    def combine(self, state, fill, keep, out) -> None:
        """``s * M_i``: the masks of :meth:`masks` are what is kept."""
        torch.mul(state, keep, out=out)

    def effects(self, base, scores, target_fn):
        """Scores ``(B, K', N)`` of the masked states ``s * M_i`` (softmax first for ``"probability"``,
        sigmoid for ``"sigmoid"``)."""
        if self.score == "probability":
            scores = scores.softmax(-1)
        elif self.score == "sigmoid":
            scores = scores.sigmoid()
        if target_fn is None:
            return scores.transpose(1, 2)
        b, n = scores.shape[:2]
        # target_fn repeats per-state indices for state-major copies: (B*N, K) -> (B*N,)
        return target_fn(scores.flatten(0, 1)).view(b, 1, n)

    def project(self, scores: torch.Tensor, states: torch.Tensor, masks: Masks) -> torch.Tensor:
        """``(B, K, N)`` scores -> ``(B, K, H, W)`` = ``sum_i score_i * M_i / (N * p)`` (TorchRay:
        ``/ N``)."""
        height, width = states.shape[-2:]
        keep = masks.weights.flatten(1)  # (N, H*W)
        saliency = scores.to(keep.dtype) @ keep / (self.n_masks * (1.0 if self.preset == "torchray" else self.p))
        return saliency.view(*scores.shape[:2], height, width)

    def masks(self, height: int, width: int, device: torch.device | str = "cpu") -> torch.Tensor:
        """The cached masks ``(n_masks, H, W)`` in ``[0, 1]`` (1 = kept)."""
        check_memory(
            self.n_masks * height * width * 4, f"{self.n_masks} RISE masks of {height}x{width}", "use fewer n_masks"
        )
        make = torchray_masks if self.preset == "torchray" else rise_masks
        return make(height, width, self.n_masks, self.grid, self.p, self.seed, torch.device(device))


@byte_cache
def rise_masks(
    height: int, width: int, n_masks: int, grid: int, p: float, seed: int, device: torch.device
) -> torch.Tensor:
    """RISE masks ``(n_masks, H, W)``: random ``grid x grid`` binary cells (1 with probability
    ``p``), bilinearly upsampled to ``(grid + 1) * cell`` (pixel centres, mirrored borders, as
    skimage's ``resize(order=1, mode="reflect")``) and cropped at a random shift.

    Drawn on the CPU from ``torch.Generator().manual_seed(seed)`` (identical on every device)
    and cached: the same arguments return the same tensor (do not modify it).
    """
    # cached: must stay usable by autograd later; drawn and built on the CPU (device rule), moved once
    with torch.inference_mode(False), torch.device("cpu"):
        generator = torch.Generator(device="cpu").manual_seed(seed)
        cell_h, cell_w = math.ceil(height / grid), math.ceil(width / grid)
        cells = (torch.rand(n_masks, 1, grid, grid, generator=generator) < p).float()
        shift_h = torch.randint(0, cell_h, (n_masks,), generator=generator)
        shift_w = torch.randint(0, cell_w, (n_masks,), generator=generator)
        up_h = _linear_upsampling(grid, (grid + 1) * cell_h).float()  # (up, grid)
        up_w = _linear_upsampling(grid, (grid + 1) * cell_w).float()
        masks = torch.empty(n_masks, height, width)
        for part in chunks(n_masks, 256):  # the upsampled grids are ~(1 + 1/grid)^2 larger
            up = up_h @ cells[part, 0] @ up_w.T  # (n, up_h, up_w): skimage resize(order=1, mode="reflect")
            rows = shift_h[part, None] + torch.arange(height)  # (n, H)
            cols = shift_w[part, None] + torch.arange(width)  # (n, W)
            index = torch.arange(up.shape[0])[:, None, None]
            masks[part] = up[index, rows[:, :, None], cols[:, None, :]].clamp(0, 1)  # rounding
        return masks.to(device)


def _linear_upsampling(n_in: int, n_out: int) -> torch.Tensor:
    """``(n_out, n_in)`` float64 matrix of 1-D linear interpolation with pixel-centre alignment
    (output pixel ``o`` reads input coordinate ``(o + 0.5) n_in / n_out - 0.5``) and whole-sample
    mirrored borders (index ``-1`` reads ``1``, ``n_in`` reads ``n_in - 2``): scikit-image's
    ``resize(order=1, mode="reflect", anti_aliasing=False)`` along one axis."""
    source = (torch.arange(n_out, dtype=torch.float64) + 0.5) * (n_in / n_out) - 0.5
    low = source.floor()
    weight = source - low
    matrix = torch.zeros(n_out, n_in, dtype=torch.float64)
    for index, w in ((low.long(), 1 - weight), (low.long() + 1, weight)):
        if n_in == 1:
            index = torch.zeros_like(index)
        else:
            period = 2 * (n_in - 1)
            index = index.abs().remainder(period)
            index = torch.where(index > n_in - 1, period - index, index)
        matrix.index_put_((torch.arange(n_out), index), w, accumulate=True)
    return matrix


@byte_cache
def torchray_masks(
    height: int, width: int, n_masks: int, grid: int, p: float, seed: int, device: torch.device
) -> torch.Tensor:
    """TorchRay's RISE masks ``(n_masks, H, W)`` (github.com/facebookresearch/TorchRay,
    ``torchray/attribution/rise.py``: ``rise`` and ``_upsample_reflect``), drawn as TorchRay draws
    them on the CPU: a generator seeded with ``seed`` (their ``torch.manual_seed(seed)``), then per
    chunk of 32 masks (``rise``'s default ``batch_size``) ``rand(32, 1, grid, grid) < p``, the
    grids reflect-padded by one cell, bilinearly resized (``align_corners=False``) to
    ``cell' * (grid + 2)`` with ``cell' = ceil(up / grid)``, ``up = (H + ceil(H / grid), W + ...)``,
    sliced to ``up`` from ``cell'`` on, and cropped at ``randint(0, ceil(H / grid))`` rows and
    ``randint(0, ceil(W / grid))`` columns. The same tensor TorchRay builds for CPU inputs and the
    same seed; cached (do not modify it)."""
    import torch.nn.functional as F

    with torch.inference_mode(False), torch.device("cpu"):  # drawn on the CPU (device rule), moved once
        generator = torch.Generator(device="cpu").manual_seed(seed)
        cell = (math.ceil(height / grid), math.ceil(width / grid))
        up = (height + cell[0], width + cell[1])
        cell_up = (math.ceil(up[0] / grid), math.ceil(up[1] / grid))  # _upsample_reflect's cell_size
        masks = torch.empty(n_masks, height, width)
        for part in chunks(n_masks, 32):
            cells = (torch.rand(part.stop - part.start, 1, grid, grid, generator=generator) < p).float()
            padded = F.pad(cells, (1, 1, 1, 1), mode="reflect")
            resized = F.interpolate(padded, [c * (grid + 2) for c in cell_up], mode="bilinear", align_corners=False)
            resized = resized[:, 0, cell_up[0] : cell_up[0] + up[0], cell_up[1] : cell_up[1] + up[1]]
            rows = torch.randint(0, cell[0], (len(resized),), generator=generator)
            cols = torch.randint(0, cell[1], (len(resized),), generator=generator)
            for i in range(len(resized)):
                masks[part.start + i] = resized[i, rows[i] : rows[i] + height, cols[i] : cols[i] + width]
        return masks.to(device)
