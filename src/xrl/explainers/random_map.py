"""Random saliency: the control every method must beat (uniform noise in ``[0, 1)``).

Each state's map is drawn from its own generator, seeded from ``seed`` and a hash of the state's
values (not its position in the batch), so: the same seed gives the same maps; different states
get different maps; and a batch gives exactly the maps of a per-sample loop, in any chunking.
``targets`` is validated but does not change the maps, so every ``explain_all[:, k]`` is the
same map. Maps are drawn on the CPU and moved to the states' device (identical on any device).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable

import torch

from xrl.explainers.base import EXPLAINERS, Explainer


@EXPLAINERS.register("random")
class RandomMap(Explainer):
    """Uniform random saliency ``(B, H, W)``, a function of ``(seed, state)`` only."""

    def _explain(self, states: torch.Tensor, target_fn: Callable) -> torch.Tensor:
        height, width = states.shape[-2:]
        maps = [
            torch.rand(height, width, generator=self._state_generator(s), device="cpu") for s in states.detach().cpu()
        ]
        return torch.stack(maps).to(states.device)

    def _state_generator(self, state: torch.Tensor) -> torch.Generator:
        digest = hashlib.blake2b(self.seed.to_bytes(8, "little", signed=True), digest_size=8)
        digest.update(state.contiguous().numpy().tobytes())
        return torch.Generator(device="cpu").manual_seed(int.from_bytes(digest.digest(), "little") >> 1)
