"""``xrl serve``: explore an agent's decisions in the browser (docs/serve.md).

This module is light (the settings only): ``xrl.cli`` registers the subcommand from
:class:`ServeSettings`; the web app (Starlette, uvicorn) and the engine are imported by
:func:`run` when the command runs, never by ``import xrl``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

from xrl.settings import OnDevice

DEFAULT_PORT = 8765


@dataclass
class ServeSettings(OnDevice):
    """The settings of ``xrl serve`` (the flags come from these fields: :mod:`xrl.settings`)."""

    HELP: ClassVar[str] = (
        "interactive explorer in the browser: episode timeline, saliency per method and action, poke the frame, "
        "per-frame scores, PNG/MP4 export"
    )

    agent: list[str] = field(default_factory=list, metadata={"metavar": "NAME|PATH"})
    """agent shown first: a zoo name, or an agent file/run folder (the only paths the server reads besides the
    zoo); repeat to add more"""
    env_seed: int = 0
    """episode seed shown first"""
    host: str = "127.0.0.1"
    """address to bind (127.0.0.1: this machine only)"""
    allow_host: list[str] = field(default_factory=list, metadata={"metavar": "NAME"})
    """a Host header the server answers besides this machine's names and the bound address (requests naming
    another host are refused: DNS rebinding)"""
    port: int = DEFAULT_PORT
    """port (0 = any free port)"""
    max_steps: int = 500
    """steps recorded per episode"""
    cache: str | None = field(default=None, metadata={"metavar": "DIR"})
    """folder for recorded episodes and videos (default: a new temporary folder)"""


def run(args: ServeSettings) -> int:
    """Handler of ``xrl serve``: build the engine and the app, print the address, serve."""
    import os
    import signal

    from xrl.train.run import Terminated

    if args.env_seed < 0:
        raise ValueError(f"--env-seed must be >= 0, got {args.env_seed}")

    def terminated(signum, frame):  # SIGTERM unwinds like Ctrl-C: the engine's temporary folder is removed
        raise Terminated(f"terminated by signal {signum}")

    previous = signal.signal(signal.SIGTERM, terminated) if threading_main() else None
    # one request may not ask for more than this (each map, video or score is one request's work)
    os.environ.setdefault("XRL_MAX_ALLOC_GB", "1")
    try:
        given = _named_agents(args.agent)
        engine = _engine(args, given)
        try:
            _serve(args, engine, given)
        finally:
            engine.close()
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
    return 0


def _named_agents(values: list[str]) -> dict[str, str]:
    """``--agent`` values by the name the page shows: a file by its folder (zoo/pong/agent.pt:
    pong), a folder by itself, numbered when two share one; a zoo name as it is."""
    from pathlib import Path

    given: dict[str, str] = {}
    for value in values:
        path = Path(value)
        if path.exists():
            base = path.resolve().parent.name if path.is_file() else path.resolve().name
            name, i = base, 1
            while name in given:
                i += 1
                name = f"{base}-{i}"
            given[name] = str(path.resolve())
        else:
            given[value] = value  # a zoo name: checked by the engine
    return given


def _engine(args: ServeSettings, given: dict[str, str]):
    """The engine with every given agent loaded now (unknown names and unreadable agent files
    are refused here, not in the page), on ``--device``."""
    from pathlib import Path

    from xrl.serve.engine import Engine, RequestError

    engine = Engine(
        agents={k: v for k, v in given.items() if Path(v).exists() or v.startswith("hf://")},  # hf://: the Hub
        cache=args.cache,
        max_steps=args.max_steps,
        device=args.device,
    )
    try:
        for name in given:
            print(f"xrl serve: loading agent {name}", flush=True)
            engine.model(engine.agent_id(name))
    except RequestError as err:
        engine.close()
        raise ValueError(str(err)) from None
    except BaseException:
        engine.close()
        raise
    return engine


def _serve(args: ServeSettings, engine, given: dict[str, str]) -> None:
    """Preload the agent shown first, bind the socket, and serve until stopped."""
    import sys

    import uvicorn

    from xrl.serve.app import bind_socket, create_app

    # shown first: the first --agent, else the zoo's small Red-Fetch-Green agent, else the first listed
    listed = [a["id"] for a in engine.agents()]
    default = next(iter(given), None) or (
        "red-fetch-green" if "red-fetch-green" in listed else (listed[0] if listed else None)
    )
    if default is not None:
        engine.preload(default)
    local = args.host in ("127.0.0.1", "localhost", "::1")
    hosts = None if local and not args.allow_host else allowed_hosts(args.host, args.allow_host)
    if not local:
        print(
            f"xrl serve: warning: listening on {args.host}, beyond this machine: anyone who can reach it can run "
            "computations and read the zoo and the agents given; requests are answered only for the Host names "
            f"{', '.join(hosts or [])} (add others with --allow-host)",
            file=sys.stderr,
            flush=True,
        )
    app = create_app(engine, default_agent=default, default_seed=args.env_seed, allowed_hosts=hosts)
    try:
        sock = bind_socket(args.host, args.port)
    except OSError as err:
        raise ValueError(f"cannot listen on {args.host}:{args.port} ({err.strerror}); choose another --port") from None
    host = f"[{args.host}]" if ":" in args.host else args.host
    ready = f"xrl serve: open http://{host}:{sock.getsockname()[1]}/  (episodes and videos in {engine.cache_dir}; Ctrl-C stops)"

    class Server(uvicorn.Server):  # says "open" once uvicorn holds SIGTERM and SIGINT (they arrive in its loop)
        async def startup(self, sockets=None) -> None:
            await super().startup(sockets=sockets)
            print(ready, flush=True)

    Server(uvicorn.Config(app, log_level="warning")).run(sockets=[sock])  # uvicorn re-raises SIGTERM/SIGINT


def threading_main() -> bool:
    import threading

    return threading.current_thread() is threading.main_thread()


def allowed_hosts(host: str, extra: list[str]) -> list[str]:
    """The Host names answered: local names, this machine's name and addresses, the bound address
    (unless it is a wildcard), and ``extra``."""
    import socket

    names = {"127.0.0.1", "localhost", "[::1]", "::1", *extra}
    if host not in ("0.0.0.0", "::", ""):
        names.add(f"[{host}]" if ":" in host else host)
    try:
        hostname = socket.gethostname()
        names.update({hostname, socket.getfqdn()})
        names.update(socket.gethostbyname_ex(hostname)[2])
    except OSError:
        pass
    return sorted(n for n in names if n)
