"""A text's status callbacks racing the worker's commit of that text: the furthest status wins.

Each test stops one transaction at a test hook (``core.worker.pausing``) and runs the other one
at that exact point, so the interleaving is the same on every run. On PostgreSQL (READ COMMITTED)
the two transactions really overlap: the paused one is let go once the other has finished or
waits on its row lock. On SQLite the paused transaction holds the write lock from BEGIN IMMEDIATE,
so the other one waits for its commit by itself: the same steps, serialised.

The text goes out through the Twilio emulator with no status callback URL, so the only callbacks
are the ones these tests post (signed, through the bridge), when they choose.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Connection, Engine, func, select
from sqlalchemy import text as sql

from core.models import MessageStatusEvent
from core.outbox import Finished
from core.sending import SentMessage, SmsGateway
from core.worker import pausing
from tests.conftest import ACCOUNT_SID
from tests.stack import Stack, all_day_business
from tests.test_sending_statements import claim_text, handler

CALLER = "+13125550142"
WAIT = 60.0  # seconds: only ever reached when something is wrong


@pytest.fixture
def stack(tmp_path: Path, db_url: str) -> Iterator[Stack]:
    s = Stack(tmp_path, db_url, businesses=[all_day_business()])
    try:
        yield s
    finally:
        s.close()


class Silent:
    """The emulator's gateway, asked for no status callbacks; ``after_send`` runs once it answers."""

    def __init__(self, real: SmsGateway, after_send: Callable[[str], None] | None = None) -> None:
        self.real = real
        self.after_send = after_send
        self.sid = ""

    def send(self, *, to: str, from_: str, body: str, status_callback: str | None) -> SentMessage:
        assert status_callback and "/twilio/message-status?m=" in status_callback
        sent = self.real.send(to=to, from_=from_, body=body, status_callback=None)
        self.sid = sent.sid
        if self.after_send is not None:
            self.after_send(sent.sid)
        return sent

    def find_sent(self, *, to: str, from_: str, body: str, since: datetime) -> SentMessage | None:
        raise AssertionError("a first attempt never looks")

    def line_type(self, phone: str) -> str | None:
        raise AssertionError("no lookup configured")


def callback(stack: Stack, sid: str, status: str, message_id: str | None) -> int:
    """Twilio's status callback for ``sid``, signed, with ``?m=`` when ``message_id`` is given."""
    params = {
        "MessageSid": sid,
        "SmsSid": sid,
        "MessageStatus": status,
        "SmsStatus": status,
        "AccountSid": ACCOUNT_SID,
        "From": stack.config.businesses[0].numbers[0],
        "To": CALLER,
    }
    path = "/twilio/message-status" + (f"?m={message_id}" if message_id else "")
    return stack.post_signed(path, params).status_code


def in_thread(target: Callable[[], Any]) -> tuple[threading.Thread, list[Any]]:
    """Run ``target`` in a thread; its result (or exception) lands in the list."""
    out: list[Any] = []

    def run() -> None:
        try:
            out.append(target())
        except BaseException as exc:  # handed to the test thread, which re-raises it
            out.append(exc)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread, out


def backend_pid(conn: Connection) -> int | None:
    if conn.dialect.name != "postgresql":
        return None
    return int(conn.connection.dbapi_connection.info.backend_pid)  # type: ignore[union-attr]


def finished_or_waiting_on(engine: Engine, thread: threading.Thread, holder: int | None) -> None:
    """Until ``thread`` finished, or (PostgreSQL) some backend waits on ``holder``'s locks.

    On SQLite (no ``holder``) it returns at once: the holder's write lock makes the other side
    wait for its commit without help.
    """
    if holder is None:
        return
    deadline = time.monotonic() + WAIT
    with engine.connect() as watch:
        while thread.is_alive():
            waiting = watch.execute(
                sql("SELECT count(*) FROM pg_stat_activity WHERE :pid = ANY(pg_blocking_pids(pid))"),
                {"pid": holder},
            ).scalar()
            watch.rollback()
            if waiting:
                return
            assert time.monotonic() < deadline, "neither finished nor waiting on the paused transaction"
            time.sleep(0.02)


def outcome(stack: Stack, sid: str) -> tuple[str, str | None, list[tuple[str, int]]]:
    lead = stack.lead(CALLER)
    assert lead is not None
    [message] = [e for e in lead["timeline"] if e["type"] == "message" and e["to"] == CALLER]
    with stack.factory() as session:
        stored = session.execute(
            select(MessageStatusEvent.status, func.count())
            .where(MessageStatusEvent.message_sid == sid)
            .group_by(MessageStatusEvent.status)
            .order_by(MessageStatusEvent.status)
        ).all()
    return message["status"], message["sid"], [(status, n) for status, n in stored]


def result(thread: threading.Thread, out: list[Any]) -> Any:
    thread.join(WAIT)
    assert not thread.is_alive() and len(out) == 1
    if isinstance(out[0], BaseException):
        raise out[0]
    return out[0]


def test_callbacks_between_the_workers_read_and_write_are_kept(stack: Stack) -> None:
    """'sent' and 'delivered' commit after the worker read the text and before it writes 'queued'."""
    stack.call(CALLER)
    job = claim_text(stack)
    message_id = job.payload["message_id"]
    gateway = Silent(stack.worker.handlers["sms.send"].gateway)  # type: ignore[attr-defined]
    landed: list[tuple[threading.Thread, list[Any]]] = []

    def callbacks_land(conn: Connection) -> None:  # in the worker's transaction, after its read
        thread, out = in_thread(
            lambda: [callback(stack, gateway.sid, s, message_id) for s in ("sent", "delivered")]
        )
        finished_or_waiting_on(stack.engine, thread, backend_pid(conn))
        landed.append((thread, out))

    with pausing("sent_read", callbacks_land):
        done = handler(stack, gateway=gateway)(job)
    assert isinstance(done, Finished) and done.owned
    [(thread, out)] = landed
    answers: list[int] = result(thread, out)
    # Twilio redelivers: each callback again, after everything settled.
    answers.extend(callback(stack, gateway.sid, s, message_id) for s in ("delivered", "sent"))
    assert answers == [204] * 4
    assert outcome(stack, gateway.sid) == ("delivered", gateway.sid, [("delivered", 1), ("sent", 1)])


def test_a_callback_that_read_the_text_before_the_workers_commit_does_not_undo_it(stack: Stack) -> None:
    """'delivered' arrives before the sid is stored (kept by sid alone), the worker applies it; a
    late 'sent' read the text before the worker's commit and writes after it."""
    stack.call(CALLER)
    job = claim_text(stack)
    message_id = job.payload["message_id"]
    read, release = threading.Event(), threading.Event()
    reader: list[int | None] = []
    late: list[tuple[threading.Thread, list[Any]]] = []

    def paused(conn: Connection) -> None:  # in the late callback's transaction, after its read
        reader.append(backend_pid(conn))
        read.set()
        assert release.wait(WAIT)

    def callbacks_before_the_commit(sid: str) -> None:  # the worker, between the send and its commit
        assert callback(stack, sid, "delivered", None) == 204  # no ?m=: kept until the sid is stored
        late.append(in_thread(lambda: callback(stack, sid, "sent", message_id)))
        assert read.wait(WAIT)

    gateway = Silent(stack.worker.handlers["sms.send"].gateway, callbacks_before_the_commit)  # type: ignore[attr-defined]
    with pausing("status_read", paused):
        worker, finished = in_thread(lambda: handler(stack, gateway=gateway)(job))
        try:
            assert read.wait(WAIT)
            finished_or_waiting_on(stack.engine, worker, reader[0])
        finally:
            release.set()
        done = result(worker, finished)
        [(thread, out)] = late
        assert result(thread, out) == 204
    assert isinstance(done, Finished) and done.owned
    assert outcome(stack, gateway.sid) == ("delivered", gateway.sid, [("delivered", 1), ("sent", 1)])
