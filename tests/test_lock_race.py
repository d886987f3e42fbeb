"""Issue 46: two processes that start taking the same :class:`xrl.files.FolderLock` at the same
instant (released from a barrier) never both hold it: 100 rounds on a free lock and 100 on a
stale one (a dead process's lock that both find and take over)."""

from __future__ import annotations

import json
import multiprocessing
import os
import socket

import pytest

from xrl.files import FolderLock, Locked

ROUNDS = 100


def _racer(index, path, rounds, stale, barrier, held, refused):
    for r in range(rounds):
        if index == 0 and stale:  # a lock left by a process that is gone (pid beyond any pid_max)
            stale_lock = {"pid": 999_999_999, "host": socket.gethostname(), "started": "then"}
            path.write_text(json.dumps(stale_lock))
        barrier.wait()
        lock = FolderLock(path, str(path), "wait")
        try:
            lock.acquire()
            held[2 * r + index] = 1
        except Locked:
            refused[2 * r + index] = 1
        barrier.wait()  # both have tried while the winner still holds it
        lock.release()
        barrier.wait()  # released before the next round


@pytest.mark.parametrize("stale", [False, True], ids=["free", "stale"])
def test_two_processes_at_a_barrier_never_both_hold_the_lock(tmp_path, stale):
    ctx = multiprocessing.get_context("fork")
    barrier = ctx.Barrier(2, timeout=30)
    held, refused = ctx.Array("b", 2 * ROUNDS, lock=False), ctx.Array("b", 2 * ROUNDS, lock=False)
    path = tmp_path / ".lock"
    procs = [ctx.Process(target=_racer, args=(i, path, ROUNDS, stale, barrier, held, refused)) for i in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
    assert [p.exitcode for p in procs] == [0, 0]
    both = [r for r in range(ROUNDS) if held[2 * r] and held[2 * r + 1]]
    assert both == [], f"both processes held the lock in {len(both)} of {ROUNDS} rounds"
    winners = [held[2 * r] + held[2 * r + 1] for r in range(ROUNDS)]
    assert winners == [1] * ROUNDS  # and one of them always got it
    assert [refused[2 * r] + refused[2 * r + 1] for r in range(ROUNDS)] == [1] * ROUNDS
    assert os.listdir(tmp_path) == []  # released, and no temporary file left behind


def test_the_lock_file_is_never_seen_empty(tmp_path):
    """The file appears with its content (written, then linked onto the name)."""
    lock = FolderLock(tmp_path / ".lock", "x", "wait")
    with lock:
        holder = json.loads((tmp_path / ".lock").read_text())
        assert holder["pid"] == os.getpid() and holder["host"] == socket.gethostname()
        assert os.listdir(tmp_path) == [".lock"]
        with pytest.raises(Locked, match=rf"^x is in use by pid {os.getpid()} on "):
            FolderLock(tmp_path / ".lock", "x", "wait").acquire()
    assert os.listdir(tmp_path) == []


def test_a_garbage_lock_file_is_taken_over(tmp_path):
    (tmp_path / ".lock").write_text("not json")
    os.utime(tmp_path / ".lock", (0, 0))
    with FolderLock(tmp_path / ".lock", "x", "wait"):
        assert json.loads((tmp_path / ".lock").read_text())["pid"] == os.getpid()
