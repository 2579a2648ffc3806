"""How often a text takes the database's write lock (core.sending).

On SQLite every write transaction holds the one database-wide write lock, so under load the write
transactions per text bound the texts per second. These tests count them on the worker's own
engine while a missed call's first text is handled end to end: on SQLite the ``BEGIN IMMEDIATE``
statements (a transaction that takes the lock, whether or not it writes), on PostgreSQL the
transactions that ran an INSERT, UPDATE or DELETE.
"""

from __future__ import annotations

import contextlib
import re
import threading
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import requests
from sqlalchemy import Engine, event, select

from bridge import runtime
from core import leads
from core.crm import Capability, Remote
from core.db import make_engine
from core.models import ConnectorInstall, Message, OutboxJob, utcnow
from core.outbox import TEXT_PRIORITY, Job, LeaseLost
from core.sending import SmsJob
from core.worker import Worker
from tests.stack import Stack, all_day_business

KNOWN = "+13125550142"  # a contact of the CRM
WARM_UP = "+13125550143"  # a caller the CRM does not know
WRITES = ("INSERT", "UPDATE", "DELETE")
# A statement after a WITH list (the outbox claim): the WITH's last ")" then the verb.
_AFTER_WITH = re.compile(r"\)\s*(INSERT|UPDATE|DELETE)\s")


def _writes(sql: str) -> bool:
    return sql.startswith(WRITES) or (sql.startswith("WITH") and _AFTER_WITH.search(sql) is not None)


class WriteTransactions:
    """The write transactions an engine runs: BEGIN IMMEDIATE on SQLite; on PostgreSQL, the
    transactions that ran an INSERT, UPDATE or DELETE (each counted once, committed or not)."""

    def __init__(self, engine: Engine) -> None:
        self.sqlite = engine.dialect.name == "sqlite"
        self.count = 0
        self._writing: dict[int, bool] = {}  # PostgreSQL: connection -> wrote in this transaction
        self._lock = threading.Lock()
        event.listen(engine, "before_cursor_execute", self._statement)
        event.listen(engine, "commit", self._end)
        event.listen(engine, "rollback", self._end)

    def _statement(self, conn: Any, _cursor: Any, sql: str, *_args: Any) -> None:
        words = sql.lstrip().upper()
        with self._lock:
            if self.sqlite:
                if words.startswith("BEGIN IMMEDIATE"):
                    self.count += 1
            elif _writes(words) and not self._writing.get(id(conn)):
                self._writing[id(conn)] = True
                self.count += 1

    def _end(self, conn: Any) -> None:
        with self._lock:
            self._writing.pop(id(conn), None)

    def take(self) -> int:
        with self._lock:
            count, self.count = self.count, 0
            return count


class Finder:
    """A CRM that knows one caller, and counts the single and the batch lookups asked of it."""

    asked: list[str] = []

    def __init__(self, _config: dict[str, Any], _context: Any) -> None:
        pass

    def find_contact(self, phone: str) -> Remote | None:
        Finder.asked.append(phone)
        return Remote("c-1", None, "contact", name="Dana Reyes") if phone == KNOWN else None

    def find_contacts(self, phones: list[str]) -> dict[str, Remote]:
        Finder.asked.extend(phones)
        return {p: Remote("c-1", None, "contact", name="Dana Reyes") for p in phones if p == KNOWN}


@pytest.fixture
def crm(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Every connector is the Finder above; the phones asked of it."""
    finds = [Capability.FIND_CONTACT, Capability.FIND_CONTACTS]
    found = SimpleNamespace(manifest=SimpleNamespace(capabilities=finds, rate_limits=[]), cls=Finder)
    monkeypatch.setattr(runtime.registry, "load", lambda _connector_id: found)
    Finder.asked = []
    return Finder.asked


def make_stack(tmp_path: Path, db_url: str, **policy: Any) -> Stack:
    business = all_day_business()
    business["policy"].update(policy)
    stack = Stack(tmp_path, db_url, businesses=[business])
    with stack.factory() as session, session.begin():
        session.add(
            ConnectorInstall(
                business_id=business["id"],
                connector_id="hubspot",
                version="1",
                config={},
                sync={},
                enabled=True,
            )
        )
    return stack


@pytest.fixture
def stack(tmp_path: Path, db_url: str, crm: list[str]) -> Iterator[Stack]:
    s = make_stack(tmp_path, db_url)
    try:
        yield s
    finally:
        s.close()


@contextlib.contextmanager
def worker_process(stack: Stack) -> Iterator[Worker]:
    """A worker process's worker: its own engine, as ``textback worker`` builds it."""
    engine = make_engine(stack.config.database_url, background=True)
    built = runtime.build_worker(stack.config, engine)
    handler = built.handlers["sms.send"]
    assert isinstance(handler, SmsJob)
    handler.find_contact.__self__._box = SimpleNamespace(open=lambda _sealed: {})  # type: ignore[union-attr]
    try:
        yield built
    finally:
        engine.dispose()


@pytest.fixture
def worker(stack: Stack) -> Iterator[Worker]:
    with worker_process(stack) as built:
        yield built


def engine_of(worker: Worker) -> Engine:
    bind = worker.outbox.factory.kw["bind"]
    assert isinstance(bind, Engine)
    return bind


def text_once(worker: Worker) -> int:
    """Claim and handle the texts that are due (the claim is one write transaction)."""
    return worker.run_once(limit=10, max_priority=TEXT_PRIORITY)


def warm_up(stack: Stack, worker: Worker) -> None:
    """A first text to another caller: the CRM's connector is built and cached before counting."""
    stack.call(WARM_UP)
    assert text_once(worker) == 1
    assert len(stack.sent(WARM_UP)) == 1


def test_a_first_text_with_a_caller_lookup_takes_the_write_lock_three_times(
    stack: Stack, worker: Worker, crm: list[str]
) -> None:
    """The claim, the lookup's answer with the attempt, the sent text with the job's end: nothing
    before the lookup takes the write lock (the lease taken by the claim is milliseconds old)."""
    warm_up(stack, worker)
    writes = WriteTransactions(engine_of(worker))
    stack.call(KNOWN)
    assert text_once(worker) == 1
    assert writes.take() == 3
    assert crm == [WARM_UP, KNOWN]
    [sent] = stack.sent(KNOWN)
    assert sent["body"].startswith("Hi Dana")
    lead = stack.lead(KNOWN)
    assert lead is not None and lead["name"] == "Dana Reyes" and lead["status"] == "texted"
    [match] = [e for e in lead["timeline"] if e["type"] == "crm_match"]
    assert match["found"] is True


def test_a_first_text_with_a_line_type_lookup_takes_the_write_lock_four_times(
    tmp_path: Path, db_url: str, crm: list[str]
) -> None:
    """The claim, the line type learnt, the attempt, the sent text: a mobile caller's line type
    is not read back under the write lock."""
    stack = make_stack(tmp_path, db_url, lookup_line_type=True)
    try:
        with worker_process(stack) as worker:
            warm_up(stack, worker)
            writes = WriteTransactions(engine_of(worker))
            stack.call(KNOWN)
            assert text_once(worker) == 1
            assert writes.take() == 4
        assert len(stack.sent(KNOWN)) == 1
    finally:
        stack.close()


def test_a_landline_caller_is_not_texted(tmp_path: Path, db_url: str, crm: list[str]) -> None:
    stack = make_stack(tmp_path, db_url, lookup_line_type=True)
    try:
        requests.post(
            f"{stack.twilio_url}/_emulator/config",
            json={"numbers": {KNOWN: {"line_type": "landline"}}},
            timeout=5,
        ).raise_for_status()
        stack.call(KNOWN)
        assert text_once(stack.worker) == 1
        assert stack.sent(KNOWN) == []
        assert crm == []  # a landline is not looked up in the CRM either
        lead = stack.lead(KNOWN)
        assert lead is not None and lead["status"] == "closed"
        [skip] = [e for e in lead["timeline"] if e["type"] == "decision" and e.get("outcome") == "skip"]
        assert skip["reason"] == "landline"
    finally:
        stack.close()


def test_texts_looked_up_together_read_their_callers_without_the_write_lock(
    stack: Stack, worker: Worker, crm: list[str]
) -> None:
    """Two texts claimed together: the claim, the batch's answers, and two writes per text."""
    warm_up(stack, worker)
    crm.clear()
    writes = WriteTransactions(engine_of(worker))
    stack.call(KNOWN)
    stack.call("+13125550144")
    assert text_once(worker) == 2
    assert writes.take() == 1 + 1 + 2 * 2
    assert sorted(crm) == [KNOWN, "+13125550144"]  # one batch request, no single lookups after it
    [sent] = stack.sent(KNOWN)
    assert sent["body"].startswith("Hi Dana")
    assert len(stack.sent("+13125550144")) == 1


# -- the lease -----------------------------------------------------------------------------------------


def claim_text(stack: Stack) -> Job:
    [job] = stack.worker.outbox.claim(limit=10, max_priority=TEXT_PRIORITY)
    assert job.kind == "sms.send"
    return job


def handler_with(stack: Stack, find_contact: Any) -> SmsJob:
    base = stack.worker.handlers["sms.send"]
    assert isinstance(base, SmsJob)
    return SmsJob(stack.config, stack.factory, base.gateway, find_contact=find_contact)


def lease_of(stack: Stack, job: Job) -> Any:
    with stack.factory() as session:
        row = session.get(OutboxJob, job.id)
        assert row is not None
        return row.locked_until


def nothing_recorded(stack: Stack, job: Job) -> None:
    assert stack.sent(KNOWN) == []
    with stack.factory() as session:
        message = session.get(Message, job.payload["message_id"])
        assert message is not None and message.attempt_started_at is None and message.sid is None
        lead = leads.find(session, stack.config.businesses[0].id, KNOWN)
        assert lead is not None and lead.name is None
        assert not [e for e in leads.entries(session, lead.id) if e.type == "crm_match"]


def test_a_text_whose_lease_was_taken_before_it_started_asks_no_crm(stack: Stack) -> None:
    stack.call(KNOWN)
    job = claim_text(stack)
    with stack.factory() as session, session.begin():  # another worker re-claims the job
        row = session.get(OutboxJob, job.id)
        assert row is not None
        row.claim_token = "another-worker"
    asked: list[str] = []

    def find(business_id: str, phone: str, budget: float) -> tuple[str, Remote] | None:
        asked.append(phone)
        return "hubspot", Remote(id="c-1", name="Dana Reyes")

    with pytest.raises(LeaseLost):
        handler_with(stack, find)(job)
    assert asked == []
    nothing_recorded(stack, job)


def test_a_text_whose_lease_was_taken_during_its_lookup_records_and_sends_nothing(stack: Stack) -> None:
    stack.call(KNOWN)
    job = claim_text(stack)

    def taken_over(business_id: str, phone: str, budget: float) -> tuple[str, Remote] | None:
        with stack.factory() as session, session.begin():  # the lookup outlasts the lease
            row = session.get(OutboxJob, job.id)
            assert row is not None
            row.claim_token = "another-worker"
        return "hubspot", Remote(id="c-1", name="Dana Reyes")

    with pytest.raises(LeaseLost):
        handler_with(stack, taken_over)(job)
    nothing_recorded(stack, job)


def test_a_lease_mostly_spent_before_the_text_started_is_renewed_before_the_lookup(stack: Stack) -> None:
    """A text claimed in a batch may start late: its lookup still gets a lease of its own."""
    stack.call(KNOWN)
    job = claim_text(stack)
    almost_over = utcnow() + timedelta(seconds=job.lease_seconds / 10)
    with stack.factory() as session, session.begin():  # the texts before it in the batch took long
        row = session.get(OutboxJob, job.id)
        assert row is not None
        row.locked_until = almost_over
    during: list[Any] = []

    def find(business_id: str, phone: str, budget: float) -> tuple[str, Remote] | None:
        during.append(lease_of(stack, job))
        return None

    handler_with(stack, find)(job)
    [lease] = during
    assert lease > almost_over + timedelta(seconds=job.lease_seconds / 2)
    assert len(stack.sent(KNOWN)) == 1


def test_a_fresh_lease_is_left_as_the_claim_set_it_until_the_lookup_answered(stack: Stack) -> None:
    stack.call(KNOWN)
    job = claim_text(stack)
    claimed = lease_of(stack, job)
    during: list[Any] = []

    def find(business_id: str, phone: str, budget: float) -> tuple[str, Remote] | None:
        during.append(lease_of(stack, job))
        return None

    handler_with(stack, find)(job)
    assert during == [claimed]
    with stack.factory() as session:
        done = session.scalars(select(OutboxJob).where(OutboxJob.id == job.id)).one()
        assert done.status == "done"
    assert len(stack.sent(KNOWN)) == 1
