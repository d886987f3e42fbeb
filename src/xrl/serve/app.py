"""The HTTP side of ``xrl serve``: a Starlette app over an :class:`~xrl.serve.engine.Engine`.

Endpoints (JSON in, JSON out; every error is ``{"error": "..."}`` with a 4xx status for a bad
request, never a traceback page):

======  ==========================  =====================================================================
GET     ``/``                       the page (``static/index.html``; every asset is served from here)
GET     ``/api/agents``             agents to pick (zoo cards and command-line agents), the defaults
GET     ``/api/methods?agent=``     methods that can explain the agent (zoo networks included), and why others cannot
POST    ``/api/episode``            ``{agent, seed}``: record (once) and describe the episode; 202 + job while recording
GET     ``/api/frame?agent=&seed=&t=``  the frame (PNG data URL), the action taken, the bars
POST    ``/api/probabilities``      ``{agent, seed, t, rects}``: bars on the recorded and on the poked state, poked frame
POST    ``/api/saliency``           ``{agent, seed, t, method, settings?, target?, rects?}``: the overlay; 202 + job while computing
POST    ``/api/scores``             same fields: deletion/insertion curves and localization of that map
POST    ``/api/video``              ``{agent, seed, methods, settings?}``: MP4 of the episode via ``xrl watch`` (a job)
GET     ``/api/jobs/{id}``          a job's progress (forward passes of the agent, elapsed seconds) and result
GET     ``/api/download/{token}``   a finished video
======  ==========================  =====================================================================

A request that starts work waits up to ``engine.wait_seconds`` seconds; if the work is not done the
answer is ``202 {"job": id, ...progress}``: poll ``/api/jobs/{id}`` and, once ``state`` is
``done``, send the same request again (the map is then in the cache).
"""

from __future__ import annotations

import base64
import time
from pathlib import Path
from typing import Any

import numpy as np
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.middleware.trustedhost import TrustedHostMiddleware
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from xrl.serve.engine import (
    Engine,
    Job,
    RequestError,
    check_rects,
    check_scale,
    check_settings,
    perturb_frame,
    scores_view,
)

STATIC = Path(__file__).parent / "static"
#: the largest request body read (bytes); a larger one is answered 413 without being read
MAX_BODY = 1 << 20
#: jobs one client (address) may have queued or running at once; more are answered 429
MAX_JOBS_PER_CLIENT = 16
#: settings one request may carry
MAX_SETTINGS = 64


class BodyLimit:
    """ASGI middleware: a request whose ``Content-Length`` is over ``limit`` bytes is answered 413
    before its body is read; a streamed (chunked) body is cut off with 413 as soon as the bytes
    received pass ``limit``. Nothing over the limit is ever held in memory."""

    def __init__(self, app, limit: int = MAX_BODY) -> None:
        self.app, self.limit = app, limit

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        length = dict(scope.get("headers") or []).get(b"content-length")
        if length is not None:
            try:
                n = int(length)
            except ValueError:
                n = -1
            if not 0 <= n <= self.limit:
                status = 413 if n > self.limit else 400
                message = (
                    f"the request body is {n} bytes; at most {self.limit} are read"
                    if status == 413
                    else f"Content-Length must be a number of bytes, got {length.decode(errors='replace')!r}"
                )
                await JSONResponse({"error": message}, status_code=status, headers={"Connection": "close"})(
                    scope, receive, send
                )
                return
        seen = 0

        async def limited():
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.limit:
                    raise RequestError(
                        f"the request body is over {self.limit} bytes; at most {self.limit} are read", 413
                    )
            return message

        await self.app(scope, limited, send)


def png_url(image: np.ndarray) -> str:
    """An RGB ``(h, w, 3)`` uint8 image as a ``data:image/png;base64`` URL."""
    from xrl.viz.video import encode_png

    return "data:image/png;base64," + base64.b64encode(encode_png(image)).decode()


def _error(message: str, status: int) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status)


def _pending(job: Job) -> JSONResponse:
    return JSONResponse(job.progress(), status_code=202)


async def _settled(engine: Engine, result: Any, *, failed: str = "failed", status=lambda code: code) -> Any:
    """What the engine gave a route, waited for (``engine.wait_seconds``): the value itself, a
    finished job's result, or the job while it still runs (answer it with :func:`_pending`). A
    failed job raises its error (``failed`` when it has none; ``status`` maps its status)."""
    if not isinstance(result, Job):
        return result
    await run_in_threadpool(engine.wait, result)
    if result.state == "error":
        raise RequestError(result.error or failed, status(result.status))
    return result.result if result.state == "done" else result


async def _body(request: Request, allowed: set[str], required: set[str]) -> dict:
    try:
        data = await request.json()
    except RequestError:  # a body over MAX_BODY (BodyLimit)
        raise
    except Exception:
        raise RequestError("the request body must be a JSON object") from None
    if not isinstance(data, dict):
        raise RequestError(f"the request body must be a JSON object, got {type(data).__name__}")
    settings = data.get("settings")
    if isinstance(settings, dict) and len(settings) > MAX_SETTINGS:
        raise RequestError(f"{len(settings)} settings sent; a method has at most {MAX_SETTINGS}", 413)
    unknown = set(data) - allowed
    if unknown:
        raise RequestError(f"unknown fields {sorted(unknown)}; expected {sorted(allowed)}")
    missing = required - set(data)
    if missing:
        raise RequestError(f"missing fields {sorted(missing)}")
    return data


def _query_int(request: Request, name: str) -> int:
    value = request.query_params.get(name)
    if value is None:
        raise RequestError(f"missing query parameter {name!r}")
    try:
        return int(value)
    except ValueError:
        raise RequestError(f"query parameter {name} must be an integer, got {value!r}") from None


def create_app(
    engine: Engine, *, default_agent: str | None = None, default_seed: int = 0, allowed_hosts: list[str] | None = None
) -> Starlette:
    """The app; ``allowed_hosts`` guards against DNS rebinding (default: local names only)."""
    hosts = allowed_hosts if allowed_hosts is not None else ["127.0.0.1", "localhost", "[::1]", "::1"]
    return Starlette(
        routes=Api(engine, default_agent=default_agent, default_seed=default_seed).routes(),
        middleware=[Middleware(BodyLimit), Middleware(TrustedHostMiddleware, allowed_hosts=hosts)],
        exception_handlers={RequestError: _on_request_error, HTTPException: _on_http, Exception: _on_error},  # type: ignore[dict-item]
    )


class Api:
    """The endpoints over one engine (the table in the module docstring), each a method; the
    steps several share (a client admitted, a frame asked for, settings and a target checked)
    are methods too."""

    def __init__(self, engine: Engine, *, default_agent: str | None = None, default_seed: int = 0) -> None:
        self.engine, self.default_agent, self.default_seed = engine, default_agent, default_seed
        self.inflight: dict[str, list[Job]] = {}  # per client address: its jobs, to bound its queue

    def routes(self) -> list:
        return [
            Route("/", self.index),
            Route("/favicon.ico", self.favicon),
            Route("/api/agents", self.agents),
            Route("/api/methods", self.methods),
            Route("/api/episode", self.episode, methods=["POST"]),
            Route("/api/frame", self.frame),
            Route("/api/probabilities", self.probabilities, methods=["POST"]),
            Route("/api/saliency", self.saliency, methods=["POST"]),
            Route("/api/scores", self.scores, methods=["POST"]),
            Route("/api/video", self.video, methods=["POST"]),
            Route("/api/jobs/{job}", self.job),
            Route("/api/download/{token}", self.download),
            Mount("/static", StaticFiles(directory=STATIC), name="static"),
        ]

    # ------------------------------------------------------------------ steps the endpoints share

    def admit(self, request: Request) -> str:
        """The client's address, once it has fewer than MAX_JOBS_PER_CLIENT jobs queued or running."""
        client = request.client.host if request.client else "?"
        jobs = [j for j in self.inflight.get(client, []) if j.state in ("queued", "running")]
        self.inflight[client] = jobs
        if len(jobs) >= MAX_JOBS_PER_CLIENT:
            raise RequestError(
                f"{len(jobs)} jobs of yours are queued or running (at most {MAX_JOBS_PER_CLIENT}); wait for one to "
                "finish (GET /api/jobs/ID) and send the request again",
                429,
            )
        return client

    def track(self, client: str, result: Any) -> Any:
        if isinstance(result, Job) and all(j is not result for j in self.inflight.setdefault(client, [])):
            self.inflight[client].append(result)
        return result

    @staticmethod
    def checked_settings(method: dict, settings: dict) -> dict:
        """Settings of the method's constructor, of the types it declares (422 naming the accepted ones)."""
        from xrl.explainers import EXPLAINERS
        from xrl.method_settings import check_method_settings
        from xrl.serve.engine import accepted_settings

        try:
            check_method_settings(EXPLAINERS, {method["name"]: settings}, "setting")
        except ValueError as err:
            raise RequestError(
                f"method {method['id']!r} refuses settings {settings}: {str(err).removeprefix('--setting ')}; its "
                f"settings: {accepted_settings(method['name'], method['fixed'])}",
                422,
            ) from None
        return settings

    def target_of(self, episode, value: Any) -> int | None:
        if value is None:
            return None
        k = self.engine.model(episode.agent).n_actions
        if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < k:
            raise RequestError(
                f"target must be an action index in [0, {k - 1}] or null (the agent's action), got {value!r}"
            )
        return value

    def frame_request(self, data: dict):
        agent = self.engine.agent_id(data.get("agent"))
        seed = self.engine.check_seed(data.get("seed"))
        episode = self.engine.loaded_episode(agent, seed)
        t = self.engine.step_of(episode, data.get("t"))
        return agent, episode, t

    def map_request(self, data: dict):
        """A frame's request for a method's map: the frame, the method, its checked settings and target."""
        agent, ep, t = self.frame_request(data)
        method = self.engine.method(agent, data["method"])
        settings = self.checked_settings(method, check_settings(data.get("settings")))
        return ep, t, method, settings, self.target_of(ep, data.get("target"))

    # ------------------------------------------------------------------ the endpoints

    async def index(self, request: Request) -> Response:
        return FileResponse(STATIC / "index.html", media_type="text/html")

    async def favicon(self, request: Request) -> Response:
        return Response(status_code=204)

    async def agents(self, request: Request) -> JSONResponse:
        rows = self.engine.agents()
        default = self.default_agent or (rows[0]["id"] if rows else None)
        return JSONResponse(
            {
                "agents": rows,
                "default": {"agent": default, "seed": self.default_seed},
                "max_steps": self.engine.max_steps,
            }
        )

    def methods(self, request: Request) -> JSONResponse:
        agent = self.engine.agent_id(request.query_params.get("agent"))
        return JSONResponse(self.engine.methods(agent))

    async def episode(self, request: Request) -> JSONResponse:
        engine = self.engine
        data = await _body(request, {"agent", "seed"}, {"agent", "seed"})
        agent = engine.agent_id(data["agent"])
        seed = engine.check_seed(data["seed"])
        result = await _settled(
            engine,
            self.track(self.admit(request), await run_in_threadpool(engine.episode, agent, seed)),
            failed="recording failed",
            status=lambda code: code if code < 500 else 422,
        )
        if isinstance(result, Job):
            return _pending(result)
        return JSONResponse(engine.episode_info(result))

    def frame(self, request: Request) -> JSONResponse:
        data = {
            "agent": request.query_params.get("agent"),
            "seed": _query_int(request, "seed"),
            "t": _query_int(request, "t"),
        }
        agent, ep, t = self.frame_request(data)
        model = self.engine.model(agent)
        import torch

        view = scores_view(model, torch.as_tensor(ep.scores[t]))
        return JSONResponse({"t": t, "frame": png_url(ep.frames[t]), "action": int(ep.actions[t]), "bars": view})

    async def probabilities(self, request: Request) -> JSONResponse:
        data = await _body(request, {"agent", "seed", "t", "rects"}, {"agent", "seed", "t"})
        agent, ep, t = self.frame_request(data)
        rects = check_rects(data.get("rects"))
        poked = await run_in_threadpool(self.engine.probabilities, ep, t, rects)
        original = await run_in_threadpool(self.engine.probabilities, ep, t, [])
        image = perturb_frame(ep.frames[t], rects, ep.states.shape[-2])
        return JSONResponse(
            {
                "t": t,
                "original": original,
                "poked": poked,
                "rects": rects,
                "action_changes": poked["action"] != original["action"],
                "frame": png_url(image),
            }
        )

    async def saliency(self, request: Request) -> JSONResponse:
        data = await _body(
            request,
            {"agent", "seed", "t", "method", "settings", "target", "rects", "scale"},
            {"agent", "seed", "t", "method"},
        )
        ep, t, method, settings, target = self.map_request(data)
        rects = check_rects(data.get("rects"))
        scale = check_scale(data.get("scale"))
        start = time.perf_counter()
        client = self.admit(request)
        result = self.track(
            client, await run_in_threadpool(self.engine.saliency, ep, t, method, settings, target, rects)
        )
        cached = not isinstance(result, Job)
        result = await _settled(self.engine, result)
        if isinstance(result, Job):
            return _pending(result)
        from xrl.viz.overlay import overlay

        image = perturb_frame(ep.frames[t], rects, ep.states.shape[-2])
        return JSONResponse(
            {
                "t": t,
                "method": method["id"],
                "target": target,
                "cached": cached,
                # scaled to its own min-max (scale null) or to the page's shared [lo, hi]
                "overlay": png_url(overlay(image, result, vrange=scale)),
                "range": [float(np.min(result)), float(np.max(result))],
                "scale": "own" if scale is None else list(scale),
                "peak": [int(v) for v in np.unravel_index(int(np.argmax(result)), result.shape)],
                "shape": list(result.shape),
                "seconds": round(time.perf_counter() - start, 4),
            }
        )

    async def scores(self, request: Request) -> JSONResponse:
        data = await _body(
            request, {"agent", "seed", "t", "method", "settings", "target"}, {"agent", "seed", "t", "method"}
        )
        ep, t, method, settings, target = self.map_request(data)
        client = self.admit(request)
        result = await _settled(
            self.engine,
            self.track(client, await run_in_threadpool(self.engine.saliency, ep, t, method, settings, target, [])),
        )
        if isinstance(result, Job):
            return _pending(result)
        out = await run_in_threadpool(self.engine.curves, ep, t, method, settings, target, result)
        return JSONResponse({"t": t, "method": method["id"], **out})

    async def video(self, request: Request) -> JSONResponse:
        data = await _body(request, {"agent", "seed", "methods", "settings"}, {"agent", "seed", "methods"})
        agent = self.engine.agent_id(data["agent"])
        seed = self.engine.check_seed(data["seed"])
        ids = data["methods"]
        if not isinstance(ids, list) or not ids or len(ids) > 6:
            raise RequestError("methods must be a list of 1 to 6 method ids")
        chosen = [self.engine.method(agent, m) for m in ids]
        settings = check_settings(data.get("settings"))
        for m in chosen[:1]:  # the first method's settings (the others run at their defaults)
            self.checked_settings(m, settings)
        job = self.track(self.admit(request), self.engine.video(agent, seed, chosen, settings))
        return _pending(job)

    def job(self, request: Request) -> JSONResponse:
        j = self.engine.job(request.path_params["job"])
        body = j.progress()
        if j.state == "error":
            body["error"] = j.error
        elif j.state == "done" and isinstance(j.result, dict):
            body["result"] = j.result
        return JSONResponse(body)

    def download(self, request: Request) -> Response:
        path = self.engine.download(request.path_params["token"])
        return FileResponse(path, media_type="video/mp4", filename=f"xrl-serve-{path.stem}.mp4")


async def _on_request_error(request: Request, exc: RequestError) -> JSONResponse:
    return _error(str(exc), exc.status)


async def _on_http(request: Request, exc: HTTPException) -> JSONResponse:
    message = {
        404: f"no such page or endpoint: {request.url.path}",
        405: f"{request.method} is not allowed on {request.url.path}",
    }.get(exc.status_code, str(exc.detail))
    return _error(message, exc.status_code)


async def _on_error(request: Request, exc: Exception) -> JSONResponse:
    return _error(f"internal error ({type(exc).__name__}: {exc})", 500)


def bind_socket(host: str = "127.0.0.1", port: int = 0):
    """A listening TCP socket on ``host:port`` (port 0: a free one); ``OSError`` if taken."""
    import socket

    # proto IPPROTO_TCP: asyncio then sets TCP_NODELAY on every accepted connection (it checks the
    # proto); without it a keep-alive response's body waits ~40 ms for the client's delayed ACK
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(128)  # connections wait in the backlog until uvicorn accepts them
    return sock


class ServerThread:
    """The app served by uvicorn in a background thread (tests, benchmarks, the docs screenshot)::

    with ServerThread(create_app(engine)) as server:
        urllib.request.urlopen(server.url + "api/agents")
    """

    def __init__(self, app, host: str = "127.0.0.1", port: int = 0) -> None:
        import threading

        import uvicorn

        self.sock = bind_socket(host, port)
        self.port = self.sock.getsockname()[1]
        self.url = f"http://{host}:{self.port}/"
        self.server = uvicorn.Server(uvicorn.Config(app, log_level="warning"))
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True)

    def __enter__(self) -> ServerThread:
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError("the server did not start")
            time.sleep(0.02)
        return self

    def __exit__(self, *exc) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)
        self.sock.close()
