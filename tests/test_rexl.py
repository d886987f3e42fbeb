"""RExL: the masking MDP by hand, the lambda credit by hand, the explainer's refusals, training resumes."""

import json

import pytest
import torch
from torch import nn

from xrl.agents.masking import MaskingBatch, MaskingEnv, cell_masks, check_grid
from xrl.agents.model import as_model
from xrl.explainers import get_explainer
from xrl.explainers.rexl import cell_credit, normalise


class CellSum(nn.Module):
    """Logits ``(w * sum of cell 0's pixels, 0)`` on 1x4x4 images: cells are 2x2 (grid 2)."""

    def __init__(self, w=2.0):
        super().__init__()
        self.w = nn.Parameter(torch.tensor(w))

    def forward(self, x):
        return torch.stack([self.w * x[:, 0, :2, :2].sum((1, 2)), torch.zeros(len(x))], 1)


def tiny():
    return as_model(CellSum(), input_shape=(1, 4, 4))


def test_mdp_state_and_reward_match_a_hand_computation():
    model = tiny()
    image = torch.full((1, 1, 4, 4), 0.5)
    noise = torch.full((1, 1, 4, 4), 0.1)
    batch = MaskingBatch(model, image, grid=2)
    batch.reset(torch.tensor([0]), torch.tensor([0]), noise=noise)
    assert batch.probs.item() == pytest.approx(torch.sigmoid(torch.tensor(2.0 * 0.5 * 4)).item())
    # mask cell 3 (bottom right): cell 0 unchanged, so the reward is minus the same probability
    states, rewards, done = batch.step(torch.tensor([3]))
    expected = image.clone()
    expected[..., 2:, 2:] = 0.1
    assert torch.equal(states, expected) and not done
    assert rewards.item() == pytest.approx(-torch.sigmoid(torch.tensor(4.0)).item())
    # mask cell 0: its pixels become noise, logit 2 * 0.1 * 4 = 0.8
    states, rewards, done = batch.step(torch.tensor([0]))
    expected[..., :2, :2] = 0.1
    assert torch.equal(states, expected)
    assert rewards.item() == pytest.approx(-torch.sigmoid(torch.tensor(0.8)).item(), rel=1e-6)
    # masking a masked cell again changes nothing; the episode has grid**2 = 4 steps
    again, rewards2, done = batch.step(torch.tensor([0]))
    assert torch.equal(again, states) and rewards2.item() == pytest.approx(rewards.item()) and not done
    assert batch.step(torch.tensor([1]))[2] is True


def test_noise_is_drawn_from_the_seed_and_kept_for_the_episode():
    model, images = tiny(), torch.rand(3, 1, 4, 4)
    a, b = MaskingBatch(model, images, grid=2, seed=5), MaskingBatch(model, images, grid=2, seed=5)
    a.reset(torch.tensor([0, 2]), torch.tensor([0, 1]))
    b.reset(torch.tensor([0, 2]), torch.tensor([0, 1]))
    assert torch.equal(a.step(torch.tensor([1, 1]))[0], b.step(torch.tensor([1, 1]))[0])
    first = a.states.clone()
    a.step(torch.tensor([2, 2]))
    assert torch.equal(a.states[..., :2, 2:], first[..., :2, 2:])  # cell 1 keeps its noise
    assert ((a.states >= 0) & (a.states <= 1)).all()
    g = MaskingBatch(model, images, grid=2, noise="gaussian")
    assert g.mean.flatten().item() == pytest.approx(images.mean().item(), rel=1e-5)


def test_bad_input_is_refused():
    with pytest.raises(ValueError, match=r"64x64 image is not divisible into a 7x7 grid.*\[2, 4, 8, 16, 32, 64\]"):
        check_grid(64, 64, 7)
    model = tiny()
    batch = MaskingBatch(model, torch.rand(2, 1, 4, 4), grid=2)
    with pytest.raises(ValueError, match=r"targets must be class indices in \[0, 2\)"):
        batch.reset(torch.tensor([0]), torch.tensor([2]))
    batch.reset(torch.tensor([0]), torch.tensor([1]))
    with pytest.raises(ValueError, match="cell indices"):
        batch.step(torch.tensor([4]))
    with pytest.raises(ValueError, match="not divisible"):
        MaskingBatch(model, torch.rand(2, 1, 4, 4), grid=3)


def test_cells_tile_the_image_in_reading_order():
    cells = cell_masks(4, 6, 2)  # 2x3-pixel cells
    assert cells.shape == (4, 4, 6) and torch.equal(cells.sum(0), torch.ones(4, 6, dtype=torch.long))
    assert cells[1, 0, 3] and cells[2, 2, 0]


def test_gymnasium_env_passes_the_checker():
    from gymnasium.utils.env_checker import check_env

    env = MaskingEnv(tiny(), torch.rand(3, 1, 4, 4), torch.tensor([0, 1, 0]), grid=2)
    check_env(env, skip_render_check=True)
    obs, info = env.reset(seed=0)
    assert obs["image"].shape == (1, 4, 4) and obs["target"].sum() == 1
    for step in range(4):
        obs, reward, terminated, truncated, info = env.step(step)
        assert reward == pytest.approx(-info["prob"])
    assert terminated and not truncated


def test_lambda_credit_matches_the_sum_by_hand():
    probs = torch.tensor([[1.0, 0.6, 0.5, 0.1, 0.1]])  # before masking, then after each of 4 steps
    actions = torch.tensor([[2, 0, 3, 1]])
    # delta = (0.4, 0.1, 0.4, 0.0); cell of step t gets sum_{i>=t} lam^(i-t) delta_i
    for lam, expected in (
        (0.0, [0.1, 0.0, 0.4, 0.4]),
        (0.5, [0.1 + 0.5 * 0.4, 0.0, 0.4 + 0.5 * 0.3, 0.4]),
        (1.0, [0.5, 0.0, 0.9, 0.4]),
    ):
        assert cell_credit(probs, actions, 4, lam)[0].tolist() == pytest.approx(expected)
    weights = normalise(cell_credit(probs, actions, 4, 1.0))
    assert weights.sum().item() == pytest.approx(1.0) and weights[0].tolist() == pytest.approx(
        [0.5 / 1.8, 0, 0.5, 0.4 / 1.8]
    )
    rising = normalise(torch.tensor([[-0.2, 0.1, 0.0]]))  # a sum that is not positive keeps the order
    assert rising[0].argmax() == 1 and rising.abs().sum().item() == pytest.approx(1.0)


@pytest.fixture(scope="module")
def classifier(tmp_path_factory):
    """A tiny (untrained) ShapesCNN saved as an xrl classifier on 16x16 images."""
    from xrl.classifiers import ShapesCNN, load_classifier, save_classifier

    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("cls") / "classifier.pt"
    save_classifier(ShapesCNN(4), path, arch="shapes_cnn", size=16, class_names=["a", "b", "c", "d"], card={})
    return path, load_classifier(path)


def small_args(classifier, out, **kw):
    from xrl.train.rexl import RExLArgs

    settings = dict(
        model=str(classifier[0]),
        out=str(out),
        grid=4,
        n_envs=2,
        n_steps=16,
        total_steps=6 * 32,
        n_images=24,
        replay_start=32,
        checkpoint_every=1,
        progress=False,
    )
    return RExLArgs(**{**settings, **kw})


def test_training_resumes_to_the_same_agent(classifier, tmp_path):
    from xrl.train.rexl import train_rexl

    full = train_rexl(small_args(classifier, tmp_path / "full"))
    train_rexl(small_args(classifier, tmp_path / "part"), stop_at=3)
    assert json.loads((tmp_path / "part" / "history.json").read_text())["updates"][-1]["update"] == 3
    resumed = train_rexl(small_args(classifier, tmp_path / "part"))
    a, b = torch.load(full, weights_only=True), torch.load(resumed, weights_only=True)
    for k, v in a["state_dict"].items():
        assert torch.equal(v, b["state_dict"][k]), k
    card = json.loads(full.with_suffix(".json").read_text())
    assert card["command"].startswith("xrl train rexl --model") and "--grid 4" in card["command"]
    with pytest.raises(ValueError, match="other settings"):
        train_rexl(small_args(classifier, tmp_path / "part", grid=2))


def test_explainer_maps_and_refusals(classifier, tmp_path):
    from xrl.classifiers import ShapesCNN
    from xrl.train.rexl import train_rexl, untrained_agent

    _, model = classifier
    path = train_rexl(
        small_args(classifier, tmp_path / "cs", mode="cs", target_class=1, targets="argmax", total_steps=32)
    )
    x = torch.rand(3, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        predicted = model(x).argmax(-1)
    explainer = get_explainer("rexl", model, agent=str(path))
    targets = torch.ones(3, dtype=torch.long)
    maps = explainer.explain(x, targets)
    cells = maps[:, ::4, ::4]  # one value per 4x4 cell
    assert torch.equal(maps, cells.repeat_interleave(4, 1).repeat_interleave(4, 2))
    for c in cells:  # sum 1; or, when the probability rose overall, absolute values summing to 1 (or all 0)
        assert c.sum().item() == pytest.approx(1.0, abs=1e-5) or c.abs().sum().item() in (pytest.approx(1.0), 0.0)
    with pytest.raises(ValueError, match="no RExL agent explains class 0"):
        explainer.explain(x, torch.zeros(3, dtype=torch.long))
    with pytest.raises(ValueError, match=r"must be in \[0, 4\)"):
        explainer.explain(x, 7)
    smoothed = get_explainer("rexl", model, agent=str(path), smooth=2.0).explain(x, targets)
    assert not torch.equal(smoothed, maps)
    # another model, another grid, another file
    torch.manual_seed(1)
    other = as_model(ShapesCNN(4), input_shape=(3, 16, 16))
    with pytest.raises(ValueError, match="trained to explain another model"):
        get_explainer("rexl", other, agent=str(path))
    with pytest.raises(ValueError, match=r"masks a 4x4 grid, 2x2 was asked"):
        get_explainer("rexl", model, agent=str(path), grid=2)
    ds = untrained_agent(model, tmp_path / "ds2.pt", grid=2)
    with pytest.raises(ValueError, match="different grids"):
        get_explainer("rexl", model, agent=[str(path), str(ds)])
    with pytest.raises(ValueError, match="not a RExL agent"):
        get_explainer("rexl", model, agent=str(classifier[0]))
    assert predicted.shape == (3,)


def test_sb3_trains_the_same_agent(classifier, tmp_path, monkeypatch):
    from xrl.agents.rexl import load_rexl_agent
    from xrl.train.rexl import train_rexl

    path = train_rexl(small_args(classifier, tmp_path / "a2c", algo="a2c", total_steps=40, n_envs=1))
    agent, record = load_rexl_agent(path, classifier[1])
    assert agent.grid == 4 and record["mode"] == "ds"
    assert (tmp_path / "a2c" / "checkpoint.zip").exists()
    # the same command with a larger budget resumes from the checkpoint's weights and step count (read
    # without unpickling), not from step 0
    from stable_baselines3 import A2C

    calls, learn = [], A2C.learn

    def spy(self, total, **kw):
        calls.append((self.num_timesteps, total))
        return learn(self, total, **kw)

    monkeypatch.setattr(A2C, "learn", spy)
    train_rexl(small_args(classifier, tmp_path / "a2c", algo="a2c", total_steps=80, n_envs=1))
    assert calls == [(40, 40)]
    assert json.loads((tmp_path / "a2c" / "history.json").read_text())["sb3"]["timesteps"] == 80


def test_the_trunk_output_is_reused_from_the_models_forward(classifier):
    from xrl.agents.rexl import RExLAgent, build_extractor, shared_trunk

    _, model = classifier
    agent = RExLAgent(
        build_extractor(model, "trunk"),
        input_shape=model.input_shape,
        n_classes=4,
        grid=4,
        mode="ds",
        classes=[0, 1, 2, 3],
    )
    x, t = torch.rand(5, 3, 16, 16), torch.arange(5) % 4
    calls = []
    handle = agent.extractor.register_forward_hook(lambda *a: calls.append(1))
    with shared_trunk(agent, model) as encode, torch.no_grad():
        model(x)
        obs = encode(x, t)
    handle.remove()
    assert len(calls) == 1  # the model's forward only
    assert torch.allclose(obs, agent.encode(x, t)) and obs.shape[1] == agent.feature_dim + 4
    assert not agent.extractor._forward_hooks  # removed


def test_cli_flags_map_onto_the_training_args():
    from xrl.cli import build_parser

    args = build_parser().parse_args(
        ["train", "rexl", "--model", "m.pt", "--mode", "cs", "--target-class", "2", "--trust-region", "false"]
    )
    assert (args.mode, args.target_class, args.trust_region, args.grid) == ("cs", 2, False, 7)
    assert args.learning_rate == 1e-4 and args.n_steps * args.n_envs == 490 and args.gamma == 1.0  # Table 5
    assert build_parser().parse_args(["train", "classifier"]).data == "shapes"


def test_agent_states_are_the_agents_own_seeded_episodes_and_snapshots_load(tmp_path):
    """data=episodes: the training images are exactly the states of greedy and sampled episodes
    of the agent on seeds episode_seed + i (collected by xrl.data.collect, an independent path:
    the test replays the env itself); snapshots are loadable RExL agents."""
    import numpy as np

    import xrl
    from xrl.agents.rexl import load_rexl_agent
    from xrl.train.rexl import RExLArgs, agent_states, train_rexl

    model = xrl.load_agent("red-fetch-green")
    args = RExLArgs(
        model="red-fetch-green",
        data="episodes",
        episodes=2,
        episode_seed=5000,
        targets="argmax",
        grid=8,
        n_envs=2,
        n_steps=64,
        total_steps=4 * 128,
        replay_start=64,
        checkpoint_every=2,
        snapshot_every=2,
        out=str(tmp_path / "run"),
        progress=False,
    )
    images = agent_states(args, model)
    env = xrl.make_env(model.info["env"]["name"], **(model.info["env"].get("settings") or {}))
    greedy = []
    for seed in (5000, 5001):  # greedy episodes by hand
        obs, _ = env.reset(seed=seed)
        done = False
        while not done:
            state = model.preprocess(np.asarray(obs))
            greedy.append(state[0])
            obs, _, terminated, truncated, _ = env.step(int(model(state)[0].argmax()))
            done = terminated or truncated
    assert len(images) > len(greedy)  # the sampled episodes follow
    assert torch.allclose(images[: len(greedy)], torch.stack(greedy))
    path = train_rexl(args)
    snaps = sorted((tmp_path / "run" / "snapshots").glob("*.pt"))
    assert [p.name for p in snaps] == ["rexl-000000256.pt", "rexl-000000512.pt"]
    last, _ = load_rexl_agent(snaps[-1], model)
    final, _ = load_rexl_agent(path, model)
    for a, b in zip(last.state_dict().values(), final.state_dict().values()):
        assert torch.equal(a, b)


def test_rexl_deletion_learning_curve_picks_the_snapshot_on_validation_states(tmp_path):
    """The curve scores every snapshot on the test states, and the chosen one is the lowest
    deletion on the *validation* states (other seeds), recomputed here with the deletion metric."""
    import shutil

    import numpy as np

    import xrl
    from xrl.data.dataset import StateDataset
    from xrl.reproduce import TARGETS, run_target

    snaps = tmp_path / "snapshots"
    snaps.mkdir()
    from xrl.agents.load import ZOO_DIR

    zoo = ZOO_DIR / "red-fetch-green-rexl-ds"
    for steps in (100, 200):  # two "snapshots": the zoo DS agent twice, at two step counts
        for suffix in (".pt", ".json"):
            shutil.copy(zoo / f"rexl{suffix}", snaps / f"rexl-{steps:09d}{suffix}")
    out = tmp_path / "out"
    run_target(
        TARGETS.get("rexl-deletion"),
        out,
        quick=True,
        overrides={"curve": {"red-fetch-green": str(snaps)}, "cs": []},
        progress=False,
    )
    rows = json.loads((out / "curve.json").read_text())["rows"]
    assert [r["steps"] for r in rows] == [100, 200]
    assert rows[0]["deletion"] == rows[1]["deletion"]  # the same agent twice
    with (
        StateDataset.open(out / "data" / "validation-episodes.h5") as val,
        StateDataset.open(out / "data" / "test-episodes.h5") as test,
    ):
        seeds = [json.loads(d.meta["collect"])["seed"] for d in (val, test)]
        assert seeds == [300_000, 200_000]
        states = val.states(np.arange(3))
    model = xrl.load_agent("red-fetch-green")
    targets = model(states).argmax(-1)
    maps = xrl.get_explainer("rexl", model, agent=str(snaps / "rexl-000000100.pt"), seed=0).explain(states, targets)
    deletion = xrl.get_metric("deletion")(model=model, states=states, saliency=maps, targets=targets)
    assert rows[0]["validation deletion"] == pytest.approx(float(deletion.double().mean()), abs=1e-6)
    table = json.loads((out / "table1.json").read_text())["rows"]
    assert any(r["method"] == "RExL-DS val.-chosen (100 steps)" for r in table)  # ties: the first


def test_rexl_deletion_learning_curve_on_shapes_validates_on_the_val_split(tmp_path):
    """For the shapes classifier the snapshots are chosen on its ``val`` split (not on agent
    episodes, which a classifier has none of): the validation row equals the deletion of the
    snapshot's maps on the first val images, recomputed here."""
    import shutil

    import xrl
    from xrl.agents.load import ZOO_DIR
    from xrl.data.shapes import split
    from xrl.reproduce import TARGETS, run_target

    snaps = tmp_path / "snapshots"
    snaps.mkdir()
    for suffix in (".pt", ".json"):
        shutil.copy(ZOO_DIR / "shapes-rexl-ds" / f"rexl{suffix}", snaps / f"rexl-{100:09d}{suffix}")
    out = tmp_path / "out"
    overrides = {"settings": ["shapes"], "curve": {"shapes": str(snaps)}, "cs": []}
    run_target(TARGETS.get("rexl-deletion"), out, quick=True, overrides=overrides, progress=False)
    assert [r["steps"] for r in json.loads((out / "curve.json").read_text())["rows"]] == [100]
    stored = json.loads((out / "rows" / "shapes-validation-100.json").read_text())["value"]["deletion"]
    model = xrl.load_agent(ZOO_DIR / "shapes-cnn" / "classifier.pt")
    val = split("val", len(stored), size=model.input_shape[-1], seed=0)
    states, targets = torch.from_numpy(val.images).float() / 255, torch.from_numpy(val.labels)
    maps = xrl.get_explainer("rexl", model, agent=str(snaps / "rexl-000000100.pt"), seed=0).explain(states, targets)
    deletion = xrl.get_metric("deletion")(model=model, states=states, saliency=maps, targets=targets)
    assert torch.allclose(torch.as_tensor(stored, dtype=torch.float64), deletion.double(), atol=1e-6)
