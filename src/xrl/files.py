"""Atomic file writes: a kill or a full disk midway leaves the last good file readable; and
the lock that keeps two runs out of one output (:class:`FolderLock`)."""

from __future__ import annotations

import contextlib
import datetime
import json
import math
import os
import socket
from collections.abc import Iterator
from pathlib import Path


class Locked(RuntimeError):
    """Another live process holds the output (one line: who, since when, what to do)."""


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class FolderLock:
    """A lock file (``path``) holding the pid, host and start time of the process using an
    output: taken with ``O_EXCL``; a second process is refused with those
    (``"{what} is in use by pid 4242 on gpu-box since ...; {advice}"``); a lock whose process is
    dead (same host) is taken over, one of another host never is. A context manager, or
    :meth:`acquire` / :meth:`release`."""

    def __init__(self, path: str | os.PathLike, what: str, advice: str) -> None:
        self.path, self.what, self.advice = Path(path), what, advice
        self.held = False

    def acquire(self) -> None:
        me = {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "started": datetime.datetime.now().isoformat(timespec="seconds"),
        }
        for _ in range(3):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                try:
                    holder = json.loads(self.path.read_text())
                    pid, host = int(holder["pid"]), str(holder["host"])
                except (OSError, ValueError, KeyError, TypeError):
                    holder, pid, host = None, None, None
                if holder is not None and (host != me["host"] or _alive(pid)):
                    raise Locked(
                        f"{self.what} is in use by pid {pid} on {host} since {holder.get('started')}; {self.advice}"
                    ) from None
                self.path.unlink(missing_ok=True)  # stale: its process is gone (or unreadable)
                continue
            with os.fdopen(fd, "w") as f:
                f.write(json.dumps(me))
            self.held = True
            return
        raise Locked(f"could not take the lock {self.path}")

    def release(self) -> None:
        if self.held:
            self.path.unlink(missing_ok=True)
            self.held = False

    def __enter__(self) -> FolderLock:
        self.acquire()
        return self

    def __exit__(self, *exc) -> None:
        self.release()


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success it replaces ``path`` in one rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def write_json(path: str | os.PathLike, data: dict) -> None:
    """Atomic, standard JSON: NaN and infinities (undefined values) are written as ``null``."""
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(_finite(data), indent=2, sort_keys=True, default=str, allow_nan=False) + "\n")


def _finite(x):
    if isinstance(x, float):
        return x if math.isfinite(x) else None
    if isinstance(x, dict):
        return {k: _finite(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_finite(v) for v in x]
    return x
