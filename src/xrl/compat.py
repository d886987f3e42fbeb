"""Quirks of third-party packages, handled where xrl first imports them (never at ``import xrl``)."""

from __future__ import annotations

import contextlib
import importlib.util
import io
import sys


def quiet_old_gym() -> None:
    """Import the old ``gym`` 0.26 (installed by the ``mario`` extra) once with its deprecation
    notice swallowed, if it is installed and not yet imported.

    Stable-Baselines3 imports ``gym`` (only to detect it) whenever its vector envs are imported,
    and ``gym`` prints a notice to stderr on import, so every xrl command that loads or trains an
    agent would print it. Every xrl module that imports ``stable_baselines3`` calls this first.
    """
    if "gym" in sys.modules or importlib.util.find_spec("gym") is None:
        return
    with contextlib.redirect_stderr(io.StringIO()):
        import gym  # noqa: F401
