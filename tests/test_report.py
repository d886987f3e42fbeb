"""xrl report: the HTML opened in headless Chromium shows the numbers of the results files."""

from __future__ import annotations

import csv
import math
import os
import re
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
from markupsafe import escape
from PIL import Image

from xrl import cli
from xrl.bench import load_results, run_bench
from xrl.report import best_values, build_report, category_scores, format_value, glossary, with_inside
from xrl.report.verdict import DETAIL_COLUMNS, verdict

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

    (table,) = [t for t in dom.tables if t["attrs"].get("class") == "metrics"]
    header = [c["text"].strip() for c in table["rows"][0]["cells"]]
    shown = [c for c in with_inside(g)["columns"] if c not in DETAIL_COLUMNS]
    assert [c["attrs"]["data-column"] for c in table["rows"][0]["cells"][1:]] == shown
    assert "localization.inside" in shown and "localization.important" not in shown  # moved to the detail table
    for col, text in zip(shown, header[1:]):
        arrow = "↑" if with_inside(g)["higher_is_better"][col] else "↓"
        assert text.startswith(f"{col} {arrow}"), (col, text)
    with open(results / "results.csv", newline="") as f:
        csv_rows = {r["method"]: r for r in csv.DictReader(f)}
    v = verdict(with_inside(g))
    body = table["rows"][1:]
    assert [r["attrs"]["data-method"] for r in body] == g["methods"]
    for row in body:
        method = row["attrs"]["data-method"]
        cells = {c["attrs"]["data-column"]: c for c in row["cells"][1:]}
        assert list(cells) == shown
        # a method that fails the sanity check is marked in the table
        assert ("⚠" in row["cells"][0]["text"]) == (method in v["flagged"])
        for col, cell in cells.items():
            if col == "localization.inside":  # derived: checked in test_localization_inside_is_the_share_inside
                continue
            want = float(csv_rows[method][col]) if csv_rows[method][col] else math.nan
            assert want == g["means"][method][col] or math.isnan(want)
            shown_text = cell["text"].replace("★", "").strip()
            if math.isnan(want):
                assert shown_text == "nan"
            else:
                assert float(cell["attrs"]["data-value"]) == want
                assert float(shown_text) == pytest.approx(want, rel=5e-4, abs=1e-12), (method, col, shown_text)
            r = v["columns"][col]
            is_best = "best" in cell["attrs"].get("class", "")
            assert is_best == (r["ranked"] and r["leader"] == method), (method, col)
            assert ("★" in cell["text"]) == is_best
    # a star in every ranked column, none in a column that cannot rank (sanity: a gate)
    marked = {c["attrs"]["data-column"] for r in body for c in r["cells"][1:] if "best" in c["attrs"].get("class", "")}
    assert marked == {c for c, r in v["columns"].items() if r["ranked"]}
    assert not any(c.startswith("sanity.") for c in marked)
    assert v["flagged"] == ["random"]  # noise does not depend on the agent's weights
    assert v["columns"]["time_per_map"]["leader"] != "random"  # cheap because it explains nothing

    text = done.stdout
    for section in (
        "Verdict",
        "Glossary",
        "Localization in detail",
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
        explain = f"{g['seconds_by_step'][m]['explain']:.3g}"
        row = rf'<tr data-method="{m}"><td>{m}(?: <span class="flag"[^>]*>⚠</span>)?</td><td>{re.escape(explain)}</td>'
        assert re.search(row, text), row
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
    # asked: methods failing the sanity check may be the best (still marked)
    assert cli.main(["report", str(results), "--out", str(out), "--include-flagged"]) == 0
    text = out.read_text()
    assert "kept in the ranking as asked" in text and '<span class="flag"' in text
    v = verdict(with_inside(load_results(results)["groups"][0]), include_flagged=True)
    assert next(r for r in v["columns"]["deletion"]["order"] if r["method"] == "random")["eligible"]
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
            if c == "localization.inside":  # derived per state: the mean over the pooled states
                continue
            want = np.mean([g["means"][m][c] for g in doc["groups"]])
            assert float(cell["attrs"]["data-value"]) == pytest.approx(want, rel=1e-12), (m, c)


def exact_bootstrap(diff: np.ndarray, q: float) -> float:
    """The q-quantile of the mean over every one of the n^n resamples of ``diff`` (the limit
    that a percentile bootstrap approaches): computed by hand, no scipy."""
    n = len(diff)
    idx = np.stack(np.meshgrid(*[np.arange(n)] * n, indexing="ij"), -1).reshape(-1, n)
    return float(np.quantile(diff[idx].mean(1), q))


def test_verdict_matches_a_hand_computation_of_the_paired_intervals(report):
    """The verdict's rankings come from the job files: redo them by hand from results.json's
    per-state values (means, the sanity gate, the paired differences and their bootstrap
    distribution enumerated exactly) and compare with what the report shows."""
    results, html = report
    g = load_results(results)["groups"][0]
    n = len(g["rows"])
    assert n <= 6  # small enough to enumerate every resample

    def per_state(m, c):
        return np.asarray([np.nan if x is None else x for x in g["values"][m][c]], float)

    flagged = {m for m in g["methods"] if np.nanmean(per_state(m, "sanity.passed")) < 0.5}
    v = verdict(with_inside(g))
    assert set(v["flagged"]) == flagged
    dom = Dom()
    dom.feed(html.read_text())
    (table,) = [t for t in dom.tables if t["attrs"].get("class") == "verdict"]
    shown = {r["attrs"]["data-column"]: r["attrs"] for r in table["rows"][1:] if "data-best" in r["attrs"]}
    undecided = decided = 0
    for c in ["deletion", "insertion", "sparseness", "localization.auc", "time_per_map"]:
        sign = 1.0 if g["higher_is_better"][c] else -1.0
        means = {m: np.nanmean(per_state(m, c)) for m in g["methods"]}
        order = sorted(g["methods"], key=lambda m: -sign * means[m])
        r = v["columns"][c]
        assert [row["method"] for row in r["order"]] == order, c
        eligible = [m for m in order if m not in flagged and not (c == "time_per_map" and m == "random")]
        leader = eligible[0]
        assert r["leader"] == leader, c
        best = [leader]
        for m in eligible[1:]:
            diff = sign * (per_state(leader, c) - per_state(m, c))
            diff = diff[~np.isnan(diff)]
            row = next(x for x in r["order"] if x["method"] == m)
            assert row["vs_best"]["mean"] == pytest.approx(diff.mean(), abs=1e-12)
            if np.all(diff == diff[0]):
                lo = hi = diff[0]
            else:
                lo, hi = exact_bootstrap(diff, 0.025), exact_bootstrap(diff, 0.975)
                # 2000 resamples: the verdict's ends fall within the exact 1.5-3.5 % / 96.5-98.5 % quantiles
                assert exact_bootstrap(diff, 0.01) - 1e-12 <= row["vs_best"]["low"] <= exact_bootstrap(diff, 0.04)
                assert exact_bootstrap(diff, 0.96) <= row["vs_best"]["high"] <= exact_bootstrap(diff, 0.99) + 1e-12
            if min(abs(lo), abs(hi)) < 1e-3 * max(1.0, abs(diff).max()) and lo != hi:
                undecided += 1  # 0 on an end of the interval: either answer is right
                continue
            decided += 1
            tied = lo <= 0 <= hi
            assert row["tied"] == tied, (c, m, lo, hi, row["vs_best"])
            if tied:
                best.append(m)
        if not undecided:
            assert r["best"] == best, c
        assert shown[c]["data-best"] == ",".join(r["best"])  # the report shows these rankings
    assert decided >= 5 and undecided <= 1
    # the paragraph names each category's best
    for cat in v["categories"]:
        for m in cat["best"]:
            assert m in v["paragraph"]
    assert "random fails the sanity check" in v["paragraph"]


def test_every_metric_column_has_a_glossary_entry_and_a_header_hint(report):
    _, html = report
    text = html.read_text()
    dom = Dom()
    dom.feed(text)
    columns = {
        c["attrs"]["data-column"]
        for t in dom.tables
        if t["attrs"].get("class") in ("metrics", "detail", "sanity")
        for c in t["rows"][0]["cells"][1:]
        if "data-column" in c["attrs"]
    }
    assert {"deletion", "localization.auc", "localization.inside", "sanity.passed", "time_per_map"} <= columns
    for c in columns:
        e = glossary.entry(c, True)
        assert f'<dt id="{e["anchor"]}" data-column="{c}">' in text, c
        assert f'href="#{e["anchor"]}"' in text
        assert re.search(
            rf'<th data-column="{re.escape(c)}"[^>]* title="[^"]*{re.escape(str(escape(e["definition"]))[:30])}', text
        ), c
    # every docs section a glossary entry names exists
    root = Path(__file__).resolve().parents[1]
    for column, (_, _, _, docs) in glossary.ENTRIES.items():
        path, _, section = docs.partition(" § ")
        headings = [line.lstrip("#").strip() for line in (root / path).read_text().splitlines() if line.startswith("#")]
        assert section in headings, (column, docs)


def test_localization_inside_is_the_share_inside(report):
    results, _ = report
    g = load_results(results)["groups"][0]
    got = with_inside(g)
    for m in g["methods"]:
        imp = np.asarray(g["values"][m]["localization.important"], float)
        un = np.asarray(g["values"][m]["localization.unimportant"], float)
        share = imp / (imp + un)
        assert got["means"][m]["localization.inside"] == pytest.approx(np.nanmean(share), rel=1e-12)
    assert got["columns"].index("localization.inside") == got["columns"].index("localization.auc") + 1


def test_one_report_links_and_summarises_the_sections_of_a_run(report, tmp_path):
    """xrl demo's main report: each section's verdict and table with a link to its own report,
    a row of the main table beside it (DIGR: the teacher), and the papers' table."""
    results, _ = report
    out = tmp_path / "main" / "report.html"
    build_report(
        results,
        out,
        sections=[
            {"name": "digr", "title": "the section", "results": results, "beside": {"method": "gradient", "label": "T"}}
        ],
        papers={"columns": ["agent", "method", "x"], "rows": [["a", "gradient", "0.5"]], "note": "rows"},
    )
    text = out.read_text()
    dom = Dom()
    dom.feed(text)
    assert f'href="{os.path.relpath(results / "report.html", out.parent)}"' in text  # relative: no absolute path
    (section,) = [t for t in dom.tables if t["attrs"].get("data-section") == "digr"]
    rows = {r["attrs"]["data-method"]: r for r in section["rows"][1:]}
    g = load_results(results)["groups"][0]
    assert list(rows) == [*g["methods"], "beside"]
    assert rows["beside"]["cells"][0]["text"] == "T"
    want = {c["attrs"]["data-column"]: c["attrs"]["data-value"] for c in rows["gradient"]["cells"][1:]}
    assert {c["attrs"]["data-column"]: c["attrs"]["data-value"] for c in rows["beside"]["cells"][1:]} == want
    (papers,) = [t for t in dom.tables if t["attrs"].get("class") == "papers"]
    assert [c["text"] for c in papers["rows"][1]["cells"]] == ["a", "gradient", "0.5"]
    assert "The papers in this run" in text and 'id="sections"' in text


@pytest.mark.browser
@pytest.mark.slow
def test_report_reads_in_a_real_browser(report, tmp_path):
    """Headless chromium through selenium: the verdict at the top, a glossary entry reached from
    each metric header, the method column still readable after scrolling the table sideways in a
    narrow window, a click on a header sorts the rows, and the page itself is no wider than the
    window. The page loads nothing from the network (no request but the file itself)."""
    from test_serve_browser import browser

    _, html = report
    d = browser()
    try:
        d.set_window_size(700, 900)
        d.get(html.resolve().as_uri())
        verdict = d.find_element("id", "verdict")
        assert "use gradient" in verdict.text.lower() and "random fails the sanity check" in verdict.text
        assert d.execute_script("return document.getElementById('verdict').getBoundingClientRect().top") < 900
        headers = d.find_elements("css selector", "table.metrics thead th[data-column]:not([data-column=method])")
        assert len(headers) >= 8
        for th in headers:
            anchor = th.find_element("css selector", "a.gl").get_attribute("hash")[1:]
            entry = d.find_element("id", anchor)
            assert entry.get_attribute("data-column") == th.get_attribute("data-column")
            assert th.get_attribute("title").count(" — ") == 2  # definition — direction — range
        # sideways: the table's box scrolls, the method cell stays at the box's left edge
        box = d.find_element("css selector", "section.group .scroll")
        d.execute_script("arguments[0].scrollIntoView(); arguments[0].scrollLeft = 10000;", box)
        assert d.execute_script("return arguments[0].scrollLeft", box) > 100
        first = d.find_element("css selector", "table.metrics tbody tr td:first-child")
        left = d.execute_script("return arguments[0].getBoundingClientRect().left", first)
        box_left = d.execute_script("return arguments[0].getBoundingClientRect().left", box)
        assert abs(left - box_left) < 2 and first.text.split()[0] == "gradient"
        assert d.execute_script("return document.documentElement.scrollWidth <= window.innerWidth")
        # sort by insertion (higher is better): best first, a second click reverses
        th = d.find_element("css selector", "table.metrics th[data-column=insertion]")
        d.execute_script("arguments[0].click()", th)
        values = d.execute_script(
            "return [...document.querySelectorAll('table.metrics tbody td[data-column=insertion]')]"
            ".map(c => Number(c.dataset.value))"
        )
        assert values == sorted(values, reverse=True)
        d.execute_script("arguments[0].click()", th)
        values = d.execute_script(
            "return [...document.querySelectorAll('table.metrics tbody td[data-column=insertion]')]"
            ".map(c => Number(c.dataset.value))"
        )
        assert values == sorted(values)
        # nothing but the file itself was fetched
        names = d.execute_script("return performance.getEntriesByType('resource').map(e => e.name)")
        assert all(n.startswith("data:") for n in names), names
        shot = tmp_path / "top.png"
        d.set_window_size(1400, 1000)
        d.execute_script("window.scrollTo(0, 0)")
        d.save_screenshot(str(shot))
    finally:
        d.quit()
    assert len(np.unique(np.asarray(Image.open(shot).convert("RGB")).reshape(-1, 3), axis=0)) > 50
