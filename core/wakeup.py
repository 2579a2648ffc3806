"""Wake idle outbox threads when a job is due, instead of having every thread poll.

One watcher thread per worker process, with its own connection (no pool checkout, no ORM): on
PostgreSQL it LISTENs on its schema's outbox channel (a notification arrives at the commit of the
transaction that queued the job); on SQLite it asks ``PRAGMA data_version`` every
``probe_interval`` on a read-only connection (WAL readers never wait for a writer and never take
the write lock) and, when another connection committed, reads the new job ids.

A job due now wakes a thread of its lane at once. For jobs due later the watcher keeps a
schedule instead of ticking every ``poll_interval``: it reads the earliest due time (the oldest
pending ``next_attempt_at`` and the earliest lease end of a running job, whose worker may die;
one indexed query) and wakes a thread of each lane when that time comes. It reads it again
- when told a due time moved (the ``due`` notification: a job queued for later, a retry, a
  deferral; on SQLite, any commit),
- ``poll_interval`` after any wake-up (a woken thread may have left a job for another one),
- every ``fallback`` seconds in any case (writers that do not announce, lost notifications).
While a pending job is due but unclaimed (blocked behind its ordering key, or just claimed
elsewhere), the watcher ticks every ``poll_interval`` as before, because a job finishing
elsewhere is not announced. An idle worker therefore costs one cheap query per ``fallback``.
If the watcher fails, it says so, waits and reconnects; threads poll every ``poll_interval``
meanwhile.
"""

from __future__ import annotations

import logging
import math
import sqlite3
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import Engine

from core.outbox import CHANNEL_SQL, DUE, TEXT_PRIORITY

log = logging.getLogger("textback.worker")

LANES = ("text", "job")  # text: texts and conversation replies; job: anything
RECONNECT_SECONDS = 1.0
# How long an idle thread sleeps while the watcher is live: only a safety net, the watcher wakes it.
IDLE_WAIT_SECONDS = 10.0
# The earliest due time: of a pending job, or of the lease of a running one (its worker may die).
NEXT_DUE_SQL = (
    "SELECT (SELECT MIN(next_attempt_at) FROM outbox_jobs WHERE status = 'pending'),"
    " (SELECT MIN(locked_until) FROM outbox_jobs WHERE status = 'running')"
)


class Lane:
    """Idle threads of one lane wait here; a wake-up releases one of them.

    A wake-up that finds no thread idle is kept (a few at most): a thread that found nothing just
    before the job was queued, and is about to wait, must look once more instead of sleeping.
    Once closed (the worker is stopping) no thread waits at all, including one that was between
    its last claim and this wait when the stop came.
    """

    MAX_PENDING = 4

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._signals = 0  # released threads that have not run yet
        self._pending = 0  # wake-ups that found nobody idle
        self._closed = False
        self.idle = 0

    def wait(self, timeout: float) -> None:
        with self._cond:
            if self._pending or self._closed:
                self._pending = max(self._pending - 1, 0)
                return
            self.idle += 1
            try:
                self._cond.wait_for(lambda: self._signals > 0 or self._closed, timeout)
            finally:
                self.idle -= 1
            if self._signals:
                self._signals -= 1

    def close(self) -> None:
        """Release every waiting thread, and every thread that comes to wait from now on."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()

    def wake(self, count: int = 1) -> bool:
        """Release up to ``count`` idle threads; False when none was idle."""
        with self._cond:
            woke = min(count, max(self.idle - self._signals, 0))
            if woke:
                self._signals += woke
                self._cond.notify(woke)
            self._pending = min(self._pending + count - woke, self.MAX_PENDING)
            return woke > 0


class Schedule:
    """When the watcher next wakes the lanes (``tick_at``) and next reads the due time (``check_at``)."""

    def __init__(self, poll_interval: float, fallback: float) -> None:
        self.poll_interval = poll_interval
        self.fallback = fallback
        self.tick_at = math.inf
        self.check_at = 0.0  # read the due time first thing
        self.last_tick = -math.inf

    def next_event(self) -> float:
        return min(self.tick_at, self.check_at)

    def recheck(self, delay: float = 0.0) -> None:
        self.check_at = min(self.check_at, time.monotonic() + delay)

    def due_in(self, seconds: float | None) -> None:
        """The earliest job is due in ``seconds`` (None: no job at all)."""
        now = time.monotonic()
        if seconds is None:
            self.tick_at = math.inf
        elif seconds > 0:
            self.tick_at = now + seconds
        else:
            # Due and still unclaimed: look every poll_interval, as a polling worker would.
            self.tick_at = max(now, self.last_tick + self.poll_interval)
        self.check_at = now + self.fallback

    def advance(self, tick: Callable[[], None], read_due: Callable[[], float | None]) -> None:
        """Tick and read the due time when their time has come."""
        now = time.monotonic()
        if now >= self.tick_at:
            tick()
            self.last_tick = now
            self.tick_at = math.inf
            self.recheck(self.poll_interval)  # after the woken threads had their chance to claim
        if now >= self.check_at:
            self.due_in(read_due())


def seconds_until(earliest: Any) -> float | None:
    """Seconds from now until the earliest of the due times (naive UTC, or SQLite's text)."""
    times = [datetime.fromisoformat(t) if isinstance(t, str) else t for t in earliest if t is not None]
    if not times:
        return None
    return (min(times) - datetime.now(UTC).replace(tzinfo=None)).total_seconds()


class Waker:
    """Shared by every thread of one worker process (see :meth:`core.worker.Worker.serve`)."""

    def __init__(self, engine: Engine, poll_interval: float, probe_interval: float, name: str = "") -> None:
        self.engine = engine
        self.name = name
        self.poll_interval = poll_interval
        self.probe_interval = probe_interval
        self.fallback = max(5 * poll_interval, 1.0)
        self.lanes = {name: Lane() for name in LANES}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        # While the watcher is down, threads wait no longer than the poll interval.
        self.live = False

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="outbox-waker", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        for lane in self.lanes.values():
            lane.close()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def wait(self, lane: str, timeout: float = IDLE_WAIT_SECONDS) -> None:
        self.lanes[lane].wait(timeout if self.live else min(timeout, self.poll_interval))

    def notify(self, lane: str, count: int = 1) -> None:
        """A job of ``lane`` is due: wake a thread of that lane, else one that takes any job."""
        if not self.lanes[lane].wake(count) and lane != "job":
            self.lanes["job"].wake(count)

    def tick(self) -> None:
        for lane in self.lanes.values():
            lane.wake(1)

    def _run(self) -> None:
        watch = self._listen if self.engine.dialect.name == "postgresql" else self._probe
        while not self._stop.is_set():
            try:
                watch()
            except Exception as exc:
                log.warning(
                    "outbox wake-ups lost; polling until reconnected", extra={"error": type(exc).__name__}
                )
            self.live = False
            self.tick()  # anything queued while the watcher was down
            self._stop.wait(RECONNECT_SECONDS)

    def _listen(self) -> None:
        import psycopg

        url = self.engine.url.set(drivername="postgresql").render_as_string(hide_password=False)
        # Named, so an admin looking at pg_stat_activity sees whose listening session it is.
        app = f"textback-wakeup {self.name}"[:63]
        with psycopg.connect(url, autocommit=True, connect_timeout=5, application_name=app) as conn:
            row = conn.execute(f"SELECT {CHANNEL_SQL}").fetchone()
            assert row is not None
            conn.execute(f'LISTEN "{row[0]}"')
            self.live = True
            self.tick()  # anything queued while nobody listened
            schedule = Schedule(self.poll_interval, self.fallback)

            def read_due() -> float | None:
                return seconds_until(conn.execute(NEXT_DUE_SQL).fetchone() or ())

            while not self._stop.is_set():
                # Bounded so that stop() is prompt; each batch of notifications is acted on at once.
                timeout = min(max(schedule.next_event() - time.monotonic(), 0.0), 1.0)
                for note in conn.notifies(timeout=timeout, stop_after=1):
                    if note.payload == DUE:
                        schedule.recheck()
                    else:
                        self.notify("text" if note.payload == "text" else "job")
                        schedule.recheck(self.poll_interval)
                schedule.advance(self.tick, read_due)

    def _probe(self) -> None:
        database = self.engine.url.database
        if not database or database == ":memory:":
            return self._tick_only()
        uri = Path(database).absolute().as_uri() + "?mode=ro"  # read-only: never the write lock
        conn = sqlite3.connect(uri, uri=True, isolation_level=None, timeout=1)
        try:
            version = conn.execute("PRAGMA data_version").fetchone()[0]
            seen = int(conn.execute("SELECT COALESCE(MAX(id), 0) FROM outbox_jobs").fetchone()[0])
            self.live = True
            self.tick()
            schedule = Schedule(self.poll_interval, self.fallback)

            def read_due() -> float | None:
                return seconds_until(conn.execute(NEXT_DUE_SQL).fetchone() or ())

            while not self._stop.wait(self.probe_interval):
                # Changes only when another connection committed: the cheap question asked most often.
                now_version = conn.execute("PRAGMA data_version").fetchone()[0]
                if now_version != version:
                    version = now_version
                    seen = self._new_jobs(conn, seen)
                    schedule.recheck()
                schedule.advance(self.tick, read_due)
        finally:
            conn.close()
        return None

    def _new_jobs(self, conn: sqlite3.Connection, seen: int) -> int:
        """Wake a thread per pending job due now queued since ``seen`` (the highest id seen).

        Returns the new highest id.

        A job queued for later (a missed call's push held for its text) wakes nobody: a thread woken
        for it would only find nothing to claim, and the schedule, re-read after this commit, wakes
        one when it is due.
        """
        rows = conn.execute(
            "SELECT id, priority, next_attempt_at, status FROM outbox_jobs"
            " WHERE id > ? ORDER BY id LIMIT 500",
            (seen,),
        ).fetchall()
        if not rows:
            return seen
        # A job another process's thread already claimed (its watcher saw the commit first) wakes
        # nobody here: the woken thread would take the write lock only to find nothing.
        due = [
            priority
            for _, priority, at, status in rows
            if status == "pending" and (seconds_until((at,)) or 0.0) <= 0
        ]
        texts = sum(1 for priority in due if priority <= TEXT_PRIORITY)
        if texts:
            self.notify("text", texts)
        if len(due) > texts:
            self.notify("job", len(due) - texts)
        return int(rows[-1][0])

    def _tick_only(self) -> None:
        self.live = True
        while not self._stop.wait(self.poll_interval):
            self.tick()
