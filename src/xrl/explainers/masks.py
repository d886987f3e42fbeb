"""Perturbation masks shared by the perturbation methods (the Gaussian blur they use is
:func:`xrl.ops.gaussian_blur`).

Everything here is plain torch on the caller's device. Masks are built once per
``(H, W, stride, radius, truncate, device)`` and cached: callers must not modify them in place.
Every mask cache of the perturbation methods is :func:`byte_cache`: bounded in bytes
(:data:`MASK_CACHE_BYTES`, 512 MB shared by all of them), least recently used first out.
"""

from __future__ import annotations

import collections
import functools
import threading

import torch
import torch.nn.functional as F

from xrl.ops import positive_int

#: bytes all mask caches together may hold
MASK_CACHE_BYTES = 512 * 2**20
_CACHE: collections.OrderedDict[tuple, torch.Tensor] = collections.OrderedDict()
_LOCK = threading.Lock()


def byte_cache(fn):
    """Cache the tensors ``fn`` returns (by its name and arguments) in one LRU store shared by
    every decorated function and bounded by :data:`MASK_CACHE_BYTES`; a tensor larger than the
    bound is returned without being kept. ``fn.cache_clear()`` empties the store."""

    @functools.wraps(fn)
    def cached(*args, **kwargs):
        key = (fn.__module__, fn.__qualname__, args, tuple(sorted(kwargs.items())))
        with _LOCK:
            if key in _CACHE:
                _CACHE.move_to_end(key)
                return _CACHE[key]
        value = fn(*args, **kwargs)
        size = value.numel() * value.element_size()
        with _LOCK:
            if size <= MASK_CACHE_BYTES:
                _CACHE[key] = value
                while sum(v.numel() * v.element_size() for v in _CACHE.values()) > MASK_CACHE_BYTES:
                    _CACHE.popitem(last=False)
        return value

    cached.cache_clear = _CACHE.clear
    return cached


def cached_bytes() -> int:
    """Bytes the mask caches hold now."""
    with _LOCK:
        return sum(v.numel() * v.element_size() for v in _CACHE.values())


def mask_centres(height: int, width: int, stride: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Row and column indices ``0, stride, 2*stride, ...`` of the perturbation centres (on the CPU)."""
    return torch.arange(0, height, stride, device="cpu"), torch.arange(0, width, stride, device="cpu")


@byte_cache
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
    Cached (:func:`byte_cache`): the same arguments return the same tensor object while it is
    kept. Memory is ``N * H * W`` floats (8 MB for 84x84 at stride 5, 200 MB at stride 1).
    """
    stride = positive_int("stride", stride)
    if not radius > 0:
        raise ValueError(f"radius must be positive, got {radius!r}")
    with torch.inference_mode(False):  # cached: must stay usable by autograd later
        return _gaussian_masks(height, width, stride, radius, truncate).to(device)


def _gaussian_masks(height: int, width: int, stride: int, radius: float, truncate: float) -> torch.Tensor:
    rows, cols = mask_centres(height, width, stride)
    # built on the CPU (the same masks on every device), moved once by perturbation_masks
    y = torch.arange(height, dtype=torch.float32, device="cpu")
    x = torch.arange(width, dtype=torch.float32, device="cpu")
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
