"""Worker lanes, wake-ups and pause-aware deferral, on SQLite and PostgreSQL.

Through core.outbox / core.worker's public interfaces and the database's state; no timing assertions
(a wake-up test uses a poll interval far longer than its deadline, so only a wake-up can pass it).
"""

from __future__ import annotations

import threading
import time
import uuid
from datetime import timedelta
from typing import Any

import pytest
from sqlalchemy import Engine, text
from sqlalchemy.orm import Session, sessionmaker

from core import connector_state, outbox
from core.db import transaction
from core.models import Message, OutboxJob, utcnow
from core.outbox import Outbox
from core.worker import Worker
from tests.stack import Stack, outbox_jobs, settle


def add(factory: sessionmaker[Session], key: str, kind: str = "test.job", **kw: Any) -> None:
    with transaction(factory) as s:
        outbox.enqueue(s, kind=kind, target=kw.pop("target", "t"), dedupe_key=key, **kw)


def statuses(factory: sessionmaker[Session]) -> dict[str, str]:
    with factory() as s:
        return {j.dedupe_key: j.status for j in outbox.list_jobs(s, limit=1000)}


def wait_for(check: Any, timeout: float = 15.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(0.05)
    return False


# -- the text lane ---------------------------------------------------------------------------------


def test_the_text_lane_claims_texts_and_replies_never_crm_pushes(factory: sessionmaker[Session]) -> None:
    for i in range(5):
        add(factory, f"crm-{i}", kind="crm.sync", target="hubspot")
    add(factory, "text", kind="sms.send", target="twilio")
    add(factory, "reply", kind="convo.reply", target="conversation")
    box = Outbox(factory, "w")
    claimed = box.claim(10, max_priority=outbox.TEXT_PRIORITY)
    assert sorted(j.kind for j in claimed) == ["convo.reply", "sms.send"]
    assert box.claim(10, max_priority=outbox.TEXT_PRIORITY) == []  # CRM pushes stay for general threads
    assert {j.kind for j in box.claim(10)} == {"crm.sync"}


def _serve(
    worker: Worker, threads: int = 1, text_threads: int = 2
) -> tuple[threading.Event, threading.Thread]:
    stop = threading.Event()
    thread = threading.Thread(target=worker.serve, args=(stop, threads, text_threads), daemon=True)
    thread.start()
    return stop, thread


def test_a_new_job_wakes_an_idle_worker_long_before_its_next_poll(factory: sessionmaker[Session]) -> None:
    done: list[str] = []
    handlers = {
        "sms.send": lambda j: done.append(j.payload["n"]) or None,
        "crm.sync": lambda j: done.append(j.payload["n"]) or None,
    }
    # A 60 s poll: the jobs below can only be found within the deadline by a wake-up.
    worker = Worker(Outbox(factory, "w"), handlers, poll_interval=60)
    stop, thread = _serve(worker)
    try:
        time.sleep(0.5)  # every thread idle, waiting on the waker
        add(factory, "text", kind="sms.send", target="twilio", payload={"n": "text"})
        add(factory, "crm", kind="crm.sync", target="hubspot", payload={"n": "crm"})
        assert wait_for(lambda: sorted(done) == ["crm", "text"]), done
        assert wait_for(lambda: set(statuses(factory).values()) == {"done"}), statuses(factory)
    finally:
        stop.set()
        thread.join(10)
    assert not thread.is_alive()


def test_wake_ups_survive_a_dropped_listener_connection(
    factory: sessionmaker[Session], engine: Engine
) -> None:
    if engine.dialect.name != "postgresql":
        pytest.skip("LISTEN/NOTIFY is PostgreSQL's")
    done: list[str] = []
    name = f"lanes-{uuid.uuid4().hex[:8]}"
    worker = Worker(Outbox(factory, name), {"sms.send": lambda j: done.append(j.payload["n"]) or None})
    worker.poll_interval = 0.5
    stop, thread = _serve(worker)
    try:
        add(factory, "before", kind="sms.send", target="twilio", payload={"n": "before"})
        assert wait_for(lambda: done == ["before"]), done
        with engine.connect() as conn:  # an admin or a failover drops the listening session
            killed = conn.execute(
                text(
                    "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                    "WHERE application_name = :app"
                ),
                {"app": f"textback-wakeup {name}"},
            ).scalar()
        assert killed == 1
        add(factory, "during", kind="sms.send", target="twilio", payload={"n": "during"})
        assert wait_for(lambda: done == ["before", "during"]), done
        # Listening again: found without waiting for any poll (now a minute long).
        assert wait_for(lambda: _listeners(engine, name) == 1)
        worker.poll_interval = 60
        time.sleep(1.5)  # the threads' current waits (0.5 s polls) run out
        add(factory, "after", kind="sms.send", target="twilio", payload={"n": "after"})
        assert wait_for(lambda: done == ["before", "during", "after"], timeout=20), done
    finally:
        stop.set()
        thread.join(10)


def _listeners(engine: Engine, name: str) -> int:
    with engine.connect() as conn:
        query = text("SELECT count(*) FROM pg_stat_activity WHERE application_name = :app")
        return int(conn.execute(query, {"app": f"textback-wakeup {name}"}).scalar() or 0)


# -- leases ------------------------------------------------------------------------------------------


def test_a_text_whose_lease_another_worker_took_is_not_sent_twice(stack: Stack) -> None:
    stack.call("+13125550123")
    [job] = [j for j in outbox_jobs(stack, "sms.send") if j.status == "pending"]
    first = Outbox(stack.factory, "first", lease_seconds=1)
    [claimed] = first.claim(max_priority=outbox.TEXT_PRIORITY)
    # Seconds later its lease has run out and another worker has taken the text.
    [again] = Outbox(stack.factory, "second", lease_seconds=60).claim(now=utcnow() + timedelta(seconds=5))
    assert claimed.id == again.id == job.id
    slow = Worker(first, stack.worker.handlers)
    assert slow.process(claimed) == "lost"
    assert stack.sent("+13125550123") == []
    assert Worker(Outbox(stack.factory, "second"), stack.worker.handlers).process(again) == "done"
    assert len(stack.sent("+13125550123")) == 1


def test_a_text_and_its_job_are_recorded_done_together(stack: Stack) -> None:
    stack.call("+13125550124")
    settle(stack)
    [job] = outbox_jobs(stack, "sms.send")
    assert job.status == "done" and job.result and job.result["sid"].startswith("SM")
    assert len(stack.sent("+13125550124")) == 1
    with stack.factory() as s:
        [message] = s.query(Message).filter_by(to_number="+13125550124").all()
    assert message.sid == job.result["sid"] and message.sent_at is not None


# -- paused connectors -------------------------------------------------------------------------------


def _pause(factory: sessionmaker[Session], reason: str, seconds: float = 30) -> Any:
    until = utcnow() + timedelta(seconds=seconds)
    with transaction(factory) as s:
        connector_state.pause(s, "b1", "hubspot", until, reason)
    return until


def _crm_jobs(factory: sessionmaker[Session], n: int) -> None:
    for i in range(n):
        add(factory, f"crm-{i}", kind="crm.sync", target="hubspot", business_id="b1", lead_id=f"L{i}")


def test_a_rate_limit_pause_moves_the_connectors_other_jobs_in_one_go(factory: sessionmaker[Session]) -> None:
    _crm_jobs(factory, 6)
    add(factory, "other", kind="crm.sync", target="salesforce", business_id="b1", lead_id="L0")
    until = _pause(factory, "rate limited: 429")
    box = Outbox(factory, "w")
    [job] = box.claim(1)
    assert box.defer(job, until, "hubspot is paused")
    # Nothing of hubspot's is claimable until the pause ends; salesforce's job is.
    claimed = box.claim(10)
    assert [j.target for j in claimed] == ["salesforce"]
    with factory() as s:
        waits = {j.next_attempt_at for j in s.query(OutboxJob).filter_by(target="hubspot")}
    assert len(waits) == 1 and abs((waits.pop() - until).total_seconds()) < 0.01
    assert len(box.claim(10, now=until + timedelta(seconds=1))) == 6


def test_an_auth_pause_leaves_the_other_jobs_for_an_admins_reinstall(factory: sessionmaker[Session]) -> None:
    _crm_jobs(factory, 3)
    until = _pause(factory, "auth failed: token revoked", seconds=900)
    box = Outbox(factory, "w")
    [job] = box.claim(1)
    box.defer(job, until, "hubspot auth failed; paused")
    assert len(box.claim(10)) == 2  # each finds the pause itself; a reinstall resumes them at once


class _Pushes:
    """A CRM push handler that batches: its prepare stands for one CRM round trip for the batch."""

    def __init__(self, order: list[str]) -> None:
        self.order = order

    def prepare(self, jobs: list[Any]) -> int:
        self.order.append(f"crm batch of {len(jobs)}")
        return len(jobs)

    def __call__(self, job: Any) -> None:
        self.order.append(f"crm {job.payload['n']}")


def test_a_text_claimed_with_crm_pushes_goes_before_their_batch(factory: sessionmaker[Session]) -> None:
    """A general thread's batch can hold a text and CRM pushes: the caller's text does not wait for them."""
    for i in range(3):
        add(factory, f"crm-{i}", kind="crm.sync", target="hubspot", payload={"n": i})
    add(factory, "text", kind="sms.send", target="twilio", payload={"n": "t"})
    order: list[str] = []
    handlers = {"crm.sync": _Pushes(order), "sms.send": lambda j: order.append("text") or None}
    worker = Worker(Outbox(factory, "w"), handlers, batch_size=10)
    assert worker.run_once() == 4  # the general lane: any job, texts included
    assert order == ["text", "crm batch of 3", "crm 0", "crm 1", "crm 2"]
    assert set(statuses(factory).values()) == {"done"}
