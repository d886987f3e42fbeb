"""xrl.pipeline: explain, score, evaluate. Counts what an evaluation reads and builds (each state
row read once, each explainer built once, the model run once for ``targets="agent"``), and
checks its values against an independent explainer + metric loop written here."""

from __future__ import annotations

import json
from collections import Counter

import numpy as np
import pytest
import torch
from torch import nn

import xrl.evaluation
from xrl import pipeline
from xrl.agents.model import as_model
from xrl.data.dataset import StateDataset, StateDatasetWriter
from xrl.explainers import EXPLAINERS, get_explainer
from xrl.metrics import get_metric

N_ROWS = 10
METHODS = {"gradient": {}, "greydanus": {"radius": 2, "stride": 2}, "random": {"seed": 3}}
METRICS = {"sparseness": {}, "localization": {}, "deletion": {}, "lipschitz": {"n_samples": 2}}


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 6 * 6, 3))
    return as_model(net, input_shape=(3, 8, 8), action_names=["left", "fire", "right"])


@pytest.fixture(scope="module")
def dataset(model, tmp_path_factory):
    """Random 3x8x8 states collected 'by' ``model`` (its fingerprint recorded), with labels; the
    stored actions are not the model's argmax, so the targets asked for matter."""
    rng = np.random.default_rng(0)
    path = tmp_path_factory.mktemp("data") / "states.h5"
    agent = {"source": "tests/tiny", "obs_scale": 255.0, "fingerprint": model.fingerprint()}
    with StateDatasetWriter(
        path, env={"name": "test", "settings": {}}, agent=agent, action_names=model.action_names, collect={"seed": 0}
    ) as writer:
        for length in (6, 4):
            states = rng.integers(0, 256, (length, 3, 8, 8), dtype=np.uint8)
            with torch.no_grad():
                scores = model(torch.from_numpy(states).float() / 255).numpy()
            labels = rng.choice(np.array([-1, 0, 1], np.int8), size=(length, 8, 8))
            labels[:, 0, 0], labels[:, 0, 1] = 1, 0
            writer.append(
                states=states,
                frames=states.transpose(0, 2, 3, 1),
                actions=(scores.argmax(1) + 1) % 3,
                scores=scores,
                labels=labels,
            )
            writer.end_episode(0.0)
        path = writer.finalize()
    with StateDataset.open(path) as ds:
        yield ds


@pytest.fixture
def counted(monkeypatch, model):
    """Counters of HDF5 rows read per dataset field, explainers built per name (through the
    registry) and forward passes of the model's network."""
    reads: Counter = Counter()
    built: Counter = Counter()
    forwards: Counter = Counter()
    read, get = StateDataset._read, EXPLAINERS.get

    def counting_read(self, name, idx=None):
        out = read(self, name, idx)
        reads[name] += len(out)
        return out

    def counting_get(name):
        built[name] += 1
        return get(name)

    monkeypatch.setattr(StateDataset, "_read", counting_read)
    monkeypatch.setattr(EXPLAINERS, "get", counting_get)

    def hook(module, args, out):
        forwards["net"] += 1

    handle = model.net.register_forward_hook(hook)
    yield {"reads": reads, "built": built, "forwards": forwards}
    handle.remove()


def reference(model, states, targets, labels):
    """The per-sample values of every (method, column), each explainer and metric called
    directly on the whole batch (one chunk)."""
    out = {}
    for method, settings in METHODS.items():
        explainer = get_explainer(method, model, **settings)
        maps = explainer.explain(states, targets)
        out[method] = {}
        for name, settings in METRICS.items():
            v = get_metric(name, **settings)(
                model=model, states=states, saliency=maps, targets=targets, labels=labels, explainer=explainer
            )
            for key, t in v.items() if isinstance(v, dict) else [(None, v)]:
                out[method][name if key is None else f"{name}.{key}"] = t.double().tolist()
    return out


def test_evaluate_reads_each_row_once_and_builds_each_explainer_once(model, dataset, counted):
    rows = np.array([0, 2, 3, 5, 7, 9])
    result = pipeline.evaluate(model, dataset, rows, METHODS, METRICS)
    # 3 methods, 4 metrics: every state and label row read once, every explainer built once
    assert counted["reads"]["states"] == len(rows)
    assert counted["reads"]["labels"] == len(rows)
    assert dict(counted["built"]) == {m: 1 for m in METHODS}
    assert result.rows == rows.tolist() and result.methods == list(METHODS)
    assert list(result.seconds["greydanus"]) == ["explain", *METRICS]


def test_targets_agent_runs_the_model_once_whatever_the_number_of_methods(model, dataset, counted):
    rows = np.arange(N_ROWS)
    metrics = ["sparseness", "deletion"]
    stored = pipeline.evaluate(model, dataset, rows, METHODS, metrics, targets="dataset", batch_size=4)
    forwards, counted["forwards"]["net"] = counted["forwards"]["net"], 0
    counted["reads"].clear()
    counted["built"].clear()
    agent = pipeline.evaluate(model, dataset, rows, METHODS, metrics, targets="agent", batch_size=4)
    # the same work plus ceil(10 / 4) forward passes for the targets: once, not once per method
    assert counted["forwards"]["net"] == forwards + 3
    assert counted["reads"]["states"] == N_ROWS and "actions" not in counted["reads"]
    assert dict(counted["built"]) == {m: 1 for m in METHODS}
    assert agent.values != stored.values  # the stored actions are not the model's argmax
    # the targets were the model's argmax: the gradient maps are those of the argmax
    expected = get_explainer("gradient", model).explain(dataset.states(rows))
    maps: dict = {}
    pipeline.evaluate(model, dataset, rows, ["gradient"], ["sparseness"], targets="agent", saliency=maps)
    torch.testing.assert_close(maps["gradient"], expected, rtol=0, atol=0)


@pytest.mark.parametrize("batch_size", [64, 4])
def test_evaluate_equals_an_independent_explainer_and_metric_loop(model, dataset, batch_size):
    rows = np.array([1, 2, 4, 6, 8])
    result = pipeline.evaluate(model, dataset, rows, METHODS, METRICS, batch_size=batch_size)
    # the independent path: rows read straight from the file, stored actions, one batch
    with StateDataset.open(dataset.path) as ds:
        states = torch.from_numpy(ds._h5()["states"][rows]).float() / 255
        targets = torch.as_tensor(ds._h5()["actions"][rows], dtype=torch.long)
        labels = torch.as_tensor(ds._h5()["labels"][rows])
    expected = reference(model, states, targets, labels)
    assert result.columns == [
        "sparseness",
        "localization.auc",
        "localization.important",
        "localization.unimportant",
        "deletion",
        "lipschitz",
    ]
    for method in METHODS:
        for column in result.columns:
            got, want = result.values[method][column], expected[method][column]
            assert got == pytest.approx(want, rel=1e-5, abs=1e-7, nan_ok=True), (method, column)


def test_the_public_evaluate_is_the_pipeline(model, dataset, counted):
    """``xrl.evaluation.evaluate`` (the CLI's, the bench's) gives the pipeline's values, reading
    the rows once too."""
    old = xrl.evaluation.evaluate(model, dataset, METHODS, METRICS, n_states=6, seed=1, progress=False)
    assert counted["reads"]["states"] == 6 and dict(counted["built"]) == {m: 1 for m in METHODS}
    new = pipeline.evaluate(model, dataset, old.rows, METHODS, METRICS)
    assert old.rows == pipeline.sample_rows(N_ROWS, 6, 1).tolist()
    assert old.values == new.values and old.columns == new.columns and old.skipped == new.skipped
    maps = xrl.evaluation.explain_dataset(model, dataset, "greydanus", METHODS["greydanus"], rows=np.array(old.rows))
    expected = get_explainer("greydanus", model, **METHODS["greydanus"]).explain(
        dataset.states(np.array(old.rows)), torch.as_tensor(dataset.actions[old.rows])
    )
    torch.testing.assert_close(maps, expected, rtol=0, atol=0)


def test_explain_then_score_with_built_explainers_and_curves(model, dataset):
    states = dataset.states(np.arange(N_ROWS))
    targets = torch.as_tensor(dataset.actions, dtype=torch.long)
    occlusion = get_explainer("occlusion", model, window=2, stride=2)
    maps = pipeline.explain(model, states, {"occ": occlusion, "gradient": {}}, targets, batch_size=3)
    assert list(maps) == ["occ", "gradient"] and maps.explainers["occ"] is occlusion
    torch.testing.assert_close(maps["occ"], occlusion.explain(states, targets), rtol=0, atol=0)
    result = pipeline.score(
        model, states, maps, ["deletion", "insertion", "localization"], targets, curves=["deletion", "insertion"]
    )
    assert result.skipped == {"localization": pipeline.NO_LABELS}
    assert result.rows == list(range(N_ROWS))
    for method in maps:
        for name in ("deletion", "insertion"):
            metric = get_metric(name)
            x, y = metric.curve(model=model, states=states, saliency=maps[method], targets=targets)
            assert result.curves[method][name] == {"x": x.tolist(), "y": y.mean(0).tolist()}
            # the values are the metric's own, bit for bit
            own = metric(model=model, states=states, saliency=maps[method], targets=targets)
            assert result.values[method][name] == own.double().tolist()
        assert {"deletion curve", "deletion", "insertion curve", "insertion"} <= set(result.seconds[method])


def test_callable_and_int_targets_hold_for_every_chunk(model, dataset):
    states = dataset.states(np.arange(N_ROWS))
    for targets in (2, lambda scores: scores[:, 1]):
        maps = pipeline.explain(model, states, ["gradient"], targets, batch_size=4)
        torch.testing.assert_close(maps["gradient"], get_explainer("gradient", model).explain(states, targets))


def test_bad_input_gets_one_line_errors(model, dataset):
    states = dataset.states(np.arange(4))
    maps = pipeline.explain(model, states, ["random"])
    with pytest.raises(ValueError, match="not among the metrics"):
        pipeline.score(model, states, maps, ["sparseness"], curves=["deletion"])
    with pytest.raises(ValueError, match="has no curve"):
        pipeline.score(model, states, maps, ["sparseness"], curves=["sparseness"])
    with pytest.raises(ValueError, match=r"maps\['random'\] must be \(4, H, W\)"):
        pipeline.score(model, states, {"random": maps["random"][:2]}, ["sparseness"])
    with pytest.raises(TypeError, match="list of names"):
        pipeline.explain(model, states, "gradient")
    with pytest.raises(ValueError, match="at least one method and one metric"):
        pipeline.evaluate(model, dataset, [0, 1], [], ["sparseness"])
    with pytest.raises(ValueError, match="rows must be a non-empty list"):
        pipeline.evaluate(model, dataset, [0, N_ROWS], ["random"], ["sparseness"])
    with pytest.raises(ValueError, match="unknown"):
        pipeline.explain(model, states, ["no_such_method"])


def test_a_dataset_without_fingerprint_warns_at_the_callers_line(model, dataset, tmp_path):
    """The warning names the line that called evaluate, through either face."""
    import shutil

    import h5py

    path = tmp_path / "old.h5"
    shutil.copy(dataset.path, path)
    with h5py.File(path, "r+") as f:
        agent = json.loads(f.attrs["agent"])
        del agent["fingerprint"]
        f.attrs["agent"] = json.dumps(agent)
    with StateDataset.open(path) as old:
        for call in (
            lambda: pipeline.evaluate(model, old, [0, 1], ["random"], ["sparseness"]),
            lambda: xrl.evaluation.evaluate(model, old, ["random"], ["sparseness"], n_states=2, progress=False),
        ):
            with pytest.warns(UserWarning, match="records no agent fingerprint") as caught:
                call()
            assert [w.filename for w in caught] == [__file__]
