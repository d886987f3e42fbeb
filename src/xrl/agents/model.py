"""The Model contract: what every explainer and metric explains.

A :class:`Model` maps float32 states ``(B, C, H, W)`` to scores ``(B, K)`` (policy logits,
Q-values or class logits) and knows about itself: action names, input shape, how raw env
observations become its input, an optional value head and its conv layers.

States are in the space the network consumes: uint8 observations divided by 255, channels
first, frames stacked along channels (oldest first). A model that declares its ``input_range``
(every zoo agent and classifier: ``(0, 1)``) refuses states on the wrong scale, e.g. raw 0-255 pixels.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import numpy as np
import torch
from torch import nn

from xrl.artifacts import fingerprint as _fingerprint

SCORE_KINDS = ("logits", "q_values", "class_logits")


class Model(nn.Module):
    """Wrap ``net: (B, C, H, W) float -> (B, K)`` with the metadata explainers need.

    Example::

        model = Model(nn.Sequential(nn.Flatten(), nn.Linear(12, 3)), input_shape=(3, 2, 2))
        scores = model(torch.rand(5, 3, 2, 2))   # (5, 3)
    """

    net: nn.Module
    value_net: nn.Module | None
    input_shape: tuple[int, ...]
    action_names: list[str]
    score_kind: str
    frame_stack: int
    obs_scale: float
    input_range: tuple[float, float] | None
    info: dict[str, Any]

    def __init__(
        self,
        net: nn.Module,
        *,
        input_shape: Sequence[int],
        action_names: Sequence[str] | None = None,
        n_actions: int | None = None,
        score_kind: str = "logits",
        value_net: nn.Module | None = None,
        frame_stack: int = 1,
        obs_scale: float = 255.0,
        input_range: tuple[float, float] | None = None,
        info: dict[str, Any] | None = None,
    ) -> None:
        super().__init__()
        if len(input_shape) != 3:
            raise ValueError(f"input_shape must be (C, H, W), got {tuple(input_shape)}")
        if not all(isinstance(s, (int, np.integer)) and not isinstance(s, bool) and s >= 1 for s in input_shape):
            raise ValueError(f"input_shape must be (C, H, W) of positive integers, got {tuple(input_shape)}")
        if score_kind not in SCORE_KINDS:
            raise ValueError(f"score_kind must be one of {SCORE_KINDS}, got {score_kind!r}")
        self.net = net
        self.value_net = value_net
        self.input_shape = tuple(int(s) for s in input_shape)
        k = self._probe_outputs(net)
        if n_actions is not None and int(n_actions) != k:
            raise ValueError(f"n_actions={n_actions} but the model returns {k} scores per state")
        if action_names is None:
            action_names = [str(i) for i in range(k)]
        if len(action_names) != k:
            raise ValueError(f"{len(action_names)} action_names given but the model returns (B, K) scores with K = {k}")
        self.action_names = [str(a) for a in action_names]
        self.score_kind = score_kind
        self.frame_stack = int(frame_stack)
        self.obs_scale = float(obs_scale)
        self.input_range = _valid_range(input_range)
        self.info = dict(info or {})
        self.eval()

    def _probe_outputs(self, net: nn.Module) -> int:
        """Run a batch of two zero states through ``net``; return K or say what was expected."""
        expected = f"(B, {', '.join(map(str, self.input_shape))}) float states to (B, K) scores"
        was = net.training
        try:
            net.eval()
            with torch.no_grad():
                out = net(torch.zeros(2, *self.input_shape))
        except Exception as err:
            raise ValueError(
                f"the model must map {expected}; a batch of 2 zero states of input_shape "
                f"{self.input_shape} failed: {type(err).__name__}: {err}"
            ) from err
        finally:
            net.train(was)
        if isinstance(out, (tuple, list)):  # models returning (logits, extra)
            out = out[0]
        shape = tuple(getattr(out, "shape", ()))
        if not isinstance(out, torch.Tensor) or out.dim() != 2 or shape[0] != 2 or shape[1] < 1:
            raise ValueError(
                f"the model must map {expected}; for a batch of 2 it returned "
                f"{shape if isinstance(out, torch.Tensor) else type(out).__name__}"
            )
        return int(shape[1])

    @property
    def n_actions(self) -> int:
        return len(self.action_names)

    def fingerprint(self) -> str:
        """The hash of this model's weights (:func:`xrl.artifacts.fingerprint` of its
        ``state_dict``), computed now: what datasets, mask networks and RExL agents record about
        the model they were made with, so another model is recognised and refused.

        A model built from a file without reading its weights (``load_agent(..., weights=False)``,
        what ``xrl bench --check`` does) stands for that file: it reports the fingerprint the
        file's card records (``info["fingerprint"]``), or refuses when the card records none."""
        if self.info.get("weights") == "not loaded":
            recorded = self.info.get("fingerprint")
            if not recorded:
                raise ValueError(
                    f"{self.info.get('source', 'this model')} was built without its weights and "
                    "its card records no fingerprint; load it with its weights"
                )
            return str(recorded)
        return _fingerprint(self)

    def forward(self, states: torch.Tensor) -> torch.Tensor:
        scores = self.net(states)
        if isinstance(scores, (tuple, list)):  # models returning (logits, extra)
            scores = scores[0]
        out: torch.Tensor = scores
        return out

    def value(self, states: torch.Tensor) -> torch.Tensor:
        """State value ``(B,)``; raises if the model has no value head."""
        if self.value_net is None:
            raise ValueError("this model has no value head; pass value_net= to as_model")
        value: torch.Tensor = self.value_net(states)
        return value.reshape(-1)

    def probs(self, states: torch.Tensor) -> torch.Tensor:
        """Softmax of the scores ``(B, K)`` (for Q-values: a Boltzmann policy at temperature 1)."""
        scores: torch.Tensor = self(states)
        return torch.softmax(scores, dim=-1)

    @property
    def device(self) -> torch.device:
        """Where the weights are (the CPU for a model without parameters): procedures that read
        states from disk put them here (docs/architecture.md#devices)."""
        first = next(self.parameters(), None)
        return first.device if first is not None else torch.device("cpu")

    def preprocess(self, obs: np.ndarray | torch.Tensor) -> torch.Tensor:
        """Raw env observation(s) ``(C, H, W)`` or ``(B, C, H, W)`` uint8 -> float states."""
        x = obs if isinstance(obs, torch.Tensor) else torch.as_tensor(np.asarray(obs), device="cpu")
        if x.dim() == 3:
            x = x.unsqueeze(0)
        if tuple(x.shape[1:]) != self.input_shape:
            raise ValueError(
                f"observations of shape {tuple(x.shape[1:])} do not match the model's input "
                f"{self.input_shape} (channels first, frames stacked on channels)"
            )
        return x.to(device=self.device, dtype=torch.float32) / self.obs_scale

    @torch.inference_mode()
    def act(self, obs: np.ndarray | torch.Tensor) -> np.ndarray:
        """Greedy actions ``(B,)`` for raw observations."""
        scores: torch.Tensor = self(self.preprocess(obs))
        actions: np.ndarray = scores.argmax(-1).cpu().numpy()
        return actions

    @property
    def recurrent_shape(self) -> tuple[int, ...] | None:
        """The shape of one state's recurrent state (the packed form of its ``net``, e.g.
        ``(2 or 4, layers, hidden)`` for sb3-contrib's RecurrentPPO), or None for a feed-forward
        model (docs/agents.md#recurrent-agents)."""
        shape = getattr(self.net, "recurrent_shape", None)
        return None if shape is None else tuple(int(s) for s in shape)

    @contextmanager
    def recurrent(self, memory: np.ndarray | torch.Tensor | None) -> Iterator[None]:
        """Score every state under the recurrent state ``memory`` inside the block: one state of
        :attr:`recurrent_shape`, shared by every state of every batch (the perturbed copies of one
        state included), or ``(B, *recurrent_shape)``, one per state of batches of ``B``. The
        model's previous state is back afterwards. ``None`` leaves the model as it is."""
        if memory is None:
            yield
            return
        shape = self.recurrent_shape
        if shape is None:
            raise ValueError("this model is not recurrent (no recurrent_shape): it takes no recurrent state")
        memory = torch.as_tensor(memory, dtype=torch.float32).to(self.device)
        if tuple(memory.shape[-len(shape) :]) != shape or memory.dim() not in (len(shape), len(shape) + 1):
            raise ValueError(
                f"a recurrent state of this model has shape {shape} (or (B, {', '.join(map(str, shape))}) for B "
                f"states), got {tuple(memory.shape)}"
            )
        before = self.net.recurrent_state
        self.net.recurrent_state = memory
        try:
            yield
        finally:
            self.net.recurrent_state = before

    def step(self, states: torch.Tensor, memory: np.ndarray | torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        """A recurrent model's ``(scores (B, K), recurrent state after the step (B, *recurrent_shape))``
        for ``states`` scored under ``memory`` (``(B, *recurrent_shape)`` or one shared state;
        None: the model's current one): what a rollout carries from step to step."""
        if self.recurrent_shape is None:
            raise ValueError("this model is not recurrent (no recurrent_shape): it has no step")
        with self.recurrent(memory):
            scores, after = self.net.step(states)  # type: ignore[operator]
        return scores, after

    def conv_layers(self) -> dict[str, nn.Conv2d]:
        """Named conv layers in forward order (for CAM-style methods)."""
        return {n: m for n, m in self.net.named_modules() if isinstance(m, nn.Conv2d)}

    def check_states(self, states: torch.Tensor) -> None:
        """Raise a ``ValueError``/``TypeError`` naming what was expected."""
        if not isinstance(states, torch.Tensor):
            raise TypeError(f"states must be a torch.Tensor, got {type(states).__name__}")
        if not states.is_floating_point():
            raise TypeError(
                f"states must be float (observations / {self.obs_scale:g}), got {states.dtype}; "
                "use model.preprocess(obs) on raw uint8 observations"
            )
        weights = next((p.dtype for p in self.net.parameters() if p.is_floating_point()), None)
        if weights is not None and states.dtype != weights:
            raise TypeError(
                f"states are {states.dtype} but the model's weights are {weights}; "
                f"convert them with states.to({weights})"
            )
        if states.dim() != 4 or tuple(states.shape[1:]) != self.input_shape:
            raise ValueError(
                f"states must have shape (B, {', '.join(map(str, self.input_shape))}), got {tuple(states.shape)}"
            )
        if states.shape[0] == 0:
            raise ValueError("states is an empty batch (B == 0)")
        low, high = torch.aminmax(states)  # NaN propagates; ~30x faster than isfinite().all()
        if not (torch.isfinite(low) and torch.isfinite(high)):
            raise ValueError("states contain NaN or Inf values")
        if self.input_range is not None:
            self._check_range(float(low), float(high))
            self._check_means(states, float(low), float(high))

    def _check_means(self, states: torch.Tensor, low: float, high: float) -> None:
        """Refuse a state whose mean leaves the declared input range (negated or shifted states,
        e.g. ``-s`` for a ``[0, 1]`` model): zero-mean noise (SmoothGrad, Local Lipschitz) moves
        values beyond the range but not the mean of a state, by more than ``2 * width / sqrt(n)``
        (six standard deviations of the mean of ``n`` values of noise of up to a third of the
        width)."""
        assert self.input_range is not None
        lo, hi = self.input_range
        if lo <= low and high <= hi:
            return
        width = hi - lo
        tol = 2 * width / float(np.sqrt(states[0].numel()))
        means = states.detach().flatten(1).mean(1, dtype=torch.float64)
        off = (means < lo - tol) | (means > hi + tol)
        if bool(off.any()):
            i = int(off.nonzero()[0])
            raise ValueError(
                f"states range over [{low + 0.0:g}, {high + 0.0:g}] and state {i} has mean {float(means[i]):.4g}, "
                f"outside the range [{lo:g}, {hi:g}] the model consumes (negated or shifted states?)"
            )

    def _check_range(self, low: float, high: float) -> None:
        """Refuse states off the declared input range by more than its own width: states on the
        wrong scale (raw 0-255 pixels given to a network that consumes pixels / 255), not the small
        excursions of noise-perturbed states (SmoothGrad, Local Lipschitz), which stay legal
        (their means may not leave it: :meth:`_check_means`)."""
        if self.input_range is None:
            return
        lo, hi = self.input_range
        width = hi - lo
        if lo - width <= low and high <= hi + width:
            return
        hint = ""
        if self.obs_scale > 1 and high > hi + width and high <= self.obs_scale * hi + width:
            hint = (
                f"; did you forget to divide by {self.obs_scale:g}? "
                "model.preprocess(obs) turns raw observations into states"
            )
        raise ValueError(
            f"states range over [{low:g}, {high:g}] but the model consumes states in [{lo:g}, {hi:g}]{hint}"
        )


def _valid_range(input_range: Sequence[float] | None) -> tuple[float, float] | None:
    if input_range is None:
        return None
    try:
        lo, hi = (float(v) for v in input_range)
    except (TypeError, ValueError):
        raise ValueError(f"input_range must be (low, high) numbers, got {input_range!r}") from None
    if not (np.isfinite(lo) and np.isfinite(hi) and lo < hi):
        raise ValueError(f"input_range must be finite (low, high) with low < high, got {input_range!r}")
    return lo, hi


def as_model(
    module: nn.Module,
    *,
    input_shape: Sequence[int],
    action_names: Sequence[str] | None = None,
    score_kind: str = "logits",
    value_fn: nn.Module | Callable[[torch.Tensor], torch.Tensor] | None = None,
    **kwargs: Any,
) -> Model:
    """Wrap any ``nn.Module`` mapping ``(B, C, H, W)`` float states to ``(B, K)`` scores."""
    if isinstance(module, Model):
        return module
    if not isinstance(module, nn.Module):
        raise TypeError(f"as_model expects an nn.Module, got {type(module).__name__}")
    if value_fn is not None and not isinstance(value_fn, nn.Module):
        value_fn = _Lambda(value_fn)
    return Model(
        module, input_shape=input_shape, action_names=action_names, score_kind=score_kind, value_net=value_fn, **kwargs
    )


class _Lambda(nn.Module):
    def __init__(self, fn: Callable[[torch.Tensor], torch.Tensor]) -> None:
        super().__init__()
        self.fn = fn

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.fn(x)
        return out
