"""Time per map of every registered explainer, next to its floor and to Captum's implementation.

On one Nature-CNN policy (6 actions) and ``--states`` random 84x84x4 states, in one run:

- ``xrl``   : ``get_explainer(name, model).explain(states)`` with default settings, time per map;
- ``floor`` : the same work done by the network alone. While ``xrl`` runs, a hook counts the rows
  that go through the network, and whether gradients were taken; the floor puts as many rows
  through one batched forward pass (inference mode) or forward + backward (when the method
  takes gradients), in chunks of the method's ``batch_size`` (forward-only methods: of the
  largest call the method made, its chunk on the CPU); for the optimising methods of
  ``STEPWISE`` (extremal perturbation: each step needs the previous one) in calls of
  ``min(states, batch_size)`` rows, one forward + backward of all the chunk's states per step;
- ``captum``: where Captum has the method, Captum's own implementation with the same settings
  (same number of samples/steps/windows), called the way its documentation shows.

Writes ``benchmarks/results/methods.json`` and prints a table. Targets (issue 3): every
perturbation method within 2x of its floor; no method slower than its Captum counterpart.
Run::

    .venv/bin/python benchmarks/bench_methods.py [--states 16] [--repeats 5] [--methods a,b]
    .venv/bin/python benchmarks/bench_methods.py --methods perturbation --threads 1,2 [--malloc default]

``--threads 1,2`` times each method at each thread count in this one process and writes
``results/methods_threads.json`` (``methods_threads_default_malloc.json`` with ``--malloc
default``: glibc's own allocator settings instead of :func:`xrl.ops.tune_malloc`, which the CLI
applies).

``--methods a,b`` reruns those methods and keeps the other rows of ``results/methods.json``
(each row says whether it comes from this run or an earlier one). ``--out NAME`` writes
``results/NAME.json`` instead.
"""

from __future__ import annotations

import argparse
import json
import statistics
import warnings
from collections.abc import Callable

import torch
from common import RESULTS, interleaved, nature_cnn_policy, write_result

import xrl


class RowCounter:
    """Counts rows through ``module``'s forward: with and without autograd."""

    def __init__(self, module: torch.nn.Module) -> None:
        self.grad_rows = self.nograd_rows = 0
        self.largest_nograd_call = 0  # rows of the largest forward-only call (the method's chunk)
        self.handle = module.register_forward_hook(self.hook)

    def hook(self, module, inputs, output) -> None:
        n = inputs[0].shape[0]
        if torch.is_grad_enabled() and (inputs[0].requires_grad or output.requires_grad):
            self.grad_rows += n
        else:
            self.nograd_rows += n
            self.largest_nograd_call = max(self.largest_nograd_call, n)

    def close(self) -> None:
        self.handle.remove()


def floor(model: xrl.Model, nograd_rows: int, grad_rows: int, batch_size: int) -> Callable[[], None]:
    """The network alone: ``nograd_rows`` forward rows and ``grad_rows`` forward+backward rows."""
    nograd = torch.rand(min(nograd_rows, batch_size), *model.input_shape)
    grad = torch.rand(min(grad_rows, batch_size), *model.input_shape)

    def run() -> None:
        with torch.inference_mode():
            for start in range(0, nograd_rows, batch_size):
                model(nograd[: min(batch_size, nograd_rows - start)])
        for start in range(0, grad_rows, batch_size):
            x = grad[: min(batch_size, grad_rows - start)].clone().requires_grad_(True)
            torch.autograd.grad(model(x)[:, 0].sum(), x)  # input gradient only, as the methods need

    return run


def captum_counterpart(name: str, explainer, model: xrl.Model, states: torch.Tensor, targets: torch.Tensor):
    """Captum's implementation of ``name`` with ``explainer``'s settings, or None."""
    from captum import attr

    net = model
    bs = explainer.batch_size
    if name == "gradient":
        return lambda: attr.Saliency(net).attribute(states.clone().requires_grad_(), target=targets)
    if name == "guided_backprop":
        return lambda: attr.GuidedBackprop(net).attribute(states.clone().requires_grad_(), target=targets)
    if name == "grad_cam":
        layer = dict(model.net.named_modules())[explainer.layer]

        def cam():
            maps = attr.LayerGradCam(net, layer).attribute(states, target=targets)
            return attr.LayerAttribution.interpolate(maps, states.shape[-2:], "bilinear")

        return cam
    if name == "integrated_gradients":
        return lambda: attr.IntegratedGradients(net).attribute(
            states, baselines=0.0, target=targets, n_steps=explainer.n_steps, internal_batch_size=bs
        )
    if name == "smoothgrad":
        return lambda: attr.NoiseTunnel(attr.Saliency(net)).attribute(
            states.clone().requires_grad_(),
            nt_type="smoothgrad",
            nt_samples=explainer.n_samples,
            nt_samples_batch_size=max(1, bs // states.shape[0]),
            stdevs=explainer.sigma,
            target=targets,
        )
    if name == "occlusion" and hasattr(explainer, "window"):
        c = states.shape[1]
        return lambda: attr.Occlusion(net).attribute(
            states,
            sliding_window_shapes=(c, explainer.window, explainer.window),
            strides=(c, explainer.stride, explainer.stride),
            baselines=0.0,
            target=targets,
            perturbations_per_eval=bs,
        )
    if name == "lime" and hasattr(explainer, "n_samples"):
        return None  # Captum's Lime needs a feature mask per state; compared in the lime tests instead
    return None


def time_method(
    name: str, explainer, model: xrl.Model, states: torch.Tensor, targets: torch.Tensor, repeats: int
) -> dict:
    """Time per map of ``explainer`` next to its floor and Captum's counterpart; prints a row."""
    counter = RowCounter(model.net)
    explainer.explain(states, targets)
    counter.close()
    chunk = explainer.batch_size
    if counter.grad_rows == 0 and counter.largest_nograd_call:
        # the chunks the method formed: on the CPU at most RESIDENT_BYTES of states, fewer rows
        # than batch_size for large states (xrl.explainers.perturbation)
        chunk = counter.largest_nograd_call
    if name in STEPWISE:  # each step needs the previous one: at most the chunk's states per call
        chunk = min(chunk, states.shape[0])
    candidates = {
        "xrl": lambda: explainer.explain(states, targets),
        "floor": floor(model, counter.nograd_rows, counter.grad_rows, chunk),
    }
    theirs = captum_counterpart(name, explainer, model, states, targets)
    if theirs is not None:
        candidates["captum"] = theirs
    times = interleaved(candidates, repeats)
    n = states.shape[0]
    per_map = {k: min(v) / n for k, v in times.items()}
    row = {
        "seconds_per_map": per_map,
        "seconds_per_map_median": {k: statistics.median(v) / n for k, v in times.items()},
        "forward_rows": counter.nograd_rows,
        "forward_backward_rows": counter.grad_rows,
        "ratio_to_floor": per_map["xrl"] / per_map["floor"] if counter.nograd_rows + counter.grad_rows else None,
        "ratio_to_floor_median": (
            statistics.median(times["xrl"]) / statistics.median(times["floor"])
            if counter.nograd_rows + counter.grad_rows
            else None
        ),
        "ratio_to_captum": per_map["xrl"] / per_map["captum"] if "captum" in per_map else None,
        "perturbation": counter.grad_rows == 0,
        "batch_size": explainer.batch_size,
        "floor_rows_per_call": chunk,
    }
    cap = (
        f"{per_map['captum'] * 1e3:9.2f} {row['ratio_to_captum']:10.2f}"
        if "captum" in per_map
        else f"{'-':>9s} {'-':>10s}"
    )
    ratio = f"{row['ratio_to_floor']:9.2f}" if row["ratio_to_floor"] is not None else f"{'-':>9s}"
    print(
        f"  {name:22s} {per_map['xrl'] * 1e3:9.2f} {per_map['floor'] * 1e3:9.2f} "
        f"{ratio} {cap}  ({counter.nograd_rows}, {counter.grad_rows})"
    )
    return row


#: methods whose network calls depend on each other (an optimisation): their floor puts the same
#: rows through the network in calls of one row per state of a chunk (one forward + backward of
#: all states per step), not in chunks of ``batch_size`` rows, which the method cannot form
STEPWISE = ("extremal_perturbation",)
PERTURBATION = ("occlusion", "greydanus", "sarfa", "rise", "lime", "extremal_perturbation")


def time_methods(names: list[str], model: xrl.Model, states: torch.Tensor, targets: torch.Tensor, repeats: int) -> dict:
    rows = {}
    print(
        f"Nature CNN, {len(states)} x (4, 84, 84), {torch.get_num_threads()} threads; "
        f"ms per map (min of {repeats} interleaved rounds)"
    )
    print(
        f"  {'method':22s} {'xrl':>9s} {'floor':>9s} {'xrl/floor':>9s} {'captum':>9s} {'xrl/captum':>10s}  rows(fwd, fwd+bwd)"
    )
    attention_model = None
    for name in names:
        cls, target_model, settings = xrl.explainers.EXPLAINERS.get(name), model, {}
        requires = getattr(cls, "requires", ())
        if "attention" in requires:
            # methods that need an attention agent are timed on the Sparse FLS variant of the trunk
            attention_model = attention_model or nature_cnn_policy(arch="sparse_fls")
            target_model = attention_model
        if "mask_network" in requires:
            # learned explainers: an untrained network of the default architecture costs what a
            # trained one does (one forward pass for all actions)
            from xrl.agents.mask_nets import MaskNetwork

            settings = {"network": MaskNetwork.for_model(model, method=cls.method, reference="black")}
        rows[name] = time_method(
            name, xrl.get_explainer(name, target_model, **settings), target_model, states, targets, repeats
        )
        if target_model is attention_model:
            rows[name]["model"] = "sparse_fls + linear(512, 6)"
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--states", type=int, default=16, help="states per explain call")
    parser.add_argument("--repeats", type=int, default=5, help="timed rounds")
    parser.add_argument(
        "--methods",
        default=None,
        help="comma-separated; 'perturbation' = the perturbation family; default every registered method",
    )
    parser.add_argument(
        "--threads",
        default=None,
        help="comma-separated thread counts, each timed in this process (default: torch's); "
        "results go to results/methods_threads.json",
    )
    parser.add_argument(
        "--malloc",
        choices=("tuned", "default"),
        default="tuned",
        help="tuned: xrl.ops.tune_malloc() as the CLI does; default: glibc's own settings",
    )
    parser.add_argument("--out", default=None, help="results/<OUT>.json instead of the default name")
    args = parser.parse_args()

    from xrl.ops import tune_malloc

    tuned = tune_malloc() if args.malloc == "tuned" else False
    warnings.filterwarnings("ignore", message="Setting backward hooks on ReLU")  # Captum's, every call
    torch.manual_seed(0)
    model = nature_cnn_policy()
    states = torch.rand(args.states, 4, 84, 84)
    with torch.no_grad():
        targets = model(states).argmax(-1)  # given to every implementation (same work for all)
    if args.methods == "perturbation":
        names = list(PERTURBATION)
    else:
        names = args.methods.split(",") if args.methods else xrl.list_explainers()

    if args.threads:
        import os

        per_threads = {}
        for threads in (int(t) for t in args.threads.split(",")):
            torch.set_num_threads(threads)
            per_threads[threads] = time_methods(names, model, states, targets, args.repeats)
        result = {
            "model": "nature_cnn + linear(512, 6)",
            "state_shape": [4, 84, 84],
            "states": args.states,
            "torch": torch.__version__,
            "repeats": args.repeats,
            "malloc": "tuned" if tuned else "default",
            "load_average_at_start": os.getloadavg(),
            "ratio_to_floor": {t: {n: r["ratio_to_floor"] for n, r in rows.items()} for t, rows in per_threads.items()},
            "by_threads": per_threads,
        }
        name = args.out or ("methods_threads" if tuned else "methods_threads_default_malloc")
        print(f"wrote {write_result(name, result)}")
        return

    rows = time_methods(names, model, states, targets, args.repeats)
    previous = RESULTS / f"{args.out or 'methods'}.json"
    if args.methods and previous.exists():  # a rerun of some methods keeps the others' rows
        kept = json.loads(previous.read_text())["methods"]
        rows = {
            **{k: {**v, "run": v.get("run", "earlier run")} for k, v in kept.items()},
            **{k: {**v, "run": "this run"} for k, v in rows.items()},
        }
        rows = dict(sorted(rows.items()))
    perturbation = {n: r for n, r in rows.items() if r["perturbation"] and r["forward_rows"] > 0}
    result = {
        "model": "nature_cnn + linear(512, 6)",
        "state_shape": [4, 84, 84],
        "states": args.states,
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "repeats": args.repeats,
        "malloc": "tuned" if tuned else "default",
        "methods": rows,
        "perturbation_within_2x_of_floor": {n: r["ratio_to_floor"] <= 2 for n, r in perturbation.items()},
        "not_slower_than_captum": {
            n: r["ratio_to_captum"] <= 1 for n, r in rows.items() if r["ratio_to_captum"] is not None
        },
    }
    print(f"wrote {write_result(args.out or 'methods', result)}")


if __name__ == "__main__":
    main()
