"""Image classifiers as xrl Models: torchvision architectures with a user's weights file, image
folders (single- or multi-label), and a small CNN trained on the generated shapes dataset.

* :func:`torchvision_classifier` builds any torchvision classification architecture with
  ``weights=None`` (and ``weights_backbone=None`` where the builder has it): nothing is ever
  downloaded. A user's weights file is loaded with ``weights_only=True``. The ImageNet
  normalisation is a layer inside the Model, so states stay images in ``[0, 1]``.
* :func:`load_image_folder` reads ``root/<class>/*.png|jpg`` (one label per image) or, with
  ``labels.json`` (``{"file": ["class", ...]}``) in ``root``, multi-label VOC-style data.
* :class:`ClassifierArgs` / :func:`train_classifier` (``xrl train classifier``): Adam on the
  shapes dataset (``data="shapes"``) or an image folder, a checkpoint per epoch, resumes, the best
  validation accuracy exported as ``classifier.pt`` + card; :func:`load_classifier` reads it.
* :func:`trunk_of` gives a classifier's convolutional trunk (RExL's default feature extractor).
"""
from __future__ import annotations

import dataclasses
import inspect
import json
import math
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

import xrl
from xrl.agents.model import Model
from xrl.files import atomic_path, check_run_settings, write_json

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
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1))

    def forward(self, states: torch.Tensor) -> torch.Tensor:
        return self.net((states - self.mean) / self.std)


def build_torchvision(arch: str, n_classes: int) -> nn.Module:
    """A torchvision classification architecture, randomly initialised: ``weights=None`` and,
    where the builder takes it, ``weights_backbone=None``."""
    import torchvision
    if arch not in torchvision.models.list_models(module=torchvision.models):
        raise ValueError(f"unknown torchvision classification architecture {arch!r}; known: "
                         f"{torchvision.models.list_models(module=torchvision.models)}")
    builder = torchvision.models.get_model_builder(arch)
    kwargs = {"weights": None, "num_classes": int(n_classes)}
    if "weights_backbone" in inspect.signature(builder).parameters:
        kwargs["weights_backbone"] = None
    return builder(**kwargs)


def torchvision_classifier(arch: str, weights: str | Path | None, *, n_classes: int, input_size: int = 224,
                           class_names: list[str] | None = None, mean=IMAGENET_MEAN, std=IMAGENET_STD) -> Model:
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
    return Model(Normalized(net, mean, std), input_shape=(3, input_size, input_size), action_names=class_names,
                 score_kind="class_logits", obs_scale=255.0,
                 info={"source": str(weights) if weights else f"torchvision:{arch}", "arch": arch})


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
        return _NormalizedTrunk(model.net, net.features)
    policy = getattr(model.net, "policy", None)  # xrl.agents.load._ActorScores
    if policy is not None:
        extractor = getattr(policy, "pi_features_extractor", None) or policy.q_net.features_extractor
        return extractor
    raise ValueError(f"xrl does not know the trunk of {type(net).__name__}; pass a feature extractor module "
                     "(extractor=) or a torchvision backbone name (extractor='resnet18')")


class _NormalizedTrunk(nn.Module):
    def __init__(self, normalized: Normalized, trunk: nn.Module) -> None:
        super().__init__()
        self.normalized, self.trunk = normalized, trunk

    def forward(self, states: torch.Tensor) -> torch.Tensor:
        return self.trunk((states - self.normalized.mean) / self.normalized.std)


# ------------------------------------------------------------------ image folders


def load_image_folder(root: str | Path, *, size: int) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """``(images (N, 3, size, size) uint8, labels, class_names)`` from an image folder.

    ``root/<class>/*.{png,jpg,jpeg}``: ``labels (N,)`` int64. With ``root/labels.json`` mapping
    each file (relative to root) to a list of class names: multi-label, ``labels (N, C)`` 0/1 int64
    (classes sorted by name). Images are converted to RGB and resized (bilinear) to the side.
    """
    from PIL import Image
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"image folder {root} does not exist")
    index = root / "labels.json"
    if index.exists():
        table = json.loads(index.read_text())
        names = sorted({c for classes in table.values() for c in classes})
        files = sorted(table)
        labels = np.zeros((len(files), len(names)), dtype=np.int64)
        for i, f in enumerate(files):
            labels[i, [names.index(c) for c in table[f]]] = 1
        paths = [root / f for f in files]
    else:
        names = sorted(p.name for p in root.iterdir() if p.is_dir())
        paths, label_list = [], []
        for k, name in enumerate(names):
            for p in sorted((root / name).iterdir()):
                if p.suffix.lower() in (".png", ".jpg", ".jpeg"):
                    paths.append(p)
                    label_list.append(k)
        labels = np.asarray(label_list, dtype=np.int64)
    if not paths:
        raise ValueError(f"no images in {root}: expected root/<class>/*.png|jpg or root/labels.json")
    images = np.stack([np.asarray(Image.open(p).convert("RGB").resize((size, size), Image.BILINEAR)).transpose(2, 0, 1)
                       for p in paths])
    return images, labels, names


# ------------------------------------------------------------------ training


@dataclass
class ClassifierArgs:
    data: str = "shapes"
    """training images: shapes (the generated dataset) or an image folder"""
    out: str = "runs/shapes-classifier"
    """run folder: checkpoint.pt, history.json, args.json, then classifier.pt and classifier.json"""
    arch: str = "shapes_cnn"
    """shapes_cnn or a torchvision classification architecture (weights=None)"""
    size: int = 56
    """image side"""
    n_train: int = 4000
    """shapes only: training images"""
    n_val: int = 500
    """shapes only: validation images (an image folder holds out 10%)"""
    epochs: int = 10
    """passes over the training images"""
    batch_size: int = 64
    """images per step"""
    learning_rate: float = 1e-3
    """Adam step size"""
    seed: int = 0
    """seed of the data, the initialisation and the shuffling"""
    progress: bool = True


def _data(args: ClassifierArgs):
    if args.data == "shapes":
        from xrl.data import shapes
        train, val = shapes.split("train", args.n_train, size=args.size, seed=args.seed), \
            shapes.split("val", args.n_val, size=args.size, seed=args.seed)
        return train.images, train.labels, val.images, val.labels, list(shapes.CLASSES)
    images, labels, names = load_image_folder(args.data, size=args.size)
    perm = np.random.default_rng(args.seed).permutation(len(images))
    n_val = max(1, len(images) // 10)
    return images[perm[n_val:]], labels[perm[n_val:]], images[perm[:n_val]], labels[perm[:n_val]], names


def _net(arch: str, n_classes: int) -> nn.Module:
    if arch == "shapes_cnn":
        return ShapesCNN(n_classes)
    return Normalized(build_torchvision(arch, n_classes), IMAGENET_MEAN, IMAGENET_STD)


def _loss(scores: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    if labels.dim() == 2:  # multi-label
        return F.binary_cross_entropy_with_logits(scores, labels.float())
    return F.cross_entropy(scores, labels)


@torch.no_grad()
def _accuracy(net: nn.Module, images: np.ndarray, labels: np.ndarray) -> float:
    net.eval()
    scores = torch.cat([net(torch.from_numpy(images[i:i + 256]).float() / 255) for i in range(0, len(images), 256)])
    labels = torch.as_tensor(labels)
    if labels.dim() == 2:
        return float(((scores > 0).long() == labels).float().mean())
    return float((scores.argmax(-1) == labels).float().mean())


def train_classifier(args: ClassifierArgs, *, stop_at: int | None = None) -> Path:
    """Train (or resume) a classifier; returns ``out/classifier.pt`` (the best validation accuracy)."""
    run = Path(args.out)
    check_run_settings(run, dataclasses.asdict(args), ignore={"epochs", "progress", "out"})
    x_train, y_train, x_val, y_val, names = _data(args)
    torch.manual_seed(args.seed)
    net = _net(args.arch, len(names))
    optimiser = torch.optim.Adam(net.parameters(), lr=args.learning_rate)
    start, history, best = 0, {"epochs": []}, None
    if (run / "checkpoint.pt").exists():
        blob = torch.load(run / "checkpoint.pt", map_location="cpu", weights_only=True)
        net.load_state_dict(blob["net"])
        optimiser.load_state_dict(blob["optimiser"])
        start, history, best = blob["epoch"], json.loads(blob["history"]), json.loads(blob["best"])
    steps = math.ceil(len(x_train) / args.batch_size)
    bar = tqdm(total=args.epochs * steps, initial=start * steps, unit="step", desc=f"classifier ({len(x_train)} images)",
               disable=not args.progress)
    started = time.time()
    for epoch in range(start, args.epochs):
        net.train()
        order = torch.randperm(len(x_train), generator=torch.Generator().manual_seed(args.seed * 100_003 + epoch))
        total = 0.0
        for i, rows in enumerate(torch.tensor_split(order, steps)):
            x = torch.from_numpy(x_train[rows.numpy()]).float() / 255
            loss = _loss(net(x), torch.as_tensor(y_train[rows.numpy()]))
            if not math.isfinite(loss.item()):
                raise FloatingPointError(f"classifier loss became {loss.item()} at epoch {epoch + 1}; the last good "
                                         f"checkpoint (epoch {epoch}) is kept in {run}; lower learning_rate")
            optimiser.zero_grad(set_to_none=True)
            loss.backward()
            optimiser.step()
            total += loss.item()
            bar.update(1)
            bar.set_postfix(loss=f"{total / (i + 1):.4f}")
        record = {"epoch": epoch + 1, "train_loss": total / steps, "val_accuracy": _accuracy(net, x_val, y_val)}
        history["epochs"].append(record)
        bar.write(f"epoch {epoch + 1}: loss {record['train_loss']:.4f}, validation accuracy {record['val_accuracy']:.3f}")
        if best is None or record["val_accuracy"] > best["val_accuracy"]:
            best = record
            save_classifier(net, run / "classifier.pt", arch=args.arch, size=args.size, class_names=names,
                            card=_card(args, best, names))
        with atomic_path(run / "checkpoint.pt") as tmp:
            torch.save({"epoch": epoch + 1, "net": net.state_dict(), "optimiser": optimiser.state_dict(),
                        "history": json.dumps(history), "best": json.dumps(best)}, tmp)
        write_json(run / "history.json", history)
        if stop_at is not None and epoch + 1 >= stop_at:
            break
    bar.close()
    history["train_seconds_last_run"] = round(time.time() - started, 1)
    write_json(run / "history.json", history)
    return run / "classifier.pt"


def _card(args: ClassifierArgs, best: dict, names: list[str]) -> dict:
    flags = " ".join(f"--{f.name.replace('_', '-')} {getattr(args, f.name)}" for f in dataclasses.fields(args)
                     if f.name != "progress" and getattr(args, f.name) != f.default)
    return {"what": f"{args.arch} image classifier on {args.data}", "class_names": names,
            "settings": {k: v for k, v in dataclasses.asdict(args).items() if k != "progress"},
            "command": f"xrl train classifier {flags}".strip(), "score": best, "xrl_version": xrl.__version__}


def save_classifier(net: nn.Module, path: str | Path, *, arch: str, size: int, class_names: list[str], card: dict) -> None:
    """``path`` (``format="xrl.classifier"``) and its card ``path.with_suffix(".json")``, atomically."""
    path = Path(path)
    with atomic_path(path) as tmp:
        torch.save({"format": FORMAT, "arch": arch, "size": int(size), "class_names": list(class_names),
                    "state_dict": net.state_dict()}, tmp)
    write_json(path.with_suffix(".json"), card)


def load_classifier(path: str | Path) -> Model:
    """A classifier saved by :func:`train_classifier` as a Model of ``(B, 3, size, size)`` images in [0, 1]."""
    path = Path(path)
    blob = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(blob, dict) or blob.get("format") != FORMAT:
        raise ValueError(f"{path} is not an xrl classifier (format={FORMAT!r}, written by xrl train classifier)")
    net = _net(blob["arch"], len(blob["class_names"]))
    net.load_state_dict(blob["state_dict"])
    card_path = path.with_suffix(".json")
    card = json.loads(card_path.read_text()) if card_path.exists() else {}
    return Model(net, input_shape=(3, blob["size"], blob["size"]), action_names=blob["class_names"],
                 score_kind="class_logits", obs_scale=255.0, info={"source": str(path), "card": card, "arch": blob["arch"]})
