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


def max_alloc() -> int:
    """The allocation bound in bytes: ``XRL_MAX_ALLOC_GB``, else 4 GB or half the memory now
    available (``MemAvailable``), whichever is less."""
    value = os.environ.get("XRL_MAX_ALLOC_GB")
    if value is None:
        available = _available_memory()
        return DEFAULT_MAX_ALLOC if available is None else min(DEFAULT_MAX_ALLOC, available // 2)
    try:
        gb = float(value)
    except ValueError:
        raise ValueError(f"XRL_MAX_ALLOC_GB must be a number of gigabytes, got {value!r}") from None
    if not gb > 0:
        raise ValueError(f"XRL_MAX_ALLOC_GB must be positive, got {value!r}")
    return int(gb * 2**30)


def check_memory(n_bytes: int, what: str, suggestion: str) -> None:
    """Refuse an allocation of ``n_bytes`` above :func:`max_alloc` with one line naming ``what``
    is allocated and ``suggestion`` (which setting to change)."""
    limit = max_alloc()
    if n_bytes > limit:
        raise MemoryError(
            f"{what} would need {n_bytes / 2**30:.1f} GB (limit {limit / 2**30:.1f} GB, XRL_MAX_ALLOC_GB); {suggestion}"
        )


class TooLong(ValueError):
    """Work whose time, estimated from its first measured chunk, exceeds ``XRL_MAX_SECONDS``."""


def max_seconds() -> float | None:
    """The time bound of one call in seconds (``XRL_MAX_SECONDS``; unset: none)."""
    value = os.environ.get("XRL_MAX_SECONDS")
    if value is None:
        return None
    try:
        seconds = float(value)
    except ValueError:
        raise ValueError(f"XRL_MAX_SECONDS must be a number of seconds, got {value!r}") from None
    if not seconds > 0:
        raise ValueError(f"XRL_MAX_SECONDS must be positive, got {value!r}")
    return seconds


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
