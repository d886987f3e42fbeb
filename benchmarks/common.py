"""Shared by the benchmarks: the Nature-CNN policy they time, interleaved timing, atomic results."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import gymnasium as gym
from torch import nn

import xrl
from xrl.agents.nets import ARCHS

RESULTS = Path(__file__).parent / "results"


def nature_cnn_policy(n_actions: int = 6, arch: str = "nature_cnn") -> xrl.Model:
    """The Nature CNN trunk (conv 32 8x8 s4, 64 4x4 s2, 64 3x3 s1, fc 512) + a linear policy head
    (``arch``: another registered Atari architecture, e.g. ``sparse_fls`` for attention)."""
    arch = ARCHS.get(arch)
    space = gym.spaces.Box(0, 255, (4, 84, 84), dtype="uint8")
    trunk = arch.features_extractor_class(space, **arch.features_extractor_kwargs)
    return xrl.as_model(nn.Sequential(trunk, nn.Linear(512, n_actions)), input_shape=(4, 84, 84))


def interleaved(candidates: dict, repeats: int, slow: tuple = ()) -> dict[str, list[float]]:
    """Wall times of each ``candidates[name]()``, run round-robin after one warm-up each, so
    load from other processes hits every candidate alike (``slow`` ones run at most twice)."""
    times: dict[str, list[float]] = {name: [] for name in candidates}
    for fn in candidates.values():
        fn()
    for r in range(repeats):
        for name, fn in candidates.items():
            if name in slow and r >= 2:
                continue
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    return times


def write_result(name: str, result: dict) -> Path:
    """``benchmarks/results/<name>.json``, atomically."""
    path = RESULTS / f"{name}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".json.partial")
    tmp.write_text(json.dumps(result, indent=2) + "\n")
    os.replace(tmp, path)
    return path


def write_with_table(out: str | os.PathLike, result: dict, lines: list[str]) -> None:
    """``result`` as JSON at ``out`` and ``lines`` (a Markdown table) beside it as ``.md``,
    both atomically, and the table printed."""
    from xrl.files import atomic_path, write_json

    out = Path(out)
    write_json(out, result)
    with atomic_path(out.with_suffix(".md")) as tmp:
        tmp.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
