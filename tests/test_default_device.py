"""The device rule (docs/architecture.md#devices), tested without a GPU.

Every tensor factory, generator and module in xrl names its device: the states' (or model's)
device for computation, or ``"cpu"`` where a result must be the same on every device. With the
default device set to ``meta`` around the call and the model and states on the CPU, any tensor
created without naming its device lands on ``meta`` and the call fails (meta tensors hold no
data: mixing one with a CPU tensor raises, reading one raises). That is the bug class "tensor on
cpu, expected cuda" a GPU run would hit, found on a CPU-only machine.
"""

from __future__ import annotations

import math
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from test_explainers import NAMES, SHAPE, make, states, tiny_model
from torch.overrides import TorchFunctionMode

from xrl.metrics import get_metric, list_metrics
from xrl.metrics.faithfulness import Substrate

#: tiny budgets on top of the contract tests' SETTINGS, so the whole file runs in a few seconds
FAST = {
    "rise": {"n_masks": 16},
    "lime": {"n_samples": 16},
    "smoothgrad": {"n_samples": 4},
    "integrated_gradients": {"n_steps": 4},
    "extremal_perturbation": {"iterations": 3},
}
METRIC_SETTINGS = {"lipschitz": {"n_samples": 3}}
#: Cases that still create a tensor on the default device, each waiting for a small edit in a
#: file another change is open on: {name: the edit}; each is marked xfail (remove it when made).
PENDING: dict[str, str] = {}


def pending(name):
    """``name`` as a parameter, marked xfail while its edit is pending."""
    if name not in PENDING:
        return name
    return pytest.param(name, marks=pytest.mark.xfail(raises=NotImplementedError, reason=f"pending: {PENDING[name]}"))


#: targets in every form the contract tests use
TARGETS = {"none": None, "int": 1, "tensor": torch.tensor([0, 2, 1])}


@pytest.fixture(autouse=True)
def cold_caches():
    """Empty xrl's caches (masks, blur matrices, kernels) so the meta call builds them itself: a
    cache filled by an earlier CPU call would hide a factory that names no device."""

    def clear():
        for module in [m for name, m in sys.modules.items() if name.startswith("xrl.")]:
            for value in list(vars(module).values()):
                if (
                    callable(getattr(value, "cache_clear", None))
                    and getattr(value, "__module__", "") == module.__name__
                ):
                    value.cache_clear()

    clear()
    yield
    clear()


def on_meta_default(call):
    """Run ``call()`` with the default device set to ``meta``."""
    with torch.device("meta"):
        return call()


def test_the_meta_default_catches_an_unnamed_device():
    """The control: a computation that creates a tensor without naming its device fails here,
    the same computation naming the states' device runs."""
    x = states()
    with pytest.raises((RuntimeError, NotImplementedError)):
        on_meta_default(lambda: (x * torch.ones(x.shape[-2:])).sum().item())
    assert on_meta_default(lambda: (x * torch.ones(x.shape[-2:], device=x.device)).sum().item()) > 0


@pytest.mark.parametrize("target", list(TARGETS))
@pytest.mark.parametrize("name", [pending(n) for n in NAMES])
def test_explainer_names_its_devices(name, target):
    model, x = tiny_model(name), states()
    explainer = make(name, model, **FAST.get(name, {}))
    saliency = on_meta_default(lambda: explainer.explain(x, targets=TARGETS[target]))  # first: caches are cold
    expected = explainer.explain(x, targets=TARGETS[target])
    assert saliency.device == x.device
    torch.testing.assert_close(saliency, expected, rtol=1e-5, atol=1e-6)  # the same map, not just a map
    if target == "none":
        maps = on_meta_default(lambda: explainer.explain_all(x))
        assert maps.device == x.device and maps.shape == (3, model.n_actions, *x.shape[-2:])


@pytest.mark.parametrize("name", [pending(n) for n in list_metrics()])
def test_metric_names_its_devices(name):
    model, x = tiny_model(), states()
    explainer = make("gradient", model)
    saliency = explainer.explain(x)
    labels = (torch.rand(x.shape[0], *x.shape[-2:], generator=torch.Generator().manual_seed(2)) > 0.5).to(torch.int8)
    metric = get_metric(name, **METRIC_SETTINGS.get(name, {}))
    kwargs = dict(model=model, states=x, saliency=saliency, labels=labels, explainer=explainer)
    kwargs["targets"] = torch.tensor([0, 2, 1])
    out = on_meta_default(lambda: metric(**kwargs))  # first: caches are cold
    values = out if isinstance(out, dict) else {"value": out}
    for key, v in values.items():
        assert v.device == x.device, key
    if name != "time_per_map":  # a time is not a function of the inputs
        again = metric(**kwargs)
        again = again if isinstance(again, dict) else {"value": again}
        for key, v in values.items():
            torch.testing.assert_close(v, again[key], equal_nan=True, msg=key)


# ---------------------------------------------------------------- seeded draws: the same on every device

# the random draws recorded: the same set the prepared GPU check records (benchmarks/gpu_check.py)
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))
from gpu_check import RANDOM  # noqa: E402


class Draws(TorchFunctionMode):
    """Records every random draw made while active: a copy of what the generator gave."""

    def __init__(self) -> None:
        super().__init__()
        self.log: list[torch.Tensor] = []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if func in RANDOM:
            self.log.append(out.detach().clone())
        return out


def draws_for(make_on):
    """``(draws, result)`` of ``make_on(device)`` for ``cpu`` and ``meta`` (the stand-in for a GPU)."""
    runs = {}
    for device in ("cpu", "meta"):
        for module in [m for name, m in sys.modules.items() if name.startswith("xrl.")]:  # cold caches
            for value in list(vars(module).values()):
                if (
                    callable(getattr(value, "cache_clear", None))
                    and getattr(value, "__module__", "") == module.__name__
                ):
                    value.cache_clear()
        with Draws() as log:
            result = make_on(torch.device(device))
        runs[device] = (log.log, result)
    return runs


def _sanity_fresh(device):
    model = tiny_model()
    model.net.to(device)
    return get_metric("sanity", seed=4)._fresh(model, ["head", "conv"])


def smoothgrad_noise(device):
    """The noise SmoothGrad adds, for states on ``device``: captured where it is drawn."""
    explainer = make("smoothgrad", tiny_model(), n_samples=4, seed=2)
    with Draws() as inner:
        try:
            explainer._average(states().to(device), None)
        except (NotImplementedError, RuntimeError, AttributeError):  # meta states stop after the draw
            pass
    return inner.log[0].to(device)


def _masking_noise(device, noise):
    from xrl.agents.masking import MaskingBatch

    model, x = tiny_model(), states()
    batch = MaskingBatch(model, x, grid=4, noise=noise, seed=5)
    batch.images = x.to(device)  # the batch's images on the device (a meta model cannot be validated)
    return batch.draw_noise(2)


#: the seeded mask/noise makers, each asked for a device (LIME is not here: its draws follow the
#: superpixels, read from the states' values, which meta states do not hold)
SEEDED = {
    "rise": lambda d: make("rise", tiny_model(), n_masks=8, seed=7).masks(12, 12, d),
    "rise-torchray": lambda d: make("rise", tiny_model(), n_masks=8, preset="torchray", seed=7).masks(12, 12, d),
    "deletion-noise-substrate": lambda d: Substrate("noise", seed=3)(states().to(d)),
    "smoothgrad": lambda d: smoothgrad_noise(d),
    "lipschitz": lambda d: get_metric("lipschitz", n_samples=3, seed=6).noise(SHAPE).to(d),
    "sanity": _sanity_fresh,
    "masking-uniform": lambda d: _masking_noise(d, "uniform"),
    "masking-gaussian": lambda d: _masking_noise(d, "gaussian"),
}


@pytest.mark.parametrize("case", list(SEEDED))
def test_seeded_draws_are_the_same_on_every_device(case):
    """A seeded method draws its masks/noise on the CPU from its seeded generator and moves the
    result: asked for the CPU and for another device, the generator gives the same numbers (a
    draw made on the device would be on ``meta`` here and hold no numbers), and the result is
    on the device asked for."""
    runs = draws_for(SEEDED[case])
    cpu_draws, cpu_result = runs["cpu"]
    meta_draws, meta_result = runs["meta"]
    assert cpu_draws, "the control: the case draws something"
    assert all(d.device.type == "cpu" for d in meta_draws), [d.device for d in meta_draws]
    assert len(meta_draws) == len(cpu_draws)
    assert all(torch.equal(a, b) for a, b in zip(cpu_draws, meta_draws, strict=True))
    assert all(t.device.type == "meta" for t in tensors(meta_result))
    assert [t.shape for t in tensors(meta_result)] == [t.shape for t in tensors(cpu_result)]


def tensors(result):
    """The tensors of a case's result (a tensor, or sanity's ``{layer: [tensors]}``)."""
    return [t for ts in result.values() for t in ts] if isinstance(result, dict) else [result]


# ---------------------------------------------------------------- the device a user names


def test_resolve_device(monkeypatch):
    from xrl.ops import resolve_device

    assert resolve_device("cpu") == torch.device("cpu") and resolve_device(torch.device("meta")).type == "meta"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 0)
    assert resolve_device("auto") == torch.device("cpu")
    with pytest.raises(ValueError, match="no CUDA device; use 'cpu' or 'auto'"):
        resolve_device("cuda")
    for bad in ("gpu", "mps", "cuda:x", 2.5):
        with pytest.raises(ValueError, match="'auto', 'cpu', 'cuda' or 'cuda:N'"):
            resolve_device(bad)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert resolve_device("AUTO") == torch.device("cuda") and resolve_device("cuda:1") == torch.device("cuda", 1)
    with pytest.raises(ValueError, match=r"'cuda:2' is not available: this machine has 2 CUDA device\(s\)"):
        resolve_device("cuda:2")


def test_load_takes_a_device(monkeypatch):
    import xrl

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 0)
    model = xrl.load_agent("red-fetch-green", device="auto")
    assert {p.device for p in model.parameters()} == {torch.device("cpu")}
    assert {p.device for p in xrl.load("red-fetch-green", device=torch.device("cpu")).parameters()} == {
        torch.device("cpu")
    }
    for load in (xrl.load_agent, xrl.load):
        with pytest.raises(ValueError, match="no CUDA device; use 'cpu' or 'auto'"):
            load("red-fetch-green", device="cuda:0")
        with pytest.raises(ValueError, match="'auto', 'cpu', 'cuda' or 'cuda:N'"):
            load("red-fetch-green", device="gpu")


@pytest.mark.parametrize("name", ["fgsm", "pgd", "mi_fgsm", "mad"])
def test_attack_step_names_its_devices(name):
    from xrl.attacks.attacks import get_attack, list_attacks

    assert name in list_attacks()
    model, x = tiny_model(), states()
    attack = get_attack(name, model, eps=0.05, seed=1)
    adversarial = on_meta_default(lambda: attack(x))
    attack.reseed(1)
    assert adversarial.device == x.device
    torch.testing.assert_close(adversarial, attack(x))


# ---------------------------------------------------------------- one update of every trainer


def _digr_update():
    from xrl.train.digr import distillation_loss, igr_loss, policy_saliency

    teacher, student, x = tiny_model(), tiny_model(), states()
    maps = policy_saliency(teacher, x, create_graph=False).detach()
    optimiser = torch.optim.Adam(student.parameters(), lr=1e-3)

    def step():
        loss = igr_loss(student, x, maps, 0.1) + distillation_loss(teacher, student, x)
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        return loss

    return step


def _mask_update(method):
    from xrl.agents.mask_nets import MaskNetwork
    from xrl.train.visionmask import StalderArgs, VisionMaskArgs, stalder_losses, visionmask_losses

    model, x = tiny_model(), states()
    for p in model.parameters():
        p.requires_grad_(False)
    network = MaskNetwork.for_model(model, method=method, reference="black")
    optimiser = torch.optim.Adam(network.parameters(), lr=1e-3)
    targets = torch.tensor([0, 2, 1])
    if method == "visionmask":
        losses, args = visionmask_losses, VisionMaskArgs(agent="-", data="-")
    else:
        losses, args = stalder_losses, StalderArgs(agent="-", data="-")

    def step():
        loss = losses(model, network, x, targets, args)["loss"]
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        return loss

    return step


def _acer_update():
    from torch import nn

    from xrl.agents.masking import MaskingBatch
    from xrl.agents.rexl import RExLAgent
    from xrl.train.acer import Acer, AcerSettings
    from xrl.train.rexl import MaskingVecEnv

    model, x = tiny_model(), states()
    for p in model.parameters():
        p.requires_grad_(False)
    torch.manual_seed(0)
    agent = RExLAgent(nn.Flatten(), input_shape=SHAPE, n_classes=3, grid=4, mode="ds", classes=[0, 1, 2])
    batch = MaskingBatch(model, x, grid=4, seed=0)
    env = MaskingVecEnv(batch, agent, torch.tensor([0, 2, 1]), torch.arange(3), 2, 0)
    acer = Acer(agent, env, AcerSettings(n_steps=5, replay_start=10, replay_ratio=1.0), seed=0)
    acer.update()  # fills the buffer: the next update replays too

    def step():
        return acer.update()["policy_loss"]  # a float

    return step


def _ppo_update():
    """One PPO update (Stable-Baselines3, on its own ``device=``) of an xrl architecture on an xrl env."""
    from stable_baselines3 import PPO

    from xrl.agents.nets import ARCHS
    from xrl.envs import make_env

    env = make_env("red-fetch-green")
    kwargs = ARCHS.get("grid_cnn").policy_kwargs()
    algo = PPO("CnnPolicy", env, n_steps=16, batch_size=8, n_epochs=1, policy_kwargs=kwargs, device="cpu", seed=0)

    def step():
        algo.learn(16)
        return float(algo.logger.name_to_value.get("train/loss", 0.0))

    return step


TRAINERS = {
    "ppo": _ppo_update,
    "digr": _digr_update,
    "visionmask": lambda: _mask_update("visionmask"),
    "stalder": lambda: _mask_update("stalder"),
    "acer": _acer_update,
}


@pytest.mark.parametrize("trainer", list(TRAINERS))
def test_trainer_update_names_its_devices(trainer):
    """One update of the trainer, networks built outside, the update with the meta default."""
    step = TRAINERS[trainer]()
    loss = on_meta_default(step)
    if isinstance(loss, torch.Tensor):
        assert loss.device.type == "cpu"
    assert math.isfinite(float(loss))


# ---------------------------------------------------------------- an evaluation (what a bench job runs)


def test_evaluation_names_its_devices(tmp_path):
    from test_evaluation import write_dataset
    from torch import nn

    from xrl.agents.model import as_model
    from xrl.data.dataset import StateDataset
    from xrl.evaluation import evaluate

    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 6 * 6, 3))
    model = as_model(net, input_shape=(3, 8, 8), action_names=["left", "fire", "right"])
    path = write_dataset(tmp_path / "states.h5", model, labels=True)
    methods, metrics = {"gradient": {}, "rise": {"n_masks": 8}}, ["sparseness", "localization", "deletion"]
    with StateDataset.open(path) as ds:
        on_meta = on_meta_default(lambda: evaluate(model, ds, methods, metrics, n_states=4, progress=False))
        expected = evaluate(model, ds, methods, metrics, n_states=4, progress=False)
    assert on_meta.rows == expected.rows and on_meta.columns == expected.columns
    for method in methods:
        for column in expected.columns:
            np.testing.assert_allclose(on_meta.values[method][column], expected.values[method][column], rtol=1e-6)


BENCH = """\
name = "meta"
seeds = [0]
n_states = 2
gallery = 0
methods = ["gradient", "rise"]
metrics = ["deletion", "sparseness", "localization"]

[[agents]]
agent = "red-fetch-green"
episodes = 1
max_steps = 4

[method_settings.rise]
n_masks = 8
"""


def test_a_bench_job_names_its_devices(tmp_path):
    """A whole bench run (agent loaded from the zoo, states collected, maps, metrics): the same
    results with the meta default as without."""
    import json

    from test_bench import comparable, same_maps, write_spec

    from xrl.bench.runner import run_bench

    spec = write_spec(tmp_path, BENCH)
    on_meta = on_meta_default(lambda: run_bench(spec, tmp_path / "meta", progress=False))
    plain = run_bench(spec, tmp_path / "plain", progress=False)
    docs = [json.loads((Path(out) / "results.json").read_text()) for out in (on_meta, plain)]
    assert comparable(docs[0]) == comparable(docs[1])
    same_maps(Path(on_meta), Path(plain))


def _serve_maps(tmp_path, methods: list[str]) -> dict:
    """Maps of step 1 of the zoo agent's seed-0 episode, one ``xrl serve`` request per method
    (the engine's own lanes: recording the episode and computing each map)."""
    from xrl.serve.engine import Engine, Job

    def done(value):
        if isinstance(value, Job):
            engine.wait(value, timeout=300)
            assert value.state == "done", value.error
            return value.result
        return value

    engine = Engine(cache=tmp_path, max_steps=8)
    try:
        agent = engine.agent_id("red-fetch-green")
        done(engine.episode(agent, 0))
        episode = done(engine.episode(agent, 0))
        return {
            m: done(engine.saliency(episode, 1, engine.method(agent, m), FAST.get(m, {}), None, [])) for m in methods
        }
    finally:
        engine.close()


def test_a_serve_map_request_names_its_devices(tmp_path, monkeypatch):
    """``xrl serve``: an episode recorded and maps computed in the engine's worker threads with the
    default device set to meta there (a thread's default device is its own) equal the plain ones."""
    from xrl.serve import engine as engine_module

    methods = ["gradient", "grad_cam", "rise"]
    plain = _serve_maps(tmp_path / "plain", methods)
    run = engine_module.Lane._run
    monkeypatch.setattr(engine_module.Lane, "_run", lambda self: on_meta_default(lambda: run(self)))
    on_meta = _serve_maps(tmp_path / "meta", methods)
    for m in methods:
        np.testing.assert_allclose(on_meta[m], plain[m], rtol=1e-6, atol=1e-8)


def test_a_learned_explainers_network_follows_the_model():
    """A VisionMask / Stalder network read from a file goes where the agent computes (here the
    ``meta`` device stands in for a GPU: the agent's weights moved there hold no data, so the
    agent check, which reads them, is off)."""
    from xrl import get_explainer, load_agent
    from xrl.agents.load import ZOO_DIR

    model = load_agent("red-fetch-green").to("meta")
    assert model.device.type == "meta"
    for method in ("visionmask", "stalder_explainer"):
        path = ZOO_DIR / "red-fetch-green-visionmask" / f"{method}.pt"
        network = get_explainer(method, model, network=path, check_agent=False).network
        assert {p.device.type for p in network.parameters()} == {"meta"}, method
