"""A bench job of a learned explainer (VisionMask, Stalder Explainer, RExL) has the weights
fingerprint of the network it runs in its key, whether the network was named in the spec or
found in the zoo by the agent's fingerprint: a retrained network is not served a stale result."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch

import xrl.agents.load  # noqa: F401 (imported before the fixture patches xrl.zoo.ZOO_DIR: a module
import xrl.zoo  # that first imports during the patch would keep the temporary zoo for the whole run)
from xrl.agents.mask_nets import load_mask_network, save_mask_network
from xrl.artifacts import fingerprint, read_card, sha256
from xrl.bench import load_spec
from xrl.bench.runner import prepare

ZOO = Path(xrl.zoo.__file__).resolve().parents[2] / "zoo"
NETWORK = ZOO / "red-fetch-green-visionmask" / "visionmask.pt"

AGENT = ZOO / "red-fetch-green" / "agent.pt"
SPEC = f"""\
name = "keys"
n_states = 2
methods = ["visionmask", "gradient"]
metrics = ["sparseness"]

[[agents]]
agent = "{AGENT}"
name = "red-fetch-green"
episodes = 1
max_steps = 4
"""


@pytest.fixture
def zoo(tmp_path, monkeypatch):
    """A zoo holding a copy of the Red-Fetch-Green VisionMask network, found by fingerprint."""
    if not NETWORK.exists():
        pytest.skip("the repository's zoo is not here")
    folder = tmp_path / "zoo" / "rfg-visionmask"
    folder.mkdir(parents=True)
    for suffix in (".pt", ".json"):
        shutil.copy(NETWORK.with_suffix(suffix), folder / f"visionmask{suffix}")
    monkeypatch.setattr(xrl.zoo, "ZOO_DIR", tmp_path / "zoo")
    monkeypatch.setattr(xrl.zoo, "_FOUND", {})
    return folder / "visionmask.pt"


def _spec(tmp_path, text=SPEC, name="spec.toml"):
    path = tmp_path / name
    path.write_text(text)
    return prepare(load_spec(path))[0]  # the networks are resolved by the runner, with the agents


def _jobs(spec):
    return {j.method: j for j in spec.jobs()}


def _retrain(path: Path, *, card: bool = True) -> str:
    """Change the network's weights as a retraining would; returns their fingerprint computed
    from the weights. ``card=False`` overwrites the file and leaves the old card beside it."""
    network = load_mask_network(path)
    with torch.no_grad():
        next(network.parameters()).add_(0.01)
    old = read_card(path)
    if card:
        save_mask_network(network, path, card={k: v for k, v in old.items() if k not in ("sha256", "fingerprint")})
    else:
        keep = path.with_suffix(".json").read_text()
        save_mask_network(network, path, card={k: v for k, v in old.items() if k not in ("sha256", "fingerprint")})
        path.with_suffix(".json").write_text(keep)
    return fingerprint(network.state_dict())


def test_a_zoo_network_found_by_fingerprint_is_in_the_key(zoo, tmp_path, monkeypatch):
    first = _jobs(_spec(tmp_path))
    # the network's fingerprint, computed here from its weights (not read from the job's card)
    assert first["visionmask"].network == fingerprint(load_mask_network(zoo).state_dict())
    assert first["gradient"].network == ""
    # the same network: the same keys
    assert {m: j.key for m, j in _jobs(_spec(tmp_path, name="again.toml")).items()} == {
        m: j.key for m, j in first.items()
    }

    new = _retrain(zoo)
    monkeypatch.setattr(xrl.zoo, "_FOUND", {})
    second = _jobs(_spec(tmp_path, name="retrained.toml"))
    assert second["visionmask"].network == new != first["visionmask"].network
    assert second["visionmask"].key != first["visionmask"].key
    assert second["gradient"].key == first["gradient"].key  # a method without a network keeps its key


def test_a_network_named_in_the_spec_and_one_overwritten_without_its_card(zoo, tmp_path):
    named = SPEC.replace(
        'metrics = ["sparseness"]', f'metrics = ["sparseness"]\n\n[method_settings.visionmask]\nnetwork = "{zoo}"'
    )
    before = _jobs(_spec(tmp_path, named))["visionmask"]
    assert before.network == read_card(zoo)["fingerprint"]
    _retrain(zoo, card=False)  # the old card no longer describes the file: its own hash is used
    after = _jobs(_spec(tmp_path, named, "after.toml"))["visionmask"]
    assert after.network == f"sha256:{sha256(zoo)[:16]}"
    assert after.key != before.key


def test_the_key_of_a_job_without_a_network_is_unchanged():
    """``network`` enters the key only when set: results stored before it existed stay valid."""
    import hashlib
    import json
    from dataclasses import asdict

    from xrl.bench.spec import Job

    job = Job("a", 0, "gradient", {}, {"sparseness": {}}, 2, 1, 0, False, {"agent": "a"})
    old = {k: v for k, v in asdict(job).items() if k != "network"}
    assert job.key == hashlib.sha256(json.dumps(old, sort_keys=True, default=str).encode()).hexdigest()[:16]
    with_network = Job(
        *[
            getattr(job, f)
            for f in (
                "agent",
                "seed",
                "method",
                "settings",
                "metrics",
                "n_states",
                "threads",
                "gallery",
                "store_saliency",
                "states",
            )
        ],
        network="x",
    )
    assert with_network.key != job.key


def test_stalder_and_rexl_jobs_carry_their_zoo_networks(tmp_path):
    """The zoo's Stalder network and RExL agent for Red-Fetch-Green, found by the agent's
    fingerprint: each job's network is the fingerprint of those weights."""
    from xrl.artifacts import load_payload

    rexl = ZOO / "red-fetch-green-rexl-ds" / "rexl.pt"
    stalder = NETWORK.with_name("stalder_explainer.pt")
    if not (rexl.exists() and stalder.exists()):
        pytest.skip("the repository's zoo is not here")
    jobs = _jobs(_spec(tmp_path, SPEC.replace('"visionmask", "gradient"', '"stalder_explainer", "rexl"')))
    assert jobs["stalder_explainer"].network == fingerprint(load_mask_network(stalder).state_dict())
    assert jobs["rexl"].network == fingerprint(load_payload(rexl)["state_dict"])
