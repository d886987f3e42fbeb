"""RExL's evidence (Agarwal et al. 2021, arXiv:2111.13406, Tables 1-4) for one explained model, in one run:

- Tables 1-2 and 6-7: deletion (lower is better) and insertion (higher is better) as RISE's
  ``CausalMetric`` computes them, the protocol the paper cites (``protocol="rise"``, the metrics'
  default: one row of pixels a step, deletion to black, insertion from RISE's zero-padded 11-tap
  blur, softmax probability of the target, ``docs/metrics.md``) of RExL-DS and RExL-CS against RISE, Extremal Perturbations (contrastive
  reward, area 0.12, as appendix A.3), Grad-CAM and NormGrad; plus localization ROC AUC where the
  data has ground-truth masks (the generated shapes dataset, Red-Fetch-Green);
- Table 4 / 8: the lambda ablation (0, 0.7, 0.8, 1) of RExL-DS;
- Table 3: seconds per map (one state at a time) of RExL-DS, RExL-CS, RISE with the paper's
  number of masks (5000, section 2) and Extremal Perturbations, interleaved in one run.

Usage::

    python benchmarks/rexl_eval.py --model zoo/shapes-rexl/classifier.pt --data shapes \
        --ds zoo/shapes-rexl/ds.pt --cs zoo/shapes-rexl/cs-0.pt,... --out benchmarks/results/rexl_shapes.json
    python benchmarks/rexl_eval.py --model red-fetch-green --data zoo/red-fetch-green-digr/data.h5 \
        --first-row 1100 --ds ... --cs ... --out benchmarks/results/rexl_rfg.json

Targets: the labels (shapes) or the model's argmax (agents' states: actions as classes). States
whose target has no class-specific agent are left out of every method's means (``n_states``
records how many were scored).
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

import xrl
from xrl.files import write_json
from xrl.train.rexl import load_explained

LAMBDAS = (0.0, 0.7, 0.8, 1.0)
RISE_PAPER_MASKS = 5000


def load_states(model, data: str, n: int, first_row: int, seed: int):
    """States, targets and labels (or None) of the evaluation images."""
    if data == "shapes":
        from xrl.data.shapes import object_labels, split
        test = split("test", n, size=model.input_shape[-1], seed=seed)
        return (torch.from_numpy(test.images).float() / 255, torch.from_numpy(test.labels),
                object_labels(test.masks))
    from xrl.data.dataset import StateDataset
    with StateDataset.open(data) as ds:
        rows = np.arange(first_row, min(len(ds), first_row + n))
        states = ds.states(rows)
        labels = torch.from_numpy(ds.labels(rows)) if ds.has_labels else None
    with torch.no_grad():
        targets = model(states).argmax(-1)
    return states, targets, labels


def explainers(model, ds: str, cs: list[str], grid_layer: str | None, rise_masks: int, seed: int) -> dict:
    methods = {"RExL-DS": xrl.get_explainer("rexl", model, agent=ds, seed=seed)}
    if cs:
        methods["RExL-CS"] = xrl.get_explainer("rexl", model, agent=cs, seed=seed)
    methods.update({
        "RISE": xrl.get_explainer("rise", model, n_masks=rise_masks, grid=7, p=0.5, seed=seed),
        "Extremal": xrl.get_explainer("extremal_perturbation", model, area=0.12, reward="contrastive", seed=seed),
        "Grad-CAM": xrl.get_explainer("grad_cam", model, layer=grid_layer),
        "NormGrad": xrl.get_explainer("normgrad", model, layer=grid_layer),
    })
    return methods


def scores(model, states, targets, labels, saliency) -> dict[str, list[float]]:
    out = {"deletion": xrl.get_metric("deletion")(model=model, states=states, saliency=saliency, targets=targets),
           "insertion": xrl.get_metric("insertion")(model=model, states=states, saliency=saliency, targets=targets)}
    if labels is not None:
        out["localization_auc"] = xrl.get_metric("localization")(model=model, states=states, saliency=saliency,
                                                                 targets=targets, labels=labels)["auc"]
    return {k: v.tolist() for k, v in out.items()}


def summary(values: list[float]) -> dict:
    v = np.asarray([x for x in values if x is not None and np.isfinite(x)], dtype=float)
    return {"mean": float(v.mean()), "se": float(v.std(ddof=1) / np.sqrt(len(v))) if len(v) > 1 else None, "n": len(v)}


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", required=True, help="xrl classifier .pt, zoo agent, xrl .pt or SB3 .zip")
    p.add_argument("--data", default="shapes", help="shapes (the test split) or a StateDataset .h5")
    p.add_argument("--ds", required=True, help="RExL-DS agent (rexl.pt); 'untrained': randomly initialised DS and "
                   "CS agents (for --only-time)")
    p.add_argument("--cs", default="", help="comma-separated RExL-CS agents (one per class)")
    p.add_argument("--n", type=int, default=100, help="evaluation states")
    p.add_argument("--first-row", type=int, default=0, help="StateDataset: first evaluation row (after the training rows)")
    p.add_argument("--n-time", type=int, default=10, help="states timed one at a time")
    p.add_argument("--rise-masks", type=int, default=RISE_PAPER_MASKS)
    p.add_argument("--layer", default=None, help="Grad-CAM / NormGrad layer (default: the last conv)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--only-time", action="store_true", help="only Table 3 (seconds per map); an untrained agent "
                   "costs what a trained one does (xrl.train.rexl.untrained_agent)")
    p.add_argument("--out", required=True)
    args = p.parse_args(argv)
    torch.set_num_threads(1)

    model = load_explained(args.model)
    states, targets, labels = load_states(model, args.data, args.n, args.first_row, args.seed)
    cs = [c for c in args.cs.split(",") if c]
    if args.ds == "untrained":
        import tempfile
        from xrl.train.rexl import untrained_agent
        folder = Path(tempfile.mkdtemp())
        args.ds = str(untrained_agent(model, folder / "ds.pt", seed=args.seed))
        cs = [str(untrained_agent(model, folder / f"cs{c}.pt", mode="cs", classes=[c], seed=args.seed))
              for c in range(model.n_actions)]
    methods = explainers(model, args.ds, cs, args.layer, args.rise_masks, args.seed)
    if cs:  # evaluate on the states every method can explain (a class with no CS agent is left out)
        covered = torch.tensor([int(t) in methods["RExL-CS"].agents for t in targets])
        states, targets = states[covered], targets[covered]
        labels = labels[covered] if labels is not None else None
    with torch.no_grad():
        accuracy = float((model(states).argmax(-1) == targets).float().mean())
    print(f"accuracy on them {accuracy:.3f}; {len(states)} states, targets {torch.bincount(targets, minlength=model.n_actions).tolist()}", flush=True)

    table, maps, ablation = {}, {}, {}
    for name, explainer in ({} if args.only_time else methods).items():
        start = time.perf_counter()
        maps[name] = torch.cat([explainer.explain(states[i:i + 25], targets[i:i + 25]) for i in range(0, len(states), 25)])
        seconds = time.perf_counter() - start
        table[name] = {k: summary(v) for k, v in scores(model, states, targets, labels, maps[name]).items()}
        table[name]["batched_seconds_per_map"] = seconds / len(states)
        print(name, {k: round(v["mean"], 4) for k, v in table[name].items() if isinstance(v, dict)}, flush=True)

    for lam in () if args.only_time else LAMBDAS:
        saliency = xrl.get_explainer("rexl", model, agent=args.ds, lam=lam, seed=args.seed).explain(states, targets)
        ablation[str(lam)] = {k: summary(v) for k, v in scores(model, states, targets, labels, saliency).items()}
        print("lambda", lam, {k: round(v["mean"], 4) for k, v in ablation[str(lam)].items()}, flush=True)

    timed = {k: methods[k] for k in ("RExL-DS", "RExL-CS", "RISE", "Extremal") if k in methods}
    seconds: dict[str, list[float]] = {k: [] for k in timed}
    cpu: dict[str, list[float]] = {k: [] for k in timed}
    for i in range(min(args.n_time, len(states) - 1) + 1):  # interleaved: other processes' load hits all alike
        for name, explainer in timed.items():
            start, start_cpu = time.perf_counter(), time.process_time()
            explainer.explain(states[i:i + 1], targets[i:i + 1])
            if i > 0:  # the first round warms up (RISE draws its masks, caches fill)
                seconds[name].append(time.perf_counter() - start)
                cpu[name].append(time.process_time() - start_cpu)  # one thread: the compute, whatever the load
    per_map = {k: float(np.mean(v)) for k, v in seconds.items()}
    cpu_per_map = {k: float(np.mean(v)) for k, v in cpu.items()}
    print("seconds per map", {k: round(v, 4) for k, v in per_map.items()}, flush=True)
    print("CPU seconds per map", {k: round(v, 4) for k, v in cpu_per_map.items()}, flush=True)

    result = {"command": "python benchmarks/rexl_eval.py " + " ".join(sys.argv[1:] if argv is None else argv),
              "model": args.model, "data": args.data, "n_states": len(states), "accuracy": accuracy, "rise_masks": args.rise_masks,
              "methods": table, "lambda_ablation": ablation, "seconds_per_map": per_map,
              "cpu_seconds_per_map": cpu_per_map, "n_timed": len(seconds["RISE"]),
              "rise_over_rexl_cs_time": per_map["RISE"] / per_map["RExL-CS"] if "RExL-CS" in per_map else None,
              "rise_over_rexl_ds_time": per_map["RISE"] / per_map["RExL-DS"],
              "rise_over_rexl_cs_cpu": cpu_per_map["RISE"] / cpu_per_map["RExL-CS"] if "RExL-CS" in cpu_per_map else None,
              "rise_over_rexl_ds_cpu": cpu_per_map["RISE"] / cpu_per_map["RExL-DS"],
              "torch_threads": torch.get_num_threads()}
    write_json(args.out, result)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
