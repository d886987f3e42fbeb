#!/usr/bin/env bash
# Set up xrl in ./.venv (Python 3.11) on first use, then run one job:
#   bash run.sh demo [xrl demo options]   the main job: explain and score the zoo agent
#   bash run.sh test [pytest options]     the test suite
#   bash run.sh xrl ARGS...               any xrl command
set -euo pipefail
cd "$(dirname "$0")"
PY=${PYTHON:-python3.11}
if ! command -v "$PY" >/dev/null; then
  echo "run.sh: needs Python 3.11 (set PYTHON=/path/to/python3.11)" >&2; exit 1
fi
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
# (Re)install when pyproject.toml changed since the last install.
stamp=.venv/.xrl-installed
want=$(sha256sum pyproject.toml | cut -d' ' -f1)
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  .venv/bin/python -m pip install --quiet --upgrade pip
  .venv/bin/python -m pip install --quiet -e ".[test]"
  echo "$want" > "$stamp"
fi
job=${1:-demo}; shift || true
case "$job" in
  demo) exec .venv/bin/xrl demo "$@" ;;
  test)
    # the report and xrl serve are tested in a real browser: Debian's chromium (and, for serve,
    # Debian's chromedriver), installed when missing
    if { ! command -v chromium >/dev/null && ! command -v chromium-browser >/dev/null; } \
        || ! command -v chromedriver >/dev/null; then
      if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
        echo "run.sh: installing chromium and chromium-driver (for the report and serve tests)" >&2
        { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver >/dev/null; } \
          || echo "run.sh: could not install chromium; the report and serve browser tests will fail" >&2
      else
        echo "run.sh: chromium or chromedriver is missing; the report and serve browser tests will fail" \
             "(sudo apt-get install chromium chromium-driver)" >&2
      fi
    fi
    # lint and format first (the same checks as .pre-commit-config.yaml): a failure stops here
    .venv/bin/ruff check --no-cache . || { echo "run.sh: ruff check failed (ruff check --fix . fixes the safe ones)" >&2; exit 1; }
    .venv/bin/ruff format --no-cache --check . >/dev/null \
      || { .venv/bin/ruff format --no-cache --check . >&2; echo "run.sh: ruff format --check failed (run: ruff format .)" >&2; exit 1; }
    # then the types ([tool.mypy] in pyproject.toml: strict on the core, default on the rest of src/)
    .venv/bin/mypy || { echo "run.sh: mypy failed (see [tool.mypy] in pyproject.toml)" >&2; exit 1; }
    # on both cores (pytest-xdist) when more than one core is idle now (XRL_TEST_WORKERS=N overrides;
    # 1 runs in this process); each test file stays on one worker, so its module fixtures run once
    workers=${XRL_TEST_WORKERS:-$(.venv/bin/python tests/free_cores.py)}
    if [ "$workers" -gt 1 ]; then set -- -n "$workers" --dist loadfile "$@"; fi
    exec .venv/bin/python -m pytest "$@" ;;
  xrl)  exec .venv/bin/xrl "$@" ;;
  *) echo "run.sh: unknown job '$job' (expected demo, test or xrl)" >&2; exit 2 ;;
esac
