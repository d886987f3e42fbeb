"""Neither importing xrl nor using its Stable-Baselines3 parts (which probe for the old ``gym`` of
the mario extra, printing its deprecation notice) prints anything to stderr. ``import xrl`` does
not import SB3 (docs/architecture.md, *Layers*); the modules that do quiet the old gym first."""

import importlib.util
import subprocess
import sys

import pytest


@pytest.mark.skipif(importlib.util.find_spec("gym") is None, reason="old gym (mario extra) not installed")
@pytest.mark.parametrize(
    "code",
    [
        "import xrl",
        "import xrl; xrl.load_agent; import stable_baselines3.common.vec_env",
        "import xrl.train.agent",
        "import xrl.agents.attention",
        "from xrl.envs.atari import make_atari; make_atari('pong', version='v4').close()",
    ],
)
def test_import_prints_no_gym_notice(code):
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert "Gym has been unmaintained" not in done.stderr, done.stderr
