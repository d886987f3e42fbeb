"""The agent's own attention drawn onto its input (FLS, Nikulin et al. 2019, section 3).

For agents built with an attention module (``xrl.agents.attention``: FLS and its ablations, DAQN,
RS-PPO), the saliency of a state is the attention the agent computed for it, drawn back to the
input resolution: ``upsample="transposed"`` (the paper's method, default) adds each attention
cell's value to every input pixel of that cell's receptive field (a transposed convolution with a
unit kernel of the receptive field's size and stride); ``upsample="bilinear"`` resizes the
attention grid bilinearly instead (the comparison the paper mentions); ``"transposed_mean"``
divides the paper's drawing by the number of fields covering each pixel (the mean attention of
the cells that see it), so overlapping fields do not make the centre of the screen peak whatever
the attention; ``"nearest"`` copies each cell onto its block of pixels. Agents with several
attention modules (``sparse_fls_each``) get the sum of their drawn maps.

The attention is computed from the trunk's features, which mix all channels and stacked frames:
one map per state, no channel reduction. It does not depend on the action: every target gets the
same map (``targets`` is still validated), and ``explain_all`` repeats it for each action.

Settings: ``upsample`` (one of ``UPSAMPLE``); ``module`` — the name (as in
``model.named_modules()``) of the attention module to draw, default the first one in module
order (for SB3 policies the actor's features extractor). An agent without an attention module is
refused with a ``ValueError`` naming the architectures that have one.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from xrl.agents.model import Model
from xrl.explainers.base import EXPLAINERS, Explainer
from xrl.ops import chunks

UPSAMPLE = ("transposed", "transposed_mean", "bilinear", "nearest")


@EXPLAINERS.register("attention")
class Attention(Explainer):
    """The agent's own attention (FLS, DAQN, RS-PPO agents) drawn onto its input by receptive field."""

    #: what the Model must offer beyond the Explainer contract: an attention module (the
    #: contract test builds a model with one for explainers that require it)
    requires = ("attention",)

    def __init__(
        self,
        model: Model,
        *,
        upsample: str = "transposed",
        module: str | None = None,
        batch_size: int = 256,
        seed: int = 0,
    ) -> None:
        super().__init__(model, batch_size=batch_size, seed=seed)
        if upsample not in UPSAMPLE:
            raise ValueError(f"upsample must be one of {UPSAMPLE}, got {upsample!r}")
        self.upsample = upsample
        self.module = module
        find_attention(model, module)  # refuse models without attention now, not at the first call

    @staticmethod
    def supports(model: Model) -> bool:
        """Whether ``model`` has an attention module this explainer can draw."""
        from xrl.agents.attention import has_attention  # imports Stable-Baselines3: on first use

        return has_attention(model)

    def _explain(self, states: torch.Tensor, target_fn: Callable) -> torch.Tensor:
        from xrl.agents.attention import draw

        size = tuple(states.shape[-2:])
        attention_module = find_attention(self.model, self.module)
        maps = []
        with torch.no_grad():
            for rows in chunks(states.shape[0], self.batch_size):
                attention = attention_module.attention_maps(states[rows])  # type: ignore[operator]  # [(b, h_i, w_i)]
                maps.append(draw(attention, attention_module.receptive_fields, size, self.upsample))  # type: ignore[arg-type]
        return torch.cat(maps)  # (B, H, W)


def find_attention(model: Model, name: str | None = None) -> nn.Module:
    """The attention module of ``model`` (the one called ``name``, or the first in module order)."""
    from xrl.agents.attention import VARIANTS, is_attention  # imports Stable-Baselines3: on first use

    found = [(n, m) for n, m in model.named_modules() if is_attention(m)]
    if name is not None:
        match = [m for n, m in found if n == name]
        if not match:
            raise ValueError(
                f"the model has no attention module named {name!r}; its attention modules: "
                f"{', '.join(n for n, _ in found) or '(none)'}"
            )
        return match[0]
    if not found:
        raise ValueError(
            "the attention explainer needs an agent with an attention module (a module with "
            "attention_maps(states) and receptive_fields, see xrl.agents.attention); this model has "
            f"none. Train one with `xrl train agent --arch NAME`, NAME one of {', '.join(VARIANTS)} "
            "(grid_NAME for Red-Fetch-Green)"
        )
    return found[0][1]
