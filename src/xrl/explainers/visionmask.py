"""VisionMask (Zuo, Khan, Wang, Katz & Qiu 2025, "Why the Agent Made that Decision: Contrastive
Explanation Learning for Reinforcement Learning", arXiv:2411.16120): a trained mask network gives
every action's mask of a state in one forward pass.

``get_explainer("visionmask", model, network="runs/visionmask/visionmask.pt")`` loads a network
trained for this agent (``xrl train visionmask``; ``xrl.train.visionmask``) — or takes a
:class:`~xrl.agents.mask_nets.MaskNetwork` object — and refuses one trained for another agent,
another action count or another input shape (``ValueError``). ``explain_all(states)`` is the
network's K sigmoid masks ``(B, K, H, W)`` in [0, 1]; ``explain(states, targets)`` picks the
target's mask. The masks are one per action, so targets must be action indices: a callable is
refused with a ``TypeError`` (``callable_targets = False``).

:func:`counterfactual` answers "what would the agent do without it?" (the paper's Figure 2):
the most salient region of the target's mask — the connected pixels (4-neighbours) around its
maximum whose mask value is at least ``threshold`` times that maximum — is replaced by the
network's reference value, and the agent's action and probabilities on that state are returned.

Settings: ``network`` (path or MaskNetwork; default: the zoo network made for this agent, found
by the agent's weights fingerprint with :func:`xrl.zoo.find_network`, never by a path), ``batch_size``
(states per forward pass; the maps do not depend on it), ``check_agent`` (default True; see
``with_model``). A network made for another agent is refused, whoever gives it.
"""

from __future__ import annotations

import os
from typing import NamedTuple

import numpy as np
import torch

from xrl.agents.mask_nets import MaskNetwork, load_mask_network
from xrl.agents.model import Model
from xrl.explainers.base import EXPLAINERS, Explainer
from xrl.ops import TargetFn, Targets, chunks, guarded, target_function
from xrl.zoo import network_for


@EXPLAINERS.register("visionmask")
class VisionMask(Explainer):
    """VisionMask: a trained network's mask per action in one forward pass (Zuo et al. 2025)."""

    per_action = True
    callable_targets = False
    #: what the explainer needs beyond the Model contract: a mask network trained for the model
    #: (the contract test builds one for explainers that require it)
    requires = ("mask_network",)
    #: the method a loaded network must have been trained with
    method = "visionmask"

    @property
    def callable_refusal(self) -> str:
        return (
            f"{self.method} has one trained mask per action, so targets must be action indices "
            "(None, an int or a (B,) tensor), not a callable; explain values or logit differences "
            "with 'gradient', 'occlusion' or 'rise'"
        )

    def __init__(
        self,
        model: Model,
        *,
        network: str | os.PathLike | MaskNetwork | None = None,
        check_agent: bool = True,
        batch_size: int = 256,
        seed: int = 0,
    ) -> None:
        super().__init__(model, batch_size=batch_size, seed=seed)
        if network is None:
            network = zoo_network(self.method, model, f"train one with xrl train {self.method.replace('_', '-')}")
        #: where the network came from (a path, or "given" for a MaskNetwork object)
        self.network_source = "given" if isinstance(network, MaskNetwork) else str(network)
        if not isinstance(network, MaskNetwork):  # a file: its network goes where the model computes
            network = load_mask_network(network, method=self.method).to(model.device)
        elif network.method != self.method:
            raise ValueError(f"network holds a {network.method} network, not a {self.method} one")
        if check_agent:
            network.check_agent(model)
        self.network = network.eval()
        self.check_agent = bool(check_agent)

    def with_model(self, model: Model) -> Explainer:
        """The same network explaining ``model`` without the agent check: the sanity metric
        re-explains randomized copies of the agent, and a trained network's maps do not depend on
        the agent's weights at run time (only training sees them), so the check reports that."""
        other = type(self)(model, network=self.network, check_agent=False, batch_size=self.batch_size, seed=self.seed)
        other.network_source = self.network_source
        return other

    def _explain_all(self, states: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return torch.cat([self.network.masks(states[rows]) for rows in chunks(len(states), self.batch_size)])

    def _explain(self, states: torch.Tensor, target_fn: TargetFn) -> torch.Tensor:
        index = target_fn.index  # (B,): explain refuses callables (callable_targets = False)
        assert index is not None
        maps = self._explain_all(states)  # (B, K, H, W)
        return maps[torch.arange(len(states), device=maps.device), index]

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(network={self.network_source!r}, arch={self.network.arch!r}, "
            f"reference={self.network.reference!r}, batch_size={self.batch_size})"
        )


def zoo_network(kind: str, model: Model, how_to_train: str) -> str:
    """The path of the zoo's ``kind`` network made for ``model`` (matched by its weights
    fingerprint, :func:`xrl.zoo.network_for`), or a ``ValueError`` saying there is none."""
    try:
        return network_for(kind, model.fingerprint())
    except ValueError as why:  # no zoo folder (an installed xrl without the repository's zoo/), or no network
        raise ValueError(
            f"{kind} needs network= a trained network (.pt) for this agent: {why}; {how_to_train}"
        ) from None


class Counterfactual(NamedTuple):
    """What :func:`counterfactual` returns, one row per state."""

    targets: torch.Tensor  # (B,) the explained actions
    maps: torch.Tensor  # (B, H, W) their masks
    region: torch.Tensor  # (B, H, W) bool: the removed region
    states: torch.Tensor  # (B, C, H, W) the states with the region replaced by the reference
    probs: torch.Tensor  # (B, K) the agent's probabilities on the original states
    new_probs: torch.Tensor  # (B, K) and on the counterfactual states
    actions: torch.Tensor  # (B,) argmax on the original states
    new_actions: torch.Tensor  # (B,) argmax on the counterfactual states


def salient_region(saliency: torch.Tensor, threshold: float = 0.5) -> torch.Tensor:
    """``(B, H, W)`` bool: per map, the 4-connected pixels around its (first) maximum whose value
    is at least ``threshold`` times that maximum (all-zero maps give an empty region)."""
    if not 0 < threshold <= 1:
        raise ValueError(f"threshold must be in (0, 1], got {threshold!r}")
    from scipy import ndimage

    out = np.zeros(saliency.shape, dtype=bool)
    for b, s in enumerate(saliency.detach().cpu().numpy()):
        peak = s.max()
        if peak <= 0:
            continue
        labels, _ = ndimage.label(s >= threshold * peak)  # 4-connectivity (the default structure)
        out[b] = labels == labels.flat[int(s.argmax())]
    return torch.from_numpy(out).to(saliency.device)


def counterfactual(
    explainer: VisionMask, states: torch.Tensor, targets: Targets = None, *, threshold: float = 0.5
) -> Counterfactual:
    """Remove the most salient region of each target's mask (replace it by the reference value)
    and ask the agent again (VisionMask section 4.3, Figure 2)."""
    model, network = explainer.model, explainer.network
    model.check_states(states)
    with guarded(model, states), torch.no_grad():
        index = target_function(model, states, targets).index
        if index is None:
            raise TypeError("counterfactual targets must be action indices (None, an int or a (B,) tensor)")
        maps = explainer.explain(states, index)
        region = salient_region(maps, threshold)
        keep = (~region)[:, None].to(states.dtype)
        edited = states * keep + network.reference_for(states) * (1 - keep)
        probs, new_probs = model.probs(states), model.probs(edited)
    return Counterfactual(index, maps, region, edited, probs, new_probs, probs.argmax(-1), new_probs.argmax(-1))
