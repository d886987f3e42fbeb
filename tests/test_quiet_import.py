"""Importing xrl (which imports Stable-Baselines3, which probes for the old ``gym`` of the mario
extra) prints nothing to stderr."""
import importlib.util
import subprocess
import sys

import pytest


@pytest.mark.skipif(importlib.util.find_spec("gym") is None, reason="old gym (mario extra) not installed")
def test_import_prints_no_gym_notice():
    done = subprocess.run([sys.executable, "-c", "import xrl, stable_baselines3.common.vec_env"],
                          capture_output=True, text=True, check=True)
    assert "Gym has been unmaintained" not in done.stderr, done.stderr
