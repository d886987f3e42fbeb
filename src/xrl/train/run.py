"""The run layer every trainer shares (``train/agent.py``, ``digr.py``, ``visionmask.py``,
``rexl.py``, ``classifier.py``): settings checked before anything is written, one lock per run
folder, checkpoints written as one unit, the card's command and the CLI flags made from the
trainer's dataclass.

A trainer reads::

    check_settings(args)                       # types and ranges, nothing written yet
    ...  build what can fail (load the agent, make an env)  ...
    with Run(args.out, recorded, ignore=IGNORED) as run:   # lock, args.json (resume check)
        latest = run.latest()                 # newest complete checkpoint folder, or None
        ...
        run.save(step, write)                 # write(folder) fills a fresh folder; one rename

**Checkpoints** live in ``run/checkpoints/<step>/``. A save writes every file into
``run/checkpoints/.<step>.partial<pid>/``, then ``complete.json`` (each file's size and
sha256), then renames the folder into place (the switch) and deletes all but the newest two
(the previous one is the fallback). :meth:`Run.latest` returns the newest folder whose
``complete.json`` matches its files, so a kill at any point of a save resumes from the newest
complete checkpoint. Nothing in a checkpoint is a pickle: tensors are read with
``torch.load(weights_only=True)``, the rest is JSON.

**The lock** ``run/.lock`` holds the pid, host and start time of the run using the folder; a
second run is refused with those, a lock whose pid is dead (same host) is taken over.

**A failed start** leaves the folder as it was: a folder this run created is removed, an
``args.json`` written by a run that never saved a checkpoint is replaced by the next command.
A resume whose settings differ only in ignored ones (a new budget) records them in ``args.json``
at its first save, so a refused or failed command changes nothing.

**SIGTERM** (``kill PID``, a scheduler's stop) ends a run as Ctrl-C does: inside ``with Run``
in the main thread it raises :class:`Terminated` (a ``KeyboardInterrupt``), so the lock is
released and a start that never saved leaves nothing; the checkpoints are untouched (a save cut
short leaves only a partial folder, which the next save removes). ``kill -9`` cannot be caught:
its lock is taken over by the next run (its pid is dead).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from xrl.artifacts import sha256
from xrl.files import FolderLock, Locked, write_json
from xrl.settings import (  # noqa: F401  (the flags and checks live in xrl.settings; trainers import them here)
    SettingsError,
    add_flags,
    check_pairs,
    check_settings,
    command,
    field_docs,
    from_flags,
    parse_pairs,
)

CHECKPOINTS = "checkpoints"
COMPLETE = "complete.json"
KEEP = 2  # the newest checkpoint and its fallback
HISTORY = "history.json"  # the training's log, beside args.json


#: another live process holds the run folder (the lock of every output: ``xrl.files.Locked``)
RunLocked = Locked


class Terminated(KeyboardInterrupt):
    """The process got SIGTERM during a run: unwinds it as Ctrl-C does (lock released)."""


def _terminated(signum, frame) -> None:
    raise Terminated(f"terminated by signal {signum}")


# ------------------------------------------------------------------ the run folder


class Run:
    """A training run folder: lock, settings, checkpoints (see the module docstring).

    ``settings`` are recorded in ``args.json``; resuming with others is refused naming the first
    that differs, except the ``ignore`` ones (a budget, the output path)."""

    def __init__(self, folder: str | os.PathLike, settings: dict, *, ignore=frozenset(), outputs=()) -> None:
        self.folder = Path(folder)
        self.settings, self.ignore, self.outputs = settings, set(ignore), tuple(outputs)
        self._created = False
        self._locked = False
        self._saved = False
        self._wrote_args = False
        self._new_budget = False  # only ignored settings changed: args.json takes them at the first save
        self._sigterm: Any = None  # the SIGTERM handler before this run's, while it is installed

    # -- lock and settings --------------------------------------------------------------------

    def __enter__(self) -> Run:
        if self.folder.exists() and not self.folder.is_dir():
            raise SettingsError(f"--out {self.folder} is a file, expected a run folder")
        self._created = not self.folder.exists()
        self.folder.mkdir(parents=True, exist_ok=True)
        self._lock()
        self._catch_sigterm()
        try:
            self._check_settings()
        except BaseException:
            self._release_sigterm()
            self._unlock()
            self._rollback()
            raise
        return self

    def __exit__(self, kind, err, tb) -> None:
        self._release_sigterm()
        self._unlock()
        if kind is not None and not self._saved:
            self._rollback()

    def _catch_sigterm(self) -> None:
        """SIGTERM raises :class:`Terminated` while the run holds the folder (main thread only,
        and only over the default handler: a handler the program set is left alone)."""
        if threading.current_thread() is threading.main_thread() and signal.getsignal(signal.SIGTERM) is signal.SIG_DFL:
            self._sigterm = signal.signal(signal.SIGTERM, _terminated)

    def _release_sigterm(self) -> None:
        if self._sigterm is not None:
            signal.signal(signal.SIGTERM, self._sigterm)
            self._sigterm = None

    def _rollback(self) -> None:
        """A start that failed before its first checkpoint leaves the folder as it found it
        (nothing is removed once a complete checkpoint exists, e.g. a failure right after the
        switch of the first save)."""
        if self.has_progress():
            return
        if self._created:
            shutil.rmtree(self.folder, ignore_errors=True)
        elif self._wrote_args:
            (self.folder / "args.json").unlink(missing_ok=True)

    @property
    def lock_path(self) -> Path:
        return self.folder / ".lock"

    def _lock(self) -> None:
        self._holder = FolderLock(
            self.lock_path, str(self.folder), "wait for it to finish or use another run folder (--out)"
        )
        self._holder.acquire()
        self._locked = True

    def _unlock(self) -> None:
        if self._locked:
            self._holder.release()
            self._locked = False

    def has_progress(self) -> bool:
        """Whether the folder holds anything a resume would continue from."""
        return self.latest() is not None or any(
            (self.folder / n).exists() for n in ("checkpoint.zip", "checkpoint.pkl", "checkpoint.pt", *self.outputs)
        )

    def _check_settings(self) -> None:
        config = self.folder / "args.json"
        if config.exists():
            try:
                old = json.loads(config.read_text())
            except (OSError, ValueError) as err:
                raise SettingsError(f"{config} is not readable JSON ({err}); delete it or use another --out") from None
            diff = {k: (old.get(k), v) for k, v in self.settings.items() if k not in self.ignore and old.get(k) != v}
            if diff and self.has_progress():
                first = next(iter(diff))
                raise SettingsError(
                    f"{self.folder} holds a run with other settings {diff} (stored, asked); the first is "
                    f"{first!r}: stored {diff[first][0]!r}, asked {diff[first][1]!r}; use another run folder (--out)"
                )
            if not diff:
                self._new_budget = old != self.settings
                return
        write_json(config, self.settings)
        self._wrote_args = True

    # -- checkpoints --------------------------------------------------------------------------

    @property
    def checkpoints(self) -> Path:
        return self.folder / CHECKPOINTS

    def latest(self) -> Path | None:
        """The newest complete checkpoint folder (``complete.json`` matching its files), or None."""
        return latest_checkpoint(self.folder)

    def save(self, step: int, write: Callable[[Path], None]) -> Path:
        """``write(folder)`` fills a fresh folder; it becomes ``checkpoints/<step>`` in one rename
        once ``complete.json`` records its files (``<step>.<n>`` if that step was saved before).
        Older checkpoints beyond the newest two go, and partial folders of killed saves."""
        self.checkpoints.mkdir(exist_ok=True)
        name = f"{int(step):012d}"
        tmp = self.checkpoints / f".{name}.partial{os.getpid()}"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
        _step("write")
        write(tmp)
        _step("files")
        manifest = {
            "step": int(step),
            "files": {
                p.name: {"bytes": p.stat().st_size, "sha256": sha256(p)} for p in sorted(tmp.iterdir()) if p.is_file()
            },
        }
        for p in tmp.iterdir():
            _fsync(p)
        (tmp / COMPLETE).write_text(json.dumps(manifest, indent=1))
        _fsync(tmp / COMPLETE)
        _step("manifest")
        final = self.checkpoints / name
        n = 0
        while final.exists():  # the same step saved again: a later name, so the switch stays one rename
            n += 1
            final = self.checkpoints / f"{name}.{n}"
        os.replace(tmp, final)  # the switch
        _fsync(self.checkpoints)
        _step("renamed")
        self._saved = True
        if self._new_budget:  # a resume with a new budget records it once it has saved a step
            write_json(self.folder / "args.json", self.settings)
            self._new_budget = False
        for p in _versions(self.checkpoints)[:-KEEP]:
            shutil.rmtree(p, ignore_errors=True)
        for p in self.checkpoints.iterdir():  # partial folders of killed saves (the lock makes them dead)
            if p.name.startswith("."):
                shutil.rmtree(p, ignore_errors=True)
        _step("cleaned")
        return final

    # -- the training history -----------------------------------------------------------------

    def write_history(self, history: dict, *, started: float | None = None) -> None:
        """``history.json`` in the run folder, rewritten after each checkpoint; at the end of a run
        ``started`` (its ``time.time()``) records ``train_seconds_last_run`` in it first."""
        if started is not None:
            history["train_seconds_last_run"] = round(time.time() - started, 1)
        write_json(self.folder / HISTORY, history)

    def checkpointed(self, history: dict, step: int, stop_at: int | None = None) -> bool:
        """After the checkpoint of ``step``: ``history.json`` rewritten; True when ``stop_at`` (a
        test stopping the run there, to resume it) is reached."""
        self.write_history(history)
        return stop_at is not None and step >= stop_at


def _step(name: str) -> None:
    """A point between two steps of a save (tests inject a failure here)."""


def _fsync(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def is_complete(folder: Path, *, verify_hash: bool = False) -> bool:
    """Whether ``folder`` is a checkpoint whose ``complete.json`` matches its files."""
    try:
        manifest = json.loads((folder / COMPLETE).read_text())
        for name, meta in manifest["files"].items():
            p = folder / name
            if p.stat().st_size != meta["bytes"] or (verify_hash and sha256(p) != meta["sha256"]):
                return False
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return False
    return True


def _versions(folder: Path) -> list[Path]:
    """The checkpoint folders (``<step>`` or ``<step>.<n>``), oldest first."""

    def order(p: Path):
        step, _, n = p.name.partition(".")
        return int(step), int(n or 0)

    return sorted(
        (
            p
            for p in folder.iterdir()
            if p.is_dir() and not p.name.startswith(".") and p.name.replace(".", "").isdigit()
        ),
        key=order,
    )


def latest_checkpoint(run: str | os.PathLike) -> Path | None:
    """The newest complete checkpoint folder of a run folder, or None."""
    folder = Path(run) / CHECKPOINTS
    if not folder.is_dir():
        return None
    for p in reversed(_versions(folder)):
        if is_complete(p, verify_hash=True):
            return p
    return None


def link(source: Path, target: Path) -> None:
    """``target`` becomes ``source`` (a hard link, else a copy) in one rename: e.g. a run's
    ``checkpoint.zip`` beside its checkpoints, pointing at the newest one's."""
    tmp = target.with_name(f".{target.name}.tmp{os.getpid()}")
    tmp.unlink(missing_ok=True)
    try:
        os.link(source, tmp)
    except OSError:
        shutil.copyfile(source, tmp)
    os.replace(tmp, target)


def read_json(path: Path) -> dict:
    """A JSON file of a checkpoint; a damaged one is named in the error."""
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError) as err:
        raise ValueError(f"{path} is not readable JSON ({err})") from None


def load_tensors(path: Path) -> dict:
    """A ``.pt`` file of a checkpoint, read with ``weights_only=True`` (no code runs)."""
    import torch

    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - torch raises many kinds for a damaged file
        raise ValueError(f"{path} is not a readable checkpoint file ({type(err).__name__}: {err})") from None


def zip_tensors(path: Path, name: str) -> dict:
    """One ``.pth`` entry of a Stable-Baselines3 zip (``policy.pth``, ``policy.optimizer.pth``),
    read with ``weights_only=True``; the zip's pickled entries are never read."""
    import io
    import zipfile

    import torch

    try:
        with zipfile.ZipFile(path) as archive:
            data = archive.read(name)
    except (OSError, KeyError, zipfile.BadZipFile) as err:
        raise ValueError(f"{path} has no readable {name} ({err})") from None
    try:
        return torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - a damaged entry
        raise ValueError(f"{path}: {name} is not readable weights ({type(err).__name__}: {err})") from None


TRUST_PICKLE = (
    "this run folder holds a checkpoint in the old pickle format ({files}); loading it runs code "
    "stored in the file. Pass --trust-pickle (trust_pickle=True) to resume it if you made it or trust "
    "its source; the next checkpoint is written in the new format (no pickle)"
)
