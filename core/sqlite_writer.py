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

Among background writers, a caller waits for its text and a CRM does not: threads marked with
:func:`urgent_thread` (the outbox's text lane and the texts' caller lookups) hold
``<database>-urgent`` shared while they queue, and every other background writer first lets them
go, for at most BULK_YIELD_AT_MOST_S. Without it, the burst of CRM pushes that a rate-limit window
sets free (hundreds of small ledger writes) queued ahead of the texts and held them back for a
quarter of a second.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import sqlite3
import threading
import time
from collections.abc import Iterator
from typing import Any

_held = threading.local()
_urgent = threading.local()
# The longest a background writer lets waiting foreground writers go first: under a flood of
# webhooks the texts still move.
YIELD_AT_MOST_S = 0.02
# The longest a bulk background writer (a CRM push) lets waiting text writers go first: under a
# flood of texts the CRM still moves.
BULK_YIELD_AT_MOST_S = 0.05
_POLL_S = 0.001


def urgent_thread() -> None:
    """Mark the calling thread's background writes as urgent (texts): they go before bulk ones."""
    _urgent.on = True


@contextlib.contextmanager
def urgent() -> Iterator[None]:
    """The calling thread's background writes are urgent for the duration (a text in a mixed batch)."""
    before = getattr(_urgent, "on", False)
    _urgent.on = True
    try:
        yield
    finally:
        _urgent.on = before


def _waiting(fd: int) -> bool:
    """Whether some writer holds ``fd`` shared, i.e. waits for its turn."""
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    fcntl.flock(fd, fcntl.LOCK_UN)
    return False


def _let_go_first(fd: int, at_most: float) -> None:
    """Wait while others hold ``fd`` shared (they are waiting to write), at most ``at_most`` seconds."""
    deadline = time.monotonic() + at_most
    while _waiting(fd) and time.monotonic() < deadline:
        time.sleep(_POLL_S)


class QueuedWriterConnection(sqlite3.Connection):
    """A pysqlite connection that gives the queue's lock back after it commits or rolls back."""

    writer_fd: int | None = None
    background_fd: int | None = None
    waiting_fd: int | None = None
    urgent_fd: int | None = None
    writer_locked: bool = False

    def take_writer_lock(self) -> None:
        # A thread already holding the lock through another connection would wait for itself; it
        # falls back to SQLite's busy timeout for this one, as before.
        if self.writer_fd is None or self.writer_locked or getattr(_held, "active", False):
            return
        if self.background_fd is not None:
            self._queue_in_background()
        try:
            if self.waiting_fd is not None:
                if self.background_fd is not None:
                    _let_go_first(self.waiting_fd, YIELD_AT_MOST_S)
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

    def _queue_in_background(self) -> None:
        """Take the background writers' turn; a bulk writer first lets waiting text writers go."""
        assert self.background_fd is not None
        if self.urgent_fd is None:
            fcntl.flock(self.background_fd, fcntl.LOCK_EX)
        elif getattr(_urgent, "on", False):
            fcntl.flock(self.urgent_fd, fcntl.LOCK_SH)  # seen by bulk writers while this one queues
            try:
                fcntl.flock(self.background_fd, fcntl.LOCK_EX)
            finally:
                fcntl.flock(self.urgent_fd, fcntl.LOCK_UN)
        else:
            # Also when already queued: a text that queued behind this writer goes first all the same.
            deadline = time.monotonic() + BULK_YIELD_AT_MOST_S
            while True:
                _let_go_first(self.urgent_fd, max(0.0, deadline - time.monotonic()))
                fcntl.flock(self.background_fd, fcntl.LOCK_EX)
                if time.monotonic() >= deadline or not _waiting(self.urgent_fd):
                    return
                fcntl.flock(self.background_fd, fcntl.LOCK_UN)

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
            for fd in (self.writer_fd, self.background_fd, self.waiting_fd, self.urgent_fd):
                if fd is not None:
                    os.close(fd)
            self.writer_fd = self.background_fd = self.waiting_fd = self.urgent_fd = None


def open_queue(dbapi_conn: Any, database: str | None, background: bool) -> None:
    """Give a new connection its own handles on the queue files (none for an in-memory database)."""
    if not isinstance(dbapi_conn, QueuedWriterConnection) or not database or database == ":memory:":
        return
    dbapi_conn.writer_fd = os.open(f"{database}-writer", os.O_RDWR | os.O_CREAT, 0o600)
    dbapi_conn.waiting_fd = os.open(f"{database}-waiting", os.O_RDWR | os.O_CREAT, 0o600)
    if background:
        dbapi_conn.background_fd = os.open(f"{database}-background", os.O_RDWR | os.O_CREAT, 0o600)
        dbapi_conn.urgent_fd = os.open(f"{database}-urgent", os.O_RDWR | os.O_CREAT, 0o600)
