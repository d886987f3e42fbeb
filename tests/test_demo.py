"""The demo explains the zoo agent with the papers' learned explainers (their zoo networks found by
the agent's weights) and adds the DIGR student and the FLS agent as sections."""

import json

import pytest

import xrl
from xrl.bench import find_spec, load_spec
from xrl.demo import LEARNED, SECTIONS, demo_spec, papers_table, section_spec


def test_quick_spec_runs_the_learned_explainers_on_the_zoo_agent():
    from xrl.agents.load import ZOO_DIR
    from xrl.bench.runner import prepare

    spec, _ = prepare(demo_spec(ZOO_DIR / "red-fetch-green" / "agent.pt", quick=True, seed=0))
    (agent,) = spec.agents
    jobs = {j.method for j in spec.jobs()}
    for method in LEARNED:
        assert method in jobs and method not in spec.not_run[agent.name]
    assert set(jobs) | set(spec.not_run[agent.name]) == set(xrl.list_explainers())
    assert set(spec.not_run[agent.name]) == {"attention"}  # the one method this agent cannot serve, with why
    assert "attention" in spec.not_run[agent.name]["attention"]


def test_sections_are_shipped_specs_of_the_papers_agents(tmp_path):
    digr = section_spec("digr", quick=True, seed=0)
    fls = section_spec("fls", quick=True, seed=0)
    assert [j.method for j in digr.jobs()] == ["gradient"]
    assert [j.method for j in fls.jobs()] == ["attention", "gradient"]
    assert xrl.load_agent(digr.agents[0].agent).info["card"]["what"].lower().startswith("digr")
    assert "sparse_fls" in json.dumps(xrl.load_agent(fls.agents[0].agent).info["card"])
    for _name, (spec_name, _) in SECTIONS.items():
        assert load_spec(find_spec(spec_name)).metrics  # the shipped file itself checks
    assert section_spec("digr", quick=True, seed=0, zoo=tmp_path) is None  # a zoo without the agent


def test_papers_table_puts_each_row_beside_its_reference():
    def group(agent, methods):
        return {
            "agent": agent,
            "methods": methods,
            "means": {m: {"localization.auc": 0.5 + i / 10, "time_per_map": 1e-3} for i, m in enumerate(methods)},
        }

    main = group("red-fetch-green", ["gradient", "visionmask", "rexl"])
    text = papers_table(main, {"digr": group("digr-student", ["gradient"])})
    lines = text.splitlines()
    assert lines[2].startswith("| red-fetch-green (zoo network) | `visionmask` | 0.600 |")
    assert lines[3].startswith("| red-fetch-green (zoo network) | `rexl` | 0.700 |")
    assert lines[4].startswith("| red-fetch-green (DIGR's teacher) | `gradient` | 0.500 |")
    assert lines[5].startswith("| digr-student | `gradient` | 0.500 |")
    assert "| – |" in lines[2] and "1.00e-03" in lines[2]


@pytest.mark.slow
def test_demo_quick_has_the_papers(quick_demo):
    from xrl.bench import load_results

    code, _, err, out = quick_demo  # `xrl demo --quick` (run_demo(out, quick=True)), run once (tests/conftest.py)
    assert code == 0, err
    (g,) = load_results(out)["groups"]
    for method in LEARNED:
        assert method in g["methods"] and g["means"][method]["deletion"] is not None
    for name in SECTIONS:
        (s,) = load_results(out / name)["groups"]
        assert s["methods"] and not load_results(out / name)["failed"]
        assert (out / name / "report.html").is_file()
    summary = (out / "summary.md").read_text()
    assert "## The papers in this run" in summary and "Bench time" in summary
    for method in LEARNED:
        assert f"`{method}` |" in summary and f"`{method}` not run" not in summary
    assert "digr-student" in summary and "sparse-fls" in summary and "`attention`" in summary
    # one report for the run: the sections linked and summarised (the teacher beside the DIGR
    # student), the papers' table
    report = (out / "report.html").read_text()
    for name in SECTIONS:
        assert f'href="{name}/report.html"' in report and f'data-section="{name}"' in report
    assert "teacher (red-fetch-green): gradient" in report and "The papers in this run" in report
