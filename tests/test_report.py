"""xrl report: the HTML opened in headless Chromium shows the numbers of the results files."""

from __future__ import annotations

import csv
import math
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from xrl import cli
from xrl.bench import load_results, run_bench
from xrl.report import best_values, build_report, category_scores, format_value

SPEC = """\
name = "tiny-report"
seeds = [0]
n_states = 4
gallery = 2
methods = ["gradient", "random", "greydanus"]
metrics = ["deletion", "insertion", "sparseness", "localization", "sanity", "time_per_map"]

[[agents]]
agent = "red-fetch-green"
episodes = 1
max_steps = 6

[method_settings.greydanus]
radius = 4
stride = 8
"""

CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def chromium() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        if path := shutil.which(name):
            return path
    # deliberately a failure, not a skip: the report is only tested in a real browser
    pytest.fail(
        "no chromium on PATH: `bash run.sh test` installs Debian's chromium package "
        "(apt-get install chromium); the report test needs it"
    )


def browse(html: Path, tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    profile = tmp_path / f"profile{len(list(tmp_path.glob('profile*')))}"
    return subprocess.run(
        [
            chromium(),
            *CHROMIUM_FLAGS,
            f"--user-data-dir={profile}",
            "--virtual-time-budget=5000",
            *args,
            html.resolve().as_uri(),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )


class Dom(HTMLParser):
    """The cells of every table (with their attributes and text) and the image status."""

    def __init__(self) -> None:
        super().__init__()
        self.tables: list[dict] = []
        self.status: dict = {}
        self.images: list[dict] = []
        self._cell = None
        self._row = None

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "table":
            self.tables.append({"attrs": attrs, "rows": []})
        elif tag == "tr" and self.tables:
            self._row = {"attrs": attrs, "cells": []}
            self.tables[-1]["rows"].append(self._row)
        elif tag in ("td", "th") and self._row is not None:
            self._cell = {"tag": tag, "attrs": attrs, "text": ""}
            self._row["cells"].append(self._cell)
        elif tag == "span" and attrs.get("id") == "image-status":
            self.status = attrs
        elif tag == "img":
            self.images.append(attrs)

    def handle_endtag(self, tag):
        if tag in ("td", "th"):
            self._cell = None

    def handle_data(self, data):
        if self._cell is not None:
            self._cell["text"] += data


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    folder = tmp_path_factory.mktemp("report")
    (folder / "spec.toml").write_text(SPEC)
    out = run_bench(folder / "spec.toml", folder / "results", progress=False)
    return out, build_report(out)


def test_report_renders_in_chromium_with_the_numbers_of_the_results(report, tmp_path):
    results, html = report
    done = browse(html, tmp_path, "--dump-dom")
    assert done.returncode == 0, done.stderr[-2000:]
    dom = Dom()
    dom.feed(done.stdout)
    # the page's script ran after load and counted the images that decoded
    assert dom.status.get("data-total") and dom.status["data-loaded"] == dom.status["data-total"], dom.status
    doc = load_results(results)
    g = doc["groups"][0]
    n_methods = len(g["methods"])
    assert int(dom.status["data-total"]) == len(g["gallery_rows"]) * (1 + n_methods) == 8

    (table,) = [t for t in dom.tables if "metrics" in t["attrs"].get("class", "")]
    header = [c["text"].strip() for c in table["rows"][0]["cells"]]
    for col, text in zip(g["columns"], header[1:]):
        arrow = "↑" if g["higher_is_better"][col] else "↓"
        assert text.startswith(f"{col} {arrow}"), (col, text)
    with open(results / "results.csv", newline="") as f:
        csv_rows = {r["method"]: r for r in csv.DictReader(f)}
    best = best_values(g)
    body = table["rows"][1:]
    assert [r["attrs"]["data-method"] for r in body] == g["methods"]
    for row in body:
        method = row["attrs"]["data-method"]
        cells = {c["attrs"]["data-column"]: c for c in row["cells"][1:]}
        assert list(cells) == g["columns"]
        for col, cell in cells.items():
            want = float(csv_rows[method][col]) if csv_rows[method][col] else math.nan
            assert want == g["means"][method][col] or math.isnan(want)
            shown = cell["text"].replace("★", "").strip()
            if math.isnan(want):
                assert shown == "nan"
            else:
                assert float(cell["attrs"]["data-value"]) == want
                assert float(shown) == pytest.approx(want, rel=5e-4, abs=1e-12), (method, col, shown)
            is_best = "best" in cell["attrs"].get("class", "")
            assert is_best == (want == best.get(col)), (method, col)
            assert ("★" in cell["text"]) == is_best
    # every column has a marked best
    marked = {c["attrs"]["data-column"] for r in body for c in r["cells"][1:] if "best" in c["attrs"].get("class", "")}
    assert marked == set(best)

    text = done.stdout
    for section in (
        "Deletion and insertion curves",
        "Radar over metric categories",
        "Sanity checks",
        "Time per map",
        "Gallery",
        "Spec and versions",
    ):
        assert section in text, section
    for m in g["methods"]:
        assert f'data-series="{m}"' in text  # a curve per method
    assert text.count('class="radar"') == n_methods
    assert "stride = 8" in text and doc["versions"]["torch"] in text
    (gallery,) = [t for t in dom.tables if t["attrs"].get("class") == "gallery"]
    for row, state in zip(gallery["rows"][1:], g["gallery_rows"]):
        assert row["attrs"]["data-row"] == str(state)
        assert "action:" in row["cells"][0]["text"]


def test_report_screenshot_is_not_blank(report, tmp_path):
    _, html = report
    shot = tmp_path / "shot.png"
    done = browse(html, tmp_path, "--window-size=1200,2000", f"--screenshot={shot}")
    assert done.returncode == 0 and shot.exists(), done.stderr[-2000:]
    pixels = np.asarray(Image.open(shot).convert("RGB"))
    assert len(np.unique(pixels.reshape(-1, 3), axis=0)) > 200  # tables, charts and overlays


def test_report_shows_time_per_method_and_per_metric(report):
    out, html = report
    text = html.read_text()
    assert "Where the time goes" in text
    g = load_results(out)["groups"][0]
    for m in g["methods"]:
        assert f'<tr data-method="{m}"><td>{m}</td><td>{g["seconds_by_step"][m]["explain"]:.1f}</td>' in text
    for step in g["seconds_by_step"][g["methods"][0]]:
        assert f"<th>{step}</th>" in text


def test_report_is_self_contained(report):
    _, html = report
    text = html.read_text()
    assert "http://" not in text and "https://" not in text
    assert 'src="data:image/png;base64,' in text and "<link" not in text


def test_report_command(report, capsys, tmp_path):
    results, _ = report
    out = tmp_path / "r.html"
    assert cli.main(["report", str(results), "--out", str(out)]) == 0
    assert f"wrote {out}" in capsys.readouterr().out and out.stat().st_size > 10_000
    assert cli.main(["report", str(tmp_path / "nosuch")]) == 2
    assert "no results.json" in capsys.readouterr().err


def toy_group(means: dict, hib: dict, cats: dict) -> dict:
    return {"methods": list(means), "columns": list(hib), "means": means, "higher_is_better": hib, "categories": cats}


def test_best_values_and_category_scores_on_known_values():
    g = toy_group(
        {
            "a": {"del": 0.2, "ins": 0.9, "t": 1.0},
            "b": {"del": 0.4, "ins": 0.5, "t": math.nan},
            "c": {"del": 0.3, "ins": 0.7, "t": 3.0},
        },
        {"del": False, "ins": True, "t": False},
        {"del": "faithfulness", "ins": "faithfulness", "t": "cost"},
    )
    assert best_values(g) == {"del": 0.2, "ins": 0.9, "t": 1.0}
    s = category_scores(g)
    assert s["a"] == {"faithfulness": 1.0, "cost": 1.0}
    assert s["b"]["faithfulness"] == 0.0 and math.isnan(s["b"]["cost"])
    assert s["c"]["faithfulness"] == pytest.approx(0.5) and s["c"]["cost"] == 0.0
    assert format_value(0.123456) == "0.1235" and format_value(math.nan) == "nan"
    assert format_value(12345.6) == "12345.6"


def test_an_agent_with_several_seeds_gets_a_table_of_means_over_seeds(tmp_path):
    spec = (
        SPEC.replace("seeds = [0]", "seeds = [0, 1]")
        .replace('methods = ["gradient", "random", "greydanus"]', 'methods = ["gradient", "random"]')
        .replace('"sanity", "time_per_map"', '"time_per_map"')
        .replace("[method_settings.greydanus]\nradius = 4\nstride = 8\n", "")
    )
    (tmp_path / "spec.toml").write_text(spec)
    out = run_bench(tmp_path / "spec.toml", tmp_path / "results", progress=False)
    doc = load_results(out)
    dom = Dom()
    dom.feed(build_report(out).read_text())
    tables = [t for t in dom.tables if "metrics" in t["attrs"].get("class", "")]
    assert [t["attrs"]["data-seed"] for t in tables] == ["mean over 0, 1", "0", "1"]
    for row in tables[0]["rows"][1:]:
        m = row["attrs"]["data-method"]
        for cell in row["cells"][1:]:
            c = cell["attrs"]["data-column"]
            want = np.mean([g["means"][m][c] for g in doc["groups"]])
            assert float(cell["attrs"]["data-value"]) == pytest.approx(want, rel=1e-12), (m, c)
