"""The text path's prebuilt statements write what the general helpers would (core.sending)."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select, text

from core import leads, outbox, sync
from core.config import Business
from core.crm import Remote
from core.db import make_engine, session_factory
from core.models import ConnectorInstall, Message, MessageStatusEvent, OutboxJob, utcnow
from core.outbox import Finished, Job, LeaseLost
from core.sending import SentMessage, SmsJob
from tests.stack import Stack, all_day_business

CALLER = "+13125550142"
# The columns a queued job is compared on (not its id or its clock readings).
JOB_COLUMNS = (
    "kind",
    "target",
    "dedupe_key",
    "ordering_key",
    "business_id",
    "lead_id",
    "payload",
    "status",
    "priority",
    "attempts",
    "max_attempts",
)


@pytest.fixture
def stack(tmp_path: Path, db_url: str) -> Iterator[Stack]:
    business = all_day_business()
    business["policy"]["follow_up_after_hours"] = 2
    s = Stack(tmp_path, db_url, businesses=[business])
    try:
        yield s
    finally:
        s.close()


def install_connector(stack: Stack, connector_id: str = "webhook") -> None:
    with stack.factory() as session, session.begin():
        session.add(
            ConnectorInstall(
                business_id=stack.config.businesses[0].id,
                connector_id=connector_id,
                version="1",
                config={},
                sync={},
                enabled=True,
            )
        )


def claim_text(stack: Stack) -> Job:
    [job] = stack.worker.outbox.claim(limit=10, max_priority=0)
    assert job.kind == "sms.send"
    return job


def handler(stack: Stack, **overrides: Any) -> SmsJob:
    base = stack.worker.handlers["sms.send"]
    assert isinstance(base, SmsJob)
    args: dict[str, Any] = {
        "factory": stack.factory,
        "gateway": base.gateway,
        "find_contact": base.find_contact,
        **overrides,
    }
    return SmsJob(stack.config, **args)


def job_row(job: OutboxJob) -> dict[str, Any]:
    return {c: getattr(job, c) for c in JOB_COLUMNS}


def test_a_text_queues_the_sync_and_follow_up_jobs_the_outbox_would(stack: Stack) -> None:
    install_connector(stack)
    stack.call(CALLER)
    job = claim_text(stack)
    done = handler(stack)(job)
    assert isinstance(done, Finished) and done.owned
    message_id = job.payload["message_id"]
    business = stack.config.businesses[0]
    with stack.factory() as session, session.begin():
        message = session.get(Message, message_id)
        assert message is not None and message.sid and message.status != "pending"
        texted = session.scalars(
            select(OutboxJob).where(OutboxJob.kind == "crm.sync", OutboxJob.dedupe_key.contains(":texted:"))
        ).all()
        follow_up = session.scalars(select(OutboxJob).where(OutboxJob.kind == "convo.follow_up")).all()
        assert len(texted) == 1 and len(follow_up) == 1
        stored = [job_row(j) for j in (*follow_up, *texted)]  # in kind order
        run_at = follow_up[0].next_attempt_at
        for j in (*texted, *follow_up):
            session.delete(j)
        session.flush()
        # The same jobs queued by the general helpers, then rolled back.
        sync.emit(session, business.id, message.lead_id, "texted", message_id, {"message_id": message_id})
        outbox.enqueue(
            session,
            kind="convo.follow_up",
            target="conversation",
            dedupe_key=f"followup:{message_id}",
            business_id=business.id,
            lead_id=message.lead_id,
            payload={"after_message_id": message_id},
            run_at=run_at,
        )
        again = session.scalars(
            select(OutboxJob)
            .where(
                OutboxJob.kind.in_(("crm.sync", "convo.follow_up")),
                OutboxJob.dedupe_key.not_like("%missed_call%"),
            )
            .order_by(OutboxJob.kind)
        ).all()
        assert [job_row(j) for j in again] == stored
        session.rollback()
    lead = stack.lead(CALLER)
    assert lead is not None and lead["status"] == "texted"


def test_a_status_callback_that_beat_the_worker_is_kept(stack: Stack) -> None:
    stack.call(CALLER)
    job = claim_text(stack)

    class Delivered:
        """Twilio's callback lands between the send and the worker's commit."""

        def send(self, *, to: str, from_: str, body: str, status_callback: str | None) -> SentMessage:
            with stack.factory() as session, session.begin():
                for status in ("sent", "delivered"):
                    session.add(
                        MessageStatusEvent(message_sid="SMbeaten", status=status, received_at=utcnow())
                    )
            return SentMessage("SMbeaten", "queued")

        def find_sent(self, *, to: str, from_: str, body: str, since: datetime) -> SentMessage | None:
            raise AssertionError("a first attempt never looks")

        def line_type(self, phone: str) -> str | None:
            raise AssertionError("no lookup configured")

    done = handler(stack, gateway=Delivered())(job)
    assert isinstance(done, Finished) and done.owned
    with stack.factory() as session:
        message = session.get(Message, job.payload["message_id"])
        assert message is not None
        assert (message.sid, message.status, message.sent_at is not None) == ("SMbeaten", "delivered", True)


def test_a_lookup_that_outlasts_the_lease_records_nothing_and_sends_nothing(stack: Stack) -> None:
    stack.call(CALLER)
    job = claim_text(stack)
    asked: list[str] = []

    def taken_over(business_id: str, phone: str, budget: float) -> tuple[str, Remote] | None:
        asked.append(phone)
        with stack.factory() as session, session.begin():  # another worker re-claims the job
            row = session.get(OutboxJob, job.id)
            assert row is not None
            row.claim_token = "another-worker"
        return "webhook", Remote(id="c-1", name="Dana Reyes")

    with pytest.raises(LeaseLost):
        handler(stack, find_contact=taken_over)(job)
    assert asked == [CALLER]
    assert stack.sent(CALLER) == []
    with stack.factory() as session:
        message = session.get(Message, job.payload["message_id"])
        assert message is not None and message.attempt_started_at is None
        assert not message.body.startswith("Hi Dana")
        lead = leads.find(session, stack.config.businesses[0].id, CALLER)
        assert lead is not None and lead.name is None
        assert not [e for e in leads.entries(session, lead.id) if e.type == "crm_match"]


def test_a_known_caller_is_texted_by_name_once_looked_up(stack: Stack) -> None:
    stack.call(CALLER)
    job = claim_text(stack)

    def known(business_id: str, phone: str, budget: float) -> tuple[str, Remote] | None:
        return "webhook", Remote(id="c-1", name="Dana Reyes")

    done = handler(stack, find_contact=known)(job)
    assert isinstance(done, Finished) and done.owned
    [sent] = stack.sent(CALLER)
    business: Business = stack.config.businesses[0]
    assert sent["body"].startswith(f"Hi Dana, it's {business.name}")
    lead = stack.lead(CALLER)
    assert lead is not None and lead["name"] == "Dana Reyes" and lead["status"] == "texted"
    [match] = [e for e in lead["timeline"] if e["type"] == "crm_match"]
    assert (match["found"], match["connector"], match["remote_id"]) == (True, "webhook", "c-1")
    [message] = [e for e in lead["timeline"] if e["type"] == "message"]
    assert message["body"] == sent["body"]


def test_a_caller_already_looked_up_is_not_asked_again(stack: Stack) -> None:
    stack.call(CALLER)
    job = claim_text(stack)
    with stack.factory() as session, session.begin():
        lead = leads.find(session, stack.config.businesses[0].id, CALLER)
        assert lead is not None
        leads.add_entry(session, lead.id, "crm_match", found=False)

    def never(business_id: str, phone: str, budget: float) -> tuple[str, Remote] | None:
        raise AssertionError("looked up twice")

    done = handler(stack, find_contact=never)(job)
    assert isinstance(done, Finished) and done.owned
    assert len(stack.sent(CALLER)) == 1


def test_the_texted_sync_job_wakes_idle_workers(stack: Stack) -> None:
    if stack.engine.dialect.name != "postgresql":
        pytest.skip("LISTEN/NOTIFY is PostgreSQL's")
    install_connector(stack)
    stack.call(CALLER)
    job = claim_text(stack)
    # One connection for the handler, so its notifications are told apart from the stack's own.
    engine = make_engine(stack.config.database_url, pool_size=1, max_overflow=0)
    try:
        with engine.connect() as conn:
            pid = conn.execute(text("SELECT pg_backend_pid()")).scalar()
        with stack.engine.connect().execution_options(isolation_level="AUTOCOMMIT") as listening:
            raw: Any = listening.connection.dbapi_connection
            channel = raw.execute(f"SELECT {outbox.CHANNEL_SQL}").fetchone()[0]
            raw.execute(f'LISTEN "{channel}"')
            done = handler(stack, factory=session_factory(engine))(job)
            assert isinstance(done, Finished) and done.owned
            raw.execute(f"NOTIFY \"{channel}\", 'end'")
            notes = list(raw.notifies(timeout=5, stop_after=1000))
            lanes = []
            for note in notes:
                if note.pid == pid:
                    lanes.append(note.payload)
                if note.payload == "end" and note.pid == raw.info.backend_pid:
                    break
    finally:
        engine.dispose()
    # The CRM push queued with the text is due now (the follow-up is due later: not a "job").
    assert lanes.count("job") == 1, lanes
