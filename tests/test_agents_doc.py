"""docs/agents.md's Python blocks run as they are, offline, in a temporary folder."""

import re
from pathlib import Path

import pytest

DOC = Path(__file__).resolve().parents[1] / "docs" / "agents.md"
BLOCKS = re.findall(r"```python\n(.*?)```", DOC.read_text(), re.S)


def test_the_page_has_its_examples():
    assert len(BLOCKS) == 4


@pytest.mark.parametrize("index", range(len(BLOCKS)))
def test_each_python_block_runs(index, tmp_path, monkeypatch, capsys):
    pytest.importorskip("sb3_contrib")
    monkeypatch.chdir(tmp_path)
    exec(compile(BLOCKS[index], f"docs/agents.md block {index}", "exec"), {"__name__": "__doc_example__"})
    assert capsys.readouterr().out.strip()
