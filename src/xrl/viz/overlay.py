"""Saliency pictures: heat-map overlays on display frames and side-by-side grids.

The only module that imports matplotlib (with the non-interactive Agg backend).
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from xrl.files import atomic_path  # noqa: E402


def normalize(saliency: np.ndarray | torch.Tensor) -> np.ndarray:
    """One map ``(H, W)`` rescaled to [0, 1] by its min and max (a constant map becomes 0)."""
    s = torch.as_tensor(saliency, dtype=torch.float32).to("cpu")
    span = s.max() - s.min()
    return ((s - s.min()) / span if span > 0 else torch.zeros_like(s)).numpy()


def resize(saliency: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Bilinear resize of ``(H, W)`` to ``size = (h, w)`` (state resolution → display frame)."""
    s = torch.as_tensor(saliency, dtype=torch.float32).to("cpu")[None, None]
    return F.interpolate(s, size=size, mode="bilinear", align_corners=False)[0, 0].numpy()


def overlay(
    frame: np.ndarray,
    saliency: np.ndarray | torch.Tensor,
    *,
    alpha: float = 0.8,
    cmap: str = "jet",
    dim: float = 0.6,
    vrange: tuple[float, float] | None = None,
) -> np.ndarray:
    """Blend the normalised map, coloured by ``cmap``, over an RGB ``frame (h, w, 3)`` uint8.

    The map is scaled to its own min and max, or to ``vrange = (lo, hi)`` (a scale shared by
    several maps; values outside are clipped). The frame is dimmed by ``dim`` so the colours
    stand out on dark games; the map's opacity grows with the square root of its value, so
    unimportant regions show the frame and weak but non-zero saliency stays visible."""
    if frame.ndim != 3 or frame.shape[2] != 3:
        raise ValueError(f"frame must be an RGB image (h, w, 3), got shape {frame.shape}")
    if vrange is None:
        scaled = normalize(saliency)
    else:
        lo, hi = float(vrange[0]), float(vrange[1])
        if not (math.isfinite(lo) and math.isfinite(hi) and hi > lo):
            raise ValueError(f"vrange must be two finite numbers lo < hi, got {vrange!r}")
        s = torch.as_tensor(saliency, dtype=torch.float32).to("cpu").numpy()
        scaled = np.clip((s - lo) / (hi - lo), 0.0, 1.0)
    weight = resize(scaled, frame.shape[:2])
    colour = plt.get_cmap(cmap)(weight)[..., :3]
    a = alpha * np.sqrt(weight)[..., None]
    out = (1 - a) * dim * (frame.astype(np.float32) / 255) + a * colour
    return (out * 255).round().clip(0, 255).astype(np.uint8)


def key_colours(n: int = 11, cmap: str = "jet") -> list[str]:
    """``n`` colours ``#rrggbb`` of ``cmap`` from 0 to 1: a colour key for overlays drawn by
    :func:`overlay` (an HTML gradient, a legend strip)."""
    rgb = plt.get_cmap(cmap)(np.linspace(0.0, 1.0, n))[:, :3]
    return ["#" + "".join(f"{round(float(c) * 255):02x}" for c in row) for row in rgb]


def key_strip(width: int, height: int, cmap: str = "jet") -> np.ndarray:
    """An RGB ``(height, width, 3)`` uint8 ramp of ``cmap`` from 0 (left) to 1 (right): the colour
    key drawn beside overlays in pictures and videos."""
    rgb = plt.get_cmap(cmap)(np.linspace(0.0, 1.0, width))[:, :3]
    return np.repeat((rgb * 255).round().astype(np.uint8)[None], height, axis=0)


def figure(rows: int, cols: int, figsize: tuple[float, float]):
    """``(fig, axes)``: a figure of ``rows x cols`` panels, ``axes`` always 2-D, for a caller that
    draws its own chart (the reproduction figures) without importing matplotlib itself;
    :func:`save_figure` writes and closes it."""
    return plt.subplots(rows, cols, figsize=figsize, squeeze=False)


def save_figure(fig, path: str | os.PathLike, title: str | None = None) -> None:
    """Title, tight layout, an atomic PNG write, and the figure closed."""
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=90)
    plt.close(fig)


def explanation_grid(
    frames: Sequence[np.ndarray] | np.ndarray,
    maps: Mapping[str, np.ndarray | torch.Tensor],
    path: str | os.PathLike,
    *,
    actions: Sequence[int] | np.ndarray | None = None,
    action_names: Sequence[str] | None = None,
    probs: np.ndarray | None = None,
    title: str | None = None,
) -> None:
    """PNG grid: one row per state, the frame then one overlay per method (column titles)."""
    n, methods = len(frames), list(maps)
    fig, axes = plt.subplots(n, 1 + len(methods), figsize=(2.2 * (1 + len(methods)), 2.4 * n), squeeze=False)
    for i in range(n):
        label = ""
        if actions is not None:
            a = int(actions[i])
            label = action_names[a] if action_names else str(a)
            if probs is not None:
                label += f" ({probs[i][a]:.2f})"
        axes[i, 0].imshow(frames[i])
        axes[i, 0].set_title(f"action: {label}" if label else "frame", fontsize=8)
        for j, method in enumerate(methods):
            axes[i, j + 1].imshow(overlay(frames[i], maps[method][i]))
            if i == 0:
                axes[i, j + 1].set_title(method, fontsize=9)
        for ax in axes[i]:
            ax.axis("off")
    save_figure(fig, path, title)


def line_panels(
    panels: Mapping[str, Mapping[str, tuple[Sequence[float], Sequence[float], Sequence[float] | None]]],
    path: str | os.PathLike,
    *,
    xlabel: str,
    ylabel: str,
    title: str | None = None,
) -> None:
    """PNG of side-by-side line plots: ``{panel: {curve: (x, y, std or None)}}``; a std draws a
    shaded band of one standard deviation (as in DIGR's Fig. 8 and 9)."""
    fig, axes = plt.subplots(1, len(panels), figsize=(3.6 * len(panels), 3.0), squeeze=False)
    for ax, (name, curves) in zip(axes[0], panels.items()):
        for label, (x, y, std) in curves.items():
            xs, ys = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
            ax.plot(xs, ys, marker="o", markersize=3, label=label)
            if std is not None:
                band = np.asarray(std, dtype=float)
                ax.fill_between(xs, ys - band, ys + band, alpha=0.2)
        ax.set_title(name, fontsize=9)
        ax.set_xlabel(xlabel, fontsize=8)
        ax.set_ylabel(ylabel, fontsize=8)
        ax.grid(alpha=0.3)
    axes[0, 0].legend(fontsize=7)
    save_figure(fig, path, title)


def attack_curves(results: Mapping[str, Mapping[str, Sequence[Mapping]]], path: str | os.PathLike) -> None:
    """Return vs eps, one panel per attack, one curve per agent: ``{agent: {attack: [rows]}}``
    as :func:`xrl.attacks.evaluate.return_under_attack` gives them."""
    attacks = list(next(iter(results.values())))
    panels = {
        a: {
            agent: ([r["eps"] for r in per[a]], [r["mean_return"] for r in per[a]], [r["std_return"] for r in per[a]])
            for agent, per in results.items()
        }
        for a in attacks
    }
    line_panels(panels, path, xlabel="eps (L-inf, state units)", ylabel="episode return")


def counterfactual_figure(
    state: torch.Tensor,
    edited: torch.Tensor,
    saliency: torch.Tensor,
    region: torch.Tensor,
    probs: torch.Tensor,
    new_probs: torch.Tensor,
    *,
    target: int,
    action_names: Sequence[str],
    path: str | os.PathLike,
    title: str | None = None,
) -> None:
    """PNG of a counterfactual (VisionMask Figure 2): the state with the target's map, the state
    with the map's most salient region replaced (outlined), and the agent's probabilities before
    and after. States ``(C, H, W)`` in [0, 1] are drawn as RGB when C is a multiple of 3 (the
    last frame of a stack), else as the last channel in grey."""

    def image(x: torch.Tensor) -> np.ndarray:
        x = x.detach().float().cpu().clamp(0, 1)
        rgb = x[-3:] if x.shape[0] % 3 == 0 else x[-1:].expand(3, -1, -1)
        return (rgb.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)

    before, after = probs.detach().cpu().numpy(), new_probs.detach().cpu().numpy()
    fig, axes = plt.subplots(1, 3, figsize=(9.0, 3.2), gridspec_kw={"width_ratios": [1, 1, 1.3]})
    axes[0].imshow(overlay(image(state), saliency.detach().cpu()))
    axes[0].set_title(
        f"map of {action_names[target]}; agent: {action_names[int(before.argmax())]} ({before.max():.2f})", fontsize=8
    )
    axes[1].imshow(image(edited))
    axes[1].contour(region.detach().cpu().numpy().astype(float), levels=[0.5], colors="white", linewidths=0.8)
    axes[1].set_title(f"region removed; agent: {action_names[int(after.argmax())]} ({after.max():.2f})", fontsize=8)
    for ax in axes[:2]:
        ax.axis("off")
    y = np.arange(len(action_names))
    axes[2].barh(y - 0.2, before, height=0.4, label="state")
    axes[2].barh(y + 0.2, after, height=0.4, label="region removed")
    axes[2].set_yticks(y, list(action_names), fontsize=8)
    axes[2].invert_yaxis()
    axes[2].set_xlim(0, 1)
    axes[2].set_xlabel("probability", fontsize=8)
    axes[2].legend(fontsize=7)
    save_figure(fig, path, title)
