"""SQLite's WAL checkpoints, run beside the writers instead of inside one of their commits.

By default SQLite checkpoints (copies the write-ahead log back into the database file, with an
fsync) inside the commit that takes the log past 1,000 pages. The committing connection still
holds the write queue (core.sqlite_writer) then, so every writer waits: about once in 125 write
transactions, all of them stall for 20-30 ms. Here the connections do not checkpoint on commit
(``PRAGMA wal_autocheckpoint=0``, set in core.db), and each process that opens the database runs
one thread that checkpoints it every :data:`INTERVAL_S` seconds in PASSIVE mode, which never
waits for (and never blocks) a reader or a writer. Several processes' threads take turns on
SQLite's checkpoint lock. The thread ends with the process, its engine, or the database file.

SQLite starts the log afresh only when a writer finds every page of it copied back; under steady
writes a checkpoint beside them never catches up, and the log would grow for as long as the load
lasts. So once it holds more than :data:`RESTART_FRAMES` pages, the thread copies what was written
during its pass again while it holds the write queue: a few milliseconds, where SQLite's own
checkpoint held it for the whole log.
"""

from __future__ import annotations

import fcntl
import os
import sqlite3
import threading
import time
import weakref
from typing import Any

INTERVAL_S = 0.25
_TICK_S = 0.25
RESTART_FRAMES = 2000  # pages of log (8 MB at 4 KiB) before a pass under the write queue
# (process id, database path) -> the engines of this process on it; their thread runs while any does
_engines: dict[tuple[int, str], weakref.WeakSet[Any]] = {}
_lock = threading.Lock()


def _forget_in_child() -> None:
    """A forked process (a gunicorn worker) starts its own threads, with a lock nobody holds.

    The fork copies the lock as it was: taken, if the parent's thread held it at that moment.
    """
    global _lock
    _lock = threading.Lock()
    _engines.clear()


os.register_at_fork(after_in_child=_forget_in_child)


def ensure_running(engine: Any, database: str) -> None:
    """Start this process's checkpoint thread for ``database`` unless it runs already."""
    key = (os.getpid(), os.path.abspath(database))  # a forked worker starts its own
    with _lock:
        engines = _engines.get(key)
        if engines is not None:
            engines.add(engine)
            return
        engines = _engines[key] = weakref.WeakSet([engine])
    thread = threading.Thread(
        target=_run, args=(engines, key), name=f"textback-wal-checkpoint:{key[1]}", daemon=True
    )
    thread.start()


def _run(engines: weakref.WeakSet[Any], key: tuple[int, str]) -> None:
    database = key[1]
    writer_fd: int | None = None
    try:
        conn = sqlite3.connect(database, timeout=0, isolation_level=None, check_same_thread=False)
        writer_fd = os.open(f"{database}-writer", os.O_RDWR | os.O_CREAT, 0o600)
    except (sqlite3.Error, OSError):
        conn = None
    try:
        due = time.monotonic() + INTERVAL_S
        while conn is not None:
            time.sleep(min(INTERVAL_S, _TICK_S))  # a long interval still ends with its engine
            with _lock:
                if not engines or not os.path.exists(database):
                    # Every engine was dropped, or the database removed: nothing left to do. Decided
                    # under the lock that ensure_running takes, so no engine joins a thread that ends.
                    del _engines[key]
                    return
            if time.monotonic() < due:
                continue
            due = time.monotonic() + INTERVAL_S
            try:
                _pass(conn, writer_fd)
            except (sqlite3.Error, OSError):
                # A lock held elsewhere for a moment, a full disk: the next round tries again (the
                # thread must outlive a bad moment, or the log would grow until the process ends).
                continue
    finally:
        if conn is not None:
            conn.close()
        if writer_fd is not None:
            os.close(writer_fd)
        with _lock:
            if _engines.get(key) is engines:
                del _engines[key]  # not already: it ended on an error


def _pass(conn: sqlite3.Connection, writer_fd: int | None) -> None:
    _, frames, _ = checkpoint(conn)  # most of the log, beside the writers
    if frames > RESTART_FRAMES and writer_fd is not None:
        fcntl.flock(writer_fd, fcntl.LOCK_EX)
        try:
            checkpoint(conn)  # what was written meanwhile: the next writer starts the log afresh
        finally:
            fcntl.flock(writer_fd, fcntl.LOCK_UN)


def checkpoint(conn: sqlite3.Connection) -> tuple[int, int, int]:
    """One PASSIVE checkpoint: (busy, frames in the log, frames copied back)."""
    # fetchall: the statement runs to its end, so that it holds no read lock of the log afterwards.
    [(busy, frames, copied)] = conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
    return int(busy), int(frames), int(copied)
