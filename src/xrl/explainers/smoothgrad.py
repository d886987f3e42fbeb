"""SmoothGrad (Smilkov et al. 2017, "SmoothGrad: removing noise by adding noise"), a wrapper
around any gradient method.

``M(s) = 1/n sum_m M_base(s + eps_m)``, ``eps_m ~ N(0, (sigma * (max(s) - min(s)))^2)``: the
noise level ``sigma`` is a fraction of the state's own value range, as in the paper.
``squared=True`` averages ``M_base(s + eps_m)^2`` instead (the authors' code's ``magnitude=True``,
Captum's ``smoothgrad_sq``).
For bases with signed per-channel attributions (``gradient``, ``guided_backprop``,
``integrated_gradients``: the ``channel_gradients`` methods) the signed attributions are averaged
and the base's own channel reduction (``reduce``) is applied afterwards, as in the paper's
equation and Captum's ``NoiseTunnel`` (``channel_gradients`` gives the averaged signed attributions); for map-only bases
(``grad_cam``, ``normgrad``) the maps are averaged.

Settings (paper defaults): ``base`` = ``"gradient"``, any registered gradient method, with
``base_settings`` (a dict, e.g. ``{"reduce": "sum"}``); ``n_samples`` = 50; ``sigma`` = 0.15;
``squared`` = False.

Noise comes only from ``seed``: one ``(n_samples, C, H, W)`` draw of standard normal noise (on
the CPU, so every device gets the same), shared by every state of a call and scaled per state.
A state's map therefore does not depend on the other states in the batch. The ``B * n_samples``
noisy states are explained ``batch_size`` at a time; the result does not depend on
``batch_size``. By hand rather than with Captum's ``NoiseTunnel``, which draws from the global
RNG in a batch-dependent order.
"""

from __future__ import annotations

import time

import torch

from xrl.agents.model import Model
from xrl.explainers.base import EXPLAINERS, Explainer, reduce_channels
from xrl.explainers.grad_cam import GradCam
from xrl.explainers.gradient import Gradient
from xrl.explainers.normgrad import NormGrad
from xrl.limits import check_memory, check_time
from xrl.ops import TargetFn, Targets, chunks, guarded, positive_int, target_function

#: bases SmoothGrad can wrap: subclasses of these (registered) classes
GRADIENT_METHODS = (Gradient, GradCam, NormGrad)


@EXPLAINERS.register("smoothgrad")
class SmoothGrad(Explainer):
    """SmoothGrad (Smilkov et al. 2017): a gradient method averaged over noisy states.

    Example::

        explainer = get_explainer("smoothgrad", model, base="guided_backprop", n_samples=50, sigma=0.15)
        saliency = explainer.explain(states)  # (B, H, W)
    """

    def __init__(
        self,
        model: Model,
        *,
        base: str = "gradient",
        base_settings: dict | None = None,
        n_samples: int = 50,
        sigma: float = 0.15,
        squared: bool = False,
        batch_size: int = 256,
        seed: int = 0,
    ) -> None:
        super().__init__(model, batch_size=batch_size, seed=seed)
        bases = sorted(
            n
            for n in EXPLAINERS.names()
            if isinstance(EXPLAINERS.get(n), type) and issubclass(EXPLAINERS.get(n), GRADIENT_METHODS)
        )
        if base not in bases:
            raise ValueError(f"smoothgrad wraps a gradient method, one of {bases}; got base={base!r}")
        n_samples = positive_int("n_samples", n_samples)
        if not float(sigma) >= 0:
            raise ValueError(f"sigma (noise std as a fraction of the state's range) must be >= 0, got {sigma!r}")
        self.base = EXPLAINERS.get(base)(model, **{"batch_size": batch_size, "seed": seed, **(base_settings or {})})
        self.n_samples = int(n_samples)
        self.sigma = float(sigma)
        self.squared = bool(squared)

    def channel_gradients(self, states: torch.Tensor, targets: Targets = None) -> torch.Tensor:
        """Averaged signed attributions (squared ones with ``squared=True``) ``(B, C, H, W)``
        before the base's channel reduction (bases with ``channel_gradients`` only)."""
        if not isinstance(self.base, Gradient):
            raise ValueError(f"{type(self.base).__name__} gives maps, not per-channel attributions; use explain")
        self.model.check_states(states)
        with guarded(self.model, states):
            return self._average(states, target_function(self.model, states, targets)).detach()

    def _explain(self, states: torch.Tensor, target_fn: TargetFn) -> torch.Tensor:
        mean = self._average(states, target_fn)
        return reduce_channels(mean, self.base.reduce) if isinstance(self.base, Gradient) else mean

    def _average(self, states: torch.Tensor, target_fn: TargetFn) -> torch.Tensor:
        """Mean over the noisy copies of the base's signed attributions ``(B, C, H, W)`` or maps
        ``(B, H, W)``."""
        b, n = states.shape[0], self.n_samples
        chunk = min(b * n, self.batch_size)  # noise, plus a chunk of noisy states, their gradients and maps
        check_memory(
            states[0].numel() * states.element_size() * (n + 3 * chunk),
            f"smoothgrad with n_samples={n} (noise for {n} copies of a {tuple(states.shape[1:])} state)",
            "lower smoothgrad.n_samples (or batch_size)",
        )
        noise = torch.randn(n, *states.shape[1:], generator=self.generator(), device="cpu").to(states)  # (n, C, H, W)
        scale = self.sigma * (states.amax((1, 2, 3)) - states.amin((1, 2, 3)))  # (B,)
        index = target_fn.index
        total = None
        started, first = time.perf_counter(), None
        for rows in chunks(b * n, self.batch_size):  # row r = state r // n plus noise r % n
            if first is not None:  # one chunk measured: the time of all of them (once)
                check_time(
                    time.perf_counter() - started,
                    first,
                    b * n,
                    f"smoothgrad with n_samples={n} on {b} states",
                    "lower smoothgrad.n_samples",
                )
                first = b * n
            else:
                first = rows.stop - rows.start
            r = torch.arange(rows.start, rows.stop, device=states.device)
            owner, m = r // n, r % n
            noisy = states[owner] + scale[owner, None, None, None] * noise[m]
            fn = target_fn if index is None else target_function(self.model, noisy, index[owner])
            maps = self.base._gradients(noisy, fn) if isinstance(self.base, Gradient) else self.base._explain(noisy, fn)
            total = torch.zeros(b, *maps.shape[1:], dtype=maps.dtype, device=maps.device) if total is None else total
            total.index_add_(0, owner, maps.detach() ** 2 if self.squared else maps.detach())
        assert total is not None  # b * n >= 1 rows
        return total / n
