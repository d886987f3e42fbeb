"""ACER for discrete actions (Wang et al. 2017, "Sample Efficient Actor-Critic with Experience
Replay"), the algorithm RExL trains its agents with (Agarwal et al. 2021, "Reinforcement
Explanation Learning", arXiv:2111.13406, section 3.2 and Table 5).

Reads top to bottom:

1. :func:`retrace_targets` — ``Q_ret`` backwards over a segment:
   ``Q_ret = r_t + gamma (1 - done_t) Q_ret_{t+1}``, then the value carried to ``t - 1`` is
   ``rho_bar_t (Q_ret - Q(s_t, a_t)) + V(s_t)`` with ``rho_bar_t = min(1, rho_t)``,
   ``rho_t = pi(a_t|s_t) / mu(a_t|s_t)`` (Retrace, Munos et al. 2016); bootstrapped from
   ``V(s_T)``.
2. :func:`acer_losses` — truncated importance sampling with bias correction:
   ``-min(c, rho_t) log pi(a_t) (Q_ret - V)`` plus, over all actions,
   ``-[1 - c / rho(a)]_+ pi(a) log pi(a) (Q(s, a) - V)`` (both without gradient through Q or V),
   minus ``ent_coef`` x entropy; and ``q_coef * 1/2 (Q_ret - Q(s_t, a_t))^2``.
   :func:`trust_region` — the efficient trust region: the policy loss's gradient ``g`` with
   respect to the policy's probabilities ``f`` is projected so its step stays within ``delta`` of
   an average policy: ``z = g - max(0, (k.g - delta) / |k|^2) k``, ``k = d KL(f_avg || f) / d f``.
3. :class:`Acer` — one :meth:`Acer.update` = ``n_steps`` steps of every env with the current
   policy (stored with the behaviour probabilities ``mu`` in a replay buffer of segments), one
   on-policy update on them, then ``Poisson(replay_ratio)`` off-policy updates on replayed
   batches. RMSprop, gradient norm clipped, and the average policy network updated by Polyak
   averaging after every step.

Replay, as stable-baselines computes it (``stable_baselines/acer/buffer.py`` and
``acer_simple.py`` of github.com/hill-a/stable-baselines): a *segment* is one update's rollout,
``n_steps`` steps of all ``n_envs`` envs. The buffer holds ``buffer_size // n_steps`` segments
(:func:`buffer_segments`; so ``buffer_size`` counts steps *per env*: ``n_envs x buffer_size``
env steps in all), the oldest overwritten first. Replay starts once it holds at least
``replay_start // n_steps`` segments (:func:`replay_start_segments`; ``Buffer.has_atleast``).
Each update then draws ``k ~ Poisson(replay_ratio)`` and learns on ``k`` replayed batches; a
batch takes, for every env ``i``, env ``i``'s trajectory from a segment drawn uniformly among
those stored, independently per env. Defaults: 5000 // 49 = 102 segments (49,980 env steps),
replay from the 20th segment (1000 // 49) on.

Defaults: stable-baselines' ACER (which the paper used) overridden by the paper's Table 5:
gamma = 1, 490 environment steps per update (``n_envs=10`` x ``n_steps=49``: one whole masking
episode per env), q_coef = 1, RMSprop alpha = 0.9, learning rate 1e-4 (constant here; stable-
baselines decays it linearly by default). The rest as stable-baselines: ent_coef 0.01, max grad
norm 10, buffer 5000 steps per env, replay ratio 4, replay start 1000, c = 10, trust region on
with delta = 1 and average decay 0.99.

The environment is any *tensor vector env*: ``n_envs``, ``n_actions``, ``reset() -> obs (n, D)``
and ``step(actions (n,)) -> (obs, rewards (n,), dones (n,) bool)`` that resets finished episodes
itself (``obs`` is then the new episode's first observation), plus ``state_dict`` /
``load_state_dict`` for resuming. The network maps ``obs (B, D)`` to ``(logits, q) (B, A)`` each.
Randomness only through the generator seeded with ``seed`` (a CPU generator: the same draws on
every device). :class:`Acer` computes on its network's device (the env's observations are on it);
:meth:`Acer.state_dict` is saved with :func:`to_device` ``(..., "cpu")`` and loads on any device.
"""

from __future__ import annotations

import copy
import dataclasses
from dataclasses import dataclass
from typing import Any, NamedTuple, Protocol

import torch
from torch import nn


def to_device(tree: Any, device: torch.device | str) -> Any:
    """``tree`` (tensors in nested dicts, lists and tuples, NamedTuples kept) with every tensor
    moved to ``device``: a checkpoint's state to the CPU before it is saved (it then loads on any
    machine) and back to the run's device when resumed. A tensor already there is kept as is."""
    if isinstance(tree, torch.Tensor):
        return tree.to(device)
    if isinstance(tree, dict):
        return {k: to_device(v, device) for k, v in tree.items()}
    if isinstance(tree, tuple) and hasattr(tree, "_fields"):
        return type(tree)(*(to_device(v, device) for v in tree))
    if isinstance(tree, (list, tuple)):
        return type(tree)(to_device(v, device) for v in tree)
    return tree


@dataclass
class AcerSettings:
    """ACER's settings (their defaults: Table 5 of RExL, then stable-baselines' ACER)."""

    gamma: float = 1.0
    """discount factor (Table 5)"""
    n_steps: int = 49
    """steps of every env per update (Table 5: 490 env steps per update = n_envs 10 x 49)"""
    learning_rate: float = 1e-4
    """RMSprop step size (Table 5)"""
    rms_alpha: float = 0.9
    """RMSprop smoothing constant (Table 5)"""
    rms_eps: float = 1e-5
    """RMSprop epsilon"""
    q_coef: float = 1.0
    """weight of the Q loss (Table 5)"""
    ent_coef: float = 0.01
    """weight of the entropy bonus"""
    max_grad_norm: float = 10.0
    """gradient norm clipping"""
    buffer_size: int = 5000
    """replay capacity in steps per env, as stable-baselines: buffer_size // n_steps segments of n_envs x n_steps steps"""
    replay_ratio: float = 4.0
    """mean number of off-policy updates per on-policy update (Poisson)"""
    replay_start: int = 1000
    """replay starts once the buffer holds replay_start // n_steps segments (stable-baselines' has_atleast)"""
    correction: float = 10.0
    """importance weight truncation c (bias correction beyond it)"""
    trust_region: bool = True
    """use ACER's efficient trust region"""
    delta: float = 1.0
    """trust region radius"""
    avg_decay: float = 0.99
    """Polyak decay of the average policy network"""


def settings_of(args) -> AcerSettings:
    """The :class:`AcerSettings` held in any object with the same field names (a training's args)."""
    return AcerSettings(**{f.name: getattr(args, f.name) for f in dataclasses.fields(AcerSettings)})


class TensorVecEnv(Protocol):
    n_envs: int
    n_actions: int

    def reset(self) -> torch.Tensor: ...
    def step(self, actions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]: ...
    def state_dict(self) -> dict: ...
    def load_state_dict(self, state: dict) -> None: ...


class Segment(NamedTuple):
    """``n_steps`` steps of ``n_envs`` envs: obs ``(T + 1, n, D)``, the rest ``(T, n[, A])``."""

    obs: torch.Tensor
    actions: torch.Tensor
    rewards: torch.Tensor
    dones: torch.Tensor
    mu: torch.Tensor


def buffer_segments(settings: AcerSettings) -> int:
    """Segments the replay buffer holds: ``buffer_size // n_steps`` (stable-baselines' ``Buffer.size``)."""
    return settings.buffer_size // settings.n_steps


def replay_start_segments(settings: AcerSettings) -> int:
    """Segments stored before replay starts: ``replay_start // n_steps`` (``Buffer.has_atleast``)."""
    return settings.replay_start // settings.n_steps


# ------------------------------------------------------------------ 1. Retrace


def retrace_targets(
    rewards: torch.Tensor,
    dones: torch.Tensor,
    q_taken: torch.Tensor,
    values: torch.Tensor,
    rho_taken: torch.Tensor,
    bootstrap: torch.Tensor,
    gamma: float,
) -> torch.Tensor:
    """``Q_ret (T, n)`` from rewards, dones, ``Q(s_t, a_t)``, ``V(s_t)``, ``rho_t`` (each ``(T, n)``)
    and ``V(s_T)`` ``(n,)`` (see the module docstring)."""
    rho_bar = rho_taken.clamp(max=1.0)
    q_ret = bootstrap
    out = torch.empty_like(rewards)
    for t in reversed(range(rewards.shape[0])):
        q_ret = rewards[t] + gamma * (1.0 - dones[t].to(rewards.dtype)) * q_ret
        out[t] = q_ret
        q_ret = rho_bar[t] * (q_ret - q_taken[t]) + values[t]
    return out


# ------------------------------------------------------------------ 2. losses and trust region


def acer_losses(
    logits: torch.Tensor,
    q: torch.Tensor,
    actions: torch.Tensor,
    mu: torch.Tensor,
    q_ret: torch.Tensor,
    *,
    correction: float,
    ent_coef: float,
) -> dict[str, torch.Tensor]:
    """Per-sample terms on flat batches: ``logits, q, mu (B, A)``, ``actions, q_ret (B,)``.

    Returns ``policy (B,)`` (truncated IS + bias correction - ent_coef x entropy, a function of
    the probabilities ``f`` for the trust region), ``q (B,)`` (the Q loss), ``f (B, A)``,
    ``entropy (B,)`` and ``rho (B, A)``."""
    f = logits.softmax(-1)
    log_f = torch.log(f + 1e-8)  # as a function of f, so the trust region can take d/df
    rows = torch.arange(len(actions), device=actions.device)
    pi_d, q_d = f.detach(), q.detach()
    v = (pi_d * q_d).sum(-1)
    rho = pi_d / mu.clamp_min(1e-8)
    rho_a = rho[rows, actions]
    truncated = -rho_a.clamp(max=correction) * log_f[rows, actions] * (q_ret - v)
    bias = -((1.0 - correction / rho.clamp_min(1e-8)).clamp(min=0) * pi_d * log_f * (q_d - v[:, None])).sum(-1)
    entropy = -(f * log_f).sum(-1)
    q_loss = 0.5 * (q_ret - q[rows, actions]) ** 2
    return {"policy": truncated + bias - ent_coef * entropy, "q": q_loss, "f": f, "entropy": entropy, "rho": rho}


def trust_region(g: torch.Tensor, f: torch.Tensor, f_avg: torch.Tensor, delta: float) -> torch.Tensor:
    """Project per-sample gradients ``g (B, A)`` (of the objective, w.r.t. the probabilities ``f``)
    so that ``k.z <= delta`` with ``k = d KL(f_avg || f) / d f = -f_avg / f``."""
    k = -f_avg / (f + 1e-8)
    scale = ((k * g).sum(-1) - delta).clamp(min=0) / ((k * k).sum(-1) + 1e-8)
    return g - scale[:, None] * k


# ------------------------------------------------------------------ 3. the algorithm


class Acer:
    """ACER on a tensor vector env (see the module docstring).

    Example::

        acer = Acer(net, env, AcerSettings(), seed=0)
        for _ in range(100):
            stats = acer.update()   # {"mean_return": ..., "policy_loss": ..., ...}
    """

    def __init__(self, net: nn.Module, env: TensorVecEnv, settings: AcerSettings, *, seed: int = 0) -> None:
        self.net, self.env, self.s = net, env, settings
        self.avg = copy.deepcopy(net).requires_grad_(False)
        self.optimiser = torch.optim.RMSprop(
            net.parameters(), lr=settings.learning_rate, alpha=settings.rms_alpha, eps=settings.rms_eps
        )
        self.generator = torch.Generator(device="cpu").manual_seed(int(seed))  # the same draws on every device
        self.capacity = buffer_segments(settings)
        if self.capacity < 1 and settings.replay_ratio > 0:
            raise ValueError(
                f"buffer_size {settings.buffer_size} holds no segment of n_steps {settings.n_steps} "
                "steps (buffer_size // n_steps segments): raise buffer_size or set replay_ratio 0"
            )
        self.replay_start = replay_start_segments(settings)
        self.buffer: list[Segment] = []
        self.next_slot = 0
        self.obs: torch.Tensor | None = None
        self.updates = 0
        self.episode_returns: list[float] = []  # finished episodes since the last update
        self.running = torch.zeros(env.n_envs, device="cpu")

    # -- acting

    @torch.no_grad()
    def rollout(self) -> Segment:
        """``n_steps`` steps of every env with actions sampled from the current policy."""
        if self.obs is None:
            self.obs = self.env.reset()
        obs, actions, rewards, dones, mus = [self.obs], [], [], [], []
        for _ in range(self.s.n_steps):
            mu = self.net(self.obs)[0].softmax(-1)
            a = torch.multinomial(mu.cpu(), 1, generator=self.generator)[:, 0].to(mu.device)  # drawn on the CPU
            self.obs, r, d = self.env.step(a)
            self.running += r.cpu()
            for i in torch.nonzero(d.cpu()).flatten().tolist():
                self.episode_returns.append(float(self.running[i]))
                self.running[i] = 0.0
            obs.append(self.obs)
            actions.append(a)
            rewards.append(r)
            dones.append(d)
            mus.append(mu)
        return Segment(
            torch.stack(obs), torch.stack(actions), torch.stack(rewards).float(), torch.stack(dones), torch.stack(mus)
        )

    # -- learning

    def learn(self, seg: Segment) -> dict[str, float]:
        """One gradient step on a segment (on- or off-policy)."""
        t, n = seg.actions.shape
        logits, q = self.net(seg.obs.flatten(0, 1))  # ((T + 1) n, A) each
        a = logits.shape[-1]
        logits, q = logits.view(t + 1, n, a), q.view(t + 1, n, a)
        with torch.no_grad():
            pi = logits.softmax(-1)
            v = (pi * q).sum(-1)  # (T + 1, n)
            rho_a = (pi[:-1] / seg.mu.clamp_min(1e-8)).gather(2, seg.actions[..., None])[..., 0]
            q_a = q[:-1].gather(2, seg.actions[..., None])[..., 0]
            q_ret = retrace_targets(seg.rewards, seg.dones, q_a, v[:-1], rho_a, v[-1], self.s.gamma)
        terms = acer_losses(
            logits[:-1].flatten(0, 1),
            q[:-1].flatten(0, 1),
            seg.actions.flatten(),
            seg.mu.flatten(0, 1),
            q_ret.flatten(),
            correction=self.s.correction,
            ent_coef=self.s.ent_coef,
        )
        b = t * n
        policy_loss, q_loss = terms["policy"].mean(), terms["q"].mean()
        self.optimiser.zero_grad(set_to_none=True)
        if self.s.trust_region:
            f = terms["f"]
            g = torch.autograd.grad(-policy_loss * b, f, retain_graph=True)[0]  # per-sample d objective / d f
            with torch.no_grad():
                f_avg = self.avg(seg.obs[:-1].flatten(0, 1))[0].softmax(-1)
            z = trust_region(g, f.detach(), f_avg, self.s.delta)
            torch.autograd.backward([f, self.s.q_coef * q_loss], [-z / b, torch.ones_like(q_loss)])
        else:
            (policy_loss + self.s.q_coef * q_loss).backward()
        norm = nn.utils.clip_grad_norm_(self.net.parameters(), self.s.max_grad_norm)
        self.optimiser.step()
        with torch.no_grad():
            for p_avg, p in zip(self.avg.parameters(), self.net.parameters()):
                p_avg.mul_(self.s.avg_decay).add_(p, alpha=1 - self.s.avg_decay)
        return {
            "policy_loss": policy_loss.item(),
            "q_loss": q_loss.item(),
            "entropy": terms["entropy"].mean().item(),
            "grad_norm": float(norm),
        }

    def store(self, seg: Segment) -> None:
        """Put a segment in the buffer, overwriting the oldest once it is full (no buffer when
        ``replay_ratio`` is 0, as stable-baselines)."""
        if self.s.replay_ratio <= 0:
            return
        if len(self.buffer) < self.capacity:
            self.buffer.append(seg)
        else:
            self.buffer[self.next_slot] = seg
        self.next_slot = (self.next_slot + 1) % self.capacity

    def replay_batch(self) -> Segment:
        """For every env ``i``, env ``i``'s part of a segment drawn uniformly from the buffer
        (independently per env, as stable-baselines' ``Buffer.get``)."""
        n = self.env.n_envs
        idx = torch.randint(len(self.buffer), (n,), generator=self.generator, device="cpu").tolist()
        if len(set(idx)) == 1:
            return self.buffer[idx[0]]
        envs = range(n)
        return Segment(
            *(torch.stack([self.buffer[j][f][:, i] for i, j in zip(envs, idx)], 1) for f in range(len(Segment._fields)))
        )

    def update(self) -> dict[str, float]:
        """Collect one segment, learn on it, then replay; returns the mean losses, the number
        of replayed batches and the mean return of the episodes finished meanwhile."""
        seg = self.rollout()
        self.store(seg)
        stats = [self.learn(seg)]
        if self.s.replay_ratio > 0 and len(self.buffer) >= self.replay_start:
            rate = torch.tensor(float(self.s.replay_ratio), device="cpu")
            n_replay = int(torch.poisson(rate, generator=self.generator))
            for _ in range(n_replay):
                stats.append(self.learn(self.replay_batch()))
        self.updates += 1
        out = {k: sum(s[k] for s in stats) / len(stats) for k in stats[0]}
        out["replayed"] = len(stats) - 1
        out["mean_return"] = (
            sum(self.episode_returns) / len(self.episode_returns) if self.episode_returns else float("nan")
        )
        out["episodes"] = len(self.episode_returns)
        self.episode_returns = []
        return out

    # -- resuming

    def state_dict(self) -> dict:
        """Everything needed to continue exactly (tensors and plain values: ``weights_only`` loads)."""
        return {
            "net": self.net.state_dict(),
            "avg": self.avg.state_dict(),
            "optimiser": self.optimiser.state_dict(),
            "generator": self.generator.get_state(),
            "buffer": [s._asdict() for s in self.buffer],
            "next_slot": self.next_slot,
            "obs": self.obs,
            "updates": self.updates,
            "running": self.running,
            "env": self.env.state_dict(),
        }

    def load_state_dict(self, state: dict) -> None:
        """Continue from :meth:`state_dict`, saved on any device: the buffer and the current
        observations go to the network's device, the bookkeeping and the generator stay on the CPU."""
        device = next(self.net.parameters()).device
        self.net.load_state_dict(state["net"])
        self.avg.load_state_dict(state["avg"])
        self.optimiser.load_state_dict(state["optimiser"])  # torch moves its state to the parameters' device
        self.generator.set_state(state["generator"].cpu())
        self.load_buffer([Segment(**to_device(s, device)) for s in state["buffer"]], state["next_slot"])
        self.obs, self.updates = to_device(state["obs"], device), state["updates"]
        self.running = state["running"].cpu()
        self.env.load_state_dict(state["env"])

    def load_buffer(self, segments: list[Segment], next_slot: int) -> None:
        """Restore a buffer saved with ``next_slot`` as the next slot to write. A checkpoint written
        with another capacity (before xrl followed stable-baselines' ``buffer_size // n_steps``,
        capacity was ``buffer_size // (n_steps x n_envs)``) is put in age order, the newest
        ``capacity`` segments kept, and continues from there: nothing is lost when the capacity
        grew. Same capacity: restored as saved (a bit-identical resume)."""
        if len(segments) == self.capacity or (len(segments) < self.capacity and next_slot == len(segments)):
            self.buffer, self.next_slot = segments, next_slot % max(1, self.capacity)
            return
        full = next_slot < len(segments)  # a ring that wrapped: the oldest segment is at next_slot
        ordered = segments[next_slot:] + segments[:next_slot] if full else segments
        self.buffer = ordered[-self.capacity :] if self.capacity else []
        self.next_slot = len(self.buffer) % max(1, self.capacity)
