"""Guided backpropagation (Springenberg et al. 2015, "Striving for Simplicity: The All
Convolutional Net").

The gradient of the target ``f(s)`` with respect to the state, except that every ReLU passes
back only positive gradients where its input was positive: ``R_in = 1[x > 0] * max(R_out, 0)``.
The saliency is the absolute guided gradient reduced over channels (stacked frames included),
``reduce="max"`` (default, as for the vanilla gradient), ``"sum"`` or ``"mean"``.

Wraps Captum's ``GuidedBackprop``, which hooks the backward of every ``nn.ReLU`` *module* of the
model for the duration of one call (SB3 and xrl networks use ``nn.ReLU`` modules) and removes the
hooks afterwards, also when the call raises. ReLUs applied as functions (``torch.relu``,
``F.relu``, ``Tensor.relu``) are not modified by Captum: they are counted once per explainer (on a forward pass of one state)
and a ``UserWarning`` says how many were passed through as plain gradients. Other activations
(ELU, tanh, ...) are backpropagated as plain gradients, as in the paper.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn
from torch.overrides import TorchFunctionMode

from xrl.explainers.base import EXPLAINERS
from xrl.explainers.gradient import Gradient
from xrl.ops import TargetFn, chunks

RELU_FUNCTIONS = {torch.relu, torch.relu_, F.relu, F.relu_, torch.Tensor.relu, torch.Tensor.relu_}


@EXPLAINERS.register("guided_backprop")
class GuidedBackprop(Gradient):
    """Guided backprop (Springenberg et al. 2015): ReLUs pass back positive gradients; Captum.

    ``channel_gradients`` gives the signed guided gradients ``(B, C, H, W)`` before the channel
    reduction.

    Example::

        explainer = get_explainer("guided_backprop", model, reduce="max")
        saliency = explainer.explain(states)  # (B, H, W)
    """

    def _gradients(self, states: torch.Tensor, target_fn: TargetFn) -> torch.Tensor:
        from captum.attr import GuidedBackprop as CaptumGuidedBackprop  # on first use (docs/architecture.md)

        index = target_fn.index  # (B,) when targets are action indices, None for a callable
        parts = []
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Setting backward hooks on ReLU")  # once per call
            for rows in chunks(states.shape[0], self.batch_size):
                x = states[rows].detach().clone().requires_grad_()
                if index is not None:
                    grads = CaptumGuidedBackprop(self.model).attribute(x, target=index[rows])
                else:  # Captum hooks the ReLUs of an nn.Module: wrap the callable target in one
                    grads = CaptumGuidedBackprop(_Score(self.model, target_fn)).attribute(x)
                parts.append(grads)
        # Counting needs a hook on every torch call (~1.5x slower), so it is done once per
        # explainer, on a forward pass of one state.
        if getattr(self, "_functional_relus", None) is None:
            self._functional_relus = _functional_relus(self.model, states[:1])
        if self._functional_relus:
            warnings.warn(
                f"guided_backprop: the model applied ReLU as a function (torch.relu, F.relu or "
                f"Tensor.relu) {self._functional_relus} time(s) per forward pass; Captum's guided backprop only modifies "
                "nn.ReLU modules, so these were backpropagated as plain gradients. Use nn.ReLU "
                "modules for exact guided backprop.",
                stacklevel=4,
            )
        return torch.cat(parts)


def _functional_relus(model: nn.Module, state: torch.Tensor) -> int:
    """ReLUs applied as functions, not by ``nn.ReLU`` modules, in one forward pass of ``state``."""
    relus = _ReLUCount(model)
    with torch.enable_grad(), relus:
        model(state.detach().clone().requires_grad_())
    return relus.functional


class _Score(nn.Module):
    """``states -> target_fn(model(states))`` as a module, so Captum can find the model's ReLUs."""

    def __init__(self, model: nn.Module, target_fn: Callable) -> None:
        super().__init__()
        self.model = model
        self.target_fn = target_fn

    def forward(self, states: torch.Tensor) -> torch.Tensor:
        return self.target_fn(self.model(states))


class _ReLUCount(TorchFunctionMode):
    """While active, counts ReLUs applied to tensors in the autograd graph, however called, and
    those run by ``nn.ReLU`` modules; ``functional`` is the difference (summed over uses).

    Tensors that do not require grad are skipped: Captum's own backward hooks call ``F.relu``
    on gradients, and ReLUs outside the graph do not change any gradient.
    """

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.relu_modules = [m for m in model.modules() if isinstance(m, nn.ReLU)]
        self.calls = self.module_calls = 0
        self.handles: list = []

    @property
    def functional(self) -> int:
        return self.calls - self.module_calls

    def __enter__(self):
        self.handles = [m.register_forward_pre_hook(self._count_module) for m in self.relu_modules]
        try:
            return super().__enter__()
        except BaseException:
            self._remove()
            raise

    def __exit__(self, *exc) -> None:
        try:
            super().__exit__(*exc)
        finally:
            self._remove()

    def _remove(self) -> None:
        for handle in self.handles:
            handle.remove()
        self.handles = []

    def _count_module(self, module: nn.Module, inputs: tuple) -> None:
        self.module_calls += int(bool(inputs) and isinstance(inputs[0], torch.Tensor) and inputs[0].requires_grad)

    def __torch_function__(self, func, types, args=(), kwargs=None):
        if func in RELU_FUNCTIONS and args and isinstance(args[0], torch.Tensor) and args[0].requires_grad:
            self.calls += 1
        return func(*args, **(kwargs or {}))
