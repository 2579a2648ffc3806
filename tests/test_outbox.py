"""The transactional outbox, through core.outbox's public functions, on SQLite and PostgreSQL."""

from __future__ import annotations

import threading
import time
from collections import Counter
from datetime import timedelta
from typing import Any

import pytest
from sqlalchemy import Engine, event
from sqlalchemy.orm import Session, sessionmaker

from core import outbox
from core.db import transaction
from core.errors import AuthError, RateLimited, Rejected, TransientError
from core.models import OutboxJob, utcnow
from core.outbox import Outbox


def add(factory: sessionmaker[Session], key: str, ordering_key: str | None = None, **kw: Any) -> bool:
    with transaction(factory) as s:
        return outbox.enqueue(s, kind="test.job", target="t", dedupe_key=key, ordering_key=ordering_key, **kw)


def row(factory: sessionmaker[Session], job_id: int) -> OutboxJob:
    with factory() as s:
        job = s.get(OutboxJob, job_id)
        assert job is not None
        return job


def all_rows(factory: sessionmaker[Session]) -> list[OutboxJob]:
    with factory() as s:
        return sorted(outbox.list_jobs(s, limit=10_000), key=lambda j: j.id)


# -- enqueue ----------------------------------------------------------------------------------------


def test_enqueue_is_idempotent_on_dedupe_key(factory: sessionmaker[Session]) -> None:
    assert add(factory, "k1", payload={"n": 1}) is True
    assert add(factory, "k1", payload={"n": 2}) is False
    assert add(factory, "k2") is True
    rows = all_rows(factory)
    assert [r.dedupe_key for r in rows] == ["k1", "k2"]
    assert rows[0].payload == {"n": 1}
    assert rows[0].status == "pending" and rows[0].attempts == 0


def test_enqueue_belongs_to_the_callers_transaction(factory: sessionmaker[Session]) -> None:
    with pytest.raises(RuntimeError), transaction(factory) as s:
        outbox.enqueue(s, kind="test.job", target="t", dedupe_key="rolled-back")
        raise RuntimeError("the event that caused the job failed")
    assert all_rows(factory) == []
    assert add(factory, "rolled-back") is True


# -- claiming ---------------------------------------------------------------------------------------


def test_concurrent_claims_give_each_job_to_exactly_one_worker(factory: sessionmaker[Session]) -> None:
    total = 60
    with transaction(factory) as s:
        for i in range(total):
            outbox.enqueue(s, kind="test.job", target="t", dedupe_key=f"job-{i}")
    boxes = [Outbox(factory, "worker-a", lease_seconds=60), Outbox(factory, "worker-b", lease_seconds=60)]
    claimed: list[tuple[int, str, str]] = []
    errors: list[BaseException] = []
    lock = threading.Lock()
    start = threading.Barrier(6)

    def claimer(box: Outbox) -> None:
        try:
            start.wait()
            empty = 0
            while empty < 3:
                jobs = box.claim(limit=3)
                if not jobs:
                    empty += 1
                    continue
                empty = 0
                with lock:
                    claimed.extend((j.id, box.worker_id, j.claim_token) for j in jobs)
        except BaseException as exc:  # surfaced below
            errors.append(exc)

    threads = [threading.Thread(target=claimer, args=(boxes[i % 2],)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert not errors, errors
    counts = Counter(job_id for job_id, _, _ in claimed)
    assert len(counts) == total
    assert set(counts.values()) == {1}, {k: v for k, v in counts.items() if v > 1}
    owners = {job_id: (worker, token) for job_id, worker, token in claimed}
    for r in all_rows(factory):
        assert r.status == "running" and r.attempts == 1
        assert (r.locked_by, r.claim_token) == owners[r.id]


def test_expired_lease_is_reclaimed_and_the_stale_worker_cannot_finish(
    factory: sessionmaker[Session],
) -> None:
    add(factory, "lease")
    old = Outbox(factory, "old", lease_seconds=30)
    new = Outbox(factory, "new", lease_seconds=30)
    t0 = utcnow()
    [stale] = old.claim(now=t0)
    assert new.claim(now=t0 + timedelta(seconds=29)) == []  # lease still held
    [fresh] = new.claim(now=t0 + timedelta(seconds=31))
    assert fresh.id == stale.id and fresh.claim_token != stale.claim_token
    assert fresh.attempts == 2
    # The stale worker comes back: it can neither finish, fail nor defer the job.
    assert old.complete(stale, {"by": "old"}) is False
    assert old.fail(stale, Rejected("stale")) == "lost"
    assert old.defer(stale, utcnow() + timedelta(hours=1), "stale") is False
    r = row(factory, fresh.id)
    assert (r.status, r.locked_by, r.claim_token) == ("running", "new", fresh.claim_token)
    assert new.complete(fresh, {"by": "new"}) is True
    r = row(factory, fresh.id)
    assert r.status == "done" and r.result == {"by": "new"}
    assert new.complete(fresh) is False  # completing twice is not possible either


def test_short_real_lease_expires(factory: sessionmaker[Session]) -> None:
    add(factory, "short")
    a = Outbox(factory, "a", lease_seconds=0.3)
    b = Outbox(factory, "b", lease_seconds=0.3)
    [job] = a.claim()
    assert b.claim() == []
    time.sleep(0.45)
    [again] = b.claim()
    assert again.id == job.id
    assert a.complete(job) is False and b.complete(again) is True


# -- ordering ---------------------------------------------------------------------------------------


def test_jobs_sharing_an_ordering_key_run_in_order(factory: sessionmaker[Session]) -> None:
    add(factory, "first", ordering_key="lead-1:twilio")
    add(factory, "second", ordering_key="lead-1:twilio")
    add(factory, "other", ordering_key="lead-2:twilio")
    box = Outbox(factory, "w", lease_seconds=60, backoff_initial=30, backoff_max=60)
    t0 = utcnow()
    jobs = box.claim(now=t0)
    by_key = {row(factory, j.id).dedupe_key: j for j in jobs}
    assert set(by_key) == {"first", "other"}  # "second" waits behind "first"
    assert box.complete(by_key["other"]) is True
    # While "first" is running, "second" stays blocked.
    assert box.claim(now=t0 + timedelta(seconds=1)) == []
    # "first" fails and waits for a future retry: "second" must still wait behind it.
    assert box.fail(by_key["first"], TransientError("later"), now=t0) == "pending"
    assert box.claim(now=t0 + timedelta(seconds=1)) == []
    [retried] = box.claim(now=t0 + timedelta(seconds=120))
    assert retried.id == by_key["first"].id
    assert box.complete(retried) is True
    [second] = box.claim(now=t0 + timedelta(seconds=121))
    assert row(factory, second.id).dedupe_key == "second"


def test_a_future_first_job_blocks_the_second(factory: sessionmaker[Session]) -> None:
    t0 = utcnow()
    add(factory, "scheduled", ordering_key="k", run_at=t0 + timedelta(hours=8))
    add(factory, "now", ordering_key="k")
    box = Outbox(factory, "w")
    assert box.claim(now=t0) == []
    [first] = box.claim(now=t0 + timedelta(hours=8, seconds=1))
    assert row(factory, first.id).dedupe_key == "scheduled"


def test_a_deferred_first_job_blocks_the_second(factory: sessionmaker[Session]) -> None:
    add(factory, "a", ordering_key="k")
    add(factory, "b", ordering_key="k")
    box = Outbox(factory, "w")
    [a] = box.claim()
    assert box.defer(a, utcnow() + timedelta(hours=1), "quiet hours") is True
    assert box.claim() == []


def test_complete_pending_finishes_only_pending_jobs_unclaimed(factory: sessionmaker[Session]) -> None:
    for key in ("waiting", "running", "dead", "rolled-back", "untouched"):
        add(factory, key, ordering_key=key, max_attempts=1)
    box = Outbox(factory, "w")
    claimed = {row(factory, j.id).dedupe_key: j for j in box.claim()}
    for key, job in claimed.items():
        if key == "dead":
            assert box.fail(job, Rejected("refused")) == "dead"
        elif key != "running":
            assert box.defer(job, utcnow(), "back") is True  # pending again, its attempt given back
    with pytest.raises(RuntimeError), transaction(factory) as s:
        outbox.complete_pending(s, {"rolled-back": {"by": "x"}})
        raise RuntimeError("the work that made it needless rolled back too")
    with transaction(factory) as s:
        done = outbox.complete_pending(s, {k: {"by": k} for k in ("waiting", "running", "dead", "missing")})
    assert done == 1
    states = {r.dedupe_key: (r.status, r.attempts, r.result) for r in all_rows(factory)}
    assert states == {
        "waiting": ("done", 0, {"by": "waiting"}),
        "running": ("running", 1, None),  # its worker finishes it
        "dead": ("dead", 1, None),
        "rolled-back": ("pending", 0, None),
        "untouched": ("pending", 0, None),
    }
    assert row(factory, claimed["waiting"].id).finished_at is not None
    # The worker that claimed it earlier cannot finish it again.
    assert box.complete(claimed["waiting"]) is False


# -- failures ---------------------------------------------------------------------------------------


def test_transient_errors_back_off_exponentially(factory: sessionmaker[Session]) -> None:
    add(factory, "flaky", max_attempts=10)
    box = Outbox(factory, "w", lease_seconds=600, backoff_initial=1, backoff_max=1000)
    now = utcnow()
    delays = []
    for _ in range(4):
        [job] = box.claim(now=now)
        assert box.fail(job, TransientError("503", code=503), now=now) == "pending"
        r = row(factory, job.id)
        assert r.status == "pending" and r.last_error_code == "503" and r.locked_until is None
        delay = (r.next_attempt_at - now).total_seconds()
        assert box.claim(now=now + timedelta(seconds=delay - 0.01)) == []
        delays.append(delay)
        now = r.next_attempt_at
    # multiplier * 2**(n-1) plus up to one multiplier of jitter: 1-2, 2-3, 4-5, 8-9 s.
    for n, delay in enumerate(delays):
        assert 2**n <= delay <= 2**n + 1.001, delays
    assert delays == sorted(delays)


def test_backoff_is_capped_by_backoff_max(factory: sessionmaker[Session]) -> None:
    add(factory, "capped", max_attempts=30)
    box = Outbox(factory, "w", lease_seconds=600, backoff_initial=1, backoff_max=5)
    now = utcnow()
    for _ in range(8):
        [job] = box.claim(now=now)
        box.fail(job, TransientError("x"), now=now)
        now = row(factory, job.id).next_attempt_at
    [job] = box.claim(now=now)
    box.fail(job, TransientError("x"), now=now)
    assert (row(factory, job.id).next_attempt_at - now).total_seconds() <= 5.001


def test_transient_retry_after_is_a_minimum(factory: sessionmaker[Session]) -> None:
    add(factory, "long-ra")
    add(factory, "short-ra")
    box = Outbox(factory, "w", lease_seconds=600, backoff_initial=100, backoff_max=1000)
    now = utcnow()
    jobs = {row(factory, j.id).dedupe_key: j for j in box.claim(now=now)}
    # A Retry-After longer than the backoff wins ...
    box.fail(jobs["long-ra"], TransientError("busy", retry_after=500), now=now)
    assert (row(factory, jobs["long-ra"].id).next_attempt_at - now).total_seconds() == pytest.approx(500)
    # ... and a shorter one does not shorten the backoff (100-200 s on the first attempt).
    box.fail(jobs["short-ra"], TransientError("busy", retry_after=0.5), now=now)
    delay = (row(factory, jobs["short-ra"].id).next_attempt_at - now).total_seconds()
    assert 100 <= delay <= 200.001


def test_rate_limited_honours_retry_after(factory: sessionmaker[Session]) -> None:
    add(factory, "429")
    box = Outbox(factory, "w", lease_seconds=600, backoff_initial=0.1, backoff_max=1)
    now = utcnow()
    [job] = box.claim(now=now)
    assert box.fail(job, RateLimited("slow down", retry_after=30, code=20429), now=now) == "pending"
    r = row(factory, job.id)
    assert 30 <= (r.next_attempt_at - now).total_seconds() <= 30.001
    assert r.last_error_code == "20429"
    assert box.claim(now=now + timedelta(seconds=29)) == []
    assert len(box.claim(now=now + timedelta(seconds=31))) == 1


def test_rejected_is_dead_at_once(factory: sessionmaker[Session]) -> None:
    add(factory, "bad", max_attempts=8)
    box = Outbox(factory, "w")
    [job] = box.claim()
    assert box.fail(job, Rejected("21211: invalid To", code=21211)) == "dead"
    r = row(factory, job.id)
    assert r.status == "dead" and r.attempts == 1 and r.finished_at is not None
    assert r.last_error_code == "21211" and "invalid To" in (r.last_error or "")
    assert box.claim(now=utcnow() + timedelta(days=1)) == []


def test_auth_errors_are_retryable(factory: sessionmaker[Session]) -> None:
    add(factory, "auth")
    box = Outbox(factory, "w")
    [job] = box.claim()
    assert box.fail(job, AuthError("bad token", code=20003)) == "pending"


def test_max_attempts_makes_the_job_dead(factory: sessionmaker[Session]) -> None:
    add(factory, "tries", max_attempts=2)
    box = Outbox(factory, "w", lease_seconds=600, backoff_initial=1, backoff_max=1)
    now = utcnow()
    [job] = box.claim(now=now)
    assert box.fail(job, TransientError("1"), now=now) == "pending"
    now += timedelta(seconds=10)
    [job] = box.claim(now=now)
    assert job.attempts == 2
    assert box.fail(job, TransientError("2"), now=now) == "dead"
    assert row(factory, job.id).status == "dead"
    assert box.claim(now=now + timedelta(days=1)) == []


def test_defer_gives_the_attempt_back(factory: sessionmaker[Session]) -> None:
    add(factory, "later", max_attempts=1)
    box = Outbox(factory, "w")
    until = utcnow() + timedelta(hours=3)
    for _ in range(3):  # deferring never spends the single attempt
        [job] = box.claim(now=until if _ else None)
        assert job.attempts == 1
        assert box.defer(job, until, "outside the sending window") is True
        r = row(factory, job.id)
        assert (r.status, r.attempts, r.next_attempt_at) == ("pending", 0, until)
        assert r.last_error == "outside the sending window"
        assert box.claim(now=until - timedelta(seconds=1)) == []


# -- administration ---------------------------------------------------------------------------------


def test_retry_by_id_and_retry_dead(factory: sessionmaker[Session]) -> None:
    for key in ("d1", "d2", "run"):
        add(factory, key)
    box = Outbox(factory, "w")
    jobs = {row(factory, j.id).dedupe_key: j for j in box.claim()}
    box.fail(jobs["d1"], Rejected("no"))
    box.fail(jobs["d2"], Rejected("no"))
    with transaction(factory) as s:
        assert outbox.retry(s, job_id=jobs["run"].id) == 0  # running jobs are left alone
        assert outbox.retry(s) == 0  # neither an id nor --dead: nothing
        assert outbox.retry(s, job_id=jobs["d1"].id) == 1
    r = row(factory, jobs["d1"].id)
    assert (r.status, r.attempts, r.finished_at) == ("pending", 0, None)
    assert row(factory, jobs["d2"].id).status == "dead"
    with transaction(factory) as s:
        assert outbox.retry(s, dead=True) == 1
    assert row(factory, jobs["d2"].id).status == "pending"
    assert row(factory, jobs["run"].id).status == "running"
    assert {j.id for j in box.claim()} == {jobs["d1"].id, jobs["d2"].id}


def test_purge_keeps_dead_jobs_unless_asked(factory: sessionmaker[Session]) -> None:
    for key in ("old-done", "old-dead", "new-done", "pending"):
        add(factory, key)
    box = Outbox(factory, "w")
    old = utcnow() - timedelta(days=30)
    jobs = {row(factory, j.id).dedupe_key: j for j in box.claim()}
    box.defer(jobs["pending"], utcnow() + timedelta(days=1), "later")
    assert box.complete(jobs["old-done"], now=old)
    box.fail(jobs["old-dead"], Rejected("no"), now=old)
    assert box.complete(jobs["new-done"])
    with transaction(factory) as s:
        assert outbox.purge(s, timedelta(days=7)) == {"done": 1}
    assert {r.dedupe_key for r in all_rows(factory)} == {"old-dead", "new-done", "pending"}
    with transaction(factory) as s:
        counts = outbox.purge(s, timedelta(days=7), include_dead=True)
    assert counts == {"done": 0, "dead": 1}
    assert {r.dedupe_key for r in all_rows(factory)} == {"new-done", "pending"}


def test_a_worker_never_starts_a_job_whose_lease_another_took(factory: sessionmaker[Session]) -> None:
    from datetime import timedelta

    from core.models import utcnow
    from core.outbox import Outbox
    from core.worker import Worker

    add(factory, "slowpoke")
    first = Outbox(factory, "first", lease_seconds=1)
    [job] = first.claim()
    # Seconds later the first worker's 1 s lease has run out, and another worker takes the job.
    [again] = Outbox(factory, "second", lease_seconds=60).claim(now=utcnow() + timedelta(seconds=5))
    assert again.id == job.id
    ran: list[int] = []
    worker = Worker(first, {"test.job": lambda j: ran.append(j.id) or None})
    assert worker.process(job) == "lost"
    assert ran == []  # the first worker never ran it: no second send, no second CRM push
    assert row(factory, job.id).locked_by == "second"


def test_waking_a_leads_held_job_reads_its_jobs_not_the_backlog(
    factory: sessionmaker[Session], engine: Engine
) -> None:
    """Every text sent wakes its lead's held push: SQLite must find it by ordering key.

    Without statistics (no ANALYZE ever runs) SQLite chose the status index and read every pending
    job: thousands when a CRM's budget is used up. The query plan shows which index it reads.
    """
    if engine.dialect.name != "sqlite":
        pytest.skip("PostgreSQL plans from its statistics; the fix is SQLite's planner without them")
    later = utcnow() + timedelta(hours=1)
    with transaction(factory) as s:
        for i in range(500):
            outbox.enqueue(
                s,
                kind="crm.sync",
                target="hubspot",
                dedupe_key=f"b{i}",
                ordering_key=f"lead-{i}",
                run_at=later,
            )
        outbox.enqueue(
            s,
            kind="crm.sync",
            target="hubspot",
            dedupe_key="held",
            ordering_key="lead-x",
            run_at=later,
            reason="waiting",
        )
    ran: list[tuple[str, Any]] = []

    def capture(_conn: Any, _cursor: Any, sql: str, params: Any, *_rest: Any) -> None:
        if sql.lstrip().upper().startswith("UPDATE OUTBOX_JOBS"):
            ran.append((sql, params))

    event.listen(engine, "before_cursor_execute", capture)
    try:
        with transaction(factory) as s:
            assert outbox.wake(s, ["lead-x"], "waiting") == 1
    finally:
        event.remove(engine, "before_cursor_execute", capture)
    ((sql, params),) = ran
    with engine.connect() as conn:
        plan = [r[3] for r in conn.exec_driver_sql("EXPLAIN QUERY PLAN " + sql, tuple(params))]
    assert plan == ["SEARCH outbox_jobs USING INDEX ix_outbox_order (ordering_key=?)"], plan
