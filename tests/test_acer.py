"""ACER (xrl.train.acer): Retrace by hand, the trust region's constraint, a chain env solved, resume,
and replay as stable-baselines' ACER sizes and samples it."""

import dataclasses

import pytest
import torch
from torch import nn

from xrl.train.acer import Acer, AcerSettings, Segment, acer_losses, retrace_targets, trust_region


def test_retrace_matches_hand_computation():
    rewards = torch.tensor([[1.0], [2.0]])
    q_taken = torch.tensor([[0.3], [0.4]])
    values = torch.tensor([[0.2], [0.1]])
    rho = torch.tensor([[2.0], [0.5]])
    bootstrap = torch.tensor([0.5])
    no_done = torch.zeros(2, 1, dtype=torch.bool)
    out = retrace_targets(rewards, no_done, q_taken, values, rho, bootstrap, gamma=0.9)
    # t=1: 2 + 0.9 * 0.5 = 2.45; carried: min(1, 0.5) * (2.45 - 0.4) + 0.1 = 1.125
    # t=0: 1 + 0.9 * 1.125 = 2.0125
    assert out[:, 0].tolist() == pytest.approx([2.0125, 2.45])
    # rho = 2 is truncated to 1: changing it to 3 changes nothing; a done at t=0 cuts the bootstrap
    rho3 = torch.tensor([[3.0], [0.5]])
    assert torch.allclose(retrace_targets(rewards, no_done, q_taken, values, rho3, bootstrap, 0.9), out)
    done0 = torch.tensor([[True], [False]])
    assert retrace_targets(rewards, done0, q_taken, values, rho, bootstrap, 0.9)[:, 0].tolist() == pytest.approx(
        [1.0, 2.45]
    )


def test_truncated_importance_sampling_and_bias_correction_by_hand():
    logits = torch.log(torch.tensor([[0.5, 0.5]]))
    q = torch.tensor([[1.0, 3.0]])
    mu = torch.tensor([[0.25, 0.025]])  # rho = (2, 20): action 1 is truncated at c = 10
    terms = acer_losses(logits, q, torch.tensor([1]), mu, torch.tensor([4.0]), correction=10.0, ent_coef=0.0)
    v = 0.5 * 1 + 0.5 * 3
    log_half = torch.log(torch.tensor(0.5 + 1e-8)).item()
    truncated = -10 * log_half * (4.0 - v)
    bias = -(1 - 10 / 20) * 0.5 * log_half * (3.0 - v)  # action 0: 1 - 10/2 < 0 -> no correction
    assert terms["policy"].item() == pytest.approx(truncated + bias, rel=1e-5)
    assert terms["q"].item() == pytest.approx(0.5 * (4.0 - 3.0) ** 2)


def test_trust_region_keeps_the_step_within_delta():
    g = torch.tensor([[3.0, -1.0, 0.5]])
    f = torch.tensor([[0.2, 0.3, 0.5]])
    f_avg = torch.tensor([[0.6, 0.2, 0.2]])
    k = -f_avg / f
    z = trust_region(g, f, f_avg, delta=0.1)
    assert (k * z).sum().item() == pytest.approx(0.1, abs=1e-5) or (k * g).sum().item() <= 0.1
    small = trust_region(torch.zeros(1, 3), f, f_avg, delta=0.1)
    assert torch.equal(small, torch.zeros(1, 3))  # inside the region: unchanged


class Chain:
    """A chain of ``length`` states; action 1 moves right, action 0 back to the start; the only
    reward (1) is for stepping off the right end; episodes last ``length`` steps, so only
    "always right" earns it: credit must travel back ``length`` steps."""

    n_actions = 2

    def __init__(self, n_envs=4, length=4):
        self.n_envs, self.length = n_envs, length
        self.pos = torch.zeros(n_envs, dtype=torch.long)
        self.t = torch.zeros(n_envs, dtype=torch.long)

    def obs(self):
        return nn.functional.one_hot(self.pos, self.length).float()

    def reset(self):
        self.pos.zero_()
        self.t.zero_()
        return self.obs()

    def step(self, actions):
        reward = ((actions == 1) & (self.pos == self.length - 1)).float()
        self.pos = torch.where(actions == 1, (self.pos + 1).clamp(max=self.length - 1), torch.zeros_like(self.pos))
        self.t += 1
        done = self.t >= self.length
        self.pos[done], self.t[done] = 0, 0
        return self.obs(), reward, done

    def state_dict(self):
        return {"pos": self.pos.clone(), "t": self.t.clone()}

    def load_state_dict(self, state):
        self.pos, self.t = state["pos"].clone(), state["t"].clone()


class Net(nn.Module):
    def __init__(self, d, a):
        super().__init__()
        torch.manual_seed(0)
        self.body = nn.Sequential(nn.Linear(d, 32), nn.ReLU())
        self.pi, self.q = nn.Linear(32, a), nn.Linear(32, a)

    def forward(self, x):
        h = self.body(x)
        return self.pi(h), self.q(h)


SETTINGS = AcerSettings(n_steps=8, learning_rate=3e-3, replay_start=64, buffer_size=2000)


def test_acer_solves_a_chain_in_a_few_thousand_steps():
    env = Chain()
    acer = Acer(Net(4, 2), env, SETTINGS, seed=0)
    for _ in range(120):  # 120 updates x 8 steps x 4 envs = 3840 env steps
        acer.update()
    with torch.no_grad():
        greedy = acer.net(torch.eye(4))[0].argmax(-1)
    assert greedy.tolist() == [1, 1, 1, 1]
    returns = [acer.update()["mean_return"] for _ in range(5)]
    assert sum(returns) / 5 > 0.8


def test_acer_without_trust_region_learns_too():
    acer = Acer(Net(4, 2), Chain(), dataclasses.replace(SETTINGS, trust_region=False), seed=1)
    for _ in range(120):
        acer.update()
    with torch.no_grad():
        assert acer.net(torch.eye(4))[0].argmax(-1).tolist() == [1, 1, 1, 1]


def test_acer_resumes_exactly():
    full = Acer(Net(4, 2), Chain(), SETTINGS, seed=3)
    for _ in range(30):
        full.update()
    part = Acer(Net(4, 2), Chain(), SETTINGS, seed=3)
    for _ in range(20):
        part.update()
    state = part.state_dict()
    resumed = Acer(Net(4, 2), Chain(), SETTINGS, seed=99)
    resumed.load_state_dict(state)
    for _ in range(10):
        resumed.update()
    for a, b in zip(full.net.parameters(), resumed.net.parameters()):
        assert torch.equal(a, b)


# stable-baselines' ACER (github.com/hill-a/stable-baselines, stable_baselines/acer/buffer.py):
# Buffer.size = size // n_steps segments, each holding all envs' n_steps; replay when
# Buffer.has_atleast(replay_start), i.e. num_in_buffer >= replay_start // n_steps.
@pytest.mark.parametrize(
    "settings, n_envs", [(AcerSettings(), 10), (AcerSettings(n_steps=8, buffer_size=100, replay_start=40), 4)]
)
def test_buffer_capacity_and_replay_start_are_stable_baselines(settings, n_envs):
    sb_size = settings.buffer_size // settings.n_steps
    sb_start = settings.replay_start // settings.n_steps
    if settings == AcerSettings():
        assert (sb_size, sb_start) == (102, 20)  # 5000 // 49, 1000 // 49 (was 10 and 3 segments)
    acer = Acer(Net(4, 2), Chain(n_envs=n_envs), settings, seed=0)
    assert (acer.capacity, acer.replay_start) == (sb_size, sb_start)


def test_replay_waits_for_the_segments_then_draws_per_env():
    settings = dataclasses.replace(SETTINGS, buffer_size=48, replay_start=40)  # 6 segments, replay from the 5th
    acer = Acer(Net(4, 2), Chain(), settings, seed=0)
    assert (acer.capacity, acer.replay_start) == (6, 5)
    replayed = [acer.update()["replayed"] for _ in range(12)]
    assert replayed[:4] == [0, 0, 0, 0] and sum(replayed[4:]) > 0
    assert len(acer.buffer) == 6  # full: the oldest were overwritten
    # a replayed batch: env i's columns come from one stored segment, drawn per env
    batch = acer.replay_batch()
    for i in range(acer.env.n_envs):
        assert any(
            all(torch.equal(getattr(batch, f)[:, i], getattr(seg, f)[:, i]) for f in Segment._fields)
            for seg in acer.buffer
        )


def test_a_checkpoint_with_another_capacity_resumes_in_age_order():
    old = Acer(Net(4, 2), Chain(), SETTINGS, seed=0)
    old.capacity = 3  # what buffer_size // (n_steps x n_envs) gave before
    segs = []
    for _ in range(5):
        old.update()
        segs.append(old.buffer[(old.next_slot - 1) % 3])
    state = old.state_dict()
    assert state["next_slot"] == 2  # a wrapped ring: the oldest kept (update 3) sits in slot 2
    grown = Acer(Net(4, 2), Chain(), SETTINGS, seed=0)
    grown.load_state_dict(state)
    assert [s.obs.data_ptr() for s in grown.buffer] == [s.obs.data_ptr() for s in segs[2:]]
    assert grown.next_slot == 3
    grown.update()
    assert len(grown.buffer) == 4
    shrunk = Acer(Net(4, 2), Chain(), dataclasses.replace(SETTINGS, buffer_size=16), seed=0)  # 2 segments
    shrunk.load_state_dict(state)
    assert [s.obs.data_ptr() for s in shrunk.buffer] == [s.obs.data_ptr() for s in segs[3:]]
    shrunk.update()
    assert len(shrunk.buffer) == 2 and shrunk.buffer[0].obs.data_ptr() not in [s.obs.data_ptr() for s in segs]
