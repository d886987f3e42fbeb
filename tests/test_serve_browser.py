"""xrl serve driven in a real headless browser: Debian's chromium through Debian's chromedriver
(selenium from PyPI; nothing is downloaded at run time). The page is loaded from a server on a
free port of 127.0.0.1; the test steps the timeline, plays it, switches method, selects another
action, drags a perturbation rectangle, undoes it, asks for the per-frame scores, shows methods
side by side, exports a PNG, runs a slow method with settings (its progress shown; a refused
setting reported), exports the MP4, and saves a screenshot checked not to be blank.

The same drive makes the screenshot in docs/serve.md::

    .venv/bin/python tests/test_serve_browser.py docs/serve/serve.png
"""

from __future__ import annotations

import base64
import io
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

AGENT = "red-fetch-green"
VM = "visionmask:red-fetch-green-visionmask"
FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--window-size=1320,1240",
]


def browser():
    """Headless chromium through Debian's chromedriver; a clear failure when either is missing."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    binary = next((p for n in ("chromium", "chromium-browser") if (p := shutil.which(n))), None)
    driver = shutil.which("chromedriver") or next((p for p in ("/usr/bin/chromedriver",) if Path(p).exists()), None)
    if binary is None or driver is None:
        # deliberately a failure, not a skip: the page is only tested in a real browser
        pytest.fail(
            "needs chromium and chromedriver on PATH: `bash run.sh test` installs Debian's "
            "chromium and chromium-driver packages (apt-get install chromium chromium-driver)"
        )
    options = webdriver.ChromeOptions()
    options.binary_location = binary
    for flag in FLAGS:
        options.add_argument(flag)
    return webdriver.Chrome(service=Service(executable_path=driver), options=options)


def settle(d, timeout: float = 60) -> None:
    """Wait until the page has no request in flight (``body[data-busy="0"]``) for a moment."""
    deadline = time.monotonic() + timeout
    quiet = 0
    while quiet < 3:
        busy = d.execute_script("return document.body.dataset.busy")
        quiet = quiet + 1 if busy == "0" else 0
        assert time.monotonic() < deadline, f"the page stayed busy ({busy} requests)"
        time.sleep(0.1)
    error = d.find_element("id", "error")
    assert not error.is_displayed(), error.text


def overlay(d, selector: str = "#view") -> str:
    return d.execute_script("return document.querySelector(arguments[0]).dataset.overlay || ''", selector)


def bars(d, attribute: str = "value") -> list[float]:
    return d.execute_script(
        f"return [...document.querySelectorAll('#bars .bar')].map(b => b.dataset.{attribute} === undefined ? null : Number(b.dataset.{attribute}))"
    )


def not_blank(image: np.ndarray) -> None:
    """A real picture: many colours and contrast, not one flat colour."""
    assert image.std() > 20, image.std()
    assert len(np.unique(image.reshape(-1, image.shape[-1]), axis=0)) > 50


def drive(url: str, screenshot: Path) -> None:
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.support.ui import Select

    d = browser()
    try:
        d.get(url)
        deadline = time.monotonic() + 120  # the server loads the agent and records the episode
        while not d.execute_script("return document.querySelectorAll('#bars .bar').length"):
            assert time.monotonic() < deadline, "the page never showed the agent's actions"
            time.sleep(0.2)
        settle(d)
        step = d.find_element("id", "step")
        assert step.text.startswith("step 0 /")
        assert "episode ended" in step.text or "cut at 40 steps" in step.text  # truncation is shown
        first = overlay(d)
        assert first
        # the colour key under the map: the ramp, the map's range, its scaling named
        key = d.find_element("id", "key")
        assert key.get_attribute("data-scaling") == "own" and "…" in d.find_element("id", "key-range").text
        assert "own min–max" in d.find_element("id", "key-text").text
        ramp = d.execute_script("return getComputedStyle(document.querySelector('#key .ramp')).backgroundImage")
        assert ramp.startswith("linear-gradient"), ramp
        # legends of the bars and of the action strip
        assert "poked frame" in d.find_element("id", "bars-legend").text
        legend = d.find_element("id", "strip-legend").text
        assert all(name in legend for name in ("left", "right", "forward", "pickup")), legend
        # the ? panel lists the keys
        d.find_element("tag name", "body").send_keys("?")
        assert (
            d.find_element("id", "help").is_displayed() and "previous / next step" in d.find_element("id", "help").text
        )
        d.find_element("tag name", "body").send_keys("\ue00c")  # Escape
        assert not d.find_element("id", "help").is_displayed()

        # step the timeline: the frame and its map change
        d.find_element("id", "next").click()
        settle(d)
        assert step.text.startswith("step 1 /")
        stepped = overlay(d)
        assert stepped and stepped != first

        # play to the end of the (short) episode, then scrub back to step 1 with the keyboard
        d.find_element("id", "play").click()
        deadline = time.monotonic() + 60
        while d.find_element("id", "play").text != "Play":
            assert time.monotonic() < deadline, "playing never stopped at the end of the episode"
            time.sleep(0.2)
        settle(d)
        last = int(d.find_element("id", "scrub").get_attribute("max"))
        assert step.text.startswith(f"step {last} /")
        d.find_element("tag name", "body").send_keys("\ue011")  # Home
        settle(d)
        d.find_element("id", "next").click()
        settle(d)
        assert step.text.startswith("step 1 /") and overlay(d) == stepped  # cached, the same map

        # switch method: a zoo VisionMask network for this agent, labelled as a network
        method_list = d.find_element("id", "method")
        Select(method_list).select_by_value(VM)
        settle(d)
        by_vm = overlay(d)
        assert by_vm and by_vm != stepped
        assert "explainer network" in Select(method_list).first_selected_option.text
        # the method list has focus: → and ← still step the timeline, the method stays
        method_list.send_keys("\ue014")  # ArrowRight
        settle(d)
        assert step.text.startswith("step 2 /") and method_list.get_attribute("value") == VM
        method_list.send_keys("\ue012")  # ArrowLeft
        settle(d)
        assert step.text.startswith("step 1 /") and method_list.get_attribute("value") == VM
        assert overlay(d) == by_vm

        # select another action: its map
        taken = d.execute_script(
            "return [...document.querySelectorAll('#bars .bar')].findIndex(b => b.classList.contains('selected'))"
        )
        other = (taken + 1) % len(bars(d))
        d.find_element("id", f"bar-{other}").click()
        settle(d)
        assert "selected" in d.find_element("id", f"bar-{other}").get_attribute("class")
        other_map = overlay(d)
        assert other_map and other_map != by_vm

        # poke: drag a rectangle over the middle of the frame, blacked out
        Select(d.find_element("id", "kind")).select_by_value("black")
        view = d.find_element("id", "view")
        w, h = view.size["width"], view.size["height"]
        ActionChains(d).move_to_element_with_offset(view, -w // 4, -h // 4).click_and_hold().move_by_offset(
            w // 4, h // 4
        ).move_by_offset(w // 4, h // 4).release().perform()
        settle(d)
        original, poked = bars(d), bars(d, "poked")
        assert len(poked) == len(original) and all(isinstance(v, float) for v in poked)
        assert max(abs(a - b) for a, b in zip(original, poked)) > 1e-6, (original, poked)
        assert d.find_element("id", "poke-result").text.startswith("Poked:")
        poked_map = overlay(d)
        assert poked_map and poked_map != other_map
        # this poke changes the action (forward -> right): the page says so and keeps the chosen map
        result = d.find_element("id", "poke-result")
        assert result.get_attribute("data-changes") == "true" and "instead of" in result.text, result.text
        assert d.find_element("id", "map-label").get_attribute("data-action") == str(other)
        assert "selected" in d.find_element("id", f"bar-{other}").get_attribute("class")

        # side by side (with the poke): two more methods on the same frame
        for method in ("gradient", "greydanus"):
            d.find_element("css selector", f"#compare-pick input[value='{method}']").click()
        settle(d)
        tiles = [overlay(d, f"#compare canvas[data-method='{m}']") for m in ("gradient", "greydanus")]
        assert all(tiles) and tiles[0] != tiles[1]
        d.save_screenshot(str(screenshot))  # the view with the poke, bars before/after, side by side

        # undo: back to the recorded frame's bars and map (from the cache)
        d.find_element("id", "undo").click()
        settle(d)
        assert all(v is None for v in bars(d, "poked")) and overlay(d) == other_map  # no poked bars

        # the same poke with the agent's own action shown: the map stays the one of the action
        # taken (not the poked state's new action), and the line says which map is shown
        d.find_element("id", f"bar-{other}").click()  # back to the agent's action
        settle(d)
        ActionChains(d).move_to_element_with_offset(view, -w // 4, -h // 4).click_and_hold().move_by_offset(
            w // 2, h // 2
        ).release().perform()
        settle(d)
        result = d.find_element("id", "poke-result")
        assert result.get_attribute("data-changes") == "true", result.text
        assert f"still shows {d.find_element('id', f'bar-{taken}').text.split()[0]}" in result.text, result.text
        assert d.find_element("id", "map-label").get_attribute("data-action") == str(taken)
        assert "selected" in d.find_element("id", f"bar-{taken}").get_attribute("class")
        d.find_element("tag name", "body").send_keys("\ue003")  # Backspace: undo the poke
        settle(d)
        assert "(the action taken)" in d.find_element("id", "map-label").text
        Select(d.find_element("id", "method")).select_by_value(VM)
        d.find_element("id", f"bar-{other}").click()
        settle(d)
        assert overlay(d) == other_map

        # shared scaling: the key says so; the main view and the tiles keep a key each
        Select(d.find_element("id", "scaling")).select_by_value("shared")
        settle(d)
        assert d.find_element("id", "key").get_attribute("data-scaling") == "shared"
        assert "Shared scale" in d.find_element("id", "key-text").text
        assert all(
            d.execute_script(f"return document.querySelector(\"#compare canvas[data-method='{m}']\").dataset.range")
            for m in ("gradient", "greydanus")
        )
        Select(d.find_element("id", "scaling")).select_by_value("own")
        settle(d)

        # per-frame scores: deletion/insertion curves and localization (the env has ground truth)
        d.find_element("id", "scores-btn").click()
        settle(d)
        assert float(d.find_element("id", "deletion-auc").text) >= 0
        assert float(d.find_element("id", "localization-auc").text) >= 0
        assert d.execute_script("return document.getElementById('curves').dataset.drawn") == "1"

        # export the view as PNG
        d.find_element("id", "png").click()
        url = d.execute_script("return window.xrlLastExport || ''")
        assert url.startswith("data:image/png;base64,")
        not_blank(np.asarray(Image.open(io.BytesIO(base64.b64decode(url.split(",", 1)[1]))).convert("RGB")))

        # a slow method with settings: RISE runs as a job whose progress the page shows
        Select(d.find_element("id", "method")).select_by_value("rise")
        box = d.find_element("id", "settings")
        # Enter: the change event; 80 batches, long enough for the poll below to see a step on a fast
        # machine (400 masks finished before the first poll on 2026-12-08)
        box.send_keys('{"n_masks": 4000, "batch_size": 50}\ue007')
        seen, deadline = set(), time.monotonic() + 120
        while d.execute_script("return document.body.dataset.busy") != "0" or not seen:
            seen.add(d.find_element("id", "progress").text)
            assert time.monotonic() < deadline, seen
            time.sleep(0.05)
        settle(d)
        assert any("rise step 1" in t and "forward passes" in t for t in seen), seen
        by_rise = overlay(d)
        assert by_rise and by_rise not in (other_map, poked_map)
        box.clear()
        box.send_keys('{"n_masks": "many"}\ue007')  # a setting the method refuses: a clear message
        time.sleep(1.0)
        deadline = time.monotonic() + 60
        while not d.find_element("id", "error").is_displayed():
            assert time.monotonic() < deadline, "no error shown for a refused setting"
            time.sleep(0.1)
        assert "n_masks" in d.find_element("id", "error").text
        box.clear()
        box.send_keys('{"bogus": 1}\ue007')  # an unknown setting: answered with the accepted ones
        time.sleep(1.0)
        deadline = time.monotonic() + 60
        while "bogus" not in d.find_element("id", "error").text:
            assert time.monotonic() < deadline, "no error shown for an unknown setting"
            time.sleep(0.1)
        assert "its settings: n_masks=" in d.find_element("id", "error").text
        box.clear()
        Select(d.find_element("id", "method")).select_by_value("gradient")
        settle(d)

        # export the episode as MP4 (xrl watch on the server): a link to the video
        d.find_element("id", "mp4").click()
        deadline = time.monotonic() + 120
        while not d.find_elements("css selector", "#export-links a[href^='/api/download/']"):
            assert time.monotonic() < deadline, d.find_element("id", "export-links").text
            time.sleep(0.2)
        kind = d.execute_script(
            "const a = document.querySelector('#export-links a'); return fetch(a.href)"
            ".then(r => r.status + ' ' + r.headers.get('content-type'))"
        )
        assert kind == "200 video/mp4", kind
        assert d.find_element("id", "mp4-match").get_attribute("data-same") == "true"  # same actions replayed
        # nothing was fetched from another origin
        names = d.execute_script("return performance.getEntriesByType('resource').map(e => e.name)")
        assert all(n.startswith((d.current_url, "data:")) for n in names), names
        # a narrow screen: the frame scales to the window
        d.set_window_size(400, 900)
        time.sleep(0.3)
        assert d.execute_script("return document.documentElement.scrollWidth <= window.innerWidth + 1")
        assert d.execute_script("return document.getElementById('view').getBoundingClientRect().right") <= 400
    finally:
        d.quit()
    not_blank(np.asarray(Image.open(screenshot).convert("RGB")))


def serve_and_drive(screenshot: Path, cache: Path) -> None:
    from xrl.serve.app import ServerThread, create_app
    from xrl.serve.engine import Engine

    engine = Engine(cache=cache, max_steps=40)
    engine.preload(AGENT)
    try:
        with ServerThread(create_app(engine, default_agent=AGENT, default_seed=0)) as server:
            drive(server.url, screenshot)
    finally:
        engine.close()


@pytest.mark.browser
@pytest.mark.slow
def test_page_in_headless_chromium(tmp_path):
    serve_and_drive(tmp_path / "serve.png", tmp_path / "cache")


if __name__ == "__main__":
    import tempfile

    out = Path(sys.argv[1] if len(sys.argv) > 1 else "docs/serve/serve.png")
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        serve_and_drive(out, Path(tmp))
    print(f"wrote {out}")
