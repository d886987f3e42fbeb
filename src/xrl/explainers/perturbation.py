"""The perturbation family's shared machinery: one base class with one override point per step.

``occlusion``, ``greydanus``, ``sarfa``, ``rise`` and ``lime`` explain a state by running the
model on many perturbed copies of it and projecting the change of the scores back onto pixels.
They differ only in the steps below, so each method overrides those and nothing else (the
shape of Captum's ``FeatureAblation`` -> ``Occlusion``, captum/attr/_core/feature_ablation.py
and occlusion.py, and of pytorch-grad-cam's ``BaseCAM``, pytorch_grad_cam/base_cam.py):

1. **masks** :meth:`PerturbationExplainer.perturbations` -> a :class:`Masks` (how many
   perturbations each state gets, and the weight of the fill in each of them; by default the
   cached ``(N, H, W)`` tensor of :meth:`masks`, the same for every state);
2. **fill** :meth:`PerturbationExplainer.fill_states` -> ``(B, C, H, W)``, what a mask blends in
   (a constant, a blurred copy, each superpixel's mean);
3. **combine** :meth:`PerturbationExplainer.combine` -> the perturbed states of one state
   (default ``s * (1 - M) + fill * M`` by one broadcast ``lerp``, written straight into the
   batch buffer);
4. **effects** :meth:`PerturbationExplainer.effects` -> ``(B, K', N)``: what each perturbation did,
   for the explained target (``K' = 1``) or for every action (``K' = K``, ``explain_all``);
5. **project** :meth:`PerturbationExplainer.project` -> ``(B, K', H, W)`` maps.

The base class does the rest once: the batch is state-major (each state, when
``include_state``, followed by its N perturbations, so its unperturbed scores come from the same
pass), built chunk by chunk into **one reused buffer** of ``batch_size`` rows (a fresh buffer per
chunk is returned to the OS by glibc and page-faulted back each time: measured in
``benchmarks/bench_methods.py``) and run under ``torch.inference_mode()``; results do not depend
on ``batch_size``. Before allocating, the memory the batch needs is estimated
(:func:`check_memory`), so a setting that would ask for gigabytes fails with one line that says
which setting to change. ``explain_all`` gives all K maps from the same batch, so it costs what
``explain`` costs.

**Resident chunks, without allocator settings** (issue 45). On the CPU a chunk holds at most
:data:`RESIDENT_BYTES` (8 MiB) of states, fewer rows than ``batch_size`` when the states are
large, and each call first frees one untouched block just under 32 MiB (:func:`keep_resident`).
glibc's malloc raises its mmap threshold to the size of a freed mmapped block (up to 32 MiB) and
its trim threshold to twice that, so the network's activations for such a chunk then come from
the heap and stay mapped from chunk to chunk instead of being unmapped and page-faulted back
every chunk (RISE on 32 states of the zoo Red-Fetch-Green agent: from 152,081 minor faults per
map to 67, 790 on the first call, ``benchmarks/bench_faults.py``). No ``mallopt`` call: any
program that frees a 32 MiB tensor moves glibc the same way, and a process whose thresholds are
set (``MALLOC_*`` variables, :func:`xrl.ops.tune_malloc`) is left as it is.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable

import torch

from xrl.agents.model import Model
from xrl.explainers.base import Explainer
from xrl.limits import check_memory, check_time, rows_that_fit
from xrl.ops import TargetFn, chunks

#: on the CPU, the most bytes of states one chunk of perturbed states holds (its rows are
#: ``batch_size`` or fewer): small enough that the network's activations for the chunk stay under
#: glibc's 32 MiB mmap threshold (see the module docstring)
RESIDENT_BYTES = 8 * 2**20


def keep_resident() -> None:
    """Allocate and free one untouched block just under 32 MiB (glibc's largest dynamic mmap
    threshold, ``DEFAULT_MMAP_THRESHOLD_MAX`` on 64-bit): glibc then serves blocks up to that size
    from its heap and trims the heap only when more than twice that is free at its top. A no-op
    off Linux, and when the thresholds were set explicitly (glibc then stops moving them)."""
    if sys.platform.startswith("linux"):
        torch.empty(32 * 2**20 - 2**16, dtype=torch.uint8, device="cpu")  # posix_memalign + free: one mmap, one munmap


class Masks:
    """The perturbations of a batch: ``n`` per state; ``rows(b, start, stop)`` is the fill
    weight of perturbations ``start:stop`` of state ``b``, broadcastable to ``(n, C, H, W)``.

    This default holds one ``(N, H, W)`` tensor shared by every state."""

    def __init__(self, weights: torch.Tensor) -> None:
        self.weights = weights
        self.n = weights.shape[0]

    def rows(self, b: int, start: int, stop: int) -> torch.Tensor:
        return self.weights[start:stop, None]  # (n, 1, H, W): the same on every channel


class PerturbationExplainer(Explainer):
    """Base class of the perturbation methods (see the module docstring for the five steps).

    Subclasses implement :meth:`masks` (or :meth:`perturbations`), :meth:`fill_states`, :meth:`effects`
    and :meth:`project`; :meth:`combine` has a default."""

    per_action = True
    #: each state rides along unperturbed as the first row of its run (``base`` in :meth:`effects`)
    include_state: bool = True

    #: compute the perturbed scores by incremental inference (:mod:`xrl.incremental`) where the
    #: network allows: a setting of the methods that offer it (occlusion, greydanus, sarfa)
    incremental: bool = False

    def __init__(self, model: Model, *, batch_size: int = 256, seed: int = 0, incremental: bool | None = None) -> None:
        """``incremental``: True or False for the methods that offer the setting, None (left at
        the class's False, not a setting) for the others."""
        super().__init__(model, batch_size=batch_size, seed=seed)
        if incremental is not None:
            if not isinstance(incremental, bool):
                raise ValueError(f"incremental must be True or False, got {incremental!r}")
            self.incremental = incremental

    # ---------------------------------------------------------------- the run, once for all

    def _explain(self, states: torch.Tensor, target_fn: TargetFn) -> torch.Tensor:
        base, perturbed, masks = self.perturbed_scores(states)
        return self.project(self.effects(base, perturbed, target_fn), states, masks)[:, 0]

    def _explain_all(self, states: torch.Tensor) -> torch.Tensor:
        base, perturbed, masks = self.perturbed_scores(states)
        return self.project(self.effects(base, perturbed, None), states, masks)

    def perturbed_scores(self, states: torch.Tensor) -> tuple[torch.Tensor | None, torch.Tensor, Masks]:
        """Scores ``(B, K)`` of the states (None unless ``include_state``), ``(B, N, K)`` of all
        their perturbations, and the :class:`Masks` that made them."""
        b = states.shape[0]
        masks = self.perturbations(states)
        if self.incremental:
            done = self._incremental_scores(states, masks)
            if done is not None:
                return (*done, masks)
        per_state = masks.n + int(self.include_state)
        total = b * per_state
        size = min(self.batch_size, total)
        row_bytes = states[0].numel() * states.element_size()
        if states.device.type == "cpu":  # chunks whose activations stay resident (module docstring)
            size = min(size, max(1, RESIDENT_BYTES // row_bytes))
            keep_resident()
        size = rows_that_fit(row_bytes, states.device, size)  # a CUDA device's free memory
        check_memory(size * row_bytes, f"a batch of {size} perturbed states", "lower batch_size", states.device)
        with torch.inference_mode():
            fill = self.fill_states(states, masks)
            buffer = states.new_empty((size, *states.shape[1:]))
            parts: list[torch.Tensor] = []
            started = time.perf_counter()
            for rows in chunks(total, size):
                if len(parts) == 1:  # one chunk measured: the time of all of them
                    check_time(
                        time.perf_counter() - started,
                        size,
                        total,
                        f"{type(self).__name__} on {b} state(s)",
                        "lower the number of perturbations",
                    )
                out = buffer[: rows.stop - rows.start]
                self._build(states, fill, masks, rows, per_state, out)
                scores = self.model(out)
                if scores.untyped_storage().data_ptr() == buffer.untyped_storage().data_ptr():
                    scores = scores.clone()  # a model returning a view of its input: the buffer is reused
                parts.append(scores)
        scores = torch.cat(parts).view(b, per_state, -1)  # outside inference mode: an ordinary tensor
        if self.include_state:
            return scores[:, 0], scores[:, 1:], masks
        return None, scores, masks

    def _incremental_scores(
        self, states: torch.Tensor, masks: Masks
    ) -> tuple[torch.Tensor | None, torch.Tensor] | None:
        """:func:`xrl.incremental` scores when the network has a plan (else None: dense)."""
        from xrl import incremental

        if type(masks) is not Masks or type(self).combine is not PerturbationExplainer.combine:
            return None
        plan = incremental.cached_plan(self.model.net)
        if plan is None or not plan.usable():
            return None
        with torch.inference_mode():
            fill = self.fill_states(states, masks)
            boxes = getattr(masks.weights, "_xrl_boxes", None)  # masks are cached and never modified
            if boxes is None:
                boxes = incremental.mask_boxes(masks.weights)
                setattr(masks.weights, "_xrl_boxes", boxes)  # noqa: B010  (an attribute torch does not declare)
            bases, parts = [], []
            for i in range(states.shape[0]):
                rows = [
                    plan.scores(states[i], fill[i], masks.weights[part], boxes[part])
                    for part in chunks(masks.n, self.batch_size)
                ]
                bases.append(rows[0][0])
                parts.append(torch.cat([r[1] for r in rows]))
        base, perturbed = torch.stack(bases), torch.stack(parts)  # outside inference mode: ordinary tensors
        return (base if self.include_state else None), perturbed

    def _build(
        self, states: torch.Tensor, fill: torch.Tensor, masks: Masks, rows: slice, per_state: int, out: torch.Tensor
    ) -> None:
        """Rows ``rows`` of the state-major batch ``(B * per_state, C, H, W)``, written into ``out``."""
        start = rows.start
        while start < rows.stop:
            b, m = divmod(start, per_state)
            stop = min(rows.stop, (b + 1) * per_state)
            if self.include_state:
                if m == 0:  # the unperturbed state
                    out[start - rows.start] = states[b]
                    start, m = start + 1, 1
                m -= 1
            if start < stop:
                self.combine(
                    states[b], fill[b], masks.rows(b, m, m + stop - start), out[start - rows.start : stop - rows.start]
                )
            start = stop

    # ---------------------------------------------------------------- the override points

    def perturbations(self, states: torch.Tensor) -> Masks:
        """Step 1: the perturbations of ``states``; by default :meth:`masks` shared by all."""
        height, width = states.shape[-2:]
        return Masks(self.masks(height, width, states.device).to(states.dtype))  # no copy for float32

    def masks(self, height: int, width: int, device: torch.device | str = "cpu") -> torch.Tensor:
        """The cached fill weights ``(N, H, W)`` in ``[0, 1]`` for states of ``height x width``."""
        raise NotImplementedError

    def fill_states(self, states: torch.Tensor, masks: Masks) -> torch.Tensor:
        """Step 2: what the masks blend in, ``(B, C, H, W)`` (may be an expanded view)."""
        raise NotImplementedError

    def combine(self, state: torch.Tensor, fill: torch.Tensor, weight: torch.Tensor, out: torch.Tensor) -> None:
        """Step 3: ``out[i] = state * (1 - weight[i]) + fill * weight[i]`` for one state's run."""
        torch.lerp(state, fill, weight, out=out)

    def effects(self, base: torch.Tensor | None, perturbed: torch.Tensor, target_fn: TargetFn | None) -> torch.Tensor:
        """Step 4: ``(B, 1, N)`` for the target ``target_fn``, ``(B, K, N)`` per action when it is None."""
        raise NotImplementedError

    def project(self, values: torch.Tensor, states: torch.Tensor, masks: Masks) -> torch.Tensor:
        """Step 5: ``(B, K', N)`` values per perturbation -> ``(B, K', H, W)`` maps."""
        raise NotImplementedError


def drop(
    base: torch.Tensor, perturbed: torch.Tensor, target_fn: Callable[[torch.Tensor], torch.Tensor] | None
) -> torch.Tensor:
    """``f(s) - f(s')`` as ``(B, K', N)``: of the target (``K' = 1``) or of every action's score."""
    if target_fn is None:
        return (base[:, None] - perturbed).transpose(1, 2)
    b, n = perturbed.shape[:2]
    # target_fn repeats per-state indices for state-major copies: (B*N, K) -> (B*N,)
    return (target_fn(base)[:, None] - target_fn(perturbed.flatten(0, 1)).view(b, n))[:, None]
