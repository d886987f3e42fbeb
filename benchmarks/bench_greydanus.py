"""Speed of Gaussian-blur perturbation saliency (``greydanus``) against a loop and the floor.

On one Nature-CNN policy (6 actions) and 84x84x4 states, stride 5 (17 x 17 = 289 perturbations
per state), in one run:

- ``batched``: ``get_explainer("greydanus", model).explain(states)``, time per map;
- ``loop``   : the same perturbations, one forward pass each (a straightforward implementation);
- ``floor``  : the same number of states through one batched forward pass (inference mode),
  i.e. the cost of the network alone; ``floor/<bs>`` does it in chunks of ``bs`` (on CPU a
  mid-size chunk is often faster than one huge batch), and the best of these is the peak.

Prints the ratios, checks the loop and the batched maps agree, and writes
``benchmarks/results/greydanus.json``. Targets: batched >= 5x faster than the loop and within
2x of the floor. Run::

    .venv/bin/python benchmarks/bench_greydanus.py [--states 1] [--repeats 7]
"""

from __future__ import annotations

import argparse
import statistics

import torch
from common import interleaved, nature_cnn_policy, write_result
from torch import nn

import xrl
from xrl.explainers.masks import perturbation_masks, upsample_grid
from xrl.ops import gaussian_blur


@torch.inference_mode()
def loop_greydanus(model: nn.Module, states: torch.Tensor, stride: int = 5, radius: float = 5.0) -> torch.Tensor:
    """Reference: ``1/2 ||pi(s) - pi(s')||^2`` one perturbed state at a time."""
    b, _, h, w = states.shape
    masks = perturbation_masks(h, w, stride, radius, device=torch.device("cpu"))
    side_h, side_w = len(range(0, h, stride)), len(range(0, w, stride))
    coarse = torch.zeros(b, side_h * side_w)
    for i in range(b):
        s = states[i : i + 1]
        blurred = gaussian_blur(s, 3.0)
        p = model(s).softmax(-1)
        for n, mask in enumerate(masks):
            q = model(s * (1 - mask) + blurred * mask).softmax(-1)
            coarse[i, n] = 0.5 * ((p - q) ** 2).sum()
    return upsample_grid(coarse.view(b, 1, side_h, side_w), h, w, stride)[:, 0]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--states", type=int, default=1, help="states per explain call")
    parser.add_argument("--repeats", type=int, default=7, help="timed rounds")
    parser.add_argument(
        "--batch-sizes",
        type=int,
        nargs="+",
        default=[64, 128, 256, 512],
        help="perturbed states per forward pass to try (the default is always tried)",
    )
    args = parser.parse_args()

    torch.manual_seed(0)
    model = nature_cnn_policy()
    states = torch.rand(args.states, 4, 84, 84)
    n_perturbed = args.states * len(range(0, 84, 5)) ** 2
    floor_batch = torch.rand(n_perturbed, 4, 84, 84)
    default_bs = xrl.get_explainer("greydanus", model).batch_size
    sizes = sorted(set(args.batch_sizes) | {default_bs})

    def floor(bs: int):
        def run():
            with torch.inference_mode():
                for rows in range(0, n_perturbed, bs):
                    model(floor_batch[rows : rows + bs])

        return run

    candidates = {"loop": lambda: loop_greydanus(model, states), "floor": floor(n_perturbed)}
    for bs in sizes:
        explainer = xrl.get_explainer("greydanus", model, batch_size=bs)
        candidates[f"batched/{bs}"] = lambda e=explainer: e.explain(states)
        candidates[f"floor/{bs}"] = floor(bs)
    times = interleaved(candidates, args.repeats, slow=("loop",))
    best = {name: min(t) / args.states for name, t in times.items()}  # seconds per map
    median = {name: statistics.median(t) / args.states for name, t in times.items()}

    fast = xrl.get_explainer("greydanus", model).explain(states)
    slow = loop_greydanus(model, states)
    max_abs_diff = (fast - slow).abs().max().item()
    agree = torch.allclose(fast, slow, rtol=1e-4, atol=1e-4 * slow.abs().max().item())

    batched = best[f"batched/{default_bs}"]
    floor_best = min(v for k, v in best.items() if k.startswith("floor"))
    result = {
        "model": "nature_cnn + linear(512, 6)",
        "state_shape": [4, 84, 84],
        "stride": 5,
        "radius": 5.0,
        "states": args.states,
        "forward_passes": n_perturbed,
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "default_batch_size": default_bs,
        "repeats": args.repeats,
        "seconds_per_map_min": best,
        "seconds_per_map_median": median,
        "speedup_vs_loop": best["loop"] / batched,
        "ratio_to_floor_one_pass": batched / best["floor"],
        "ratio_to_floor_best_batch": batched / floor_best,
        "max_abs_diff_vs_loop": max_abs_diff,
        "agree_with_loop": agree,
    }
    result["meets_targets"] = bool(
        result["speedup_vs_loop"] >= 5
        and result["ratio_to_floor_best_batch"] <= 2
        and result["ratio_to_floor_one_pass"] <= 2
        and agree
    )

    print(
        f"greydanus, Nature CNN, {args.states} x (4, 84, 84), stride 5 -> {n_perturbed} forward passes, "
        f"{torch.get_num_threads()} threads; ms per map, min (median) of {args.repeats} interleaved rounds"
    )
    for name in best:
        print(f"  {name:12s} {best[name] * 1e3:9.1f} ({median[name] * 1e3:.1f})")
    print(
        f"  default batch_size={default_bs}: speed-up vs loop {result['speedup_vs_loop']:.1f}x (target >= 5); "
        f"batched / floor: one pass {result['ratio_to_floor_one_pass']:.2f}, best batch "
        f"{result['ratio_to_floor_best_batch']:.2f} (target <= 2); agree with loop: {agree} "
        f"(max |diff| {max_abs_diff:.2e})"
    )

    print(f"wrote {write_result('greydanus', result)}")


if __name__ == "__main__":
    main()
