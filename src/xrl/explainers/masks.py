"""Perturbation masks shared by the perturbation methods (the Gaussian blur they use is
:func:`xrl.ops.gaussian_blur`).

Everything here is plain torch on the caller's device. Masks are built once per
``(H, W, stride, radius, truncate, device)`` and cached: callers must not modify them in place.
"""
from __future__ import annotations

import functools

import torch
import torch.nn.functional as F

from xrl.ops import chunks


def mask_centres(height: int, width: int, stride: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Row and column indices ``0, stride, 2*stride, ...`` of the perturbation centres."""
    return torch.arange(0, height, stride), torch.arange(0, width, stride)


@functools.lru_cache(maxsize=32)
def perturbation_masks(
    height: int,
    width: int,
    stride: int,
    radius: float,
    truncate: float = 4.0,
    device: torch.device | str = "cpu",
) -> torch.Tensor:
    """Gaussian masks ``(N, H, W)`` in ``[0, 1]``, one per centre on a ``stride`` grid.

    Mask ``n = r * W' + c`` (``W' = len(range(0, width, stride))``) is
    ``exp(-|p - (r*stride, c*stride)|^2 / (2 radius^2))``, 1 at its centre and exactly 0 beyond
    ``truncate * radius`` pixels, as in Greydanus et al. 2018 (a Gaussian of std ``radius``;
    they blur a one-pixel disk, which is the same shape up to a fraction of a pixel).
    Cached: the same arguments return the same tensor object. Memory is ``N * H * W`` floats
    (8 MB for 84x84 at stride 5, 200 MB at stride 1).
    """
    if int(stride) < 1:
        raise ValueError(f"stride must be a positive integer, got {stride!r}")
    if not radius > 0:
        raise ValueError(f"radius must be positive, got {radius!r}")
    with torch.inference_mode(False):  # cached: must stay usable by autograd later
        return _gaussian_masks(height, width, stride, radius, truncate).to(device)


def _gaussian_masks(height: int, width: int, stride: int, radius: float, truncate: float) -> torch.Tensor:
    rows, cols = mask_centres(height, width, stride)
    y = torch.arange(height, dtype=torch.float32)
    x = torch.arange(width, dtype=torch.float32)
    dy2 = (y[None, :] - rows[:, None]) ** 2  # (H', H)
    dx2 = (x[None, :] - cols[:, None]) ** 2  # (W', W)
    d2 = dy2[:, None, :, None] + dx2[None, :, None, :]  # (H', W', H, W)
    masks = torch.exp(-d2 / (2.0 * radius**2))
    masks = masks.masked_fill(d2 > (truncate * radius) ** 2, 0.0)
    return masks.reshape(-1, height, width)


def upsample_grid(coarse: torch.Tensor, height: int, width: int, stride: int) -> torch.Tensor:
    """Bilinear upsampling of scores on the ``stride`` grid ``(B, K, H', W')`` to ``(B, K, H, W)``.

    The value at grid point ``(r, c)`` lands exactly on pixel ``(r*stride, c*stride)``; pixels
    between grid points are interpolated, pixels past the last grid row/column repeat it.
    """
    rows, cols = (coarse.shape[-2] - 1) * stride + 1, (coarse.shape[-1] - 1) * stride + 1
    fine = F.interpolate(coarse, size=(rows, cols), mode="bilinear", align_corners=True)
    return F.pad(fine, (0, width - cols, 0, height - rows), mode="replicate")


def perturb(states: torch.Tensor, blurred: torch.Tensor, masks: torch.Tensor, rows: slice) -> torch.Tensor:
    """Rows ``rows`` of the state-major batch ``(B * (N + 1), C, H, W)``, built without it.

    Row ``b * (N + 1)`` is ``states[b]``; row ``b * (N + 1) + 1 + m`` is
    ``states[b] * (1 - masks[m]) + blurred[b] * masks[m]``. Each state's run of masks is written
    by one broadcast ``lerp`` straight into the output chunk.
    """
    n = masks.shape[0] + 1
    out = states.new_empty((rows.stop - rows.start, *states.shape[1:]))
    start = rows.start
    while start < rows.stop:
        b, m = divmod(start, n)
        stop = min(rows.stop, (b + 1) * n)
        if m == 0:  # the unperturbed state
            out[start - rows.start] = states[b]
            start, m = start + 1, 1
        if start < stop:
            weight = masks[m - 1 : m - 1 + stop - start, None]  # (n_b, 1, H, W), same on every channel
            torch.lerp(states[b], blurred[b], weight, out=out[start - rows.start : stop - rows.start])
        start = stop
    return out


def perturbed_scores(
    model: torch.nn.Module, states: torch.Tensor, fill: torch.Tensor, masks: torch.Tensor, batch_size: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Scores ``(B, K)`` of the states and ``(B, N, K)`` of ``s * (1 - M_n) + fill * M_n`` for
    every mask ``M_n`` of ``masks (N, H, W)``; ``fill`` is ``(B, C, H, W)`` (may be expanded).

    The batch is state-major, each state followed by its N perturbations (its unperturbed scores
    come from the same pass), built chunk by chunk (:func:`perturb`)
    and run through the model in chunks of ``batch_size`` rows under ``torch.inference_mode()``.
    """
    b, n = states.shape[0], masks.shape[0] + 1
    with torch.inference_mode():
        parts = [model(perturb(states, fill, masks, rows)) for rows in chunks(b * n, batch_size)]
    scores = torch.cat(parts).view(b, n, -1)  # outside inference mode: an ordinary tensor
    return scores[:, 0], scores[:, 1:]
