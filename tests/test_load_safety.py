"""Loading never runs code from a file (docs/artifacts.md, docs/reliability.md "Loading safety").

Crafted, harmless payloads — an SB3 ``.zip`` whose ``:serialized:`` entry and an ``.pt`` whose
pickle would each create a marker file when unpickled — run nothing under ``xrl.load_agent``,
``xrl bench SPEC --check`` and ``xrl collect --agent file.zip``; the same payloads do create the
marker when unpickled on purpose (``trust=True``, plain ``torch.load``), so the tests can fail.
``bench --check`` reads no weights. Bad files give one line naming the file and what was expected.
"""

import base64
import json
import pickle
import shutil
import zipfile
from pathlib import Path

import pytest
import torch

import xrl
from xrl import cli
from xrl.agents.load import ZOO_DIR, load_agent
from xrl.artifacts import ArtifactError

AGENT = "red-fetch-green"


class Marker:
    """Unpickling this creates ``path`` (``open(path, "w")``): the harmless stand-in for code."""

    def __init__(self, path: Path) -> None:
        self.path = str(path)

    def __reduce__(self):
        return (open, (self.path, "w"))


def run(capsys, *argv) -> tuple[int, str, str]:
    capsys.readouterr()
    try:
        code = cli.main([str(a) for a in argv])
    except SystemExit as exc:
        code = exc.code
    out = capsys.readouterr()
    return code, out.out, out.err


@pytest.fixture(scope="module")
def sb3_zip(tmp_path_factory):
    """A plain SB3 PPO ``.zip`` for Red-Fetch-Green (untrained) and the observations to score."""
    from stable_baselines3 import PPO

    folder = tmp_path_factory.mktemp("sb3")
    env = xrl.make_env(AGENT)
    algo = PPO("CnnPolicy", env, seed=0, device="cpu", n_steps=16, batch_size=16)
    algo.save(folder / "clean.zip")
    obs, _ = env.reset(seed=0)
    env.close()
    return folder / "clean.zip", algo, obs


def evil_zip(clean: Path, out: Path, marker: Path, *, where: str = "extra") -> Path:
    """``clean`` with a ``:serialized:`` entry that creates ``marker`` when SB3 unpickles it."""
    payload = base64.b64encode(pickle.dumps(Marker(marker))).decode()
    with zipfile.ZipFile(clean) as z:
        members = {name: z.read(name) for name in z.namelist()}
    data = json.loads(members["data"])
    if where == "extra":
        data["evil"] = {":type:": "<class 'object'>", ":serialized:": payload}
    else:  # inside an entry the loader reads the plain fields of
        data[where][":serialized:"] = payload
    members["data"] = json.dumps(data).encode()
    with zipfile.ZipFile(out, "w") as z:
        for name, blob in members.items():
            z.writestr(name, blob)
    return out


def test_an_sb3_zip_is_rebuilt_without_unpickling_and_scores_like_sb3(tmp_path, sb3_zip):
    clean, algo, obs = sb3_zip
    marker = tmp_path / "ran"
    for where in ("extra", "policy_kwargs", "observation_space", "policy_class"):
        path = evil_zip(clean, tmp_path / f"evil-{where}.zip", marker, where=where)
        model = load_agent(path)
        assert not marker.exists(), where
        with torch.no_grad():
            obs_t, _ = algo.policy.obs_to_tensor(obs)
            expected = algo.policy.get_distribution(obs_t).distribution.logits
            torch.testing.assert_close(torch.log_softmax(model(model.preprocess(obs)), -1), expected)
    # the payload is live: unpickled on purpose (trust=True) it creates the marker
    load_agent(tmp_path / "evil-extra.zip", trust=True)
    assert marker.exists()


def test_a_pt_with_a_pickle_payload_runs_nothing(tmp_path):
    marker = tmp_path / "ran"
    payload = torch.load(ZOO_DIR / AGENT / "agent.pt", weights_only=True)
    torch.save({**payload, "evil": Marker(marker)}, tmp_path / "agent.pt")
    for load in (load_agent, xrl.load):
        with pytest.raises(
            ArtifactError,
            match=r"agent.pt is not a readable xrl checkpoint \(it holds Python "
            r"objects other than weights \(loading it would run code\)\)",
        ):
            load(tmp_path / "agent.pt")
    assert not marker.exists()
    torch.load(tmp_path / "agent.pt", weights_only=False)  # the payload is live
    assert marker.exists()


def spec_for(tmp_path: Path, agent: Path) -> Path:
    spec = tmp_path / "spec.toml"
    spec.write_text(f"methods = ['random']\nmetrics = ['sparseness']\n[[agents]]\nagent = '{agent}'\nenv = '{AGENT}'\n")
    return spec


def test_bench_check_and_collect_run_nothing_from_a_zip(tmp_path, sb3_zip, capsys):
    marker = tmp_path / "ran"
    path = evil_zip(sb3_zip[0], tmp_path / "evil.zip", marker)
    code, out, err = run(capsys, "bench", spec_for(tmp_path, path), "--check")
    assert code == 0 and "OK, up to 1 jobs" in out, err
    code, out, err = run(
        capsys,
        "collect",
        "--agent",
        path,
        "--env",
        AGENT,
        "--episodes",
        1,
        "--max-steps",
        2,
        "--out",
        tmp_path / "d.h5",
    )
    assert code == 0 and (tmp_path / "d.h5").exists(), err
    assert not marker.exists()


def test_bench_check_reads_no_weights(tmp_path, sb3_zip, capsys, monkeypatch):
    # an SB3 zip whose weights are damaged: the check passes (it never reads them), loading fails
    with zipfile.ZipFile(sb3_zip[0]) as z:
        members = {name: z.read(name) for name in z.namelist()}
    with zipfile.ZipFile(tmp_path / "damaged.zip", "w") as z:
        for name, blob in members.items():
            z.writestr(name, blob[: len(blob) // 2] if name == "policy.pth" else blob)
    code, out, err = run(capsys, "bench", spec_for(tmp_path, tmp_path / "damaged.zip"), "--check")
    assert code == 0 and "OK" in out, err
    with pytest.raises(ArtifactError, match="damaged.zip holds a policy.pth that is not plain weights"):
        load_agent(tmp_path / "damaged.zip")
    # an xrl agent checkpoint: the check reads its header only
    import xrl.artifacts

    def refuse(*args, **kwargs):
        raise AssertionError("bench --check read weights")

    monkeypatch.setattr(xrl.artifacts, "load_payload", refuse)
    monkeypatch.setattr("xrl.agents.load.load_payload", refuse)
    code, out, err = run(capsys, "bench", spec_for(tmp_path, ZOO_DIR / AGENT / "agent.pt"), "--check")
    assert code == 0 and "OK" in out, err


@pytest.mark.slow
def test_a_spec_naming_crafted_files_runs_nothing_when_checked_or_run(tmp_path, sb3_zip, capsys):
    """A bench spec is TOML (no code); what it names may be crafted: a ``.zip`` with a
    ``:serialized:`` payload is benchmarked without running it, a ``.pt`` with a pickle payload
    is refused by ``--check`` and by the run (the spec's problem names the file and line), and
    runs nothing."""
    marker = tmp_path / "ran"
    zip_spec = spec_for(tmp_path, evil_zip(sb3_zip[0], tmp_path / "evil.zip", marker))
    code, out, err = run(capsys, "bench", zip_spec, "--out", tmp_path / "zip-results")
    assert code == 0 and (tmp_path / "zip-results" / "results.json").exists(), err
    assert not marker.exists()
    (tmp_path / "pt").mkdir()
    payload = torch.load(ZOO_DIR / AGENT / "agent.pt", weights_only=True)
    torch.save({**payload, "evil": Marker(marker)}, tmp_path / "pt" / "agent.pt")
    shutil.copy(ZOO_DIR / AGENT / "agent.json", tmp_path / "pt" / "agent.json")
    pt_spec = spec_for(tmp_path / "pt", tmp_path / "pt" / "agent.pt")
    for extra in (["--check"], ["--out", tmp_path / "pt-results"]):
        code, out, err = run(capsys, "bench", pt_spec, *extra)
        assert not marker.exists(), extra
        assert code == 2 and f"spec.toml:4: agents[0].agent: cannot load agent '{tmp_path / 'pt' / 'agent.pt'}'" in err
        assert "holds Python objects other than weights (loading it would run code)" in err, err
    assert not (tmp_path / "pt-results").exists()
    torch.load(tmp_path / "pt" / "agent.pt", weights_only=False)  # the payload is live
    assert marker.exists()


# -- bad files: one line naming the file and what was expected -------------------------------------


def _copy_agent(folder: Path) -> Path:
    folder.mkdir(exist_ok=True)
    shutil.copy(ZOO_DIR / AGENT / "agent.pt", folder / "agent.pt")
    return folder / "agent.pt"


def _bad_inputs(tmp: Path) -> list[tuple[str, Path, str]]:
    """(case, file given to load_agent, the message expected)."""
    cases = []

    def case(name, make, message):
        folder = tmp / name
        folder.mkdir()
        cases.append((name, make(folder), message))

    good = (ZOO_DIR / AGENT / "agent.pt").read_bytes()

    def write(name, data):
        def make(folder):
            (folder / name).write_bytes(data)
            return folder / name

        return make

    def with_card(text):
        def make(folder):
            path = _copy_agent(folder)
            path.with_suffix(".json").write_text(text)
            return path

        return make

    def saved(obj, name="agent.pt"):
        def make(folder):
            torch.save(obj, folder / name)
            return folder / name

        return make

    payload = torch.load(ZOO_DIR / AGENT / "agent.pt", weights_only=True)
    case("truncated", write("agent.pt", good[: len(good) // 3]), r"agent.pt is not a readable xrl checkpoint \(")
    case("empty", write("agent.pt", b""), r"agent.pt is not a readable xrl checkpoint \(")
    case("garbage", write("agent.pt", bytes(range(256)) * 8), r"agent.pt is not a readable xrl checkpoint \(")
    case("text", write("agent.pt", b"hello"), r"agent.pt is not a readable xrl checkpoint \(")
    case("a list", saved([1, 2]), r"agent.pt holds a list, not an xrl artifact; expected a dict with format")
    case(
        "bare state_dict",
        saved(payload["state_dict"]),
        r"agent.pt is not an xrl agent checkpoint or .* \(no 'format' marker\); expected format 'xrl.agent' written by",
    )
    case("other format", saved({"format": "xrl.nonsense"}), r"\(format 'xrl.nonsense'\); expected format 'xrl.agent'")
    case(
        "future version",
        saved({**payload, "version": 7}),
        r"agent.pt is xrl.agent version 7; expected a version from 1 to 1 \(a newer xrl wrote it\? upgrade xrl\)",
    )
    case(
        "state_dict a list",
        saved({**payload, "state_dict": [1]}),
        r"agent.pt has a list as 'state_dict'; expected a dict of tensors",
    )
    case(
        "obs_shape wrong",
        saved({**payload, "obs_shape": [3, 64]}),
        r"agent.pt has obs_shape \[3, 64\]; expected obs_shape \[C, H, W\]",
    )
    case(
        "n_actions string",
        saved({**payload, "n_actions": "4"}),
        r"agent.pt has n_actions '4'; expected n_actions an integer >= 1",
    )
    case(
        "algo unknown",
        saved({**payload, "algo": "sac"}),
        r"agent.pt has algo 'sac'; expected algo one of ppo, a2c, dqn",
    )
    case(
        "arch unknown",
        saved({**payload, "arch": "resnet9000"}),
        r"agent.pt has arch 'resnet9000'; expected a registered architecture",
    )
    case(
        "mask network given",
        lambda f: ZOO_DIR / "red-fetch-green-visionmask" / "visionmask.pt",
        r"visionmask.pt is an xrl mask network, not an agent; expected an agent or a classifier \(xrl.load\(path\)",
    )
    case(
        "rexl agent given",
        lambda f: ZOO_DIR / "red-fetch-green-rexl-ds" / "rexl.pt",
        r"rexl.pt is a RExL agent, not an agent; expected an agent or a classifier",
    )
    case(
        "card a list",
        with_card("[1, 2]"),
        r"agent.json holds a JSON list; expected a JSON object \(the card's fields\)",
    )
    case(
        "card env a string",
        with_card('{"env": "pong"}'),
        r"agent.json has 'env' = \"pong\"; expected 'env': \{\"name\": \"<registered env>\", \"settings\": \{...\}\}",
    )
    case(
        "card bad JSON",
        with_card('{"env": '),
        r"agent.json is not valid JSON \(Expecting value at line 1 column 9\); expected a JSON card",
    )
    case(
        "card not text",
        lambda f: (with_card("")(f), f.joinpath("agent.json").write_bytes(b"\xff\xfe\x00"))[0],
        r"agent.json is not text \(invalid start byte\); expected a JSON card",
    )
    case(
        "zip not a zip",
        write("agent.zip", b"PK not really"),
        r"agent.zip is not a zip file; expected an SB3 model saved with model.save\(\)",
    )

    def other_zip(folder):
        with zipfile.ZipFile(folder / "agent.zip", "w") as z:
            z.writestr("hello.txt", "hi")
        return folder / "agent.zip"

    case(
        "zip of something else",
        other_zip,
        r"agent.zip is not a loadable SB3 PPO/A2C/DQN model \(a zip holding \['hello.txt'\]\)",
    )
    case(
        "unknown suffix",
        write("agent.onnx", b"x"),
        r"agent files are SB3 .zip, xrl .pt checkpoints or CleanRL .cleanrl_model files, got 'agent.onnx'",
    )
    case("missing", lambda f: f / "nosuch.pt", r"no agent file .*nosuch.pt' and no zoo agent of that name")
    return cases


def test_bad_agent_files_give_one_line_naming_the_file(tmp_path):
    cases = _bad_inputs(tmp_path)
    assert len(cases) >= 20
    for name, path, message in cases:
        with pytest.raises(ValueError) as err:
            load_agent(path)
        text = str(err.value)
        assert "\n" not in text, (name, text)
        assert re_search(message, text), (name, text)
        assert not isinstance(err.value, ArtifactError) or err.value.path.endswith((path.name, ".json")), name


def re_search(pattern: str, text: str) -> bool:
    import re

    return re.search(pattern, text) is not None


def test_bad_sb3_zip_json_refused_without_trust(tmp_path, sb3_zip):
    clean = sb3_zip[0]
    with zipfile.ZipFile(clean) as z:
        members = {name: z.read(name) for name in z.namelist()}

    def variant(name, change):
        data = json.loads(members["data"])
        change(data)
        with zipfile.ZipFile(tmp_path / name, "w") as z:
            for member, blob in members.items():
                z.writestr(member, json.dumps(data).encode() if member == "data" else blob)
        return tmp_path / name

    def foreign_class(d):
        d["policy_kwargs"] = {"features_extractor_class": "<class 'os.system'>"}

    def foreign_policy(d):
        d["policy_class"]["__module__"] = "subprocess"

    def dunder(d):
        d["policy_kwargs"] = {"features_extractor_class": "<class 'xrl.__main__.Thing'>"}

    def dict_space(d):
        d["observation_space"][":type:"] = "<class 'gymnasium.spaces.dict.Dict'>"

    for name, change, message in (
        (
            "foreign.zip",
            foreign_class,
            r"names features_extractor_class <class 'os.system'>; expected a class of "
            r"stable_baselines3, sb3_contrib, xrl, torch.nn; if you trust the file, load it with trust=True",
        ),
        ("policy.zip", foreign_policy, r"names policy class <class 'subprocess.ActorCriticCnnPolicy'>;"),
        ("dunder.zip", dunder, r"names features_extractor_class <class 'xrl.__main__.Thing'>;"),
        (
            "dict.zip",
            dict_space,
            r"observes <class 'gymnasium.spaces.dict.Dict'> and acts in .*; expected a Box observation",
        ),
    ):
        with pytest.raises(ArtifactError, match=message):
            load_agent(variant(name, change))


@pytest.mark.slow
def test_xrl_load_loads_every_kind_and_load_agent_every_model_in_the_zoo():
    """Every artifact in the zoo (agents, DIGR students, classifier, mask networks, RExL agents)
    loads by its format marker."""
    from xrl.agents.mask_nets import MaskNetwork
    from xrl.agents.rexl import RExLAgent
    from xrl.zoo import zoo_artifacts

    kinds = set()
    for row in zoo_artifacts():
        loaded = xrl.load(row["path"])
        kinds.add(row["kind"])
        expected = {"agent": xrl.Model, "classifier": xrl.Model, "mask_network": MaskNetwork, "rexl_agent": RExLAgent}[
            row["kind"]
        ]
        assert isinstance(loaded, expected), row["path"]
        if row["kind"] in ("agent", "classifier"):
            assert load_agent(row["path"]).fingerprint() == loaded.fingerprint()
    assert kinds == {"agent", "classifier", "mask_network", "rexl_agent"}


def test_trust_pickle_is_an_explicit_opt_in_on_the_command_line(tmp_path, sb3_zip, capsys):
    """A zip the safe loader cannot rebuild (its observation space only in pickled form) is
    refused with the way out named; ``--trust-pickle`` loads it, and then its pickles do run."""
    marker = tmp_path / "ran"
    path = evil_zip(sb3_zip[0], tmp_path / "opaque.zip", marker)
    with zipfile.ZipFile(path) as z:
        members = {name: z.read(name) for name in z.namelist()}
    data = json.loads(members["data"])
    data["observation_space"] = {k: v for k, v in data["observation_space"].items() if k.startswith(":")}
    data["observation_space"][":type:"] = "<class 'mypackage.spaces.Custom'>"
    members["data"] = json.dumps(data).encode()
    with zipfile.ZipFile(path, "w") as z:
        for name, blob in members.items():
            z.writestr(name, blob)
    argv = ["collect", "--agent", path, "--env", AGENT, "--episodes", 1, "--max-steps", 2, "--out", tmp_path / "d.h5"]
    code, out, err = run(capsys, *argv)
    assert code == 2 and "opaque.zip observes <class 'mypackage.spaces.Custom'>" in err
    assert "load it with trust=True (CLI --trust-pickle), which runs code from it" in err
    assert not marker.exists() and not (tmp_path / "d.h5").exists()
    code, out, err = run(capsys, *argv, "--trust-pickle")
    assert code == 0 and (tmp_path / "d.h5").exists(), err
    assert marker.exists()  # trusted: Stable-Baselines3 unpickled the file
