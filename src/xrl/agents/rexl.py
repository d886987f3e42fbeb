"""The RExL agent (Agarwal et al. 2021, "Reinforcement Explanation Learning", arXiv:2111.13406,
section 3.2, appendix A.1): a frozen feature extractor and a learnable MLP (hidden layers 256 and
128, ReLU) with a policy head over the ``grid**2`` cells and, for ACER, a Q head. Dataset-specific agents also get the explained class as a one-hot input.

Feature extractors (``extractor=``): ``"trunk"`` — the explained network's own convolutional
trunk (:func:`xrl.agents.classifier.trunk_of`); a torchvision classification architecture name
(``"resnet18"``, ...) built with ``weights=None`` from ``extractor_seed`` (randomly initialised and
frozen: nothing may be downloaded here); or any ``nn.Module`` passed by the user. Its weights are
fingerprinted, so an agent used with another extractor is refused.

On disk: ``rexl.pt`` (``format="xrl.rexl_agent"``: the MLP and heads, grid, mode, classes,
noise, score — softmax or sigmoid; absent from agents saved before it existed, which scored the
softmax —, the explained model's fingerprint and input shape, the extractor's name, seed and
fingerprint) and its card ``rexl.json``; :func:`load_rexl_agent` refuses another model or grid.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from pathlib import Path

import torch
from torch import nn

from xrl.agents.model import Model
from xrl.artifacts import fingerprint, load_payload, save_payload

FORMAT = "xrl.rexl_agent"
MODES = ("ds", "cs", "is")


def build_extractor(model: Model, extractor: str | nn.Module, seed: int = 0) -> nn.Module:
    """The frozen feature extractor (see the module docstring), in eval mode."""
    if isinstance(extractor, nn.Module):
        module = extractor
    elif extractor == "trunk":
        from xrl.agents.classifier import trunk_of

        module = trunk_of(model)
    else:
        from xrl.agents.classifier import IMAGENET_MEAN, IMAGENET_STD, Normalized, build_torchvision

        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            net = build_torchvision(extractor, 1000)
        children = []
        for name, child in net.named_children():  # everything before the pooling / classifier
            if name in ("avgpool", "classifier", "fc"):
                break
            children.append(child)
        module = Normalized(nn.Sequential(*children), IMAGENET_MEAN, IMAGENET_STD)
    module.eval()
    for p in module.parameters():
        p.requires_grad_(False)
    return module


class RExLAgent(nn.Module):
    """``features = extractor(states)`` (flattened, plus a one-hot of the class for dataset-specific
    agents) -> MLP 256-128 -> ``(logits, q)`` over the ``grid**2`` cells.

    ``forward`` takes encoded observations (what ACER's replay stores: the extractor is frozen);
    :meth:`encode` makes them from states and targets.
    """

    def __init__(
        self,
        extractor: nn.Module,
        *,
        input_shape,
        n_classes: int,
        grid: int,
        mode: str,
        classes: list[int],
        hidden=(256, 128),
    ) -> None:
        super().__init__()
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        self.extractor = extractor
        self.n_classes, self.grid, self.mode, self.classes = int(n_classes), int(grid), mode, [int(c) for c in classes]
        with torch.no_grad():
            self.feature_dim = int(extractor(torch.zeros(1, *input_shape)).flatten(1).shape[1])
        self.one_hot = self.n_classes if mode == "ds" else 0
        layers, width = [], self.feature_dim + self.one_hot
        for h in hidden:
            layers += [nn.Linear(width, h), nn.ReLU()]
            width = h
        self.mlp = nn.Sequential(*layers)
        self.pi = nn.Linear(width, grid * grid)
        self.q = nn.Linear(width, grid * grid)

    def learnable(self) -> dict[str, torch.Tensor]:
        return {k: v for k, v in self.state_dict().items() if not k.startswith("extractor.")}

    def parameters(self, recurse: bool = True):  # the optimiser sees the MLP and heads only
        for name, p in self.named_parameters(recurse=recurse):
            if not name.startswith("extractor."):
                yield p

    @torch.no_grad()
    def encode(self, states: torch.Tensor, targets: torch.Tensor, features: torch.Tensor | None = None) -> torch.Tensor:
        """Observations ``(B, D)``: the extractor's features standardised per state (a parameter-free
        layer norm, so the MLP's input scale does not depend on the extractor) and, for ``ds``, the
        one-hot class. ``features``: the extractor's output on ``states`` when already computed."""
        features = (self.extractor(states) if features is None else features).flatten(1)
        features = nn.functional.layer_norm(features, features.shape[1:])
        if self.one_hot:
            features = torch.cat([features, nn.functional.one_hot(targets, self.n_classes).to(features)], 1)
        return features

    def forward(self, obs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.mlp(obs)
        return self.pi(h), self.q(h)


@contextlib.contextmanager
def shared_trunk(agent: RExLAgent, model: nn.Module) -> Iterator[Callable[[torch.Tensor, torch.Tensor], torch.Tensor]]:
    """``encode(states, targets)`` that, when the agent's extractor is a submodule of the explained
    ``model`` (its own trunk, run once per forward), takes the features from the model's last
    forward pass on those states instead of running the trunk again; the hook is removed on exit."""
    captured: list[torch.Tensor] = []
    hook = None
    if any(m is agent.extractor for m in model.modules()):
        hook = agent.extractor.register_forward_hook(lambda module, inputs, output: captured.append(output))

    def encode(states: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        features = captured[-1] if captured and len(captured[-1]) == len(states) else None
        captured.clear()
        return agent.encode(states, targets, features)

    try:
        yield encode
    finally:
        if hook is not None:
            hook.remove()


def save_rexl_agent(agent: RExLAgent, path: str | Path, *, record: dict, card: dict) -> None:
    """``path`` and its card, atomically. ``record``: model fingerprint, input shape, noise,
    extractor name/seed, low/high (what :func:`load_rexl_agent` checks)."""
    settings = {
        "grid": agent.grid,
        "mode": agent.mode,
        "classes": agent.classes,
        "n_classes": agent.n_classes,
        "feature_dim": agent.feature_dim,
        "extractor_fingerprint": fingerprint(agent.extractor),
        **record,
    }
    save_payload(path, FORMAT, settings, agent.learnable(), card=card)


def load_rexl_agent(
    path: str | Path, model: Model, *, extractor: nn.Module | None = None, grid: int | None = None
) -> tuple[RExLAgent, dict]:
    """An agent saved by ``xrl train rexl`` for ``model``, and its record. Refused: a file that is
    not a RExL agent, another model (weights fingerprint or input shape), another grid, another
    feature extractor."""
    path = Path(path)
    blob = load_payload(path, FORMAT)
    mine = model.fingerprint()
    if blob["model_fingerprint"] != mine or list(blob["input_shape"]) != list(model.input_shape):
        raise ValueError(
            f"{path} was trained to explain another model ({blob['model_source']}, weights "
            f"{blob['model_fingerprint']}, input {blob['input_shape']}); this model has weights {mine}, "
            f"input {list(model.input_shape)}: train an agent for it (xrl train rexl)"
        )
    if grid is not None and int(grid) != blob["grid"]:
        raise ValueError(
            f"{path} masks a {blob['grid']}x{blob['grid']} grid, {grid}x{grid} was asked; "
            "a RExL agent works on the grid it was trained on"
        )
    module = build_extractor(model, extractor if extractor is not None else blob["extractor"], blob["extractor_seed"])
    # a model built without its weights (xrl bench --check) has stand-in ones: its trunk cannot be compared
    if model.info.get("weights") != "not loaded" and fingerprint(module) != blob["extractor_fingerprint"]:
        raise ValueError(
            f"{path} was trained on another feature extractor ({blob['extractor']}, weights "
            f"{blob['extractor_fingerprint']}); got weights {fingerprint(module)}"
        )
    with torch.device("cpu"):  # built on the CPU like the file's tensors (the device rule); moved by its user
        agent = RExLAgent(
            module,
            input_shape=model.input_shape,
            n_classes=blob["n_classes"],
            grid=blob["grid"],
            mode=blob["mode"],
            classes=blob["classes"],
        )
    agent.load_state_dict({**{f"extractor.{k}": v for k, v in module.state_dict().items()}, **blob["state_dict"]})
    agent.eval()
    return agent, {k: v for k, v in blob.items() if k != "state_dict"}
