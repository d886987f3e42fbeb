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
        result = evaluate(model, ds, {"visionmask": {"network": network}},
                          {"accuracy": {"substrate": "background", "background": network.reference_image,
                                        "normalize": "none"}}, rows=rows, progress=False)
    assert torch.equal(stored, targets)  # greedy data: stored actions are the agent's argmax
    assert result.means()["visionmask"]["accuracy"] == pytest.approx(card["scores"]["val"]["accuracy"], abs=1e-9)
