"""xrl serve's HTTP API on the zoo Red-Fetch-Green agent: every endpoint answers what an
independent computation gives, and refuses bad input with a 4xx JSON message (never a traceback).

The server runs in a thread on a free port of 127.0.0.1 (:class:`xrl.serve.app.ServerThread`),
as ``xrl serve`` runs it. The browser test is tests/test_serve_browser.py.
"""

from __future__ import annotations

import base64
import io
import json
import subprocess
import sys
import time
import urllib.error
import urllib.request

import numpy as np
import pytest
import torch
from PIL import Image

import xrl
from xrl.serve.engine import RequestError, check_rects, check_scale, check_settings, perturb_states, rect_mask

AGENT = "red-fetch-green"
SEED = 0  # a 5-step episode of the zoo agent
VM = "visionmask:red-fetch-green-visionmask"


# ------------------------------------------------------------------ fixtures and helpers


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    from xrl.serve.app import ServerThread, create_app
    from xrl.serve.engine import Engine

    engine = Engine(cache=tmp_path_factory.mktemp("serve-cache"), max_steps=40)
    with ServerThread(create_app(engine, default_agent=AGENT)) as s:
        s.engine = engine
        status, episode = call(s, "POST", "api/episode", {"agent": AGENT, "seed": SEED}, settle=True)
        assert status == 200, episode
        s.episode = episode
        yield s
    engine.close()


def call(server, method: str, path: str, body=None, *, raw: bytes | None = None, headers=None, settle: bool = False):
    """``(status, JSON)``; ``settle``: follow a 202 job until done and ask again."""
    while True:
        data = raw if raw is not None else (None if body is None else json.dumps(body).encode())
        req = urllib.request.Request(
            server.url + path, data=data, method=method, headers={"Content-Type": "application/json", **(headers or {})}
        )
        try:
            with urllib.request.urlopen(req, timeout=120) as r:
                status, payload = r.status, r.read()
                kind = r.headers.get("content-type", "")
        except urllib.error.HTTPError as err:
            status, payload, kind = err.code, err.read(), err.headers.get("content-type", "")
        result = json.loads(payload) if "json" in kind else payload
        if status == 202 and settle:
            wait_job(server, result["job"])
            continue
        return status, result


def wait_job(server, job: str, timeout: float = 120) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        status, progress = call(server, "GET", f"api/jobs/{job}")
        assert status == 200, progress
        if progress["state"] in ("done", "error"):
            return progress
        assert time.monotonic() < deadline, progress
        time.sleep(0.05)


def decode(url: str) -> np.ndarray:
    assert url.startswith("data:image/png;base64,")
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(url.split(",", 1)[1]))).convert("RGB"))


def recorded(server):
    from xrl.data.dataset import StateDataset

    path = server.engine.cache_dir / "episodes"
    (file,) = [p for p in path.glob(f"{AGENT}-seed{SEED}-*.h5")]
    return StateDataset.open(file)


def bad(status: int, body, *words: str) -> None:
    """A refused request: a 4xx status and a JSON message naming what was wrong."""
    assert 400 <= status < 500, (status, body)
    assert isinstance(body, dict) and set(body) == {"error"}, body
    assert "Traceback" not in body["error"]
    for word in words:
        assert word in body["error"], (word, body["error"])


# ------------------------------------------------------------------ pure helpers


def test_rect_mask_covers_every_pixel_the_rectangle_overlaps():
    mask = rect_mask({"x0": 0.1, "y0": 0.0, "x1": 0.26, "y1": 0.5}, 8, 10)
    expected = np.zeros((8, 10), bool)
    expected[0:4, 1:3] = True  # columns 1.0..2.6 -> 1, 2; rows 0..4
    assert np.array_equal(mask.numpy(), expected)
    tiny = rect_mask({"x0": 0.999, "y0": 0.999, "x1": 1.0, "y1": 1.0}, 8, 10)
    assert tiny.sum() == 1 and tiny[7, 9]


def test_perturbations_match_an_independent_computation():
    from scipy.ndimage import gaussian_filter

    g = torch.Generator().manual_seed(1)
    states = torch.rand(1, 3, 16, 20, generator=g)
    rect = {"x0": 0.25, "y0": 0.5, "x1": 0.75, "y1": 1.0}
    inside = np.zeros((16, 20), bool)
    inside[8:16, 5:15] = True
    black = perturb_states(states, [{**rect, "kind": "black"}])[0].numpy()
    assert np.all(black[:, inside] == 0) and np.array_equal(black[:, ~inside], states[0].numpy()[:, ~inside])
    # blur: Gaussian std 5 px, 31 taps (truncate 3 sigma), borders replicated = scipy's "nearest"
    blurred = perturb_states(states, [{**rect, "kind": "blur"}])[0].numpy()
    reference = np.stack(
        [gaussian_filter(c.astype(np.float64), 5.0, mode="nearest", truncate=3.0) for c in states[0].numpy()]
    )
    np.testing.assert_allclose(blurred[:, inside], reference[:, inside], atol=1e-5)
    assert np.array_equal(blurred[:, ~inside], states[0].numpy()[:, ~inside])
    noisy = perturb_states(states, [{**rect, "kind": "noise"}])[0].numpy()
    noise = torch.rand(3, 16, 20, generator=torch.Generator().manual_seed(0)).numpy()
    assert np.array_equal(noisy[:, inside], noise[:, inside])
    # rectangles apply in order: black then blur of the black region stays black inside both
    both = perturb_states(states, [{**rect, "kind": "black"}, {**rect, "kind": "black"}])
    assert torch.equal(both, perturb_states(states, [{**rect, "kind": "black"}]))


@pytest.mark.parametrize(
    "rects, words",
    [
        ("x", ["list"]),
        ([{"x0": 0, "y0": 0, "x1": 2, "y1": 1}], ["x1", "[0, 1]"]),
        ([{"x0": 0.5, "y0": 0, "x1": 0.5, "y1": 1}], ["empty"]),
        ([{"x0": 0, "y0": 0, "x1": 1, "y1": 1, "kind": "fire"}], ["kind"]),
        ([{"x0": 0, "y0": 0, "x1": 1, "y1": 1, "z": 1}], ["unknown keys"]),
        ([{"x0": True, "y0": 0, "x1": 1, "y1": 1}], ["x0"]),
        ([{"x0": 0, "y0": 0, "x1": 1, "y1": 1}] * 33, ["at most"]),
    ],
)
def test_check_rects_refuses(rects, words):
    with pytest.raises(RequestError) as err:
        check_rects(rects)
    assert err.value.status == 400 and all(w in str(err.value) for w in words)


@pytest.mark.parametrize(
    "settings, status",
    [
        ({"network": "x"}, 403),
        ({"agent": "zoo/x"}, 403),
        ({"reduce": "/etc/passwd"}, 403),
        ({"reduce": "../x.pt"}, 403),
        ({"reduce": "a b"}, 400),
        ({"n_masks": [1]}, 400),
        ({"Bad-Name": 1}, 400),
        ({"sigma": float("inf")}, 400),
        ("x", 400),
    ],
)
def test_check_settings_refuses_paths_and_odd_values(settings, status):
    with pytest.raises(RequestError) as err:
        check_settings(settings)
    assert err.value.status == status


@pytest.mark.slow
def test_serve_module_is_not_imported_by_import_xrl():
    out = subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys, xrl, xrl.serve; "
            "print(sorted(m for m in sys.modules if m.split('.')[0] in "
            "('starlette', 'uvicorn', 'selenium') or m in ('xrl.serve.app', 'xrl.serve.engine')))",
        ],
        capture_output=True,
        text=True,
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


# ------------------------------------------------------------------ endpoints: results


def test_page_and_assets_are_served_locally(server):
    status, html = call(server, "GET", "")
    assert status == 200 and b"/static/app.js" in html
    for asset in ("static/app.js", "static/style.css"):
        status, body = call(server, "GET", asset)
        assert status == 200 and len(body) > 500
    assert b"http" not in html.replace(b"http-equiv", b"")  # no CDN, no internet
    status, js = call(server, "GET", "static/app.js")
    assert b"https://" not in js and b"http://" not in js


def test_agents_lists_the_zoo_with_cards(server):
    status, body = call(server, "GET", "api/agents")
    assert status == 200
    ids = {a["id"]: a for a in body["agents"]}
    assert body["default"] == {"agent": AGENT, "seed": 0}
    assert ids[AGENT]["source"] == "zoo" and "red-fetch-green" in ids[AGENT]["env"] and ids[AGENT]["score"]
    assert "shapes-cnn" not in ids  # classifiers are not agents


def test_methods_include_zoo_networks_and_say_why_others_cannot(server):
    status, body = call(server, "GET", f"api/methods?agent={AGENT}")
    assert status == 200
    ids = {m["id"]: m for m in body["methods"]}
    assert {
        "gradient",
        "rise",
        VM,
        "stalder_explainer:red-fetch-green-visionmask",
        "rexl:red-fetch-green-rexl-ds",
    } <= set(ids)
    assert ids["rise"]["lane"] == "slow" and ids["gradient"]["lane"] == "fast" and ids[VM]["per_action"]
    assert "attention" in body["unavailable"] and "attention module" in body["unavailable"]["attention"]


def test_episode_is_the_greedy_episode_of_the_seed(server):
    ep = server.episode
    model = xrl.load_agent(AGENT)
    env = xrl.make_env(AGENT)
    obs, _ = env.reset(seed=SEED)
    actions, total, done = [], 0.0, False
    while not done:  # an independent greedy rollout
        with torch.no_grad():
            action = int(model(torch.as_tensor(obs)[None].float() / 255)[0].argmax())
        actions.append(action)
        obs, reward, terminated, truncated, _ = env.step(action)
        total += reward
        done = terminated or truncated or len(actions) >= 40
    assert ep["actions"] == actions and ep["length"] == len(actions)
    assert ep["return"] == pytest.approx(total)
    assert ep["action_names"] == ["left", "right", "forward", "pickup"] and ep["has_labels"]
    assert ep["frame_size"] == [64, 64] and ep["state_shape"] == [3, 64, 64]
    again = call(server, "POST", "api/episode", {"agent": AGENT, "seed": SEED})
    assert again == (200, ep)  # recorded once: the same seed shows the same episode


def test_frame_is_the_recorded_frame_and_its_probabilities(server):
    status, body = call(server, "GET", f"api/frame?agent={AGENT}&seed={SEED}&t=2")
    assert status == 200
    with recorded(server) as ds:
        frame, scores = ds.frames(2)[0], torch.as_tensor(ds.scores[2])
    assert np.array_equal(decode(body["frame"]), frame)
    assert body["bars"]["kind"] == "probabilities" and body["action"] == server.episode["actions"][2]
    np.testing.assert_allclose(body["bars"]["values"], torch.softmax(scores, -1).numpy(), atol=1e-6)


def test_saliency_is_the_explainer_overlay_and_is_cached(server):
    from xrl.viz.overlay import overlay

    body = {"agent": AGENT, "seed": SEED, "t": 1, "method": "gradient"}
    status, first = call(server, "POST", "api/saliency", body, settle=True)
    assert status == 200 and first["method"] == "gradient"
    status, second = call(server, "POST", "api/saliency", body)
    assert status == 200 and second["cached"] and second["overlay"] == first["overlay"]
    with recorded(server) as ds:
        state, frame, action = ds.states(1), ds.frames(1)[0], int(ds.actions[1])
    model = xrl.load_agent(AGENT)
    saliency = xrl.get_explainer("gradient", model).explain(state, action)[0]
    assert np.array_equal(decode(first["overlay"]), overlay(frame, saliency))
    assert first["peak"] == list(np.unravel_index(int(saliency.argmax()), saliency.shape))
    # another action's map (a per-action method: explain_all computes every action's map at once)
    maps = xrl.get_explainer(
        "visionmask", model, network=str(server.engine.zoo / "red-fetch-green-visionmask" / "visionmask.pt")
    ).explain_all(state)[0]
    overlays = []
    for k in range(4):
        status, r = call(server, "POST", "api/saliency", {**body, "method": VM, "target": k}, settle=True)
        assert status == 200 and r["target"] == k
        assert np.array_equal(decode(r["overlay"]), overlay(frame, maps[k]))
        overlays.append(r["overlay"])
    assert len(set(overlays)) == 4


def test_poke_changes_the_probabilities_as_the_agent_does_on_the_poked_state(server):
    rect = {"x0": 0.25, "y0": 0.25, "x1": 0.75, "y1": 0.75, "kind": "black"}
    status, body = call(server, "POST", "api/probabilities", {"agent": AGENT, "seed": SEED, "t": 0, "rects": [rect]})
    assert status == 200
    with recorded(server) as ds:
        state, frame = ds.states(0), ds.frames(0)[0]
    model = xrl.load_agent(AGENT)
    poked = state.clone()
    poked[:, :, 16:48, 16:48] = 0  # the state is 64 x 64: the middle half blacked out
    with torch.no_grad():
        expected = torch.softmax(model(poked)[0], -1)
        original = torch.softmax(model(state)[0], -1)
    np.testing.assert_allclose(body["poked"]["values"], expected.numpy(), atol=1e-6)
    np.testing.assert_allclose(body["original"]["values"], original.numpy(), atol=1e-6)
    assert body["action_changes"] == (int(expected.argmax()) != int(original.argmax()))
    assert not np.allclose(body["poked"]["values"], body["original"]["values"])
    image = decode(body["frame"])
    assert np.all(image[16:48, 16:48] == 0) and np.array_equal(image[:16], frame[:16])
    # the map of the poked state
    status, r = call(
        server,
        "POST",
        "api/saliency",
        {"agent": AGENT, "seed": SEED, "t": 0, "method": "gradient", "rects": [rect]},
        settle=True,
    )
    from xrl.viz.overlay import overlay

    saliency = xrl.get_explainer("gradient", model).explain(poked, int(expected.argmax()))[0]
    assert status == 200 and np.array_equal(decode(r["overlay"]), overlay(image, saliency))


def test_scores_match_a_reimplementation_of_deletion_insertion_and_localization(server):
    body = {"agent": AGENT, "seed": SEED, "t": 3, "method": "gradient"}
    status, r = call(server, "POST", "api/scores", body, settle=True)
    assert status == 200
    model = xrl.load_agent(AGENT)
    with recorded(server) as ds:
        state, labels = ds.states(3), ds.labels(3)[0]
    with torch.no_grad():
        probs = torch.softmax(model(state), -1)[0]
    target = int(probs.argmax())
    assert r["target"] == target
    saliency = xrl.get_explainer("gradient", model).explain(state, target)[0].numpy().astype(np.float64)
    # RISE's CausalMetric: pixels in order np.flip(np.argsort(s)), one image row per step;
    # deletion starts from the state towards black, insertion from the RISE-blurred state
    from xrl.metrics.faithfulness import rise_blur

    order = np.flip(np.argsort(saliency.reshape(-1), kind="stable"))
    h, w = saliency.shape
    n_steps = (h * w + w - 1) // w
    for name, start, finish in (("deletion", state, torch.zeros_like(state)), ("insertion", rise_blur(state), state)):
        ys = []
        for i in range(n_steps + 1):
            x = start.clone().reshape(1, 3, -1)
            idx = torch.as_tensor(order[: w * i].copy())
            x[0, :, idx] = finish.reshape(1, 3, -1)[0, :, idx]
            with torch.no_grad():
                ys.append(float(torch.softmax(model(x.reshape(state.shape)), -1)[0, target]))
        np.testing.assert_allclose(r[name]["y"], ys, atol=1e-5)
        auc = (sum(ys) - ys[0] / 2 - ys[-1] / 2) / n_steps
        assert r[name]["auc"] == pytest.approx(auc, abs=1e-5)
    # localization: ROC AUC of the min-max normalised map, important vs unimportant pixels
    s = (saliency - saliency.min()) / (saliency.max() - saliency.min())
    pos, neg = s[labels == 1], s[labels == 0]
    wins = (pos[:, None] > neg[None, :]).sum() + 0.5 * (pos[:, None] == neg[None, :]).sum()
    assert r["localization"]["auc"] == pytest.approx(wins / (len(pos) * len(neg)), abs=1e-5)
    assert r["localization"]["important"] == pytest.approx(pos.sum(), rel=1e-4)


@pytest.mark.slow
def test_slow_method_runs_as_a_job_with_progress_then_is_cached(server):
    engine = server.engine
    engine.wait_seconds = 0.0  # answer at once: the job
    try:
        body = {"agent": AGENT, "seed": SEED, "t": 4, "method": "rise", "settings": {"n_masks": 300, "batch_size": 50}}
        status, job = call(server, "POST", "api/saliency", body)
        assert status == 202 and job["state"] in ("queued", "running") and job["what"] == "rise step 4"
        done = wait_job(server, job["job"])
        assert done["state"] == "done" and done["forwards"] >= 6 and done["fraction"] == 1.0  # 300 masks / 50
        status, r = call(server, "POST", "api/saliency", body)
        assert status == 200 and r["cached"]
        # the next frame knows how many forward passes a map takes: its progress is a fraction
        status, job = call(server, "POST", "api/saliency", {**body, "t": 3})
        assert status == 202 and job["expected_forwards"] == done["forwards"]
        wait_job(server, job["job"])
    finally:
        engine.wait_seconds = 0.4


@pytest.mark.slow
def test_video_reuses_watch_on_the_same_episode(server):
    status, job = call(server, "POST", "api/video", {"agent": AGENT, "seed": SEED, "methods": ["gradient", VM]})
    assert status == 202
    done = wait_job(server, job["job"])
    assert done["state"] == "done", done
    result = done["result"]
    assert result["same_episode"] and result["steps"] == server.episode["length"]
    status, video = call(server, "GET", result["download"].lstrip("/"))
    assert status == 200 and video[4:8] == b"ftyp"  # an MP4


# ------------------------------------------------------------------ endpoints: bad input


def test_unknown_routes_and_methods_are_json_errors(server):
    bad(*call(server, "GET", "api/nothing"), "no such page")
    bad(*call(server, "GET", "api/saliency"), "not allowed")
    bad(*call(server, "DELETE", "api/agents"), "not allowed")
    status, body = call(server, "GET", "static/../engine.py")
    assert status == 404


def test_host_header_of_another_site_is_refused(server):
    status, body = call(server, "GET", "api/agents", headers={"Host": "evil.example"})
    assert status == 400


@pytest.mark.parametrize(
    "query, status, words",
    [
        ("", 400, ["agent must be"]),
        ("?agent=/etc/passwd", 403, ["path"]),
        ("?agent=../zoo/red-fetch-green", 403, ["path"]),
        ("?agent=no-such-agent", 404, ["unknown agent", "red-fetch-green"]),
        ("?agent=shapes-cnn", 404, ["unknown agent"]),
    ],
)
def test_methods_bad_agent(server, query, status, words):
    got, body = call(server, "GET", f"api/methods{query}")
    assert got == status
    bad(got, body, *words)


@pytest.mark.parametrize(
    "body, status, words",
    [
        (None, 400, ["JSON object"]),
        ([1], 400, ["JSON object"]),
        ({"agent": AGENT}, 400, ["missing", "seed"]),
        ({"agent": AGENT, "seed": 0, "x": 1}, 400, ["unknown fields"]),
        ({"agent": AGENT, "seed": -1}, 400, ["seed"]),
        ({"agent": AGENT, "seed": "0"}, 400, ["seed"]),
        ({"agent": AGENT, "seed": True}, 400, ["seed"]),
        ({"agent": "/work/zoo/x/agent.pt", "seed": 0}, 403, ["path"]),
        ({"agent": 3, "seed": 0}, 400, ["agent"]),
    ],
)
def test_episode_bad_input(server, body, status, words):
    got, answer = call(server, "POST", "api/episode", body, raw=b"{not json" if body is None else None)
    assert got == status
    bad(got, answer, *words)


@pytest.mark.parametrize(
    "query, status, words",
    [
        (f"agent={AGENT}&seed=0", 400, ["missing", "t"]),
        (f"agent={AGENT}&seed=0&t=x", 400, ["integer"]),
        (f"agent={AGENT}&seed=0&t=99", 400, ["t must be a step", "[0, 4]"]),
        (f"agent={AGENT}&seed=0&t=-1", 400, ["t must"]),
        (f"agent={AGENT}&seed=7&t=0", 409, ["not recorded", "/api/episode"]),
        ("agent=/etc&seed=0&t=0", 403, ["path"]),
    ],
)
def test_frame_bad_input(server, query, status, words):
    got, body = call(server, "GET", f"api/frame?{query}")
    assert got == status
    bad(got, body, *words)


SAL = {"agent": AGENT, "seed": SEED, "t": 0, "method": "gradient"}


@pytest.mark.parametrize("path", ["api/saliency", "api/scores"])
@pytest.mark.parametrize(
    "change, status, words",
    [
        ({"method": "nope"}, 404, ["unknown method", "gradient"]),
        ({"method": "attention"}, 422, ["attention module"]),
        ({"method": None}, 400, ["method"]),
        ({"target": 4}, 400, ["target", "[0, 3]"]),
        ({"target": "left"}, 400, ["target"]),
        ({"settings": {"reduce": "bogus"}}, 422, ["refuses", "reduce"]),
        ({"settings": {"network": "/tmp/x.pt"}}, 403, ["path"]),
        ({"settings": {"no_such_setting": 1}}, 422, ["refuses", "its settings: reduce="]),
        ({"t": 5}, 400, ["t must"]),
        ({"seed": 99}, 409, ["not recorded"]),
        ({"extra": 1}, 400, ["unknown fields"]),
    ],
)
def test_saliency_and_scores_bad_input(server, path, change, status, words):
    body = {**SAL, **change}
    if path == "api/scores" and "rects" in body:
        body.pop("rects")
    got, answer = call(server, "POST", path, body)
    assert got == status, answer
    bad(got, answer, *words)


def test_saliency_and_probabilities_bad_rects(server):
    for path in ("api/saliency", "api/probabilities"):
        body = {**SAL, "rects": [{"x0": 0.5, "y0": 0.1, "x1": 0.2, "y1": 0.9}]}
        if path == "api/probabilities":
            body.pop("method")
        bad(*call(server, "POST", path, body), "empty")
    bad(*call(server, "POST", "api/probabilities", {"agent": AGENT, "seed": SEED, "t": 0, "rects": "all"}), "list")
    bad(*call(server, "POST", "api/probabilities", {"agent": AGENT, "seed": SEED}), "missing")
    bad(*call(server, "POST", "api/scores", {**SAL, "rects": []}), "unknown fields")


@pytest.mark.parametrize(
    "body, status, words",
    [
        ({"agent": AGENT, "seed": SEED, "methods": []}, 400, ["1 to 6"]),
        ({"agent": AGENT, "seed": SEED, "methods": "gradient"}, 400, ["list"]),
        ({"agent": AGENT, "seed": SEED, "methods": ["nope"]}, 404, ["unknown method"]),
        ({"agent": AGENT, "seed": 5, "methods": ["gradient"]}, 409, ["not recorded"]),
        (
            {"agent": AGENT, "seed": SEED, "methods": ["rexl:red-fetch-green-rexl-ds", "rexl:red-fetch-green-rexl-cs"]},
            422,
            ["one network"],
        ),
        ({"agent": AGENT, "seed": SEED, "methods": ["gradient"], "settings": {"out": "/tmp/x"}}, 403, ["path"]),
    ],
)
def test_video_bad_input(server, body, status, words):
    got, answer = call(server, "POST", "api/video", body)
    if got == 202:  # refused inside the job (the check needs the method list): the job says why
        done = wait_job(server, answer["job"])
        assert done["state"] == "error" and all(w in done["error"] for w in words), done
        return
    assert got == status
    bad(got, answer, *words)


def test_jobs_and_downloads_bad_input(server):
    status, body = call(server, "GET", "api/jobs/j999999")
    assert status == 404
    bad(status, body, "unknown job")
    bad(*call(server, "GET", "api/download/not-a-token"), "16 hex")
    status, body = call(server, "GET", "api/download/0123456789abcdef")
    assert status == 404
    bad(status, body, "unknown download")


# ------------------------------------------------------------------ the command


@pytest.mark.slow
def test_command_refuses_an_unknown_agent_in_one_line(tmp_path):
    done = subprocess.run(
        [sys.executable, "-m", "xrl.cli", "serve", "--agent", "no-such-agent", "--port", "0", "--cache", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 2
    assert "xrl serve: error: unknown agent 'no-such-agent'; known agents:" in done.stderr
    assert "Traceback" not in done.stderr


@pytest.mark.slow
def test_command_serves_on_127_0_0_1_and_prints_the_address(tmp_path):
    import re

    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "xrl.cli",
            "serve",
            "--agent",
            AGENT,
            "--env-seed",
            "3",
            "--port",
            "0",
            "--cache",
            str(tmp_path),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        url = None
        deadline = time.monotonic() + 300
        while url is None and time.monotonic() < deadline:
            line = proc.stdout.readline()
            assert line, proc.stderr.read()
            if m := re.search(r"open (http://127\.0\.0\.1:\d+/)", line):
                url = m.group(1)
        assert url is not None
        with urllib.request.urlopen(url + "api/agents", timeout=60) as r:
            body = json.loads(r.read())
        assert body["default"] == {"agent": AGENT, "seed": 3}
    finally:
        proc.terminate()
        proc.wait(timeout=60)


def test_saliency_scale_own_or_shared_and_its_range(server):
    """The overlay names its scaling: the map's own min-max (and its range, for the colour key)
    or a shared [lo, hi] from the page, which is what overlay(vrange=) draws; bad scales refused."""
    from xrl.viz.overlay import overlay

    body = {"agent": AGENT, "seed": SEED, "t": 1, "method": "gradient"}
    status, own = call(server, "POST", "api/saliency", body, settle=True)
    with recorded(server) as ds:
        state, frame, action = ds.states(1), ds.frames(1)[0], int(ds.actions[1])
    saliency = xrl.get_explainer("gradient", xrl.load_agent(AGENT)).explain(state, action)[0].numpy()
    assert status == 200 and own["scale"] == "own"
    assert own["range"] == pytest.approx([float(saliency.min()), float(saliency.max())])
    lo, hi = float(saliency.min()), float(saliency.max()) * 2
    status, shared = call(server, "POST", "api/saliency", {**body, "scale": [lo, hi]})
    assert status == 200 and shared["scale"] == [lo, hi]
    want = np.clip((saliency.astype(np.float64) - lo) / (hi - lo), 0, 1)  # by hand: shared scale, clipped
    got = decode(shared["overlay"]).astype(int)
    assert np.abs(got - overlay(frame, want, vrange=(0.0, 1.0)).astype(int)).max() <= 1
    assert shared["overlay"] != own["overlay"]
    for scale in ([1, 1], [2, 1], [0], "own", [True, 2]):
        got_status, answer = call(server, "POST", "api/saliency", {**body, "scale": scale})
        assert got_status == 400 and "scale" in answer["error"], (scale, answer)
    with pytest.raises(RequestError, match="scale"):
        check_scale([0, float("inf")])


def test_episode_says_when_it_was_cut_and_agents_and_networks_say_their_kind(server):
    ep = server.episode
    assert ep["max_steps"] == 40 and ep["truncated"] == (ep["length"] >= 40)
    status, listing = call(server, "GET", "api/agents")
    roles = {a["id"]: a["role"] for a in listing["agents"]}
    assert roles["red-fetch-green-digr-a1"] == "DIGR student of red-fetch-green"
    assert roles["red-fetch-green-sparse-fls-0"].startswith("FLS attention agent")
    assert roles[AGENT] == ""
    status, methods = call(server, "GET", f"api/methods?agent={AGENT}")
    labels = {m["id"]: m["label"] for m in methods["methods"]}
    assert (
        labels[VM] == "visionmask · explainer network red-fetch-green-visionmask" and labels["gradient"] == "gradient"
    )


def test_the_page_colour_key_is_the_overlay_colour_map():
    """app.js draws its key with the colours of xrl.viz.overlay (matplotlib's jet)."""
    import re
    from pathlib import Path

    from xrl.viz.overlay import key_colours

    js = (Path(xrl.__file__).parent / "serve" / "static" / "app.js").read_text()
    (stops,) = re.findall(r"const JET = \[([^\]]*)\]", js)
    assert re.findall(r'"(#[0-9a-f]{6})"', stops) == key_colours(11)
