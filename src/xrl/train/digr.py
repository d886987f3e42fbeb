"""DIGR (Xing, Nagata, Zou, Neftci & Krichmar 2022, "Policy Distillation with Selective Input
Gradient Regularization for Efficient Interpretability", arXiv:2205.08685): retrain an agent so that its cheap vanilla-gradient saliency looks like the teacher's perturbation saliency
while it still acts like the teacher.

Reads top to bottom:

1. :func:`make_saliency_dataset` — the *offline perturbation saliency dataset* D: states from the
   teacher's own (sampled) rollouts, stored as a StateDataset, with the teacher's Gaussian-blur
   perturbation maps ``f(s, i) = KL(pi_t(s) || pi_t(m(s, i)))`` (Eq. 3; the ``greydanus``
   explainer with ``score="kl"``, radius 4 on Red-Fetch-Green, 8 on Breakout, 5 elsewhere as in
   appendix A) in ``saliency/digr``. Maps are computed in chunks, each chunk saved as it finishes,
   so an interrupted run resumes; ``ray=`` spreads the chunks over Ray workers.
2. The losses: :func:`policy_saliency` is the paper's gradient map
   ``Mg_i = |sum_a pi(a|s) d pi(a|s) / d s_i| / max_j`` (Eq. 2; ``sum_a pi d pi = d(1/2 sum_a pi^2)``,
   so it is the input gradient of ``1/2 ||pi(s)||^2``, reduced over channels by max);
   :func:`igr_loss` is Eq. 4, ``mean_i 1[Mp_i <= lambda] * Mg_i`` with ``Mp`` the teacher's map
   normalised by its max (Eq. 3); :func:`distillation_loss` is ``KL(pi_t(s) || pi_theta(s))``.
   :func:`pcgrad` combines the two gradients (Yu et al. 2020).
3. :func:`train_digr` — a new, randomly initialised policy of the teacher's architecture is
   trained on ``L_IGR`` over D plus ``alpha * L_KL`` over states of its *own* rollouts (an online
   buffer of the last ``buffer_size`` states). Adam, Table 3 defaults (threshold 0.1, alpha 0.01,
   lr 1e-3, buffer 10k). Checkpoints at every ``checkpoint_every`` updates (``xrl.train.run``:
   weights, optimizer and RNG states as tensors, the buffer as a compressed ``.npz`` read without
   pickle, counters as JSON, each env as its episode's seed and the actions since, replayed on
   resume); the same call resumes to the same result. Runs checkpointed in the old format
   (``checkpoint.pkl``, a pickle) resume only with ``trust_pickle=True`` (``--trust-pickle``);
   their next checkpoint is in the new format. A loss that turns NaN stops the
   run with a clear message and leaves the last good checkpoint. The student is exported as an
   xrl agent (``agent.pt`` + card), so every explainer, metric and ``xrl attack`` takes it.
   ``igr=False`` trains the distillation-only ablation of Fig. 8. ``device`` (``auto``: CUDA when
   available) holds the teacher, the student and each batch; the student is initialised and the
   batches and actions are drawn on the CPU, checkpoints hold CPU tensors, and the device is not
   part of the run's identity (a run started on the CPU resumes on CUDA).

The DIGR saliency of the student is then the ``gradient`` explainer with ``targets=DIGR_TARGET``
(the quantity of Eq. 2), or plain vanilla gradient of the chosen action.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import json
import math
import os
import shutil
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from tqdm.auto import tqdm

from xrl._version import __version__
from xrl.agents.load import build_policy, load_agent, model_from_policy, save_policy
from xrl.agents.model import Model
from xrl.data.collect import collect
from xrl.data.dataset import StateDataset
from xrl.envs import make_env
from xrl.explainers import get_explainer
from xrl.files import atomic_path, write_json
from xrl.ops import resolve_device
from xrl.rollout import evaluate_policy
from xrl.train.acer import to_device
from xrl.train.run import TRUST_PICKLE, Run, check_settings, command, load_tensors, read_json

#: the stored saliency a DIGR dataset holds
SALIENCY_KEY = "digr"
#: Gaussian-blur radius per env (DIGR appendix A); others use Greydanus' 5
RADIUS = {"red-fetch-green": 4.0, "breakout": 8.0}


def DIGR_TARGET(scores: torch.Tensor) -> torch.Tensor:
    """``1/2 sum_a pi(a|s)^2`` ``(B,)``: its input gradient is Eq. 2's ``sum_a pi d pi / d s``."""
    return 0.5 * scores.softmax(-1).pow(2).sum(-1)


# ------------------------------------------------------------------ 1. the saliency dataset


def make_saliency_dataset(
    teacher: Model,
    out: str | os.PathLike,
    *,
    n_states: int = 1000,
    radius: float | None = None,
    stride: int = 2,
    seed: int = 0,
    chunk: int = 32,
    ray: str | None = None,
    progress: bool = True,
) -> Path:
    """Collect at least ``n_states`` states of the teacher's sampled rollouts (episode ``i``
    seeded ``seed + i``; a Q-value teacher's greedy rollouts: its softmax is no policy it plays) into the StateDataset ``out`` and store the teacher's KL perturbation
    maps as ``saliency/digr`` (settings recorded with them). Resumes an interrupted run.

    ``stride``: the perturbation grid pitch (2 = a blur centred on every other pixel, the maps
    upsampled bilinearly; 1 = every pixel, 4× the forward passes). ``ray``: ``None`` computes in
    this process; ``"auto"`` starts a local Ray, an address joins a cluster.
    """
    out = Path(out)
    env = teacher.info.get("env") or {}
    if not env.get("name"):
        raise ValueError("the teacher records no env (model.info['env']); load it with xrl.load_agent")
    if isinstance(n_states, bool) or int(n_states) < 1:
        raise ValueError(f"n_states must be a positive integer, got {n_states!r}")
    settings = {
        "radius": float(radius if radius is not None else RADIUS.get(env["name"], 5.0)),
        "stride": int(stride),
        "score": "kl",
    }
    if out.exists():
        with StateDataset.open(out) as ds:
            _check_dataset(ds, teacher, maps=False)
            if SALIENCY_KEY in ds.saliency_methods:
                if len(ds) < n_states or ds.saliency_settings(SALIENCY_KEY) != settings:
                    raise ValueError(
                        f"{out} holds a DIGR dataset of {len(ds)} states made with "
                        f"{ds.saliency_settings(SALIENCY_KEY)}; asked for {n_states} "
                        f"with {settings}: choose another out"
                    )
                return out
            episodes = ds.n_episodes  # states collected before an interruption
    else:
        episodes = 1
    while True:  # episodes until there are enough states (collect extends the same file)
        collect(teacher, episodes=episodes, out=out, seed=seed, sample=teacher.score_kind == "logits", progress=False)
        with StateDataset.open(out) as ds:
            n, done = len(ds), ds.n_episodes
        if n >= n_states:
            break
        # grow by ~70% of the estimated episodes still needed: overshooting costs maps
        episodes = done + max(1, math.ceil(0.7 * (n_states - n) / max(1, n / done)))
    with StateDataset.open(out) as ds:
        maps = _maps_in_chunks(teacher, ds, settings, chunk, ray, progress)
        ds.add_saliency(SALIENCY_KEY, maps, settings=settings)
    shutil.rmtree(_maps_partial(out), ignore_errors=True)
    return out


def _maps_partial(out: Path) -> Path:
    return Path(f"{out}.maps.partial")


def _chunk_maps(teacher: Model, states: np.ndarray, settings: dict) -> np.ndarray:
    """Teacher maps ``(n, H, W)`` of raw uint8 states ``(n, C, H, W)`` (one thread per worker)."""
    x = (torch.as_tensor(states, device="cpu").float() / teacher.obs_scale).to(_device(teacher))
    return get_explainer("greydanus", teacher, **settings).explain(x).cpu().numpy()


def _maps_in_chunks(
    teacher: Model, ds: StateDataset, settings: dict, chunk: int, ray: str | None, progress: bool
) -> np.ndarray:
    """All maps of ``ds``, chunk by chunk; finished chunks are kept in ``<out>.maps.partial/``."""
    folder = _maps_partial(ds.path)
    folder.mkdir(exist_ok=True)
    marker = folder / "settings.json"
    if marker.exists() and json.loads(marker.read_text()) != {**settings, "chunk": chunk}:
        shutil.rmtree(folder)
        folder.mkdir()
    write_json(marker, {**settings, "chunk": chunk})
    starts = list(range(0, len(ds), chunk))
    todo = [s for s in starts if not (folder / f"{s:08d}.npy").exists()]

    def save(start: int, maps: np.ndarray) -> None:
        with atomic_path(folder / f"{start:08d}.npy") as tmp, tmp.open("wb") as f:
            np.save(f, maps.astype(np.float32))

    with tqdm(
        total=len(starts),
        initial=len(starts) - len(todo),
        unit="chunk",
        disable=not progress,
        desc=f"perturbation maps ({len(ds)} states)",
    ) as bar:
        if ray is None:
            for start in todo:
                save(start, _chunk_maps(teacher, ds.raw_states(slice(start, start + chunk)), settings))
                bar.update(1)
        else:
            import ray as ray_lib

            if not ray_lib.is_initialized():
                ray_lib.init(address=None if ray == "auto" else ray, include_dashboard=False, log_to_driver=False)
            remote = ray_lib.remote(num_cpus=1)(_chunk_maps_one_thread)
            model_ref = ray_lib.put(copy.deepcopy(teacher).cpu())  # Ray's workers compute on the CPU
            pending = {remote.remote(model_ref, ds.raw_states(slice(s, s + chunk)), settings): s for s in todo}
            while pending:
                ready, _ = ray_lib.wait(list(pending), num_returns=1)
                save(pending.pop(ready[0]), ray_lib.get(ready[0]))
                bar.update(1)
    return np.concatenate([np.load(folder / f"{s:08d}.npy") for s in starts])


def _chunk_maps_one_thread(teacher: Model, states: np.ndarray, settings: dict) -> np.ndarray:
    torch.set_num_threads(1)
    return _chunk_maps(teacher, states, settings)


# ------------------------------------------------------------------ 2. the losses


def policy_saliency(model: Model, states: torch.Tensor, *, create_graph: bool = True) -> torch.Tensor:
    """Eq. 2: ``|d (1/2 ||pi(s)||^2) / d s|`` max over channels, divided by its max per state
    ``(B, H, W)``; differentiable in the model's weights when ``create_graph``."""
    x = states.detach().requires_grad_(True)
    (grad,) = torch.autograd.grad(DIGR_TARGET(model(x)).sum(), [x], create_graph=create_graph)
    g = grad.abs().amax(1)  # (B, H, W)
    return g / g.flatten(1).amax(1).clamp_min(1e-12)[:, None, None]


def normalised_maps(maps: torch.Tensor) -> torch.Tensor:
    """Eq. 3's normalisation: each map divided by its max (all-zero maps stay zero)."""
    return maps / maps.flatten(1).amax(1).clamp_min(1e-12)[:, None, None]


def igr_loss(model: Model, states: torch.Tensor, teacher_maps: torch.Tensor, threshold: float) -> torch.Tensor:
    """Eq. 4: ``mean_s mean_i 1[Mp_i <= threshold] * Mg_i`` (scalar), ``teacher_maps`` raw."""
    penalised = (normalised_maps(teacher_maps) <= threshold).to(states.dtype)
    return (penalised * policy_saliency(model, states)).flatten(1).mean(1).mean()


def distillation_loss(
    teacher: Model, student: Model, states: torch.Tensor, temperature: float | None = None
) -> torch.Tensor:
    """``mean_s KL(pi_t(s) || pi_theta(s))`` (scalar), ``pi_t = softmax(teacher(s) / temperature)``."""
    with torch.no_grad():
        log_p = (teacher(states) / (temperature or 1.0)).log_softmax(-1)
    log_q = student(states).log_softmax(-1)
    return (log_p.exp() * (log_p - log_q)).sum(-1).mean()


def pcgrad(grads: Sequence[torch.Tensor], generator: torch.Generator | None = None) -> torch.Tensor:
    """PCGrad (Yu et al. 2020, Alg. 1) on flat task gradients: each task's gradient, in turn
    against the others in a random order, loses its component along any other task's gradient
    it conflicts with (negative dot product); the projected gradients are summed."""
    projected = []
    for i, g in enumerate(grads):
        g = g.clone()
        others = [j for j in range(len(grads)) if j != i]
        order = torch.randperm(len(others), generator=generator, device="cpu").tolist()
        for j in (others[k] for k in order):
            dot = g @ grads[j]
            if dot < 0:
                g = g - dot / grads[j].pow(2).sum().clamp_min(1e-20) * grads[j]
        projected.append(g)
    return torch.stack(projected).sum(0)


# ------------------------------------------------------------------ 3. training


@dataclass
class DigrArgs:
    teacher: str
    """the agent to distil: zoo name, xrl .pt or SB3 .zip"""
    data: str
    """the offline perturbation saliency dataset (:func:`make_saliency_dataset`; made if absent)"""
    out: str = "runs/digr"
    """run folder: checkpoints/, history.json, then agent.pt and agent.json"""
    updates: int = 10_000
    """gradient steps"""
    batch_size: int = 64
    """states per loss term and step"""
    learning_rate: float = 1e-3
    """Adam step size (Table 3)"""
    alpha: float = 0.01
    """weight of the distillation loss (Table 3)"""
    threshold: float = 0.1
    """teacher saliency at or below which the student's gradient saliency is penalised (Table 3)"""
    buffer_size: int = 10_000
    """online state buffer of the student's own rollouts (Table 3)"""
    n_envs: int = 8
    """envs the student acts in; each update adds one step of each to the buffer"""
    igr: bool = True
    """False: distillation only (the ablation of Fig. 8)"""
    use_pcgrad: bool = True
    """combine the two gradients with PCGrad (else their sum)"""
    n_states: int = 1000
    """states in the saliency dataset when it is made here (Table 3)"""
    temperature: float | None = None
    """distil ``softmax(teacher scores / temperature)``; None = 1, a policy's logits as they are.
    A Q-value teacher (DQN) has no policy: its softmax at 1 is nearly uniform when Q-values are
    close (the zoo highway-fast agent: top probability 0.27 of 5 actions), so the argmax it acts
    by is a small part of the KL; a temperature below 1 sharpens it, as policy distillation of DQN
    teachers does (Rusu et al. 2016, "Policy Distillation", arXiv:1511.06295)"""
    stride: int = 2
    """perturbation grid pitch of the saliency dataset when it is made here"""
    arch: str | None = None
    """student architecture; default (and required unless allow_other_arch) the teacher's"""
    allow_other_arch: bool = False
    """allow a student architecture other than the teacher's"""
    eval_every: int = 1000
    """updates between evaluations of the student's return (Fig. 9)"""
    eval_episodes: int = 20
    """seeded episodes of each evaluation (and of the teacher's, once)"""
    final_eval_episodes: int = 100
    """seeded episodes of the card's scores of the student and the teacher"""
    checkpoint_every: int = 1000
    """updates between checkpoints"""
    snapshots: bool = False
    """also save the student at every evaluation as ``snapshots/agent-<update>.pt`` (to trace
    its saliency over training, or to pick an update by a validation score)"""
    seed: int = 0
    """seed of the student's initialisation, its episodes, the batches and the saliency dataset made here"""
    progress: bool = True
    device: str = "auto"
    """auto|cpu|cuda|cuda:N; auto = CUDA when available"""
    trust_pickle: bool = field(default=False, metadata={"switch": True})
    """resume a checkpoint in the old pickle format (checkpoint.pkl runs code when loaded)"""

    LIMITS: ClassVar[dict] = {
        "updates": ">=1",
        "batch_size": ">=1",
        "learning_rate": ">0",
        "alpha": ">=0",
        "threshold": "0..1",
        "buffer_size": ">=1",
        "n_envs": ">=1",
        "n_states": ">=1",
        "stride": ">=1",
        "temperature": ">0",
        "eval_every": ">=1",
        "eval_episodes": ">=1",
        "final_eval_episodes": ">=1",
        "checkpoint_every": ">=1",
        "seed": ">=0",
    }
    #: may change between a run and its resumption (a run started on the CPU resumes on CUDA)
    IGNORED: ClassVar[set] = {
        "device",
        "updates",
        "progress",
        "eval_episodes",
        "final_eval_episodes",
        "checkpoint_every",
        "out",
        "snapshots",
    }


def train_digr(args: DigrArgs, *, stop_at: int | None = None) -> Path:
    """Train (or resume) a DIGR student; returns ``out/agent.pt``. ``stop_at`` stops after the
    checkpoint at that update (to test resuming) and returns that checkpoint's folder."""
    check_settings(args)
    device = resolve_device(args.device)  # a bad or absent device is refused before anything is written
    teacher = load_agent(args.teacher, device=device)
    arch = _student_arch(args, teacher)
    env = teacher.info["env"]
    data = Path(args.data)
    with StateDataset.open(data) if data.exists() else contextlib.nullcontext() as ds:
        made = ds is not None and SALIENCY_KEY in ds.saliency_methods
    if not made:  # make it (or finish making it) with this teacher
        make_saliency_dataset(
            teacher, data, n_states=args.n_states, stride=args.stride, seed=args.seed, progress=args.progress
        )
    with StateDataset.open(data) as ds:
        _check_dataset(ds, teacher)
        states_d = torch.as_tensor(ds.raw_states(), device="cpu")  # uint8 (N, C, H, W)
        maps_d = torch.as_tensor(ds.saliency(SALIENCY_KEY), device="cpu")  # (N, H, W)
        data_settings = ds.saliency_settings(SALIENCY_KEY)
    settings = {k: v for k, v in dataclasses.asdict(args).items() if k != "trust_pickle"}
    with Run(args.out, settings, ignore=DigrArgs.IGNORED, outputs=("agent.pt",)) as run:
        return _train(args, run, teacher, arch, env, data, states_d, maps_d, data_settings, stop_at)


def _train(
    args: DigrArgs,
    run_: Run,
    teacher: Model,
    arch: str,
    env: dict,
    data: Path,
    states_d: torch.Tensor,
    maps_d: torch.Tensor,
    data_settings: dict,
    stop_at: int | None,
) -> Path:
    run = run_.folder
    state = _resume(args, run_, teacher, arch) or _fresh(args, teacher, arch)
    student_policy = state["policy"]
    student = model_from_policy(student_policy, action_names=teacher.action_names, info={"env": env})
    history = state["history"]
    if "teacher" not in history:
        history["teacher"] = _score(teacher, env, episodes=args.eval_episodes, seed=20_000 + args.seed)
    bar = tqdm(total=args.updates, initial=state["update"], desc="DIGR", unit="update", disable=not args.progress)
    last_good = state["update"]
    started = time.time()
    for update in range(state["update"], args.updates):
        values = _update(args, state, teacher, student, states_d, maps_d)
        if not all(math.isfinite(v) for v in values):
            bar.close()
            raise FloatingPointError(
                f"DIGR loss became {values} at update {update}; stopped. The last good checkpoint "
                f"(update {last_good}) is kept in {run}; lower learning_rate or check the dataset"
            )
        state["update"] = update + 1
        log: dict[str, Any] = {
            "update": update + 1,
            "kl": values[-1] / args.alpha,
            "igr": values[0] if args.igr else None,
        }
        if (update + 1) % args.eval_every == 0 or update + 1 == args.updates:
            log["student"] = _score(student, env, episodes=args.eval_episodes, seed=20_000 + args.seed)
            history["log"].append(log)
            if args.snapshots:
                save_policy(
                    student_policy,
                    run / "snapshots" / f"agent-{update + 1:06d}.pt",
                    algo="ppo",
                    arch=arch,
                    card=_card(
                        args, teacher, env, data, len(states_d), data_settings, update=update + 1, score=log["student"]
                    ),
                )
            bar.set_postfix(
                igr=f"{values[0]:.4f}" if args.igr else "-",
                kl=f"{log['kl']:.4f}",
                student_return=f"{log['student']['mean_return']:.3f}",
                teacher_return=f"{history['teacher']['mean_return']:.3f}",
            )
        elif (update + 1) % 50 == 0:
            bar.set_postfix(igr=f"{values[0]:.4f}" if args.igr else "-", kl=f"{log['kl']:.4f}")
        bar.update(1)
        if (update + 1) % args.checkpoint_every == 0 or update + 1 == args.updates:
            folder = _save(run_, state)
            last_good = update + 1
            if run_.checkpointed(history, update + 1, stop_at):
                bar.close()
                return folder
    bar.close()
    score = _score(student, env, episodes=args.final_eval_episodes, seed=10_000 + args.seed)
    teacher_score = _score(teacher, env, episodes=args.final_eval_episodes, seed=10_000 + args.seed)
    seconds = round(time.time() - started, 1)
    card = _card(args, teacher, env, data, len(states_d), data_settings, update=args.updates, score=score)
    card.update(teacher_score=teacher_score, train_seconds_this_run=seconds)
    run_.write_history(history)
    return save_policy(student_policy, run / "agent.pt", algo="ppo", arch=arch, card=card)


def _update(
    args: DigrArgs, state: dict, teacher: Model, student: Model, states_d: torch.Tensor, maps_d: torch.Tensor
) -> list[float]:
    """One update: the student acts in its envs (their states join the buffer), a batch of D and
    one of the buffer are drawn, and the gradients of ``L_IGR`` and ``alpha * L_KL``, combined by
    PCGrad, make one Adam step. Returns the losses' values; when one is not finite, nothing is
    stepped. The batches are drawn on the CPU and moved to the run's device (the teacher's)."""
    device, rng, gen = _device(teacher), state["rng"], state["torch_gen"]
    _act(student, state, gen)
    rows = torch.as_tensor(rng.integers(0, len(states_d), args.batch_size), device="cpu")
    online = torch.as_tensor(rng.integers(0, state["filled"], args.batch_size), device="cpu")
    x_d = (states_d[rows].float() / teacher.obs_scale).to(device)
    x_b = (torch.as_tensor(state["buffer"][online.numpy()], device="cpu").float() / teacher.obs_scale).to(device)
    losses = [args.alpha * distillation_loss(teacher, student, x_b, args.temperature)]
    if args.igr:
        losses.insert(0, igr_loss(student, x_d, maps_d[rows].to(device), args.threshold))
    values = [v.item() for v in losses]
    if not all(math.isfinite(v) for v in values):
        return values
    params = list(state["policy"].parameters())
    grads = [
        torch.cat([g.reshape(-1) for g in torch.autograd.grad(v, params, allow_unused=True, materialize_grads=True)])
        for v in losses
    ]
    combined = pcgrad(grads, gen) if args.use_pcgrad and len(grads) > 1 else torch.stack(grads).sum(0)
    offset = 0
    for p in params:
        p.grad = combined[offset : offset + p.numel()].view_as(p).clone()
        offset += p.numel()
    state["optimiser"].step()
    state["optimiser"].zero_grad(set_to_none=True)
    return values


def _score(model: Model, env: dict, *, episodes: int, seed: int) -> dict:
    """The greedy score of ``model`` in the env it was made for: ``episodes`` seeded episodes, 10
    side by side (:func:`xrl.rollout.evaluate_policy`)."""
    played = evaluate_policy(
        model, env["name"], env_settings=env.get("settings") or {}, episodes=episodes, seed=seed, n_envs=10
    )
    return played.summary()


def _card(
    args: DigrArgs,
    teacher: Model,
    env: dict,
    data: Path,
    n_data: int,
    data_settings: dict,
    *,
    update: int,
    score: dict,
    **extra,
) -> dict:
    return {
        "what": f"DIGR student of {args.teacher} for {env['name']}" + ("" if args.igr else " (distillation only)"),
        "env": env,
        "algo": "ppo",
        "seed": args.seed,
        "teacher": teacher.info.get("source"),
        "score": score,
        "updates": update,
        "digr": {k: v for k, v in dataclasses.asdict(args).items() if k not in ("progress", "device")},
        "saliency_dataset": {"path": str(data), "states": int(n_data), **data_settings},
        "command": command("xrl train digr", args, always=("teacher", "data", "out")),
        "action_names": teacher.action_names,
        "value_head": "untrained (DIGR distils the policy only)",
        **extra,
    }


def _student_arch(args: DigrArgs, teacher: Model) -> str:
    card = teacher.info.get("card") or {}
    teacher_arch = card.get("arch")
    if teacher_arch is None and args.arch is None:
        raise ValueError("the teacher's card names no architecture; pass arch= (a registered one)")
    arch = args.arch or teacher_arch
    if teacher_arch is not None and arch != teacher_arch and not args.allow_other_arch:
        raise ValueError(
            f"the student's architecture {arch!r} differs from the teacher's {teacher_arch!r}; "
            "DIGR retrains the same architecture (pass allow_other_arch=True to distil into another)"
        )
    return arch  # type: ignore[return-value]


def _check_dataset(ds: StateDataset, teacher: Model, *, maps: bool = True) -> None:
    if ds.env != teacher.info.get("env"):
        raise ValueError(
            f"the saliency dataset {ds.path} was collected on {ds.env}, the teacher was "
            f"trained on {teacher.info.get('env')}: make the dataset with this teacher"
        )
    if ds.agent.get("fingerprint") != teacher.fingerprint():
        raise ValueError(
            f"the saliency dataset {ds.path} was made by another agent "
            f"({ds.agent.get('source')}); its perturbation maps are not this teacher's"
        )
    if maps and SALIENCY_KEY not in ds.saliency_methods:
        raise ValueError(f"{ds.path} has no saliency/{SALIENCY_KEY}; make it with make_saliency_dataset")


def _device(model: Model) -> torch.device:
    """The device of the model's weights (the run's device: the teacher is loaded on it)."""
    return next(model.parameters()).device


def _fresh(args: DigrArgs, teacher: Model, arch: str) -> dict:
    """A new run's state; the student on the teacher's device (the run's)."""
    torch.manual_seed(args.seed)  # the student's random initialisation, on the CPU: the same on every device
    policy = build_policy(arch, teacher.input_shape, teacher.n_actions).to(_device(teacher))
    env = teacher.info["env"]
    envs = [make_env(env["name"], **(env.get("settings") or {})) for _ in range(args.n_envs)]
    obs = [np.asarray(e.reset(seed=args.seed + i)[0]) for i, e in enumerate(envs)]
    return {
        "episodes": [{"seed": args.seed + i, "actions": []} for i in range(args.n_envs)],
        "policy": policy,
        "optimiser": torch.optim.Adam(policy.parameters(), lr=args.learning_rate),
        "rng": np.random.default_rng(args.seed),
        "torch_gen": torch.Generator(device="cpu").manual_seed(args.seed),
        "envs": envs,
        "obs": obs,
        "episode_seed": args.seed + args.n_envs,
        "buffer": np.zeros((args.buffer_size, *teacher.input_shape), np.uint8),
        "filled": 0,
        "cursor": 0,
        "update": 0,
        "history": {"log": []},
    }


@torch.no_grad()
def _act(student: Model, state: dict, gen: torch.Generator) -> None:
    """One step of every env with actions sampled from the student; their states join the buffer."""
    obs = np.stack(state["obs"])
    probs = student.probs(student.preprocess(obs)).cpu()  # drawn on the CPU: the same draws on every device
    actions = torch.multinomial(probs, 1, generator=gen)[:, 0].tolist()
    for i, (env, action) in enumerate(zip(state["envs"], actions)):
        state["buffer"][state["cursor"]] = state["obs"][i]
        state["cursor"] = (state["cursor"] + 1) % len(state["buffer"])
        state["filled"] = min(state["filled"] + 1, len(state["buffer"]))
        next_obs, _, terminated, truncated, _ = env.step(action)
        if state["episodes"][i] is not None:
            state["episodes"][i]["actions"].append(int(action))
        if terminated or truncated:
            next_obs, _ = env.reset(seed=state["episode_seed"])
            state["episodes"][i] = {"seed": state["episode_seed"], "actions": []}  # what a resume replays
            state["episode_seed"] += 1
        state["obs"][i] = np.asarray(next_obs)


FORMAT = "xrl.digr_checkpoint"


def _save(run: Run, state: dict) -> Path:
    """Everything needed to continue exactly, without pickle: ``tensors.pt`` (weights, optimizer,
    the torch generator, observations, each env's actions since its episode began), ``buffer.npz``
    (the online buffer, compressed: game frames shrink ~30x), ``state.json`` (the numpy RNG,
    counters, each env's episode seed, the history)."""
    filled = state["filled"]
    tensors = {  # CPU tensors: a run saved on CUDA resumes (and loads) on the CPU
        "policy": to_device(state["policy"].state_dict(), "cpu"),
        "optimiser": to_device(state["optimiser"].state_dict(), "cpu"),
        "torch_gen": state["torch_gen"].get_state(),
        "obs": torch.from_numpy(np.stack(state["obs"])),
        "actions": [
            torch.tensor(e["actions"] if e else [], dtype=torch.int64, device="cpu") for e in state["episodes"]
        ],
    }
    meta = {
        "format": FORMAT,
        "version": 1,
        "xrl_version": __version__,
        "rng": state["rng"].bit_generator.state,
        "episodes": [{"seed": e["seed"]} if e else None for e in state["episodes"]],
        "episode_seed": state["episode_seed"],
        "filled": filled,
        "cursor": state["cursor"],
        "buffer_size": len(state["buffer"]),
        "update": state["update"],
        "history": state["history"],
    }

    def write(folder: Path) -> None:
        torch.save(tensors, folder / "tensors.pt")
        np.savez_compressed(folder / "buffer.npz", buffer=state["buffer"][:filled])
        write_json(folder / "state.json", meta)

    folder = run.save(state["update"], write)
    (run.folder / "checkpoint.pkl").unlink(missing_ok=True)  # an old-format checkpoint, superseded
    return folder


def _resume(args: DigrArgs, run: Run, teacher: Model, arch: str) -> dict | None:
    folder = run.latest()
    if folder is None:
        old = run.folder / "checkpoint.pkl"
        if not old.exists():
            return None
        if not args.trust_pickle:
            raise ValueError(f"{run.folder}: " + TRUST_PICKLE.format(files="checkpoint.pkl"))
        return _resume_pickle(old, _device(teacher))
    meta, tensors = read_json(folder / "state.json"), load_tensors(folder / "tensors.pt")
    if meta.get("format") != FORMAT:
        raise ValueError(f"{folder} is not a DIGR training checkpoint (format={FORMAT!r})")
    policy = build_policy(arch, teacher.input_shape, teacher.n_actions).to(_device(teacher))
    policy.load_state_dict(tensors["policy"])
    optimiser = torch.optim.Adam(policy.parameters(), lr=args.learning_rate)
    optimiser.load_state_dict(tensors["optimiser"])  # torch moves its state to the parameters' device
    rng = np.random.default_rng()
    rng.bit_generator.state = meta["rng"]
    gen = torch.Generator(device="cpu")
    gen.set_state(tensors["torch_gen"])
    buffer = np.zeros((meta["buffer_size"], *teacher.input_shape), np.uint8)
    try:
        with np.load(folder / "buffer.npz", allow_pickle=False) as npz:
            buffer[: meta["filled"]] = npz["buffer"]
    except (OSError, ValueError, KeyError) as err:
        raise ValueError(f"{folder / 'buffer.npz'} is not a readable buffer ({err})") from None
    state = {
        "policy": policy,
        "optimiser": optimiser,
        "rng": rng,
        "torch_gen": gen,
        "buffer": buffer,
        "obs": list(tensors["obs"].numpy()),
        **{k: meta[k] for k in ("episode_seed", "filled", "cursor", "update", "history")},
    }
    _replay(state, teacher, meta["episodes"], tensors["actions"], folder)
    return state


def _replay(state: dict, teacher: Model, episodes: list, actions: list, folder: Path) -> None:
    """Each env rebuilt in its episode: reset with the episode's seed, then its actions; one whose
    replay does not give the saved observation (or whose start is unknown) starts a new episode."""
    env = teacher.info["env"]
    state["envs"], state["episodes"], fresh = [], [], []
    for i, start in enumerate(episodes):
        e = make_env(env["name"], **(env.get("settings") or {}))
        state["envs"].append(e)
        if start is not None:
            obs, _ = e.reset(seed=start["seed"])
            for a in actions[i].tolist():
                obs, *_ = e.step(a)
            if np.array_equal(np.asarray(obs), state["obs"][i]):
                state["episodes"].append({"seed": start["seed"], "actions": actions[i].tolist()})
                continue
        obs, _ = e.reset(seed=state["episode_seed"])
        state["episodes"].append({"seed": state["episode_seed"], "actions": []})
        state["episode_seed"] += 1
        state["obs"][i] = np.asarray(obs)
        fresh.append(i)
    if fresh:
        print(
            f"resuming {folder}: env(s) {fresh} start new episodes (theirs could not be rebuilt from "
            "their seed and actions)",
            file=sys.stderr,
        )


def _resume_pickle(path: Path, device: torch.device) -> dict:
    """The old format (a gzip'd cloudpickle): only with ``trust_pickle``; the envs' episodes are
    unknown until they end (a resume from the next checkpoint starts them anew)."""
    import gzip
    import pickle

    blob = pickle.loads(gzip.decompress(path.read_bytes()))
    blob["policy"] = blob["policy"].to(device)
    optimiser = torch.optim.Adam(blob["policy"].parameters())
    optimiser.load_state_dict(blob["optimiser"])
    rng = np.random.default_rng()
    rng.bit_generator.state = blob["rng"]
    gen = torch.Generator(device="cpu")
    gen.set_state(blob["torch_gen"])
    episodes = blob.get("episodes") or [None] * len(blob["envs"])
    return {**blob, "optimiser": optimiser, "rng": rng, "torch_gen": gen, "episodes": episodes}
