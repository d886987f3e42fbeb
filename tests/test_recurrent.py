"""Recurrent agents (issue 41, point 4): a RecurrentPPO ``CnnLstmPolicy`` saved by sb3-contrib is
rolled out with its recurrent state carried from step to step, ``collect`` records the state
each observation was scored with, and its maps at step t are computed with that state: equal to
a hand loop that feeds each perturbed observation, with the recorded ``(h, c)``, through
sb3-contrib's own policy modules (features extractor, ``lstm_actor``, ``action_net``)."""

import json

import numpy as np
import pytest
import torch

import xrl

pytest.importorskip("sb3_contrib")
from sb3_contrib import RecurrentPPO  # noqa: E402
from sb3_contrib.common.recurrent.type_aliases import RNNStates  # noqa: E402
from scipy.ndimage import gaussian_filter  # noqa: E402

from xrl.data.collect import collect  # noqa: E402
from xrl.data.dataset import StateDataset  # noqa: E402
from xrl.evaluation import evaluate, explain_dataset  # noqa: E402
from xrl.pipeline import explain  # noqa: E402
from xrl.rollout import evaluate_policy  # noqa: E402

ENV, STEPS, EPISODES = "red-fetch-green", 6, 2


@pytest.fixture(scope="module")
def agent(tmp_path_factory):
    """``(algo, model, dataset path, zip path)``: a RecurrentPPO with logits O(1) (as after
    training), its card naming the env, and two collected episodes of six steps."""
    folder = tmp_path_factory.mktemp("recurrent")
    algo = RecurrentPPO("CnnLstmPolicy", xrl.make_env(ENV), seed=0, device="cpu", n_steps=16, batch_size=16)
    with torch.no_grad():
        algo.policy.action_net.weight.mul_(100)
    path = folder / "rppo.zip"
    algo.save(path)
    (folder / "rppo.json").write_text(json.dumps({"env": {"name": ENV, "settings": {}}}))
    model = xrl.load_agent(path)
    data = collect(model, episodes=EPISODES, out=folder / "d.h5", max_steps=STEPS, progress=False)
    return algo, model, data, path


def _sb3_loop(algo):
    """Each episode's observations, actions and states as sb3-contrib carries them: the actor's
    ``(h, c)`` from ``RecurrentPPO.predict(obs, state, episode_start)``, the critic's from
    ``policy.forward``, both before each step."""
    env, out = xrl.make_env(ENV), []
    policy = algo.policy
    for episode in range(EPISODES):
        obs, _ = env.reset(seed=episode)
        state, start = None, np.ones(1, dtype=bool)
        zeros = torch.zeros(policy.lstm_hidden_state_shape)
        both = RNNStates((zeros, zeros), (zeros, zeros))
        for _ in range(STEPS):
            before = (both.pi[0][:, 0], both.pi[1][:, 0], both.vf[0][:, 0], both.vf[1][:, 0])
            action, state = algo.predict(obs[None], state=state, episode_start=start, deterministic=True)
            with torch.no_grad():
                _, _, _, both = policy.forward(policy.obs_to_tensor(obs[None])[0], both, torch.tensor(start).float())
            assert np.array_equal(state[0], both.pi[0].numpy()) and np.array_equal(state[1], both.pi[1].numpy())
            out.append((obs, int(action[0]), torch.stack(before).numpy()))
            start = np.zeros(1, dtype=bool)
            obs, _, terminated, truncated, _ = env.step(int(action[0]))
            if terminated or truncated:
                break
    return out


def test_collect_records_the_state_sb3_contrib_carries(agent):
    algo, model, data, _ = agent
    assert model.recurrent_shape == (4, 1, 256)  # actor h, c, then the critic's (its own LSTM)
    theirs = _sb3_loop(algo)
    with StateDataset.open(data) as ds:
        assert ds.has_recurrent and len(ds) == len(theirs) == EPISODES * STEPS
        recorded, raw, actions, step = ds.recurrent(), ds.raw_states(), ds.actions, ds.step
        assert ds._h5().attrs["format_version"] == 2  # an xrl that cannot use the states refuses the file
    for row, (obs, action, state) in enumerate(theirs):
        assert np.array_equal(raw[row], obs) and actions[row] == action
        np.testing.assert_allclose(recorded[row], state, atol=1e-6, rtol=0)
    assert not recorded[step == 0].any() and recorded[step > 0].any()  # zero at each episode's start


def _hand_logits(policy, x, h, c):
    """The actor's logits of ``x (B, C, H, W)`` from the recorded ``(h, c)`` (each ``(layers,
    hidden)``), one LSTM step through sb3-contrib's modules."""
    features = policy.pi_features_extractor(x)  # (B, F)
    b = len(x)
    wide = (h[:, None].expand(-1, b, -1).contiguous(), c[:, None].expand(-1, b, -1).contiguous())
    latent, _ = policy.lstm_actor(features[None], wide)  # a sequence of one step
    return policy.action_net(policy.mlp_extractor.forward_actor(latent[0]))


def _hand_greydanus(policy, state, h, c, radius, stride, blur=3.0):
    """Greydanus et al.'s ``score_frame`` (mode actor, their ``get_mask`` and ``occlude``:
    ``s (1 - M) + gaussian_filter(s, 3) M`` on each channel), coarse grid: ``1/2 ||l(s) - l(s')||^2``
    for a mask centred on every ``stride``-th pixel, every ``s'`` under the same ``(h, c)``."""
    s = state.double().numpy()  # (C, H, W)
    _, height, width = s.shape
    blurred = np.stack([gaussian_filter(channel, sigma=blur) for channel in s])
    rows, cols = np.meshgrid(np.arange(height), np.arange(width), indexing="ij")
    grid = np.zeros((len(range(0, height, stride)), len(range(0, width, stride))))
    with torch.no_grad():
        base = _hand_logits(policy, state[None], h, c)[0].double()
        for i in range(0, height, stride):
            for j in range(0, width, stride):
                spot = gaussian_filter(((rows - i) ** 2 + (cols - j) ** 2 <= 1).astype(np.float64), sigma=radius)
                mask = spot / spot.max()
                moved = torch.from_numpy(s * (1 - mask) + blurred * mask).float()[None]
                grid[i // stride, j // stride] = (
                    0.5 * ((base - _hand_logits(policy, moved, h, c)[0].double()) ** 2).sum()
                )
    return grid


def test_greydanus_and_gradient_maps_equal_the_hand_loop(agent):
    """The done-when of issue 41: maps of steps t > 0 (read through the pipeline, each under its
    recorded state) equal the hand loop's within 1e-5; the state matters (the zero state's maps differ)."""
    _, model, data, _ = agent
    policy = model.net.policy
    radius, stride = 8.0, 16
    with StateDataset.open(data) as ds:
        rows = np.array([3, STEPS + 5])  # episode 0 step 3, episode 1 step 5
        assert (ds.step[rows] > 0).all()
        recorded, states, actions = torch.from_numpy(ds.recurrent(rows)), ds.states(rows), ds.actions[rows]
        settings = {"radius": radius, "stride": stride, "mask": "greydanus"}
        greydanus = explain_dataset(model, ds, "greydanus", settings, rows=rows)
        gradient = explain_dataset(model, ds, "gradient", rows=rows)
    for i in range(len(rows)):
        h, c = recorded[i, 0], recorded[i, 1]  # the actor's LSTM
        theirs = _hand_greydanus(policy, states[i], h, c, radius, stride)
        ours = greydanus[i, ::stride, ::stride].double().numpy()  # each grid value on its own pixel
        assert np.abs(ours - theirs).max() <= min(1e-5, 1e-4 * theirs.max())  # absolute and relative to the peak
        x = states[i : i + 1].clone().requires_grad_()
        (grads,) = torch.autograd.grad(_hand_logits(policy, x, h, c)[0, int(actions[i])], [x])
        by_hand = grads[0].abs().amax(0)  # Simonyan et al.: max over channels of |d score / d s|
        assert (gradient[i] - by_hand).abs().max() <= 1e-5 and by_hand.max() > 0
        zero_state = xrl.get_explainer("gradient", model).explain(states[i : i + 1], int(actions[i]))[0]
        assert (zero_state - by_hand).abs().max() > 1e-4  # the recorded state is what made the map


def test_metrics_score_each_state_under_its_state(agent):
    """Every metric of the pipeline runs each state under its recorded state: the same values as
    the metric on each state alone with sb3-contrib's ``RNNStates`` set on the model by hand."""
    algo, model, data, _ = agent
    theirs = _sb3_loop(algo)
    rows = np.array([2, 4, STEPS + 3])
    metrics = {"deletion": {"step_fraction": 0.125}, "insertion": {}, "sparseness": {}}
    with StateDataset.open(data) as ds:
        result = evaluate(model, ds, ["gradient"], metrics, rows=rows, progress=False)
        states, actions = ds.states(rows), torch.as_tensor(ds.actions[rows])
    for i, row in enumerate(rows):
        packed = torch.from_numpy(theirs[row][2])[:, :, None]  # (4, layers, 1, hidden)
        model.net.recurrent_state = RNNStates((packed[0], packed[1]), (packed[2], packed[3]))
        try:
            explainer = xrl.get_explainer("gradient", model)
            maps = explainer.explain(states[i : i + 1], actions[i : i + 1])
            for name, settings in metrics.items():
                value = xrl.get_metric(name, **settings)(
                    model=model, states=states[i : i + 1], saliency=maps, targets=actions[i : i + 1]
                )
                assert abs(float(value[0]) - result.values["gradient"][name][i]) <= 1e-5
        finally:
            model.net.recurrent_state = None


def test_another_agents_dataset_replays_the_state(agent, monkeypatch):
    """Where the dataset holds no state of this agent (another agent's, or none), the agent's own
    state is replayed along the episode's stored observations: the same as the recorded one."""
    from xrl.pipeline.data import dataset_memory

    _, model, data, _ = agent
    rows = np.array([5, 1, STEPS + 4, STEPS])
    with StateDataset.open(data) as ds:
        stored = ds.recurrent(rows)
        monkeypatch.setattr(StateDataset, "recurrent", lambda self, idx=None: None)
        replayed = dataset_memory(model, ds, rows)
    assert np.abs(replayed.numpy() - stored).max() <= 1e-6


def test_watch_attacks_and_serve_carry_the_state(agent, tmp_path):
    """``watch`` plays the collected greedy episode (same actions); attacks play recurrent agents;
    ``serve`` records the state with its episode and maps step t under it."""
    from xrl.attacks.evaluate import return_under_attack
    from xrl.serve.engine import Engine
    from xrl.watch import watch

    _, model, data, path = agent
    with StateDataset.open(data) as ds:
        actions, returns = ds.actions[:STEPS].tolist(), ds.episode_returns
        row = 4
        expected = explain_dataset(model, ds, "gradient", rows=[row])[0].numpy()
    result = watch(
        model, methods=["gradient"], seed=0, max_steps=STEPS, out=tmp_path / "w", formats=("gif",), progress=False
    )
    assert result.actions == actions
    under = return_under_attack(
        model, ["fgsm"], [0.0, 0.05], episodes=EPISODES, env=ENV, env_settings={"max_steps": STEPS}, progress=False
    )
    assert under["fgsm"][0]["mean_return"] == float(np.mean(returns))  # eps 0: the collected episodes
    engine = Engine(agents={"rppo": str(path)}, cache=tmp_path / "cache", max_steps=STEPS)
    try:
        episode = engine.wait(engine.episode("rppo", 0), 60).result
        assert episode.recurrent is not None and episode.actions.tolist() == actions
        method = engine.method("rppo", "gradient")
        got = engine.saliency(episode, row, method, {}, None, [])
        got = got if isinstance(got, np.ndarray) else engine.wait(got, 60).result
        assert np.abs(got - expected).max() <= 1e-6
    finally:
        engine.close()


def test_envs_side_by_side_carry_their_own_states(agent):
    """Two envs played in one batch each carry their own state: each step's ``Step.recurrent``
    is the state collect recorded playing the episodes one at a time."""
    _, model, data, _ = agent
    seen = {}

    def record(step):
        seen[(step.episode, step.t)] = step.recurrent

    evaluate_policy(model, ENV, episodes=EPISODES, n_envs=2, max_steps=STEPS, callback=record)
    with StateDataset.open(data) as ds:
        for row, (episode, t) in enumerate(zip(ds.episode, ds.step)):
            np.testing.assert_allclose(seen[(int(episode), int(t))], ds.recurrent(row)[0], atol=1e-6, rtol=0)


def test_a_wrong_state_is_refused_in_one_line(agent):
    _, model, _, _ = agent
    states = torch.rand(3, *model.input_shape)
    with pytest.raises(ValueError, match=r"has shape \(4, 1, 256\)"):
        with model.recurrent(torch.zeros(2, 1, 256)):
            pass
    with pytest.raises(ValueError, match="recurrent state of each of the 3 states"):
        explain(model, states, ["gradient"], recurrent=torch.zeros(2, 4, 1, 256))
    plain = xrl.as_model(torch.nn.Sequential(torch.nn.Flatten(), torch.nn.LazyLinear(4)), input_shape=(3, 64, 64))
    with pytest.raises(ValueError, match="not recurrent"):
        with plain.recurrent(torch.zeros(4, 1, 256)):
            pass
    with pytest.raises(ValueError, match="not recurrent"):
        explain(plain, states, ["gradient"], recurrent=torch.zeros(3, 4, 1, 256))
    assert model.net.recurrent_state is None  # every block put the model back as it was
