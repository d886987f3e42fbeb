"""The prepared GPU check (issue 40): every explainer x metric, and the trainers, on a device
against the CPU, in one run, without the zoo.

On small networks of the zoo's architectures (``nature_cnn`` and ``sparse_fls`` on 4x84x84
Atari states, ``grid_cnn`` on 3x64x64 Red-Fetch-Green states), randomly initialised here from a
fixed seed (the same weights on both devices), this script

- computes every registered explainer's maps on the CPU and on ``--device`` and checks they agree
  within 1e-4 relative (``max |a - b| / max |a|``) for deterministic methods; for seeded methods
  it records every random draw (a ``TorchFunctionMode``) on both runs and checks the draws are
  the same numbers, drawn on the CPU (the device rule, ``docs/architecture.md#devices``);
- computes every metric (lipschitz, sanity and time_per_map with the explainer) on the same
  CPU map on both devices (on the grid network and the attention network, to fit in 8 minutes) and checks the values agree within 1e-4 relative (time_per_map: only
  that it runs), and that values come back on the states' device;
- times each explainer on both devices (median of ``--repeats`` after a warm-up) and each
  trainer's unit of work: a 2,048-step PPO update (Stable-Baselines3 on Red-Fetch-Green), 100
  DIGR updates (IGR + distillation losses, Adam), one VisionMask epoch (256 states), 1,000 ACER
  steps (RExL's masking MDP), and prints the GPU/CPU speed ratio (CPU time / device time; > 1:
  the device is faster).

Run::

    .venv/bin/python benchmarks/gpu_check.py --device cuda            # the full check (< 8 min on one GPU)
    .venv/bin/python benchmarks/gpu_check.py --device cpu --tiny      # what the test suite runs

Writes ``--out`` (default ``benchmarks/results/gpu_check_<device>.json``) and a Markdown table
beside it; exits 1 when a check fails. ``--device cpu`` compares the CPU with itself: every
check must pass exactly, and the ratios are ~1 (the control).
"""

from __future__ import annotations

import argparse
import copy
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path

import gymnasium as gym
import torch
from torch import nn
from torch.overrides import TorchFunctionMode

import xrl
from xrl.agents.mask_nets import MaskNetwork
from xrl.agents.nets import ARCHS
from xrl.explainers import EXPLAINERS, get_explainer, list_explainers
from xrl.metrics import get_metric, list_metrics
from xrl.ops import resolve_device

sys.path.insert(0, str(Path(__file__).parent))
from common import RESULTS, write_with_table  # noqa: E402

TOLERANCE = 1e-4
#: the functions that draw from a generator
RANDOM = {
    torch.rand,
    torch.randn,
    torch.randint,
    torch.randperm,
    torch.bernoulli,
    torch.normal,
    torch.multinomial,
    torch.rand_like,
    torch.randn_like,
    torch.randint_like,
    torch.Tensor.uniform_,
    torch.Tensor.normal_,
    torch.Tensor.bernoulli_,
    torch.Tensor.random_,
    torch.Tensor.exponential_,
}

#: (architecture, input shape, actions) of the zoo's networks; tiny: one small grid network
NETWORKS = {"atari": ("nature_cnn", (4, 84, 84), 6), "grid": ("grid_cnn", (3, 64, 64), 3)}
TINY_NETWORKS = {"grid": ("grid_cnn", (3, 16, 16), 3)}
ATTENTION = ("sparse_fls", (4, 84, 84), 6)  # the attention explainer needs an attention network

#: explainer budgets: moderate for the full check (the timed work), tiny for the test suite
SETTINGS = {
    "rise": {"n_masks": 500},
    "lime": {"n_samples": 200, "segmentation": "grid"},
    "smoothgrad": {"n_samples": 16},
    "integrated_gradients": {"n_steps": 16},
    "extremal_perturbation": {"iterations": 50},
}
TINY_SETTINGS = {
    "rise": {"n_masks": 16},
    "lime": {"n_samples": 16, "segmentation": "grid", "cell": 4},
    "smoothgrad": {"n_samples": 4},
    "integrated_gradients": {"n_steps": 4},
    "extremal_perturbation": {"iterations": 3},
    "greydanus": {"stride": 3, "radius": 2.0},
    "sarfa": {"stride": 3, "radius": 2.0},
    "occlusion": {"window": 4, "stride": 4},
}
METRIC_SETTINGS = {"lipschitz": {"n_samples": 4}}
#: --tiny computes the metrics with these explainers only (all of them in the full check)
TINY_METRICS_WITH = ("gradient", "rise")


class Draws(TorchFunctionMode):
    """Records every random draw made while active: a CPU copy of what the generator gave and
    the device it was drawn on."""

    def __init__(self) -> None:
        super().__init__()
        self.log: list[tuple[str, torch.Tensor]] = []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if func in RANDOM:
            copy_ = out.detach().clone() if out.device.type == "meta" else out.detach().cpu().clone()  # meta: no data
            self.log.append((out.device.type, copy_))
        return out


def clear_caches() -> None:
    """Empty xrl's caches (masks, blur matrices, kernels): a run builds and draws its own."""
    for module in [m for name, m in sys.modules.items() if name.startswith("xrl.")]:
        for value in list(vars(module).values()):
            if callable(getattr(value, "cache_clear", None)) and getattr(value, "__module__", "") == module.__name__:
                value.cache_clear()


def network(arch: str, shape: tuple[int, int, int], n_actions: int, seed: int = 0) -> xrl.Model:
    """A randomly initialised policy of ``arch`` (its trunk + a linear head), on the CPU."""
    spec = ARCHS.get(arch)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        space = gym.spaces.Box(0, 255, shape, dtype="uint8")
        trunk = spec.features_extractor_class(space, **spec.features_extractor_kwargs)
        net = nn.Sequential(trunk, nn.Linear(trunk.features_dim, n_actions))
    return xrl.as_model(net, input_shape=shape).eval()


def on(model: xrl.Model, device: torch.device) -> xrl.Model:
    return copy.deepcopy(model).to(device)


def relative(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.detach().double().cpu(), b.detach().double().cpu()
    both = torch.isnan(a) & torch.isnan(b)
    a, b = torch.where(both, 0.0, a), torch.where(both, 0.0, b)
    return float((a - b).abs().max() / a.abs().max().clamp_min(1e-12))


def explainer_for(name: str, model: xrl.Model, settings: dict, device: torch.device, folder: Path):
    """``name`` for ``model`` (on ``device``) with what its requirements need, built the same way
    (same seeds) for every device."""
    cls = EXPLAINERS.get(name)
    extra: dict = {}
    if "mask_network" in getattr(cls, "requires", ()):
        extra["network"] = MaskNetwork.for_model(model, method=cls.method, reference="black").to(device)
    if "rexl_agent" in getattr(cls, "requires", ()):
        from xrl.train.rexl import untrained_agent

        path = folder / f"rexl-{model.fingerprint()[:12]}.pt"
        if not path.exists():
            untrained_agent(on(model, torch.device("cpu")), path, grid=4, extractor=nn.Flatten())
        extra["agent"] = str(path)
        extra["extractor"] = nn.Flatten()
    return get_explainer(name, model, **extra, **settings.get(name, {}))


def timed(fn, repeats: int) -> tuple[float, object]:
    out = fn()  # warm-up (and the result)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return (statistics.median(times) if times else float("nan")), out


def check_explainers(
    device: torch.device, tiny: bool, repeats: int, folder: Path, methods: list[str] | None = None
) -> list[dict]:
    cpu = torch.device("cpu")
    networks = TINY_NETWORKS if tiny else NETWORKS
    settings = TINY_SETTINGS if tiny else SETTINGS
    n_states = 2 if tiny else 4
    rows = []
    for name in methods or list_explainers():
        nets = {"attention": ATTENTION} if "attention" in getattr(EXPLAINERS.get(name), "requires", ()) else networks
        for net_name, (arch, shape, k) in nets.items():
            model = network(arch, shape, k)
            states = torch.rand(n_states, *shape, generator=torch.Generator(device="cpu").manual_seed(1), device="cpu")
            targets = torch.arange(n_states, device="cpu") % k
            labels = (states[:, 0] > 0.5).to(torch.int8)
            row: dict = {"method": name, "network": f"{net_name} ({arch})", "problems": []}
            row_started = time.perf_counter()
            result = []
            for dev in (cpu, device):
                clear_caches()  # each run draws and builds its own masks
                m = on(model, dev)
                explainer = explainer_for(name, m, settings, dev, folder)
                x, t = states.to(dev), targets.to(dev)
                with Draws() as draws:
                    seconds, saliency = timed(lambda e=explainer, x=x, t=t: e.explain(x, t), 0)
                seconds, _ = timed(lambda e=explainer, x=x, t=t: e.explain(x, t), repeats)
                if saliency.device != x.device:
                    row["problems"].append(f"map on {saliency.device} for states on {x.device}")
                result.append((m, explainer, saliency, draws.log, seconds))
            (m_cpu, explainer_cpu, map_cpu, draws_cpu, t_cpu), (m_dev, explainer_dev, map_dev, draws_dev, t_dev) = (
                result
            )
            row["seeded"] = bool(draws_cpu)
            row["map_relative_difference"] = relative(map_cpu, map_dev)
            if draws_cpu:
                same = len(draws_cpu) == len(draws_dev) and all(
                    a[0] == b[0] == "cpu" and torch.equal(a[1], b[1])
                    for a, b in zip(draws_cpu, draws_dev, strict=False)
                )
                row["same_draws"] = same
                if not same:
                    row["problems"].append("the seeded draws differ between the CPU and the device")
            elif row["map_relative_difference"] > TOLERANCE:
                row["problems"].append(f"maps differ by {row['map_relative_difference']:.2e} relative (> {TOLERANCE})")
            row["cpu_s"], row["device_s"] = t_cpu, t_dev
            row["ratio"] = t_cpu / t_dev if t_dev > 0 else float("nan")
            row["metrics"] = (
                {}  # metrics on one network per method (grid); the suite's run: with TINY_METRICS_WITH only
                if (tiny and name not in TINY_METRICS_WITH) or net_name == "atari"
                else check_metrics(m_cpu, explainer_cpu, m_dev, explainer_dev, states, map_cpu, targets, labels, device)
            )
            row["problems"] += [f"{m}: {p}" for m, r in row["metrics"].items() for p in r["problems"]]
            rows.append(row)
            print(
                f"{name:24s} {net_name:6s} rel {row['map_relative_difference']:.1e} ratio {row['ratio']:.2f}"
                f" ({time.perf_counter() - row_started:.1f} s)"
                f"{'  ' + '; '.join(row['problems']) if row['problems'] else ''}",
                flush=True,
            )
    return rows


def check_metrics(model_cpu, explainer_cpu, model_dev, explainer_dev, states, saliency, targets, labels, device):
    out = {}
    cpu = torch.device("cpu")
    for metric_name in list_metrics():
        metric = get_metric(metric_name, **METRIC_SETTINGS.get(metric_name, {}))
        values = []
        problems = []
        for dev, model, explainer in ((cpu, model_cpu, explainer_cpu), (device, model_dev, explainer_dev)):
            x = states.to(dev)
            v = metric(
                model=model,
                states=x,
                saliency=saliency.to(dev),
                targets=targets.to(dev),
                labels=labels.to(dev),
                explainer=explainer,
            )
            v = v if isinstance(v, dict) else {"value": v}
            if any(t.device != x.device for t in v.values()):
                problems.append(f"values on {[str(t.device) for t in v.values()]} for states on {x.device}")
            values.append(v)
        diff = max(relative(values[0][key].float(), values[1][key].float()) for key in values[0])
        if metric_name != "time_per_map" and diff > TOLERANCE:
            problems.append(f"values differ by {diff:.2e} relative (> {TOLERANCE})")
        out[metric_name] = {
            "relative_difference": diff if metric_name != "time_per_map" else None,
            "problems": problems,
        }
    return out


# ---------------------------------------------------------------- trainers


def ppo_update(device: torch.device, tiny: bool) -> None:
    """One PPO update: ``n_steps`` env steps (2,048; tiny: 64) and SB3's epochs over them."""
    from stable_baselines3 import PPO

    from xrl.envs import make_env

    env = make_env("red-fetch-green")
    n_steps = 64 if tiny else 2048
    algo = PPO(
        "CnnPolicy",
        env,
        n_steps=n_steps,
        batch_size=32 if tiny else 256,
        n_epochs=1 if tiny else 4,
        policy_kwargs={**ARCHS.get("grid_cnn").policy_kwargs(), "normalize_images": True},
        device=device,
        seed=0,
        verbose=0,
    )
    algo.learn(total_timesteps=n_steps)
    assert next(algo.policy.parameters()).device.type == device.type
    env.close()


def digr_updates(device: torch.device, tiny: bool) -> None:
    """DIGR's update (IGR loss on the teacher's maps + distillation, Adam), 100 times (tiny: 3)."""
    from xrl.train.digr import distillation_loss, igr_loss, policy_saliency

    shape = (3, 16, 16) if tiny else (3, 64, 64)
    teacher, student = on(network("grid_cnn", shape, 3, 0), device), on(network("grid_cnn", shape, 3, 1), device)
    states = torch.rand(32, *shape, generator=torch.Generator(device="cpu").manual_seed(2), device="cpu").to(device)
    maps = policy_saliency(teacher, states, create_graph=False).detach()
    optimiser = torch.optim.Adam(student.parameters(), lr=1e-4)
    for _ in range(3 if tiny else 100):
        loss = igr_loss(student, states, maps, 0.1) + distillation_loss(teacher, student, states)
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
    assert torch.isfinite(loss)


def visionmask_epoch(device: torch.device, tiny: bool) -> None:
    """One VisionMask epoch: 256 states (tiny: 8) in batches of 32 through the VisionMask loss."""
    from xrl.train.visionmask import VisionMaskArgs, visionmask_losses

    shape = (3, 16, 16) if tiny else (3, 64, 64)
    model = on(network("grid_cnn", shape, 3), device)
    for p in model.parameters():
        p.requires_grad_(False)
    mask_net = MaskNetwork.for_model(model, method="visionmask", reference="black").to(device)
    n = 8 if tiny else 256
    states = torch.rand(n, *shape, generator=torch.Generator(device="cpu").manual_seed(3), device="cpu").to(device)
    targets = torch.arange(n, device=device) % 3
    optimiser = torch.optim.Adam(mask_net.parameters(), lr=1e-4)
    args = VisionMaskArgs(agent="(random)", data="(random)")  # the loss settings: the paper's defaults
    for start in range(0, n, 32):
        loss = visionmask_losses(model, mask_net, states[start : start + 32], targets[start : start + 32], args)["loss"]
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
    assert torch.isfinite(loss)


def acer_steps(device: torch.device, tiny: bool) -> None:
    """1,000 ACER env steps (tiny: 10) of a RExL agent on the masking MDP (10 envs x 50 steps
    per update; tiny: 2 x 5)."""
    from xrl.agents.masking import MaskingBatch
    from xrl.agents.rexl import RExLAgent
    from xrl.train.acer import Acer, AcerSettings
    from xrl.train.rexl import MaskingVecEnv

    shape = (3, 16, 16) if tiny else (3, 64, 64)
    model = on(network("grid_cnn", shape, 3), device)
    for p in model.parameters():
        p.requires_grad_(False)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        agent = RExLAgent(nn.Flatten(), input_shape=shape, n_classes=3, grid=4, mode="ds", classes=[0, 1, 2])
    agent = agent.to(device)
    images = torch.rand(8, *shape, generator=torch.Generator(device="cpu").manual_seed(4), device="cpu").to(device)
    targets = torch.arange(8, device=device) % 3
    batch = MaskingBatch(model, images, grid=4, seed=0)
    n_envs, n_steps = (2, 5) if tiny else (10, 50)
    env = MaskingVecEnv(batch, agent, targets, torch.arange(8, device=device), n_envs, 0)
    acer = Acer(agent, env, AcerSettings(n_steps=n_steps, replay_start=n_envs * n_steps), seed=0)
    try:
        for _ in range((10 if tiny else 1000) // (n_envs * n_steps)):
            acer.update()
    finally:
        env.close()


def check_trainers(device: torch.device, tiny: bool, folder: Path) -> list[dict]:
    cpu = torch.device("cpu")
    trainers = {
        "ppo_update_2048_steps": lambda d: ppo_update(d, tiny),
        "digr_100_updates": lambda d: digr_updates(d, tiny),
        "visionmask_epoch": lambda d: visionmask_epoch(d, tiny),
        "acer_1000_steps": lambda d: acer_steps(d, tiny),
    }
    rows = []
    for name, run in trainers.items():
        row: dict = {"trainer": name, "problems": []}
        for key, dev in (("cpu_s", cpu), ("device_s", device)):
            try:
                if tiny:  # one run, timed
                    start = time.perf_counter()
                    run(dev)
                    row[key] = time.perf_counter() - start
                else:
                    row[key], _ = timed(lambda d=dev: run(d), 1)  # a warm-up run, then one timed
            except Exception as error:  # reported, not hidden: the check fails
                row["problems"].append(f"on {dev}: {type(error).__name__}: {error}")
                row[key] = float("nan")
        row["ratio"] = row["cpu_s"] / row["device_s"] if row["device_s"] > 0 else float("nan")
        print(f"{name:24s} ratio {row['ratio']:.2f} {'; '.join(row['problems'])}", flush=True)
        rows.append(row)
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="auto", help="auto|cpu|cuda|cuda:N (default auto)")
    parser.add_argument("--tiny", action="store_true", help="tiny networks and budgets (the test suite's run)")
    parser.add_argument("--repeats", type=int, default=None, help="timed repeats per method (default 3; tiny 1)")
    parser.add_argument("--skip-trainers", action="store_true", help="explainers and metrics only")
    parser.add_argument("--methods", default=None, help="comma-separated explainers (default: every registered one)")
    parser.add_argument("--out", default=None, help="result JSON (default benchmarks/results/gpu_check_<device>.json)")
    args = parser.parse_args(argv)
    device = resolve_device(args.device)
    repeats = args.repeats if args.repeats is not None else (1 if args.tiny else 3)
    warnings.filterwarnings("ignore")
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as folder:
        methods = [m.strip() for m in args.methods.split(",")] if args.methods else None
        explainers = check_explainers(device, args.tiny, repeats, Path(folder), methods)
        trainers = [] if args.skip_trainers else check_trainers(device, args.tiny, Path(folder))
    card = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    failed = [r for r in explainers + trainers if r["problems"]]
    result = {
        "device": str(device),
        "card": card,
        "tiny": args.tiny,
        "torch": torch.__version__,
        "seconds": time.perf_counter() - started,
        "tolerance": TOLERANCE,
        "explainers": explainers,
        "trainers": trainers,
        "failed": len(failed),
    }
    lines = [
        f"GPU check on {card} ({device}) against the CPU{' (tiny)' if args.tiny else ''}: ratio = CPU time / device time",
        "",
        "| method | network | seeded | map rel. diff | same draws | ratio | problems |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in explainers:
        lines.append(
            f"| {r['method']} | {r['network']} | {'yes' if r['seeded'] else 'no'} | {r['map_relative_difference']:.1e} "
            f"| {r.get('same_draws', '')} | {r['ratio']:.2f} | {'; '.join(r['problems'])} |"
        )
    if trainers:
        lines += ["", "| trainer | CPU s | device s | ratio | problems |", "|---|---|---|---|---|"]
        for r in trainers:
            lines.append(
                f"| {r['trainer']} | {r['cpu_s']:.2f} | {r['device_s']:.2f} | {r['ratio']:.2f} | {'; '.join(r['problems'])} |"
            )
    out = Path(args.out) if args.out else RESULTS / f"gpu_check_{str(device).replace(':', '')}.json"
    write_with_table(out, result, lines)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
