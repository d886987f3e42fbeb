"""A generated image-classification dataset with known object masks ("shapes").

No image dataset can be downloaded here, so classifiers are explained on images drawn from a seed:
each image is a cluttered background (smooth colour noise, random strokes and dots) with one
object of one of :data:`CLASSES` (circle, square, triangle, cross) drawn at a random place, size
and colour. The label is the object's class and ``masks`` are its pixels, so a saliency map of a
classifier trained on it gets a ground-truth localization score (``xrl.metrics`` ``localization``
with ``labels = object_labels(masks)``).

The dataset is a function of ``(n, size, seed)``: the same arguments give the same images on every
machine (NumPy's PCG64 generator). Train, validation and test splits use different seeds
(:data:`SPLIT_SEEDS`), so no image is shared.

A multi-label variant (:func:`make_multi_shapes`, the setting of RExL's VOC/COCO experiments):
1 to ``max_objects`` objects of *different* classes per image, non-overlapping, with multi-hot
``labels (N, C)`` and one mask per class ``(N, C, H, W)``.

Example::

    data = make_shapes(1000, size=56, seed=0)
    data.images.shape, data.labels.shape, data.masks.shape   # (1000, 3, 56, 56) uint8, (1000,), (1000, 56, 56)
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import torch

from xrl.envs.labels import IMPORTANT, UNIMPORTANT

CLASSES = ("circle", "square", "triangle", "cross")
#: offsets added to the seed of each split, so splits never share an image
SPLIT_SEEDS = {"train": 0, "val": 1_000_003, "test": 2_000_029}


class Shapes(NamedTuple):
    images: np.ndarray  # (N, 3, H, W) uint8
    labels: np.ndarray  # (N,) int64, index into CLASSES
    masks: np.ndarray  # (N, H, W) bool, the object's pixels


def shape_mask(kind: str, size: int, cy: float, cx: float, r: float) -> np.ndarray:
    """``(size, size)`` bool mask of a shape of radius ``r`` centred at ``(cy, cx)``."""
    y, x = np.mgrid[0:size, 0:size].astype(np.float64)
    dy, dx = y - cy, x - cx
    if kind == "circle":
        return dy**2 + dx**2 <= r**2
    if kind == "square":
        return (np.abs(dy) <= 0.8 * r) & (np.abs(dx) <= 0.8 * r)
    if kind == "triangle":  # apex up, base 0.8 r below the centre
        return (dy <= 0.8 * r) & (np.abs(dx) <= (dy + r) / 1.8)
    if kind == "cross":
        bar = r / 3
        return ((np.abs(dx) <= bar) & (np.abs(dy) <= r)) | ((np.abs(dy) <= bar) & (np.abs(dx) <= r))
    raise ValueError(f"shape kind must be one of {CLASSES}, got {kind!r}")


def _background(rng: np.random.Generator, size: int, clutter: int) -> np.ndarray:
    """``(size, size, 3)`` float in [0, 1]: smooth colour noise plus strokes and dots."""
    coarse = rng.uniform(0.15, 0.6, size=(4, 4, 3))
    index = np.minimum((np.arange(size) * 4) // size, 3)
    image = coarse[index][:, index] + rng.normal(0, 0.04, size=(size, size, 3))
    y, x = np.mgrid[0:size, 0:size]
    for _ in range(clutter):
        colour = rng.uniform(0, 1, size=3)
        if rng.random() < 0.5:  # a stroke: a thin line segment
            y0, x0 = rng.uniform(0, size, size=2)
            angle, length = rng.uniform(0, np.pi), rng.uniform(4, size / 3)
            t = np.clip(((y - y0) * np.sin(angle) + (x - x0) * np.cos(angle)) / length, 0, 1)
            dist = np.hypot(y - (y0 + t * length * np.sin(angle)), x - (x0 + t * length * np.cos(angle)))
            image[dist <= 0.7] = colour
        else:  # a dot
            cy, cx = rng.uniform(0, size, size=2)
            image[(y - cy) ** 2 + (x - cx) ** 2 <= rng.uniform(0.8, 2.2) ** 2] = colour
    return image


def make_shapes(n: int, *, size: int = 56, seed: int = 0, clutter: int = 14) -> Shapes:
    """``n`` images of side ``size`` (see the module docstring), balanced over the classes in a
    seeded random order."""
    if n < 1 or size < 16:
        raise ValueError(f"need n >= 1 and size >= 16, got n={n!r}, size={size!r}")
    rng = np.random.default_rng(seed)
    labels = rng.permutation(np.arange(n) % len(CLASSES)).astype(np.int64)
    images = np.empty((n, 3, size, size), dtype=np.uint8)
    masks = np.empty((n, size, size), dtype=bool)
    for i, label in enumerate(labels):
        image = _background(rng, size, clutter)
        r = rng.uniform(0.08, 0.12) * size
        cy, cx = rng.uniform(r + 1, size - r - 1, size=2)
        mask = shape_mask(CLASSES[label], size, cy, cx, r)
        colour = rng.uniform(0, 1, size=3)
        colour[rng.integers(3)] = rng.uniform(0.85, 1.0)  # bright in at least one channel
        image[mask] = colour
        images[i] = np.clip(image * 255 + 0.5, 0, 255).astype(np.uint8).transpose(2, 0, 1)
        masks[i] = mask
    return Shapes(images, labels, masks)


def split(name: str, n: int, *, size: int = 56, seed: int = 0) -> Shapes:
    """The ``train``, ``val`` or ``test`` split (seed ``seed + SPLIT_SEEDS[name]``)."""
    if name not in SPLIT_SEEDS:
        raise ValueError(f"split must be one of {tuple(SPLIT_SEEDS)}, got {name!r}")
    return make_shapes(n, size=size, seed=seed + SPLIT_SEEDS[name])


def object_labels(masks: np.ndarray | torch.Tensor) -> torch.Tensor:
    """Localization labels ``(N, H, W)`` int8 from object masks: object pixels important (1),
    the rest unimportant (0), as :mod:`xrl.envs.labels` defines them."""
    masks = torch.as_tensor(np.asarray(masks), device="cpu")
    important, unimportant = (torch.tensor(v, dtype=torch.int8, device="cpu") for v in (IMPORTANT, UNIMPORTANT))
    return torch.where(masks, important, unimportant)


class MultiShapes(NamedTuple):
    images: np.ndarray  # (N, 3, H, W) uint8
    labels: np.ndarray  # (N, C) int64 multi-hot: 1 where an object of the class is present
    masks: np.ndarray  # (N, C, H, W) bool, each class's object pixels (empty when absent)


def make_multi_shapes(n: int, *, size: int = 32, seed: int = 0, max_objects: int = 3, clutter: int = 6) -> MultiShapes:
    """``n`` multi-label images: each holds ``1..max_objects`` objects (the number drawn uniformly)
    of distinct classes drawn without replacement, placed so that they do not overlap (an object
    that finds no free place in 50 seeded tries is left out, with its label; the first always fits). A function
    of the arguments, like :func:`make_shapes`."""
    if n < 1 or size < 16 or not 1 <= max_objects <= len(CLASSES):
        raise ValueError(
            f"need n >= 1, size >= 16 and 1 <= max_objects <= {len(CLASSES)}, "
            f"got n={n!r}, size={size!r}, max_objects={max_objects!r}"
        )
    rng = np.random.default_rng(seed)
    k = len(CLASSES)
    images = np.empty((n, 3, size, size), dtype=np.uint8)
    labels = np.zeros((n, k), dtype=np.int64)
    masks = np.zeros((n, k, size, size), dtype=bool)
    for i in range(n):
        image = _background(rng, size, clutter)
        taken = np.zeros((size, size), dtype=bool)
        for c in rng.permutation(k)[: rng.integers(1, max_objects + 1)]:
            for _ in range(50):
                r = rng.uniform(0.12, 0.18) * size
                cy, cx = rng.uniform(r + 1, size - r - 1, size=2)
                mask = shape_mask(CLASSES[c], size, cy, cx, r)
                if not (mask & taken).any():  # no overlap
                    break
            else:
                continue
            colour = rng.uniform(0, 1, size=3)
            colour[rng.integers(3)] = rng.uniform(0.85, 1.0)
            image[mask] = colour
            taken |= mask
            labels[i, c], masks[i, c] = 1, mask
        images[i] = np.clip(image * 255 + 0.5, 0, 255).astype(np.uint8).transpose(2, 0, 1)
    return MultiShapes(images, labels, masks)
