"""The ground floor: tensor helpers shared by explainers, metrics, agents, envs and trainers.

Plain torch (and numpy) on the caller's device; this module imports nothing from xrl, so every
layer above may import it (docs/architecture.md, *Layers*). Where a helper takes a model it is
an xrl ``Model`` (``xrl.agents.model``), used only through ``model(states)``, ``n_actions`` and
``nn.Module``'s own methods.
"""

from __future__ import annotations

import contextlib
import functools
import math
import numbers
from collections.abc import Callable, Iterator

import numpy as np
import torch
from torch import nn

from xrl.errors import SettingTypeError

# ------------------------------------------------------------------ batches and the allocator

#: glibc ``mallopt`` settings for xrl's own processes (the CLI sets them at start): tensors up
#: to 32 MB come from the heap instead of fresh mmaps, and the heap is not trimmed below 1 GB
#: of free space nor grown by less than 256 MB. Without them glibc returns every large batch
#: to the OS and page-faults it back in the next chunk (system time about equal to user time
#: on the perturbation methods); the same as ``MALLOC_MMAP_THRESHOLD_=33554432
#: MALLOC_TRIM_THRESHOLD_=1073741824 MALLOC_TOP_PAD_=268435456``. Measured in
#: ``benchmarks/bench_methods.py --malloc``.
MALLOC_SETTINGS = {
    "M_MMAP_THRESHOLD": (-3, 32 * 2**20),
    "M_TRIM_THRESHOLD": (-1, 2**30),
    "M_TOP_PAD": (-2, 256 * 2**20),
}


def tune_malloc() -> bool:
    """Apply :data:`MALLOC_SETTINGS` to this process through glibc's ``mallopt``; True when applied.

    A no-op (False) off glibc, or when any ``MALLOC_*_`` environment variable is set (the user's
    own settings win). Only for processes xrl owns (the CLI): it changes the allocator of the
    whole process, so the library never calls it on import.
    """
    import ctypes
    import ctypes.util
    import os
    import sys

    if not sys.platform.startswith("linux") or any(k.startswith("MALLOC_") for k in os.environ):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return all(mallopt(code, value) == 1 for code, value in MALLOC_SETTINGS.values())


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """The ``torch.device`` a user's ``device`` names: ``"auto"`` (CUDA when available, else the
    CPU), ``"cpu"``, ``"cuda"``, ``"cuda:N"``, ``"meta"`` or a ``torch.device``. A CUDA device that
    is not there is refused here, with what is, rather than at the first tensor moved."""
    if isinstance(device, str) and device.strip().lower() == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(device)
    except (RuntimeError, TypeError) as error:
        raise ValueError(f"device must be 'auto', 'cpu', 'cuda' or 'cuda:N', got {device!r}") from error
    if resolved.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0 or (resolved.index is not None and resolved.index >= count):
            have = f"{count} CUDA device(s): cuda:0..cuda:{count - 1}" if count else "no CUDA device"
            raise ValueError(f"device {str(resolved)!r} is not available: this machine has {have}; use 'cpu' or 'auto'")
    elif resolved.type not in ("cpu", "meta"):
        raise ValueError(f"device must be 'auto', 'cpu', 'cuda' or 'cuda:N', got {device!r}")
    return resolved


def chunks(n: int, size: int) -> Iterator[slice]:
    """Slices of ``range(n)`` of at most ``size`` items: every expansion is chunked by this."""
    for start in range(0, n, size):
        yield slice(start, min(start + size, n))


# ------------------------------------------------------------------ settings


def positive_int(name: str, value: object, low: int = 1) -> int:
    """``value`` (an integer, or a float with an integral value) as an int ``>= low``, or a
    ValueError naming the setting: the one check of every count setting of the methods and metrics."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or math.floor(value) != value or value < low:
        kind = "a positive integer" if low == 1 else f"an integer >= {low}"
        raise ValueError(f"{name} must be {kind}, got {value!r}")
    return int(math.floor(value))


# ------------------------------------------------------------------ targets and side effects

#: what callers may pass as ``targets`` (resolved for a batch by :func:`target_function`)
Targets = None | int | torch.Tensor | Callable[[torch.Tensor], torch.Tensor]


class TargetFn:
    """The targets of a batch of ``n`` states, resolved once (:func:`target_function`).

    Called on scores ``(B', K)`` — ``B'`` a multiple of ``n``: each state's perturbed copies in a
    row, state-major — it returns each row's target score ``(B',)``. ``index`` is the ``(n,)``
    long tensor of action indices when the targets are indices (None, an int, a tensor), and
    None when they are the caller's own callable ``scores (B, K) -> (B,)`` (its output shape is
    checked at every call). Methods that need action indices (per-action maps, Grad-CAM's
    one-hot gradients, ``callable_targets = False``) read ``index``.
    """

    __slots__ = ("index", "n", "_fn")

    def __init__(
        self, n: int, *, index: torch.Tensor | None = None, fn: Callable[[torch.Tensor], torch.Tensor] | None = None
    ) -> None:
        if (index is None) == (fn is None):
            raise ValueError("a TargetFn takes either index (action indices) or fn (a callable), not both or neither")
        self.n, self.index, self._fn = int(n), index, fn

    def __call__(self, scores: torch.Tensor) -> torch.Tensor:
        if self.index is None:
            assert self._fn is not None  # __init__ keeps exactly one of index and fn
            out = self._fn(scores)
            if not isinstance(out, torch.Tensor) or tuple(out.shape) != (scores.shape[0],):
                raise ValueError(
                    f"a targets callable must map scores (B, K) to a (B,) tensor, got "
                    f"{tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__}"
                )
            return out
        # scores may hold several copies of each state (perturbations): repeat the indices
        reps = scores.shape[0] // self.n
        return scores.gather(1, self.index.repeat_interleave(reps).unsqueeze(1)).squeeze(1)

    def __repr__(self) -> str:
        return f"TargetFn(index={self.index.tolist()})" if self.index is not None else f"TargetFn(fn={self._fn!r})"


def target_function(model: nn.Module, states: torch.Tensor, targets: Targets) -> TargetFn:
    """Turn any accepted form of ``targets`` into a :class:`TargetFn` for ``states``.

    Indices are validated (integer, in ``[0, K)``, one per state); ``None`` is resolved to the
    model's argmax on ``states`` once, so perturbed states keep explaining the same action.
    """
    n, k = states.shape[0], model.n_actions
    if callable(targets) and not isinstance(targets, torch.Tensor):
        return TargetFn(n, fn=targets)
    if targets is None:
        with torch.no_grad():
            index = model(states).argmax(-1)
    elif isinstance(targets, bool):
        raise SettingTypeError("targets must be an int, a (B,) integer tensor, a callable or None; got a bool")
    elif isinstance(targets, int):
        index = torch.full((n,), targets, dtype=torch.long, device=states.device)
    elif isinstance(targets, torch.Tensor):
        if targets.dtype == torch.bool or targets.is_floating_point() or targets.is_complex():
            raise SettingTypeError(f"target indices must be an integer tensor, got {targets.dtype}")
        if targets.dim() == 0:
            targets = targets.expand(n)
        if tuple(targets.shape) != (n,):
            raise ValueError(f"targets must have shape ({n},) (one per state), got {tuple(targets.shape)}")
        index = targets.to(device=states.device, dtype=torch.long)
    else:
        raise TypeError(
            f"targets must be None, an int, a (B,) integer tensor or a callable, got {type(targets).__name__}"
        )
    if ((index < 0) | (index >= k)).any():
        raise ValueError(f"target indices must be in [0, {k}) for a model with {k} actions, got {index.tolist()}")
    return TargetFn(n, index=index)


@contextlib.contextmanager
def guarded(model: nn.Module, states: torch.Tensor) -> Iterator[None]:
    """Run an explanation without side effects: eval mode, parameter grads and the inputs
    are as they were afterwards, also when the method raises."""
    modes = {m: m.training for m in model.modules()}
    grads = {p: p.grad for p in model.parameters()}
    requires = {p: p.requires_grad for p in model.parameters()}
    states_grad, states_req = states.grad, states.requires_grad
    try:
        if any(modes.values()):
            model.eval()
        yield
    finally:
        for m, mode in modes.items():
            if m.training != mode:  # nn.Module.__setattr__ is slow: set only what changed
                m.training = mode
        for p, g in grads.items():
            p.grad = g
            p.requires_grad_(requires[p])
        if states.is_leaf:
            states.grad = states_grad
            states.requires_grad_(states_req)


# ------------------------------------------------------------------ blur


def gaussian_kernel(sigma: float, truncate: float = 4.0, *, kernel_size: int | None = None) -> torch.Tensor:
    """Normalised 1-D Gaussian ``(2 * ceil(truncate * sigma) + 1,)`` float32 (as scipy's), or of
    ``kernel_size`` taps (odd) when given.

    The 2-D kernel is its outer product with itself (the Gaussian is separable). Made on the CPU
    (a constant: callers move it where they use it).
    """
    if not sigma > 0:
        raise ValueError(f"sigma must be positive, got {sigma!r}")
    if kernel_size is not None and (int(kernel_size) < 1 or int(kernel_size) % 2 == 0):
        raise ValueError(f"kernel_size must be a positive odd integer, got {kernel_size!r}")
    half = int(math.ceil(truncate * sigma)) if kernel_size is None else int(kernel_size) // 2
    x = torch.arange(-half, half + 1, dtype=torch.float64, device="cpu")
    kernel = torch.exp(-0.5 * (x / sigma) ** 2)
    return (kernel / kernel.sum()).float()


def gaussian_blur(
    x: torch.Tensor, sigma: float, truncate: float = 4.0, *, kernel_size: int | None = None
) -> torch.Tensor:
    """Blur every channel of ``x (..., H, W)`` with a Gaussian of std ``sigma`` pixels, truncated
    at ``truncate`` sigmas or to ``kernel_size`` taps.

    Separable: ``A_H @ x @ A_W^T`` with cached ``(n, n)`` blur matrices (two small matmuls beat
    a depthwise convolution on CPU). Borders are replicated (unlike scipy's default
    ``reflect``, this works for images smaller than the kernel). ``sigma == 0`` is the identity.
    """
    if x.dim() < 2:
        raise ValueError(f"gaussian_blur expects (..., H, W), got shape {tuple(x.shape)}")
    if sigma == 0:
        return x.clone()
    taps = int(kernel_size) if kernel_size is not None else 2 * int(math.ceil(truncate * sigma)) + 1
    rows = blur_matrix(x.shape[-2], float(sigma), taps, x.device, x.dtype)
    cols = blur_matrix(x.shape[-1], float(sigma), taps, x.device, x.dtype)
    return rows @ x @ cols.T


@functools.lru_cache(maxsize=32)
def blur_matrix(n: int, sigma: float, taps: int, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """``(n, n)`` matrix of a 1-D Gaussian blur (``taps`` wide) with replicated borders:
    ``blurred = A @ x``."""
    with torch.inference_mode(False):  # cached: must stay usable by autograd later
        kernel = gaussian_kernel(sigma, kernel_size=taps).double()
        half = kernel.numel() // 2
        cpu = torch.device("cpu")  # built once on the CPU (the same matrix on every device), then moved
        source = torch.arange(n, device=cpu)[:, None] + torch.arange(-half, half + 1, device=cpu)[None]  # (n, taps)
        source = source.clamp(0, n - 1)
        matrix = torch.zeros(n, n, dtype=torch.float64, device=cpu)
        matrix.scatter_add_(1, source, kernel.expand(n, -1).contiguous())
        return matrix.to(device=device, dtype=dtype)


# ------------------------------------------------------------------ saliency maps and references


def minmax(saliency: torch.Tensor) -> torch.Tensor:
    """Each map of ``saliency (B, H, W)`` rescaled to [0, 1] by its own min and max.

    A constant map ranks no pixel above another and becomes all zeros (it keeps nothing).
    """
    flat = saliency.flatten(1)  # (B, H*W)
    low = flat.amin(1, keepdim=True)
    span = flat.amax(1, keepdim=True) - low
    scaled = (flat - low) / torch.where(span > 0, span, torch.ones_like(span))
    return scaled.view_as(saliency)


def reference_image(raw_states: np.ndarray, kind: str, obs_scale: float) -> torch.Tensor | None:
    """The stored reference of ``kind`` from uint8 states ``(N, C, H, W)``: ``background`` = the
    per-pixel median (the lower middle value, exact on uint8), ``mean`` = each channel's mean;
    ``None`` for the references computed per state (``black``, ``blur``)."""
    if kind == "background":
        x = torch.from_numpy(raw_states)
        flat = x.reshape(len(x), -1)
        median = torch.cat([flat[:, i : i + 4096].median(0).values for i in range(0, flat.shape[1], 4096)])
        return median.reshape(x.shape[1:]).float() / obs_scale
    if kind == "mean":
        mean = torch.from_numpy(raw_states).double().mean((0, 2, 3)) / obs_scale  # (C,)
        return mean[:, None, None].expand(raw_states.shape[1:]).float().contiguous()
    return None
