"""Integrated gradients (Sundararajan et al. 2017, "Axiomatic Attribution for Deep Networks").

``IG_i(s) = (s_i - s'_i) * integral_0^1 d f(s' + t (s - s')) / d s_i dt`` along the straight path
from a baseline ``s'`` to the state, approximated with ``n_steps`` points. Completeness: the
attributions sum to ``f(s) - f(s')`` up to the approximation error; they are exactly zero where
``s == s'``.

Settings (paper defaults): ``baseline`` = ``0.0``, the black state (a float fills the state with
that value; a tensor broadcastable to ``(C, H, W)`` is one reference state for every state);
``n_steps`` = 50 (the paper uses 20 to 300; at least 2); ``method`` = ``"riemann"`` (the paper's right
Riemann sum, = Captum's ``"riemann_right"``), or any of Captum's ``"riemann_left"``,
``"riemann_middle"``, ``"riemann_trapezoid"``, ``"gausslegendre"``. The saliency is the absolute
attribution reduced over channels and stacked frames, ``reduce="sum"`` by default (the paper
aggregates over colour channels), or ``"max"``/``"mean"``; ``channel_gradients`` gives the signed
attributions ``(B, C, H, W)`` before the reduction.

Wraps Captum's ``IntegratedGradients``. Every forward/backward pass holds at most
``batch_size`` rows: states are taken ``batch_size`` at a time and Captum's
``internal_batch_size = batch_size`` splits their ``n_steps`` path points; the result does not
depend on ``batch_size``.
"""

from __future__ import annotations

import math
import time

import torch

from xrl.agents.model import Model
from xrl.errors import SettingTypeError
from xrl.explainers.base import EXPLAINERS
from xrl.explainers.gradient import Gradient
from xrl.limits import check_memory, check_time
from xrl.ops import TargetFn, chunks, positive_int

METHODS = ("riemann", "riemann_right", "riemann_left", "riemann_middle", "riemann_trapezoid", "gausslegendre")


@EXPLAINERS.register("integrated_gradients")
class IntegratedGradients(Gradient):
    """Integrated gradients (Sundararajan et al. 2017) from a ``baseline`` state; Captum.

    Example::

        explainer = get_explainer("integrated_gradients", model, n_steps=50, method="gausslegendre")
        saliency = explainer.explain(states)                   # (B, H, W)
        attributions = explainer.channel_gradients(states)     # (B, C, H, W), signed
    """

    def __init__(
        self,
        model: Model,
        *,
        baseline: float | torch.Tensor = 0.0,
        n_steps: int = 50,
        method: str = "riemann",
        reduce: str = "sum",
        batch_size: int = 256,
        seed: int = 0,
    ) -> None:
        super().__init__(model, reduce=reduce, batch_size=batch_size, seed=seed)
        positive_int("n_steps", n_steps, low=2)  # Captum's minimum
        if method not in METHODS:
            raise ValueError(f"method must be one of {METHODS}, got {method!r}")
        self.baseline = _checked_baseline(baseline, model.input_shape)
        self.n_steps = int(n_steps)
        self.method = method

    def _gradients(self, states: torch.Tensor, target_fn: TargetFn) -> torch.Tensor:
        from captum.attr import IntegratedGradients as CaptumIntegratedGradients  # on first use (docs/architecture.md)

        index = target_fn.index  # (B,) when targets are action indices, None for a callable
        method = "riemann_right" if self.method == "riemann" else self.method
        b = min(states.shape[0], self.batch_size)
        rows = b * max(1, self.batch_size // b)  # Captum's chunk: internal_batch_size // b path points per state
        check_memory(  # a chunk of path points, their gradients and the model's input copies (x4)
            4 * rows * states[0].numel() * states.element_size() + 8 * b * self.n_steps,
            f"integrated_gradients with batch_size={self.batch_size} on {tuple(states.shape[1:])} states",
            "lower integrated_gradients.batch_size",
        )
        parts: list[torch.Tensor] = []
        started = time.perf_counter()
        for rows_ in chunks(states.shape[0], self.batch_size):
            if len(parts) == 1:  # one chunk measured: the time of all of them
                check_time(
                    time.perf_counter() - started,
                    parts[0].shape[0] * self.n_steps,
                    states.shape[0] * self.n_steps,
                    f"integrated_gradients with n_steps={self.n_steps} on {states.shape[0]} states",
                    "lower integrated_gradients.n_steps",
                )
            x = states[rows_].detach()
            baseline = torch.as_tensor(self.baseline, dtype=x.dtype, device=x.device).expand_as(x)
            settings = dict(
                baselines=baseline, n_steps=self.n_steps, method=method, internal_batch_size=self.batch_size
            )
            with torch.device(x.device):  # Captum makes its alphas and step sizes without naming a device
                if index is not None:
                    attributions = CaptumIntegratedGradients(self.model).attribute(x, target=index[rows_], **settings)
                else:  # callable target: the forward returns (b,), which Captum accepts with target=None
                    ig = CaptumIntegratedGradients(lambda s: target_fn(self.model(s)))
                    attributions = ig.attribute(x, **settings)
            parts.append(attributions)
        return torch.cat(parts)


def _checked_baseline(baseline: float | torch.Tensor, shape: tuple) -> float | torch.Tensor:
    """A float, or a float tensor ``(C, H, W)`` (or broadcastable to it, or ``(1, C, H, W)``)."""
    if isinstance(baseline, torch.Tensor):
        if not baseline.is_floating_point():
            raise SettingTypeError(f"a baseline tensor must be float (a state), got {baseline.dtype}")
        state = baseline[0] if baseline.dim() == 4 and baseline.shape[0] == 1 else baseline
        try:
            ok = state.dim() <= 3 and torch.broadcast_shapes(state.shape, shape) == torch.Size(shape)
        except RuntimeError:
            ok = False
        if not ok:
            raise ValueError(
                f"a baseline tensor must broadcast to one state {tuple(shape)}, got shape {tuple(baseline.shape)}"
            )
        if not torch.isfinite(state).all():
            raise ValueError("the baseline contains NaN or Inf values")
        return state.detach().clone()
    if isinstance(baseline, bool) or not isinstance(baseline, (int, float)) or not math.isfinite(baseline):
        raise SettingTypeError(f"baseline must be a finite float (0.0 = black) or a state tensor, got {baseline!r}")
    return float(baseline)
