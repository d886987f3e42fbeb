"""The documentation site (mkdocs.yml): it builds offline with ``--strict`` (a broken link or
reference fails), and its API reference lists every registered explainer and metric with the
settings of its constructor's signature, compared here with the registries; py.typed ships."""

import html
import importlib.resources
import inspect
import os
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

import xrl
from xrl.explainers import EXPLAINERS
from xrl.metrics import METRICS

ROOT = Path(__file__).resolve().parents[1]


def _offline_prefix() -> list[str]:
    """``unshare -rn`` (a network namespace with no interface) where this machine allows it, so
    the build proves it fetches nothing; elsewhere the build runs as is."""
    try:
        ok = subprocess.run(["unshare", "-rn", "true"], capture_output=True, timeout=10).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        ok = False
    return ["unshare", "-rn"] if ok else []


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("site")
    cmd = [*_offline_prefix(), sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(out)]
    run = subprocess.run(
        cmd, cwd=ROOT, capture_output=True, text=True, timeout=300, env={**os.environ, "NO_MKDOCS_2_WARNING": "1"}
    )
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    return out


def _settings(cls: type) -> list[str]:
    """The keyword settings of ``cls``'s constructor (what ``get_explainer``/``get_metric`` take)."""
    params = inspect.signature(cls.__init__).parameters.values()
    return [
        p.name for p in params if p.name not in ("self", "model") and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)
    ]


def _sections(page: Path) -> tuple[set[str], dict[str, str]]:
    """The names in code in the page's h2 headings, and each documented object's text by its anchor id (up to
    the next object's heading)."""
    text = page.read_text()
    h2 = {
        html.unescape(c)
        for h in re.findall(r"<h2[^>]*>(.*?)</h2>", text, re.S)
        for c in re.findall(r"<code>(.*?)</code>", h)
    }
    parts = re.split(r'(?=<h\d id="xrl\.[\w.]+" class="doc doc-heading")', text)
    by_id = {}
    for part in parts:
        m = re.match(r'<h\d id="(xrl\.[\w.]+)"', part)
        if m:
            by_id[m.group(1)] = html.unescape(re.sub(r"<[^>]+>", "", part))
    return h2, by_id


@pytest.mark.parametrize(
    "page, registry, names",
    [("explainers", EXPLAINERS, xrl.list_explainers), ("metrics", METRICS, xrl.list_metrics)],
)
def test_the_reference_lists_every_registered_method_with_its_settings(site, page, registry, names):
    headings, objects = _sections(site / "reference" / page / "index.html")
    missing = []
    for name in names():
        cls = registry.get(name)
        anchor = f"{cls.__module__}.{cls.__qualname__}"
        if name not in headings:
            missing.append(f"{name}: no section headed by its registered name")
        if anchor not in objects:
            missing.append(f"{name}: {anchor} is not rendered")
            continue
        for setting in _settings(cls):
            if not re.search(rf"\b{setting}\s*[:=]", objects[anchor]):
                missing.append(f"{name}: setting {setting!r} is not in its rendered signature")
    assert not missing, "docs/reference/" + page + ".md:\n" + "\n".join(missing)


def test_the_reference_pages_cover_every_family(site):
    for family in ("explainers", "metrics", "envs", "agents", "bench", "reproduce", "serve"):
        assert (site / "reference" / family / "index.html").is_file(), family
    # the site reads offline: no fonts, scripts or styles from elsewhere
    for page in site.rglob("*.html"):
        external = re.findall(r'<(?:script|link)[^>]+(?:src|href)="(https?://[^"]+)"', page.read_text())
        assert not external, (page, external)


def test_py_typed_is_shipped():
    assert importlib.resources.files("xrl").joinpath("py.typed").is_file()
    data = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]
    assert "py.typed" in data["xrl"]
