"""Corrupt each kind of xrl artifact at seeded random byte offsets and truncations and load it
(issue 46); run by tests/test_fuzz_artifacts.py in a subprocess, so that a crash by a signal is
seen. Prints one JSON line per kind: ``{"kind", "cases", "same", "refused", "bad": [...]}``, where
``bad`` lists the cases whose load gave other content, an error the CLI would not print as one
line (a traceback), or an error message of several lines.

    python tests/fuzz_artifacts.py OUT_FOLDER [KIND ...]
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import numpy as np
import torch

CASES = 200


def mutations(blob: bytes, seed: int):
    """``CASES`` damaged copies: half truncations, half 1-16 random bytes written at a random offset."""
    rng = np.random.default_rng(seed)
    for i in range(CASES):
        if i % 2 == 0:
            yield f"cut at {(at := int(rng.integers(0, len(blob))))}", blob[:at]
        else:
            at, n = int(rng.integers(0, len(blob))), int(rng.integers(1, 17))
            noise = rng.integers(0, 256, n, dtype=np.uint8).tobytes()
            yield f"{n} bytes at {at}", blob[:at] + noise + blob[at + n :]


def same(a, b) -> bool:
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return isinstance(b, (list, tuple)) and len(a) == len(b) and all(same(x, y) for x, y in zip(a, b))
    if isinstance(a, np.ndarray):
        return isinstance(b, np.ndarray) and a.shape == b.shape and a.dtype == b.dtype and np.array_equal(a, b)
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and a.shape == b.shape and torch.equal(a, b)
    return a == b


def one_line(message: str) -> bool:
    return len(message.strip().splitlines()) == 1


def spec_list(message: str) -> bool:
    """A spec's problems are listed one a line under ``the spec has N problem(s):`` (its format:
    tests/test_bench.py::test_bad_spec_lists_every_problem_with_its_line)."""
    lines = message.strip().splitlines()
    return lines[0] == f"the spec has {len(lines) - 1} problem(s):" and all(line.startswith("  ") for line in lines[1:])


def fuzz(kind: str, target: Path, load, seed: int, accept=None, message=one_line, cut_ok=False) -> dict:
    """Damage ``target`` in each way, ``load()``, compare with the intact load; restore it.
    ``accept``: other content that is right too; ``message``: the form an error's text must have;
    ``cut_ok``: a text file cut at the end of a line is a shorter file of its kind (counted apart)."""
    from xrl.cli import EXPECTED

    intact = target.read_bytes()
    expected = load()
    result = {"kind": kind, "cases": 0, "same": 0, "refused": 0, "shorter": 0, "bad": []}
    for what, blob in mutations(intact, seed):
        target.write_bytes(blob)
        print(f"# {kind}: {what}", file=sys.stderr, flush=True)  # the last one names a crash
        result["cases"] += 1
        try:
            got = load()
        except EXPECTED as err:
            if message(str(err)):
                result["refused"] += 1
            else:
                result["bad"].append(f"{what}: a message of several lines: {str(err)[:300]}")
            continue
        except Exception as err:  # noqa: BLE001 - what the CLI would show as a traceback
            result["bad"].append(f"{what}: {type(err).__name__}: {str(err)[:300]}")
            continue
        finally:
            target.write_bytes(intact)
        if same(expected, got) or (accept is not None and accept(got)):
            result["same"] += 1
        elif cut_ok and what.startswith("cut at") and intact[len(blob) : len(blob) + 1] in (b"\n", b""):
            result["shorter"] += 1
        else:
            result["bad"].append(f"{what}: loaded, but other content")
    return result


def agent_pt(out: Path) -> list[dict]:
    import xrl
    from xrl.agents.load import ZOO_DIR

    folder = out / "agent"
    shutil.copytree(ZOO_DIR / "red-fetch-green", folder, ignore=shutil.ignore_patterns("checkpoint*", "*.png"))

    def load():  # what a load gives (a card's free text, its command or notes, carries no checksum)
        model = xrl.load_agent(folder / "agent.pt")
        card = model.info["card"]
        return {
            "fingerprint": model.fingerprint(),
            "shape": model.input_shape,
            "actions": model.action_names,
            **{k: card.get(k) for k in ("env", "fingerprint", "format", "algo", "arch")},
        }

    intact = load()

    def weights_same(got) -> bool:  # a card carries no checksum of its own: a changed field that is still
        # valid (its command, its env's name) loads; the weights and shapes are the file's (docs/reliability.md)
        return got["fingerprint"] == intact["fingerprint"] and got["shape"] == intact["shape"]

    return [
        fuzz("agent .pt", folder / "agent.pt", load, 1),
        fuzz("card JSON", folder / "agent.json", load, 2, accept=weights_same),
    ]


def sb3_zip(out: Path) -> list[dict]:
    from stable_baselines3 import PPO

    import xrl
    from xrl.agents.load import ARCHS
    from xrl.envs import make_env

    env = make_env("red-fetch-green")
    PPO("CnnPolicy", env, n_steps=8, batch_size=8, policy_kwargs=ARCHS.get("grid_cnn").policy_kwargs(), seed=0).save(
        out / "agent.zip"
    )

    def load():
        return {"fingerprint": xrl.load_agent(out / "agent.zip").fingerprint()}

    return [fuzz("SB3 .zip", out / "agent.zip", load, 3)]


def dataset_h5(out: Path) -> list[dict]:
    from xrl.data.dataset import StateDataset, StateDatasetWriter

    rng = np.random.default_rng(0)
    path = out / "d.h5"
    meta = {"env": {"name": "red-fetch-green", "settings": {}}, "agent": {"source": "x"}, "action_names": ["a", "b"]}
    with StateDatasetWriter(path, **meta, collect={"seed": 0}) as writer:
        for episode, steps in enumerate((3, 4)):
            writer.append(
                states=rng.integers(0, 256, (steps, 3, 8, 8), dtype=np.uint8),
                frames=rng.integers(0, 256, (steps, 8, 8, 3), dtype=np.uint8),
                actions=rng.integers(0, 2, steps),
                scores=rng.normal(size=(steps, 2)),
            )
            writer.end_episode(float(episode))
        writer.finalize()

    def load():
        with StateDataset.open(path) as ds:
            return {
                "meta": ds.meta,
                **{k: getattr(ds, k)() for k in ("raw_states", "frames")},
                **{k: getattr(ds, k) for k in ("actions", "scores", "episode", "step", "episode_returns")},
            }

    return [fuzz("StateDataset .h5", path, load, 4)]


def spec_toml(out: Path) -> list[dict]:
    from xrl.bench import load_spec

    path = out / "spec.toml"
    path.write_text(
        "name = 'fuzz'\nmethods = ['random', 'gradient']\nmetrics = ['sparseness']\nn_states = 4\nseeds = [0, 1]\n"
        "[[agents]]\nagent = 'red-fetch-green'\nepisodes = 2\nmax_steps = 5\n"
    )

    def load():
        return load_spec(path, load_weights=False).resolved()

    return [fuzz("spec TOML", path, load, 5, message=lambda m: one_line(m) or spec_list(m), cut_ok=True)]


def checkpoint(out: Path) -> list[dict]:
    from xrl.train.run import Run, latest_checkpoint, load_tensors, read_json

    folder = out / "run"
    contents = {}
    with Run(folder, {"x": 1}) as run:
        for step in (64, 128):
            state, tensors = (
                {"step": step, "rng": list(range(step // 32))},
                {"w": torch.arange(step, dtype=torch.float32)},
            )

            def write(f, state=state, tensors=tensors):
                (f / "state.json").write_text(json.dumps(state))
                torch.save(tensors, f / "tensors.pt")

            run.save(step, write)
            contents[step] = {"state": state, "tensors": tensors}

    def load():
        found = latest_checkpoint(folder)
        if found is None:
            return None
        return {"state": read_json(found / "state.json"), "tensors": load_tensors(found / "tensors.pt")}

    newest = latest_checkpoint(folder)
    assert newest is not None
    # a damaged newest checkpoint falls back to the one before (docs/reliability.md)
    return [
        fuzz(f"checkpoint {name}", newest / name, load, 6 + i, accept=lambda got: same(contents[64], got))
        for i, name in enumerate(("state.json", "tensors.pt", "complete.json"))
    ]


def reproduce_rows(out: Path) -> list[dict]:
    from xrl.reproduce.core import Target, TargetRun

    target = Target(name="fuzz", paper="xrl", claim="", reruns="", settings={"seed": 0}, quick={}, run=lambda run: None)
    value = {"auc": [0.5, 0.25], "n": 3, "label": "deletion"}
    run = TargetRun(target, out / "repro", {"seed": 0}, progress=False)
    run.row("deletion", lambda: value)

    def load():
        return TargetRun(target, out / "repro", {"seed": 0}, progress=False).row("deletion", lambda: value)

    return [fuzz("reproduce row", out / "repro" / "rows" / "deletion.json", load, 9)]


KINDS = {
    "agent": agent_pt,
    "zip": sb3_zip,
    "h5": dataset_h5,
    "spec": spec_toml,
    "checkpoint": checkpoint,
    "rows": reproduce_rows,
}

if __name__ == "__main__":
    out = Path(sys.argv[1])
    for name in sys.argv[2:] or KINDS:
        (out / name).mkdir(parents=True, exist_ok=True)
        for result in KINDS[name](out / name):
            print(json.dumps(result), flush=True)
