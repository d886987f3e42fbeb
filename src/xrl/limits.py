"""Resource limits checked before work starts: memory (``XRL_MAX_ALLOC_GB``) and time
(``XRL_MAX_SECONDS``), one line naming what would be allocated or how long it would take, and the
setting to lower (``docs/reliability.md``). Ground floor: explainers, metrics and loaders use it.
"""

from __future__ import annotations

import logging
import os

#: largest single allocation a perturbation method makes without asking (bytes); the environment
#: variable ``XRL_MAX_ALLOC_GB`` changes it
DEFAULT_MAX_ALLOC = 4 * 2**30


def _available_memory() -> int | None:
    """The memory the kernel says can be allocated without swapping (``MemAvailable``), or None."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


def device_free_memory(device: object) -> int | None:
    """Bytes free on a CUDA device now (``torch.cuda.mem_get_info``), or None for another device."""
    if getattr(device, "type", None) != "cuda":
        return None
    import torch

    free, _total = torch.cuda.mem_get_info(device)  # type: ignore[arg-type]
    return int(free)


def max_alloc(device: object = None) -> int:
    """The allocation bound in bytes: ``XRL_MAX_ALLOC_GB``, else 4 GB or half the memory now
    available (``MemAvailable``), whichever is less; on a CUDA ``device``, half of what is free
    on it now (``torch.cuda.mem_get_info``) unless ``XRL_MAX_ALLOC_GB`` says otherwise."""
    value = os.environ.get("XRL_MAX_ALLOC_GB")
    if value is None:
        free = device_free_memory(device)
        if free is not None:
            return free // 2
        available = _available_memory()
        return DEFAULT_MAX_ALLOC if available is None else min(DEFAULT_MAX_ALLOC, available // 2)
    return int(_positive("XRL_MAX_ALLOC_GB", value, "gigabytes") * 2**30)


def _positive(name: str, value: str, unit: str) -> float:
    """The environment variable ``name``'s ``value`` as a positive number of ``unit``, or one line."""
    try:
        number = float(value)
    except ValueError:
        raise ValueError(f"{name} must be a number of {unit}, got {value!r}") from None
    if not number > 0:
        raise ValueError(f"{name} must be positive, got {value!r}")
    return number


def check_memory(n_bytes: int, what: str, suggestion: str, device: object = None) -> None:
    """Refuse an allocation of ``n_bytes`` above :func:`max_alloc` (of ``device``: a CUDA device's
    free memory) with one line naming ``what`` is allocated and ``suggestion`` (which setting to change)."""
    limit = max_alloc(device)
    if n_bytes > limit:
        where = f" on {device}" if device_free_memory(device) is not None else ""
        raise MemoryError(
            f"{what} would need {n_bytes / 2**30:.1f} GB{where} (limit {limit / 2**30:.1f} GB, XRL_MAX_ALLOC_GB); "
            f"{suggestion}"
        )


def rows_that_fit(row_bytes: int, device: object, wanted: int) -> int:
    """How many rows of ``row_bytes`` a chunk takes on ``device``: ``wanted``, or fewer on a CUDA
    device whose free memory (:func:`max_alloc`) holds fewer (at least 1; a row that cannot fit
    is refused by :func:`check_memory`)."""
    if device_free_memory(device) is None:
        return wanted
    return max(1, min(wanted, max_alloc(device) // max(1, row_bytes)))


class TooLong(ValueError):
    """Work whose time, estimated from its first measured chunk, exceeds ``XRL_MAX_SECONDS``."""


def max_seconds() -> float | None:
    """The time bound of one call in seconds (``XRL_MAX_SECONDS``; unset: none)."""
    value = os.environ.get("XRL_MAX_SECONDS")
    if value is None:
        return None
    return _positive("XRL_MAX_SECONDS", value, "seconds")


def check_time(elapsed: float, done: int, total: int, what: str, suggestion: str) -> None:
    """After the first ``done`` of ``total`` forward passes took ``elapsed`` seconds: refuse
    (:class:`TooLong`) when the whole would take more than ``XRL_MAX_SECONDS``, naming the estimate
    and ``suggestion``; without a bound, work estimated at over a minute is logged with its estimate."""
    if done <= 0 or done >= total:
        return
    estimate = elapsed / done * total
    text = f"{what} would take about {estimate:.0f} s ({total} passes at {1000 * elapsed / done:.3g} ms each, measured)"
    limit = max_seconds()
    if limit is not None and estimate > limit:
        raise TooLong(f"{text}; limit {limit:g} s (XRL_MAX_SECONDS); {suggestion}")
    if limit is None and estimate > 60:
        logging.getLogger("xrl").warning("%s; XRL_MAX_SECONDS refuses longer work", text)
