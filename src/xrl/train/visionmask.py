"""VisionMask (Zuo, Khan, Wang, Katz & Qiu 2025, "Why the Agent Made that Decision: Contrastive
Explanation Learning for Reinforcement Learning", arXiv:2411.16120) and the Stalder et al. 2022
Explainer: train a mask network f_theta (``xrl.agents.mask_nets``) that gives, in one forward pass, one mask
per action of a frozen agent.

Reads top to bottom:

1. The expert dataset: a StateDataset of the agent's own rollouts (``xrl.data.collect``; made
   here when absent), split 80/10/10 by a seeded permutation of its rows (:func:`split_indices`).
   Targets are the agent's argmax actions on the states (what the explainers explain by
   default) or the stored actions (``targets="action"``).
2. The losses, on masked states ``s_i = s*m_i + r*(1-m_i)`` and ``s~_i = s*(1-m_i) + r*m_i``
   (Eq. 1, :func:`xrl.agents.mask_nets.overlay`), with ``z[b, i, j]`` the agent's logit of action
   j on ``s_i`` (and ``z~`` on ``s~_i``):

   * :func:`action_contrastive_loss` (Eq. 2-3): ``L_pos = -1/K log softmax_j(z[a, j])[a]`` — the
     target action over the K actions of the state kept by the target's own mask — and
     ``L_neg = -1/K log softmax_i(z[i, a])[a]`` — the target's logit over the K masked states,
     so the target's mask must beat every other action's mask at raising the target;
     ``L_a = L_pos + L_neg``;
   * :func:`negative_entropy_loss` (Eq. 4): ``1/K^2 sum_ij p~_ij log p~_ij``, ``p~_i =
     softmax(z~_i)``: what the masks leave out should tell the agent nothing;
   * :func:`area_loss` (Eq. 5): ``1/K sum_k |mean(m_k) - a_max|`` (or, ``area="min_max"``,
     Stalder et al.'s min-max area loss on every mask: the ablation of Table 2a);
   * :func:`total_variation` (optional, ``lambda_tv``, off by default as in the paper's
     default configuration, Table 2e).

   ``L = L_a + lambda_ne L_ne + lambda_area L_area + lambda_tv L_tv``, each averaged over the
   batch. The Stalder Explainer (:func:`stalder_losses`) uses the target's mask only: the
   agent's cross entropy on ``s_a`` (:func:`classification_loss`), the negative entropy on
   ``s~_a`` (:func:`entropy_loss`), the min-max area loss (:func:`min_max_area_loss`), plus
   the mean of the other actions' masks (so they are trained towards empty, as the Explainer's
   non-target class masks) and total variation.
3. :func:`train_visionmask` / :func:`train_stalder` — Adam (VisionMask: ``weight_decay=0.01``,
   the authors' code; Stalder: none) over epochs of shuffled training
   states; a progress bar with each loss term; validation loss terms and ``accuracy``
   (``xrl.metrics``) each epoch; the network with the lowest validation loss is exported (``.pt``
   + card) whenever it improves; ``checkpoint.pt`` after every epoch; the same call resumes to
   the same result; a non-finite loss stops with the last good checkpoint kept.

``device`` (``auto``: CUDA when available) holds the agent, the mask network and each batch; the
network is initialised on the CPU (the same weights on every device), the shuffling is drawn on
the CPU, checkpoints are saved on the CPU, and a run resumes on any device (the device is not
part of the run's settings check).
"""

from __future__ import annotations

import dataclasses
import json
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from xrl.agents.load import load_agent
from xrl.agents.mask_nets import REFERENCES, MaskNetwork, agent_of, overlay, save_mask_network
from xrl.agents.model import Model
from xrl.data.collect import collect
from xrl.data.dataset import StateDataset
from xrl.files import write_json
from xrl.metrics import get_metric
from xrl.ops import reference_image, resolve_device
from xrl.train.acer import to_device
from xrl.train.run import Run, check_settings, command, load_tensors

# ------------------------------------------------------------------ 1. the expert dataset


def split_indices(n: int, seed: int) -> dict[str, np.ndarray]:
    """Rows of the 80/10/10 ``train``/``val``/``test`` split of ``n`` rows (a permutation drawn
    from ``seed``; each part sorted). Every part has at least one row when ``n >= 3``."""
    if n < 3:
        raise ValueError(f"the expert dataset needs at least 3 states for an 80/10/10 split, got {n}")
    perm = np.random.default_rng(seed).permutation(n)
    n_val = n_test = max(1, int(round(0.1 * n)))
    n_train = n - n_val - n_test
    return {
        "train": np.sort(perm[:n_train]),
        "val": np.sort(perm[n_train : n_train + n_val]),
        "test": np.sort(perm[n_train + n_val :]),
    }


# ------------------------------------------------------------------ 2. the losses


def action_contrastive_loss(z: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Eq. 2-3 on ``z (B, K, K)`` (``z[b, i, j]``: logit of action j on the state kept by mask i)
    and target actions ``(B,)``: ``(L_pos, L_neg)``, each averaged over the batch."""
    b, k = z.shape[0], z.shape[1]
    rows = torch.arange(b, device=z.device)
    pos = -z[rows, targets].log_softmax(-1)[rows, targets] / k  # over actions j, mask a
    neg = -z[rows, :, targets].log_softmax(-1)[rows, targets] / k  # over masks i, action a
    return pos.mean(), neg.mean()


def negative_entropy_loss(z_removed: torch.Tensor) -> torch.Tensor:
    """Eq. 4 on ``z~ (B, K, K)``: ``1/K^2 sum_ij p~_ij log p~_ij`` (``p~_i = softmax(z~_i)``),
    averaged over the batch; ``-log K / K`` when every ``p~_i`` is uniform (its minimum)."""
    k = z_removed.shape[1]
    log_p = z_removed.log_softmax(-1)
    return (log_p.exp() * log_p).sum((1, 2)).mean() / k**2


def area_loss(masks: torch.Tensor, a_max: float) -> torch.Tensor:
    """Eq. 5 on ``masks (B, K, H, W)``: ``1/K sum_k |mean_pixels(m_k) - a_max|``, batch mean."""
    return (masks.mean((2, 3)) - a_max).abs().mean()


def total_variation(masks: torch.Tensor) -> torch.Tensor:
    """Anisotropic total variation of ``masks (B, K, H, W)``: mean absolute difference between
    vertical neighbours plus that between horizontal neighbours, averaged over maps."""
    dh = (masks[..., 1:, :] - masks[..., :-1, :]).abs().mean((-2, -1))
    dw = (masks[..., :, 1:] - masks[..., :, :-1]).abs().mean((-2, -1))
    return (dh + dw).mean()


def classification_loss(z_kept: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Stalder et al.: cross entropy of the target on the agent's logits ``(B, K)`` for ``s_a``."""
    return F.cross_entropy(z_kept, targets)


def entropy_loss(z_removed: torch.Tensor) -> torch.Tensor:
    """Stalder et al.: negative entropy ``sum_j p_j log p_j`` of the agent on ``s~_a`` ``(B, K)``,
    batch mean (minimised: the inverted mask should leave a uniform answer)."""
    log_p = z_removed.log_softmax(-1)
    return (log_p.exp() * log_p).sum(-1).mean()


def min_max_area_loss(mask: torch.Tensor, min_area: float, max_area: float) -> torch.Tensor:
    """Stalder et al.'s area loss on ``mask (B, H, W)``: with ``v`` the n mask values sorted
    largest first, the first ``floor(n * min_area)`` should be 1 and all after the first
    ``floor(n * max_area)`` should be 0: ``mean(relu(1[rank < n a] - v)) + mean(relu(v -
    1[rank < n b]))``, batch mean."""
    v = mask.flatten(1).sort(-1, descending=True).values  # (B, n)
    rank = torch.arange(v.shape[1], device=v.device)
    at_least = (rank < int(v.shape[1] * min_area)).to(v)
    at_most = (rank < int(v.shape[1] * max_area)).to(v)
    return (F.relu(at_least - v).mean(-1) + F.relu(v - at_most).mean(-1)).mean()


def masked_scores(
    model: Model, states: torch.Tensor, masks: torch.Tensor, reference: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """The agent's scores on every kept and removed state: ``z, z~ (B, K', K)`` for masks
    ``(B, K', H, W)``."""
    kept, removed = overlay(states, masks, reference)  # (B, K', C, H, W) each
    b, n = masks.shape[:2]
    z = model(kept.flatten(0, 1)).view(b, n, -1)
    z_removed = model(removed.flatten(0, 1)).view(b, n, -1)
    return z, z_removed


def visionmask_losses(
    model: Model, network: MaskNetwork, states: torch.Tensor, targets: torch.Tensor, args: VisionMaskArgs
) -> dict[str, torch.Tensor]:
    """Every term of the VisionMask loss and their weighted sum ``"loss"`` (scalars)."""
    masks = network.masks(states)  # (B, K, H, W)
    z, z_removed = masked_scores(model, states, masks, network.reference_for(states))
    pos, neg = action_contrastive_loss(z, targets)
    if args.area == "l1":
        area = area_loss(masks, args.a_max)
    else:  # Table 2a: Stalder et al.'s min-max area loss on each of the K masks instead
        area = min_max_area_loss(masks.flatten(0, 1), args.min_area, args.max_area)
    terms = {"pos": pos, "neg": neg, "ne": negative_entropy_loss(z_removed), "area": area}
    if args.lambda_tv:
        terms["tv"] = total_variation(masks)
    terms["loss"] = (
        pos
        + neg
        + args.lambda_ne * terms["ne"]
        + args.lambda_area * terms["area"]
        + args.lambda_tv * terms.get("tv", 0.0)
    )
    return terms


def stalder_losses(
    model: Model, network: MaskNetwork, states: torch.Tensor, targets: torch.Tensor, args: StalderArgs
) -> dict[str, torch.Tensor]:
    """Every term of the Stalder Explainer loss and their weighted sum ``"loss"`` (scalars)."""
    masks = network.masks(states)  # (B, K, H, W)
    rows = torch.arange(len(states), device=states.device)
    target_mask = masks[rows, targets]  # (B, H, W)
    z, z_removed = masked_scores(model, states, target_mask[:, None], network.reference_for(states))
    others = torch.ones_like(masks[:, :, 0, 0]).scatter_(1, targets[:, None], 0.0)  # (B, K)
    terms = {
        "cls": classification_loss(z[:, 0], targets),
        "ent": entropy_loss(z_removed[:, 0]),
        "area": min_max_area_loss(target_mask, args.min_area, args.max_area),
        "others": (masks.mean((2, 3)) * others).sum(1).div(others.sum(1).clamp_min(1)).mean(),
    }
    if args.lambda_tv:
        terms["tv"] = total_variation(target_mask[:, None])
    terms["loss"] = (
        terms["cls"]
        + args.lambda_ent * terms["ent"]
        + args.lambda_area * terms["area"]
        + args.lambda_others * terms["others"]
        + args.lambda_tv * terms.get("tv", 0.0)
    )
    return terms


# ------------------------------------------------------------------ 3. training


@dataclass
class _MaskTrainingArgs:
    """Fields shared by the VisionMask and Stalder Explainer trainings."""

    agent: str
    """the agent to explain: zoo name, xrl .pt or SB3 .zip"""
    data: str
    """the expert StateDataset of the agent's rollouts (collected here when absent)"""
    out: str = "runs/masks"
    """run folder"""
    arch: str = "small"
    """mask network: small, unet, fcn or deeplabv3 (the papers')"""
    reference: str = "background"
    """reference value r: background (per-pixel median of the training states), black, mean or blur"""
    epochs: int = 20
    """passes over the training split"""
    batch_size: int = 32
    """states per step"""
    learning_rate: float = 1e-3
    """Adam step size"""
    weight_decay: float = 0.0
    """Adam's L2 weight decay (torch.optim.Adam(weight_decay=...))"""
    targets: str = "argmax"
    """what each state's mask explains: argmax (the agent's action on the state) or action (the stored one)"""
    episodes: int = 50
    """episodes collected when the dataset is absent"""
    max_steps: int | None = None
    """cap on the states stored per collected episode"""
    sample: bool = True
    """collect with actions sampled from the agent's policy (the paper's a ~ pi_E(s))"""
    seed: int = 0
    """seed of the collection, the split, the initialisation and the shuffling"""
    progress: bool = True
    lambda_area: float = 1.0
    """weight of the area loss (VisionMask: the one --area names; Stalder Explainer: min-max)"""
    min_area: float = 0.05
    """min-max area loss (Stalder's, on the target's mask; VisionMask's --area min_max, on every mask): a mask should cover at least this fraction"""
    max_area: float = 0.3
    """min-max area loss: and at most this fraction"""
    lambda_tv: float = 0.0
    """weight of the total variation of the masks (0: off, the VisionMask paper's default)"""
    device: str = "auto"
    """auto|cpu|cuda|cuda:N; auto = CUDA when available"""

    LIMITS: ClassVar[dict] = {
        "epochs": ">=1",
        "batch_size": ">=1",
        "learning_rate": ">0",
        "weight_decay": ">=0",
        "episodes": ">=1",
        "max_steps": ">=1",
        "seed": ">=0",
        "a_max": "0..1",
        "min_area": "0..1",
        "max_area": "0..1",
        "lambda_ne": ">=0",
        "lambda_area": ">=0",
        "lambda_tv": ">=0",
        "lambda_ent": ">=0",
        "lambda_others": ">=0",
    }


@dataclass
class VisionMaskArgs(_MaskTrainingArgs):
    out: str = "runs/visionmask"
    """run folder: checkpoint.pt, history.json, args.json, then visionmask.pt and visionmask.json"""
    lambda_ne: float = 1.0
    """weight of the negative entropy on complement-masked states (Eq. 4)"""
    a_max: float = 0.1
    """target mask area of the L1 area loss (the paper's default, Table 2c)"""
    area: str = "l1"
    """area loss: l1 (Eq. 5) or min_max (Stalder et al.'s, on every mask: the ablation of Table 2a)"""
    weight_decay: float = 0.01
    """Adam's L2 weight decay: 0.01, the authors' (github.com/0pow0/VisionMask models/vm.py,
    Adam(lr, weight_decay=0.01)); the zoo networks were trained before this setting, with 0"""


@dataclass
class StalderArgs(_MaskTrainingArgs):
    out: str = "runs/stalder-explainer"
    """run folder: checkpoint.pt, history.json, args.json, then stalder_explainer.pt and .json"""
    lambda_ent: float = 1.0
    """weight of the negative entropy on the inverted-mask state"""
    lambda_others: float = 0.3
    """weight of the mean of the other actions' masks (pushed towards empty)"""
    lambda_tv: float = 1.0
    """weight of the total variation of the target's mask"""


def train_visionmask(args: VisionMaskArgs, *, stop_at: int | None = None) -> Path:
    """Train (or resume) a VisionMask network; returns ``out/visionmask.pt`` (the best one).
    ``stop_at`` stops after the checkpoint of that epoch (to test resuming)."""
    return _train(args, "visionmask", visionmask_losses, stop_at)


def train_stalder(args: StalderArgs, *, stop_at: int | None = None) -> Path:
    """Train (or resume) a Stalder Explainer network; returns ``out/stalder_explainer.pt``."""
    return _train(args, "stalder_explainer", stalder_losses, stop_at)


def _train(args, method: str, losses: Callable, stop_at: int | None) -> Path:
    check_settings(args)
    _check_args(args)
    device = resolve_device(args.device)  # a bad or absent device is refused before anything is loaded
    with torch.random.fork_rng(devices=[]):  # building the SB3 policy draws from the global RNG
        model = load_agent(args.agent, device=device)
    raw, targets, split = _expert_data(args, model)
    with Run(
        args.out, {"method": method, **dataclasses.asdict(args)}, ignore=_IGNORED, outputs=(f"{method}.pt",)
    ) as run:
        return _fit(args, method, losses, stop_at, run, model, raw, targets, split)


def _fit(
    args,
    method: str,
    losses: Callable,
    stop_at: int | None,
    run_: Run,
    model: Model,
    raw: np.ndarray,
    targets: torch.Tensor,
    split: dict,
) -> Path:
    run = run_.folder
    device = next(model.parameters()).device
    for p in model.parameters():  # the agent is frozen: gradients flow to the masks only
        p.requires_grad_(False)
    model.eval()

    start = _resume(run_, model, args)
    if start is None:
        network = MaskNetwork.for_model(
            model,
            args.arch,
            seed=args.seed,
            reference=args.reference,
            reference_image=reference_image(raw[split["train"]], args.reference, model.obs_scale),
            method=method,
        )
        start = {"network": network, "epoch": 0, "history": {"epochs": []}, "best": None, "optimiser": None}
    network = start["network"].to(device)  # built on the CPU: the same initial weights on every device
    optimiser = torch.optim.Adam(network.parameters(), lr=args.learning_rate, weight_decay=args.weight_decay)
    if start["optimiser"] is not None:
        optimiser.load_state_dict(start["optimiser"])
    history, best, last_good = start["history"], start["best"], start["epoch"]

    def states_of(rows: torch.Tensor) -> torch.Tensor:
        return torch.from_numpy(raw[rows.numpy()]).to(device).float() / model.obs_scale

    train_rows = torch.as_tensor(split["train"])
    steps_per_epoch = math.ceil(len(train_rows) / args.batch_size)  # batches of near-equal size (no batch of 1
    # state at the end, which batch norm in training mode refuses)
    bar = tqdm(
        total=args.epochs * steps_per_epoch,
        initial=last_good * steps_per_epoch,
        unit="step",
        desc=f"{method} ({len(train_rows)} states)",
        disable=not args.progress,
    )
    started = time.time()
    for epoch in range(start["epoch"], args.epochs):
        try:
            sums = _train_epoch(
                args, epoch, train_rows, steps_per_epoch, lambda rows: (states_of(rows), targets[rows].to(device)),
                model, network, optimiser, losses, bar,
            )  # fmt: skip
        except _NotFinite as err:
            bar.close()
            raise _stopped(method, err.values, f"epoch {epoch + 1} step {err.step}", last_good, run) from None
        val = _validate(model, network, split["val"], raw, targets, args, losses)
        if not all(math.isfinite(v) for v in val.values()):
            bar.close()
            raise _stopped(method, val, f"the validation of epoch {epoch + 1}", last_good, run)
        record = {"epoch": epoch + 1, "train": {k: v / steps_per_epoch for k, v in sums.items()}, "val": val}
        history["epochs"].append(record)
        bar.write(f"epoch {epoch + 1}: val loss {val['loss']:.4f}, accuracy {val['accuracy']:.3f}")
        if best is None or val["loss"] < best["val"]["loss"]:
            best = record
            save_mask_network(network, run / f"{method}.pt", card=_card(args, method, model, split, best, history))
        _save(run_, network, optimiser, epoch + 1, history, best)
        last_good = epoch + 1
        if run_.checkpointed(history, epoch + 1, stop_at):
            break
    bar.close()
    run_.write_history(history, started=started)
    path = run / f"{method}.pt"
    card = _card(args, method, model, split, best, history)
    write_json(path.with_suffix(".json"), {**json.loads(path.with_suffix(".json").read_text()), **card})
    return path


class _NotFinite(Exception):
    """A training step's loss terms that are not finite (``values``, at 1-based ``step``)."""

    def __init__(self, values: dict, step: int) -> None:
        super().__init__(values, step)
        self.values, self.step = values, step


def _train_epoch(
    args, epoch: int, train_rows, steps_per_epoch: int, batch_of: Callable, model, network, optimiser, losses, bar
) -> dict[str, float]:
    """One epoch of updates in the epoch's seeded order; the sums of the loss terms. Raises
    :class:`_NotFinite` at the first step whose terms are not finite."""
    device = next(network.parameters()).device
    epoch_seed = args.seed * 100_003 + epoch
    shuffle = torch.Generator(device="cpu").manual_seed(epoch_seed)
    order = train_rows[torch.randperm(len(train_rows), generator=shuffle, device="cpu")]
    network.train()
    sums: dict[str, float] = {}
    # dropout (fcn, deeplabv3) seeded per epoch: resumable, and the caller's global RNG is left as it was
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(epoch_seed)
        for step, rows in enumerate(torch.tensor_split(order, steps_per_epoch)):
            terms = losses(model, network, *batch_of(rows), args)
            values = {k: v.item() for k, v in terms.items()}
            if not all(math.isfinite(v) for v in values.values()):
                raise _NotFinite(values, step + 1)
            optimiser.zero_grad(set_to_none=True)
            terms["loss"].backward()
            optimiser.step()
            for k, v in values.items():
                sums[k] = sums.get(k, 0.0) + v
            bar.update(1)
            bar.set_postfix({k: f"{v / (step + 1):.4f}" for k, v in sums.items()})
    return sums


def _stopped(method: str, values: dict, where: str, last_good: int, run: Path) -> FloatingPointError:
    return FloatingPointError(
        f"{method} loss became {values} at {where}; stopped. The last good checkpoint "
        f"(epoch {last_good}) is kept in {run}; lower learning_rate or check the dataset"
    )


@torch.no_grad()
def _validate(
    model: Model, network: MaskNetwork, rows: np.ndarray, raw: np.ndarray, targets: torch.Tensor, args, losses: Callable
) -> dict[str, float]:
    """Mean loss terms and the ``accuracy`` metric of the targets' masks on the validation rows."""
    device = next(network.parameters()).device
    network.eval()
    accuracy = get_metric("accuracy", normalize="none", **substrate_settings(network))
    sums: dict = {}
    n = 0
    for start in range(0, len(rows), args.batch_size):
        chunk = torch.as_tensor(rows[start : start + args.batch_size], device="cpu")
        x = torch.from_numpy(raw[chunk.numpy()]).to(device).float() / model.obs_scale
        t = targets[chunk].to(device)
        terms = {k: v.item() * len(chunk) for k, v in losses(model, network, x, t, args).items()}
        maps = network.masks(x)[torch.arange(len(x), device=device), t]  # (b, H, W)
        terms["accuracy"] = accuracy(model=model, states=x, saliency=maps, targets=t).sum().item()  # type: ignore[union-attr]
        for k, v in terms.items():
            sums[k] = sums.get(k, 0.0) + v
        n += len(chunk)
    return {k: v / n for k, v in sums.items()}


def substrate_settings(network: MaskNetwork) -> dict:
    """Metric settings (``accuracy``, ``deletion``, ``insertion``) whose substrate is the
    network's reference value: ``get_metric("accuracy", normalize="none", **substrate_settings(net))``."""
    if network.reference in ("background", "mean"):
        return {"substrate": "background", "background": network.reference_image}
    if network.reference == "blur":
        from xrl.agents.mask_nets import BLUR_KERNEL, BLUR_SIGMA

        return {"substrate": "blur", "blur_sigma": BLUR_SIGMA, "blur_kernel": BLUR_KERNEL}
    return {"substrate": "black"}


def _check_args(args) -> None:
    if args.reference not in REFERENCES:
        raise ValueError(f"reference must be one of {REFERENCES}, got {args.reference!r}")
    if args.targets not in ("argmax", "action"):
        raise ValueError(f"targets must be 'argmax' or 'action', got {args.targets!r}")
    for name in ("epochs", "batch_size", "episodes"):
        value = getattr(args, name)
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be a positive integer, got {value!r}")
    if not args.learning_rate > 0:
        raise ValueError(f"learning_rate must be positive, got {args.learning_rate!r}")
    if not args.weight_decay >= 0:
        raise ValueError(f"weight_decay must be >= 0, got {args.weight_decay!r}")
    if hasattr(args, "a_max") and not 0 <= args.a_max <= 1:
        raise ValueError(f"a_max must be in [0, 1], got {args.a_max!r}")
    if getattr(args, "area", "l1") not in ("l1", "min_max"):
        raise ValueError(f"area must be 'l1' or 'min_max', got {args.area!r}")
    if not 0 <= args.min_area <= args.max_area <= 1:
        raise ValueError(f"need 0 <= min_area <= max_area <= 1, got {args.min_area!r}, {args.max_area!r}")


def _expert_data(args, model: Model) -> tuple[np.ndarray, torch.Tensor, dict[str, np.ndarray]]:
    """Raw uint8 states ``(N, C, H, W)``, targets ``(N,)`` and the split, from ``args.data``
    (collected with the agent when absent). A dataset of another env, other env settings or
    another agent is refused. The targets are on the CPU (the agent's answers computed on its
    device)."""
    data = Path(args.data)
    if not data.exists():
        collect(
            model,
            episodes=args.episodes,
            out=data,
            seed=args.seed,
            sample=args.sample,
            max_steps=args.max_steps,
            progress=args.progress,
        )
    with StateDataset.open(data) as ds:
        if ds.env != model.info.get("env"):
            raise ValueError(
                f"the expert dataset {data} was collected on {ds.env}, the agent acts on "
                f"{model.info.get('env')}: collect it with this agent (or choose another data)"
            )
        if ds.agent.get("fingerprint") != model.fingerprint():
            raise ValueError(
                f"the expert dataset {data} was collected by another agent ({ds.agent.get('source')}); "
                "VisionMask learns from the explained agent's own rollouts: collect them with it"
            )
        raw = ds.raw_states()
        actions = torch.as_tensor(ds.actions, dtype=torch.long, device="cpu")
    if tuple(raw.shape[1:]) != tuple(model.input_shape):
        raise ValueError(f"the dataset's states are {tuple(raw.shape[1:])}, the agent takes {tuple(model.input_shape)}")
    if args.targets == "action":
        targets = actions
    else:
        device = next(model.parameters()).device
        with torch.no_grad():
            targets = torch.cat(
                [
                    model(torch.from_numpy(raw[i : i + 256]).to(device).float() / model.obs_scale).argmax(-1).cpu()
                    for i in range(0, len(raw), 256)
                ]
            )
    return raw, targets, split_indices(len(raw), args.seed)


_IGNORED = {"epochs", "progress", "out", "device"}  # may change between a run and its resumption


def _save(
    run: Run, network: MaskNetwork, optimiser: torch.optim.Optimizer, epoch: int, history: dict, best: dict | None
) -> None:
    """Everything needed to continue exactly (the shuffling and dropout are seeded per epoch), on
    the CPU: it loads on any device."""
    blob = {
        "epoch": epoch,
        "network": to_device(network.state_dict(), "cpu"),
        "optimiser": to_device(optimiser.state_dict(), "cpu"),
        "agent": network.agent,
        "arch": network.arch,
        "reference": network.reference,
        "history": json.dumps(history),
        "best": json.dumps(best),
    }
    run.save(epoch, lambda folder: torch.save(blob, folder / "state.pt"))


def _resume(run: Run, model: Model, args) -> dict | None:
    latest = run.latest()
    path = latest / "state.pt" if latest is not None else run.folder / "checkpoint.pt"  # checkpoint.pt: older runs
    if not path.exists():
        return None
    blob = load_tensors(path)
    if blob["agent"]["fingerprint"] != agent_of(model)["fingerprint"]:
        raise ValueError(
            f"{path} holds a network trained for another agent ({blob['agent']['source']}); use another out"
        )
    state = blob["network"]
    network = MaskNetwork(
        blob["arch"],
        model.input_shape,
        model.n_actions,
        reference=blob["reference"],
        reference_image=state["reference_image"],
        agent=blob["agent"],
        method=json.loads((run.folder / "args.json").read_text())["method"],
    )
    network.load_state_dict(state)
    return {
        "network": network,
        "epoch": blob["epoch"],
        "optimiser": blob["optimiser"],
        "history": json.loads(blob["history"]),
        "best": json.loads(blob["best"]),
    }


def _card(args, method: str, model: Model, split: dict, best: dict | None, history: dict) -> dict:
    what = {
        "visionmask": "VisionMask network (Zuo et al. 2025)",
        "stalder_explainer": "Stalder et al. 2022 Explainer network",
    }[method]
    return {
        "what": f"{what} for {args.agent}",
        "method": method,
        "agent": agent_of(model),
        "env": model.info.get("env"),
        "settings": {k: v for k, v in dataclasses.asdict(args).items() if k != "progress"},
        "command": command(f"xrl train {method.replace('_', '-')}", args, always=("agent", "data", "out")),
        "split": {
            "seed": args.seed,
            **{k: int(len(v)) for k, v in split.items()},
            "rule": "xrl.train.visionmask.split_indices(len(dataset), seed)",
        },
        "scores": {"best_epoch": best["epoch"] if best else None, "val": best["val"] if best else None},
        "epochs_done": len(history["epochs"]),
    }
