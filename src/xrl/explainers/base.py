"""The Explainer contract and the helpers every method shares (targets, guards, reduction).

``explainer = get_explainer(name, model, **settings)``; ``explainer.explain(states, targets)``
returns saliency ``(B, H, W)`` float32, detached, on the states' device, larger = more
important. ``targets`` is ``None`` (the model's argmax), an int, a ``(B,)`` integer tensor, or a
callable ``scores (B, K) -> (B,)``. Methods with one map per action also give
``explain_all(states) -> (B, K, H, W)``.
"""
from __future__ import annotations

import contextlib
from typing import Callable, Iterator, Union

import torch

from xrl.agents.model import Model
from xrl.registry import Registry

Targets = Union[None, int, torch.Tensor, Callable[[torch.Tensor], torch.Tensor]]

EXPLAINERS: Registry[type["Explainer"]] = Registry("explainer")


class Explainer:
    """Base class: subclasses implement ``_explain(states, target_fn) -> (B, H, W)``.

    ``target_fn`` maps scores ``(B, K)`` to the explained quantity ``(B,)``; it is built once per
    call from ``targets`` by :func:`target_function`, so every method supports every form.
    Subclasses with per-action maps also implement ``_explain_all(states) -> (B, K, H, W)``.
    """

    #: True when ``explain_all`` gives all K maps at the cost of one ``explain``
    per_action: bool = False
    #: False when the method needs action indices and refuses a callable ``targets`` (TypeError)
    callable_targets: bool = True

    def __new__(cls, *args, **kwargs):
        # Record the constructor's settings (all arguments but the model) so that ``with_model``
        # can build the same method for another model. ``copy`` and ``pickle`` call ``__new__``
        # without arguments and then restore ``__dict__``, so they keep the recorded settings.
        self = super().__new__(cls)
        self._settings = (args[1:], {k: v for k, v in kwargs.items() if k != "model"})
        return self

    def __init__(self, model: Model, *, batch_size: int = 256, seed: int = 0) -> None:
        if not isinstance(model, Model):
            raise TypeError(
                f"explainers take an xrl Model, got {type(model).__name__}; wrap it with xrl.as_model"
            )
        if int(batch_size) < 1:
            raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
        self.model = model
        self.batch_size = int(batch_size)
        self.seed = int(seed)

    def explain(self, states: torch.Tensor, targets: Targets = None) -> torch.Tensor:
        """Saliency ``(B, H, W)`` for ``states (B, C, H, W)``."""
        self.model.check_states(states)
        with guarded(self.model, states):
            target_fn = target_function(self.model, states, targets)
            saliency = self._explain(states, target_fn)
        return _finish(saliency, states)

    def explain_all(self, states: torch.Tensor) -> torch.Tensor:
        """One saliency map per action ``(B, K, H, W)``."""
        self.model.check_states(states)
        with guarded(self.model, states):
            if type(self)._explain_all is Explainer._explain_all:
                maps = [self._explain(states, target_function(self.model, states, k))
                        for k in range(self.model.n_actions)]
                saliency = torch.stack(maps, dim=1)
            else:
                saliency = self._explain_all(states)
        return _finish(saliency, states)

    def _explain(self, states: torch.Tensor, target_fn: Callable) -> torch.Tensor:
        raise NotImplementedError

    def _explain_all(self, states: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def with_model(self, model: Model) -> "Explainer":
        """The same method with the same settings, explaining ``model`` (e.g. a randomized copy
        of the agent, for sanity checks)."""
        args, kwargs = self._settings
        return type(self)(model, *args, **kwargs)

    def generator(self, device: torch.device | str = "cpu") -> torch.Generator:
        """A fresh generator seeded with ``seed``: same seed, same maps."""
        return torch.Generator(device=device).manual_seed(self.seed)

    def __repr__(self) -> str:
        settings = {k: v for k, v in vars(self).items() if k not in ("model", "_settings")}
        return f"{type(self).__name__}({', '.join(f'{k}={v!r}' for k, v in settings.items())})"


def target_function(model: Model, states: torch.Tensor, targets: Targets) -> Callable:
    """Turn any accepted form of ``targets`` into ``scores (B, K) -> (B,)``.

    Indices are validated (integer, in ``[0, K)``, one per state); ``None`` is resolved to the
    model's argmax on ``states`` once, so perturbed states keep explaining the same action.
    """
    n, k = states.shape[0], model.n_actions
    if callable(targets) and not isinstance(targets, torch.Tensor):
        return _checked_callable(targets, n)
    if targets is None:
        with torch.no_grad():
            index = model(states).argmax(-1)
    elif isinstance(targets, bool):
        raise TypeError("targets must be an int, a (B,) integer tensor, a callable or None; got a bool")
    elif isinstance(targets, int):
        index = torch.full((n,), targets, dtype=torch.long, device=states.device)
    elif isinstance(targets, torch.Tensor):
        if targets.dtype == torch.bool or targets.is_floating_point() or targets.is_complex():
            raise TypeError(f"target indices must be an integer tensor, got {targets.dtype}")
        if targets.dim() == 0:
            targets = targets.expand(n)
        if tuple(targets.shape) != (n,):
            raise ValueError(f"targets must have shape ({n},) (one per state), got {tuple(targets.shape)}")
        index = targets.to(device=states.device, dtype=torch.long)
    else:
        raise TypeError(
            f"targets must be None, an int, a (B,) integer tensor or a callable, got {type(targets).__name__}"
        )
    if ((index < 0) | (index >= k)).any():
        raise ValueError(f"target indices must be in [0, {k}) for a model with {k} actions, got {index.tolist()}")

    def pick(scores: torch.Tensor) -> torch.Tensor:
        # scores may hold several copies of each state (perturbations): repeat the indices
        reps = scores.shape[0] // n
        return scores.gather(1, index.repeat_interleave(reps).unsqueeze(1)).squeeze(1)

    pick.index = index  # type: ignore[attr-defined]
    return pick


def _checked_callable(fn: Callable, n: int) -> Callable:
    def call(scores: torch.Tensor) -> torch.Tensor:
        out = fn(scores)
        if not isinstance(out, torch.Tensor) or tuple(out.shape) != (scores.shape[0],):
            raise ValueError(
                f"a targets callable must map scores (B, K) to a (B,) tensor, got "
                f"{tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__}"
            )
        return out

    return call


@contextlib.contextmanager
def guarded(model: Model, states: torch.Tensor) -> Iterator[None]:
    """Run an explanation without side effects: eval mode, parameter grads and the inputs
    are as they were afterwards, also when the method raises."""
    modes = {m: m.training for m in model.modules()}
    grads = {p: p.grad for p in model.parameters()}
    requires = {p: p.requires_grad for p in model.parameters()}
    states_grad, states_req = states.grad, states.requires_grad
    try:
        if any(modes.values()):
            model.eval()
        yield
    finally:
        for m, mode in modes.items():
            if m.training != mode:  # nn.Module.__setattr__ is slow: set only what changed
                m.training = mode
        for p, g in grads.items():
            p.grad = g
            p.requires_grad_(requires[p])
        if states.is_leaf:
            states.grad = states_grad
            states.requires_grad_(states_req)


def reduce_channels(saliency: torch.Tensor, how: str = "max") -> torch.Tensor:
    """``(B, C, H, W) -> (B, H, W)`` over channels (and stacked frames) of absolute values.

    ``max`` follows Simonyan et al. 2013; ``sum`` and ``mean`` are the alternatives.
    """
    if how == "max":
        return saliency.abs().amax(dim=1)
    if how == "sum":
        return saliency.abs().sum(dim=1)
    if how == "mean":
        return saliency.abs().mean(dim=1)
    raise ValueError(f"channel reduction must be 'max', 'sum' or 'mean', got {how!r}")


def chunks(n: int, size: int) -> Iterator[slice]:
    """Slices of ``range(n)`` of at most ``size`` items: every expansion is chunked by this."""
    for start in range(0, n, size):
        yield slice(start, min(start + size, n))


def _finish(saliency: torch.Tensor, states: torch.Tensor) -> torch.Tensor:
    return saliency.detach().to(device=states.device, dtype=torch.float32).contiguous()
