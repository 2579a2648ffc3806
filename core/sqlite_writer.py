"""SQLite's write lock, queued in the kernel instead of retried by SQLite's busy handler.

SQLite lets one connection write at a time. A connection that finds the lock taken retries in its
busy handler, which sleeps 1, 2, 5, 10, ... up to 100 ms between tries whatever the holder does:
under load a write waits tens of milliseconds for a lock held for one, the machine sits idle and
the latency of every webhook and text grows with the queue. Each write transaction here first
takes an exclusive ``flock`` on ``<database>-writer`` beside the database file; the kernel wakes
the next waiter the moment the holder commits, across threads and processes alike, and frees it
when a process dies (``kill -9`` included). SQLite's own lock and busy timeout stay underneath, so
a writer that does not take this lock (the ``sqlite3`` shell, an older textback) is still safe.

Webhooks are what Twilio times; texts and CRM pushes can wait a few milliseconds longer. So
background writers (the outbox workers) first queue among themselves on ``<database>-background``
(one of them at a time goes on), and then let foreground writers (the bridge) go first: a
foreground writer holds ``<database>-waiting`` shared while it waits for the write lock, and the
background writer waits until it can take that file exclusively, for at most YIELD_AT_MOST_S, so
that under a flood of webhooks the texts still move.
"""

from __future__ import annotations

import fcntl
import os
import sqlite3
import threading
import time
from typing import Any

_held = threading.local()
# The longest a background writer lets waiting foreground writers go first: under a flood of
# webhooks the texts still move.
YIELD_AT_MOST_S = 0.02
_POLL_S = 0.001


def _let_foreground_go_first(waiting_fd: int) -> None:
    """Wait while a foreground writer waits (they hold ``waiting_fd`` shared), at most YIELD_AT_MOST_S."""
    deadline = time.monotonic() + YIELD_AT_MOST_S
    while True:
        try:
            fcntl.flock(waiting_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            if time.monotonic() >= deadline:
                return
            time.sleep(_POLL_S)
            continue
        fcntl.flock(waiting_fd, fcntl.LOCK_UN)
        return


class QueuedWriterConnection(sqlite3.Connection):
    """A pysqlite connection that gives the queue's lock back after it commits or rolls back."""

    writer_fd: int | None = None
    background_fd: int | None = None
    waiting_fd: int | None = None
    writer_locked: bool = False

    def take_writer_lock(self) -> None:
        # A thread already holding the lock through another connection would wait for itself; it
        # falls back to SQLite's busy timeout for this one, as before.
        if self.writer_fd is None or self.writer_locked or getattr(_held, "active", False):
            return
        if self.background_fd is not None:
            fcntl.flock(self.background_fd, fcntl.LOCK_EX)
        try:
            if self.waiting_fd is not None:
                if self.background_fd is not None:
                    _let_foreground_go_first(self.waiting_fd)
                else:
                    fcntl.flock(self.waiting_fd, fcntl.LOCK_SH)
            try:
                fcntl.flock(self.writer_fd, fcntl.LOCK_EX)
            finally:
                if self.waiting_fd is not None and self.background_fd is None:
                    fcntl.flock(self.waiting_fd, fcntl.LOCK_UN)
        except BaseException:
            if self.background_fd is not None:
                fcntl.flock(self.background_fd, fcntl.LOCK_UN)
            raise
        self.writer_locked = True
        _held.active = True

    def give_writer_lock_back(self) -> None:
        if self.writer_locked and self.writer_fd is not None:
            self.writer_locked = False
            _held.active = False
            fcntl.flock(self.writer_fd, fcntl.LOCK_UN)
            if self.background_fd is not None:
                fcntl.flock(self.background_fd, fcntl.LOCK_UN)

    def commit(self) -> None:
        try:
            super().commit()
        finally:
            self.give_writer_lock_back()

    def rollback(self) -> None:
        try:
            super().rollback()
        finally:
            self.give_writer_lock_back()

    def close(self) -> None:
        try:
            super().close()
        finally:
            self.give_writer_lock_back()
            for fd in (self.writer_fd, self.background_fd, self.waiting_fd):
                if fd is not None:
                    os.close(fd)
            self.writer_fd = self.background_fd = self.waiting_fd = None


def open_queue(dbapi_conn: Any, database: str | None, background: bool) -> None:
    """Give a new connection its own handles on the queue files (none for an in-memory database)."""
    if not isinstance(dbapi_conn, QueuedWriterConnection) or not database or database == ":memory:":
        return
    dbapi_conn.writer_fd = os.open(f"{database}-writer", os.O_RDWR | os.O_CREAT, 0o600)
    dbapi_conn.waiting_fd = os.open(f"{database}-waiting", os.O_RDWR | os.O_CREAT, 0o600)
    if background:
        dbapi_conn.background_fd = os.open(f"{database}-background", os.O_RDWR | os.O_CREAT, 0o600)
