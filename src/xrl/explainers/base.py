"""The Explainer contract and the channel reduction; the helpers every method shares (targets,
guards, chunks) are in :mod:`xrl.ops`.

``explainer = get_explainer(name, model, **settings)``; ``explainer.explain(states, targets)``
returns saliency ``(B, H, W)`` float32, detached, on the states' device, larger = more
important. ``targets`` is ``None`` (the model's argmax), an int, a ``(B,)`` integer tensor, or a
callable ``scores (B, K) -> (B,)``. Methods with one map per action also give
``explain_all(states) -> (B, K, H, W)``.
"""

from __future__ import annotations

from typing import Any, Self

import torch

from xrl.agents.model import Model
from xrl.ops import TargetFn, Targets, guarded, positive_int, target_function
from xrl.registry import Registry

EXPLAINERS: Registry[type[Explainer]] = Registry("explainer")


class Explainer:
    """Base class: subclasses implement ``_explain(states, target_fn) -> (B, H, W)``.

    ``target_fn`` (a :class:`~xrl.ops.TargetFn`) maps scores ``(B, K)`` to the explained quantity
    ``(B,)``, and its ``index`` holds the ``(B,)`` action indices (None when the caller gave a
    callable); it is built once per call from ``targets`` by :func:`target_function`, so every
    method supports every form.
    Subclasses with per-action maps also implement ``_explain_all(states) -> (B, K, H, W)``.
    """

    #: True when ``explain_all`` gives all K maps at the cost of one ``explain``
    per_action: bool = False
    #: False when the method needs action indices: :meth:`explain` refuses a callable ``targets``
    #: with a ``TypeError`` saying :attr:`callable_refusal`
    callable_targets: bool = True
    #: the constructor's arguments but the model (``with_model`` rebuilds the method with them)
    _settings: tuple[tuple[Any, ...], dict[str, Any]]

    def __new__(cls, *args: Any, **kwargs: Any) -> Self:
        # Record the constructor's settings (all arguments but the model) so that ``with_model``
        # can build the same method for another model. ``copy`` and ``pickle`` call ``__new__``
        # without arguments and then restore ``__dict__``, so they keep the recorded settings.
        self = super().__new__(cls)
        self._settings = (args[1:], {k: v for k, v in kwargs.items() if k != "model"})
        return self

    def __init__(self, model: Model, *, batch_size: int = 256, seed: int = 0) -> None:
        if not isinstance(model, Model):
            raise TypeError(f"explainers take an xrl Model, got {type(model).__name__}; wrap it with xrl.as_model")
        self.model = model
        self.batch_size = positive_int("batch_size", batch_size)
        self.seed = int(seed)

    @property
    def callable_refusal(self) -> str:
        """Why a method with ``callable_targets = False`` refuses a callable (the TypeError's message)."""
        return "this method needs action indices as targets, not a callable"

    def explain(self, states: torch.Tensor, targets: Targets = None) -> torch.Tensor:
        """Saliency ``(B, H, W)`` for ``states (B, C, H, W)``."""
        self.model.check_states(states)
        with guarded(self.model, states):
            target_fn = target_function(self.model, states, targets)
            if not self.callable_targets and target_fn.index is None:
                raise TypeError(self.callable_refusal)
            saliency = self._explain(states, target_fn)
        return _finish(saliency, states)

    def explain_all(self, states: torch.Tensor) -> torch.Tensor:
        """One saliency map per action ``(B, K, H, W)``."""
        self.model.check_states(states)
        with guarded(self.model, states):
            if type(self)._explain_all is Explainer._explain_all:
                maps = [
                    self._explain(states, target_function(self.model, states, k)) for k in range(self.model.n_actions)
                ]
                saliency = torch.stack(maps, dim=1)
            else:
                saliency = self._explain_all(states)
        return _finish(saliency, states)

    def _explain(self, states: torch.Tensor, target_fn: TargetFn) -> torch.Tensor:
        raise NotImplementedError

    def _explain_all(self, states: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def with_model(self, model: Model) -> Explainer:
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


def _finish(saliency: torch.Tensor, states: torch.Tensor) -> torch.Tensor:
    return saliency.detach().to(device=states.device, dtype=torch.float32).contiguous()
