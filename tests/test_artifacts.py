"""The artifact layer (xrl.artifacts, xrl.zoo): one weights fingerprint, the fingerprints the zoo
recorded before it still match, zoo explainer networks are found by their agent's fingerprint,
every zoo artifact loads by its format marker and matches its card's sha256."""

import hashlib
import json

import numpy as np
import pytest
import torch
from torch import nn

import xrl
from xrl.artifacts import ArtifactError, fingerprint, load_payload, read_header, save_payload, sha256
from xrl.zoo import ZOO_DIR, find_network, find_networks

AGENT = "red-fetch-green"


def reference_fingerprint(state: dict) -> str:
    """An independent re-implementation: sha256 over ``name:dtype:shape`` and the raw bytes (numpy)
    of every entry in order, first 16 hex digits."""
    h = hashlib.sha256()
    for name, t in state.items():
        array = t.detach().cpu().numpy()
        h.update(f"{name}:{t.dtype}:{tuple(t.shape)}".encode())
        h.update(np.ascontiguousarray(array).tobytes())
    return h.hexdigest()[:16]


def test_fingerprint_of_a_module_and_its_state_dict_against_a_reimplementation():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Flatten(), nn.LazyLinear(2))
    net(torch.zeros(1, 3, 8, 8))
    assert fingerprint(net) == fingerprint(net.state_dict()) == reference_fingerprint(net.state_dict())
    assert len(fingerprint(net)) == 16
    before = fingerprint(net)
    with torch.no_grad():
        net[0].weight[0, 0, 0, 0] += 1e-6  # one weight changed
    assert fingerprint(net) != before
    with pytest.raises(TypeError, match="nn.Module or a state_dict"):
        fingerprint([1, 2])


def test_one_fingerprint_everywhere_and_the_recorded_ones_still_match():
    from xrl.agents import rexl
    from xrl.data.collect import agent_record
    from xrl.data.dataset import StateDataset

    model = xrl.load_agent(AGENT)
    fp = model.fingerprint()
    assert fp == reference_fingerprint(model.state_dict()) == agent_record(model)["fingerprint"]
    assert rexl.fingerprint is fingerprint  # the old name is the one function
    # recorded before the artifact layer existed: mask network cards, a dataset, RExL agents
    card = json.loads((ZOO_DIR / "red-fetch-green-visionmask" / "visionmask.json").read_text())
    assert card["agent"]["fingerprint"] == fp
    with StateDataset.open(ZOO_DIR / "red-fetch-green-visionmask" / "expert.h5") as ds:
        assert ds.agent["fingerprint"] == fp
    header = read_header(ZOO_DIR / "red-fetch-green-rexl-ds" / "rexl.pt")
    assert header["model_fingerprint"] == fp
    extractor = rexl.build_extractor(model, header["extractor"], header["extractor_seed"])
    assert fingerprint(extractor) == header["extractor_fingerprint"] == reference_fingerprint(extractor.state_dict())
    pong = xrl.load_agent("pong")
    assert (
        pong.fingerprint()
        == json.loads((ZOO_DIR / "pong-visionmask" / "visionmask.json").read_text())["agent"]["fingerprint"]
    )


def test_find_network_gives_the_zoo_explainer_made_for_an_agent():
    fp = xrl.load_agent(AGENT).fingerprint()
    assert find_network("visionmask", fp) == ZOO_DIR / "red-fetch-green-visionmask" / "visionmask.pt"
    assert find_network("stalder_explainer", fp) == ZOO_DIR / "red-fetch-green-visionmask" / "stalder_explainer.pt"
    assert find_network("rexl", fp) == ZOO_DIR / "red-fetch-green-rexl-ds" / "rexl.pt"  # dataset-specific first
    assert find_networks("rexl", fp)[1:] == [
        ZOO_DIR / "red-fetch-green-rexl-cs" / f"class{c}" / "rexl.pt" for c in range(4)
    ]
    assert find_network("visionmask", "0" * 16) is None
    with pytest.raises(ValueError, match="unknown network kind 'gradcam'"):
        find_network("gradcam", fp)
    # what find_network gives is what the explainer accepts for that agent
    model = xrl.load_agent(AGENT)
    xrl.get_explainer("visionmask", model, network=find_network("visionmask", model.fingerprint()))


def test_find_network_in_another_zoo_folder(tmp_path):
    from xrl.agents.mask_nets import MaskNetwork, save_mask_network

    model = xrl.load_agent(AGENT)
    network = MaskNetwork.for_model(model, reference="black")
    save_mask_network(network, tmp_path / "mine" / "visionmask.pt", card={"what": "test"})
    assert find_network("visionmask", model.fingerprint(), zoo_dir=tmp_path) == tmp_path / "mine" / "visionmask.pt"
    assert find_network("stalder_explainer", model.fingerprint(), zoo_dir=tmp_path) is None


def test_save_payload_writes_format_version_card_sha256_and_fingerprint(tmp_path):
    net = nn.Linear(3, 2)
    path = save_payload(
        tmp_path / "c.pt",
        "xrl.classifier",
        {"arch": "x", "size": 4, "class_names": ["a", "b"]},
        net.state_dict(),
        card={"what": "test"},
    )
    payload = load_payload(path, "xrl.classifier")
    assert payload["format"] == "xrl.classifier" and payload["version"] == 1 and payload["arch"] == "x"
    card = json.loads(path.with_suffix(".json").read_text())
    assert card["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest() == sha256(path)
    assert card["fingerprint"] == reference_fingerprint(net.state_dict()) and card["format"] == "xrl.classifier"
    header = read_header(path)
    assert header["state_dict"]["weight"].device.type == "meta"  # the header reads no weights
    with pytest.raises(ArtifactError, match=r"is not an xrl agent checkpoint \(format 'xrl.classifier'\)"):
        load_payload(path, "xrl.agent")
    with pytest.raises(ValueError, match="may not hold"):
        save_payload(tmp_path / "d.pt", "xrl.classifier", {"format": "x"}, {})
    payload = torch.load(path, weights_only=True)
    torch.save({**payload, "version": 99}, tmp_path / "new.pt")
    with pytest.raises(ArtifactError, match="is xrl.classifier version 99; expected a version from 1 to 1"):
        load_payload(tmp_path / "new.pt")


def test_open_artifact_reads_format_card_and_payload_once_in_the_order_problems_are_told(tmp_path):
    from xrl.artifacts import open_artifact

    net = nn.Linear(3, 2)
    settings = {"arch": "x", "size": 4, "class_names": ["a", "b"]}
    path = save_payload(tmp_path / "c.pt", "xrl.classifier", settings, net.state_dict(), card={"what": "test"})
    art = open_artifact(path)
    assert art.path == path and art.format == "xrl.classifier"
    assert art.card == json.loads(path.with_suffix(".json").read_text())  # the card as written
    stored = torch.load(path, weights_only=True)
    assert {k: art.payload[k] for k in settings} == settings and art.payload["format"] == stored["format"]
    assert all(torch.equal(art.payload["state_dict"][k], v) for k, v in net.state_dict().items())
    header = open_artifact(path, weights=False).payload  # settings and shapes, no weights read
    assert header["state_dict"]["weight"].device.type == "meta" and header["arch"] == "x"
    # a format the loader does not take is refused first (before its card, here damaged, is read)
    path.with_suffix(".json").write_text("{not json")
    with pytest.raises(ArtifactError, match=r"c.pt is an xrl classifier, not an agent; expected agents only$"):
        open_artifact(path, formats=("xrl.agent",), wanted="an agent", expected="agents only")
    with pytest.raises(ArtifactError, match=r"c.json is not valid JSON"):  # then the card, before the payload
        open_artifact(path)


# -- datasets carry their agent's fingerprint ------------------------------------------------------

DATA = ZOO_DIR / "red-fetch-green-visionmask" / "expert.h5"  # collected by the zoo red-fetch-green agent


def _without_fingerprint(out):
    from xrl.data.dataset import StateDataset, StateDatasetWriter

    with StateDataset.open(DATA) as ds:
        agent = {k: v for k, v in ds.agent.items() if k != "fingerprint"}
        with StateDatasetWriter(
            out, env=ds.env, agent=agent, action_names=ds.action_names, collect=ds.collect_settings
        ) as w:
            w.append(
                states=ds.raw_states(slice(0, 8)),
                frames=ds.frames(slice(0, 8)),
                actions=ds.actions[:8],
                scores=ds.scores[:8],
                labels=None,
            )
            w.end_episode(0.0)
            return w.finalize()


def test_another_agents_dataset_is_refused_unless_targets_are_asked(tmp_path):
    from xrl.data.dataset import StateDataset
    from xrl.evaluation import dataset_targets, evaluate

    own, other = xrl.load_agent(AGENT), xrl.load_agent("red-fetch-green-cnn-500k-0")
    assert own.fingerprint() != other.fingerprint()
    rows = np.arange(6)
    with StateDataset.open(DATA) as ds:
        stored = torch.as_tensor(ds.actions[rows])
        assert torch.equal(dataset_targets(own, ds, rows), stored)
        with pytest.raises(
            ValueError,
            match=r"expert.h5 was collected by another agent \(.*weights 3442fcef43b3596b\) "
            r"than the one explained .*targets='agent'.*targets='dataset'",
        ):
            evaluate(other, ds, ["random"], ["sparseness"], n_states=4, progress=False)
        with pytest.raises(ValueError, match="collected by another agent"):
            dataset_targets(other, ds, rows)
        # asked explicitly: the explained agent's own greedy actions (an independent argmax), or the stored ones
        mine = other(ds.states(rows)).argmax(-1)
        assert torch.equal(dataset_targets(other, ds, rows, "agent"), mine)
        assert torch.equal(dataset_targets(other, ds, rows, "dataset"), stored)
        result = evaluate(other, ds, ["random"], ["sparseness"], n_states=4, progress=False, targets="agent")
        assert len(result.values["random"]["sparseness"]) == 4
        with pytest.raises(ValueError, match=r"targets must be one of \('dataset', 'agent'\)"):
            dataset_targets(own, ds, rows, "model")
    # a dataset from before fingerprints were recorded: a warning, not a refusal
    with StateDataset.open(_without_fingerprint(tmp_path / "old.h5")) as ds:
        with pytest.warns(UserWarning, match="records no agent fingerprint"):
            evaluate(other, ds, ["random"], ["sparseness"], n_states=4, progress=False)


def test_cli_evaluate_refuses_another_agents_data_and_takes_targets(tmp_path, capsys):
    from xrl import cli

    capsys.readouterr()
    code = cli.main(
        [
            "evaluate",
            "--agent",
            "red-fetch-green-cnn-500k-0",
            "--data",
            str(DATA),
            "--methods",
            "random",
            "--metrics",
            "sparseness",
            "--n-states",
            "4",
            "--out",
            str(tmp_path / "r"),
        ]
    )
    assert code == 2 and "collected by another agent" in capsys.readouterr().err
    code = cli.main(
        [
            "evaluate",
            "--agent",
            "red-fetch-green-cnn-500k-0",
            "--data",
            str(DATA),
            "--methods",
            "random",
            "--metrics",
            "sparseness",
            "--n-states",
            "4",
            "--out",
            str(tmp_path / "r"),
            "--targets",
            "agent",
        ]
    )
    assert code == 0 and (tmp_path / "r" / "metrics.csv").exists()


def test_every_save_records_sha256_and_the_fingerprint_a_loader_computes(tmp_path):
    from xrl.agents.mask_nets import MaskNetwork, load_mask_network, save_mask_network
    from xrl.classifiers import ShapesCNN, load_classifier, save_classifier

    torch.manual_seed(0)
    path = tmp_path / "classifier.pt"
    save_classifier(ShapesCNN(4), path, arch="shapes_cnn", size=16, class_names=list("abcd"), card={"what": "t"})
    card = json.loads(path.with_suffix(".json").read_text())
    model = load_classifier(path)
    assert card["fingerprint"] == model.fingerprint() == reference_fingerprint(model.state_dict())
    assert card["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest() and card["what"] == "t"
    assert xrl.load_agent(path).fingerprint() == model.fingerprint()  # load_agent takes classifiers
    stand_in = load_classifier(path, weights=False)  # header only: stand-in weights, the card's fingerprint
    assert stand_in.info["weights"] == "not loaded" and stand_in.fingerprint() == card["fingerprint"]
    assert fingerprint(stand_in) != card["fingerprint"]
    agent = xrl.load_agent(AGENT)
    network = MaskNetwork.for_model(agent, reference="black")
    save_mask_network(network, tmp_path / "visionmask.pt", card={"what": "t"})
    card = json.loads((tmp_path / "visionmask.json").read_text())
    loaded = load_mask_network(tmp_path / "visionmask.pt")
    assert card["fingerprint"] == reference_fingerprint(loaded.state_dict()) and card["format"] == "xrl.mask_network"
    assert card["sha256"] == sha256(tmp_path / "visionmask.pt")


def test_a_bench_spec_refuses_data_another_agent_collected(tmp_path, capsys):
    from xrl import cli

    spec = tmp_path / "spec.toml"
    spec.write_text(
        "methods = ['random']\nmetrics = ['sparseness']\n[[agents]]\n"
        f"agent = 'red-fetch-green-cnn-500k-0'\ndata = '{DATA}'\n"
    )
    for check in (True, False):  # checked without weights (the cards' fingerprints) and with them
        capsys.readouterr()
        code = cli.main(
            ["bench", str(spec), "--check"] if check else ["bench", str(spec), "--out", str(tmp_path / "o")]
        )
        err = capsys.readouterr().err
        assert code == 2, err
        assert f"dataset {DATA} was collected by another agent" in err and "weights 3442fcef43b3596b" in err, err
    spec.write_text(spec.read_text().replace("red-fetch-green-cnn-500k-0", AGENT))
    capsys.readouterr()
    assert cli.main(["bench", str(spec), "--check"]) == 0, capsys.readouterr().err


def test_zoo_verify_checks_sha256_and_loading(tmp_path, capsys):
    import shutil

    from xrl import cli
    from xrl.agents.load import update_zoo_sha256, verify_zoo

    zoo = tmp_path / "zoo"
    (zoo / "vm").mkdir(parents=True)
    for name in ("visionmask.pt", "visionmask.json"):
        shutil.copy(ZOO_DIR / "red-fetch-green-visionmask" / name, zoo / "vm" / name)
    capsys.readouterr()
    assert cli.main(["zoo", "--dir", str(zoo), "--verify"]) == 0
    assert "every zoo artifact loads and matches its card" in capsys.readouterr().out
    # the file rewritten (one setting changed, same weights): its sha256 differs, the command exits 1
    original = (zoo / "vm" / "visionmask.pt").read_bytes()
    payload = torch.load(zoo / "vm" / "visionmask.pt", weights_only=True)
    torch.save({**payload, "xrl_version": "0.0.1"}, zoo / "vm" / "visionmask.pt")
    assert cli.main(["zoo", "--dir", str(zoo), "--verify"]) == 1
    err = capsys.readouterr().err
    assert (
        f"{zoo / 'vm' / 'visionmask.pt'}: its sha256 is {sha256(zoo / 'vm' / 'visionmask.pt')}, its card "
        f"records {hashlib.sha256(original).hexdigest()} (the file changed or is damaged)" in err
    )
    # a damaged (truncated) file is one problem among others, not a crash
    (zoo / "vm" / "visionmask.pt").write_bytes(original[: len(original) // 2])
    assert cli.main(["zoo", "--dir", str(zoo), "--verify"]) == 1
    assert "visionmask.pt is not a readable xrl checkpoint (" in capsys.readouterr().err
    (zoo / "vm" / "visionmask.pt").write_bytes(original)
    # a card without sha256 is listed as not checked; --update-sha256 records it (for the file as it is now)
    card = json.loads((zoo / "vm" / "visionmask.json").read_text())
    del card["sha256"]
    (zoo / "vm" / "visionmask.json").write_text(json.dumps(card))
    unchecked = []
    assert verify_zoo(zoo, unchecked=unchecked) == [] and unchecked == [zoo / "vm" / "visionmask.pt"]
    assert update_zoo_sha256(zoo) == [zoo / "vm" / "visionmask.json"]
    assert json.loads((zoo / "vm" / "visionmask.json").read_text())["sha256"] == sha256(zoo / "vm" / "visionmask.pt")
    # a card recording other weights than the file holds
    card = json.loads((zoo / "vm" / "visionmask.json").read_text())
    (zoo / "vm" / "visionmask.json").write_text(json.dumps({**card, "fingerprint": "0" * 16}))
    assert verify_zoo(zoo) == [
        f"{zoo / 'vm' / 'visionmask.pt'}: weights fingerprint {card['fingerprint']}, its card records {'0' * 16}"
    ]
