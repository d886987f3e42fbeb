"""Pictures and videos made of panels: a frame and saliency overlays side by side, with text.

The only module that imports imageio (PNG bytes for the HTML report, MP4 and GIF videos) and
draws text with OpenCV, which is fast enough to caption every frame of an episode.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import cv2
import imageio.v3 as iio
import numpy as np
import torch

from xrl.viz.overlay import key_strip, overlay


def encode_png(image: np.ndarray) -> bytes:
    """PNG bytes of an RGB ``(h, w, 3)`` uint8 image."""
    return iio.imwrite("<bytes>", np.ascontiguousarray(image), extension=".png")


def upscale(image: np.ndarray, height: int) -> np.ndarray:
    """Nearest-neighbour resize to ``height`` rows (pixel art stays sharp)."""
    scale = max(1, round(height / image.shape[0]))
    return np.repeat(np.repeat(image, scale, axis=0), scale, axis=1)


def panel_row(
    frame: np.ndarray,
    maps: Mapping[str, np.ndarray | torch.Tensor],
    *,
    caption: Sequence[str] = (),
    extra: Mapping[str, np.ndarray] | None = None,
    height: int = 192,
) -> np.ndarray:
    """One image: the frame, then one overlay per method (titled), then ``extra`` images, a
    colour key of the overlays (when there are maps) and ``caption`` lines (action,
    probabilities) below. ``(h', w', 3)`` uint8."""
    tiles = [("frame", frame)] + [(m, overlay(frame, s)) for m, s in maps.items()]
    tiles += list((extra or {}).items())
    title_h, pad = 18, 4
    cells = []
    for title, image in tiles:
        image = upscale(image, height)
        cell = np.full((image.shape[0] + title_h, image.shape[1] + pad, 3), 255, np.uint8)
        cell[title_h:, : image.shape[1]] = image
        cv2.putText(
            cell,
            title[: max(4, image.shape[1] // 8)],
            (2, 13),
            cv2.FONT_HERSHEY_SIMPLEX,
            0.42,
            (0, 0, 0),
            1,
            cv2.LINE_AA,
        )
        cells.append(cell)
    h = max(c.shape[0] for c in cells)
    cells = [np.pad(c, ((0, h - c.shape[0]), (0, 0), (0, 0)), constant_values=255) for c in cells]
    row = np.concatenate(cells, axis=1)
    if maps:  # the colour key of the overlays, with their scaling named
        key = np.full((20, row.shape[1], 3), 255, np.uint8)
        ramp = key_strip(min(120, max(8, row.shape[1] // 4)), 10)
        cv2.putText(key, "0", (4, 14), cv2.FONT_HERSHEY_SIMPLEX, 0.42, (0, 0, 0), 1, cv2.LINE_AA)
        key[5:15, 16 : 16 + ramp.shape[1]] = ramp
        cv2.putText(
            key,
            "1   colour key: each map scaled to its own min-max",
            (20 + ramp.shape[1], 14),
            cv2.FONT_HERSHEY_SIMPLEX,
            0.42,
            (0, 0, 0),
            1,
            cv2.LINE_AA,
        )
        row = np.concatenate([row, key], axis=0)
    if caption:
        text = np.full((16 * len(caption) + 6, row.shape[1], 3), 255, np.uint8)
        for i, line in enumerate(caption):
            cv2.putText(text, line, (4, 14 + 16 * i), cv2.FONT_HERSHEY_SIMPLEX, 0.42, (0, 0, 0), 1, cv2.LINE_AA)
        row = np.concatenate([row, text], axis=0)
    # even sizes: H.264 needs them
    return np.pad(row, ((0, row.shape[0] % 2), (0, row.shape[1] % 2), (0, 0)), constant_values=255)


def write_video(frames: Sequence[np.ndarray], path: str | os.PathLike, *, fps: float = 10) -> None:
    """An MP4 (H.264, yuv420p: plays in browsers; via imageio-ffmpeg's bundled ffmpeg) or a GIF,
    chosen by the suffix; written to a temporary file and renamed into place."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in (".mp4", ".gif"):
        raise ValueError(f"videos are .mp4 or .gif, got {str(path)!r}")
    if not frames:
        raise ValueError("no frames to write")
    stack = np.stack(frames)  # (T, h, w, 3)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.tmp{os.getpid()}{suffix}")  # ffmpeg picks the format by suffix
    try:
        if suffix == ".gif":
            iio.imwrite(tmp, stack, extension=".gif", duration=1000 / fps, loop=0)
        else:
            iio.imwrite(
                tmp, stack, plugin="FFMPEG", fps=fps, codec="libx264", pixelformat="yuv420p", macro_block_size=1
            )
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
