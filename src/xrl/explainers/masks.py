"""Perturbation masks shared by the perturbation methods (the Gaussian blur they use is
:func:`xrl.ops.gaussian_blur`).

Everything here is plain torch on the caller's device. Masks are built once per
``(H, W, stride, radius, truncate, device)`` and cached: callers must not modify them in place.
"""
from __future__ import annotations

import functools

import torch
import torch.nn.functional as F



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
