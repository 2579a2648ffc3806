"""Jobs that become due later start while every worker thread is idle, on SQLite and PostgreSQL.

Workers here poll once a minute: a job found within a test's deadline was found by core.wakeup's
schedule (the earliest due time it reads and is told about), never by a poll. Outcomes only; the
deadlines are generous and only bound a wait.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from datetime import datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import Engine, update
from sqlalchemy.orm import Session, sessionmaker

from core import outbox
from core.db import make_engine, session_factory, transaction
from core.errors import TransientError
from core.models import OutboxJob, utcnow
from core.outbox import Deferred, Job, Outbox
from core.wakeup import Waker
from core.worker import Worker
from tests.conftest import pg_schema
from tests.schema import migrate

POLL = 60.0  # longer than any deadline below


@pytest.fixture
def elsewhere(db_url: str, engine: Engine) -> Iterator[sessionmaker[Session]]:
    """Another process's connections (the bridge, or a worker on another machine)."""
    eng = make_engine(db_url)
    try:
        yield session_factory(eng)
    finally:
        eng.dispose()


def add(factory: sessionmaker[Session], key: str, run_at: datetime | None = None) -> None:
    with transaction(factory) as s:
        outbox.enqueue(s, kind="crm.sync", target="hubspot", dedupe_key=key, run_at=run_at)


def wait_for(check: Any, timeout: float = 20.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(0.05)
    return False


class Serving:
    def __init__(self, worker: Worker) -> None:
        self.stop = threading.Event()
        self.thread = threading.Thread(target=worker.serve, args=(self.stop, 1, 1), daemon=True)

    def __enter__(self) -> Serving:
        self.thread.start()
        time.sleep(0.5)  # every thread idle, waiting on the waker
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join(15)
        assert not self.thread.is_alive()


def test_a_job_queued_for_later_elsewhere_starts_once_due_while_workers_idle(
    factory: sessionmaker[Session], elsewhere: sessionmaker[Session]
) -> None:
    started: list[datetime] = []
    worker = Worker(Outbox(factory, "w"), {"crm.sync": lambda j: started.append(utcnow()) or None}, POLL)
    with Serving(worker):
        due = utcnow() + timedelta(seconds=2)
        add(elsewhere, "later", run_at=due)
        assert wait_for(lambda: len(started) == 1), started
    assert started[0] >= due


def test_a_held_job_woken_elsewhere_starts_at_once_while_workers_idle(
    factory: sessionmaker[Session], elsewhere: sessionmaker[Session]
) -> None:
    """``outbox.wake`` makes a job held for its reason due now, and says so to idle workers."""
    started: list[str] = []
    worker = Worker(Outbox(factory, "w"), {"crm.sync": lambda j: started.append(j.target) or None}, POLL)
    later = utcnow() + timedelta(seconds=POLL)  # past every deadline here: only a wake runs them
    with transaction(elsewhere) as s:
        for target, reason in (("held", "waiting for a text"), ("paused", "hubspot is paused")):
            outbox.enqueue(s, kind="crm.sync", target=target, dedupe_key=target, run_at=later, reason=reason)
    with Serving(worker):
        with transaction(elsewhere) as s:
            assert outbox.wake(s, ["held", "paused"], "waiting for a text") == 1
        assert wait_for(lambda: started == ["held"]), started
        with transaction(elsewhere) as s:
            assert outbox.wake(s, ["held", "paused"], "waiting for a text") == 0  # woken once
    with factory() as s:
        jobs = {j.target: j for j in outbox.list_jobs(s)}
    assert (jobs["held"].status, jobs["held"].last_error) == ("done", None)
    # Held for another reason: it keeps its time and its reason.
    assert (jobs["paused"].status, jobs["paused"].last_error) == ("pending", "hubspot is paused")
    assert jobs["paused"].next_attempt_at > utcnow() + timedelta(seconds=POLL / 2)


def test_retries_and_deferrals_run_again_once_due_while_workers_idle(factory: sessionmaker[Session]) -> None:
    runs: dict[str, int] = {}

    def handler(job: Job) -> None:
        key = job.payload["key"]
        runs[key] = runs.get(key, 0) + 1
        if runs[key] == 1 and key == "retry":
            raise TransientError("vendor down")
        if runs[key] == 1 and key == "defer":
            raise Deferred(utcnow() + timedelta(seconds=1), "paused")

    box = Outbox(factory, "w", backoff_initial=0.5, backoff_max=1.0)
    with Serving(Worker(box, {"crm.sync": handler}, POLL)):
        for key in ("retry", "defer"):
            with transaction(factory) as s:
                outbox.enqueue(s, kind="crm.sync", target="hubspot", dedupe_key=key, payload={"key": key})
        assert wait_for(lambda: runs == {"retry": 2, "defer": 2}), runs
        # A session per look: one session would keep its first read's snapshot (and its objects),
        # which may come before the second run's completion commits.
        assert wait_for(lambda: statuses(factory) == {"done"}), statuses(factory)


def statuses(factory: sessionmaker[Session]) -> set[str]:
    with factory() as s:
        return {j.status for j in outbox.list_jobs(s)}


def test_a_job_whose_worker_died_is_taken_over_when_its_lease_runs_out(
    factory: sessionmaker[Session], elsewhere: sessionmaker[Session]
) -> None:
    add(elsewhere, "orphan")
    (claimed,) = Outbox(elsewhere, "dead-worker", lease_seconds=1.5).claim(1)  # then it died
    done: list[int] = []
    with Serving(Worker(Outbox(factory, "w"), {"crm.sync": lambda j: done.append(j.attempts) or None}, POLL)):
        assert wait_for(lambda: done == [2]), done
    assert claimed.attempts == 1


class CountingOutbox(Outbox):
    """The real outbox, counting the claims its worker threads make."""

    claims = 0

    def claim(self, *args: Any, **kwargs: Any) -> list[Job]:
        type(self).claims += 1
        return super().claim(*args, **kwargs)


def idle_claims(since: int, threads: int = 2, quiet: float = 0.3, timeout: float = 20.0) -> int:
    """CountingOutbox's claims once each of the worker's ``threads`` has made its first claim (after
    ``since``) and none has claimed for ``quiet`` s: every thread waits on the waker. A fixed sleep
    was too short for that on a loaded machine."""
    deadline = time.monotonic() + timeout
    last, changed = CountingOutbox.claims, time.monotonic()
    while time.monotonic() < deadline:
        time.sleep(0.02)
        if CountingOutbox.claims != last:
            last, changed = CountingOutbox.claims, time.monotonic()
        elif last - since >= threads and time.monotonic() - changed >= quiet:
            return last
    raise AssertionError(f"the worker's threads did not settle: {CountingOutbox.claims - since} claims")


def test_a_job_queued_for_later_wakes_no_thread_before_it_is_due(
    factory: sessionmaker[Session], elsewhere: sessionmaker[Session]
) -> None:
    """A held push is queued for later with every missed call: waking a thread for it is a wasted claim."""
    started: list[str] = []
    box = CountingOutbox(factory, "w")
    start = CountingOutbox.claims
    with Serving(Worker(box, {"crm.sync": lambda j: started.append(j.target) or None}, POLL)):
        before = idle_claims(start)
        add(elsewhere, "later", run_at=utcnow() + timedelta(seconds=POLL / 2))
        time.sleep(1.5)  # the SQLite probe and PostgreSQL's LISTEN have seen the commit by now
        assert CountingOutbox.claims == before
        add(elsewhere, "now")
        assert wait_for(lambda: started == ["hubspot"])  # a job due now still wakes a thread at once
    assert CountingOutbox.claims > before


def test_jobs_of_another_schema_in_the_same_database_wake_no_thread(
    factory: sessionmaker[Session], db_url: str
) -> None:
    """Deployments sharing one PostgreSQL database in different schemas: PostgreSQL delivers a
    notification to every listener of the database, so each schema has its own channel."""
    if db_url.startswith("sqlite"):
        pytest.skip("a SQLite database is a file of its own")
    started: list[str] = []
    box = CountingOutbox(factory, "w")
    start = CountingOutbox.claims
    with pg_schema() as other_url:
        other = make_engine(other_url)
        try:
            migrate(other)
            with Serving(Worker(box, {"crm.sync": lambda j: started.append(j.target) or None}, POLL)):
                before = idle_claims(start)
                for n in range(20):
                    add(session_factory(other), f"other-{n}")
                time.sleep(1.5)  # LISTEN would have seen them by now
                assert CountingOutbox.claims == before
                add(factory, "own")
                assert wait_for(lambda: started == ["hubspot"])  # its own schema's job wakes it at once
        finally:
            other.dispose()


def test_a_job_claimed_elsewhere_before_the_watcher_saw_it_wakes_no_thread(
    factory: sessionmaker[Session], elsewhere: sessionmaker[Session], db_url: str
) -> None:
    """Every worker process's watcher sees each new job; only the ones still pending wake a thread."""
    if not db_url.startswith("sqlite"):
        pytest.skip(
            "PostgreSQL's NOTIFY at the queueing commit wakes a thread, whose claim skips locked rows"
        )
    started: list[str] = []
    box = CountingOutbox(factory, "w")
    start = CountingOutbox.claims
    with Serving(Worker(box, {"crm.sync": lambda j: started.append(j.target) or None}, POLL)):
        before = idle_claims(start)
        with transaction(elsewhere) as s:
            # Queued and claimed by another process's thread in one commit, as a fast claim looks
            # to a watcher that probes a few milliseconds later.
            outbox.enqueue(s, kind="crm.sync", target="taken", dedupe_key="taken")
            s.execute(
                update(OutboxJob)
                .where(OutboxJob.dedupe_key == "taken")
                .values(
                    status="running",
                    locked_by="other",
                    claim_token="t",
                    locked_until=utcnow() + timedelta(hours=1),
                )
            )
        time.sleep(1.5)
        assert CountingOutbox.claims == before
        add(elsewhere, "now")
        assert wait_for(lambda: started == ["hubspot"])
    assert "taken" not in started


def test_a_thread_that_comes_to_wait_after_the_stop_does_not_wait(engine: Engine) -> None:
    # A thread whose last claim was under way when SIGTERM came reaches its wait after the stop
    # woke the idle ones: it must not sleep out its wait (the worker would outlive systemd's stop).
    waker = Waker(engine, poll_interval=POLL, probe_interval=0.01, name="stopping")
    waker.stop()
    done = threading.Event()

    def late_thread() -> None:
        waker.wait("job", timeout=POLL)
        waker.wait("text", timeout=POLL)
        done.set()

    thread = threading.Thread(target=late_thread, daemon=True)
    thread.start()
    assert done.wait(10), "a thread waited for wake-ups after the worker stopped"
