"""Twilio's message status callbacks take a short path through the store (one guarded UPDATE in
``core.texting.apply_status``); it must leave exactly the rows the general (ORM) path leaves.

Each case stores the same text twice (one per business), delivers the same callbacks in the same
order to each, one copy through the fast path and one with the fast path switched off, and
compares the message, the stored callbacks, the suppressions and the answers.
"""

from __future__ import annotations

import dataclasses
import itertools
import threading
import time
import uuid
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any
from unittest import mock

import pytest
from sqlalchemy import Engine, event, select
from sqlalchemy import text as text_sql
from sqlalchemy.orm import Session, sessionmaker

from core import texting
from core.db import make_engine, session_factory, transaction
from core.models import Lead, Message, MessageStatusEvent, Suppression, utcnow
from tests.schema import migrate

FAST, GENERAL = "fast-biz", "general-biz"
Callback = tuple[str, int | None]  # (status, error code)

# Twilio's lives of a text (as in the fault suite), plus WhatsApp's 'read' and an opt-out.
LIVES: dict[str, tuple[Callback, ...]] = {
    "delivered": (("queued", None), ("sending", None), ("sent", None), ("delivered", None)),
    "undelivered": (("queued", None), ("sending", None), ("sent", None), ("undelivered", 30003)),
    "failed": (("queued", None), ("sending", None), ("failed", 30008)),
    "read": (("sent", None), ("delivered", None), ("read", None)),
    "opted_out": (("queued", None), ("sent", None), ("failed", 21610)),
}
# How the text stands when its callbacks arrive: (status, sid stored, ?m= given).
STARTS = {
    "sent by the worker": ("queued", True, True),
    "no message id in the URL": ("queued", True, False),
    "callbacks beat the worker": ("pending", False, True),
    "no such text": (None, False, True),
    "status outside the ranks": ("canceled", True, True),
}


@pytest.fixture
def store(db_url: str, tmp_path: Path) -> Iterator[tuple[Engine, sessionmaker[Session]]]:
    engine = make_engine(db_url)
    migrate(engine)
    yield engine, session_factory(engine)
    engine.dispose()


def general_only(dialect: str) -> Any:
    """The statements with no fast UPDATE: every callback goes through the ORM path."""
    return dataclasses.replace(real_statements(dialect), advance={}, both={})


real_statements = texting._status_statements


@dataclasses.dataclass
class Text:
    business_id: str
    message_id: str
    sid: str
    created: Any


def store_text(factory: sessionmaker[Session], business_id: str, phone: str, start: tuple[Any, ...]) -> Text:
    status, has_sid, _m = start
    created = utcnow() - timedelta(minutes=5)
    text = Text(business_id, str(uuid.uuid4()), "SM" + uuid.uuid4().hex, created)
    if status is None:
        return text
    with transaction(factory) as s:
        lead = Lead(
            id=str(uuid.uuid4()), business_id=business_id, phone=phone, status="texted", source="missed_call"
        )
        s.add(lead)
        s.flush()
        s.add(
            Message(
                id=text.message_id,
                lead_id=lead.id,
                business_id=business_id,
                direction="outbound",
                kind="first_text",
                sid=text.sid if has_sid else None,
                from_number="+13125550100",
                to_number=phone,
                body="Sorry we missed your call",
                status=status,
                created_at=created,
                updated_at=created,
            )
        )
    return text


def deliver(
    store: tuple[Engine, sessionmaker[Session]],
    text: Text,
    start: tuple[Any, ...],
    callbacks: list[Callback],
    via: str = "session",
) -> list[bool]:
    """Each callback in its own transaction, given to apply_status as a Session or a Connection."""
    engine, factory = store
    answers = []
    for status, code in callbacks:
        kwargs: dict[str, Any] = {
            "message_id": text.message_id if start[2] else None,
            "sid": text.sid,
            "status": status,
            "error_code": code,
        }
        if via == "connection":
            with engine.begin() as conn:
                answers.append(texting.apply_status(conn, **kwargs))
        else:
            with transaction(factory) as s:
                answers.append(texting.apply_status(s, **kwargs))
    return answers


def outcome(factory: sessionmaker[Session], text: Text, phone: str) -> dict[str, Any]:
    with factory() as s:
        m = s.get(Message, text.message_id)
        events = s.execute(
            select(MessageStatusEvent.status, MessageStatusEvent.error_code)
            .where(MessageStatusEvent.message_sid == text.sid)
            .order_by(MessageStatusEvent.id)
        ).all()
        suppressions = s.execute(
            select(Suppression.reason, Suppression.source).where(
                Suppression.business_id == text.business_id, Suppression.phone == phone
            )
        ).all()
    message = None
    if m is not None:
        message = (m.status, m.error_code, m.sid == text.sid, m.sid is None, m.updated_at != text.created)
    return {
        "message": message,
        "events": [tuple(e) for e in events],
        "suppressions": [tuple(x) for x in suppressions],
    }


def orders() -> Iterator[tuple[str, list[Callback]]]:
    for i, (life, order) in enumerate(
        (life, order) for life, steps in LIVES.items() for order in itertools.permutations(steps)
    ):
        callbacks = list(order)
        if i % 2:  # Twilio redelivers: each one again, right after or at the end
            callbacks = [c for c in order for _ in range(2)] if i % 4 == 1 else callbacks + list(order)
        yield life, callbacks


@pytest.mark.parametrize("start_name", list(STARTS))
def test_fast_path_leaves_the_rows_of_the_general_path_in_every_order(
    store: tuple[Engine, sessionmaker[Session]], start_name: str
) -> None:
    _engine, factory = store
    start = STARTS[start_name]
    compared = 0
    for n, (life, callbacks) in enumerate(orders()):
        phone = f"+1312555{4000 + n:04d}"
        fast, general = store_text(factory, FAST, phone, start), store_text(factory, GENERAL, phone, start)
        # The webhook passes a Connection; a Session (other callers) must behave the same.
        fast_answers = deliver(store, fast, start, callbacks, "session" if n % 3 == 0 else "connection")
        with mock.patch.object(texting, "_status_statements", general_only):
            general_answers = deliver(store, general, start, callbacks)
        assert fast_answers == general_answers, (life, callbacks)
        got, want = outcome(factory, fast, phone), outcome(factory, general, phone)
        assert got == want, (life, callbacks)
        compared += 1
        if start[0] is not None and start_name != "status outside the ranks":
            # the furthest status wins, whatever the order, each callback stored once
            furthest = max(callbacks, key=lambda c: texting.STATUS_RANK[c[0]])
            assert got["message"][:2] == furthest, (life, callbacks)
            assert len(got["events"]) == len(set(callbacks))
            assert got["suppressions"] == ([("opted_out", "twilio:21610")] if life == "opted_out" else [])
    assert compared == sum(len(list(itertools.permutations(steps))) for steps in LIVES.values())


def test_a_forward_callback_writes_without_reading_the_text_first(
    store: tuple[Engine, sessionmaker[Session]],
) -> None:
    engine, factory = store
    start = STARTS["sent by the worker"]
    text = store_text(factory, FAST, "+13125550142", start)
    seen: list[str] = []
    event.listen(engine, "before_cursor_execute", lambda _c, _cur, sql, *_a: seen.append(sql))
    assert deliver(store, text, start, [("sent", None), ("delivered", None)], "connection") == [True, True]
    statements = [sql.split()[0] for sql in seen if not sql.startswith("BEGIN")]
    # PostgreSQL: store the callback and move the text on in one round trip.
    per_callback = ["WITH"] if engine.dialect.name == "postgresql" else ["INSERT", "UPDATE"]
    assert statements == per_callback * 2
    assert outcome(factory, text, "+13125550142")["message"][:2] == ("delivered", None)


def test_concurrent_callbacks_for_one_text_keep_the_furthest_status(
    store: tuple[Engine, sessionmaker[Session]],
) -> None:
    """'delivered' holds the row while 'sent' waits for it: the late 'sent' must not win."""
    engine, factory = store
    if engine.dialect.name != "postgresql":
        pytest.skip("SQLite takes the write lock at BEGIN: callbacks never overlap there")
    start = STARTS["sent by the worker"]
    text = store_text(factory, FAST, "+13125550142", start)
    late: list[bool] = []
    with engine.connect() as first:
        first.begin()
        holder = first.execute(text_sql("SELECT pg_backend_pid()")).scalar()
        assert texting.apply_status(
            first, message_id=text.message_id, sid=text.sid, status="delivered", error_code=None
        )
        waiter = threading.Thread(
            target=lambda: late.extend(deliver(store, text, start, [("sent", None)], "connection"))
        )
        waiter.start()
        with engine.connect() as watch:
            for _ in range(600):  # until the 'sent' transaction waits on the row (at most a minute)
                waiting = watch.execute(
                    text_sql("SELECT count(*) FROM pg_stat_activity WHERE :pid = ANY(pg_blocking_pids(pid))"),
                    {"pid": holder},
                ).scalar()
                if waiting:
                    break
                time.sleep(0.1)
        first.commit()
    waiter.join(60)
    assert late == [True]  # stored once, applied as a no-op
    got = outcome(factory, text, "+13125550142")
    assert got["message"][:2] == ("delivered", None)
    assert sorted(got["events"]) == [("delivered", None), ("sent", None)]
