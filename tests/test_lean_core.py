"""The core (models, explainers, metrics, the env registry) works without the heavy optional
dependencies: ``import xrl`` imports none of them, and they are imported on first use
(docs/architecture.md, *Layers*)."""

import json
import subprocess
import sys
import textwrap

HEAVY = ("stable_baselines3", "ale_py", "minigrid", "ray", "captum", "gym", "highway_env", "vizdoom", "nes_py")


def run(code: str) -> str:
    done = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_import_xrl_imports_no_heavy_dependency():
    out = run(f"""
        import json, sys
        import xrl
        print(json.dumps(sorted(m for m in sys.modules if m.split(".")[0] in {HEAVY!r})))
    """)
    assert json.loads(out.strip().splitlines()[-1]) == []


def test_core_works_when_heavy_dependencies_are_missing():
    out = run(f"""
        import json, sys

        class Missing:
            '''Simulates an environment where the heavy packages are not installed.'''
            def find_spec(self, name, path=None, target=None):
                if name.split(".")[0] in {HEAVY!r}:
                    raise ImportError(f"simulated: no module named {{name!r}}")
                return None

        sys.meta_path.insert(0, Missing())
        import torch
        from torch import nn
        import xrl

        torch.manual_seed(0)
        net = nn.Sequential(nn.Conv2d(2, 4, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 8 * 8, 3))
        model = xrl.as_model(net, input_shape=(2, 8, 8))
        states = torch.rand(4, 2, 8, 8)
        saliency = xrl.get_explainer("gradient", model).explain(states)
        scores = xrl.get_metric("deletion")(model=model, states=states, saliency=saliency)
        assert saliency.shape == (4, 8, 8) and scores.shape == (4,), (saliency.shape, scores.shape)
        assert "red-fetch-green" in xrl.list_envs() and "pong" in xrl.list_envs()
        assert "load_agent" in xrl.__all__ and "load_agent" in dir(xrl)
        try:
            xrl.get_explainer("integrated_gradients", model).explain(states)
        except ImportError as err:
            assert "captum" in str(err)
        else:
            raise AssertionError("integrated_gradients explained without Captum")
        print(json.dumps(sorted(m for m in sys.modules if m.split(".")[0] in {HEAVY!r})))
    """)
    assert json.loads(out.strip().splitlines()[-1]) == []


def test_heavy_dependencies_load_on_first_use():
    out = run("""
        import sys
        import xrl
        assert "stable_baselines3" not in sys.modules
        load_agent = xrl.load_agent
        from xrl.agents.load import load_agent as direct
        assert load_agent is direct and "stable_baselines3" in sys.modules
        try:
            xrl.no_such_name
        except AttributeError as err:
            assert "no_such_name" in str(err)
        else:
            raise AssertionError("xrl.no_such_name did not raise")
        print("ok")
    """)
    assert out.strip().endswith("ok")


#: docs/architecture.md, *Layers*: a module imports (at module level or inside a function) only
#: from its layer or below, but for the upward imports listed in UPWARD
LAYERS = [
    (
        "xrl._version",
        "xrl.errors",
        "xrl.registry",
        "xrl.files",
        "xrl.compat",
        "xrl.ops",
        "xrl.limits",
        "xrl.method_settings",
        "xrl.settings",
        "xrl.stats",
        "xrl.incremental",
        "xrl.artifacts",
        "xrl.zoo",
    ),
    ("xrl.agents.model", "xrl.envs.labels"),
    (
        "xrl.explainers",
        "xrl.metrics",
        "xrl.envs",
        "xrl.attacks.attacks",
        "xrl.attacks",
        "xrl.agents.mask_nets",
        "xrl.agents.rexl",
        "xrl.agents.classifier",
        "xrl.agents.masking",
    ),
    ("xrl", "xrl.agents", "xrl.envs.background", "xrl.data", "xrl.classifiers", "xrl.rollout"),
    ("xrl.pipeline",),  # explain and score: below every procedure that explains and scores
    (
        "xrl.attacks.evaluate",
        "xrl.train",
        "xrl.evaluation",
        "xrl.bench",
        "xrl.report",
        "xrl.viz",
        "xrl.watch",
        "xrl.demo",
        "xrl.cli",
        "xrl.reproduce",
        "xrl.serve",
    ),
]

#: the imports that run up a layer, each explained in docs/architecture.md (*Layers*)
UPWARD = {
    # the attention explainer reads the attention weights of the agent's own network, an SB3
    # features extractor: imported inside its methods, so the explainer registry stays SB3-free
    ("xrl.explainers.attention", "xrl.agents.attention"),
}


def layer(module: str) -> int:
    """The layer of ``module``: the one listing it or its closest listed parent."""
    best = (-1, None)
    for i, names in enumerate(LAYERS):
        for name in names:
            if (module == name or module.startswith(name + ".")) and len(name) > best[0]:
                best = (len(name), i)
    assert best[1] is not None, f"{module} is in no layer of LAYERS"
    return best[1]


def imports(path, *, module_level: bool):
    """``(xrl module, line)`` for each import of ``path``: at module level only (not inside
    functions or ``if TYPE_CHECKING``), or everywhere."""
    import ast

    tree = ast.parse(path.read_text())
    for node in tree.body if module_level else ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "xrl" and not node.level:
            if node.module == "xrl":  # from xrl import incremental: a module, or a name of the package face
                for a in node.names:
                    sub = _root() / f"{a.name}.py"
                    yield (f"xrl.{a.name}" if sub.exists() or sub.with_suffix("").is_dir() else "xrl"), node.lineno
            else:
                yield node.module, node.lineno
        elif isinstance(node, ast.Import):
            yield from ((a.name, node.lineno) for a in node.names if a.name.split(".")[0] == "xrl")


def _root():
    from pathlib import Path

    import xrl

    return Path(xrl.__file__).parent


def _modules():
    root = _root()
    for path in sorted(root.rglob("*.py")):
        parts = path.relative_to(root.parent).with_suffix("").parts
        yield ".".join(parts[:-1] if parts[-1] == "__init__" else parts), path


def test_layers():
    """Ground floor below contracts below core below agents/data below procedures, counting the
    imports inside functions too (an import moved into a function still runs up); metrics and
    agents use no explainer method (only ``explainers.base``, the contract)."""
    bad, up = [], set()
    for module, path in _modules():
        for imported, line in imports(path, module_level=False):
            if layer(imported) > layer(module):
                if (module, imported) in UPWARD:
                    up.add((module, imported))
                else:
                    bad.append(f"{module}:{line} (layer {layer(module)}) imports {imported} (layer {layer(imported)})")
            if (
                module.startswith(("xrl.metrics", "xrl.agents"))
                and imported.startswith("xrl.explainers")
                and imported != "xrl.explainers.base"
            ):
                bad.append(f"{module}:{line} imports the explainer module {imported}")
    assert not bad, "\n".join(bad)
    assert up == UPWARD, f"UPWARD lists imports that no longer exist: {UPWARD - up}"
    assert len(UPWARD) <= 2


def test_no_module_below_the_face_imports_the_package():
    """``xrl/__init__.py`` (the package face) imports the core; a module it imports, directly or
    not, never imports the face back (for ``__version__`` they use ``xrl._version``)."""
    bad = [
        f"{module}:{line}"
        for module, path in _modules()
        if layer(module) < layer("xrl")
        for imported, line in imports(path, module_level=False)
        if imported == "xrl"
    ]
    assert not bad, bad


#: modules that still import the package face ``xrl`` itself (to be emptied: the trainer's
#: ``xrl.__version__`` is ``xrl._version.__version__``)
FACE_IMPORTERS: set[str] = set()


def test_modules_import_what_they_use_not_the_package_face():
    """Above the face too, a module imports the modules it uses (``xrl.agents.load.load_agent``,
    ``xrl.explainers.get_explainer``, ``xrl._version.__version__``), not ``xrl`` itself: the
    face is for users, and an import of it hides which layer a module really leans on."""
    found = {
        module
        for module, path in _modules()
        if module != "xrl"
        for imported, _ in imports(path, module_level=False)
        if imported == "xrl"
    }
    assert found == FACE_IMPORTERS, (
        f"import the modules instead of xrl: {sorted(found - FACE_IMPORTERS)}; "
        f"no longer importing it (remove from FACE_IMPORTERS): {sorted(FACE_IMPORTERS - found)}"
    )
