"""RExL as its authors ran it on multi-label data (VOC/COCO): each present class scored by its own
sigmoid probability, every present class explained; the multi-label shapes generator; old run
folders and agents keep working."""

import json

import numpy as np
import pytest
import torch
from torch import nn

from xrl.agents.masking import MaskingBatch
from xrl.agents.model import as_model
from xrl.data.shapes import CLASSES, make_multi_shapes
from xrl.explainers import get_explainer

SIZE, GRID, CELL = 16, 4, 4  # 16x16 images, 4x4 grid of 4x4-pixel cells


class MultiLabelNet(nn.Module):
    """A tiny seeded conv net with 4 logits, read as independent sigmoids (multi-label)."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.body = nn.Sequential(
            nn.Conv2d(3, 4, 5, stride=2, padding=2), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 8 * 8, 4)
        )

    def forward(self, x):
        return 3 * self.body(x)


@pytest.fixture(scope="module")
def data():
    d = make_multi_shapes(6, size=SIZE, seed=3)
    return torch.from_numpy(d.images).float() / 255, torch.from_numpy(d.labels)


def masked_by_hand(image, noise, cells):
    out = image.clone()
    for a in cells:
        r, c = divmod(int(a), GRID)
        out[:, r * CELL : (r + 1) * CELL, c * CELL : (c + 1) * CELL] = noise[
            :, r * CELL : (r + 1) * CELL, c * CELL : (c + 1) * CELL
        ]
    return out


def sigmoid_prob(net, image, c):
    with torch.no_grad():
        logit = net(image[None])[0, c]
    return 1.0 / (1.0 + torch.exp(-logit)).item()


def test_multi_label_shapes_are_seeded_and_consistent():
    a, b = make_multi_shapes(30, size=32, seed=1), make_multi_shapes(30, size=32, seed=1)
    assert np.array_equal(a.images, b.images) and np.array_equal(a.labels, b.labels)
    assert a.labels.shape == (30, len(CLASSES)) and a.masks.shape == (30, len(CLASSES), 32, 32)
    counts = a.labels.sum(1)
    assert counts.min() >= 1 and counts.max() <= 3 and (counts > 1).any()
    assert np.array_equal(a.masks.any((2, 3)), a.labels.astype(bool))  # a mask exactly for each present class
    assert not (a.masks.sum(1) > 1).any()  # objects do not overlap
    assert not np.array_equal(make_multi_shapes(30, size=32, seed=2).images, a.images)


def test_sigmoid_reward_is_the_drop_of_each_present_class_probability(data):
    images, labels = data
    net = MultiLabelNet()
    model = as_model(net, input_shape=(3, SIZE, SIZE))
    rows, classes = torch.nonzero(labels, as_tuple=True)  # one episode per present class
    batch = MaskingBatch(model, images, grid=GRID, score="sigmoid")
    noise = torch.rand(len(rows), 3, SIZE, SIZE, generator=torch.Generator().manual_seed(1))
    batch.reset(rows, classes, noise=noise)
    order = torch.stack(
        [torch.randperm(GRID * GRID, generator=torch.Generator().manual_seed(i)) for i in range(len(rows))], 1
    )
    previous = [sigmoid_prob(net, images[r], c) for r, c in zip(rows.tolist(), classes.tolist())]
    assert batch.probs.tolist() == pytest.approx(previous, rel=1e-5)
    softmax = model(images[rows]).softmax(-1).gather(1, classes[:, None])[:, 0]
    assert not torch.allclose(softmax, batch.probs)  # another score than the softmax
    for t in range(6):
        _, rewards, _ = batch.step(order[t])
        for k, (r, c) in enumerate(zip(rows.tolist(), classes.tolist())):
            p = sigmoid_prob(net, masked_by_hand(images[r], noise[k], order[: t + 1, k]), c)
            assert rewards[k].item() == pytest.approx(-p, rel=1e-5, abs=1e-7)  # Eq. 1: r_t = -p_c(s_t)
            drop = previous[k] - p
            assert rewards[k].item() - (-previous[k]) == pytest.approx(drop, abs=1e-6)  # r_t - r_{t-1} = the drop
            previous[k] = p


@pytest.fixture(scope="module")
def ordered_agent(tmp_path_factory):
    """A (dataset-specific, sigmoid) agent whose policy prefers cell 0, then 1, ... (bias only)."""
    from xrl.train.rexl import untrained_agent

    model = as_model(MultiLabelNet(), input_shape=(3, SIZE, SIZE))
    path = untrained_agent(
        model, tmp_path_factory.mktemp("agent") / "rexl.pt", grid=GRID, extractor=nn.Flatten(), score="sigmoid"
    )
    blob = torch.load(path, weights_only=True)
    blob["state_dict"]["pi.weight"].zero_()
    blob["state_dict"]["pi.bias"].copy_(torch.arange(GRID * GRID, 0, -1).float())
    torch.save(blob, path)
    return model, path


def test_every_present_class_is_explained_from_its_sigmoid_drops(data, ordered_agent):
    images, labels = data
    model, path = ordered_agent
    explainer = get_explainer("rexl", model, agent=str(path), extractor=nn.Flatten(), lam=0.0)
    assert explainer.score == "sigmoid"  # read from the agent file
    maps, rows, classes = explainer.explain_present(images, labels)
    expected_rows, expected_classes = torch.nonzero(labels, as_tuple=True)
    assert torch.equal(rows, expected_rows) and torch.equal(classes, expected_classes)
    assert maps.shape == (int(labels.sum()), SIZE, SIZE)
    noise = torch.rand(1, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(explainer.seed))[0]  # uniform [0, 1]
    net = model  # its logits; the probability is computed here
    for k, (r, c) in enumerate(zip(rows.tolist(), classes.tolist())):
        # the agent masks cells 0, 1, ..., 15; with lambda 0 a cell's weight is the drop it caused
        probs = [sigmoid_prob(net, masked_by_hand(images[r], noise, range(t)), c) for t in range(GRID * GRID + 1)]
        drops = torch.tensor(probs[:-1]) - torch.tensor(probs[1:])
        total = drops.sum() if drops.sum() > 0 else drops.abs().sum()
        assert maps[k, ::CELL, ::CELL].flatten().tolist() == pytest.approx((drops / total).tolist(), abs=1e-4)
        single = explainer.explain(images[r : r + 1], c)  # explain(states, targets=k): the same map
        assert torch.allclose(
            single[0], maps[k], atol=1e-5
        )  # float32: batched and single passes round apart (3e-6 seen)
    # None: the classes the model finds (sigmoid > 0.5); an image with none gets no map
    found = torch.sigmoid(model(images)) > 0.5
    _, rows_found, classes_found = explainer.explain_present(images)
    assert torch.equal(torch.stack([rows_found, classes_found]), torch.stack(torch.nonzero(found, as_tuple=True)))
    with pytest.raises(ValueError, match=r"present must be \(B, C\)"):
        explainer.explain_present(images, labels[:, :2])
    with pytest.raises(ValueError, match="trained to lower the sigmoid probability"):
        get_explainer("rexl", model, agent=str(path), extractor=nn.Flatten(), score="softmax")


def test_an_agent_saved_before_scores_explains_with_the_softmax(ordered_agent, data):
    model, path = ordered_agent
    blob = torch.load(path, weights_only=True)
    del blob["score"]  # what agents trained before multi-label support hold
    old = path.with_name("old.pt")
    torch.save(blob, old)
    explainer = get_explainer("rexl", model, agent=str(old), extractor=nn.Flatten())
    assert explainer.score == "softmax"
    assert get_explainer("rexl", model, agent=str(old), extractor=nn.Flatten(), score="sigmoid").score == "sigmoid"


@pytest.fixture(scope="module")
def classifier(tmp_path_factory):
    from xrl.classifiers import ShapesCNN, load_classifier, save_classifier

    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("cls") / "classifier.pt"
    save_classifier(ShapesCNN(4), path, arch="shapes_cnn", size=SIZE, class_names=list(CLASSES), card={})
    return path, load_classifier(path)


def small_args(classifier, out, **kw):
    from xrl.train.rexl import RExLArgs

    settings = dict(
        model=str(classifier[0]),
        out=str(out),
        data="multishapes",
        grid=GRID,
        n_envs=2,
        n_steps=16,
        total_steps=2 * 32,
        n_images=8,
        replay_start=32,
        checkpoint_every=1,
        progress=False,
    )
    return RExLArgs(**{**settings, **kw})


def test_training_on_multi_label_data_explains_every_present_class(classifier, tmp_path):
    from xrl.agents.rexl import load_rexl_agent
    from xrl.train.rexl import episode_rows, train_rexl, training_images

    args = small_args(classifier, tmp_path / "ml")
    images, targets, image_of, score = training_images(args, classifier[1])
    labels = torch.from_numpy(make_multi_shapes(8, size=SIZE, seed=0).labels)
    assert score == "sigmoid" and len(images) == 8
    assert torch.equal(torch.stack([image_of, targets]), torch.stack(torch.nonzero(labels, as_tuple=True)))
    cs = episode_rows(small_args(classifier, tmp_path, mode="cs", target_class=2), targets, 4, image_of)
    assert set(image_of[cs].tolist()) == set(torch.nonzero(labels[:, 2]).flatten().tolist())
    path = train_rexl(args)
    agent, record = load_rexl_agent(path, classifier[1])
    assert record["score"] == "sigmoid" and agent.classes == sorted(set(targets.tolist()))


def test_a_run_recorded_before_the_score_setting_resumes(classifier, tmp_path):
    from xrl.train.rexl import train_rexl

    run = tmp_path / "old"
    train_rexl(small_args(classifier, run, data="shapes", total_steps=32))
    config = run / "args.json"
    settings = json.loads(config.read_text())
    del settings["score"]
    config.write_text(json.dumps(settings))
    train_rexl(small_args(classifier, run, data="shapes", total_steps=64))  # resumes, not refused
    assert json.loads((run / "history.json").read_text())["updates"][-1]["update"] == 2
    with pytest.raises(ValueError, match="other settings"):
        train_rexl(small_args(classifier, run, data="shapes", total_steps=96, score="sigmoid"))
