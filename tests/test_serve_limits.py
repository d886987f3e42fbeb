"""xrl serve's limits (issue 46): a request body over 1 MB is answered 413 without being read (a
200 MB body, sent with its length or streamed in chunks, and a body of 2 million settings keys),
settings are checked before a job starts and a setting whose estimate is over the limit is a 4xx
with the estimate, one client's queue is bounded (429), a server bound beyond loopback answers only
its own Host names and says so, and SIGTERM removes its temporary folder as Ctrl-C does."""

from __future__ import annotations

import json
import select
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from xrl.serve import allowed_hosts
from xrl.serve.app import MAX_BODY, ServerThread, create_app
from xrl.serve.engine import Engine

AGENT, SEED = "red-fetch-green", 0


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    engine = Engine(cache=tmp_path_factory.mktemp("serve-limits"), max_steps=40)
    with ServerThread(create_app(engine, default_agent=AGENT)) as s:
        s.engine = engine
        status, _ = post(s, "api/episode", {"agent": AGENT, "seed": SEED}, settle=True)
        assert status == 200
        yield s
    engine.close()


def _response(sock: socket.socket, timeout: float = 60) -> tuple[int, dict]:
    sock.settimeout(timeout)
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            break
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    headers = dict(
        line.split(": ", 1) for line in head.decode().split("\r\n")[1:] if ": " in line
    )  # lower-case names from uvicorn
    length = int(headers.get("content-length", 0))
    while len(body) < length:
        chunk = sock.recv(65536)
        if not chunk:
            break
        body += chunk
    try:
        return int(head.split()[1]), json.loads(body) if body else {}
    except ValueError:  # Starlette's own plain-text answers (an unknown Host)
        return int(head.split()[1]), {"text": body.decode()}


def post(server, path: str, body, *, settle: bool = False, host: str | None = None) -> tuple[int, dict]:
    """A plain HTTP/1.1 POST (so the tests see exactly what a client sees)."""
    while True:
        data = json.dumps(body).encode()
        with socket.create_connection(("127.0.0.1", server.port)) as sock:
            sock.sendall(
                f"POST /{path} HTTP/1.1\r\nHost: {host or f'127.0.0.1:{server.port}'}\r\n"
                f"Content-Type: application/json\r\nContent-Length: {len(data)}\r\n\r\n".encode()
                + data
            )
            status, result = _response(sock)
        if status == 202 and settle:
            _wait(server, result["job"])
            continue
        return status, result


def _wait(server, job: str) -> None:
    deadline = time.monotonic() + 120
    while True:
        with socket.create_connection(("127.0.0.1", server.port)) as sock:
            sock.sendall(f"GET /api/jobs/{job} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".encode())
            _, progress = _response(sock)
        if progress["state"] in ("done", "error"):
            return
        assert time.monotonic() < deadline
        time.sleep(0.05)


def _stream(server, head: str, pieces) -> tuple[int, dict, int]:
    """Send ``head`` then ``pieces`` (bytes, made one at a time: never the whole body in memory) until
    the server answers; ``(status, JSON, bytes sent)``."""
    sent = 0
    with socket.create_connection(("127.0.0.1", server.port)) as sock:
        sock.sendall(head.encode())
        for piece in pieces:
            if select.select([sock], [], [], 0)[0]:
                break  # the answer is there
            try:
                sock.sendall(piece)
            except (BrokenPipeError, ConnectionResetError):
                break
            sent += len(piece)
        status, result = _response(sock)
    return status, result, sent


def _head(server, extra: str) -> str:
    return (
        f"POST /api/saliency HTTP/1.1\r\nHost: 127.0.0.1:{server.port}\r\nContent-Type: application/json\r\n{extra}\r\n"
    )


def test_a_200_mb_body_with_its_length_is_413_before_it_is_read(server):
    size = 200 * 2**20
    block = b" " * 2**16
    status, result, sent = _stream(server, _head(server, f"Content-Length: {size}\r\n"), (block for _ in range(3200)))
    assert status == 413 and result == {"error": f"the request body is {size} bytes; at most {MAX_BODY} are read"}
    assert sent < size


def _chunked(pieces):
    for piece in pieces:
        yield f"{len(piece):x}\r\n".encode() + piece + b"\r\n"


def test_a_200_mb_streamed_body_is_cut_off_with_413(server):
    block = b" " * 2**16
    status, result, sent = _stream(
        server, _head(server, "Transfer-Encoding: chunked\r\n"), _chunked(block for _ in range(3200))
    )
    assert status == 413 and result == {
        "error": f"the request body is over {MAX_BODY} bytes; at most {MAX_BODY} are read"
    }
    assert sent < 20 * 2**20  # stopped long before 200 MB


def test_two_million_settings_keys_are_413(server):
    def pieces():
        yield b'{"agent": "red-fetch-green", "seed": 0, "t": 0, "method": "gradient", "settings": {'
        for i in range(0, 2_000_000, 10_000):
            yield ", ".join(f'"k{j}": 0' for j in range(i, i + 10_000)).encode() + (b", " if i < 1_990_000 else b"")
        yield b"}}"

    status, result, _ = _stream(server, _head(server, "Transfer-Encoding: chunked\r\n"), _chunked(pieces()))
    assert status == 413 and "at most 1048576 are read" in result["error"]
    settings = {f"k{j}": 0 for j in range(65)}  # small enough to be read: refused by its count
    status, result = post(
        server, "api/saliency", {"agent": AGENT, "seed": SEED, "t": 0, "method": "gradient", "settings": settings}
    )
    assert status == 413 and result == {"error": "65 settings sent; a method has at most 64"}


@pytest.mark.parametrize(
    "method, settings, words",
    [
        ("rise", {"n_masks": 10**7}, "masks"),
        ("smoothgrad", {"n_samples": 10**8}, "smoothgrad with n_samples=100000000"),
        ("smoothgrad", {"n_samples": 40_000}, "smoothgrad with n_samples=40000"),
    ],
)
def test_huge_settings_are_a_4xx_with_the_estimate(server, monkeypatch, method, settings, words):
    monkeypatch.setenv("XRL_MAX_ALLOC_GB", "1")  # what xrl serve sets unless it is given
    body = {"agent": AGENT, "seed": SEED, "t": 0, "method": method, "settings": settings}
    for path in ("api/saliency", "api/scores"):
        status, result = post(server, path, body, settle=True)
        assert status == 413, result
        assert words in result["error"] and "GB (limit 1.0 GB, XRL_MAX_ALLOC_GB)" in result["error"], result


def test_an_unknown_or_mistyped_setting_is_422_with_the_accepted_settings(server):
    body = {"agent": AGENT, "seed": SEED, "t": 0, "method": "rise", "settings": {"nosuch": 1}}
    status, result = post(server, "api/saliency", body)
    assert status == 422 and result["error"].startswith(
        "method 'rise' refuses settings {'nosuch': 1}: rise.nosuch: rise has no setting 'nosuch'; known: "
    )
    assert "; its settings: n_masks=None, " in result["error"]
    status, result = post(server, "api/saliency", {**body, "settings": {"n_masks": "many"}})
    assert status == 422 and result["error"].startswith(
        "method 'rise' refuses settings {'n_masks': 'many'}: rise.n_masks=many: expected an integer or null (default None)"
    )


def test_one_clients_queue_is_bounded(server, monkeypatch):
    import xrl.serve.app as app

    monkeypatch.setattr(app, "MAX_JOBS_PER_CLIENT", 1)
    monkeypatch.setattr(server.engine, "wait_seconds", 0.0)  # every job answers 202 at once
    body = {"agent": AGENT, "seed": SEED, "t": 1, "method": "rise", "settings": {"n_masks": 3000, "seed": 7}}
    first, job = post(server, "api/saliency", body)
    assert first == 202
    status, result = post(server, "api/saliency", {**body, "settings": {"n_masks": 3000, "seed": 8}})
    assert status == 429 and result["error"].startswith("1 jobs of yours are queued or running (at most 1)")
    _wait(server, job["job"])
    status, _ = post(server, "api/saliency", body)  # its own job done: admitted again (and cached)
    assert status == 200


def test_a_server_beyond_loopback_answers_only_its_host_names(server):
    hosts = allowed_hosts("0.0.0.0", ["xrl.example"])
    assert "0.0.0.0" not in hosts and {"127.0.0.1", "localhost", "xrl.example", socket.gethostname()} <= set(hosts)
    with ServerThread(create_app(server.engine, default_agent=AGENT, allowed_hosts=hosts)) as other:
        body = {"agent": AGENT, "seed": SEED}
        assert post(other, "api/episode", body, host="evil.example")[0] == 400
        assert post(other, "api/episode", body, host="xrl.example")[0] == 200
        assert post(other, "api/episode", body, host=f"localhost:{other.port}")[0] == 200


@pytest.mark.slow
def test_the_command_warns_beyond_loopback_and_sigterm_removes_its_temporary_folder():
    proc = subprocess.Popen(
        [sys.executable, "-m", "xrl.cli", "serve", "--host", "0.0.0.0", "--port", "0", "--max-steps", "5"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        line = ""
        deadline = time.monotonic() + 180
        while "open http" not in line:
            assert time.monotonic() < deadline and proc.poll() is None, proc.stderr.read()
            line = proc.stdout.readline()
        folder = Path(line.split("episodes and videos in ")[1].split(";")[0])
        assert folder.is_dir()
        proc.send_signal(signal.SIGTERM)
        proc.wait(60)
        err = proc.stderr.read()
    finally:
        proc.kill()
    assert "xrl serve: warning: listening on 0.0.0.0, beyond this machine" in err
    assert err.strip().splitlines()[-1] == "xrl serve: terminated by signal 15" and proc.returncode == 143
    assert not folder.exists()
