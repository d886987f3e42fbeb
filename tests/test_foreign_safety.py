"""No new agent source runs code from a file (docs/agents.md, docs/artifacts.md): a pickled
payload that creates a marker file when unpickled is tried in each format — a CleanRL
``.cleanrl_model``, an sb3-contrib ``.zip`` (a ``:serialized:`` entry and a pickled
``policy.pth``), an rl-zoo Hub repo (its ``config.yml``, its ``env_kwargs.yml`` and its zip) —
and nothing runs; unpickling the same payloads on purpose does create the marker, so the tests
can fail."""

import base64
import io
import json
import pickle
import zipfile

import pytest
import torch
import yaml
from test_hub import COMMIT, put_in_cache
from test_load_safety import Marker, evil_zip

import xrl
from xrl.artifacts import ArtifactError

pytest.importorskip("sb3_contrib")


def test_a_cleanrl_file_holding_a_pickle_runs_nothing(tmp_path):
    marker = tmp_path / "ran"
    path = tmp_path / "dqn_atari.cleanrl_model"
    torch.save({"network.0.weight": torch.zeros(32, 4, 8, 8), "evil": Marker(marker)}, path)
    with pytest.raises(ArtifactError, match="holds Python objects other than weights"):
        xrl.load_agent(path)
    assert not marker.exists()
    c51 = tmp_path / "c51_atari.cleanrl_model"
    torch.save({"model_weights": {"atoms": torch.zeros(3)}, "args": Marker(marker)}, c51)
    with pytest.raises(ArtifactError):
        xrl.load_agent(c51)
    assert not marker.exists()
    torch.load(path, weights_only=False)  # the payload is live: unpickling it runs it
    assert marker.exists()


@pytest.fixture(scope="module")
def contrib_zip(tmp_path_factory):
    from sb3_contrib import QRDQN

    folder = tmp_path_factory.mktemp("contrib")
    env = xrl.make_env("red-fetch-green")
    QRDQN("CnnPolicy", env, seed=0, device="cpu", buffer_size=100, learning_starts=0).save(folder / "clean.zip")
    return folder / "clean.zip"


def test_an_sb3_contrib_zip_with_pickles_runs_nothing(tmp_path, contrib_zip):
    marker = tmp_path / "ran"
    evil = evil_zip(contrib_zip, tmp_path / "evil.zip", marker)
    model = xrl.load_agent(evil)  # rebuilt from its JSON and weights, the pickled entry ignored
    assert model.score_kind == "q_values" and not marker.exists()
    # a policy.pth that is a pickle of the payload, not weights
    with zipfile.ZipFile(contrib_zip) as z:
        members = {n: z.read(n) for n in z.namelist()}
    buffer = io.BytesIO()
    torch.save({"q": Marker(marker)}, buffer)
    members["policy.pth"] = buffer.getvalue()
    with zipfile.ZipFile(tmp_path / "evil2.zip", "w") as z:
        for name, blob in members.items():
            z.writestr(name, blob)
    with pytest.raises(ArtifactError, match="policy.pth that is not plain weights"):
        xrl.load_agent(tmp_path / "evil2.zip")
    assert not marker.exists()
    try:  # trusted on purpose: sb3-contrib unpickles the entry, whatever follows
        xrl.load_agent(evil, trust=True)
    except ValueError:
        pass
    assert marker.exists()


def _yaml_payload(marker) -> str:
    return f"!!python/object/apply:builtins.open\n- {json.dumps(str(marker))}\n- w\n"


@pytest.mark.parametrize("where", ["config.yml", "env_kwargs.yml"])
def test_a_hub_repo_with_a_python_tag_in_its_yaml_runs_nothing(tmp_path, monkeypatch, contrib_zip, where):
    marker = tmp_path / "ran"
    cache = tmp_path / "hub"
    files = {"qrdqn-PongNoFrameskip-v4.zip": contrib_zip.read_bytes(), "config.yml": b"frame_stack: 4\n"}
    files[where] = _yaml_payload(marker).encode()
    put_in_cache(cache, "sb3/qrdqn-PongNoFrameskip-v4", files)
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ArtifactError, match=f"{where} is not plain YAML"):
        xrl.load_agent("hf://sb3/qrdqn-PongNoFrameskip-v4")
    assert not marker.exists()
    snap = cache / "models--sb3--qrdqn-PongNoFrameskip-v4" / "snapshots" / COMMIT
    yaml.unsafe_load((snap / where).read_text())  # the payload is live for a loader that runs tags
    assert marker.exists()


def test_a_hub_repo_whose_zip_holds_a_pickle_runs_nothing(tmp_path, monkeypatch, contrib_zip):
    marker = tmp_path / "ran"
    evil = evil_zip(contrib_zip, tmp_path / "evil.zip", marker, where="observation_space")
    cache = tmp_path / "hub"
    put_in_cache(cache, "sb3/qrdqn-Foo-v0", {"qrdqn-Foo-v0.zip": evil.read_bytes()})
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    model = xrl.load_agent("hf://sb3/qrdqn-Foo-v0")
    assert model.n_actions > 0 and not marker.exists()
    data = json.loads(zipfile.ZipFile(evil).read("data"))
    pickle.loads(base64.b64decode(data["observation_space"][":serialized:"]))
    assert marker.exists()
