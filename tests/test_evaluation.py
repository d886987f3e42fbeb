"""xrl.evaluation: evaluate() on a tiny StateDataset, and the Evaluation table / means / files."""

from __future__ import annotations

import csv
import json
import math

import numpy as np
import pytest
import torch
from torch import nn

import xrl.pipeline.steps
from xrl.agents.model import as_model
from xrl.data.dataset import StateDataset, StateDatasetWriter
from xrl.evaluation import Evaluation, evaluate, explain_dataset
from xrl.explainers import get_explainer
from xrl.metrics import get_metric

N_ROWS = 10  # two episodes of 6 and 4 steps
NAN_ROW = 3  # a row whose labels have no important pixel: localization.auc is NaN there
LOC = ["localization.auc", "localization.important", "localization.unimportant"]


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 6 * 6, 3))
    return as_model(net, input_shape=(3, 8, 8), action_names=["left", "fire", "right"])


def write_dataset(path, model, *, labels: bool):
    """Random 3x8x8 states; stored actions are NOT the model's argmax (so targets matter)."""
    rng = np.random.default_rng(0)
    agent = {"source": "tests/tiny", "obs_scale": 255.0}
    with StateDatasetWriter(
        path, env={"name": "test", "settings": {}}, agent=agent, action_names=model.action_names, collect={"seed": 0}
    ) as writer:
        row = 0
        for length in (6, 4):
            states = rng.integers(0, 256, (length, 3, 8, 8), dtype=np.uint8)
            with torch.no_grad():
                scores = model(torch.from_numpy(states).float() / 255).numpy()
            actions = (scores.argmax(1) + 1) % 3
            maps = None
            if labels:
                maps = rng.choice(np.array([-1, 0, 1], np.int8), size=(length, 8, 8))
                maps[:, 0, 0], maps[:, 0, 1] = 1, 0  # both classes present ...
                if row <= NAN_ROW < row + length:
                    maps[NAN_ROW - row] = 0  # ... except in one row
            writer.append(
                states=states, frames=states.transpose(0, 2, 3, 1), actions=actions, scores=scores, labels=maps
            )
            writer.end_episode(0.0)
            row += length
        return writer.finalize()


@pytest.fixture(scope="module")
def dataset(model, tmp_path_factory):
    path = write_dataset(tmp_path_factory.mktemp("data") / "states.h5", model, labels=True)
    with StateDataset.open(path) as ds:
        assert len(ds) == N_ROWS and ds.has_labels
        yield ds


@pytest.fixture(scope="module")
def unlabelled(model, tmp_path_factory):
    path = write_dataset(tmp_path_factory.mktemp("data") / "nolabels.h5", model, labels=False)
    with StateDataset.open(path) as ds:
        assert not ds.has_labels
        yield ds


METHODS = {"gradient": {}, "greydanus": {"radius": 2, "stride": 2}, "random": {}}
METRICS = ["sparseness", "localization", "deletion"]


@pytest.fixture(scope="module")
def result(model, dataset):
    saliency = {}
    r = evaluate(model, dataset, METHODS, METRICS, n_states=6, seed=0, progress=False, saliency=saliency)
    return r, saliency


# -- evaluate ------------------------------------------------------------------------------------


def test_evaluate_shapes_columns_and_directions(result):
    r, saliency = result
    assert r.methods == list(METHODS)
    assert r.columns == ["sparseness", *LOC, "deletion"]
    assert r.higher_is_better == {
        "sparseness": True,
        "localization.auc": True,
        "localization.important": True,
        "localization.unimportant": False,
        "deletion": False,
    }
    assert r.skipped == {}
    assert len(r.rows) == 6 and len(set(r.rows)) == 6 and r.rows == sorted(r.rows)
    assert all(0 <= i < N_ROWS for i in r.rows)
    for method in METHODS:
        assert set(r.values[method]) == set(r.columns)
        for column in r.columns:
            assert len(r.values[method][column]) == 6, (method, column)
        assert tuple(saliency[method].shape) == (6, 8, 8)


def test_evaluate_scores_the_recorded_rows_with_the_stored_actions(model, dataset, result):
    r, saliency = result
    rows = np.asarray(r.rows)
    states = dataset.states(rows)
    actions = torch.as_tensor(dataset.actions[rows])
    labels = torch.as_tensor(dataset.labels(rows))
    expected = get_explainer("gradient", model).explain(states, actions)
    torch.testing.assert_close(saliency["gradient"], expected)
    # the targets are the stored actions, not the model's own argmax
    assert not torch.allclose(expected, get_explainer("gradient", model).explain(states))
    sparse = get_metric("sparseness")(states=states, saliency=expected)
    assert r.values["gradient"]["sparseness"] == pytest.approx(sparse.double().tolist(), nan_ok=True)
    loc = get_metric("localization")(states=states, saliency=expected, labels=labels)
    for out in ("auc", "important", "unimportant"):
        assert r.values["gradient"][f"localization.{out}"] == pytest.approx(loc[out].double().tolist(), nan_ok=True)
    deletion = get_metric("deletion")(model=model, states=states, saliency=expected, targets=actions)
    assert r.values["gradient"]["deletion"] == pytest.approx(deletion.double().tolist())


def test_evaluate_passes_method_settings(model, dataset, monkeypatch):
    calls = []

    def spy(name, model, **settings):
        calls.append((name, settings))
        return get_explainer(name, model, **settings)

    monkeypatch.setattr(xrl.pipeline.steps, "get_explainer", spy)
    evaluate(model, dataset, {"greydanus": {"radius": 3, "stride": 4}}, ["sparseness"], n_states=2, progress=False)
    assert calls and all(c == ("greydanus", {"radius": 3, "stride": 4}) for c in calls)


def test_evaluate_means_leave_out_nan(model, dataset):
    r = evaluate(model, dataset, ["gradient"], ["localization"], n_states=None, progress=False)
    assert r.rows == list(range(N_ROWS))
    auc = r.values["gradient"]["localization.auc"]
    assert math.isnan(auc[NAN_ROW]) and sum(math.isnan(v) for v in auc) == 1
    assert r.means()["gradient"]["localization.auc"] == pytest.approx(np.nanmean(auc))


@pytest.mark.parametrize("n_states", [None, N_ROWS, N_ROWS + 5])
def test_evaluate_all_rows(model, dataset, n_states):
    r = evaluate(model, dataset, ["random"], ["sparseness"], n_states=n_states, progress=False)
    assert r.rows == list(range(N_ROWS))
    assert len(r.values["random"]["sparseness"]) == N_ROWS


@pytest.mark.parametrize("n_states", [0, -1, 1.5, True, "3"])
def test_evaluate_refuses_a_count_that_is_not_a_positive_integer(model, dataset, n_states):
    with pytest.raises(ValueError) as err:
        evaluate(model, dataset, ["random"], ["sparseness"], n_states=n_states, progress=False)
    assert str(err.value) == f"n_states must be a positive number of states (or None for all), got {n_states!r}"


def test_evaluate_given_rows(model, dataset, result):
    r, _ = result
    again = evaluate(model, dataset, METHODS, METRICS, rows=np.asarray(r.rows), progress=False)
    assert again.rows == r.rows
    assert json.dumps(again.values, sort_keys=True) == json.dumps(r.values, sort_keys=True)
    assert evaluate(model, dataset, ["random"], ["sparseness"], rows=[3, 1], progress=False).rows == [3, 1]
    for bad in ([], [N_ROWS], [-1]):
        with pytest.raises(ValueError, match="rows must be"):
            evaluate(model, dataset, ["random"], ["sparseness"], rows=bad, progress=False)


def test_same_seed_same_rows_and_values(model, dataset, result):
    r, _ = result
    again = evaluate(model, dataset, METHODS, METRICS, n_states=6, seed=0, progress=False)
    assert again.rows == r.rows
    assert json.dumps(again.values, sort_keys=True) == json.dumps(r.values, sort_keys=True)
    other = evaluate(model, dataset, ["random"], ["sparseness"], n_states=6, seed=1, progress=False)
    assert other.rows != r.rows


def test_batch_size_does_not_change_values(model, dataset, result):
    r, _ = result
    small = evaluate(model, dataset, METHODS, METRICS, n_states=6, seed=0, progress=False, batch_size=4)
    assert small.rows == r.rows
    for method in METHODS:
        for column in r.columns:
            assert small.values[method][column] == pytest.approx(
                r.values[method][column], rel=1e-5, abs=1e-6, nan_ok=True
            ), (method, column)


def test_metric_needing_labels_is_skipped_without_labels(model, unlabelled):
    r = evaluate(model, unlabelled, ["gradient", "random"], ["localization", "sparseness"], n_states=4, progress=False)
    assert list(r.skipped) == ["localization"]
    assert "label" in r.skipped["localization"]
    assert r.columns == ["sparseness"]
    for method in ("gradient", "random"):
        assert list(r.values[method]) == ["sparseness"]
        assert len(r.values[method]["sparseness"]) == 4
    assert "skipped localization" in r.table()


@pytest.mark.parametrize(
    "methods, metrics", [([], ["sparseness"]), ({}, ["sparseness"]), (["gradient"], []), (["gradient"], {})]
)
def test_evaluate_needs_methods_and_metrics(model, dataset, methods, metrics):
    with pytest.raises(ValueError, match="at least one method"):
        evaluate(model, dataset, methods, metrics, progress=False)


def test_unknown_names_name_the_known_ones(model, dataset):
    with pytest.raises(ValueError, match="known explainers: .*gradient"):
        evaluate(model, dataset, ["nosuch"], ["sparseness"], n_states=2, progress=False)
    with pytest.raises(ValueError, match="known metrics: .*sparseness"):
        evaluate(model, dataset, ["gradient"], ["nosuch"], n_states=2, progress=False)


def test_explain_dataset_rows_in_given_order(model, dataset):
    rows = np.array([7, 2, 5])
    maps = explain_dataset(model, dataset, "gradient", rows=rows, batch_size=2)
    expected = get_explainer("gradient", model).explain(dataset.states(rows), torch.as_tensor(dataset.actions[rows]))
    torch.testing.assert_close(maps, expected)


# -- Evaluation by hand --------------------------------------------------------------------------


def hand_made() -> Evaluation:
    nan = math.nan
    return Evaluation(
        methods=["a", "b", "c"],
        columns=["up", "down", "gappy", "empty"],
        higher_is_better={"up": True, "down": False, "gappy": False, "empty": True},
        values={
            "a": {"up": [1.0, 1.0], "down": [1.0, 1.0], "gappy": [nan, nan], "empty": [nan]},
            "b": {"up": [3.0, 3.0], "down": [3.0, 3.0], "gappy": [5.0, nan], "empty": [nan]},
            "c": {"up": [2.0, nan, 2.0], "down": [2.0, 2.0], "gappy": [4.0, 6.0, nan], "empty": []},
        },
        skipped={"localization": "the dataset has no ground-truth labels"},
        rows=[4, 9],
    )


def test_means_ignore_nan():
    means = hand_made().means()
    assert means["c"]["up"] == 2.0
    assert means["b"]["gappy"] == 5.0 and means["c"]["gappy"] == 5.0
    assert math.isnan(means["a"]["gappy"])
    assert all(math.isnan(means[m]["empty"]) for m in "abc")


def parse_table(text: str) -> tuple[list[str], dict[str, list[str]]]:
    lines = text.splitlines()
    header = lines[0]
    rows = {}
    for line in lines[1:]:
        if line.startswith("(skipped"):
            continue
        cells = line.split()
        rows[cells[0]] = cells[1:]
    return header, rows


def test_table_marks_the_best_value_per_column():
    e = hand_made()
    header, rows = parse_table(e.table())
    assert "up ↑" in header and "down ↓" in header and "gappy ↓" in header and "empty ↑" in header
    assert set(rows) == {"a", "b", "c"}
    starred = {col: [m for m in rows if rows[m][i].endswith("*")] for i, col in enumerate(e.columns)}
    assert starred == {"up": ["b"], "down": ["a"], "gappy": ["b", "c"], "empty": []}
    assert rows["b"][0] == "3*" and rows["a"][1] == "1*" and rows["c"][1] == "2"
    assert rows["a"][2] == "nan" and rows["a"][3] == "nan"
    assert "(skipped localization: the dataset has no ground-truth labels)" in e.table()


def test_table_direction_flips_the_star():
    e = hand_made()
    e.higher_is_better = {**e.higher_is_better, "up": False, "down": True}
    _, rows = parse_table(e.table())
    assert rows["a"][0] == "1*" and rows["b"][1] == "3*"
    assert not rows["b"][0].endswith("*") and not rows["a"][1].endswith("*")


def test_write_csv_and_json_agree_with_means(tmp_path):
    e = hand_made()
    csv_path, json_path = e.write(tmp_path / "new" / "folder")
    assert csv_path == tmp_path / "new" / "folder" / "metrics.csv"
    assert json_path == tmp_path / "new" / "folder" / "metrics.json"
    means = e.means()
    with open(csv_path, newline="") as f:
        table = list(csv.reader(f))
    assert table[0] == ["method", *e.columns]
    assert [r[0] for r in table[1:]] == e.methods
    for r in table[1:]:
        for col, cell in zip(e.columns, r[1:]):
            want = means[r[0]][col]
            assert (math.isnan(float(cell)) and math.isnan(want)) or float(cell) == want, (r[0], col)
    data = json.loads(json_path.read_text())
    assert data["methods"] == e.methods and data["columns"] == e.columns
    assert data["higher_is_better"] == e.higher_is_better
    assert data["skipped"] == e.skipped and data["rows"] == e.rows
    for m in e.methods:
        for col in e.columns:
            got, want = data["means"][m][col], means[m][col]  # undefined (NaN) is written as null
            assert (got is None and math.isnan(want)) or got == want
            vals = np.asarray(data["values"][m][col], dtype=float)
            assert vals.shape == (len(e.values[m][col]),)
            assert not any(isinstance(v, float) and math.isnan(v) for v in data["values"][m][col])
            if vals.size and not np.isnan(vals).all():
                assert np.nanmean(vals) == pytest.approx(got)


def test_write_from_evaluate(tmp_path, result):
    r, _ = result
    csv_path, json_path = r.write(tmp_path)
    data = json.loads(json_path.read_text())
    assert data["rows"] == r.rows
    with open(csv_path, newline="") as f:
        table = list(csv.reader(f))
    assert table[0] == ["method", *r.columns]
    assert {row[0]: [float(x) for x in row[1:]] for row in table[1:]} == {
        m: [data["means"][m][col] for col in r.columns] for m in r.methods
    }
    for m in r.methods:
        for col in r.columns:
            assert len(data["values"][m][col]) == len(r.rows)
            values = np.asarray(data["values"][m][col], dtype=float)  # null (undefined) -> NaN
            assert data["means"][m][col] == pytest.approx(np.nanmean(values))
