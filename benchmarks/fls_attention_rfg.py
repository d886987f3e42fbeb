"""Where an FLS agent's attention lies on Red-Fetch-Green, against three label maps.

Localization AUC (``docs/metrics.md``) of the ``attention`` explainer drawn three ways
(``transposed``: the paper's unit kernel over each cell's receptive field; ``transposed_mean``:
the same divided by the number of fields covering each pixel; ``bilinear``;
``nearest``: each cell onto its 8×8 tile), on every state of a collected dataset, against:

- ``cells``: the dataset's labels (tiles of the agent and the green object important, other floor
  tiles unimportant, walls excluded), the labels of the issue's target;
- ``objects`` (when ``--objects`` is given): only their drawn pixels (``--set labels=objects``);
- ``rectangle``: every floor tile of the smallest rectangle of tiles holding the agent and the
  green object important, the rest of the floor unimportant. This label map is a hypothesis made
  after looking at the attention pictures (the attention covers the floor between the agent and
  the goal); it is reported to test that reading, not as a target.

Gradient and guided backprop are scored the same way, for reference. ``shifted_nearest``: the
cell-by-cell drawing with the cell grid shifted by -1, 0 or +1 tile in each direction, against the
cell labels (does the attention sit one tile off the objects?).

    python benchmarks/fls_attention_rfg.py --agent zoo/red-fetch-green-sparse-fls-0/agent.pt \\
        --data runs/fls/rfg-sparse-fls-0/states.h5 --objects runs/fls/rfg-sparse-fls-0/states-objects.h5 \\
        --out benchmarks/results/fls_attention_rfg_0.json
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

import xrl
from xrl.data.dataset import StateDataset
from xrl.envs.labels import EXCLUDED, IMPORTANT, UNIMPORTANT
from xrl.evaluation import explain_dataset
from xrl.files import write_json

TILE = 8


def rectangle_labels(cells: np.ndarray) -> np.ndarray:
    """``(B, H, W)`` cell labels -> the rectangle of tiles spanned by the important tiles."""
    out = cells.copy()
    for b, lab in enumerate(cells):
        rows, cols = np.nonzero(lab == IMPORTANT)
        r0, r1 = rows.min() // TILE * TILE, (rows.max() // TILE + 1) * TILE
        c0, c1 = cols.min() // TILE * TILE, (cols.max() // TILE + 1) * TILE
        inside = np.zeros(lab.shape, dtype=bool)
        inside[r0:r1, c0:c1] = True
        floor = lab != EXCLUDED
        out[b][floor & inside] = IMPORTANT
        out[b][floor & ~inside] = UNIMPORTANT
    return out


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--agent", required=True)
    parser.add_argument("--data", required=True, help="states collected with the default (cell) labels")
    parser.add_argument("--objects", help="the same states collected with --set labels=objects")
    parser.add_argument("--out", required=True)
    args = parser.parse_args(argv)
    model = xrl.load_agent(args.agent)
    auc = xrl.get_metric("localization")
    methods = {"attention (transposed)": ("attention", {"upsample": "transposed"}),
               "attention (transposed_mean)": ("attention", {"upsample": "transposed_mean"}),
               "attention (bilinear)": ("attention", {"upsample": "bilinear"}),
               "attention (nearest)": ("attention", {"upsample": "nearest"}),
               "gradient": ("gradient", {}), "guided_backprop": ("guided_backprop", {})}
    labels = {}
    with StateDataset.open(args.data) as ds:
        rows = np.arange(len(ds))
        cells = ds.labels(rows)
        labels["cells"] = cells
        labels["rectangle"] = rectangle_labels(cells)
        states = ds.states(rows)
        maps = {name: explain_dataset(model, ds, method, settings, rows=rows) for name, (method, settings) in methods.items()}
        actions = ds.actions[rows]
    if args.objects:
        with StateDataset.open(args.objects) as ds:
            if not np.array_equal(ds.actions[:], actions):
                raise SystemExit(f"{args.objects} holds other episodes than {args.data} (actions differ)")
            labels["objects"] = ds.labels(rows)
    table = {}
    for name, saliency in maps.items():
        table[name] = {}
        for kind, lab in labels.items():
            value = auc(states=states, saliency=saliency, labels=torch.as_tensor(lab))["auc"]
            table[name][kind] = float(value[~torch.isnan(value)].mean())
    from xrl.explainers.attention import find_attention
    with torch.no_grad():
        grid = find_attention(model).attention_maps(states)[0]  # (B, h, w)
    shifted = {}
    for dy in (-1, 0, 1):
        for dx in (-1, 0, 1):
            moved = torch.roll(grid, shifts=(dy, dx), dims=(1, 2))[:, None]
            up = torch.nn.functional.interpolate(moved, size=tuple(states.shape[-2:]), mode="nearest")[:, 0]
            value = auc(states=states, saliency=up, labels=torch.as_tensor(labels["cells"]))["auc"]
            shifted[f"{dy},{dx}"] = float(value[~torch.isnan(value)].mean())
    kinds = list(labels)
    lines = [f"Localization AUC over {len(rows)} states of {args.data} ({args.agent})", "",
             "| method | " + " | ".join(kinds) + " |", "|---|" + "---|" * len(kinds)]
    lines += [f"| {name} | " + " | ".join(f"{table[name][k]:.3f}" for k in kinds) + " |" for name in table]
    best = max(shifted, key=shifted.get)
    lines += ["", f"cell-by-cell attention with the grid shifted (rows, cols) by one tile, against cell labels: "
              + ", ".join(f"{k}: {v:.3f}" for k, v in shifted.items()) + f" (best {best})"]
    result = {"agent": args.agent, "data": args.data, "states": len(rows), "auc": table, "shifted_nearest": shifted,
              "command": "python benchmarks/fls_attention_rfg.py " + " ".join(sys.argv[1:] if argv is None else argv)}
    write_json(Path(args.out), result)
    print("\n".join(lines))
    return result


if __name__ == "__main__":
    main()
