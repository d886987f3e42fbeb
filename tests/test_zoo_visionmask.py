"""The VisionMask / Stalder networks shipped in zoo/ belong to the agents shipped beside them and
still reproduce the accuracy their cards and docs report (so a retrained zoo agent cannot leave
them silently stale)."""

from pathlib import Path

import pytest
import torch

import xrl
from xrl.agents.mask_nets import load_mask_network
from xrl.data.dataset import StateDataset
from xrl.evaluation import evaluate
from xrl.train.visionmask import split_indices

ZOO = Path(__file__).resolve().parents[1] / "zoo"
ENTRIES = {"red-fetch-green-visionmask": "red-fetch-green", "pong-visionmask": "pong"}


@pytest.mark.parametrize("entry", sorted(ENTRIES))
def test_zoo_mask_networks_explain_their_agent(entry):
    model = xrl.load_agent(ENTRIES[entry])
    folder = ZOO / entry
    for method in ("visionmask", "stalder_explainer"):
        network = load_mask_network(folder / f"{method}.pt", method=method)
        network.check_agent(model)  # raises for another agent's weights
    with StateDataset.open(folder / "expert.h5") as ds:
        rows = split_indices(len(ds), 0)["test"][:8]
        states = ds.states(rows)
        masks = xrl.get_explainer("visionmask", model, network=folder / "visionmask.pt").explain_all(states)
    assert masks.shape == (8, model.n_actions, *states.shape[-2:])
    assert masks.min() >= 0 and masks.max() <= 1


def test_zoo_visionmask_accuracy_matches_the_card_on_the_validation_split():
    """The card's validation accuracy (raw masks, background reference) is recomputed here
    with the metric, independently of the training loop."""
    import json

    folder = ZOO / "red-fetch-green-visionmask"
    card = json.loads((folder / "visionmask.json").read_text())
    model = xrl.load_agent("red-fetch-green")
    network = load_mask_network(folder / "visionmask.pt", method="visionmask")
    with StateDataset.open(folder / "expert.h5") as ds:
        rows = split_indices(len(ds), card["split"]["seed"])["val"]
        with torch.no_grad():
            targets = model(ds.states(rows)).argmax(-1)
        stored = torch.as_tensor(ds.actions[rows])
        result = evaluate(
            model,
            ds,
            {"visionmask": {"network": network}},
            {"accuracy": {"substrate": "background", "background": network.reference_image, "normalize": "none"}},
            rows=rows,
            progress=False,
        )
    assert torch.equal(stored, targets)  # greedy data: stored actions are the agent's argmax
    assert result.means()["visionmask"]["accuracy"] == pytest.approx(card["scores"]["val"]["accuracy"], abs=1e-9)


def test_learned_explainers_find_their_zoo_network_by_the_agents_weights(tmp_path):
    """No network= / agent=: the zoo network made for the agent is found by its weights
    fingerprint, not by a path (a copy of the agent elsewhere finds the same networks); an agent
    the zoo has no network for is refused with what to do; a network made for another agent,
    given explicitly, is refused."""
    import shutil

    copy = tmp_path / "elsewhere" / "agent.pt"
    copy.parent.mkdir()
    shutil.copy(ZOO / "red-fetch-green" / "agent.pt", copy)
    shutil.copy(ZOO / "red-fetch-green" / "agent.json", copy.with_suffix(".json"))
    model = xrl.load_agent(copy)
    assert model.fingerprint() == xrl.load_agent("red-fetch-green").fingerprint()
    folder = (ZOO / "red-fetch-green-visionmask").resolve()
    for method in ("visionmask", "stalder_explainer"):
        found = xrl.get_explainer(method, model)
        assert Path(found.network_source).resolve() == folder / f"{method}.pt"
        given = xrl.get_explainer(method, model, network=folder / f"{method}.pt")
        states = torch.rand(2, *model.input_shape)
        assert torch.equal(found.explain_all(states), given.explain_all(states))
    rexl = xrl.get_explainer("rexl", model)
    assert [Path(p).resolve() for p in rexl.agent_paths] == [(ZOO / "red-fetch-green-rexl-ds" / "rexl.pt").resolve()]

    student = xrl.load_agent("red-fetch-green-digr-a1")  # same env and shapes, other weights
    for method in ("visionmask", "stalder_explainer"):
        with pytest.raises(ValueError, match=f"needs network=.*no {method} network for this agent"):
            xrl.get_explainer(method, student)
        with pytest.raises(ValueError, match="trained for another agent"):
            xrl.get_explainer(method, student, network=folder / f"{method}.pt")
    with pytest.raises(ValueError, match="needs a trained agent.*no RExL agent for this model"):
        xrl.get_explainer("rexl", student)
    with pytest.raises(ValueError, match="another model"):
        xrl.get_explainer("rexl", student, agent=ZOO / "red-fetch-green-rexl-ds" / "rexl.pt")
