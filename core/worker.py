"""The outbox worker loop: claim, run the handler for the job's kind, record the outcome.

A worker process runs two lanes of threads (:meth:`Worker.serve`): text threads claim only texts
and conversation replies (a few at a time), so a caller's text never waits behind a batch of CRM
pushes; general threads claim batches of anything. Idle threads sleep until core.wakeup says a job
is due (it arrived, or its time came); they poll by themselves only while the watcher is down.
"""

from __future__ import annotations

import logging
import os
import random
import signal
import sys
import threading
import traceback
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from core import logs, sqlite_writer
from core.errors import JobError, TransientError
from core.outbox import TEXT_PRIORITY, Deferred, Finished, Job, LeaseLost, Outbox
from core.wakeup import Waker

if TYPE_CHECKING:
    from sqlalchemy import Connection

log = logging.getLogger("textback.worker")

# A handler may return Finished when it marked its job done in its own last transaction.
Handler = Callable[[Job], "dict[str, Any] | Finished | None"]
# Told every job's outcome: done, retry, deferred, dead or lost (the bridge counts them in metrics).
OutcomeHook = Callable[[Job, str], None]

CRASH_POINTS = ("after_claim", "after_vendor_call", "before_commit")


def crash_point(name: str) -> None:
    """Test hook for the fault suite (tests/faults): inert unless ``$TEXTBACK_CRASH_AT`` is set.

    ``TEXTBACK_CRASH_AT`` is a comma-separated subset of :data:`CRASH_POINTS`; at a listed point the
    process SIGKILLs itself with probability ``$TEXTBACK_CRASH_PROBABILITY`` (default 1). Never set
    either variable in production.
    """
    points = os.environ.get("TEXTBACK_CRASH_AT")
    if not points or name not in points.split(","):
        return
    if random.random() < float(os.environ.get("TEXTBACK_CRASH_PROBABILITY", "1")):
        os.kill(os.getpid(), signal.SIGKILL)


# A point in a transaction -> what a test runs there (see pausing); empty outside tests.
_PAUSES: dict[str, Callable[[Connection], None]] = {}
PAUSE_POINTS = ("sent_read", "status_read")


def pause_point(name: str, conn: Connection) -> None:
    """Test hook: inert (one dict lookup) unless a test registered ``name`` with :func:`pausing`.

    Given the transaction's connection, a test runs a competing transaction at an exact point
    (a status callback between the worker's read and write of a sent text, say) instead of
    sleeping and hoping the race happens.
    """
    hook = _PAUSES.get(name)
    if hook is not None:
        hook(conn)


@contextmanager
def pausing(name: str, hook: Callable[[Connection], None]) -> Iterator[None]:
    """Run ``hook`` at every :func:`pause_point` called ``name`` while the block runs (tests only)."""
    if name not in PAUSE_POINTS:
        raise ValueError(f"no pause point {name!r}")
    _PAUSES[name] = hook
    try:
        yield
    finally:
        _PAUSES.pop(name, None)


class Worker:
    def __init__(
        self,
        outbox: Outbox,
        handlers: Mapping[str, Handler],
        poll_interval: float = 0.2,
        batch_size: int = 10,
        on_outcome: OutcomeHook | None = None,
        threads: int = 2,
        text_threads: int = 8,
        probe_interval: float = 0.01,
        text_batch_size: int = 1,
    ) -> None:
        self.outbox = outbox
        self.handlers = dict(handlers)
        self.poll_interval = poll_interval
        self.batch_size = batch_size
        self.on_outcome = on_outcome
        self.threads = threads
        self.text_threads = text_threads
        self.text_batch_size = text_batch_size
        self.probe_interval = probe_interval

    def run_once(self, limit: int | None = None, max_priority: int | None = None) -> int:
        jobs = self.outbox.claim(limit or self.batch_size, max_priority=max_priority)
        if jobs:
            crash_point("after_claim")
        # Texts claimed with other work go first: a batch's CRM pushes take a CRM round trip each,
        # and a caller waits for the text. On SQLite their writes also go before the pushes'.
        texts = [job for job in jobs if job.priority <= TEXT_PRIORITY]
        if texts:
            with sqlite_writer.urgent():
                self._work(texts)
        self._work([job for job in jobs if job.priority > TEXT_PRIORITY])
        return len(jobs)

    def _work(self, jobs: list[Job]) -> None:
        self._prepare(jobs)
        for job in jobs:
            self.process(job)

    def _prepare(self, jobs: list[Job]) -> None:
        """Let a handler batch work across the jobs claimed together (e.g. one CRM call for many)."""
        by_kind: dict[str, list[Job]] = {}
        for job in jobs:
            by_kind.setdefault(job.kind, []).append(job)
        for kind, group in by_kind.items():
            prepare = getattr(self.handlers.get(kind), "prepare", None)
            if prepare is None or len(group) < 2:
                continue
            try:
                prepare(group)
            except Exception as exc:
                log.warning("batch preparation failed", extra={"kind": kind, "error": type(exc).__name__})

    def process(self, job: Job) -> str:
        with logs.context(job_id=job.id, lead_id=job.lead_id, kind=job.kind):
            status = self._process(job)
            if self.on_outcome is not None:
                try:
                    self.on_outcome(job, {"pending": "retry"}.get(status, status))
                except Exception as exc:
                    log.warning("outcome hook failed", extra={"error": type(exc).__name__})
        return "pending" if status == "deferred" else status

    def _process(self, job: Job) -> str:
        fields = {"job_id": job.id, "kind": job.kind, "lead_id": job.lead_id, "attempt": job.attempts}
        if job.attempts > job.max_attempts:
            # Only reachable when workers kept dying mid-job: the lease expired every time.
            status = self.outbox.fail(job, JobError("gave up: the job's worker died on every attempt"))
            log.error("job dead", extra={**fields, "reason": "lease expired too often"})
            return status
        handler = self.handlers.get(job.kind)
        # A handler that renews the lease in its own first transaction saves a round trip per job.
        if not getattr(handler, "renews_lease", False) and not self.outbox.renew(job):
            log.warning("job lease lost before it started", extra=fields)
            return "lost"
        if handler is None:
            status = self.outbox.fail(job, JobError(f"no handler for job kind {job.kind!r}"))
            log.error("job dead", extra={**fields, "reason": "no handler"})
            return status
        try:
            result = handler(job)
        except LeaseLost:
            log.warning("job lease lost before it started", extra=fields)
            return "lost"
        except Deferred as deferred:
            self.outbox.defer(job, deferred.until, deferred.reason)
            log.info(
                "job deferred",
                extra={**fields, "until": deferred.until.isoformat(), "reason": deferred.reason},
            )
            return "deferred"
        except JobError as exc:
            status = self.outbox.fail(job, exc)
            level = logging.WARNING if status == "pending" else logging.ERROR
            log.log(
                level,
                "job failed",
                extra={**fields, "error": type(exc).__name__, "code": exc.code, "status": status},
            )
            return status
        except Exception as exc:
            # A bug or an unmapped library error: retry with backoff, keep the type for the admin.
            # Frames only: exception text from a driver can carry SQL parameters (phones, bodies).
            frames = "".join(traceback.format_tb(exc.__traceback__, limit=6))
            log.error("job crashed", extra={**fields, "error": type(exc).__name__, "trace": frames})
            return self.outbox.fail(job, TransientError(f"unexpected {type(exc).__name__}"))
        if isinstance(result, Finished):
            # The handler recorded its work and the job's completion in one transaction.
            if not result.owned:
                log.warning("job lease lost before completion", extra=fields)
                return "lost"
            log.info("job done", extra=fields)
            return "done"
        crash_point("before_commit")
        if not self.outbox.complete(job, result or None):
            log.warning("job lease lost before completion", extra=fields)
            return "lost"
        log.info("job done", extra=fields)
        return "done"

    def run(self, stop: threading.Event, waker: Waker | None = None, lane: str = "job") -> None:
        """Claim and run jobs until ``stop``; ``lane`` "text" takes only texts and replies."""
        text = lane == "text"
        if text:
            sqlite_writer.urgent_thread()  # on SQLite its writes go before the CRM pushes
        limit, max_priority = (self.text_batch_size, TEXT_PRIORITY) if text else (self.batch_size, None)
        log.info("worker started", extra={"worker": self.outbox.worker_id, "lane": lane})
        while not stop.is_set():
            try:
                busy = self.run_once(limit, max_priority)
            except Exception as exc:
                # The database may be restarting; keep the loop alive and try again shortly.
                log.error("claim failed", extra={"error": type(exc).__name__})
                stop.wait(self.poll_interval)
                continue
            if waker is None:
                if not busy:
                    stop.wait(self.poll_interval)
                continue
            if busy >= limit:
                # A full batch: there may be more than this thread can take, so wake another.
                waker.notify(lane)
            if not busy:
                waker.wait(lane)
        log.info("worker stopped", extra={"worker": self.outbox.worker_id, "lane": lane})

    def serve(
        self, stop: threading.Event, threads: int | None = None, text_threads: int | None = None
    ) -> None:
        """Run this process's lanes (``threads`` general and ``text_threads`` text threads) until ``stop``."""
        general = max(1, self.threads if threads is None else threads)
        texts = max(0, self.text_threads if text_threads is None else text_threads)
        if texts:
            # Text threads mostly wait on the database and vendors; each time one wakes it needs the
            # GIL back from a CPU-busy CRM thread. At the default 5 ms switch interval that costs a
            # text ~5 ms per round trip (dozens of them), so this process hands the GIL over sooner.
            sys.setswitchinterval(min(sys.getswitchinterval(), 0.0005))
        factory_bind = self.outbox.factory.kw.get("bind")
        waker = (
            Waker(factory_bind, self.poll_interval, self.probe_interval, self.outbox.worker_id)
            if factory_bind is not None
            else None
        )
        if waker is not None:
            waker.start()
        # Threads share the handlers; each claim has its own claim token, so they never share a job.
        pool = [
            threading.Thread(target=self.run, args=(stop, waker, lane), name=f"worker-{lane}-{i}")
            for lane, count in (("text", texts), ("job", general))
            for i in range(count)
        ]
        for t in pool:
            t.start()
        while not stop.wait(1.0):
            pass  # a bounded wait, so the main thread's signal handlers (SIGTERM) always run
        if waker is not None:
            waker.stop()
        for t in pool:
            t.join()
