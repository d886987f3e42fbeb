"""Image classifiers as xrl Models: the public names. The code lives with the other models in
:mod:`xrl.agents.classifier` (architectures, ``classifier.pt`` save/load, ``trunk_of``); the
trainer and the image-folder reader in :mod:`xrl.train.classifier` (``xrl train classifier``)."""

from xrl.agents.classifier import (
    FORMAT,
    IMAGENET_MEAN,
    IMAGENET_STD,
    Normalized,
    ShapesCNN,
    build_net,
    build_torchvision,
    load_classifier,
    save_classifier,
    torchvision_classifier,
    trunk_of,
)

__all__ = [
    "FORMAT",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "Normalized",
    "ShapesCNN",
    "build_net",
    "build_torchvision",
    "load_classifier",
    "save_classifier",
    "torchvision_classifier",
    "trunk_of",
]

#: the trainer's names, which live in :mod:`xrl.train.classifier`
_TRAINER = ("ClassifierArgs", "train_classifier", "load_image_folder")


def __getattr__(name: str):
    if name in _TRAINER:
        raise AttributeError(f"xrl.classifiers has no {name}: the trainer is xrl.train.classifier.{name}")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
