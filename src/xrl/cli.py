"""The ``xrl`` command. Each subcommand maps one to one onto a library call."""

from __future__ import annotations

import argparse
import json
import os
import sys
import zipfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch

from xrl.envs import ENVS, list_envs
from xrl.explainers import EXPLAINERS, list_explainers
from xrl.method_settings import check_method_settings
from xrl.metrics import METRICS, list_metrics
from xrl.settings import (
    OnDevice,
    add_command,
    at_least_1,
    device_name,
    eps_list,
    fraction,
    parse_pairs,
    positive,
    run_command,
)
from xrl.train.run import RunLocked, Terminated


def _method_settings(
    names: str, pairs: list[str] | None, flag: str = "setting", registry=EXPLAINERS
) -> dict[str, dict]:
    """``"gradient,greydanus"`` + ``["greydanus.radius=4"]`` (the ``--setting`` flags) -> ``{name: settings}``,
    each setting checked against the method's constructor (:func:`check_method_settings`)."""
    methods: dict[str, dict] = {m.strip(): {} for m in names.split(",") if m.strip()}
    for key, value in parse_pairs(pairs, flag).items():
        method, _, setting = key.partition(".")
        if method not in methods or not setting:
            raise ValueError(f"--{flag} {key}: expected METHOD.SETTING=VALUE for one of {list(methods)}")
        methods[method][setting] = value
    check_method_settings(registry, {m: v for m, v in methods.items() if v}, flag)
    return methods


def _out_folder(out: str, flag: str = "--out") -> Path:
    """An output folder checked before any computation: not a file, not a dangling or looping
    symbolic link, not inside a file."""
    path = Path(out)
    if path.is_symlink() and not path.exists():
        raise ValueError(
            f"{flag} {out} is a symbolic link that leads nowhere (a loop or a missing target); expected a folder"
        )
    if path.exists() and not path.is_dir():
        raise ValueError(f"{flag} {out} is a file; expected a folder (it would hold the results)")
    for parent in path.absolute().parents:
        if parent.exists():
            if not parent.is_dir():
                raise ValueError(f"{flag} {out}: {parent} is a file; expected a folder")
            if not os.access(parent, os.W_OK | os.X_OK):
                raise ValueError(f"{flag} {out}: {parent} is not writable")
            break
    return path


def _device(args: OnDevice) -> str:
    """The device a command computes on (``--device``), refused in one line when it is not there."""
    from xrl.ops import resolve_device

    return str(resolve_device(args.device))


def _doc(obj) -> str:
    return ((obj.__doc__ or "").strip().splitlines() or [""])[0]


def cmd_envs(args) -> None:
    from xrl.envs import EXTRAS, extra_installed

    for name in list_envs():
        extra = (
            f" [extra {EXTRAS[name]}: {'installed' if extra_installed(name) else 'NOT installed'}]"
            if name in EXTRAS
            else ""
        )
        print(f"{name:26s} {_doc(ENVS.get(name))}{extra}")


def _count(n) -> str:
    if n is None:
        return "?"
    return f"{n / 1e6:.3g}M" if n >= 1e6 else f"{n / 1e3:.3g}k" if n >= 1e4 else str(n)


def cmd_zoo(args) -> int | None:
    from xrl.zoo import zoo_cards, zoo_networks

    if args.verify or args.update_sha256:
        from xrl.agents.load import update_zoo_sha256, verify_zoo
    if args.update_sha256:
        for card in update_zoo_sha256(args.dir, skip=("breakout",) if args.dir is None else ()):
            print(f"updated {card}")
    if args.verify or args.update_sha256:
        unchecked: list = []
        problems = verify_zoo(args.dir, unchecked=unchecked)
        for problem in problems:
            print(problem, file=sys.stderr)
        for path in unchecked:
            print(f"not checked: {path} (its card records no sha256)")
        print(f"{len(problems)} problem(s) in the zoo" if problems else "every zoo artifact loads and matches its card")
        return 1 if problems else 0
    rows, networks = zoo_cards(args.dir), zoo_networks(args.dir)
    if args.json:
        print(json.dumps(rows + networks, indent=2))
        return None
    for r in rows:
        trained = _count(r["trained"]) + ("" if r["finished"] else f" of {_count(r['planned'])}, resumable")
        sampled = f" (sampled policy: {r['score_sampled']})" if r["score_sampled"] else ""
        teacher = f"; DIGR student of {r['teacher']}" if r["teacher"] else ""
        print(
            f"{r['name']:30s} {r['kind']:10s} {r['env']:26s} {r['arch']:16s} {trained:22s} {r['score']}{sampled}"
            f"{teacher}"
        )
        if args.commands:
            print(f"{'':30s} {r['command']}")
    if networks:
        print("\nexplainer networks, each for the zoo model it explains (found by its weights fingerprint):")
    for r in networks:
        trained = f"{_count(r['trained'])} {r['unit']}" + (
            "" if r["finished"] else f" of {_count(r['planned'])}, resumable"
        )
        print(f"{r['name']:30s} {r['kind']:17s} for {r['explains']:19s} {r['arch']:16s} {trained:22s} {r['score']}")
        if args.commands:
            print(f"{'':30s} {r['command']}")
    return None


def cmd_methods(args) -> None:
    for name in list_explainers():
        cls = EXPLAINERS.get(name)
        tag = "per-action" if cls.per_action else ""
        print(f"{name:24s} {tag:10s} {_doc(cls)}")


def cmd_metrics(args) -> None:
    for name in list_metrics():
        cls = METRICS.get(name)
        hib = cls.higher_is_better
        direction = (
            ("higher" if hib else "lower")
            if isinstance(hib, bool)
            else ", ".join(f"{k}: {'higher' if v else 'lower'}" for k, v in hib.items())
        )
        print(f"{name:16s} {cls.category:14s} {direction:44s} {_doc(cls)}")


def cmd_train(trainer: Trainer, settings) -> None:
    """``xrl train <what>``: the trainer's settings from its flags, then what its card says."""
    import importlib

    path = getattr(importlib.import_module(trainer.module), trainer.train)(settings)
    card = json.loads(path.with_suffix(".json").read_text())
    if path.name == "checkpoint.zip":  # --convert-only: a checkpoint, not a trained artifact
        print(f"saved {path.parent / card['checkpoint']}\n{card['what']}: {card['timesteps']} steps")
        return
    print(f"saved {path}\n{trainer.summary(card)}")


def cmd_counterfactual(args) -> None:
    from xrl.agents.load import load_agent
    from xrl.agents.mask_nets import load_mask_network
    from xrl.data.dataset import StateDataset
    from xrl.explainers import get_explainer
    from xrl.explainers.visionmask import counterfactual
    from xrl.viz.overlay import counterfactual_figure

    out = _out_folder(args.out)
    device = _device(args)
    model = load_agent(args.agent, device=device)
    network = load_mask_network(args.network).to(device)
    explainer = get_explainer(network.method, model, network=network)
    with StateDataset.open(args.data) as ds:
        rows = _rows(len(ds), args.n, args.seed)
        states = ds.states(rows).to(device)
    targets = None if args.target is None else torch.full((len(rows),), args.target, device=device)
    cf = counterfactual(explainer, states, targets, threshold=args.threshold)  # type: ignore[arg-type]
    cf = type(cf)(*(t.detach().cpu() for t in cf))  # computed on the device, drawn from the CPU
    states = states.cpu()
    names = model.action_names
    for i, row in enumerate(rows):
        path = out / f"state_{int(row):06d}.png"
        counterfactual_figure(
            states[i],
            cf.states[i],
            cf.maps[i],
            cf.region[i],
            cf.probs[i],
            cf.new_probs[i],
            target=int(cf.targets[i]),
            action_names=names,
            path=path,
            title=f"{network.method}, row {int(row)}",
        )
        print(
            f"row {int(row)}: {names[int(cf.actions[i])]} ({float(cf.probs[i, cf.actions[i]]):.2f}) -> "
            f"{names[int(cf.new_actions[i])]} ({float(cf.new_probs[i, cf.new_actions[i]]):.2f}) without "
            f"{int(cf.region[i].sum())} pixels of the map of {names[int(cf.targets[i])]}: {path}"
        )


def cmd_attack(args) -> None:
    from xrl.agents.load import load_agent
    from xrl.attacks.evaluate import return_under_attack, write_attack_results
    from xrl.viz.overlay import attack_curves

    attacks = [a.strip() for a in args.attacks.split(",") if a.strip()]
    eps = args.eps
    _out_folder(args.out)
    from xrl.attacks import ATTACKS

    settings = _method_settings(",".join(attacks), args.setting, registry=ATTACKS)
    results, sources = {}, {}
    for agent in args.agent:
        model = load_agent(agent, device=_device(args))
        results[agent] = return_under_attack(
            model, attacks, eps, episodes=args.episodes, seed=args.seed, attack_settings=settings, batch=args.batch
        )
        sources[agent] = model.info.get("card", {})
        for name, rows in results[agent].items():
            print(f"{agent} {name}: " + "  ".join(f"eps {r['eps']:g}: {r['mean_return']:.3f}" for r in rows))
    out = write_attack_results(results, args.out, agents=sources)  # type: ignore[arg-type]
    attack_curves(results, out / "attacks.png")
    print(f"wrote {out}/attacks.csv, attacks.json, attacks.png")


def cmd_collect(args) -> None:
    from xrl.agents.load import load_agent
    from xrl.data.collect import collect

    model = load_agent(args.agent, device=_device(args))
    if args.env is None and not model.info.get("env"):
        kind = "classifier" if (model.info.get("card") or {}).get("format") == "xrl.classifier" else "model"
        raise ValueError(
            f"--agent {args.agent} is a {kind} whose card records no env to play in; collect needs an agent "
            "trained on an env, or --env NAME (xrl envs)"
        )
    path = collect(
        model,
        episodes=args.episodes,
        out=args.out,
        env=args.env,
        env_settings=args.env_settings or None,
        seed=args.seed,
        max_steps=args.max_steps,
        sample=args.sample,
        overwrite=args.overwrite,
    )
    print(f"wrote {path}")


def _within_data(flag: str, asked: int | None, ds) -> None:
    """A count given on the command line may not exceed the dataset's states (the default may)."""
    if asked is not None and asked > len(ds):
        raise ValueError(f"{flag} {asked}: {ds.path} holds {len(ds)} states; ask for at most {len(ds)}")


def _fits(model, ds) -> None:
    """The dataset's states are of the shape the model consumes (else: another env's dataset)."""
    if tuple(ds.state_shape) != tuple(model.input_shape):
        env = ds.env.get("name")
        raise ValueError(
            f"{ds.path} holds states of shape {tuple(ds.state_shape)} (env {env}) but the agent consumes "
            f"{tuple(model.input_shape)}; collect a dataset with this agent (xrl collect --agent ...)"
        )


def _rows(n_total: int, n: int, seed: int) -> np.ndarray:
    if n >= n_total:
        return np.arange(n_total)
    return np.sort(np.random.default_rng(seed).choice(n_total, size=n, replace=False))


def _methods_for(model, names: str | None, pairs: list[str] | None) -> dict[str, dict]:
    """The asked methods with their settings; by default every registered method that can explain
    ``model`` at its default settings (those that cannot, e.g. ``attention`` for an agent without
    an attention layer, are named on stderr with the reason)."""
    if names:
        return _method_settings(names, pairs)
    from xrl.explainers import get_explainer

    usable = []
    for name in list_explainers():
        try:
            get_explainer(name, model)
            usable.append(name)
        except (TypeError, ValueError) as err:
            print(f"left out {name}: {err}", file=sys.stderr)
    return _method_settings(",".join(usable), pairs)


def cmd_explain(args) -> None:
    from xrl.agents.load import load_agent
    from xrl.data.dataset import StateDataset
    from xrl.pipeline import explain, read_batch
    from xrl.viz.overlay import explanation_grid

    out = Path(args.out)
    out = out if out.suffix else out.with_suffix(".png")  # a bare name would be a PNG without a suffix
    from matplotlib.backend_bases import FigureCanvasBase

    formats = FigureCanvasBase.get_supported_filetypes()
    if out.suffix.lower()[1:] not in formats:
        raise ValueError(
            f"--out {args.out}: expected a picture file ending in one of {', '.join('.' + f for f in sorted(formats))}"
        )
    model = load_agent(args.agent, device=_device(args))
    methods = _methods_for(model, args.methods, args.setting)
    with StateDataset.open(args.data) as ds:
        _fits(model, ds)
        _within_data("--n", args.n, ds)
        rows = _rows(len(ds), args.n or 6, args.seed)
        batch = read_batch(model, ds, rows, args.targets)  # refuses another agent's data unless asked
        explained = explain(model, batch.states, methods, batch.targets, recurrent=batch.recurrent)
        maps = {m: v.cpu() for m, v in explained.items()}
        probs = torch.softmax(torch.as_tensor(ds.scores[rows], device="cpu"), -1).numpy()
        explanation_grid(
            ds.frames(rows),
            maps,
            out,
            actions=batch.targets.cpu().numpy(),
            action_names=model.action_names,
            probs=probs,
        )
    print(f"wrote {out}")


def cmd_evaluate(args) -> None:
    from xrl.agents.load import load_agent
    from xrl.data.dataset import StateDataset
    from xrl.evaluation import evaluate

    _out_folder(args.out)
    with StateDataset.open(args.data) as ds:  # the cheap check first: a missing file before the agent loads
        model = load_agent(args.agent, device=_device(args))
        methods = _methods_for(model, args.methods, args.setting)
        metrics = _method_settings(
            args.metrics or ",".join(list_metrics()), args.metric_setting, "metric-setting", registry=METRICS
        )
        _fits(model, ds)
        _within_data("--n-states", args.n_states, ds)
        result = evaluate(
            model, ds, methods, metrics, n_states=args.n_states or 64, seed=args.seed, targets=args.targets
        )
    print(result.table())
    csv_path, json_path = result.write(args.out)
    print(f"wrote {csv_path} and {json_path}")


def cmd_bench(args) -> int:
    from xrl.bench import load_results, load_spec, run_bench
    from xrl.bench.results import group_table

    if Path(args.spec).is_dir():
        raise ValueError(f"{args.spec} is a folder; expected a spec file (TOML) or a shipped spec: quick, full")
    if args.out is not None:
        _out_folder(args.out)
    spec = load_spec(args.spec, device=args.device)  # a spec reads no weights (xrl.bench.spec)
    if args.check:  # no weights read: the methods an agent cannot serve are known when the run starts
        print(
            f"{args.spec}: OK, up to {len(spec.jobs())} jobs ({len(spec.agents)} agent(s) x "
            f"{len(spec.seeds)} seed(s) x {len(spec.methods)} method(s)), {len(spec.metrics)} metric(s)"
        )
        return 0
    out = run_bench(spec, args.out, ray=args.ray, workers=args.workers)
    doc = load_results(out)
    for g in doc["groups"]:
        print(f"\n{g['agent']} ({g['env']}), seed {g['seed']}:\n{group_table(g)}")
    if args.report:
        from xrl.report import build_report

        print(f"wrote {build_report(out)}")
    for f in doc["failed"]:
        print(f"FAILED {f['id']}: {f['error']}", file=sys.stderr)
    return 1 if doc["failed"] else 0


def cmd_report(args) -> None:
    from xrl.report import build_report

    if Path(args.results).exists() and not Path(args.results).is_dir():
        raise ValueError(f"{args.results} is a file; expected a results folder (xrl bench --out)")
    print(f"wrote {build_report(args.results, args.out, include_flagged=args.include_flagged)}")


def cmd_watch(args) -> None:
    from xrl.agents.load import load_agent
    from xrl.watch import watch

    model = load_agent(args.agent, device=_device(args))
    result = watch(
        model,
        methods=_method_settings(args.methods, args.setting),
        env=args.env,
        env_settings=args.env_settings or None,
        seed=args.seed,
        max_steps=args.max_steps,
        counterfactual=args.counterfactual,
        fraction=args.fraction,
        out=args.out,
        fps=args.fps,
        formats=tuple(f.strip() for f in args.formats.split(",") if f.strip()),
    )
    print(f"{result.steps} frames, return {result.episode_return:.3g}")
    for method, fps in result.fps.items():
        print(f"{method:24s} {result.seconds_per_map[method] * 1000:8.2f} ms per map  ({fps:.1f} frames/s)")
    print("wrote " + ", ".join(str(p) for p in result.paths))


def cmd_demo(args) -> None:
    from xrl.demo import run_demo

    run_demo(out=args.out, quick=args.quick, device=args.device)


#: ``xrl train <name>``: (module, settings dataclass, function, help); the flags are the dataclass's
class Trainer(NamedTuple):
    """One ``xrl train`` subcommand: the module, its settings dataclass and training function (by
    name: imported when it runs), the help line, and what is printed from the card it wrote."""

    module: str
    settings: str
    train: str
    help: str
    summary: Callable[[dict], str]


def _score(card: dict) -> str:
    return f"score: {json.dumps(card['score'])}" + (
        f"\nscore of the sampled policy: {json.dumps(card['score_sampled'])}" if "score_sampled" in card else ""
    )


def _best_epoch(card: dict) -> str:
    return f"best epoch {card['scores']['best_epoch']}, validation: {json.dumps(card['scores']['val'])}"


TRAINERS = {
    "agent": Trainer(
        "xrl.train.agent", "AgentArgs", "train_agent", "PPO or DQN agent (checkpoints, resumes when run again)", _score
    ),
    "digr": Trainer(
        "xrl.train.digr",
        "DigrArgs",
        "train_digr",
        "DIGR student: gradient saliency like the teacher's "
        "perturbation saliency (checkpoints, resumes when run again)",
        lambda c: f"student: {json.dumps(c['score'])}\nteacher: {json.dumps(c['teacher_score'])}",
    ),
    "visionmask": Trainer(
        "xrl.train.visionmask",
        "VisionMaskArgs",
        "train_visionmask",
        "VisionMask network: one mask per action of an agent (checkpoints, resumes when run again)",
        _best_epoch,
    ),
    "stalder-explainer": Trainer(
        "xrl.train.visionmask",
        "StalderArgs",
        "train_stalder",
        "Stalder et al. 2022 Explainer network (VisionMask's learned baseline; resumes when run again)",
        _best_epoch,
    ),
    "rexl": Trainer(
        "xrl.train.rexl",
        "RExLArgs",
        "train_rexl",
        "RExL agent (ACER, or SB3 PPO/A2C/DQN) that masks "
        "grid cells to explain a classifier or an agent (checkpoints, resumes when run again)",
        lambda c: f"{c['what']}: {json.dumps(c['score'])}",
    ),
    "classifier": Trainer(
        "xrl.train.classifier",
        "ClassifierArgs",
        "train_classifier",
        "image classifier on the generated shapes dataset or an image folder (checkpoints, resumes when run again)",
        lambda c: f"best: {json.dumps(c['score'])}",
    ),
}


def _train_commands(sub, lazy: bool) -> None:
    """``xrl train <what>``: every flag made from the trainer's dataclass (``xrl.settings.add_flags``).
    ``lazy``: the command line is not ``train``, so the trainers (Stable-Baselines3) are not
    imported; only their names and help are listed."""
    import functools
    import importlib

    train = sub.add_parser(
        "train", help="train an agent, a DIGR student, a mask network, a RExL agent or a classifier"
    ).add_subparsers(dest="what", required=True)
    for name, trainer in TRAINERS.items():
        if lazy:
            train.add_parser(name, help=trainer.help)
            continue
        cls = getattr(importlib.import_module(trainer.module), trainer.settings)
        add_command(train, name, cls, functools.partial(cmd_train, trainer), trainer.help)


# ------------------------------------------------------------------ the commands' settings
# Each command is its dataclass: the flags, their help (the string under each field) and the
# types come from it (xrl.settings.add_flags); the handler gets it filled. ``OnDevice`` adds
# ``--device`` to every command that computes (docs/architecture.md#devices).

_APPEND = {"metavar": "METHOD.KEY=VALUE"}


@dataclass
class NoSettings:
    """A command without settings (envs, methods, metrics)."""


@dataclass
class ZooSettings:
    dir: str | None = None
    """zoo folder (default: the repository's zoo/, or $XRL_ZOO)"""
    commands: bool = field(default=False, metadata={"switch": True})
    """also print the command that made each one"""
    json: bool = field(default=False, metadata={"switch": True})
    """print the rows as JSON"""
    verify: bool = field(default=False, metadata={"switch": True})
    """check every artifact's sha256 against its card and that it loads (exit 1 on a problem)"""
    update_sha256: bool = field(default=False, metadata={"switch": True})
    """record every artifact's sha256 and weights fingerprint in its card, then verify"""


@dataclass
class AttackSettings(OnDevice):
    agent: list[str] = field(default_factory=list, metadata={"required": True})
    """zoo name, SB3 .zip or xrl .pt"""
    attacks: str = "fgsm,pgd,mi_fgsm,mad"
    """comma-separated"""
    eps: list[float] = field(
        default_factory=lambda: [0, 0.01, 0.02, 0.05, 0.1], metadata={"type": eps_list, "append": False}
    )
    """comma-separated L-inf radii (state units; default 0,0.01,0.02,0.05,0.1)"""
    setting: list[str] = field(default_factory=list, metadata={"metavar": "ATTACK.KEY=VALUE"})
    """an attack's setting"""
    episodes: int = field(default=50, metadata={"type": at_least_1})
    """episodes played per attack and eps"""
    batch: int = field(default=8, metadata={"type": at_least_1})
    """episodes played side by side (one batched attack a step)"""
    seed: int = 0
    """the first episode's seed"""
    out: str = "attack-results"
    """results folder"""


@dataclass
class CollectSettings(OnDevice):
    agent: str
    """zoo name, SB3 .zip or xrl .pt"""
    episodes: int = field(metadata={"type": at_least_1})
    """episodes played"""
    out: str
    """dataset file (.h5)"""
    env: str | None = None
    """default: the env the agent was trained on"""
    env_settings: dict = field(default_factory=dict, metadata={"flag": "set"})
    """env setting"""
    seed: int = 0
    """the first episode's seed"""
    max_steps: int | None = field(default=None, metadata={"type": at_least_1})
    """steps an episode at most"""
    sample: bool = field(default=False, metadata={"switch": True})
    """sample actions instead of argmax"""
    overwrite: bool = field(default=False, metadata={"switch": True})
    """replace an existing dataset"""


@dataclass
class _OnData(OnDevice):
    agent: str
    """zoo name, SB3 .zip or xrl .pt"""
    data: str
    """StateDataset file (xrl collect)"""
    methods: str | None = None
    """comma-separated; default all"""
    setting: list[str] = field(default_factory=list, metadata=_APPEND)
    """a method's setting"""
    seed: int = 0
    """which states are drawn"""
    targets: str | None = field(default=None, metadata={"choices": ("agent", "dataset")})
    """explain the agent's own greedy actions, or the dataset's stored ones even when another agent
    collected it (default: the stored actions, refused for another agent's data)"""


@dataclass
class ExplainSettings(_OnData):
    n: int | None = field(default=None, metadata={"type": at_least_1})
    """states in the grid (default 6, or all the dataset has if fewer)"""
    out: str = "explain.png"
    """picture file; its suffix picks the format (.png, .pdf, .svg), none means .png"""


@dataclass
class EvaluateSettings(_OnData):
    metrics: str | None = None
    """comma-separated; default all"""
    metric_setting: list[str] = field(default_factory=list, metadata={"metavar": "METRIC.KEY=VALUE"})
    """a metric's setting"""
    n_states: int | None = field(default=None, metadata={"type": at_least_1})
    """states scored (default 64, or all the dataset has if fewer)"""
    out: str = "results"
    """results folder"""


@dataclass
class CounterfactualSettings(OnDevice):
    agent: str
    """zoo name, SB3 .zip or xrl .pt"""
    network: str
    """trained mask network (.pt of xrl train visionmask)"""
    data: str
    """StateDataset file (xrl collect)"""
    n: int = field(default=4, metadata={"type": at_least_1})
    """states drawn"""
    seed: int = 0
    """which states are drawn"""
    target: int | None = None
    """action whose map is used (default the agent's)"""
    threshold: float = field(default=0.5, metadata={"type": fraction})
    """region: connected pixels around the map's maximum at >= threshold x maximum"""
    out: str = "counterfactuals"
    """folder of PNGs"""


@dataclass
class BenchSettings:
    spec: str = field(metadata={"positional": True})
    """spec file (TOML) or a shipped spec: quick, full"""
    device: str | None = field(default=None, metadata={"type": device_name, "metavar": "auto|cpu|cuda|cuda:N"})
    """where the jobs compute (default: the spec's device setting, itself auto: CUDA when available); with
    --ray each job asks Ray for gpus_per_job GPUs (the spec's; default 1 on CUDA, 0 on the CPU)"""
    out: str | None = None
    """results folder (default bench-results/<spec name>)"""
    ray: str | None = field(default=None, metadata={"metavar": "auto|ADDRESS"})
    """run the jobs on Ray: 'auto' starts a local Ray, ADDRESS joins a cluster"""
    workers: int | None = field(default=None, metadata={"type": at_least_1})
    """CPUs of the local Ray (--ray auto)"""
    check: bool = field(default=False, metadata={"switch": True})
    """only check the spec"""
    report: bool = field(default=False, metadata={"switch": True})
    """also write report.html"""


@dataclass
class ReportSettings:
    results: str = field(metadata={"positional": True})
    """results folder (xrl bench --out)"""
    out: str | None = None
    """HTML file (default RESULTS/report.html)"""
    include_flagged: bool = field(default=False, metadata={"switch": True})
    """methods that fail the sanity check may still be the verdict's best (default: marked and left out)"""


@dataclass
class WatchSettings(OnDevice):
    agent: str
    """zoo name, SB3 .zip or xrl .pt"""
    methods: str = "gradient,grad_cam"
    """comma-separated (xrl methods)"""
    setting: list[str] = field(default_factory=list, metadata=_APPEND)
    """a method's setting"""
    env: str | None = None
    """default: the env the agent was trained on"""
    env_settings: dict = field(default_factory=dict, metadata={"flag": "set"})
    """env setting"""
    seed: int = 0
    """the episode's reset seed"""
    max_steps: int = field(default=500, metadata={"type": at_least_1})
    """steps at most"""
    counterfactual: bool = field(default=False, metadata={"switch": True})
    """add the frame without the first method's most salient region and the action then"""
    fraction: float = field(default=0.05, metadata={"type": fraction})
    """share of pixels removed (--counterfactual)"""
    fps: float = field(default=10, metadata={"type": positive})
    """frames per second of the video"""
    formats: str = "mp4,gif"
    """comma-separated video formats"""
    out: str = "watch"
    """video path without suffix: OUT.mp4, OUT.gif"""


@dataclass
class DemoSettings(OnDevice):
    out: str = "demo-results"
    """results folder"""
    quick: bool = field(default=False, metadata={"switch": True})
    """tiny budgets (used by the tests)"""


#: name -> (settings, handler, help); ``train``, ``reproduce`` and ``serve`` are added beside them
COMMANDS: dict[str, tuple[type, Callable, str]] = {
    "envs": (NoSettings, cmd_envs, "list environments"),
    "zoo": (
        ZooSettings,
        cmd_zoo,
        "list the zoo's trained models and the explainer networks made for them: env, architecture, "
        "training, score (from their cards)",
    ),
    "methods": (NoSettings, cmd_methods, "list explainers"),
    "metrics": (NoSettings, cmd_metrics, "list metrics"),
    "attack": (AttackSettings, cmd_attack, "episode return under FGSM/PGD/MI-FGSM/MAD attacks across eps"),
    "collect": (CollectSettings, cmd_collect, "roll out an agent into a StateDataset"),
    "explain": (ExplainSettings, cmd_explain, "PNG grid of frames and overlays"),
    "evaluate": (EvaluateSettings, cmd_evaluate, "metrics table (terminal, CSV, JSON)"),
    "counterfactual": (
        CounterfactualSettings,
        cmd_counterfactual,
        "remove the most salient region of the target's mask (VisionMask / Stalder Explainer): the agent's new "
        "action, a PNG per state",
    ),
    "bench": (
        BenchSettings,
        cmd_bench,
        "a spec's grid of jobs (agents x seeds x methods), resumable, in process or on Ray",
    ),
    "report": (ReportSettings, cmd_report, "self-contained HTML report of a bench results folder"),
    "watch": (WatchSettings, cmd_watch, "film one seeded episode: frame, overlays, action, probabilities"),
    "demo": (DemoSettings, cmd_demo, "the README's main job: agent, states, every method, metrics, report"),
}


def build_parser(lazy_train: bool = False) -> argparse.ArgumentParser:
    """The ``xrl`` parser: one subcommand per entry of :data:`COMMANDS` and ``train``, ``reproduce``
    and ``serve``, each made from its settings dataclass (:func:`xrl.settings.add_command`)."""
    p = argparse.ArgumentParser(
        prog="xrl",
        description="Saliency maps for RL agents that see images. "
        "--debug (anywhere on the line) shows tracebacks instead of one-line errors.",
    )
    p.add_argument(
        "--trust-pickle",
        action="store_true",
        help="let Stable-Baselines3 unpickle .zip files that cannot be rebuilt from their weights and "
        "JSON: this RUNS CODE from the file, use it only for files from a source you trust",
    )
    sub = p.add_subparsers(dest="command", required=True)
    for name, (cls, handler, help_) in COMMANDS.items():
        add_command(sub, name, cls, handler, help_)
    _train_commands(sub, lazy_train)
    from xrl.reproduce.cli import ReproduceSettings, cmd_reproduce  # the handler lives in xrl/reproduce

    add_command(sub, "reproduce", ReproduceSettings, cmd_reproduce, ReproduceSettings.HELP)
    from xrl.serve import ServeSettings, run  # the handler lives in xrl/serve (docs/serve.md)

    add_command(sub, "serve", ServeSettings, run, ServeSettings.HELP)
    return p


def main(argv: list[str] | None = None) -> int:
    if argv is None:  # the `xrl` command: its own process, so tune glibc's allocator (xrl.ops.tune_malloc)
        from xrl.ops import tune_malloc

        tune_malloc()
    argv = list(sys.argv[1:] if argv is None else argv)
    trust = "--trust-pickle" in argv  # accepted anywhere on the line (docs/artifacts.md)
    debug = "--debug" in argv  # tracebacks instead of one-line errors
    argv = [a for a in argv if a != "--debug"]
    words = [a for a in argv if a != "--trust-pickle"]
    # the trainers (and Stable-Baselines3) are imported only for `xrl train ...`
    args = build_parser(lazy_train=words[:1] != ["train"]).parse_args(words)
    if "--trust-pickle" in argv and hasattr(args, "trust_pickle"):  # xrl train agent/digr
        args.trust_pickle = True
    if getattr(args, "out", None) is not None and not str(args.out).strip():
        print(f"xrl {args.command}: error: --out {args.out!r}: expected a file or folder name", file=sys.stderr)
        return 2
    try:
        if trust:
            from xrl.agents.load import trusting_pickle

            with trusting_pickle():
                code = run_command(args) or 0
        else:
            code = run_command(args) or 0
        sys.stdout.flush()  # a closed pipe (xrl zoo | head -1) fails here, not at the interpreter's exit
        return code
    except BrokenPipeError:  # the reader went away (xrl zoo | head -1): stop quietly, as SIGPIPE would
        try:
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())  # the interpreter's last flush at exit must not fail again
        except (OSError, ValueError):
            pass
        return 141
    except EXPECTED as err:
        if debug:
            raise
        print(f"xrl {args.command}: error: {_message(err)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as err:  # Ctrl-C, or SIGTERM during a training run (xrl.train.run.Terminated)
        if debug:
            raise
        print(f"xrl {args.command}: {str(err) or 'interrupted'}", file=sys.stderr)
        return 143 if isinstance(err, Terminated) else 130


#: failures of a user's input or files (bad settings, missing or damaged files, a locked run
#: folder, a diverged training, memory beyond XRL_MAX_ALLOC_GB or the machine's): one line with the
#: path or setting, exit 2; anything else is a bug and keeps its traceback, a ``TypeError`` too (a
#: setting of the wrong type raises :class:`xrl.errors.SettingTypeError`, a ValueError). ``--debug``
#: shows the traceback of these too.
EXPECTED = (ValueError, OSError, RunLocked, FloatingPointError, EOFError, zipfile.BadZipFile, MemoryError)


def _message(err: BaseException) -> str:
    """The error's text, with the file name an OSError carries."""
    if isinstance(err, OSError) and err.filename and str(err.filename) not in str(err):
        return f"{err.filename}: {err.strerror or err}"
    return str(err) or type(err).__name__


if __name__ == "__main__":
    sys.exit(main())
