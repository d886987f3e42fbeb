"""``xrl watch``: play one seeded episode and film the agent with its saliency maps.

Every frame of the video shows the game frame, one overlay per method (the saliency of the
action taken), the action and the action probabilities; with ``counterfactual=True`` also the
frame with the most salient region of the first method removed (blurred by xrl's Gaussian blur,
std 5 px, 31 taps, borders replicated: the insertion substrate of ``protocol="xrl"``, not RISE's
zero-padded one, which would darken the frame's borders) and the action the agent would take then. Each method's time per
map is measured on the episode, so the result says how many frames per second it sustains.
A recurrent agent acts, and every map and counterfactual of a step is computed, under its
recurrent state carried over from the episode's earlier steps (docs/agents.md#recurrent-agents).

Example::

    result = watch(xrl.load_agent("red-fetch-green"), methods={"gradient": {}}, seed=0, out="watch")
    result.paths      # watch.mp4, watch.gif
    result.fps        # {"gradient": 600.0}: maps per second on this machine
"""

from __future__ import annotations

import os
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from xrl.agents.model import Model
from xrl.data.collect import _check_env, _resolve_env
from xrl.envs import make_env
from xrl.explainers import get_explainer
from xrl.metrics.faithfulness import Substrate
from xrl.rollout import Policy, evaluate_policy
from xrl.viz.video import panel_row, write_video


@dataclass
class WatchResult:
    paths: list[Path]
    steps: int
    episode_return: float
    actions: list[int]
    seconds_per_map: dict[str, float]
    """mean wall time of ``explain`` on one state, per method"""
    counterfactual_actions: list[int] = field(default_factory=list)

    @property
    def fps(self) -> dict[str, float]:
        """Frames per second each method sustains (its maps alone, one state at a time)."""
        return {m: (1 / s if s > 0 else float("inf")) for m, s in self.seconds_per_map.items()}


def removed_region(saliency: torch.Tensor, fraction: float) -> torch.Tensor:
    """Boolean ``(H, W)`` mask of the ``fraction`` most salient pixels (at least one; ties in
    reading order, as in the deletion protocol)."""
    h, w = saliency.shape
    k = max(1, round(fraction * h * w))
    order = torch.argsort(saliency.reshape(-1), descending=True, stable=True)
    mask = torch.zeros(h * w, dtype=torch.bool)
    mask[order[:k]] = True
    return mask.view(h, w)


@torch.inference_mode()
def _scores(model: Model, states: torch.Tensor) -> torch.Tensor:
    return model(states)[0].float()


def watch(
    model: Model,
    *,
    methods: Mapping[str, Mapping] | list[str],
    env: str | None = None,
    env_settings: Mapping | None = None,
    seed: int = 0,
    max_steps: int | None = 500,
    counterfactual: bool = False,
    fraction: float = 0.05,
    out: str | os.PathLike = "watch",
    formats: tuple[str, ...] = ("mp4", "gif"),
    fps: float = 10,
    progress: bool = True,
) -> WatchResult:
    """Play one greedy episode (reset with ``seed``) and write ``out.mp4`` / ``out.gif``.

    ``methods``: names or ``{name: settings}``; the first one defines the removed region of the
    counterfactual (its ``fraction`` most salient pixels, blurred)."""
    methods = _checked(methods, fraction, formats)
    name, settings = _resolve_env(model, env, env_settings)
    film = _Film(model, {m: get_explainer(m, model, **s) for m, s in methods.items()}, counterfactual, fraction)
    environment = make_env(name, **settings)
    try:
        _check_env(environment, model)
        with tqdm(total=max_steps, unit="frame", desc=f"watch {name}", disable=not progress) as bar:

            def frame_done(step) -> None:
                bar.update(1)

            played = evaluate_policy(
                _Filming(film, environment),
                environment,
                episodes=1,
                seed=seed,
                max_steps=max_steps,
                callback=frame_done,
            )
    finally:
        environment.close()
    t, total = played.lengths[0], played.returns[0]
    out = Path(out)
    paths = [out.with_name(f"{out.name}.{f}") for f in formats]
    for path in paths:
        write_video(film.frames, path, fps=fps)
    return WatchResult(paths, t, total, film.actions, {m: s / t for m, s in film.spent.items()}, film.cf_actions)


def _checked(methods: Mapping[str, Mapping] | list[str], fraction: float, formats: tuple[str, ...]) -> dict:
    """``methods`` as ``{name: settings}``, once the arguments are checked."""
    methods = {m: {} for m in methods} if not isinstance(methods, Mapping) else dict(methods)
    if not methods:
        raise ValueError("watch needs at least one method")
    if not 0 < fraction < 1:
        raise ValueError(f"fraction must be in (0, 1), got {fraction!r}")
    bad = [f for f in formats if f not in ("mp4", "gif")]
    if bad or not formats:
        raise ValueError(f"formats are 'mp4' and/or 'gif', got {formats!r}")
    return methods


class _Filming(Policy):
    """The greedy policy of one filmed episode: each step's frame is rendered and shot (the
    panels, the model's action) before the env steps; the first observation warms the film up."""

    def __init__(self, film: _Film, environment) -> None:
        super().__init__()
        self.film, self.environment, self.t = film, environment, 0

    def __call__(self, obs: np.ndarray) -> list[int]:
        if self.t == 0:
            self.film.warm_up(obs[0])
        action = self.film.shoot(np.array(self.environment.render(), copy=True), obs[0], self.t)
        self.t += 1
        return [action]


class _Film:
    """The video's panels, one per step (:meth:`shoot`), and what they record: the actions, the
    counterfactual actions and each method's time spent on its maps."""

    def __init__(self, model: Model, explainers: dict, counterfactual: bool, fraction: float) -> None:
        self.model, self.explainers, self.counterfactual, self.fraction = model, explainers, counterfactual, fraction
        self.first = next(iter(explainers))
        self.blur = Substrate("blur")
        self.frames: list[np.ndarray] = []
        self.actions: list[int] = []
        self.cf_actions: list[int] = []
        self.spent = {m: 0.0 for m in explainers}
        shape = model.recurrent_shape
        #: a recurrent agent's state at the next step (zero at the episode's start)
        self.memory = None if shape is None else torch.zeros(shape, device=model.device)

    def warm_up(self, obs) -> None:
        """One untimed map per method: lazy initialisation is not timed."""
        with self.model.recurrent(self.memory):
            for explainer in self.explainers.values():
                explainer.explain(self.model.preprocess(np.asarray(obs)))

    def shoot(self, frame: np.ndarray, obs, t: int) -> int:
        """The panel of step ``t`` (:meth:`_shoot`), under a recurrent agent's state, which then steps."""
        with self.model.recurrent(self.memory):
            action = self._shoot(frame, obs, t)
        if self.memory is not None:
            with torch.no_grad():
                self.memory = self.model.step(self.model.preprocess(np.asarray(obs)), self.memory)[1][0]
        return action

    def _shoot(self, frame: np.ndarray, obs, t: int) -> int:
        """The panel of step ``t`` (the frame, a map per method, the caption); returns the greedy action."""
        model = self.model
        states = model.preprocess(np.asarray(obs))  # (1, C, H, W)
        scores = _scores(model, states)
        probs = torch.softmax(scores, -1)
        action = int(scores.argmax())
        maps = {}
        for m, explainer in self.explainers.items():
            start = time.perf_counter()
            maps[m] = explainer.explain(states, action)[0]  # (H, W)
            self.spent[m] += time.perf_counter() - start
        names = model.action_names
        caption = [
            f"step {t}  action: {names[action]} ({probs[action]:.2f})",
            "  ".join(f"{n} {p:.2f}" for n, p in zip(names, probs.tolist())),
        ]
        extra = self._counterfactual(frame, states, maps[self.first], action, caption) if self.counterfactual else {}
        self.frames.append(panel_row(frame, maps, caption=caption, extra=extra))
        self.actions.append(action)
        return action

    def _counterfactual(
        self, frame: np.ndarray, states: torch.Tensor, saliency: torch.Tensor, action: int, caption: list[str]
    ) -> dict:
        """The frame with the first method's most salient region blurred away, as an extra panel;
        the action the agent would take then goes to the caption."""
        first, fraction, names = self.first, self.fraction, self.model.action_names
        mask = removed_region(saliency, fraction)  # (H, W)
        removed = torch.where(mask, self.blur(states), states)
        cf_probs = torch.softmax(_scores(self.model, removed), -1)
        cf = int(cf_probs.argmax())
        self.cf_actions.append(cf)
        caption.append(
            f"without the top {fraction:.0%} of {first}: {names[cf]} ({cf_probs[cf]:.2f})"
            + ("  (same action)" if cf == action else "  (action changes)")
        )
        return {f"{first} top {fraction:.0%} removed": _blank(frame, mask)}


def _blank(frame: np.ndarray, mask: torch.Tensor) -> np.ndarray:
    """The display frame with the removed region (state resolution) greyed out."""
    big = F.interpolate(mask[None, None].float(), size=frame.shape[:2], mode="nearest")[0, 0].numpy() > 0.5
    out = frame.copy()
    out[big] = (0.5 * out[big] + 64).astype(np.uint8)
    return out
