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


#: docs/architecture.md, *Layers*: a module imports (at module level) only from its layer or below
LAYERS = [
    ("xrl.registry", "xrl.files", "xrl.compat", "xrl.ops", "xrl.artifacts"),
    ("xrl.agents.model", "xrl.envs.labels"),
    ("xrl.explainers", "xrl.metrics", "xrl.envs", "xrl.attacks.attacks", "xrl.attacks", "xrl.agents.mask_nets",
     "xrl.agents.rexl"),
    ("xrl.agents", "xrl.envs.background", "xrl.data", "xrl.classifiers", "xrl.zoo"),
    ("xrl.attacks.evaluate", "xrl.train", "xrl.evaluation", "xrl.bench", "xrl.report", "xrl.viz", "xrl.watch",
     "xrl.demo", "xrl.cli", "xrl.reproduce", "xrl.serve"),
]


def layer(module: str) -> int:
    """The layer of ``module``: the one listing it or its closest listed parent."""
    best = (-1, None)
    for i, names in enumerate(LAYERS):
        for name in names:
            if (module == name or module.startswith(name + ".")) and len(name) > best[0]:
                best = (len(name), i)
    assert best[1] is not None, f"{module} is in no layer of LAYERS"
    return best[1]


def module_level_imports(path):
    """``xrl.*`` modules imported at module level (not inside functions or ``if TYPE_CHECKING``)."""
    import ast
    tree = ast.parse(path.read_text())
    for node in tree.body:
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("xrl"):
            if node.module == "xrl" or node.module.count(".") == 1 and node.module.split(".")[1] in {"envs", "explainers", "metrics", "attacks", "agents", "data", "train", "bench", "report", "viz"}:
                yield from (f"{node.module}.{a.name}" if node.module != "xrl" else "xrl" for a in node.names)
            else:
                yield node.module
        elif isinstance(node, ast.Import):
            yield from (a.name for a in node.names if a.name.startswith("xrl."))


def test_layers():
    """Ground floor below contracts below core below agents/data below procedures; metrics and
    agents use no explainer method (only ``explainers.base``, the contract)."""
    from pathlib import Path
    import xrl
    root = Path(xrl.__file__).parent
    bad = []
    for path in sorted(root.rglob("*.py")):
        parts = path.relative_to(root.parent).with_suffix("").parts
        module = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        if module == "xrl":
            continue
        for imported in module_level_imports(path):
            if imported == "xrl":  # the package itself (for __version__)
                continue
            if layer(imported) > layer(module):
                bad.append(f"{module} (layer {layer(module)}) imports {imported} (layer {layer(imported)})")
            if (module.startswith(("xrl.metrics", "xrl.agents")) and imported.startswith("xrl.explainers")
                    and imported != "xrl.explainers.base"):
                bad.append(f"{module} imports the explainer module {imported}")
    assert not bad, "\n".join(bad)
