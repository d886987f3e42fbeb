"""Image classifiers as xrl Models (public names: :mod:`xrl.classifiers`): torchvision
architectures with a user's weights file, and a small CNN trained on the generated shapes dataset.

* :func:`torchvision_classifier` builds any torchvision classification architecture with
  ``weights=None`` (and ``weights_backbone=None`` where the builder has it): nothing is ever
  downloaded. A user's weights file is loaded with ``weights_only=True``. The ImageNet
  normalisation is a layer inside the Model, so states stay images in ``[0, 1]``.
* :func:`build_net` builds a classifier's network by architecture name; :func:`save_classifier` /
  :func:`load_classifier` write and read ``classifier.pt`` + card.
* The trainer (``ClassifierArgs``, ``train_classifier``, ``xrl train classifier``) and the image
  folder reader (``load_image_folder``) live in :mod:`xrl.train.classifier`.
* :func:`trunk_of` gives a classifier's convolutional trunk (RExL's default feature extractor).
"""

from __future__ import annotations

import inspect
from pathlib import Path
from typing import Any

import torch
from torch import nn

from xrl.agents.model import Model
from xrl.artifacts import ArtifactError, fingerprint, load_payload, read_card, read_header, save_payload, write_card

FORMAT = "xrl.classifier"
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


class ShapesCNN(nn.Module):
    """Three conv blocks (16, 32, 64 channels, batch norm, each halving the side), a fourth conv,
    then global max pooling (a detector: the object may be anywhere) and a linear layer;
    ``trunk`` keeps the spatial layout (64 x H/8 x W/8)."""

    def __init__(self, n_classes: int, in_channels: int = 3) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        for c_in, c_out in ((in_channels, 16), (16, 32), (32, 64)):
            layers += [nn.Conv2d(c_in, c_out, 3, padding=1), nn.BatchNorm2d(c_out), nn.ReLU(), nn.MaxPool2d(2)]
        self.trunk = nn.Sequential(*layers, nn.Conv2d(64, 64, 3, padding=1), nn.ReLU())
        self.head = nn.Sequential(nn.AdaptiveMaxPool2d(1), nn.Flatten(), nn.Linear(64, n_classes))

    def forward(self, states: torch.Tensor) -> torch.Tensor:
        return self.head(self.trunk(states))


class Normalized(nn.Module):
    """``net((x - mean) / std)``: keeps a network's input normalisation inside the Model."""

    def __init__(self, net: nn.Module, mean, std) -> None:
        super().__init__()
        self.net = net
        self.mean: torch.Tensor
        self.std: torch.Tensor
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1))

    def forward(self, states: torch.Tensor) -> torch.Tensor:
        return self.net((states - self.mean) / self.std)


def build_torchvision(arch: str, n_classes: int) -> nn.Module:
    """A torchvision classification architecture, randomly initialised: ``weights=None`` and,
    where the builder takes it, ``weights_backbone=None``."""
    import torchvision

    if arch not in torchvision.models.list_models(module=torchvision.models):
        raise ValueError(
            f"unknown torchvision classification architecture {arch!r}; known: "
            f"{torchvision.models.list_models(module=torchvision.models)}"
        )
    builder = torchvision.models.get_model_builder(arch)
    kwargs = {"weights": None, "num_classes": int(n_classes)}
    if "weights_backbone" in inspect.signature(builder).parameters:
        kwargs["weights_backbone"] = None
    return builder(**kwargs)


def torchvision_classifier(
    arch: str,
    weights: str | Path | None,
    *,
    n_classes: int,
    input_size: int = 224,
    class_names: list[str] | None = None,
    mean=IMAGENET_MEAN,
    std=IMAGENET_STD,
) -> Model:
    """A torchvision classifier with the user's weights file (a ``state_dict``), as a Model of
    ``(B, 3, input_size, input_size)`` images in [0, 1] (normalised inside)."""
    net = build_torchvision(arch, n_classes)
    if weights is not None:
        state = torch.load(weights, map_location="cpu", weights_only=True)
        state = state.get("state_dict", state) if isinstance(state, dict) else state
        try:
            net.load_state_dict(state)
        except RuntimeError as err:
            raise ValueError(f"{weights} is not a state_dict of {arch} with {n_classes} classes: {err}") from err
    return Model(
        Normalized(net, mean, std),
        input_shape=(3, input_size, input_size),
        action_names=class_names,
        score_kind="class_logits",
        obs_scale=255.0,
        input_range=(0.0, 1.0),
        info={"source": str(weights) if weights else f"torchvision:{arch}", "arch": arch},
    )


def trunk_of(model: Model) -> nn.Module:
    """The convolutional trunk of an explained network (spatial features, before pooling):
    ``ShapesCNN.trunk``, torchvision ResNet-style (every child before ``avgpool``) or VGG-style
    (``features``), or an SB3 policy's features extractor."""
    net = model.net.net if isinstance(model.net, Normalized) else model.net
    if isinstance(net, ShapesCNN):
        return net.trunk
    if isinstance(model.net, Normalized) and hasattr(net, "avgpool"):
        children = []
        for name, child in net.named_children():
            if name == "avgpool":
                break
            children.append(child)
        return _NormalizedTrunk(model.net, nn.Sequential(*children))
    if isinstance(model.net, Normalized) and hasattr(net, "features"):
        return _NormalizedTrunk(model.net, net.features)  # type: ignore[arg-type]
    policy = getattr(model.net, "policy", None)  # xrl.agents.heads.ActorScores
    if policy is not None:
        extractor = getattr(policy, "pi_features_extractor", None) or policy.q_net.features_extractor
        return extractor
    raise ValueError(
        f"xrl does not know the trunk of {type(net).__name__}; pass a feature extractor module "
        "(extractor=) or a torchvision backbone name (extractor='resnet18')"
    )


class _NormalizedTrunk(nn.Module):
    def __init__(self, normalized: Normalized, trunk: nn.Module) -> None:
        super().__init__()
        self.normalized, self.trunk = normalized, trunk

    def forward(self, states: torch.Tensor) -> torch.Tensor:
        return self.trunk((states - self.normalized.mean) / self.normalized.std)


def build_net(arch: str, n_classes: int) -> nn.Module:
    """The network of a classifier by architecture name: ``shapes_cnn`` (:class:`ShapesCNN`) or a
    torchvision classification architecture with the ImageNet normalisation inside."""
    if arch == "shapes_cnn":
        return ShapesCNN(n_classes)
    return Normalized(build_torchvision(arch, n_classes), IMAGENET_MEAN, IMAGENET_STD)


_net = build_net


def save_classifier(
    net: nn.Module, path: str | Path, *, arch: str, size: int, class_names: list[str], card: dict
) -> None:
    """``path`` (``format="xrl.classifier"``) and its card ``path.with_suffix(".json")``, atomically;
    the card records the file's sha256 and the loaded Model's weights fingerprint."""
    path = save_payload(
        path, FORMAT, {"arch": arch, "size": int(size), "class_names": list(class_names)}, net.state_dict()
    )
    # the Model a loader builds holds the network as ``net``: its fingerprint, without building it
    model_weights = {f"net.{k}": v for k, v in net.state_dict().items()}
    write_card(path, card, weights_fingerprint=fingerprint(model_weights), fmt=FORMAT)


def load_classifier(path: str | Path, *, weights: bool = True) -> Model:
    """A classifier saved by :func:`train_classifier` as a Model of ``(B, 3, size, size)`` images in [0, 1].
    ``weights=False``: built without reading its weights (stand-ins; see ``xrl.load_agent``)."""
    path = Path(path)
    blob = load_payload(path, FORMAT) if weights else read_header(path, FORMAT)
    net = classifier_net(path, blob, weights=weights)
    return classifier_model(path, blob, net, read_card(path), weights=weights)


def classifier_net(path: Path, blob: dict, *, weights: bool = True) -> nn.Module:
    """The network of a classifier's payload ``blob`` read from ``path``, its settings checked,
    with its weights unless ``weights`` is False."""
    arch, size, names = blob.get("arch"), blob.get("size"), blob.get("class_names")
    if not isinstance(arch, str):
        raise ArtifactError(path, f"has arch {arch!r}", "arch the name of a classifier architecture")
    if isinstance(size, bool) or not isinstance(size, int) or size < 1:
        raise ArtifactError(path, f"has size {size!r}", "size an integer >= 1 (the image side)")
    if not (isinstance(names, list) and names and all(isinstance(n, str) for n in names)):
        raise ArtifactError(path, f"has class_names {str(names)[:60]}", "class_names a non-empty list of strings")
    try:
        net = _net(arch, len(names))
    except (ValueError, KeyError, AttributeError) as err:
        raise ArtifactError(
            path,
            f"has arch {arch!r}, which xrl cannot build ({err})",
            "shapes_cnn or a torchvision classification architecture",
        ) from None
    if weights:
        try:
            net.load_state_dict(blob["state_dict"])
        except (RuntimeError, KeyError) as err:
            first = (str(err).strip().splitlines() or [type(err).__name__])[0]
            raise ArtifactError(
                path,
                f"holds weights that do not fit a {arch} with {len(names)} classes ({first[:200]})",
                "the weights of the architecture it names",
            ) from None
    return net


def classifier_model(path: Path, blob: dict, net: nn.Module, card: dict, *, weights: bool = True) -> Model:
    """The Model of a classifier: ``net`` (:func:`classifier_net` of the payload ``blob`` read from
    ``path``) and the artifact's ``card``."""
    info: dict[str, Any] = {"source": str(path), "card": card, "arch": blob["arch"]}
    if not weights:
        info.update(weights="not loaded", fingerprint=card.get("fingerprint"))
    return Model(
        net,
        input_shape=(3, blob["size"], blob["size"]),
        action_names=blob["class_names"],
        score_kind="class_logits",
        obs_scale=255.0,
        input_range=(0.0, 1.0),
        info=info,
    )
