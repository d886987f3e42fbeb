"""Atari-HEAD (Zhang et al. 2019/2020, "Atari-HEAD: Atari Human Eye-Tracking and Demonstration
Dataset", Zenodo record 3451402) trials, aligned with stacked agent states as in FLS section 4.3.

Published format (one ``<game>.zip`` per game): per trial (one play session) a label file
``<trial>_<subject>_<id>_<date>.txt`` and its frames ``<same stem>.tar.bz2``. The label file is a
comma-separated text file with the header ``frame_id,episode_id,score,duration(ms),
unclipped_reward,action,gaze_positions``; one row per frame; missing values are ``null``; the
gaze positions trail the row as ``x0,y0,x1,y1,...`` in screen pixels (x rightwards in [0, 160),
y downwards in [0, 210)) or ``null``. The archive holds ``<stem>/<frame_id>.png``: full-colour
210×160 screens. (An already extracted folder of PNGs works too.)

Alignment (FLS section 4.3, the authors' ``idx_for_framestack``): the agent repeats each action
for 4 frames and max-pools the last 2, and stacks 4 such images, so the state at raw frame ``t``
(``t = 0, 4, 8, ...``) is made of the 8 frames ``t, t-1, t-4, t-5, t-8, t-9, t-12, t-13`` (those
>= 0), and its fixation map is the union (sum) of those 8 frames' fixations. :meth:`Trial.states`
rebuilds the states from the PNGs with the ``v4`` preprocessing (SB3's ``AtariWrapper``: RGB
max-pool, OpenCV gray, 84×84 ``INTER_AREA``, zero-padded stack), :meth:`Trial.fixations` gives
the fixation counts at screen resolution (210×160, the paper's) or any other size.

Example::

    trial = load_trial("breakout/100_RZ_3592991_Aug-24-11-44-38.txt")   # frames: the .tar.bz2 beside it
    states = model.preprocess(trial.states())                            # (S, 4, 84, 84)
    saliency = xrl.get_explainer("attention", model).explain(states)      # (S, 84, 84)
    fixations = torch.as_tensor(trial.fixations())                       # (S, 210, 160) counts
    nss = xrl.get_metric("nss")(states=states, saliency=saliency, labels=fixations)
"""

from __future__ import annotations

import io
import os
import tarfile
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

HEADER = ["frame_id", "episode_id", "score", "duration(ms)", "unclipped_reward", "action", "gaze_positions"]
SCREEN = (210, 160)  # (height, width) of an Atari screen


@dataclass
class Trial:
    """One Atari-HEAD trial: per-frame labels and gaze, frames read on demand from ``frames_path``."""

    frame_ids: list[str]
    episode_ids: list[int | None]
    scores: list[int | None]
    durations_ms: list[int | None]
    rewards: list[int | None]
    actions: list[int | None]
    gaze: list[np.ndarray]  # per frame (n_i, 2) float (x, y) screen pixels
    frames_path: Path | None = None
    _frames: np.ndarray | None = field(default=None, repr=False)

    def __len__(self) -> int:
        return len(self.frame_ids)

    def frames(self) -> np.ndarray:
        """The screens ``(N, 210, 160, 3)`` uint8 RGB, in label-file order."""
        if self._frames is None:
            if self.frames_path is None:
                raise ValueError("this trial has no frames (load_trial(..., frames=PATH) names the .tar.bz2)")
            self._frames = read_frames(self.frames_path, self.frame_ids)
        return self._frames

    def state_frames(self, frame_skip: int = 4, frame_stack: int = 4) -> list[list[int]]:
        """For each state (at raw frames ``0, frame_skip, 2 * frame_skip, ...``) the raw frame
        indices behind it, oldest first (the last 2 frames of each of ``frame_stack`` skips)."""
        if frame_skip < 2 or frame_stack < 1:
            raise ValueError(f"frame_skip must be >= 2 and frame_stack >= 1, got {frame_skip}, {frame_stack}")
        return [
            [
                t - g * frame_skip - d
                for g in reversed(range(frame_stack))
                for d in (1, 0)
                if t - g * frame_skip - d >= 0
            ]
            for t in range(0, len(self), frame_skip)
        ]

    def fixations(self, size: tuple[int, int] = SCREEN, frame_skip: int = 4, frame_stack: int = 4) -> np.ndarray:
        """Fixation counts ``(S, H, W)`` int16 per state: the fixations of its raw frames, at
        ``size`` (default the 210×160 screen; positions scaled to other sizes; a point counts in the
        pixel that holds it)."""
        return np.stack(
            [
                fixation_map(np.concatenate([self.gaze[i] for i in frames]), size)
                for frames in self.state_frames(frame_skip, frame_stack)
            ]
        )

    def states(self, frame_skip: int = 4, frame_stack: int = 4, size: int = 84) -> np.ndarray:
        """Agent states ``(S, frame_stack, size, size)`` uint8 rebuilt from the screens like the
        ``v4`` Atari preprocessing: per skip, the max of its last 2 RGB frames, gray, resized
        (``INTER_AREA``); stacks padded with zeros before the first frame."""
        screens = self.frames()
        out = np.zeros((len(range(0, len(self), frame_skip)), frame_stack, size, size), dtype=np.uint8)
        for s, t in enumerate(range(0, len(self), frame_skip)):
            for g in range(frame_stack):
                last = t - (frame_stack - 1 - g) * frame_skip
                if last < 0:
                    continue  # zero padding, as SB3's VecFrameStack at reset
                pooled = screens[max(last - 1, 0) : last + 1].max(0)
                gray = cv2.cvtColor(pooled, cv2.COLOR_RGB2GRAY)
                out[s, g] = cv2.resize(gray, (size, size), interpolation=cv2.INTER_AREA)
        return out


def fixation_map(points: np.ndarray, size: tuple[int, int] = SCREEN) -> np.ndarray:
    """Counts ``(H, W)`` int16 of gaze ``points (n, 2)`` (x, y screen pixels) at ``size``;
    points outside the screen are dropped."""
    h, w = size
    out = np.zeros((h, w), dtype=np.int16)
    if len(points):
        rows = np.floor(points[:, 1] * h / SCREEN[0]).astype(int)  # the pixel holding the point
        cols = np.floor(points[:, 0] * w / SCREEN[1]).astype(int)
        inside = (rows >= 0) & (rows < h) & (cols >= 0) & (cols < w)
        np.add.at(out, (rows[inside], cols[inside]), 1)
    return out


def load_trial(labels: str | os.PathLike, frames: str | os.PathLike | None = None) -> Trial:
    """Read a trial's label file; ``frames`` = its ``.tar.bz2`` (or extracted folder), by default
    the archive or folder with the same stem beside the label file (``None`` if neither exists).
    The frames must match the label file's frame ids one to one (checked when first read)."""
    labels = Path(labels)
    trial = read_labels(labels)
    if frames is None:
        stem = labels.with_suffix("")
        frames = next((p for p in (Path(f"{stem}.tar.bz2"), stem) if p.exists()), None)
    trial.frames_path = Path(frames) if frames is not None else None
    return trial


def read_labels(path: str | os.PathLike) -> Trial:
    """Parse an Atari-HEAD label file (format in the module docstring)."""
    path = Path(path)
    lines = path.read_text().splitlines()
    if not lines or lines[0].strip().split(",") != HEADER:
        raise ValueError(
            f"{path}: not an Atari-HEAD label file: the first line must be {','.join(HEADER)!r}, "
            f"got {lines[0].strip()[:100] if lines else '(empty file)'!r}"
        )
    columns: dict[str, list] = {k: [] for k in ("ids", "episodes", "scores", "durations", "rewards", "actions", "gaze")}
    for number, line in enumerate(lines[1:], start=2):
        if not line.strip():
            continue
        cells = [c.strip() for c in line.split(",")]
        if len(cells) < len(HEADER):
            raise ValueError(
                f"{path}:{number}: expected {len(HEADER)} or more fields ({','.join(HEADER)}), got {len(cells)}"
            )
        try:
            values = [None if c == "null" else int(float(c)) for c in cells[1:6]]
            gaze = [] if cells[6:] == ["null"] else [float(c) for c in cells[6:]]
        except ValueError as err:
            raise ValueError(f"{path}:{number}: {err}") from None
        if len(gaze) % 2:
            raise ValueError(f"{path}:{number}: gaze positions come as x,y pairs; got {len(gaze)} numbers")
        for key, value in zip(("episodes", "scores", "durations", "rewards", "actions"), values):
            columns[key].append(value)
        columns["ids"].append(cells[0])
        columns["gaze"].append(np.asarray(gaze, dtype=np.float64).reshape(-1, 2))
    if len(set(columns["ids"])) != len(columns["ids"]):
        seen = set()
        dup = next(i for i in columns["ids"] if i in seen or seen.add(i))  # type: ignore[func-returns-value]
        raise ValueError(f"{path}: frame id {dup!r} appears twice")
    return Trial(
        columns["ids"],
        columns["episodes"],
        columns["scores"],
        columns["durations"],
        columns["rewards"],
        columns["actions"],
        columns["gaze"],
    )


def read_frames(path: str | os.PathLike, frame_ids: list[str]) -> np.ndarray:
    """Screens ``(N, 210, 160, 3)`` uint8 for ``frame_ids`` from a trial's archive or folder of
    ``<frame_id>.png``; refuses frames that do not match the ids one to one, naming the first."""
    path = Path(path)
    if path.is_dir():
        files = {p.stem: p for p in path.rglob("*.png")}
        _check_match(path, frame_ids, files)
        return _decode(path, frame_ids, lambda name: files[name].read_bytes())
    if not (path.is_file() and tarfile.is_tarfile(path)):
        raise ValueError(f"{path}: expected a trial's .tar.bz2 of PNG frames or a folder of them")
    with tarfile.open(path) as tar:
        members = {Path(m.name).stem: m for m in tar.getmembers() if m.isfile() and m.name.endswith(".png")}
        _check_match(path, frame_ids, members)
        return _decode(path, frame_ids, lambda name: tar.extractfile(members[name]).read())  # type: ignore[union-attr]


def _check_match(path: Path, frame_ids: list[str], files: dict) -> None:
    missing = [i for i in frame_ids if i not in files]
    extra = sorted(set(files) - set(frame_ids), key=_frame_number)
    if missing or extra:
        first = (
            f"frame id {missing[0]!r} (row {frame_ids.index(missing[0]) + 1}) has no PNG"
            if missing
            else f"{extra[0]}.png is not in the label file"
        )
        raise ValueError(
            f"{path} does not match the label file ({len(frame_ids)} frame ids, {len(files)} PNGs): {first}"
        )


def _decode(path: Path, frame_ids: list[str], read) -> np.ndarray:
    out = np.zeros((len(frame_ids), *SCREEN, 3), dtype=np.uint8)
    for k, name in enumerate(frame_ids):
        image = np.asarray(Image.open(io.BytesIO(read(name))).convert("RGB"))
        if image.shape != (*SCREEN, 3):
            raise ValueError(f"{path}: {name}.png is {image.shape[1]}×{image.shape[0]}, expected 160×210")
        out[k] = image
    return out


def _frame_number(frame_id: str) -> tuple:
    tail = frame_id.rsplit("_", 1)[-1]
    return (0, int(tail), frame_id) if tail.isdigit() else (1, 0, frame_id)
