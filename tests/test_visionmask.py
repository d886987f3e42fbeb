"""VisionMask and the Stalder Explainer: every loss term against a hand computation, the mask
networks, a one-batch overfit, training that resumes to the same result and refuses mismatched
inputs, the explainers and the counterfactual, the CLI on tiny budgets."""

import json
import math

import numpy as np
import pytest
import torch

import xrl
from xrl.agents.load import build_policy, model_from_policy
from xrl.agents.mask_nets import MASK_NETS, MaskNetwork, load_mask_network, overlay, save_mask_network
from xrl.data.collect import collect
from xrl.explainers.visionmask import counterfactual, salient_region
from xrl.ops import reference_image
from xrl.train import visionmask as vm
from xrl.train.run import latest_checkpoint
from xrl.train.visionmask import (
    StalderArgs,
    VisionMaskArgs,
    action_contrastive_loss,
    area_loss,
    classification_loss,
    entropy_loss,
    min_max_area_loss,
    negative_entropy_loss,
    split_indices,
    total_variation,
    train_stalder,
    train_visionmask,
)

AGENT = "red-fetch-green"


# ---------------------------------------------------------------- losses by hand


def test_action_contrastive_loss_matches_eq_2_and_3():
    # K = 2, z[i, j] = logit of action j on the state kept by mask i; target a = 0
    z = torch.tensor([[[1.0, 0.0], [2.0, 3.0]]])
    pos, neg = action_contrastive_loss(z, torch.tensor([0]))
    # L_pos: row a (mask a, over actions j): -1/2 log(e^1 / (e^1 + e^0))
    assert pos.item() == pytest.approx(-0.5 * math.log(math.e / (math.e + 1)), rel=1e-6)
    # L_neg: column a (action a, over masks i): -1/2 log(e^1 / (e^1 + e^2))
    assert neg.item() == pytest.approx(-0.5 * math.log(math.e / (math.e + math.e**2)), rel=1e-6)
    # target 1: row 1 is (2, 3), column 1 is (0, 3); batch mean over two states
    pos, neg = action_contrastive_loss(torch.cat([z, z]), torch.tensor([0, 1]))
    pos1 = -0.5 * math.log(math.e**3 / (math.e**2 + math.e**3))
    neg1 = -0.5 * math.log(math.e**3 / (1 + math.e**3))
    assert pos.item() == pytest.approx((-0.5 * math.log(math.e / (math.e + 1)) + pos1) / 2, rel=1e-6)
    assert neg.item() == pytest.approx((-0.5 * math.log(math.e / (math.e + math.e**2)) + neg1) / 2, rel=1e-6)


def test_negative_entropy_loss_matches_eq_4():
    z = torch.tensor([[[0.0, 0.0], [math.log(3.0), 0.0]]])  # p~_0 = (1/2, 1/2), p~_1 = (3/4, 1/4)
    expected = (2 * 0.5 * math.log(0.5) + 0.75 * math.log(0.75) + 0.25 * math.log(0.25)) / 4
    assert negative_entropy_loss(z).item() == pytest.approx(expected, rel=1e-6)
    uniform = torch.zeros(3, 4, 4)
    assert negative_entropy_loss(uniform).item() == pytest.approx(-math.log(4) / 4, rel=1e-6)  # its minimum


def test_area_loss_matches_eq_5_and_total_variation_by_hand():
    masks = torch.stack([torch.full((2, 2), 0.5), torch.tensor([[1.0, 0.0], [0.0, 0.0]])])[None]  # (1, 2, 2, 2)
    assert area_loss(masks, 0.1).item() == pytest.approx((0.4 + 0.15) / 2, rel=1e-6)
    assert area_loss(masks, 0.25).item() == pytest.approx((0.25 + 0.0) / 2, rel=1e-6)
    stripes = torch.tensor([[[[0.0, 1.0], [0.0, 1.0]]]])  # equal rows, columns differ by 1
    assert total_variation(stripes).item() == pytest.approx(1.0)
    assert total_variation(stripes.transpose(-1, -2)).item() == pytest.approx(1.0)
    assert total_variation(torch.full((2, 3, 4, 4), 0.7)).item() == 0


def test_stalder_losses_by_hand():
    mask = torch.tensor([[[0.9, 0.2], [0.0, 0.6]]])  # sorted: 0.9, 0.6, 0.2, 0
    # min 0.25: the first value should be 1 (0.1 short); max 0.5: values after the second should be 0 (0.2)
    assert min_max_area_loss(mask, 0.25, 0.5).item() == pytest.approx(0.1 / 4 + 0.2 / 4, rel=1e-6)
    assert min_max_area_loss(mask, 0.0, 1.0).item() == 0
    z = torch.tensor([[math.log(3.0), 0.0]])
    assert classification_loss(z, torch.tensor([1])).item() == pytest.approx(-math.log(0.25), rel=1e-6)
    assert entropy_loss(z).item() == pytest.approx(0.75 * math.log(0.75) + 0.25 * math.log(0.25), rel=1e-6)


def test_overlay_is_eq_1():
    s = torch.tensor([[[[1.0, 2.0]], [[3.0, 4.0]]]])  # (1, C=2, 1, 2)
    r = torch.full_like(s, 10.0)
    m = torch.tensor([[[[0.25, 1.0]], [[0.0, 0.5]]]])  # (1, K=2, 1, 2)
    kept, removed = overlay(s, m, r)
    assert kept.shape == removed.shape == (1, 2, 2, 1, 2)
    torch.testing.assert_close(kept[0, 0, 1, 0], torch.tensor([0.25 * 3 + 0.75 * 10, 4.0]))
    torch.testing.assert_close(removed[0, 1, 0, 0], torch.tensor([1.0 * 1 + 10 * 0.0, 0.5 * 2 + 0.5 * 10]))


def test_the_visionmask_loss_is_the_weighted_sum_of_its_terms():
    model = xrl.load_agent(AGENT)
    network = MaskNetwork.for_model(model, reference="black")
    x = torch.rand(3, *model.input_shape, generator=torch.Generator().manual_seed(0))
    args = VisionMaskArgs(agent=AGENT, data="-", lambda_ne=0.7, lambda_area=2.0, lambda_tv=0.5, a_max=0.2)
    t = vm.visionmask_losses(model, network, x, torch.tensor([0, 1, 3]), args)
    expected = t["pos"] + t["neg"] + 0.7 * t["ne"] + 2.0 * t["area"] + 0.5 * t["tv"]
    torch.testing.assert_close(t["loss"], expected)
    masks = network.masks(x)
    torch.testing.assert_close(t["area"], area_loss(masks, 0.2))
    args = VisionMaskArgs(agent=AGENT, data="-", area="min_max", min_area=0.1, max_area=0.4)
    t = vm.visionmask_losses(model, network, x, torch.tensor([0, 1, 3]), args)  # Table 2a's ablation
    per_mask = [min_max_area_loss(masks[b, k][None], 0.1, 0.4) for b in range(3) for k in range(4)]
    torch.testing.assert_close(t["area"], torch.stack(per_mask).mean())
    s = StalderArgs(agent=AGENT, data="-", lambda_ent=0.5, lambda_area=3.0, lambda_others=0.1, lambda_tv=0.2)
    t = vm.stalder_losses(model, network, x, torch.tensor([0, 1, 3]), s)
    expected = t["cls"] + 0.5 * t["ent"] + 3.0 * t["area"] + 0.1 * t["others"] + 0.2 * t["tv"]
    torch.testing.assert_close(t["loss"], expected)
    others = [masks[0, [1, 2, 3]].mean(), masks[1, [0, 2, 3]].mean(), masks[2, [0, 1, 2]].mean()]
    torch.testing.assert_close(t["others"], torch.stack(others).mean())


# ---------------------------------------------------------------- networks, references, split


@pytest.mark.parametrize("arch", MASK_NETS.names())
def test_every_mask_network_gives_k_masks_in_0_1(arch):
    network = MaskNetwork(arch, (4, 32, 32), 5, reference="black").eval()  # 4 stacked frames
    with torch.no_grad():
        masks = network.masks(torch.rand(2, 4, 32, 32) * 40 - 20)  # far outside [0, 1]: sigmoid still bounds
    assert masks.shape == (2, 5, 32, 32)
    assert ((masks >= 0) & (masks <= 1)).all()


def test_reference_values():
    raw = np.array([[[[0, 10]]], [[[20, 200]]], [[[40, 250]]], [[[255, 255]]]], dtype=np.uint8)  # (4, 1, 1, 2)
    torch.testing.assert_close(reference_image(raw, "background", 255.0), torch.tensor([[[20 / 255, 200 / 255]]]))
    torch.testing.assert_close(
        reference_image(raw, "mean", 255.0), torch.full((1, 1, 2), (0 + 10 + 20 + 200 + 40 + 250 + 255 + 255) / 8 / 255)
    )
    assert reference_image(raw, "black", 255.0) is None
    x = torch.rand(2, 3, 8, 8)
    assert torch.equal(MaskNetwork("small", (3, 8, 8), 2, reference="black").reference_for(x), torch.zeros_like(x))
    blur = MaskNetwork("small", (3, 8, 8), 2, reference="blur").reference_for(x)
    torch.testing.assert_close(blur, xrl.ops.gaussian_blur(x, 15.0, kernel_size=39))
    with pytest.raises(ValueError, match="reference image"):
        MaskNetwork("small", (3, 8, 8), 2, reference="background")
    with pytest.raises(ValueError, match="reference must be one of"):
        MaskNetwork("small", (3, 8, 8), 2, reference="grey")


def test_split_is_80_10_10_seeded_and_disjoint():
    a, b = split_indices(100, 3), split_indices(100, 3)
    assert [len(a[k]) for k in ("train", "val", "test")] == [80, 10, 10]
    assert all(np.array_equal(a[k], b[k]) for k in a)
    assert sorted(np.concatenate(list(a.values()))) == list(range(100))
    assert not np.array_equal(a["test"], split_indices(100, 4)["test"])
    with pytest.raises(ValueError, match="at least 3"):
        split_indices(2, 0)


def test_checkpoint_round_trip_and_foreign_files(tmp_path):
    model = xrl.load_agent(AGENT)
    network = MaskNetwork.for_model(model, reference="mean", reference_image=torch.rand(*model.input_shape))
    path = save_mask_network(network, tmp_path / "net.pt", card={"what": "test"})
    loaded = load_mask_network(path)
    x = torch.rand(2, *model.input_shape)
    torch.testing.assert_close(loaded.masks(x), network.eval().masks(x))
    torch.testing.assert_close(loaded.reference_for(x), network.reference_for(x))
    assert json.loads(path.with_suffix(".json").read_text())["what"] == "test"
    torch.save({"format": "something else"}, tmp_path / "foreign.pt")
    with pytest.raises(ValueError, match="not an xrl mask network"):
        load_mask_network(tmp_path / "foreign.pt")
    (tmp_path / "text.pt").write_text("hello")
    with pytest.raises(ValueError, match="not an xrl mask network"):
        load_mask_network(tmp_path / "text.pt")
    with pytest.raises(FileNotFoundError, match="xrl train visionmask"):
        load_mask_network(tmp_path / "missing.pt")


# ---------------------------------------------------------------- training


@pytest.fixture(scope="module")
def expert(tmp_path_factory):
    """A tiny expert dataset of the zoo agent (6 sampled episodes of at most 16 steps)."""
    path = tmp_path_factory.mktemp("expert") / "rfg.h5"
    collect(xrl.load_agent(AGENT), episodes=6, out=path, max_steps=16, sample=True, progress=False)
    return str(path)


def tiny(tmp_path, expert, name="run", cls=VisionMaskArgs, **kw):
    return cls(
        **{
            "agent": AGENT,
            "data": expert,
            "out": str(tmp_path / name),
            "epochs": 2,
            "batch_size": 16,
            "progress": False,
            **kw,
        }
    )


def test_one_batch_overfit_drives_the_loss_down(expert):
    model = xrl.load_agent(AGENT)
    for p in model.parameters():
        p.requires_grad_(False)
    with xrl.data.dataset.StateDataset.open(expert) as ds:
        x = ds.states(slice(0, 6))
    targets = model(x).argmax(-1)
    for losses, args in (
        (vm.visionmask_losses, VisionMaskArgs(agent=AGENT, data="-")),
        (vm.stalder_losses, StalderArgs(agent=AGENT, data="-")),
    ):
        network = MaskNetwork.for_model(model, reference="black")
        optimiser = torch.optim.Adam(network.parameters(), lr=3e-3)
        values = []
        for _ in range(25):
            loss = losses(model, network, x, targets, args)["loss"]
            values.append(loss.item())
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
        assert values[-1] < values[0] - 0.1, values  # both start near 0.5 per term


def test_training_resumes_to_the_same_result(tmp_path, expert):
    torch.manual_seed(123)
    before = torch.random.get_rng_state()
    straight = train_visionmask(tiny(tmp_path, expert, "straight", epochs=3))
    assert torch.equal(torch.random.get_rng_state(), before)  # the caller's global RNG is untouched
    train_visionmask(tiny(tmp_path, expert, "resumed", epochs=3), stop_at=1)
    assert json.loads((tmp_path / "resumed" / "history.json").read_text())["epochs"][-1]["epoch"] == 1
    resumed = train_visionmask(tiny(tmp_path, expert, "resumed", epochs=3))
    a, b = load_mask_network(straight).state_dict(), load_mask_network(resumed).state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    ca, cb = (
        torch.load(latest_checkpoint(p.parent) / "state.pt", weights_only=True)["network"] for p in (straight, resumed)
    )
    assert all(torch.equal(ca[k], cb[k]) for k in ca)
    ha, hb = (json.loads((p.parent / "history.json").read_text())["epochs"] for p in (straight, resumed))
    assert ha == hb and len(ha) == 3
    card = json.loads(straight.with_suffix(".json").read_text())
    best = min(ha, key=lambda e: e["val"]["loss"])
    assert card["scores"]["best_epoch"] == best["epoch"] and card["scores"]["val"] == best["val"]
    assert card["command"].startswith("xrl train visionmask --agent red-fetch-green")
    assert card["agent"]["fingerprint"] == xrl.data.collect.agent_record(xrl.load_agent(AGENT))["fingerprint"]
    assert {"pos", "neg", "ne", "area", "accuracy"} <= set(best["val"]) and 0 <= best["val"]["accuracy"] <= 1
    with xrl.data.dataset.StateDataset.open(expert) as ds:
        assert card["split"]["train"] + card["split"]["val"] + card["split"]["test"] == len(ds)


def test_adam_weight_decay_is_the_authors_for_visionmask(tmp_path, expert):
    """VisionMask's code (github.com/0pow0/VisionMask, models/vm.py) builds Adam(lr,
    weight_decay=0.01); the Stalder Explainer is trained without weight decay."""
    assert (VisionMaskArgs.weight_decay, StalderArgs.weight_decay) == (0.01, 0.0)
    path = train_visionmask(tiny(tmp_path, expert, "decay", epochs=1, weight_decay=0.05))
    state = torch.load(latest_checkpoint(path.parent) / "state.pt", weights_only=True)
    assert {g["weight_decay"] for g in state["optimiser"]["param_groups"]} == {0.05}
    with pytest.raises(ValueError, match="weight_decay"):
        train_visionmask(tiny(tmp_path, expert, "bad-decay", weight_decay=-1.0))


def test_stalder_training_exports_its_network(tmp_path, expert):
    path = train_stalder(tiny(tmp_path, expert, "stalder", cls=StalderArgs, epochs=1, reference="blur"))
    assert path.name == "stalder_explainer.pt" and load_mask_network(path).method == "stalder_explainer"
    val = json.loads(path.with_suffix(".json").read_text())["scores"]["val"]
    assert {"cls", "ent", "area", "others", "tv", "accuracy"} <= set(val)


def test_nan_loss_stops_training_and_keeps_the_last_good_checkpoint(tmp_path, expert, monkeypatch):
    real, calls = vm.area_loss, {"n": 0}
    with xrl.data.dataset.StateDataset.open(expert) as ds:
        split = split_indices(len(ds), 0)
    per_epoch = math.ceil(len(split["train"]) / 4) + math.ceil(len(split["val"]) / 4)  # steps + validation
    assert per_epoch >= 3

    def poisoned(*a):
        calls["n"] += 1
        return real(*a) * (float("nan") if calls["n"] == per_epoch + 2 else 1.0)  # epoch 2, step 2

    monkeypatch.setattr(vm, "area_loss", poisoned)
    with pytest.raises(FloatingPointError, match=r"epoch 2 step 2.*last good checkpoint \(epoch 1\)"):
        train_visionmask(tiny(tmp_path, expert, "nan", batch_size=4))
    assert torch.load(latest_checkpoint(tmp_path / "nan") / "state.pt", weights_only=True)["epoch"] == 1
    assert load_mask_network(tmp_path / "nan" / "visionmask.pt").method == "visionmask"
    calls["n"] = -(10**6)  # now a non-finite validation loss (epoch 2's validation, after 1 good epoch)
    monkeypatch.setattr(vm, "area_loss", lambda *a: real(*a) * (float("nan") if not torch.is_grad_enabled() else 1.0))
    with pytest.raises(FloatingPointError, match=r"validation of epoch 2.*last good checkpoint \(epoch 1\)"):
        train_visionmask(tiny(tmp_path, expert, "nan", batch_size=4))


def test_mismatched_inputs_are_refused(tmp_path, expert):
    other = model_from_policy(
        build_policy("grid_cnn", (3, 64, 64), 4),
        info={"env": {"name": "red-fetch-green", "settings": {}}, "source": "untrained"},
    )
    data = collect(other, episodes=1, out=tmp_path / "other.h5", max_steps=4, progress=False)
    with pytest.raises(ValueError, match="collected by another agent"):
        train_visionmask(tiny(tmp_path, str(data), "other"))
    model = xrl.load_agent(AGENT)
    model.info["env"] = {"name": "red-fetch-green", "settings": {"size": 6}}
    with pytest.raises(ValueError, match="was collected on"):
        vm._expert_data(tiny(tmp_path, expert, "env"), model)
    train_visionmask(tiny(tmp_path, expert, "settings", epochs=1))
    with pytest.raises(ValueError, match="other settings"):
        train_visionmask(tiny(tmp_path, expert, "settings", epochs=1, a_max=0.3))
    with pytest.raises(ValueError, match="reference must be one of"):
        train_visionmask(tiny(tmp_path, expert, "bad", reference="grey"))
    with pytest.raises(ValueError, match="a_max"):
        train_visionmask(tiny(tmp_path, expert, "bad", a_max=2.0))
    with pytest.raises(ValueError, match="area must be"):
        train_visionmask(tiny(tmp_path, expert, "bad", area="l2"))
    with pytest.raises(ValueError, match="min_area <= max_area"):
        train_stalder(tiny(tmp_path, expert, "bad", cls=StalderArgs, min_area=0.5, max_area=0.2))


# ---------------------------------------------------------------- explainers


@pytest.fixture(scope="module")
def trained(tmp_path_factory, expert):
    out = tmp_path_factory.mktemp("trained")
    return train_visionmask(
        VisionMaskArgs(agent=AGENT, data=expert, out=str(out / "vm"), epochs=2, batch_size=16, progress=False)
    )


def test_explain_all_is_one_forward_pass_and_explain_picks_the_target(trained, expert):
    model = xrl.load_agent(AGENT)
    explainer = xrl.get_explainer("visionmask", model, network=str(trained), batch_size=3)
    with xrl.data.dataset.StateDataset.open(expert) as ds:
        x = ds.states(slice(0, 5))
    calls = []
    explainer.network.net.register_forward_hook(lambda *a: calls.append(1))
    maps = explainer.explain_all(x)
    assert len(calls) == 2  # 5 states in chunks of 3
    torch.testing.assert_close(maps, load_mask_network(trained).masks(x))
    assert ((maps >= 0) & (maps <= 1)).all()
    for k in range(model.n_actions):
        torch.testing.assert_close(explainer.explain(x, targets=k), maps[:, k])
    torch.testing.assert_close(explainer.explain(x), maps[torch.arange(5), model(x).argmax(-1)])
    with pytest.raises(TypeError, match="action indices"):
        explainer.explain(x, targets=lambda s: s[:, 0])


def test_networks_of_another_agent_or_action_count_are_refused(trained):
    other = model_from_policy(build_policy("grid_cnn", (3, 64, 64), 4), info={"source": "untrained"})
    with pytest.raises(ValueError, match="trained for another agent"):
        xrl.get_explainer("visionmask", other, network=str(trained))
    three = model_from_policy(build_policy("grid_cnn", (3, 64, 64), 3), info={"source": "untrained"})
    with pytest.raises(ValueError, match="4 maps"):
        xrl.get_explainer("visionmask", three, network=str(trained))
    with pytest.raises(ValueError, match="not a stalder_explainer one"):
        xrl.get_explainer("stalder_explainer", xrl.load_agent(AGENT), network=str(trained))
    with pytest.raises(ValueError, match="needs network="):  # the zoo has none for these weights
        xrl.get_explainer("visionmask", other)
    # the sanity metric rebuilds explainers for randomized copies of the agent: allowed there
    explainer = xrl.get_explainer("visionmask", xrl.load_agent(AGENT), network=str(trained))
    assert explainer.with_model(other).network is explainer.network


def test_salient_region_is_the_connected_component_of_the_maximum():
    s = torch.tensor([[[0.9, 0.8, 0.0, 0.7], [0.0, 0.6, 0.0, 0.8], [0.0, 0.0, 0.0, 0.0]]])
    region = salient_region(s, 0.5)  # >= 0.45: two components; the maximum's is the left one
    expected = torch.tensor([[[1, 1, 0, 0], [0, 1, 0, 0], [0, 0, 0, 0]]], dtype=torch.bool)
    assert torch.equal(region, expected)
    assert not salient_region(torch.zeros(1, 2, 2)).any()
    with pytest.raises(ValueError, match="threshold"):
        salient_region(s, 0.0)


def test_counterfactual_replaces_the_region_with_the_reference(trained, expert):
    model = xrl.load_agent(AGENT)
    explainer = xrl.get_explainer("visionmask", model, network=str(trained))
    with xrl.data.dataset.StateDataset.open(expert) as ds:
        x = ds.states(slice(0, 4))
    cf = counterfactual(explainer, x, targets=torch.tensor([0, 1, 2, 3]))
    r = explainer.network.reference_for(x)
    region = cf.region[:, None].expand_as(x)
    assert torch.equal(cf.states[region], r[region]) and torch.equal(cf.states[~region], x[~region])
    torch.testing.assert_close(cf.new_probs, model.probs(cf.states))
    assert torch.equal(cf.actions, model(x).argmax(-1)) and torch.equal(cf.new_actions, cf.new_probs.argmax(-1))
    assert torch.equal(cf.region, salient_region(cf.maps))


# ---------------------------------------------------------------- command line


def test_xrl_train_and_counterfactual_commands(tmp_path, expert, capsys):
    from PIL import Image

    from xrl.cli import main

    for what, name in (("visionmask", "visionmask"), ("stalder-explainer", "stalder_explainer")):
        code = main(
            [
                "train",
                what,
                "--agent",
                AGENT,
                "--data",
                expert,
                "--out",
                str(tmp_path / what),
                "--epochs",
                "1",
                "--batch-size",
                "16",
                "--reference",
                "mean",
                "--lambda-tv",
                "0.5",
            ]
        )
        out, err = capsys.readouterr()
        assert code == 0, err
        assert f"saved {tmp_path / what / name}.pt" in out and "best epoch 1" in out
        card = json.loads((tmp_path / what / f"{name}.json").read_text())
        assert card["settings"]["reference"] == "mean" and card["settings"]["lambda_tv"] == 0.5
        assert "--reference mean" in card["command"] and "--lambda-tv 0.5" in card["command"]
    code = main(
        [
            "counterfactual",
            "--agent",
            AGENT,
            "--network",
            str(tmp_path / "visionmask" / "visionmask.pt"),
            "--data",
            expert,
            "--n",
            "2",
            "--out",
            str(tmp_path / "cf"),
        ]
    )
    out, err = capsys.readouterr()
    assert code == 0, err
    pictures = sorted((tmp_path / "cf").glob("state_*.png"))
    assert len(pictures) == 2 and out.count(" -> ") == 2
    image = np.asarray(Image.open(pictures[0]).convert("RGB"))
    assert image.shape[0] > 200 and len(np.unique(image.reshape(-1, 3), axis=0)) > 50
    code = main(["counterfactual", "--agent", AGENT, "--network", str(tmp_path / "nothing.pt"), "--data", expert])
    assert code == 2 and "no mask network" in capsys.readouterr().err


def test_weights_of_another_architecture_are_refused(tmp_path):
    model = xrl.load_agent(AGENT)
    path = save_mask_network(MaskNetwork.for_model(model, "unet", reference="black"), tmp_path / "net.pt", card={})
    payload = torch.load(path, weights_only=True)
    payload["arch"] = "small"  # as if the small network's layers had changed since
    torch.save(payload, path)
    with pytest.raises(ValueError, match="do not fit xrl's 'small' mask network"):
        load_mask_network(path)
