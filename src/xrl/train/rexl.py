"""Train a RExL agent (Agarwal et al. 2021, "Reinforcement Explanation Learning", arXiv:2111.13406,
sections 3-4): ``xrl train rexl``.

Reads top to bottom:

1. What is explained (:func:`load_explained`): an xrl image classifier (``xrl train classifier``)
   or an RL agent (zoo name, xrl ``.pt``, SB3 ``.zip``; its actions are the classes).
2. The images (:func:`training_images`): the generated shapes training split (``data="shapes"``),
   its multi-label variant (``"multishapes"``), an image folder, or a StateDataset (``.h5``) of an
   agent's states, and the (image, class) pairs episodes explain: each image's label
   (``targets="label"``) or the model's argmax (``"argmax"``, the only choice for agents' states).
   Multi-label data (multi-hot labels; or ``--score sigmoid`` with ``argmax`` targets: the classes
   whose sigmoid exceeds 0.5) gives one pair per *present* class, scored by the class's own
   sigmoid probability (``score="auto"`` picks it; :mod:`xrl.agents.masking`). The mode picks the
   pairs: ``ds`` (dataset-specific, every pair, the class as a one-hot input), ``cs``
   (class-specific, pairs of ``target_class``), ``is`` (image-specific, image ``image``; its
   ``target_class`` pair when given, else its first).
3. The environment (:class:`MaskingVecEnv`): ``n_envs`` masking episodes
   (``xrl.agents.masking.MaskingBatch``) on rows drawn with replacement; observations are the
   frozen extractor's features, so the replay buffer holds features, not images.
4. ACER (``xrl.train.acer``, ``algo="acer"``) or SB3 PPO/A2C/DQN on the Gymnasium face of the
   MDP (``algo="ppo"`` ...; the same extractor and 256-128 MLP, copied into the RExL agent at the
   end). A progress bar shows the mean return (minus the mean probability along an episode,
   times K^2); ``checkpoint.pt`` every ``checkpoint_every`` updates; the same command resumes to
   the same result (ACER); the agent is exported as ``rexl.pt`` + card.

``device`` (``auto``: CUDA when available) holds the explained model, the agent, the images and
the episodes (SB3: its own ``device=``); the noise and the episodes' rows are drawn on the CPU
and moved, checkpoints are saved on the CPU, and a run resumes on any device (the device is not
part of the run's settings check).
"""

from __future__ import annotations

import dataclasses
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import numpy as np
import torch
from tqdm.auto import tqdm

from xrl._version import __version__
from xrl.agents.masking import SCORES, MaskingBatch, check_grid
from xrl.agents.model import Model
from xrl.agents.rexl import RExLAgent, build_extractor, save_rexl_agent, shared_trunk
from xrl.files import write_json
from xrl.ops import resolve_device
from xrl.train.acer import Acer, AcerSettings, settings_of, to_device
from xrl.train.run import Run, check_settings, command, link, load_tensors, zip_tensors

SB3_ALGOS = ("ppo", "a2c", "dqn")


@dataclass(kw_only=True)
class RExLArgs(AcerSettings):
    model: str
    """the explained model: an xrl classifier .pt (xrl train classifier), a zoo agent, an xrl .pt or an SB3 .zip"""
    data: str = "shapes"
    """images: shapes (the generated training split), multishapes (its multi-label variant), an image folder, a StateDataset .h5, or episodes (agents: the agent's own state visitation, see --episodes)"""
    out: str = "runs/rexl"
    """run folder: checkpoint.pt, history.json, args.json, then rexl.pt and rexl.json"""
    mode: str = "ds"
    """ds (dataset-specific: every class, one-hot input), cs (class-specific: --target-class) or is (image-specific: --image)"""
    target_class: int = -1
    """cs only: the class (or action) the agent explains"""
    image: int = 0
    """is only: the row of the image the agent explains"""
    targets: str = "label"
    """the class explained for each image: label (classifiers) or argmax (the model's own answer; agents)"""
    score: str = "auto"
    """the probability rewarded: softmax, sigmoid (each class's own: multi-label models), auto (sigmoid for multi-hot labels)"""
    grid: int = 7
    """cells per side (K); the image side must be divisible by it"""
    noise: str = "uniform"
    """what masked cells show: uniform (in [0, 1]) or gaussian (the images' per-channel mean and std)"""
    extractor: str = "trunk"
    """frozen feature extractor: trunk (the explained network's own) or a torchvision architecture (weights=None)"""
    extractor_seed: int = 0
    """initialisation seed of a torchvision extractor"""
    ent_coef: float = 0.0002
    """entropy weight: stable-baselines' 0.01 times the reward scale 1/49, so it weighs as with unscaled rewards"""
    reward_scale: float = 0.0
    """rewards are -p_c times this; 0 = 1/grid**2, so a return is minus the deletion AUC over cells (see docs/rexl.md)"""
    algo: str = "acer"
    """acer (xrl's, as the paper) or ppo, a2c, dqn (SB3, on the Gymnasium env)"""
    total_steps: int = 200_000
    """environment steps"""
    n_envs: int = 10
    """episodes stepped together (n_envs x n_steps env steps per update)"""
    n_images: int = 4000
    """shapes: training images drawn; other data: at most this many rows"""
    checkpoint_every: int = 20
    """updates between checkpoints"""
    seed: int = 0
    """seed of the data, the episodes, the initialisation and the sampling"""
    episodes: int = 1000
    """data=episodes: greedy and as many sampled episodes of the agent, collected into OUT/episodes-*.h5"""
    episode_seed: int = 100_000
    """data=episodes: episode i is reset with episode_seed + i (keep test seeds outside [episode_seed, episode_seed + episodes))"""
    snapshot_every: int = 0
    """ACER: updates between agents exported to OUT/snapshots/ (a learning curve); 0 = none"""
    device: str = "auto"
    """auto|cpu|cuda|cuda:N; auto = CUDA when available"""
    progress: bool = True

    LIMITS: ClassVar[dict] = {
        "total_steps": ">=1",
        "n_envs": ">=1",
        "n_steps": ">=1",
        "checkpoint_every": ">=1",
        "n_images": ">=1",
        "grid": ">=1",
        "image": ">=0",
        "seed": ">=0",
        "extractor_seed": ">=0",
        "learning_rate": ">0",
        "gamma": "0..1",
        "buffer_size": ">=1",
        "ent_coef": ">=0",
        "reward_scale": ">=0",
        "replay_ratio": ">=0",
        "replay_start": ">=0",
        "correction": ">0",
        "delta": ">0",
        "avg_decay": "0..1",
        "rms_alpha": "0..1",
        "rms_eps": ">0",
        "max_grad_norm": ">0",
        "q_coef": ">=0",
        "episodes": ">=1",
        "episode_seed": ">=0",
        "snapshot_every": ">=0",
    }


# ------------------------------------------------------------------ 1-2. model and images


def load_explained(spec: str, device: str | torch.device = "cpu") -> Model:
    """An xrl classifier file, or anything :func:`xrl.load_agent` takes (which dispatches by the
    file's format marker, :mod:`xrl.artifacts`), on ``device``."""
    from xrl.agents.load import load_agent

    return load_agent(spec, device=device)


def training_images(args: RExLArgs, model: Model) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, str]:
    """``(images (N, C, H, W), targets (P,), image_of (P,), score)``: float states, the (image,
    class) pairs episodes explain — pair ``p`` explains class ``targets[p]`` of image
    ``image_of[p]`` — and the resolved score. Single-label data: one pair per image
    (``image_of = arange(N)``); multi-label data: one per present class. All on the CPU (the
    model's answers are computed on its device)."""
    labels = None
    if args.data == "shapes":
        from xrl.data import shapes

        data = shapes.split("train", args.n_images, size=model.input_shape[-1], seed=args.seed)
        images, labels = torch.from_numpy(data.images).float() / 255, torch.from_numpy(data.labels)
    elif args.data == "multishapes":
        from xrl.data import shapes

        data = shapes.make_multi_shapes(args.n_images, size=model.input_shape[-1], seed=args.seed)  # type: ignore[assignment]
        images, labels = torch.from_numpy(data.images).float() / 255, torch.from_numpy(data.labels)
    elif args.data == "episodes":
        images = agent_states(args, model)
    elif args.data.endswith(".h5"):
        from xrl.data.dataset import StateDataset

        with StateDataset.open(args.data) as ds:
            images = ds.states(np.arange(min(len(ds), args.n_images)))
    else:
        from xrl.train.classifier import load_image_folder

        raw, label_array, _ = load_image_folder(args.data, size=model.input_shape[-1])
        images, labels = (
            torch.from_numpy(raw[: args.n_images]).float() / 255,
            torch.from_numpy(label_array[: args.n_images]),
        )
    model.check_states(images)
    multi_label = labels is not None and labels.dim() == 2
    score = args.score if args.score != "auto" else ("sigmoid" if multi_label else "softmax")
    if args.targets == "label":
        if labels is None:
            raise ValueError(f"{args.data} holds agent states without labels: use --targets argmax")
        present = labels.bool() if multi_label else None
    else:
        device = next(model.parameters()).device
        with torch.no_grad():
            logits = torch.cat([model(images[i : i + 256].to(device)).cpu() for i in range(0, len(images), 256)])
        present = torch.sigmoid(logits) > 0.5 if score == "sigmoid" else None
        labels = logits.argmax(-1)
    if present is None:
        targets = labels.long()
        return images, targets, torch.arange(len(targets), device="cpu"), score
    image_of, targets = torch.nonzero(present, as_tuple=True)
    if len(targets) == 0:
        raise ValueError(f"no class is present in any image of {args.data} (multi-hot labels or sigmoid > 0.5)")
    return images, targets, image_of, score


def agent_states(args: RExLArgs, model: Model) -> torch.Tensor:
    """The agent's own state visitation: the states of ``episodes`` greedy and ``episodes``
    sampled episodes of the explained agent on its own env, seeds ``episode_seed + i``, collected
    (resumably) into ``OUT/episodes-greedy.h5`` and ``OUT/episodes-sampled.h5``; at most
    ``n_images`` of them, drawn without replacement with ``seed`` when there are more."""
    from xrl.data.collect import collect
    from xrl.data.dataset import StateDataset

    if "env" not in model.info:
        raise ValueError(
            f"data=episodes needs an RL agent that records its env; {args.model} records none "
            "(use a StateDataset .h5 or images)"
        )
    parts = []
    for kind in ("greedy", "sampled"):
        path = collect(
            model,
            episodes=args.episodes,
            out=Path(args.out) / f"episodes-{kind}.h5",
            seed=args.episode_seed,
            sample=kind == "sampled",
            progress=args.progress,
        )
        with StateDataset.open(path) as ds:
            parts.append(ds.states(np.arange(len(ds))))
    images = torch.cat(parts)
    if len(images) > args.n_images:
        keep = torch.randperm(
            len(images), generator=torch.Generator(device="cpu").manual_seed(args.seed), device="cpu"
        )[: args.n_images]
        images = images[keep.sort().values]
    return images


def episode_rows(
    args: RExLArgs, targets: torch.Tensor, n_classes: int, image_of: torch.Tensor | None = None
) -> torch.Tensor:
    """The pairs (indices into ``targets``) episodes are drawn from, by mode."""
    image_of = torch.arange(len(targets), device=targets.device) if image_of is None else image_of
    if args.mode == "ds":
        return torch.arange(len(targets), device=targets.device)
    if args.mode == "cs":
        if not 0 <= args.target_class < n_classes:
            raise ValueError(
                f"--target-class must be a class index in [0, {n_classes}) for a model with "
                f"{n_classes} outputs, got {args.target_class}"
            )
        rows = torch.nonzero(targets == args.target_class).flatten()
        if len(rows) == 0:
            raise ValueError(f"no training image is explained for class {args.target_class}")
        return rows
    n_images = int(image_of.max()) + 1
    if not 0 <= args.image < n_images:
        raise ValueError(f"--image must be a row in [0, {n_images}), got {args.image}")
    rows = torch.nonzero(image_of == args.image).flatten()
    if args.target_class >= 0:
        rows = rows[targets[rows] == args.target_class]
    if len(rows) == 0:
        raise ValueError(f"image {args.image} is not explained for class {args.target_class}")
    return rows[:1]


# ------------------------------------------------------------------ 3. the environment


class MaskingVecEnv:
    """ACER's tensor vector env over :class:`MaskingBatch`: every episode lasts ``grid**2``
    steps, so all ``n_envs`` end together and restart on freshly drawn rows."""

    def __init__(
        self,
        batch: MaskingBatch,
        agent: RExLAgent,
        targets: torch.Tensor,
        rows: torch.Tensor,
        n_envs: int,
        seed: int,
        reward_scale: float = 1.0,
        image_of: torch.Tensor | None = None,
    ) -> None:
        """``targets (P,)`` the class of each pair, ``rows`` the pairs drawn from, ``image_of (P,)``
        each pair's image (None: pair = image)."""
        self.batch, self.agent, self.all_targets, self.pool = batch, agent, targets, rows
        self.image_of = image_of
        self.reward_scale = float(reward_scale)
        self.n_envs, self.n_actions = int(n_envs), batch.n_cells
        self.generator = torch.Generator(device="cpu").manual_seed(int(seed) + 7)  # the same draws on every device
        # the trunk's output is taken from the model's forward when the extractor is its trunk
        self._shared = shared_trunk(agent, batch.model)
        self._encoder = self._shared.__enter__()

    def close(self) -> None:
        self._shared.__exit__(None, None, None)

    def _encode(self, states: torch.Tensor) -> torch.Tensor:
        return self._encoder(states, self.batch.targets)

    def _new_episodes(self) -> torch.Tensor:
        pick = torch.randint(len(self.pool), (self.n_envs,), generator=self.generator, device="cpu")
        pairs = self.pool[pick.to(self.pool.device)]
        images = pairs if self.image_of is None else self.image_of[pairs]
        return self._encode(self.batch.reset(images, self.all_targets[pairs]))

    def reset(self) -> torch.Tensor:
        return self._new_episodes()

    def step(self, actions: torch.Tensor):
        states, rewards, done = self.batch.step(actions)
        obs = self._new_episodes() if done else self._encode(states)
        return obs, rewards * self.reward_scale, torch.full((self.n_envs,), done, device=rewards.device)

    def state_dict(self) -> dict:
        b = self.batch
        return {
            "generator": self.generator.get_state(),
            "noise_generator": b.generator.get_state(),
            "rows": b.rows,
            "targets": b.targets,
            "noise": b.noise_images,
            "masked": b.masked,
            "t": b.t,
            "states": b.states,
            "probs": b.probs,
        }

    def load_state_dict(self, state: dict) -> None:
        """Continue from :meth:`state_dict`, saved on any device: the episodes go to the images'
        device, the generators stay on the CPU."""
        b = self.batch
        self.generator.set_state(state["generator"].cpu())
        b.generator.set_state(state["noise_generator"].cpu())
        on = to_device(
            {k: state[k] for k in ("rows", "targets", "noise", "masked", "states", "probs")}, b.images.device
        )
        b.rows, b.targets, b.noise_images, b.masked = on["rows"], on["targets"], on["noise"], on["masked"]
        b.t, b.states, b.probs = state["t"], on["states"], on["probs"]
        b.original = b.images[b.rows]


# ------------------------------------------------------------------ 4. training


def reward_scale(args: RExLArgs) -> float:
    return args.reward_scale or 1.0 / args.grid**2


def _check_args(args: RExLArgs, model: Model) -> None:
    from xrl.agents.rexl import MODES

    if args.mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {args.mode!r}")
    if args.targets not in ("label", "argmax"):
        raise ValueError(f"targets must be 'label' or 'argmax', got {args.targets!r}")
    if args.score not in ("auto", *SCORES):
        raise ValueError(f"score must be auto or one of {SCORES}, got {args.score!r}")
    if args.algo not in ("acer", *SB3_ALGOS):
        raise ValueError(f"algo must be acer or one of {SB3_ALGOS}, got {args.algo!r}")
    check_grid(model.input_shape[-2], model.input_shape[-1], args.grid)
    for name in ("total_steps", "n_envs", "n_steps", "checkpoint_every", "n_images"):
        value = getattr(args, name)
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be a positive integer, got {value!r}")


_IGNORED = {"total_steps", "progress", "out", "checkpoint_every", "snapshot_every", "device"}
#: settings added after runs were recorded, with the value that reproduces those runs
_ADDED = {"score": "auto", "episodes": 1000, "episode_seed": 100_000, "snapshot_every": 0}


def _run_settings(run: Path, args: RExLArgs) -> dict:
    """The settings recorded in ``args.json``; a run recorded before a setting was added resumes
    when the setting keeps its old behaviour."""
    settings = {"what": "rexl", **dataclasses.asdict(args)}
    config = run / "args.json"
    if config.exists():
        import json

        old = json.loads(config.read_text())
        for key, value in _ADDED.items():
            if key not in old and settings[key] == value:
                del settings[key]
    return settings


def train_rexl(args: RExLArgs, *, stop_at: int | None = None) -> Path:
    """Train (or resume) a RExL agent; returns ``out/rexl.pt``. ``stop_at`` stops after the
    checkpoint of that update (to test resuming)."""
    check_settings(args)
    device = resolve_device(args.device)  # a bad or absent device is refused before anything is loaded
    with torch.random.fork_rng(devices=[]):
        model = load_explained(args.model, device)
    _check_args(args, model)
    images, targets, image_of, score = training_images(args, model)  # bad data fails before anything is written
    rows = episode_rows(args, targets, model.n_actions, image_of)
    with Run(args.out, _run_settings(Path(args.out), args), ignore=_IGNORED, outputs=("rexl.pt",)) as run:
        return _train(args, run, model, images, targets, image_of, score, rows, stop_at)


def _train(args: RExLArgs, run_: Run, model: Model, images, targets, image_of, score, rows, stop_at) -> Path:
    """The agent (initialised on the CPU, the same weights on every device), the images, pairs
    and episodes on the model's device, then ACER or SB3 there."""
    run = run_.folder
    device = next(model.parameters()).device
    for p in model.parameters():
        p.requires_grad_(False)
    classes = sorted(set(targets[rows].tolist())) if args.mode == "ds" else [int(targets[rows[0]])]
    extractor = build_extractor(model, args.extractor, args.extractor_seed)
    torch.manual_seed(args.seed)
    agent = RExLAgent(
        extractor,
        input_shape=model.input_shape,
        n_classes=model.n_actions,
        grid=args.grid,
        mode=args.mode,
        classes=classes,
    ).to(device)
    # the noise's mean and std computed on the CPU: the same noise on every device
    mean, std = (images.mean(dim=(0, 2, 3)), images.std(dim=(0, 2, 3))) if args.noise == "gaussian" else (None, None)
    images, targets, rows = images.to(device), targets.to(device), rows.to(device)
    image_of = image_of.to(device) if image_of is not None else None
    batch = MaskingBatch(
        model, images, grid=args.grid, noise=args.noise, seed=args.seed, score=score, mean=mean, std=std
    )
    record = agent_record(model, batch, args.extractor, args.extractor_seed)
    started = time.time()
    if args.algo == "acer":

        def snapshot(steps: int) -> None:  # the agent as it is now, for a learning curve
            card = {"what": f"RExL-{args.mode.upper()} agent explaining {args.model}, snapshot", "steps": steps}
            save_rexl_agent(agent, run / "snapshots" / f"rexl-{steps:09d}.pt", record=record, card=card)

        history = _train_acer(args, run_, agent, batch, targets, rows, stop_at, image_of, snapshot)
    else:
        history = _train_sb3(args, run_, agent, model, images, targets, rows, score, image_of)
    run_.write_history(history, started=started)
    path = run / "rexl.pt"
    save_rexl_agent(agent, path, record=record, card=_card(args, model, history, classes))
    return path


def _train_acer(args, run, agent, batch, targets, rows, stop_at, image_of=None, snapshot=None) -> dict:
    env = MaskingVecEnv(batch, agent, targets, rows, args.n_envs, args.seed, reward_scale(args), image_of)
    try:
        return _acer_loop(args, run, agent, env, stop_at, snapshot)
    finally:
        env.close()


def _acer_loop(args, run, agent, env, stop_at, snapshot=None) -> dict:
    acer = Acer(agent, env, settings_of(args), seed=args.seed)
    history: dict = {"updates": []}
    latest = run.latest()
    ckpt = latest / "state.pt" if latest is not None else run.folder / "checkpoint.pt"  # checkpoint.pt: older runs
    if ckpt.exists():
        blob = load_tensors(ckpt)
        acer.load_state_dict(blob["acer"])
        history = blob["history"]
    per_update = args.n_envs * args.n_steps
    n_updates = math.ceil(args.total_steps / per_update)
    bar = tqdm(
        total=n_updates * per_update,
        initial=acer.updates * per_update,
        unit="step",
        desc=f"rexl-{args.mode} acer",
        disable=not args.progress,
    )
    recent: list[float] = []
    while acer.updates < n_updates:
        stats = acer.update()
        if not all(math.isfinite(stats[k]) for k in ("policy_loss", "q_loss")):
            bar.close()
            raise FloatingPointError(
                f"ACER loss became {stats} at update {acer.updates}; stopped. The last good "
                f"checkpoint is kept in {run.folder}; lower learning_rate"
            )
        if stats["episodes"]:
            recent = (recent + [stats["mean_return"]])[-20:]
        history["updates"].append(
            {"update": acer.updates, "steps": acer.updates * per_update, **{k: round(v, 5) for k, v in stats.items()}}
        )
        bar.update(per_update)
        bar.set_postfix(mean_return=f"{sum(recent) / max(1, len(recent)):.3f}", entropy=f"{stats['entropy']:.2f}")
        if acer.updates % args.checkpoint_every == 0 or acer.updates == n_updates:
            blob = {"acer": to_device(acer.state_dict(), "cpu"), "history": history}  # loads on any device
            run.save(acer.updates, lambda folder: torch.save(blob, folder / "state.pt"))
            if run.checkpointed(history, acer.updates, stop_at):
                break
        if snapshot is not None and args.snapshot_every and acer.updates % args.snapshot_every == 0:
            snapshot(acer.updates * per_update)
    bar.close()
    return history


def _train_sb3(args, run, agent, model, images, targets, rows, score="softmax", image_of=None) -> dict:
    """SB3 PPO/A2C/DQN on the Gymnasium masking env with the same extractor and MLP; the trained
    policy layers are copied into ``agent`` (DQN: its Q-network's layers become the policy head).
    Resumes from the newest checkpoint's weights and step count, read without unpickling (not
    bit-identical: the envs start new episodes)."""
    import gymnasium as gym

    from xrl.compat import quiet_old_gym

    quiet_old_gym()
    from stable_baselines3 import A2C, DQN, PPO
    from stable_baselines3.common.logger import Logger
    from stable_baselines3.common.torch_layers import BaseFeaturesExtractor
    from stable_baselines3.common.vec_env import DummyVecEnv

    from xrl.agents.masking import MaskingEnv

    class Features(BaseFeaturesExtractor):
        def __init__(self, observation_space: gym.spaces.Dict) -> None:
            super().__init__(observation_space, agent.feature_dim + agent.one_hot)

        def forward(self, obs: dict) -> torch.Tensor:
            return agent.encode(obs["image"], obs["target"].argmax(-1))

    def make(i: int):
        pair_images = images[rows] if image_of is None else images[image_of[rows]]
        return lambda: MaskingEnv(model, pair_images, targets[rows], grid=args.grid, noise=args.noise, score=score)

    env = DummyVecEnv([make(i) for i in range(args.n_envs)])
    env.seed(args.seed)
    algo = {"ppo": PPO, "a2c": A2C, "dqn": DQN}[args.algo]
    learner = algo(
        "MultiInputPolicy",
        env,
        policy_kwargs=_sb3_kwargs(args, Features),
        seed=args.seed,
        gamma=args.gamma,
        verbose=0,
        device=next(agent.parameters()).device,  # the agent's (and the explained model's)
    )
    _load_sb3(learner, run)
    remaining = max(0, args.total_steps - learner.num_timesteps)
    learner.set_logger(Logger(None, []))  # SB3's default logger leaves an empty /tmp/SB3-<date> per run
    learner.learn(remaining, reset_num_timesteps=False, progress_bar=args.progress)

    def write(folder: Path) -> None:
        learner.save(folder / "checkpoint.zip")
        write_json(
            folder / "state.json", {"num_timesteps": int(learner.num_timesteps), "_n_updates": learner._n_updates}
        )

    folder = run.save(learner.num_timesteps, write)
    link(folder / "checkpoint.zip", run.folder / "checkpoint.zip")
    layers = (
        learner.policy.q_net.q_net
        if args.algo == "dqn"
        else [*learner.policy.mlp_extractor.policy_net, learner.policy.action_net]
    )
    linears = [m for m in layers if isinstance(m, torch.nn.Linear)]
    ours = [m for m in agent.mlp if isinstance(m, torch.nn.Linear)] + [agent.pi]
    for mine, theirs in zip(ours, linears, strict=True):
        mine.load_state_dict(theirs.state_dict())
    return {"sb3": {"algo": args.algo, "timesteps": int(learner.num_timesteps)}}


def _load_sb3(learner, run: Run) -> None:
    """The weights, optimizer and step count of the newest checkpoint (or of an older run's
    ``checkpoint.zip``), read with ``weights_only=True`` and as JSON: nothing is unpickled."""
    import json
    import zipfile

    latest = run.latest()
    path = latest / "checkpoint.zip" if latest is not None else run.folder / "checkpoint.zip"
    if not path.exists():
        return
    learner.policy.load_state_dict(zip_tensors(path, "policy.pth"))
    learner.policy.optimizer.load_state_dict(zip_tensors(path, "policy.optimizer.pth"))
    try:
        with zipfile.ZipFile(path) as archive:
            data = json.loads(archive.read("data"))
    except (OSError, KeyError, ValueError, zipfile.BadZipFile) as err:
        raise ValueError(f"{path} is not a readable SB3 checkpoint ({type(err).__name__}: {err})") from None
    learner.num_timesteps = int(data["num_timesteps"])  # a plain JSON field (the :serialized: ones are left alone)
    learner._n_updates = int(data.get("_n_updates", 0))


def _sb3_kwargs(args, features) -> dict:
    arch = [256, 128] if args.algo == "dqn" else {"pi": [256, 128], "vf": [256, 128]}
    return (
        {"features_extractor_class": features, "net_arch": arch, "share_features_extractor": True}
        if args.algo != "dqn"
        else {"features_extractor_class": features, "net_arch": arch}
    )


def agent_record(model: Model, batch: MaskingBatch, extractor: str, extractor_seed: int) -> dict:
    """What a RExL agent file records about the model and the MDP it was trained on."""
    from xrl.data.collect import agent_record as model_record

    gaussian = batch.noise == "gaussian"
    return {
        "model_fingerprint": model_record(model)["fingerprint"],
        "model_source": str(model.info.get("source")),
        "input_shape": list(model.input_shape),
        "noise": batch.noise,
        "extractor": extractor,
        "extractor_seed": int(extractor_seed),
        "score": batch.score,
        "noise_mean": batch.mean.flatten().tolist() if gaussian else None,
        "noise_std": batch.std.flatten().tolist() if gaussian else None,
    }


def untrained_agent(
    model: Model,
    path: str | Path,
    *,
    grid: int = 7,
    mode: str = "ds",
    classes=None,
    extractor: str | torch.nn.Module = "trunk",
    seed: int = 0,
    score: str = "softmax",
) -> Path:
    """Save a randomly initialised agent for ``model`` (what timing and contract tests need;
    its maps rank cells by an untrained policy)."""
    module = build_extractor(model, extractor, seed)
    with torch.random.fork_rng(devices=[]):  # the caller's global RNG is left as it was
        torch.manual_seed(seed)
        agent = RExLAgent(
            module,
            input_shape=model.input_shape,
            n_classes=model.n_actions,
            grid=grid,
            mode=mode,
            classes=list(range(model.n_actions)) if classes is None else classes,
        )
    batch = MaskingBatch(model, torch.zeros(1, *model.input_shape), grid=grid, score=score)
    name = extractor if isinstance(extractor, str) else "module"
    save_rexl_agent(agent, path, record=agent_record(model, batch, name, seed), card={"what": "untrained RExL agent"})
    return Path(path)


def _card(args: RExLArgs, model: Model, history: dict, classes: list[int]) -> dict:
    updates = history.get("updates", [])
    last = [u["mean_return"] for u in updates[-20:] if u.get("episodes")]
    return {
        "what": f"RExL-{args.mode.upper()} agent explaining {args.model}",
        "classes": classes,
        "class_names": [model.action_names[c] for c in classes],
        "grid": args.grid,
        "settings": {k: v for k, v in dataclasses.asdict(args).items() if k != "progress"},
        "command": rexl_command(args),
        "score": {
            "mean_return_last_20_updates": sum(last) / len(last) if last else None,
            "steps": updates[-1]["steps"] if updates else history.get("sb3", {}).get("timesteps"),
        },
        "xrl_version": __version__,
    }


def rexl_command(args: RExLArgs) -> str:
    """``xrl train rexl --model ...`` with every setting that differs from its default (the
    explained model first, as the CLI's flags spell them)."""
    fields = [f.name for f in dataclasses.fields(args)]
    ordered = sorted(fields, key=lambda name: name != "model")  # the explained model first
    return command("xrl train rexl", args, always=("model",), order=ordered)
