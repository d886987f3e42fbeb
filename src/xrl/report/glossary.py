"""What every metric column means, as the report shows it: on hover of each header and in its glossary.

One entry per column: a one-line definition, its direction, its range, a few lines on how it is
computed and the section of the docs that holds the full protocol (``docs/metrics.md``,
``docs/fls.md``). The report carries these texts itself (no link leaves the file);
``tests/test_report.py`` checks that every section named here exists in the docs. A column
without an entry (a metric registered later) falls back to its class's docstring.
"""

from __future__ import annotations

#: column -> (definition, range, how, docs section)
ENTRIES: dict[str, tuple[str, str, str, str]] = {
    "deletion": (
        "area under p(action) as the most salient pixels are deleted first",
        "0 to 1",
        "The pixels are removed in the order of the map, most salient first, and replaced by the "
        "substrate (RISE's protocol by default); the probability of the action taken is read at "
        "each step and the curve's area is the value. A faithful map makes the action collapse early.",
        "docs/metrics.md § The deletion/insertion protocols",
    ),
    "insertion": (
        "area under p(action) as the most salient pixels are put back first",
        "0 to 1",
        "Starting from the substrate (a blurred state), the pixels are inserted in the order of the "
        "map; the probability of the action taken is read at each step. A faithful map brings the "
        "action back early.",
        "docs/metrics.md § The deletion/insertion protocols",
    ),
    "accuracy": (
        "1 when the agent keeps its action on the state masked by the map (VisionMask's Accuracy)",
        "0 to 1 (share of states)",
        "The map, min-max normalised, is used as a soft mask: the state times the mask plus the "
        "substrate (black) elsewhere. The value is 1 when the agent's action is unchanged.",
        "docs/metrics.md § Faithfulness",
    ),
    "lipschitz": (
        "how much the map changes when the state changes a little (local Lipschitz estimate)",
        "0 to ∞",
        "The largest ratio ‖map(x) − map(x′)‖ / ‖x − x′‖ over seeded neighbours x′ in a small "
        "L∞ ball, each map divided by its own maximum. Lower is more stable.",
        "docs/metrics.md § Robustness",
    ),
    "sparseness": (
        "Gini index of the absolute saliency: how concentrated the map is",
        "0 (uniform) to 1 (one pixel)",
        "The map's absolute values sorted; a uniform map gives 0, a single non-zero pixel (n−1)/n. "
        "Higher means fewer pixels carry the saliency (easier to read, not necessarily right).",
        "docs/metrics.md § Complexity",
    ),
    "localization.auc": (
        "ROC AUC of the map as a score separating important from unimportant pixels",
        "0 to 1 (0.5 = chance)",
        "Ground-truth labels mark the pixels that matter (e.g. the agent and the goal); the AUC is the "
        "chance that an important pixel is more salient than an unimportant one (ties count ½). "
        "It does not depend on the map's scale.",
        "docs/metrics.md § Localization",
    ),
    "localization.important": (
        "sum of the min-max normalised map over the important pixels (DIGR Table 1)",
        "0 to the number of important pixels",
        "A raw sum: a map with small values everywhere scores low, a bright map high, whatever it "
        "ranks first. Shown in the detail table beside the share of the map's mass inside the ground truth.",
        "docs/metrics.md § Localization",
    ),
    "localization.unimportant": (
        "sum of the min-max normalised map over the unimportant pixels (DIGR Table 1)",
        "0 to the number of unimportant pixels",
        "A raw sum: a map with small values everywhere 'wins'. Shown in the detail table beside the "
        "share of the map's mass outside the ground truth.",
        "docs/metrics.md § Localization",
    ),
    "localization.inside": (
        "share of the map's mass on important pixels: important / (important + unimportant)",
        "0 to 1",
        "Per state, the normalised saliency summed over the important pixels divided by its sum over "
        "important and unimportant pixels (excluded pixels ignored), then averaged; unlike the raw "
        "sums it does not reward small maps. 1 − inside is the share outside.",
        "docs/metrics.md § Localization",
    ),
    "time_per_map": (
        "seconds to explain one state (the explainer alone, after one warm-up call)",
        "0 to ∞ seconds",
        "The explainer's wall time on the scored states divided by their number, on this machine "
        "with the spec's torch threads; compare methods within one run, not across machines.",
        "docs/metrics.md § Cost",
    ),
    "sanity.cascading": (
        "rank correlation between the maps and those of the agent with its layers randomized top down",
        "−1 to 1 (low is good)",
        "Adebayo et al. 2018: the layers are re-initialised one after another from the output; a map "
        "that stays the same does not depend on what the agent learned.",
        "docs/metrics.md § Sanity",
    ),
    "sanity.independent": (
        "rank correlation between the maps and those of the agent with one layer randomized at a time",
        "−1 to 1 (low is good)",
        "The mean over the layers, each re-initialised alone.",
        "docs/metrics.md § Sanity",
    ),
    "sanity.passed": (
        "1 when the maps change once the agent's weights are randomized (the sanity check passed)",
        "0 to 1 (share of states)",
        "A method whose mean is below 0.5 fails the check: it is marked ⚠ in every table and left "
        "out of the verdict's best.",
        "docs/metrics.md § Sanity",
    ),
    "nss": (
        "normalised scanpath saliency: mean standardised saliency at the fixations",
        "−∞ to ∞ (0 = chance)",
        "The map is standardised (mean 0, std 1) and read at the fixated pixels (human gaze, or "
        "labelled objects as fixations).",
        "docs/fls.md § Gaze metrics",
    ),
    "gaze_kl": (
        "KL divergence from the blurred fixation map to the saliency map",
        "0 to ∞",
        "Both maps are turned into distributions; the fixations are blurred with σ = 5 px. Lower means "
        "the map puts its mass where people (or labels) look.",
        "docs/fls.md § Gaze metrics",
    ),
    "shuffled_auc": (
        "AUC of this frame's fixations against other frames' fixations",
        "0 to 1 (0.5 = chance)",
        "Negatives are fixations of other frames, so a centre bias earns nothing.",
        "docs/fls.md § Gaze metrics",
    ),
}

DIRECTION = {True: "higher is better", False: "lower is better"}


def entry(column: str, higher_is_better: bool) -> dict:
    """``{"column", "definition", "direction", "range", "how", "docs", "anchor"}`` of a column."""
    if column in ENTRIES:
        definition, range_, how, docs = ENTRIES[column]
    else:
        definition, range_, how, docs = _fallback(column)
    return {
        "column": column,
        "definition": definition,
        "direction": DIRECTION[bool(higher_is_better)],
        "range": range_,
        "how": how,
        "docs": docs,
        "anchor": "glossary-" + column.replace(".", "-"),
    }


def _fallback(column: str) -> tuple[str, str, str, str]:
    from xrl.metrics import METRICS

    name = column.partition(".")[0]
    try:
        doc = (METRICS.get(name).__doc__ or "").strip()
    except Exception:  # noqa: BLE001 - an unknown metric still gets an entry
        doc = ""
    first = doc.split("\n\n")[0].replace("\n", " ") if doc else f"the {column} metric"
    return first, "see the docs", "", f"the docstring of the metric {name!r}"


__all__ = ["ENTRIES", "entry"]
