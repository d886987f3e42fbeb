"""The plan of a bench run (issue 43): a prepared spec laid out in its results folder once."""

from pathlib import Path

from xrl.bench.layout import data_path, plan
from xrl.bench.spec import AgentSpec, Job, Spec


def _spec() -> Spec:
    agents = [
        AgentSpec("a", "a.pt", "red-fetch-green", {}, inputs="w1"),
        AgentSpec("b", "b.pt", "red-fetch-green", {"labels": True}, data="/data/b.h5", inputs="w2"),
    ]
    return Spec(
        name="p",
        seeds=[0, 3],
        n_states=4,
        threads=1,
        gallery=2,
        store_saliency=False,
        agents=agents,
        methods={"gradient": {}, "random": {"seed": 1}},
        metrics={"deletion": {}},
        not_run={"b": {"random": "why"}},
    )


def test_a_plan_holds_the_grid_the_data_paths_the_collections_and_the_resolved_spec(tmp_path):
    spec = _spec()
    laid = plan(spec, tmp_path)
    assert laid.out == tmp_path and laid.spec is spec
    # the grid: agents x seeds x methods, without what is not run, in that order
    assert [j.id for j in laid.jobs] == [
        "a/seed0/gradient",
        "a/seed0/random",
        "a/seed3/gradient",
        "a/seed3/random",
        "b/seed0/gradient",
        "b/seed3/gradient",
    ]
    assert all(isinstance(j, Job) for j in laid.jobs) and [j.key for j in laid.jobs] == [j.key for j in spec.jobs()]
    # a collected agent's states go to out/data/<agent>-seed<s>.h5; a given data file is used for every seed
    assert laid.data == {
        ("a", 0): tmp_path / "data" / "a-seed0.h5",
        ("a", 3): tmp_path / "data" / "a-seed3.h5",
        ("b", 0): Path("/data/b.h5"),
        ("b", 3): Path("/data/b.h5"),
    }
    assert all(laid.data[k] == data_path(tmp_path, spec, *k) for k in laid.data)
    assert [(a.name, s) for a, s in laid.collections] == [("a", 0), ("a", 3)]
    assert laid.resolved == spec.resolved() and laid.resolved["not_run"] == {"b": {"random": "why"}}
