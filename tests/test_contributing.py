"""CONTRIBUTING.md, followed literally: in a temporary copy of the project, the example explainer
(one file) and its independent test are written where the page says; the contract tests of
``tests/test_explainers.py`` then pick the new method up from the registry and pass, and a
method that breaks the contract (maps drawn from the global RNG) is caught by them."""

import os
import re
import shutil
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = re.compile(r"<!-- example: (\S+) -->\n```python\n(.*?)```", re.S)

#: the contract tests every registered explainer gets (tests/test_explainers.py)
CONTRACT = [
    "test_output_contract",
    "test_no_side_effects",
    "test_state_restored_when_the_call_raises",
    "test_same_seed_same_maps",
    "test_batch_equals_per_sample_loop",
    "test_every_form_of_targets",
    "test_explain_all_is_explain_per_action",
    "test_bad_input_is_refused",
]

BROKEN = '''
import torch

from xrl.explainers.base import EXPLAINERS
from xrl.explainers.gradient import Gradient


@EXPLAINERS.register("unseeded_toy")
class UnseededToy(Gradient):
    """Breaks the contract: noise from the global RNG, not from ``seed``."""

    def _gradients(self, states, target_fn):
        return super()._gradients(states, target_fn) * torch.rand(1)
'''


def test_the_examples_are_where_the_page_says():
    examples = dict(EXAMPLE.findall((ROOT / "CONTRIBUTING.md").read_text()))
    assert set(examples) == {"src/xrl/explainers/input_x_gradient.py", "tests/test_input_x_gradient.py"}
    assert '@EXPLAINERS.register("input_x_gradient")' in examples["src/xrl/explainers/input_x_gradient.py"]
    assert not (ROOT / "src/xrl/explainers/input_x_gradient.py").exists()  # the example is not shipped


def test_a_new_explainer_in_one_file_gets_the_contract_tests(tmp_path):
    copy = tmp_path / "xrl"
    ignore = shutil.ignore_patterns("__pycache__", "*.egg-info", ".pytest_cache")
    for part in ("src", "tests"):
        shutil.copytree(ROOT / part, copy / part, ignore=ignore)
    shutil.copy(ROOT / "pyproject.toml", copy)
    before = {p.relative_to(copy) for p in (copy / "src").rglob("*") if p.is_file()}
    for path, code in EXAMPLE.findall((ROOT / "CONTRIBUTING.md").read_text()):
        (copy / path).write_text(code)
    added = {p.relative_to(copy) for p in (copy / "src").rglob("*") if p.is_file()} - before
    assert added == {Path("src/xrl/explainers/input_x_gradient.py")}  # one file, nothing else edited
    (copy / "src/xrl/explainers/unseeded_toy.py").write_text(BROKEN)

    report = tmp_path / "report.xml"
    run = subprocess.run(
        [sys.executable, "-m", "pytest", "tests/test_explainers.py", "tests/test_input_x_gradient.py"]
        + ["-k", "input_x_gradient or unseeded_toy", "-p", "no:cacheprovider", "-o", "addopts=", "-q"]
        + [f"--junitxml={report}"],
        cwd=copy,
        env={**os.environ, "PYTHONPATH": str(copy / "src")},  # the copy's xrl, not the installed one
        capture_output=True,
        text=True,
        timeout=600,
    )
    outcome = {}
    for case in ET.parse(report).iter("testcase"):
        failed = case.find("failure") is not None or case.find("error") is not None
        outcome[case.get("name")] = "skipped" if case.find("skipped") is not None else "failed" if failed else "passed"
    log = run.stdout[-3000:] + run.stderr[-2000:]

    ours = {name: result for name, result in outcome.items() if "input_x_gradient" in name}
    for test in CONTRACT:  # each contract test ran on the new method (by its registered name) and passed
        runs = [result for name, result in ours.items() if name.startswith(f"{test}[")]
        assert runs and all(r in ("passed", "skipped") for r in runs), (test, runs, log)
    assert ours["test_input_x_gradient_is_captums"] == "passed", log
    assert not [n for n, r in ours.items() if r == "failed"], log
    # the same tests catch a method that breaks the contract
    assert outcome["test_same_seed_same_maps[unseeded_toy]"] == "failed", log
