"""Sanity checks (Adebayo et al. 2018): Spearman against scipy, the original model untouched,
a model-dependent method passes, model-independent maps are flagged, determinism, the table line."""

from __future__ import annotations

import copy
import pickle

import numpy as np
import pytest
import scipy.stats
import torch
import torch.nn.functional as F
from torch import nn

from xrl.agents.model import as_model
from xrl.data.dataset import StateDataset, StateDatasetWriter
from xrl.evaluation import evaluate
from xrl.explainers import get_explainer
from xrl.explainers.base import Explainer
from xrl.metrics import get_metric
from xrl.metrics.sanity import average_ranks, map_correlation, spearman

LAYERS = ["head", "features.2", "features.0"]  # top (logit) layer first


class SmallCNN(nn.Module):
    def __init__(self):
        super().__init__()
        self.head = nn.Linear(6 * 8 * 8, 3)  # registered first, called last: forward order counts
        self.features = nn.Sequential(
            nn.Conv2d(2, 6, 3, padding=1), nn.ReLU(), nn.Conv2d(6, 6, 3, padding=1), nn.ReLU(), nn.Flatten()
        )
        self.unused = nn.Linear(4, 4)  # never called: does not compute the scores

    def forward(self, x):
        return self.head(self.features(x))


def small_cnn(seed: int = 0):
    torch.manual_seed(seed)
    return as_model(SmallCNN(), input_shape=(2, 8, 8), n_actions=3)


def states(n: int = 4, seed: int = 1) -> torch.Tensor:
    return torch.rand(n, 2, 8, 8, generator=torch.Generator().manual_seed(seed))


class Edges(Explainer):
    """Sobel edge magnitude of the state's first channel: a map that ignores the model."""

    def _explain(self, states, target_fn):
        kx = torch.tensor([[1.0, 0, -1], [2, 0, -2], [1, 0, -1]]).to(states)
        k = torch.stack([kx, kx.T]).unsqueeze(1)  # (2, 1, 3, 3)
        g = F.conv2d(F.pad(states[:, :1], (1, 1, 1, 1), mode="replicate"), k)
        return g.square().sum(1).sqrt()


def sanity(name_or_explainer, model, x, **settings):
    explainer = get_explainer(name_or_explainer, model) if isinstance(name_or_explainer, str) else name_or_explainer
    return get_metric("sanity", **settings)(states=x, saliency=explainer.explain(x), explainer=explainer)


# -- Spearman -------------------------------------------------------------------------------------


def test_spearman_matches_scipy_with_ties():
    gen = torch.Generator().manual_seed(0)
    a = torch.randint(0, 5, (6, 40), generator=gen).float()  # many ties
    b = torch.randint(0, 3, (6, 40), generator=gen).float() + 0.1 * a
    b[0] = a[0] * 2  # a monotone copy: exactly 1
    got = spearman(a, b)
    want = [scipy.stats.spearmanr(x, y).statistic for x, y in zip(a.numpy(), b.numpy())]
    np.testing.assert_allclose(got.numpy(), want, rtol=0, atol=1e-12)
    assert got.dtype == torch.float64 and got[0] == 1.0
    ranks = average_ranks(torch.tensor([[3.0, 1.0, 3.0, 2.0, 3.0]]))
    assert ranks.tolist() == [[4.0, 1.0, 4.0, 2.0, 4.0]]
    np.testing.assert_array_equal(average_ranks(a).numpy(), np.stack([scipy.stats.rankdata(x) for x in a]))
    assert spearman(torch.ones(1, 5), torch.rand(1, 5)).isnan().all()  # as scipy: undefined
    # the metric's convention for constant maps: both constant 1, one constant 0; signs ignored
    maps = torch.rand(3, 2, 3)
    flat = torch.zeros(3, 2, 3)
    assert map_correlation(
        torch.cat([flat[:1], flat[:1], maps[:1]]), torch.cat([flat[:1] + 2, maps[1:2], -maps[:1]])
    ).tolist() == [1.0, 0.0, 1.0]


# -- the original model ---------------------------------------------------------------------------


def test_the_original_model_is_untouched():
    model = small_cnn()
    model.train()
    model.net.head.weight.grad = torch.ones_like(model.net.head.weight)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    x = states()
    x_before = x.clone()
    sanity("gradient", model, x)
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]) and v.dtype == before[k].dtype, k  # bitwise
    assert all(m.training for m in model.modules())
    assert torch.equal(model.net.head.weight.grad, torch.ones_like(model.net.head.weight))
    assert all(not m._forward_hooks for m in model.modules())
    assert torch.equal(x, x_before)


# -- known values -----------------------------------------------------------------------------------


def test_gradient_passes():
    v = sanity("gradient", small_cnn(), states())
    assert set(v) == {"cascading", "independent", "passed"}
    assert all(t.shape == (4,) and t.dtype == torch.float32 for t in v.values())
    assert (v["cascading"] < 0.5).all(), v
    assert (v["passed"] == 1).all()
    assert (v["independent"] < 1).all()


@pytest.mark.parametrize("explainer", ["random", Edges])
def test_maps_independent_of_the_model_are_flagged(explainer):
    model = small_cnn()
    explainer = get_explainer(explainer, model) if isinstance(explainer, str) else explainer(model)
    v = sanity(explainer, model, states())
    assert v["cascading"].tolist() == [1.0] * 4  # the known value: nothing changes
    assert v["independent"].tolist() == [1.0] * 4
    assert v["passed"].tolist() == [0.0] * 4  # flagged


def test_curves_start_at_one_and_run_top_layer_first():
    model, x = small_cnn(), states(3)
    curves = get_metric("sanity").curves(states=x, explainer=get_explainer("gradient", model, reduce="sum"))
    assert curves.layers == LAYERS  # forward order reversed; the unused decoy is not a layer
    assert curves.cascading.shape == (3, 4) and curves.independent.shape == (3, 3)
    assert curves.cascading[:, 0].tolist() == [1.0] * 3  # 0 layers randomized: exactly 1
    assert (curves.cascading[:, 1:] < 1).all()
    v = get_metric("sanity")(
        states=x,
        saliency=get_explainer("gradient", model, reduce="sum").explain(x),
        explainer=get_explainer("gradient", model, reduce="sum"),
    )
    torch.testing.assert_close(v["cascading"], curves.cascading[:, -1].float())
    torch.testing.assert_close(v["independent"], curves.independent.mean(1).float())


def test_deterministic_with_a_seed_and_batch_free():
    model, x = small_cnn(), states()
    first = sanity("gradient", model, x, seed=3)
    again = sanity("gradient", model, x, seed=3)
    other = sanity("gradient", model, x, seed=4)
    for k in first:
        assert torch.equal(first[k], again[k]), k
    assert not torch.equal(first["cascading"], other["cascading"])
    alone = sanity("gradient", model, x[2:3], seed=3)
    torch.testing.assert_close(alone["cascading"], first["cascading"][2:3])


def test_layers_setting_and_targets():
    model, x = small_cnn(), states(2)
    explainer = get_explainer("gradient", model)
    metric = get_metric("sanity", layers=["features.0", "head"])
    assert metric.curves(states=x, explainer=explainer).layers == ["head", "features.0"]
    values = metric(states=x, saliency=explainer.explain(x, 1), explainer=explainer, targets=1)
    assert values["cascading"].isfinite().all()
    values = metric(
        states=x,
        saliency=explainer.explain(x, lambda s: s[:, 0] - s[:, 1]),
        explainer=explainer,
        targets=lambda s: s[:, 0] - s[:, 1],
    )
    assert values["cascading"].isfinite().all()


def test_bad_input_is_refused():
    model, x = small_cnn(), states(2)
    explainer = get_explainer("gradient", model)
    with pytest.raises(ValueError, match=r"cannot randomize \['unused'\].*\['features.0', 'features.2', 'head'\]"):
        get_metric("sanity", layers=["unused"])(states=x, saliency=explainer.explain(x), explainer=explainer)
    with pytest.raises(ValueError, match="layers must be None"):
        get_metric("sanity", layers="head")
    with pytest.raises(ValueError, match="threshold"):
        get_metric("sanity", threshold=2)
    with pytest.raises(ValueError, match="needs explainer"):
        get_metric("sanity")(states=x, saliency=explainer.explain(x))

    class Weightless(nn.Module):
        def forward(self, s):
            return s.flatten(1)[:, :3]

    flat = as_model(Weightless(), input_shape=(2, 8, 8))
    with pytest.raises(ValueError, match="uses none to compute its scores"):
        sanity("gradient", flat, x)


# -- Explainer.with_model --------------------------------------------------------------------------


def test_with_model_keeps_settings_across_copy_and_pickle():
    model, other = small_cnn(0), small_cnn(1)
    explainer = get_explainer(
        "smoothgrad", model, base="gradient", base_settings={"reduce": "sum"}, n_samples=3, seed=5
    )
    for e in (explainer, copy.deepcopy(explainer), pickle.loads(pickle.dumps(explainer))):
        rebuilt = e.with_model(other)
        assert type(rebuilt) is type(explainer) and rebuilt.model is other
        assert (rebuilt.n_samples, rebuilt.seed, rebuilt.base.reduce) == (3, 5, "sum")
    x = states(2)
    assert torch.equal(explainer.with_model(model).explain(x), explainer.explain(x))
    assert "_settings" not in repr(explainer)


# -- the evaluation table --------------------------------------------------------------------------


def test_evaluation_table_flags_insensitive_methods(tmp_path):
    model = small_cnn()
    rng = np.random.default_rng(0)
    with StateDatasetWriter(
        tmp_path / "s.h5",
        env={"name": "test", "settings": {}},
        agent={"source": "tests/tiny", "obs_scale": 255.0},
        action_names=model.action_names,
        collect={"seed": 0},
    ) as writer:
        obs = rng.integers(0, 256, (4, 2, 8, 8), dtype=np.uint8)
        with torch.no_grad():
            scores = model(torch.from_numpy(obs).float() / 255).numpy()
        writer.append(
            states=obs,
            frames=np.repeat(obs[:, :1], 3, 1).transpose(0, 2, 3, 1),
            actions=scores.argmax(1),
            scores=scores,
        )
        writer.end_episode(0.0)
        path = writer.finalize()
    with StateDataset.open(path) as ds:
        result = evaluate(model, ds, ["gradient", "random"], ["sanity"], n_states=None, progress=False)
    assert result.columns == ["sanity.cascading", "sanity.independent", "sanity.passed"]
    means = result.means()
    assert means["gradient"]["sanity.passed"] == 1.0 and means["random"]["sanity.passed"] == 0.0
    table = result.table()
    assert table.splitlines()[-1] == "flagged: random (maps barely change when the agent's weights are randomized)"
    result.values["random"]["sanity.passed"] = [1.0] * 4
    assert "flagged" not in result.table()
