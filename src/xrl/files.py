"""Atomic file writes: a kill or a full disk midway leaves the last good file readable; and
the lock that keeps two runs out of one output (:class:`FolderLock`)."""

from __future__ import annotations

import contextlib
import datetime
import errno
import json
import math
import os
import secrets
import shutil
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

try:
    import fcntl
except ImportError:  # Windows: no flock
    fcntl = None  # type: ignore[assignment]


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
    output; a second process is refused with those (``"{what} is in use by pid 4242 on gpu-box
    since ...; {advice}"``); a lock whose process is dead (same host) is taken over, one of another
    host never is. A context manager, or :meth:`acquire` / :meth:`release`.

    The lock file appears with its content in one step: it is written under a temporary name and
    hard-linked onto ``path`` (``os.link`` fails if ``path`` exists), so no process ever reads a
    lock that is still empty and takes it for a stale one. Taking a stale lock over happens under
    an ``flock`` of the folder and only if ``path`` is still the very file found stale, so two
    processes that both find it stale cannot both take it."""

    def __init__(self, path: str | os.PathLike[str], what: str, advice: str) -> None:
        self.path, self.what, self.advice = Path(path), what, advice
        self.held = False

    def _holder(self) -> tuple[dict[str, Any] | None, os.stat_result | None]:
        """The lock file's content (None if unreadable) and its identity (None if it is gone)."""
        try:
            with open(self.path, "rb") as f:
                st = os.fstat(f.fileno())
                data = f.read(4096)
        except FileNotFoundError:
            return None, None
        except OSError:
            return None, os.stat(self.path) if self.path.exists() else None
        try:
            holder = json.loads(data)
            holder["pid"], holder["host"] = int(holder["pid"]), str(holder["host"])
        except (ValueError, KeyError, TypeError, IndexError):
            return None, st
        return holder, st

    def _create(self, content: bytes) -> bool:
        """``path`` made with ``content`` in one step; False if it exists."""
        tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
        try:
            with open(tmp, "xb") as f:
                f.write(content)
            try:
                os.link(tmp, self.path)
            except FileExistsError:
                return False
            except OSError as err:  # a file system without hard links
                if err.errno not in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EMLINK):
                    raise
                try:
                    fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
                except FileExistsError:
                    return False
                with os.fdopen(fd, "wb") as f:
                    f.write(content)  # (a reader may see it empty: it then waits, see acquire)
            return True
        finally:
            tmp.unlink(missing_ok=True)

    def _remove_if_same(self, st: os.stat_result | None) -> None:
        """Remove the stale lock file ``st`` under an ``flock`` of its folder, unless it was already
        replaced (another process took it over first)."""
        guard = None
        if fcntl is not None:  # (Windows has none: the identity check alone)
            try:
                guard = os.open(self.path.parent, os.O_RDONLY)
                fcntl.flock(guard, fcntl.LOCK_EX)
            except OSError:  # a file system without flock: the identity check alone
                pass
        try:
            try:
                now = os.stat(self.path)
            except FileNotFoundError:
                return
            if st is not None and (now.st_ino, now.st_dev, now.st_mtime_ns) == (st.st_ino, st.st_dev, st.st_mtime_ns):
                self.path.unlink(missing_ok=True)
        finally:
            if guard is not None:
                os.close(guard)  # releases the flock

    def acquire(self) -> None:
        me = {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "started": datetime.datetime.now().isoformat(timespec="seconds"),
        }
        content = json.dumps(me).encode()
        for attempt in range(50):
            if self._create(content):
                self.held = True
                return
            holder, st = self._holder()
            if st is None:
                continue  # released meanwhile: try again
            if holder is None and time.time() - st.st_mtime < 2:
                time.sleep(0.01 * (attempt + 1))  # written without os.link and not yet filled in: wait
                holder, st = self._holder()
                if st is None:
                    continue
            if holder is not None and (holder["host"] != me["host"] or _alive(holder["pid"])):
                raise Locked(
                    f"{self.what} is in use by pid {holder['pid']} on {holder['host']} since "
                    f"{holder.get('started')}; {self.advice}"
                )
            self._remove_if_same(st)  # stale: its process is gone (or the file is not a lock)
        raise Locked(f"could not take the lock {self.path}")

    def release(self) -> None:
        if self.held:
            self.path.unlink(missing_ok=True)
            self.held = False

    def __enter__(self) -> FolderLock:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


class DiskFull(OSError):
    """The disk filled up: one line saying what was kept and how to go on (free space, run again)."""

    def __str__(self) -> str:
        return str(self.strerror) if self.strerror else super().__str__()


def free_bytes(path: str | os.PathLike[str]) -> int:
    """Bytes free on the file system of ``path`` (or of its nearest existing parent)."""
    path = Path(path)
    while not path.exists() and path != path.parent:
        path = path.parent
    return shutil.disk_usage(path).free


def is_disk_full(err: BaseException) -> bool:
    """Whether ``err`` is a full disk: ``ENOSPC``, or HDF5's report of it (h5py raises those as
    ``RuntimeError`` or ``OSError`` carrying ``errno = 28`` in the text)."""
    if isinstance(err, OSError) and err.errno == errno.ENOSPC:
        return True
    text = str(err)
    return isinstance(err, (OSError, RuntimeError)) and ("errno = 28," in text or "No space left on device" in text)


def check_free(path: str | os.PathLike[str], need: int, what: str, then: str) -> None:
    """Raise :class:`DiskFull` before writing ``need`` bytes (plus 1 MiB) where less is free."""
    free = free_bytes(path)
    if free < need + 2**20:
        raise DiskFull(
            errno.ENOSPC,
            f"the disk of {path} is full ({free / 2**20:.1f} MB free, {what} needs {(need + 2**20) / 2**20:.1f} MB); "
            f"{then}",
        )


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike[str]) -> Iterator[Path]:
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


def write_json(path: str | os.PathLike[str], data: dict[str, Any]) -> None:
    """Atomic, standard JSON: NaN and infinities (undefined values) are written as ``null``."""
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(_finite(data), indent=2, sort_keys=True, default=str, allow_nan=False) + "\n")


def _finite(x: Any) -> Any:
    if isinstance(x, float):
        return x if math.isfinite(x) else None
    if isinstance(x, dict):
        return {k: _finite(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_finite(v) for v in x]
    return x
