"""Screen preprocessing shared by the non-ALE image envs (ViZDoom, Super Mario Bros): RGB screen →
grayscale (OpenCV ``RGB2GRAY``, the same conversion as the Atari ``v4`` protocol) → resized with
``INTER_AREA`` (as the Atari envs) → a stack of the last ``frame_stack`` screens, channels first,
oldest first (``obs[-1]`` is the current screen).

Also the object label maps of those envs: which observation pixels an object's screen pixels fall
on, with the same rules as the Atari RAM labels (:mod:`xrl.envs.atari_objects`).
"""

from __future__ import annotations

import cv2
import numpy as np

from xrl.envs.labels import EXCLUDED, IMPORTANT, UNIMPORTANT

SCREEN_SIZE = 84


def gray(screen: np.ndarray, size: tuple[int, int] = (SCREEN_SIZE, SCREEN_SIZE)) -> np.ndarray:
    """RGB ``(H, W, 3)`` uint8 → gray ``size`` = ``(h, w)`` uint8."""
    if screen.ndim != 3 or screen.shape[-1] != 3 or screen.dtype != np.uint8:
        raise ValueError(f"expected an RGB screen (H, W, 3) uint8, got {screen.shape} {screen.dtype}")
    g = cv2.cvtColor(np.ascontiguousarray(screen), cv2.COLOR_RGB2GRAY)
    return cv2.resize(g, (size[1], size[0]), interpolation=cv2.INTER_AREA)


def footprint(mask: np.ndarray, size: tuple[int, int], margin: int = 0) -> np.ndarray:
    """Observation pixels ``size`` whose ``INTER_AREA`` source area overlaps the screen ``mask``
    ``(H, W)`` bool, grown by ``margin`` observation pixels."""
    # INTER_AREA averages each output pixel's source area: positive iff that area overlaps the mask
    area = cv2.resize(mask.astype(np.float32), (size[1], size[0]), interpolation=cv2.INTER_AREA)
    out = area > 0
    if margin:
        out = cv2.dilate(out.astype(np.uint8), np.ones((2 * margin + 1,) * 2, np.uint8)).astype(bool)
    return out


def object_labels(
    important: np.ndarray, uncertain: np.ndarray, before: list[np.ndarray], size: tuple[int, int], margin: int = 1
) -> np.ndarray:
    """Label map ``size`` int8: screen pixels of the ``important`` objects (bool ``(H, W)``) on the
    newest screen are important; a ring of ``margin`` pixels around them, the ``uncertain``
    objects' pixels and the important objects of the older screens ``before`` are excluded."""
    labels = np.full(size, UNIMPORTANT, dtype=np.int8)
    for mask in [*before, uncertain]:
        labels[footprint(mask, size, margin)] = EXCLUDED
    labels[footprint(important, size, margin)] = EXCLUDED
    labels[footprint(important, size)] = IMPORTANT
    return labels
