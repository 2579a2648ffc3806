"""A forwarded call takes a short path through the store (core.call_intake); it must leave exactly
the rows the general path (record the call, then ``core.calls.conclude``) leaves.

Each scenario prepares the same history for two identical businesses, decides one new call for
each, one through each path, and compares everything written: the call, the lead, the timeline,
the messages, the outbox jobs and the notifications.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine, select
from sqlalchemy.orm import Session, sessionmaker

from core import calls
from core.config import Business, from_dict
from core.db import make_engine, session_factory, transaction
from core.models import (
    Call,
    ConnectorInstall,
    Lead,
    LineType,
    Message,
    Notification,
    OutboxJob,
    Suppression,
    TimelineEntry,
    utcnow,
)
from tests.conftest import business, config_dict
from tests.schema import migrate

CALLER = "+13125550142"
FAST, GENERAL = "fast-biz", "general-biz"
NUMBERS = {FAST: "+13125550100", GENERAL: "+13125550200"}

Setup = Callable[[Session, str], None]
CALL_COLUMNS = (
    "from_number",
    "to_number",
    "direction",
    "status",
    "dial_status",
    "bridged",
    "screen_accepted",
    "ring_seconds",
    "decision_outcome",
    "decision_reason",
)
LEAD_COLUMNS = ("phone", "name", "status", "source", "intent", "human_takeover")


@pytest.fixture
def store(db_url: str, tmp_path: Path) -> Iterator[tuple[Engine, sessionmaker[Session]]]:
    engine = make_engine(db_url)
    migrate(engine)
    yield engine, session_factory(engine)
    engine.dispose()


def businesses(db_url: str, **overrides: Any) -> dict[str, Business]:
    data = [
        business(id=bid, mode="forward", numbers=[NUMBERS[bid]], staff_phones=[], **overrides)
        for bid in (FAST, GENERAL)
    ]
    cfg = from_dict(config_dict(db_url, businesses=data))
    return {bid: b for bid in (FAST, GENERAL) if (b := cfg.business(bid)) is not None}


def add_lead(
    last_text_hours_ago: float | None = None, status: str = "texted", name: str | None = None
) -> Setup:
    def setup(session: Session, business_id: str) -> None:
        now = utcnow()
        session.add(
            Lead(
                id=f"lead-{business_id}",
                business_id=business_id,
                phone=CALLER,
                status=status,
                source="missed_call",
                name=name,
                last_text_at=None
                if last_text_hours_ago is None
                else now - timedelta(hours=last_text_hours_ago),
                created_at=now - timedelta(days=3),
                updated_at=now - timedelta(days=3),
            )
        )

    return setup


def add_suppression(reason: str) -> Setup:
    def setup(session: Session, business_id: str) -> None:
        session.add(Suppression(business_id=business_id, phone=CALLER, reason=reason, source="test"))

    return setup


def add_landline(session: Session, business_id: str) -> None:
    if session.get(LineType, CALLER) is None:
        session.add(LineType(phone=CALLER, line_type="landline"))


def add_earlier_miss(session: Session, business_id: str) -> None:
    session.add(
        Call(
            call_sid=f"CA{business_id[:4].encode().hex()}{'0' * 24}",
            business_id=business_id,
            from_number=CALLER,
            to_number=NUMBERS[business_id],
            direction="inbound",
            status="completed",
            decision_outcome="text",
            decision_reason="missed_forwarded",
            started_at=utcnow() - timedelta(hours=2),
        )
    )


def add_ringing_call(session: Session, business_id: str) -> None:
    """The call's status callback came first and recorded it undecided."""
    session.add(
        Call(
            call_sid=sid(business_id),
            business_id=business_id,
            from_number=CALLER,
            to_number=NUMBERS[business_id],
            direction="inbound",
            status="ringing",
            started_at=utcnow(),
        )
    )


def add_crm(session: Session, business_id: str) -> None:
    session.add(ConnectorInstall(business_id=business_id, connector_id="webhook", version="1", enabled=True))


def add_queued_first_text(session: Session, business_id: str) -> None:
    session.add(
        OutboxJob(
            kind="sms.send",
            target="twilio",
            dedupe_key=f"sms:first:{sid(business_id)}",
            ordering_key="x",
            payload={},
            next_attempt_at=utcnow(),
        )
    )


def sid(business_id: str) -> str:
    return "CA" + ("a" if business_id == FAST else "b") * 32


SCENARIOS: dict[str, tuple[list[Setup], str, dict[str, Any]]] = {
    "new caller": ([], CALLER, {}),
    "new caller outside the sending window": (
        [],
        CALLER,
        {
            "policy": {
                "min_ring_seconds": 4,
                "cooldown_hours": 12,
                "sending_window": {"start": "00:00", "end": "00:01"},
            }
        },
    ),
    "send delay": (
        [],
        CALLER,
        {"policy": {"min_ring_seconds": 4, "cooldown_hours": 12, "send_delay_seconds": 90}},
    ),
    "lead texted an hour ago (cooldown, escalated)": ([add_lead(1)], CALLER, {}),
    "lead texted a day ago, named": ([add_lead(30, name="Dana Smith")], CALLER, {}),
    "lead never texted, new": ([add_lead(None, status="new")], CALLER, {}),
    "lead never texted, new, outside the window": (
        [add_lead(None, status="new")],
        CALLER,
        {"policy": {"sending_window": {"start": "00:00", "end": "00:01"}}},
    ),
    "opted out, no lead": ([add_suppression("opted_out")], CALLER, {}),
    "opted out with a lead": ([add_lead(48, status="opted_out"), add_suppression("opted_out")], CALLER, {}),
    "undeliverable": ([add_suppression("undeliverable")], CALLER, {}),
    "landline": ([add_landline], CALLER, {}),
    "anonymous": ([], "Anonymous", {}),
    "invalid caller id": ([], "12", {}),
    "blocklisted": ([], CALLER, {"policy": {"blocklist": [CALLER]}}),
    "repeat caller within the window": ([add_earlier_miss], CALLER, {}),
    "repeat caller, three calls needed": (
        [add_earlier_miss],
        CALLER,
        {"escalation": {"repeat_calls": 3}},
    ),
    "CRM connector installed": ([add_crm], CALLER, {}),
    "call already recorded": ([add_ringing_call], CALLER, {}),
    "first text already queued": ([add_queued_first_text], CALLER, {}),
}


@pytest.mark.parametrize("name", list(SCENARIOS))
def test_forwarded_call_leaves_the_rows_the_general_path_leaves(
    name: str, store: tuple[Engine, sessionmaker[Session]], db_url: str
) -> None:
    setups, caller, overrides = SCENARIOS[name]
    if "policy" in overrides:
        overrides = {**overrides, "policy": {**business()["policy"], **overrides["policy"]}}
    biz = businesses(db_url, **overrides)
    _engine, factory = store
    for bid in (FAST, GENERAL):
        with transaction(factory) as session:
            for setup in setups:
                setup(session, bid)
    results = {}
    with transaction(factory) as session:
        results[FAST] = calls.conclude_forwarded(
            session, biz[FAST], sid(FAST), caller, NUMBERS[FAST], "inbound"
        )
    with transaction(factory) as session:
        call = calls.record_incoming(session, biz[GENERAL], sid(GENERAL), caller, NUMBERS[GENERAL], "inbound")
        results[GENERAL] = calls.conclude(
            session, biz[GENERAL], call, answered=False, miss_reason="missed_forwarded"
        )
    shape = {
        bid: (r.decision, r.lead_id is not None, r.message_id is not None, r.new)
        for bid, r in results.items()
    }
    assert shape[FAST] == shape[GENERAL]
    assert snapshot(factory, FAST) == snapshot(factory, GENERAL)


def snapshot(factory: sessionmaker[Session], business_id: str) -> dict[str, Any]:
    """Every row the call wrote for ``business_id``, with ids, numbers and clocks made comparable."""
    mine, other = (sid(FAST), NUMBERS[FAST]) if business_id == FAST else (sid(GENERAL), NUMBERS[GENERAL])

    def norm(value: Any) -> Any:
        if isinstance(value, str):
            for real, alias in ((mine, "<sid>"), (other, "<number>"), (business_id, "<biz>"), *lead_alias):
                value = value.replace(real, alias)
            return value
        if isinstance(value, dict):
            return {k: norm(v) for k, v in value.items()}
        if isinstance(value, (list, tuple)):
            return type(value)(norm(v) for v in value)
        return value

    lead_alias: list[tuple[str, str]] = []
    now = utcnow()

    def recent(value: Any) -> Any:
        return None if value is None else abs((now - value).total_seconds()) < 120

    with factory() as s:
        call = s.get(Call, mine)
        assert call is not None
        lead = s.scalars(select(Lead).where(Lead.business_id == business_id)).first()
        lead_ids = [lead.id] if lead else []
        lead_alias = [(lead.id, "<lead>")] if lead else []
        return norm(
            {
                "call": {
                    "lead": call.lead_id is not None and call.lead_id == (lead.id if lead else None),
                    **{k: getattr(call, k) for k in CALL_COLUMNS},
                    "decided": recent(call.decided_at),
                    "started": recent(call.started_at),
                },
                "lead": lead
                and {
                    **{k: getattr(lead, k) for k in LEAD_COLUMNS},
                    "short_code": lead.short_code is not None,
                    "texted_now": recent(lead.last_text_at) if lead.last_text_at else None,
                    "updated_now": recent(lead.updated_at),
                },
                "timeline": [
                    (e.type, e.data, recent(e.at))
                    for e in s.scalars(
                        select(TimelineEntry)
                        .where(TimelineEntry.lead_id.in_(lead_ids))
                        .order_by(TimelineEntry.id)
                    )
                ],
                "messages": [
                    (m.kind, m.direction, m.from_number, m.to_number, m.body, m.status, recent(m.send_after))
                    for m in s.scalars(select(Message).where(Message.business_id == business_id))
                ],
                "jobs": sorted(
                    (
                        j.kind,
                        j.target,
                        j.dedupe_key,
                        j.ordering_key,
                        j.status,
                        j.priority,
                        j.max_attempts,
                        j.lead_id == (lead.id if lead else None),
                        sorted(j.payload),
                        # A CRM push held for the first text, and why (both paths hold it alike).
                        j.last_error,
                        (j.next_attempt_at - j.created_at).total_seconds() > 1,
                    )
                    for j in s.scalars(select(OutboxJob).where(OutboxJob.business_id == business_id))
                ),
                "notifications": [
                    (n.channel, n.reason)
                    for n in s.scalars(select(Notification).where(Notification.business_id == business_id))
                ],
            }
        )
