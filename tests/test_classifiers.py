"""Image classifiers: the generated shapes dataset, torchvision loading (nothing downloaded), image
folders (single- and multi-label), classifier training resumes, trunks."""

import json

import numpy as np
import pytest
import torch
from PIL import Image

from xrl.classifiers import ShapesCNN, load_classifier, torchvision_classifier, trunk_of
from xrl.data.shapes import CLASSES, make_shapes, object_labels, shape_mask, split
from xrl.train.classifier import ClassifierArgs, load_image_folder, train_classifier
from xrl.train.run import latest_checkpoint


def test_shapes_are_a_function_of_the_seed_and_masks_are_the_objects():
    a, b = make_shapes(8, size=32, seed=3), make_shapes(8, size=32, seed=3)
    assert np.array_equal(a.images, b.images) and np.array_equal(a.labels, b.labels)
    assert not np.array_equal(a.images, make_shapes(8, size=32, seed=4).images)
    assert a.images.shape == (8, 3, 32, 32) and a.images.dtype == np.uint8 and a.masks.shape == (8, 32, 32)
    assert sorted(np.bincount(a.labels, minlength=len(CLASSES)).tolist()) == [2, 2, 2, 2]
    for image, mask in zip(a.images, a.masks):  # every object pixel has the object's single colour
        assert mask.sum() > 5 and len(np.unique(image[:, mask].T, axis=0)) == 1
    labels = object_labels(a.masks)
    assert labels.dtype == torch.int8 and set(labels.unique().tolist()) == {0, 1}
    assert not np.array_equal(split("train", 4, size=32).images, split("test", 4, size=32).images)


def test_shape_masks_by_hand():
    circle = shape_mask("circle", 9, 4, 4, 2)
    assert circle[4, 6] and not circle[4, 7] and circle.sum() == 13  # radius 2: 13 lattice points
    square = shape_mask("square", 9, 4, 4, 2.5)  # half side 2
    assert square.sum() == 25
    with pytest.raises(ValueError, match="shape kind"):
        shape_mask("star", 9, 4, 4, 2)


def test_torchvision_classifier_builds_without_download_and_loads_user_weights(tmp_path, monkeypatch):
    import torch.hub

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", lambda *a, **k: pytest.fail("tried to download"))
    torch.manual_seed(0)
    model = torchvision_classifier("resnet18", None, n_classes=3, input_size=32)
    torch.save(model.net.net.state_dict(), tmp_path / "w.pt")
    loaded = torchvision_classifier(
        "resnet18", tmp_path / "w.pt", n_classes=3, input_size=32, class_names=["a", "b", "c"]
    )
    x = torch.rand(2, 3, 32, 32)
    assert torch.allclose(model(x), loaded(x)) and loaded.action_names == ["a", "b", "c"]
    assert trunk_of(loaded)(x).shape == (2, 512, 1, 1)
    with pytest.raises(ValueError, match="not a state_dict of resnet18 with 5 classes"):
        torchvision_classifier("resnet18", tmp_path / "w.pt", n_classes=5, input_size=32)
    with pytest.raises(ValueError, match="unknown torchvision classification architecture"):
        torchvision_classifier("nosuchnet", None, n_classes=3)


def _write_png(path, colour):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((10, 12, 3), colour, dtype=np.uint8)).save(path)


def test_image_folder_single_and_multi_label(tmp_path):
    _write_png(tmp_path / "one" / "cat" / "a.png", 10)
    _write_png(tmp_path / "one" / "dog" / "b.png", 200)
    _write_png(tmp_path / "one" / "dog" / "c.png", 90)
    images, labels, names = load_image_folder(tmp_path / "one", size=8)
    assert images.shape == (3, 3, 8, 8) and names == ["cat", "dog"] and labels.tolist() == [0, 1, 1]
    assert images[1].min() == 200
    _write_png(tmp_path / "voc" / "x.png", 0)
    _write_png(tmp_path / "voc" / "y.png", 0)
    (tmp_path / "voc" / "labels.json").write_text(json.dumps({"x.png": ["person", "dog"], "y.png": ["cat"]}))
    images, labels, names = load_image_folder(tmp_path / "voc", size=8)
    assert names == ["cat", "dog", "person"] and labels.tolist() == [[0, 1, 1], [1, 0, 0]]
    with pytest.raises(ValueError, match="no images"):
        (tmp_path / "empty").mkdir()
        load_image_folder(tmp_path / "empty", size=8)


def test_classifier_training_resumes_to_the_same_weights(tmp_path):
    settings = dict(size=16, n_train=48, n_val=16, batch_size=16, progress=False)
    full = train_classifier(ClassifierArgs(out=str(tmp_path / "full"), epochs=2, **settings))
    train_classifier(ClassifierArgs(out=str(tmp_path / "part"), epochs=2, **settings), stop_at=1)
    part = train_classifier(ClassifierArgs(out=str(tmp_path / "part"), epochs=2, **settings))
    a, b = (torch.load(latest_checkpoint(tmp_path / name) / "state.pt", weights_only=True) for name in ("full", "part"))
    assert latest_checkpoint(tmp_path / "part").name == f"{2:012d}"
    for k, v in a["net"].items():
        assert torch.equal(v, b["net"][k]), k
    model = load_classifier(full)
    assert (
        model.input_shape == (3, 16, 16) and model.action_names == list(CLASSES) and model.score_kind == "class_logits"
    )
    assert isinstance(model.net, ShapesCNN) and trunk_of(model) is model.net.trunk
    card = json.loads(full.with_suffix(".json").read_text())
    assert card["command"].startswith("xrl train classifier") and "--size 16" in card["command"]
    assert part.exists()
    with pytest.raises(ValueError, match="not an xrl classifier"):
        load_classifier(latest_checkpoint(tmp_path / "full") / "state.pt")


def test_classifiers_names_the_model_and_points_to_the_trainer():
    """xrl.classifiers is the public face of the model (xrl.agents.classifier); the trainer lives
    in xrl.train.classifier, and asking the face for it says where."""
    import xrl.agents.classifier
    import xrl.classifiers
    import xrl.train.classifier

    for name in xrl.classifiers.__all__:
        assert getattr(xrl.classifiers, name) is getattr(xrl.agents.classifier, name)
    for name in ("ClassifierArgs", "train_classifier", "load_image_folder"):
        assert callable(getattr(xrl.train.classifier, name))
        with pytest.raises(AttributeError, match=f"xrl.train.classifier.{name}"):
            getattr(xrl.classifiers, name)
    with pytest.raises(AttributeError, match="no_such_name"):
        _ = xrl.classifiers.no_such_name
