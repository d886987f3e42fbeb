"""RExL (Agarwal et al. 2021, "Reinforcement Explanation Learning", arXiv:2111.13406, section 3.3):
a trained RL agent masks the cells of a K x K grid one by one, most decisive first, and the
saliency of a cell is the credit of the drop in the target's probability it caused.

With the deterministic policy, at step ``t = 1..K^2`` the agent masks cell ``b_t`` and the target's
probability drops by ``delta_t = p_{t-1} - p_t``. Cell ``b_t`` gets ``sum_{i >= t} lambda^(i - t)
delta_i`` (:func:`cell_credit`): with ``lambda = 0`` only the drop it caused itself, with
``lambda = 1`` (the paper's choice, Table 4) every later drop too. The cell weights are normalised
to sum to 1 (divided by their sum; by the sum of their absolute values when that is not positive,
so the order is kept) and spread over the cell's pixels; ``smooth`` blurs the map for display
(Gaussian, sigma in pixels; 0 = off, the default, and what the deletion scores use).

Decision (a full ranking): the agent may re-pick a masked cell during training (as in the paper;
it changes nothing), but at inference ``repeat=False`` (default) picks the best cell not masked
yet, so every cell is ranked once; ``repeat=True`` follows the argmax as is (a cell never picked
gets 0).

Agents: ``agent=`` a ``rexl.pt`` (``xrl train rexl``) or a list of them: one dataset-specific agent,
or class-specific agents, each explaining the states whose target is its class (a target with no
agent is refused). Without ``agent=``, the zoo's RExL agent made for the model is used (matched by
the model's weights fingerprint, :func:`xrl.zoo.find_network`; the dataset-specific one first). An agent trained for another model or grid is refused. Masked cells show one
noise image drawn from ``seed`` (the same for every state, so a map does not depend on its batch).
Cost: ``K^2`` steps, each one forward pass of the model and the agent's extractor per state.

Multi-label models (the paper's VOC/COCO setting): ``score="sigmoid"`` (what an agent trained on
multi-label data records, and then the default) scores the target by its own probability
``sigmoid(logit_c)`` instead of the softmax over classes. ``explain(states, targets=k)`` explains
class ``k``; :meth:`RExL.explain_present` explains *every* class present in each image — the
given multi-hot labels, or the classes the model finds (``sigmoid(logit) > 0.5``) — and returns
one map per present (image, class) pair: ``maps (P, H, W)``, ``rows (P,)``, ``classes (P,)``,
ordered by image, then class.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from pathlib import Path

import torch

from xrl.agents.masking import SCORES, MaskingBatch
from xrl.agents.model import Model
from xrl.agents.rexl import RExLAgent, load_rexl_agent, shared_trunk
from xrl.explainers.base import EXPLAINERS, Explainer
from xrl.ops import TargetFn, gaussian_blur
from xrl.zoo import network_for


def cell_credit(probs: torch.Tensor, actions: torch.Tensor, n_cells: int, lam: float) -> torch.Tensor:
    """Cell weights ``(B, n_cells)`` from the target's probabilities ``(B, T + 1)`` (before any
    masking, then after each step) and the cells masked ``(B, T)``: ``sum_{i >= t} lam^(i-t)
    delta_i`` for the cell of step ``t`` (a cell masked twice adds both), not normalised."""
    delta = probs[:, :-1] - probs[:, 1:]  # (B, T)
    credit = torch.empty_like(delta)
    carried = torch.zeros_like(delta[:, 0])
    for t in reversed(range(delta.shape[1])):
        carried = delta[:, t] + lam * carried
        credit[:, t] = carried
    return torch.zeros(len(probs), n_cells, dtype=credit.dtype, device=credit.device).scatter_add_(1, actions, credit)


def normalise(weights: torch.Tensor) -> torch.Tensor:
    """Weights ``(B, n)`` divided by their sum (by the sum of absolute values if it is not positive)."""
    total = weights.sum(1, keepdim=True)
    total = torch.where(total > 0, total, weights.abs().sum(1, keepdim=True))
    return weights / total.clamp_min(1e-12)


def _zoo_agent(model: Model) -> str:
    """The zoo's RExL agent for ``model`` (the dataset-specific one when there is one), matched by
    the model's weights fingerprint (:func:`xrl.zoo.network_for`), or a ``ValueError``."""
    try:
        return network_for("rexl", model.fingerprint())
    except ValueError as why:  # no zoo folder, or no agent for this model
        raise ValueError(f"rexl needs a trained agent: agent='runs/rexl/rexl.pt' (xrl train rexl); {why}") from None


@EXPLAINERS.register("rexl")
class RExL(Explainer):
    """RExL (Agarwal et al. 2021): a trained agent masks grid cells in turn; cells get the cumulated probability drop.

    Example::

        explainer = get_explainer("rexl", model, agent="runs/rexl-ds/rexl.pt", lam=1.0)
        saliency = explainer.explain(states, targets)   # (B, H, W), each map sums to 1 over cells
    """

    callable_targets = False
    callable_refusal = (
        "rexl masks cells to lower one class's probability, so targets must be class "
        "(action) indices: None, an int or a (B,) tensor, not a callable"
    )
    requires = ("rexl_agent",)

    def __init__(
        self,
        model: Model,
        *,
        agent: str | Path | Sequence[str | Path] | None = None,
        lam: float = 1.0,
        smooth: float = 0.0,
        repeat: bool = False,
        grid: int | None = None,
        extractor: torch.nn.Module | None = None,
        batch_size: int = 256,
        seed: int = 0,
        score: str | None = None,
    ) -> None:
        super().__init__(model, batch_size=batch_size, seed=seed)
        if agent is None:  # the zoo's agent for this model, found by its weights fingerprint
            agent = _zoo_agent(model)
        if not 0.0 <= float(lam) <= 1.0:
            raise ValueError(f"lam (the cumulating factor) must be in [0, 1], got {lam!r}")
        if float(smooth) < 0:
            raise ValueError(f"smooth (a blur sigma in pixels) must be >= 0, got {smooth!r}")
        self.lam, self.smooth, self.repeat = float(lam), float(smooth), bool(repeat)
        paths = [agent] if isinstance(agent, (str, Path)) else list(agent)
        self.agents: dict[int | None, tuple[RExLAgent, dict]] = {}
        for path in paths:
            loaded, record = load_rexl_agent(path, model, grid=grid, extractor=extractor)
            key = None if loaded.mode == "ds" else loaded.classes[0]
            if key in self.agents:
                raise ValueError(f"two agents given for {'every class' if key is None else f'class {key}'}: {paths}")
            self.agents[key] = (loaded, record)
        self.agent_paths = [str(p) for p in paths]
        grids = {a.grid for a, _ in self.agents.values()}
        if len(grids) != 1:
            raise ValueError(f"the agents mask different grids {sorted(grids)}; give agents of one grid")
        self.grid = grids.pop()
        recorded = {r["score"] for _, r in self.agents.values() if r.get("score")}  # agents before it: none
        if len(recorded) > 1:
            raise ValueError(f"the agents were trained with different scores {sorted(recorded)}; give agents of one")
        if score is not None and score not in SCORES:
            raise ValueError(f"score must be one of {SCORES} (or None: the agents'), got {score!r}")
        if score is not None and recorded and score not in recorded:
            raise ValueError(
                f"the agents were trained to lower the {recorded.pop()} probability, score={score!r} "
                "was asked; train agents with that score (xrl train rexl --score)"
            )
        self.score = score or (recorded.pop() if recorded else "softmax")

    def __repr__(self) -> str:
        return (
            f"RExL(agent={self.agent_paths!r}, lam={self.lam}, smooth={self.smooth}, repeat={self.repeat}, "
            f"grid={self.grid}, score={self.score!r}, seed={self.seed})"
        )

    @torch.no_grad()
    def present_classes(self, states: torch.Tensor) -> torch.Tensor:
        """``(B, C)`` bool: the classes the model finds in each state — ``sigmoid(logit) > 0.5``
        (sigmoid score), the argmax (softmax score)."""
        logits = torch.cat(
            [self.model(states[i : i + self.batch_size]) for i in range(0, len(states), self.batch_size)]
        )
        if self.score == "sigmoid":
            return torch.sigmoid(logits) > 0.5
        return torch.nn.functional.one_hot(logits.argmax(-1), logits.shape[-1]).bool()

    def explain_present(
        self, states: torch.Tensor, present: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """One map for every class present in every state: ``(maps (P, H, W), rows (P,), classes (P,))``,
        pair ``p`` explaining class ``classes[p]`` of ``states[rows[p]]``, ordered by row then class.
        ``present (B, C)`` multi-hot labels (0/1 or bool); None: :meth:`present_classes`. A state
        with no present class gets no map."""
        if present is None:
            present = self.present_classes(states)
        present = torch.as_tensor(present).to(states.device).bool()
        k = self.model.n_actions
        if tuple(present.shape) != (states.shape[0], k):
            raise ValueError(
                f"present must be (B, C) = ({states.shape[0]}, {k}) multi-hot labels, got {tuple(present.shape)}"
            )
        rows, classes = torch.nonzero(present, as_tuple=True)
        if len(rows) == 0:
            return states.new_zeros(0, *states.shape[-2:]), rows, classes
        return self.explain(states[rows], classes), rows, classes

    def with_model(self, model: Model) -> Explainer:
        """The same trained agents explaining ``model`` without the model check: the sanity metric
        re-explains randomized copies of the model (the agents' extractors stay as trained)."""
        if not isinstance(model, Model):
            raise TypeError(f"explainers take an xrl Model, got {type(model).__name__}")
        other = copy.copy(self)
        other.model = model
        return other

    def _agent_for(self, target: int) -> tuple[RExLAgent, dict]:
        if target in self.agents:
            return self.agents[target]
        if None in self.agents:
            return self.agents[None]
        raise ValueError(
            f"no RExL agent explains class {target} ({self.model.action_names[target]}); the "
            f"class-specific agents given explain {sorted(k for k in self.agents if k is not None)}"
        )

    @torch.no_grad()
    def _explain(self, states: torch.Tensor, target_fn: TargetFn) -> torch.Tensor:
        index = target_fn.index  # (B,) validated class indices: explain refuses callables
        assert index is not None
        saliency = torch.empty(states.shape[0], *states.shape[-2:], device=states.device)
        groups: dict[int, list[int]] = {}
        for i, t in enumerate(index.tolist()):
            groups.setdefault(id(self._agent_for(t)[0]), []).append(i)
        for rows in groups.values():
            rows_t = torch.tensor(rows, device=states.device)
            agent, record = self._agent_for(int(index[rows[0]]))
            for start in range(0, len(rows), self.batch_size):
                part = rows_t[start : start + self.batch_size]
                saliency[part] = self._maps(agent, record, states[part], index[part])
        if self.smooth > 0:
            saliency = gaussian_blur(saliency, self.smooth)
        return saliency

    def _maps(self, agent: RExLAgent, record: dict, states: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        agent = agent.to(states.device)
        batch = MaskingBatch(
            self.model,
            states,
            grid=self.grid,
            noise=record["noise"],
            seed=self.seed,
            batch_size=self.batch_size,
            mean=record.get("noise_mean"),
            std=record.get("noise_std"),
            score=self.score,
        )
        noise = batch.draw_noise(1).expand_as(states)  # one noise image for every state
        probs, actions = [], []
        with shared_trunk(agent, self.model) as encode:  # one trunk pass per step when it is the model's
            current = batch.reset(torch.arange(len(states), device=states.device), targets, noise=noise)
            probs.append(batch.probs)
            for _ in range(batch.n_cells):
                logits = agent(encode(current, targets))[0]
                if not self.repeat:
                    logits = logits.masked_fill(batch.masked, float("-inf"))
                action = logits.argmax(-1)
                current, _, _ = batch.step(action)
                probs.append(batch.probs)
                actions.append(action)
        weights = normalise(cell_credit(torch.stack(probs, 1), torch.stack(actions, 1), batch.n_cells, self.lam))
        return (weights @ batch.cells.flatten(1).to(weights)).view(len(states), *states.shape[-2:])
