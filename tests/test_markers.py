"""The inner loop's markers: every test conftest.SLOW names exists (a renamed test would rejoin
``pytest -m "not slow"`` unnoticed, or a typo would mark nothing), and CI runs everything."""

import ast
from pathlib import Path

import conftest

TESTS = Path(__file__).parent


def test_every_slow_name_is_a_test_of_its_file():
    missing = []
    for file, names in conftest.SLOW.items():
        tree = ast.parse((TESTS / file).read_text())
        defined = {n.name for n in tree.body if isinstance(n, ast.FunctionDef) and n.name.startswith("test_")}
        missing += [f"{file}::{name}" for name in names if name not in defined]
    assert not missing, missing
    named = {name for names in conftest.SLOW.values() for name in names}
    assert conftest.TRAIN <= named and conftest.BROWSER <= named


def test_ci_and_the_readme_run_every_test():
    root = TESTS.parent
    ci = (root / ".ci" / "run").read_text()
    assert "bash run.sh test" in ci and "not slow" not in ci
    test_job = (root / "run.sh").read_text().split("test)")[1].split(";;")[0]
    assert 'python -m pytest "$@"' in test_job and "not slow" not in test_job
    assert "-m" not in (root / "pyproject.toml").read_text().split("addopts")[1].splitlines()[0]
