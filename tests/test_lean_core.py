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
