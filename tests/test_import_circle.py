"""No import circle in ``src/xrl`` (docs/architecture.md, *Layers*): counting the imports inside
functions too, and ``from xrl.envs import atari`` as an import of ``xrl.envs.atari``, not of the
package (the game modules register with ``xrl.envs.registry``, never with the package that
imports them)."""

from __future__ import annotations

import ast
from pathlib import Path

import xrl

ROOT = Path(xrl.__file__).parent


def modules() -> dict[str, Path]:
    """Every module of the package by its dotted name (a package by its own name)."""
    out = {}
    for path in sorted(ROOT.rglob("*.py")):
        parts = path.relative_to(ROOT.parent).with_suffix("").parts
        out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return out


def imported_modules(path: Path, known: dict[str, Path]):
    """The xrl modules ``path`` imports anywhere in it: ``from P import m`` names the module
    ``P.m`` where one exists, else ``P``; a name with no module of its own stands for its
    closest parent."""

    def closest(name: str) -> str:
        while name not in known and "." in name:
            name = name.rsplit(".", 1)[0]
        return name

    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "xrl" and not node.level:
            yield from (closest(f"{node.module}.{a.name}") for a in node.names)
        elif isinstance(node, ast.Import):
            yield from (closest(a.name) for a in node.names if a.name.split(".")[0] == "xrl")


def circles(graph: dict[str, set[str]]) -> list[str]:
    """One ``a -> b -> a`` line per back edge found by a depth-first walk of ``graph``."""
    found, state = [], {}  # state: 1 on the current path, 2 done

    def visit(module: str, path: list[str]) -> None:
        state[module] = 1
        for imported in sorted(graph.get(module, ())):
            if state.get(imported) == 1:
                found.append(" -> ".join(path[path.index(imported) :] + [imported]))
            elif imported not in state:
                visit(imported, path + [imported])
        state[module] = 2

    for module in sorted(graph):
        if module not in state:
            visit(module, [module])
    return found


def test_the_walk_finds_a_circle_and_only_a_circle():
    assert circles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == ["a -> b -> c -> a"]
    assert circles({"a": {"b", "c"}, "b": {"c"}, "c": set()}) == []


def test_submodule_imports_name_the_submodule(tmp_path):
    known = {"xrl.envs": Path(), "xrl.envs.atari": Path(), "xrl.envs.registry": Path()}
    source = tmp_path / "m.py"
    source.write_text("from xrl.envs import atari, make_env\nfrom xrl.envs.registry import ENVS\nimport xrl.envs.x\n")
    assert list(imported_modules(source, known)) == ["xrl.envs.atari", "xrl.envs", "xrl.envs.registry", "xrl.envs"]


def test_no_import_circle():
    known = modules()
    graph = {module: set(imported_modules(path, known)) - {module} for module, path in known.items()}
    assert "xrl.envs.registry" in graph["xrl.envs.atari"] and "xrl.envs.atari" in graph["xrl.envs"]
    assert not (found := circles(graph)), "\n".join(found)
