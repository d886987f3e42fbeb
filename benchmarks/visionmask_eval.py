"""VisionMask's Table 1 (Zuo et al. 2025, arXiv:2411.16120, section 4.2) for one agent, in one run:
accuracy, deletion, insertion, local Lipschitz estimate and sparseness of VisionMask, the Stalder
Explainer, LIME, RISE, Greydanus and SARFA on the *test split* of the expert dataset the mask
networks were trained on (the same 80/10/10 split, ``xrl.train.visionmask.split_indices``), and
the speed of VisionMask (one batched forward pass for all actions) next to Greydanus on the same
states.

Protocol (the same for every method, as ``xrl evaluate``): targets are the dataset's actions
(collect with ``--sample false`` so they are the agent's argmax actions, which is what the
networks are trained to explain with ``--targets argmax``); ``accuracy`` keeps
``s * m + r * (1 - m)`` with ``m`` the map min-max normalised and ``r`` the VisionMask network's
reference (the per-pixel median background of the training split); deletion and insertion are
RISE's ``CausalMetric`` (``protocol="rise"``, the default: one row of pixels a step, deletion to
black, insertion from RISE's zero-padded 11-tap blur, softmax probability of the target); the
local Lipschitz estimate divides each map by its largest magnitude (``protocol="xrl"``, the
default), so methods are not ranked by the scale of their maps; RISE scores softmax
probabilities and Greydanus the logits, as their authors' code (``docs/metrics.md``,
``docs/explainers.md``). VisionMask's accuracy with its raw mask (no normalisation, the paper's
definition) is reported beside it.

Usage::

    python benchmarks/visionmask_eval.py --agent red-fetch-green --data runs/vm-rfg/expert.h5 \
        --visionmask runs/vm-rfg/visionmask.pt --stalder runs/stalder-rfg/stalder_explainer.pt \
        --name visionmask_rfg
"""
from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).parent))
from common import write_result  # noqa: E402

import xrl  # noqa: E402
from xrl.agents.mask_nets import load_mask_network  # noqa: E402
from xrl.data.dataset import StateDataset  # noqa: E402
from xrl.evaluation import evaluate  # noqa: E402
from xrl.train.visionmask import split_indices  # noqa: E402

BASELINES = ("lime", "rise", "greydanus", "sarfa")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--agent", required=True)
    p.add_argument("--data", required=True, help="the expert dataset the networks were trained on")
    p.add_argument("--visionmask", required=True, help="visionmask.pt")
    p.add_argument("--stalder", default=None, help="stalder_explainer.pt (optional)")
    p.add_argument("--split-seed", type=int, default=0, help="the training's --seed (its split)")
    p.add_argument("--n-states", type=int, default=32, help="test-split states scored (the first n)")
    p.add_argument("--lipschitz-samples", type=int, default=4,
                   help="noisy neighbours per state of the local Lipschitz estimate (each is one more map)")
    p.add_argument("--curve-substrate", default=None,
                   help="what deletion removes to and insertion starts from: default black / blur (RISE's "
                        "protocol); 'reference' = the VisionMask network's reference (what it was trained with)")
    p.add_argument("--speed-states", type=int, default=256)
    p.add_argument("--name", default="visionmask_eval", help="benchmarks/results/<name>.json")
    p.add_argument("--baselines", default=",".join(BASELINES),
                   help="comma-separated baseline methods scored beside the networks ('none': only the "
                        "networks, e.g. for the ablations of Table 2)")
    args = p.parse_args(argv)

    model = xrl.load_agent(args.agent)
    network = load_mask_network(args.visionmask, method="visionmask")
    network.check_agent(model)
    with StateDataset.open(args.data) as ds:
        rows = split_indices(len(ds), args.split_seed)["test"][: args.n_states]
        background = network.reference_image if network.reference in ("background", "mean") else None
        substrate = dict(substrate="background", background=background) if background is not None else \
            dict(substrate="black")
        curve = substrate if args.curve_substrate == "reference" else \
            {} if args.curve_substrate is None else {"substrate": args.curve_substrate}
        metrics = {"accuracy": substrate, "deletion": curve, "insertion": curve,
                   "lipschitz": {"n_samples": args.lipschitz_samples}, "sparseness": {}}
        methods = {"visionmask": {"network": args.visionmask}}
        if args.stalder:
            methods["stalder_explainer"] = {"network": args.stalder}
        baselines = [] if args.baselines == "none" else [m for m in args.baselines.split(",") if m]
        unknown = sorted(set(baselines) - set(BASELINES))
        if unknown:
            raise SystemExit(f"--baselines: unknown {unknown}; expected a subset of {list(BASELINES)} or 'none'")
        methods.update({m: {} for m in baselines})
        saliency: dict = {}
        result = evaluate(model, ds, methods, metrics, rows=rows, saliency=saliency)
        raw = evaluate(model, ds, {"visionmask": methods["visionmask"]},
                       {"accuracy": dict(substrate, normalize="none")}, rows=rows)
        speed_rows = np.arange(min(args.speed_states, len(ds)))
        states = ds.states(speed_rows)
    means = result.means()
    means["visionmask"]["accuracy (raw mask)"] = raw.means()["visionmask"]["accuracy"]
    speed = _speed(model, args.visionmask, states)

    columns = result.columns + ["accuracy (raw mask)"]
    print(_markdown(means, result.methods, columns, result.higher_is_better))
    paired = paired_differences(result.values, "visionmask", ("deletion", "insertion"))
    for col, rows_ in paired.items():
        print(f"\n{col}: VisionMask minus each method, mean over the same states, 95% bootstrap CI")
        for m, d in rows_.items():
            print(f"  {m:18s} {d['mean']:+.3f}  [{d['low']:+.3f}, {d['high']:+.3f}]  (n={d['n']})")
    print(f"\nVisionMask {speed['visionmask_states_per_s']:.0f} states/s (all {model.n_actions} masks, batched), "
          f"Greydanus {speed['greydanus_states_per_s']:.1f} states/s: "
          f"{speed['visionmask_states_per_s'] / speed['greydanus_states_per_s']:.0f}x")
    path = write_result(args.name, {
        "command": "python benchmarks/visionmask_eval.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "agent": args.agent, "data": args.data, "test_rows": rows.tolist(), "torch_threads": torch.get_num_threads(),
        "means": means, "higher_is_better": result.higher_is_better, "skipped": result.skipped, "speed": speed,
        "values": result.values, "paired_vs_visionmask": paired,
    })
    print(f"wrote {path}")
    return 0


def paired_differences(values: dict, reference: str, columns, *, resamples: int = 10_000,
                       seed: int = 0) -> dict[str, dict[str, dict]]:
    """For each column and each other method: the mean over states of ``reference - method`` on
    the same states (NaNs dropped pairwise) with a 95% percentile-bootstrap interval
    (``scipy.stats.bootstrap``, seeded). An interval containing 0 means the 32-state sample does
    not separate the two methods."""
    from scipy.stats import bootstrap
    out: dict = {}
    for col in columns:
        if col not in values.get(reference, {}):
            continue
        out[col] = {}
        ref = np.asarray(values[reference][col], dtype=np.float64)
        for method, cols in values.items():
            if method == reference or col not in cols:
                continue
            diff = ref - np.asarray(cols[col], dtype=np.float64)
            diff = diff[~np.isnan(diff)]
            if diff.size < 2:
                continue
            ci = bootstrap((diff,), np.mean, n_resamples=resamples, method="percentile",
                           rng=np.random.default_rng(seed)).confidence_interval
            out[col][method] = {"mean": float(diff.mean()), "low": float(ci.low), "high": float(ci.high),
                                "n": int(diff.size)}
    return out


def _speed(model, network_path: str, states: torch.Tensor) -> dict:
    """States per second of VisionMask's ``explain_all`` (every action's mask) over ``states`` in
    one batched call per 64, and of Greydanus's map of the agent's action on the first 16."""
    vm = xrl.get_explainer("visionmask", model, network=network_path)
    gd = xrl.get_explainer("greydanus", model)
    vm.explain_all(states[:8])
    gd.explain(states[:2])
    times = {}
    for name, fn, n in (("visionmask", lambda: vm.explain_all(states), len(states)),
                        ("greydanus", lambda: gd.explain(states[:16]), min(16, len(states)))):
        best = math.inf
        for _ in range(3):
            start = time.perf_counter()
            fn()
            best = min(best, time.perf_counter() - start)
        times[f"{name}_states_per_s"] = n / best
    return times


def _markdown(means, methods, columns, higher) -> str:
    arrow = {c: "↑" if higher.get(c.split(" ")[0], True) else "↓" for c in columns}
    lines = ["| method | " + " | ".join(f"{c} {arrow[c]}" for c in columns) + " |",
             "|---" * (len(columns) + 1) + "|"]
    for m in methods:
        cells = []
        for c in columns:
            v = means[m].get(c, math.nan)
            cells.append("—" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.3f}")
        lines.append(f"| {m} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
