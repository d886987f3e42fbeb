"""Training an image classifier (``xrl train classifier``) and reading image folders.

* :func:`load_image_folder` reads ``root/<class>/*.png|jpg`` (one label per image) or, with
  ``labels.json`` (``{"file": ["class", ...]}``) in ``root``, multi-label VOC-style data.
* :class:`ClassifierArgs` / :func:`train_classifier`: Adam on the shapes dataset
  (``data="shapes"``) or an image folder, a checkpoint per epoch, resumes, the best validation
  accuracy exported as ``classifier.pt`` + card (:func:`xrl.agents.classifier.load_classifier` reads it).
  ``device`` (``auto``: CUDA when available) holds the network and each batch; the network is
  initialised and the shuffling drawn on the CPU, checkpoints are saved on the CPU, and a run
  resumes on any device (the device is not part of the run's settings check).

The model (``ShapesCNN``, torchvision builders, ``trunk_of``) lives in :mod:`xrl.agents.classifier`.
"""

from __future__ import annotations

import dataclasses
import json
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from xrl._version import __version__
from xrl.agents.classifier import build_net, save_classifier
from xrl.ops import resolve_device
from xrl.train.acer import to_device
from xrl.train.run import Run, check_settings, command, load_tensors

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
    images = np.stack(
        [
            np.asarray(Image.open(p).convert("RGB").resize((size, size), Image.BILINEAR)).transpose(2, 0, 1)  # type: ignore[attr-defined]
            for p in paths
        ]
    )
    return images, labels, names


# ------------------------------------------------------------------ training


@dataclass
class ClassifierArgs:
    data: str = "shapes"
    """training images: shapes (the generated dataset) or an image folder"""
    out: str = "runs/shapes-classifier"
    """run folder: checkpoints/, history.json, args.json, then classifier.pt and classifier.json"""
    arch: str = "shapes_cnn"
    """shapes_cnn or a torchvision classification architecture (weights=None)"""
    size: int = 56
    """image side"""
    n_train: int = 4000
    """shapes only: training images"""
    n_val: int = 500
    """shapes only: validation images (an image folder holds out a tenth)"""
    epochs: int = 10
    """passes over the training images"""
    batch_size: int = 64
    """images per step"""
    learning_rate: float = 1e-3
    """Adam step size"""
    seed: int = 0
    """seed of the data, the initialisation and the shuffling"""
    device: str = "auto"
    """auto|cpu|cuda|cuda:N; auto = CUDA when available"""
    progress: bool = True

    LIMITS: ClassVar[dict] = {
        "size": ">=1",
        "n_train": ">=1",
        "n_val": ">=1",
        "epochs": ">=1",
        "batch_size": ">=1",
        "learning_rate": ">0",
        "seed": ">=0",
    }
    #: may change between a run and its resumption
    IGNORED: ClassVar[set] = {"epochs", "progress", "out", "device"}


def _data(args: ClassifierArgs):
    if args.data == "shapes":
        from xrl.data import shapes

        train, val = (
            shapes.split("train", args.n_train, size=args.size, seed=args.seed),
            shapes.split("val", args.n_val, size=args.size, seed=args.seed),
        )
        return train.images, train.labels, val.images, val.labels, list(shapes.CLASSES)
    images, labels, names = load_image_folder(args.data, size=args.size)
    perm = np.random.default_rng(args.seed).permutation(len(images))
    n_val = max(1, len(images) // 10)
    return images[perm[n_val:]], labels[perm[n_val:]], images[perm[:n_val]], labels[perm[:n_val]], names


def _loss(scores: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    if labels.dim() == 2:  # multi-label
        return F.binary_cross_entropy_with_logits(scores, labels.float())
    return F.cross_entropy(scores, labels)


@torch.no_grad()
def _accuracy(net: nn.Module, images: np.ndarray, labels: np.ndarray) -> float:
    net.eval()
    device = next(net.parameters()).device
    scores = torch.cat([net(_batch(images[i : i + 256], device)).cpu() for i in range(0, len(images), 256)])
    truth = torch.as_tensor(labels, device="cpu")
    if truth.dim() == 2:
        return float(((scores > 0).long() == truth).float().mean())
    return float((scores.argmax(-1) == truth).float().mean())


def _batch(images: np.ndarray, device: torch.device) -> torch.Tensor:
    """uint8 images ``(B, 3, H, W)`` as floats in [0, 1] on ``device``."""
    return torch.from_numpy(images).to(device).float() / 255


def train_classifier(args: ClassifierArgs, *, stop_at: int | None = None) -> Path:
    """Train (or resume) a classifier; returns ``out/classifier.pt`` (the best validation accuracy)."""
    check_settings(args)
    resolve_device(args.device)  # a bad or absent device is refused before anything is written
    x_train, y_train, x_val, y_val, names = _data(args)  # a bad image folder fails before anything is written
    with Run(args.out, dataclasses.asdict(args), ignore=ClassifierArgs.IGNORED, outputs=("classifier.pt",)) as run:
        return _train(args, run, x_train, y_train, x_val, y_val, names, stop_at)


def _train(args: ClassifierArgs, run: Run, x_train, y_train, x_val, y_val, names, stop_at) -> Path:
    folder = run.folder
    torch.manual_seed(args.seed)
    device = resolve_device(args.device)
    net = build_net(args.arch, len(names)).to(device)  # initialised on the CPU: the same weights on every device
    optimiser = torch.optim.Adam(net.parameters(), lr=args.learning_rate)
    history: dict[str, list] = {"epochs": []}
    start, best = 0, None
    latest = run.latest()
    saved = latest / "state.pt" if latest is not None else folder / "checkpoint.pt"  # checkpoint.pt: before run.py
    if saved.exists():
        blob = load_tensors(saved)
        net.load_state_dict(blob["net"])
        optimiser.load_state_dict(blob["optimiser"])  # torch moves its state to the parameters' device
        start, history, best = blob["epoch"], json.loads(blob["history"]), json.loads(blob["best"])
    steps = math.ceil(len(x_train) / args.batch_size)
    bar = tqdm(
        total=args.epochs * steps,
        initial=start * steps,
        unit="step",
        desc=f"classifier ({len(x_train)} images)",
        disable=not args.progress,
    )
    started = time.time()
    for epoch in range(start, args.epochs):
        net.train()
        shuffle = torch.Generator(device="cpu").manual_seed(args.seed * 100_003 + epoch)
        order = torch.randperm(len(x_train), generator=shuffle, device="cpu")
        total = 0.0
        for i, rows in enumerate(torch.tensor_split(order, steps)):
            x = _batch(x_train[rows.numpy()], device)
            loss = _loss(net(x), torch.as_tensor(y_train[rows.numpy()], device="cpu").to(device))
            if not math.isfinite(loss.item()):
                raise FloatingPointError(
                    f"classifier loss became {loss.item()} at epoch {epoch + 1}; the last good "
                    f"checkpoint (epoch {epoch}) is kept in {folder}; lower learning_rate"
                )
            optimiser.zero_grad(set_to_none=True)
            loss.backward()
            optimiser.step()
            total += loss.item()
            bar.update(1)
            bar.set_postfix(loss=f"{total / (i + 1):.4f}")
        record = {"epoch": epoch + 1, "train_loss": total / steps, "val_accuracy": _accuracy(net, x_val, y_val)}
        history["epochs"].append(record)
        bar.write(
            f"epoch {epoch + 1}: loss {record['train_loss']:.4f}, validation accuracy {record['val_accuracy']:.3f}"
        )
        if best is None or record["val_accuracy"] > best["val_accuracy"]:
            best = record
            save_classifier(
                net,
                folder / "classifier.pt",
                arch=args.arch,
                size=args.size,
                class_names=names,
                card=_card(args, best, names),
            )
        blob = {
            "epoch": epoch + 1,
            "net": to_device(net.state_dict(), "cpu"),  # loads on any device
            "optimiser": to_device(optimiser.state_dict(), "cpu"),
            "history": json.dumps(history),
            "best": json.dumps(best),
        }
        run.save(epoch + 1, lambda f: torch.save(blob, f / "state.pt"))
        if run.checkpointed(history, epoch + 1, stop_at):
            break
    bar.close()
    run.write_history(history, started=started)
    return folder / "classifier.pt"


def _card(args: ClassifierArgs, best: dict, names: list[str]) -> dict:
    return {
        "what": f"{args.arch} image classifier on {args.data}",
        "class_names": names,
        "settings": {k: v for k, v in dataclasses.asdict(args).items() if k != "progress"},
        "command": command("xrl train classifier", args),
        "score": best,
        "xrl_version": __version__,
    }
