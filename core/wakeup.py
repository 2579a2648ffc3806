"""Wake idle outbox threads when a job arrives, instead of having every thread poll.

One watcher thread per worker process: on PostgreSQL it LISTENs on the outbox channel (a
notification arrives at the commit of the transaction that queued the job); on SQLite it reads the
highest job id every ``probe_interval`` on its own read-only connection (WAL readers never wait for
a writer and never take the write lock). Either way it also ticks every ``poll_interval``, so jobs
that become due later (retries, deferrals) and notifications lost while reconnecting are still
found. If the watcher fails, it says so, waits and reconnects; threads keep polling meanwhile.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
import time
from pathlib import Path

from sqlalchemy import Engine

from core.outbox import CHANNEL, TEXT_PRIORITY

log = logging.getLogger("textback.worker")

LANES = ("text", "job")  # text: texts and conversation replies; job: anything
RECONNECT_SECONDS = 1.0


class Lane:
    """Idle threads of one lane wait here; a wake-up releases one of them.

    A wake-up that finds no thread idle is kept (a few at most): a thread that found nothing just
    before the job was queued, and is about to wait, must look once more instead of sleeping.
    """

    MAX_PENDING = 4

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._signals = 0  # released threads that have not run yet
        self._pending = 0  # wake-ups that found nobody idle
        self.idle = 0

    def wait(self, timeout: float) -> None:
        with self._cond:
            if self._pending:
                self._pending -= 1
                return
            self.idle += 1
            try:
                self._cond.wait_for(lambda: self._signals > 0, timeout)
            finally:
                self.idle -= 1
            if self._signals:
                self._signals -= 1

    def wake(self, count: int = 1) -> bool:
        """Release up to ``count`` idle threads; False when none was idle."""
        with self._cond:
            woke = min(count, max(self.idle - self._signals, 0))
            if woke:
                self._signals += woke
                self._cond.notify(woke)
            self._pending = min(self._pending + count - woke, self.MAX_PENDING)
            return woke > 0


class Waker:
    """Shared by every thread of one worker process (see :meth:`core.worker.Worker.serve`)."""

    def __init__(self, engine: Engine, poll_interval: float, probe_interval: float, name: str = "") -> None:
        self.engine = engine
        self.name = name
        self.poll_interval = poll_interval
        self.probe_interval = probe_interval
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
            lane.wake(lane.idle)
        if self._thread is not None:
            self._thread.join(timeout=5)

    def wait(self, lane: str, timeout: float) -> None:
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
            conn.execute(f"LISTEN {CHANNEL}")
            self.live = True
            self.tick()
            last_tick = time.monotonic()
            while not self._stop.is_set():
                # Bounded so that stop() is prompt; each notification is passed on as it arrives.
                for note in conn.notifies(timeout=min(self.poll_interval, 1.0)):
                    self.notify("text" if note.payload == "text" else "job")
                if time.monotonic() - last_tick >= self.poll_interval:
                    self.tick()
                    last_tick = time.monotonic()

    def _probe(self) -> None:
        database = self.engine.url.database
        if not database or database == ":memory:":
            return self._tick_only()
        uri = Path(database).absolute().as_uri() + "?mode=ro"  # read-only: never the write lock
        conn = sqlite3.connect(uri, uri=True, isolation_level=None, timeout=1)
        try:
            seen = int(conn.execute("SELECT COALESCE(MAX(id), 0) FROM outbox_jobs").fetchone()[0])
            self.live = True
            self.tick()
            last_tick = time.monotonic()
            while not self._stop.wait(self.probe_interval):
                rows = conn.execute(
                    "SELECT id, priority FROM outbox_jobs WHERE id > ? ORDER BY id LIMIT 500", (seen,)
                ).fetchall()
                if rows:
                    seen = rows[-1][0]
                    texts = sum(1 for _, priority in rows if priority <= TEXT_PRIORITY)
                    if texts:
                        self.notify("text", texts)
                    if len(rows) > texts:
                        self.notify("job", len(rows) - texts)
                if time.monotonic() - last_tick >= self.poll_interval:
                    self.tick()
                    last_tick = time.monotonic()
        finally:
            conn.close()
        return None

    def _tick_only(self) -> None:
        self.live = True
        while not self._stop.wait(self.poll_interval):
            self.tick()
