"""How much of a RISE map is the masks' own coverage? (docs/results.md, sanity checks)

A RISE map is ``sum_i f(s * M_i) M_i / (N p)``: where the explained score ``f`` barely moves
across masks (a confident agent scored on probabilities), the map is mostly the coverage
``sum_i M_i``, which is the same for every model. This prints, per state, the Spearman rank
correlation between the map and that coverage, for RISE on probabilities and on logits, and the
agent's top probability.

Usage::

    xrl collect --agent red-fetch-green --episodes 16 --seed 0 --out results/rfg-states.h5
    python benchmarks/rise_coverage.py --agent red-fetch-green --data results/rfg-states.h5
"""
from __future__ import annotations

import argparse

import torch
from scipy.stats import spearmanr

import xrl
from xrl.data.dataset import StateDataset


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--agent", required=True)
    p.add_argument("--data", required=True)
    p.add_argument("--rows", default="0:32:4", help="start:stop:step of the dataset rows")
    args = p.parse_args(argv)
    model = xrl.load_agent(args.agent)
    start, stop, step = (int(x) for x in args.rows.split(":"))
    with StateDataset.open(args.data) as ds:
        states = ds.states(list(range(start, min(stop, len(ds)), step)))
    with torch.no_grad():
        top = model(states).softmax(-1).amax(-1)
    print("top probability:", " ".join(f"{float(x):.3f}" for x in top))
    for score in ("probability", "logits"):
        explainer = xrl.get_explainer("rise", model, score=score)
        maps = explainer.explain(states)
        coverage = explainer.masks(*states.shape[-2:]).sum(0).flatten().numpy()
        rho = [spearmanr(m.flatten().numpy(), coverage).statistic for m in maps]
        print(f"rise score={score}: rank correlation of map and mask coverage per state:",
              " ".join(f"{r:.2f}" for r in rho), f"(mean {sum(rho) / len(rho):.2f})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
