"""A new call's decision in a handful of prebuilt statements (the forwarded-call webhook's hot path).

:func:`core.calls.conclude` decides any call through the ORM; this module does the same for a
call the store has never seen, with one read for every fact the policy needs and Core statements
built once per dialect, because Twilio waits on this answer. It steps aside (returns None, having
written nothing) whenever the call already exists or the rarer branches apply (a repeat caller to
escalate), and the caller then runs the ORM path, which keeps the guarded decision.
"""

from __future__ import annotations

import functools
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, cast

from sqlalchemy import (
    Connection,
    Insert,
    Table,
    and_,
    bindparam,
    exists,
    func,
    literal_column,
    select,
    text,
    update,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session
from sqlalchemy.sql import Select, Update

from core import sync, texting
from core.config import Business
from core.models import Call, ConnectorInstall, Lead, LineType, Message, Suppression, TimelineEntry, utcnow
from core.phones import to_e164
from core.policy import CallFacts, Decision, decide


@dataclass(frozen=True)
class Statements:
    facts: Select[Any]
    lock: Any
    insert_lead: Insert
    insert_call: Insert
    insert_entries: Any
    insert_message: Insert
    texted: Update
    untexted: Update
    lead_by_phone: Select[Any]


@functools.cache
def statements(dialect: str) -> Statements:
    insert = postgresql.insert if dialect == "postgresql" else sqlite.insert
    calls, leads, entries = _table(Call), _table(Lead), _table(TimelineEntry)
    b: Any = bindparam("business_id")
    p: Any = bindparam("phone")
    one = select(literal_column("1").label("one")).subquery("one")

    def suppressed(reason: str) -> Any:
        s = _table(Suppression)
        return exists().where(s.c.business_id == b, s.c.phone == p, s.c.reason == reason)

    missed_before = (
        select(func.count())
        .select_from(calls)
        .where(
            calls.c.business_id == b,
            calls.c.from_number == bindparam("from_number"),
            calls.c.started_at >= bindparam("since", type_=calls.c.started_at.type),
            calls.c.decision_reason.is_not(None),
            calls.c.decision_reason != "answered",
        )
        .scalar_subquery()
    )
    installs = _table(ConnectorInstall)
    facts = select(
        exists().where(calls.c.call_sid == bindparam("call_sid")).label("call_exists"),
        leads.c.id,
        leads.c.name,
        leads.c.status,
        leads.c.last_text_at,
        suppressed("opted_out").label("opted_out"),
        suppressed("undeliverable").label("undeliverable"),
        select(_table(LineType).c.line_type)
        .where(_table(LineType).c.phone == p)
        .scalar_subquery()
        .label("line_type"),
        missed_before.label("missed_before"),
        exists()
        .where(installs.c.business_id == b, installs.c.enabled.is_(True))
        .label("has_connectors"),
    ).select_from(one.outerjoin(leads, and_(leads.c.business_id == b, leads.c.phone == p)))
    lead_id: Any = bindparam("lead_id")
    return Statements(
        facts=facts,
        lock=text("SELECT pg_advisory_xact_lock(hashtext(:key))"),
        insert_lead=insert(leads).on_conflict_do_nothing(index_elements=["business_id", "phone"]),
        insert_call=insert(calls),
        # Both rows in one statement; text, because a Core multi-VALUES insert is compiled anew on
        # every call and executemany costs a pipeline round on psycopg.
        insert_entries=text(
            "INSERT INTO timeline (lead_id, at, type, data) "
            "VALUES (:lead_id, :call_at, 'call', :call_data), (:lead_id, :decided_at, 'decision', :decision)"
        ).bindparams(
            bindparam("call_at", type_=entries.c.at.type),
            bindparam("decided_at", type_=entries.c.at.type),
            bindparam("call_data", type_=entries.c.data.type),
            bindparam("decision", type_=entries.c.data.type),
        ),
        insert_message=insert(_table(Message)),
        # The SET list follows the parameters given (last_text_at, updated_at, maybe status).
        texted=update(leads).where(leads.c.id == lead_id),
        untexted=update(leads)
        .where(leads.c.id == lead_id)
        .values(last_text_at=None, status="new", updated_at=leads.c.created_at),
        lead_by_phone=select(leads.c.id, leads.c.name, leads.c.status).where(
            leads.c.business_id == b, leads.c.phone == p
        ),
    )


# The called number is one of a few business numbers, and callers call again: parsing a number
# costs more than the rest of the decision.
_e164 = functools.lru_cache(maxsize=4096)(to_e164)


def _table(model: type[Any]) -> Table:
    return cast(Table, model.__table__)


@dataclass(frozen=True)
class NewCall:
    """A missed call the store has not seen yet, as the webhook delivered it."""

    call_sid: str
    from_number: str
    to_number: str
    direction: str
    miss_reason: str


@dataclass(frozen=True)
class Prelude:
    """What a new call's transaction needs that no stored row decides, worked out before it.

    On SQLite the transaction holds the one write lock: parsing the numbers, the caller's time
    zones and sending window, and the first text's wording (for a caller not known by name) cost a
    fifth of the decision's time and need nothing from the database.
    """

    now: datetime
    caller: str | None
    to: str | None
    send_after: datetime | None
    message_status: str
    body_unnamed: str | None


def prelude(business: Business, caller_raw: str | None, called_raw: str | None) -> Prelude:
    """The :class:`Prelude` of a call from ``caller_raw`` to ``called_raw``, as the webhook gave them."""
    now = utcnow()
    caller, to = _e164((caller_raw or "")[:40]), _e164((called_raw or "")[:40])
    if not caller:
        return Prelude(now, caller, to, None, "", None)
    send_after, message_status = texting.planned_status(
        business, caller, "first_text", now, business.policy.send_delay_seconds
    )
    return Prelude(now, caller, to, send_after, message_status, texting.first_text_for(business, None, now))


def conclude_new(
    session: Session, business: Business, call: NewCall, pre: Prelude | None = None
) -> tuple[Decision, str | None, str | None] | None:
    """Store ``call`` already decided, with its lead, timeline and first text.

    ``pre``: :func:`prelude`, worked out before the transaction (else here). Returns (decision,
    lead id, message id), or None when the call is not new or needs the general path; None means
    nothing was written.
    """
    conn = session.connection()
    st = statements(conn.dialect.name)
    pre = pre or prelude(business, call.from_number, call.to_number)
    started_at = now = pre.now
    caller = pre.caller
    if caller and conn.dialect.name == "postgresql":
        # Same per-caller lock as core.calls.conclude: the cooldown must see a concurrent call's text.
        conn.execute(st.lock, {"key": f"{business.id}:{caller}"})
    esc = business.escalation
    row = conn.execute(
        st.facts,
        {
            "call_sid": call.call_sid,
            "business_id": business.id,
            "phone": caller,
            "from_number": call.from_number,
            "since": now - timedelta(hours=esc.repeat_window_hours),
        },
    ).one()
    if row.call_exists:
        return None
    facts = CallFacts(
        direction=call.direction,
        caller_raw=call.from_number,
        caller=caller,
        answered=False,
        miss_reason=call.miss_reason,
        hung_up_ringing=False,
        ring_seconds=None,
        suppressions=frozenset(
            reason
            for reason, on in (("opted_out", row.opted_out), ("undeliverable", row.undeliverable))
            if on
        ),
        line_type=row.line_type if caller else None,
        last_text_at=row.last_text_at,
        now=now,
    )
    decision = decide(facts, business)
    will_have_lead = row.id is not None or (decision.texts and caller is not None)
    if will_have_lead and (row.missed_before or 0) + 1 >= esc.repeat_calls:
        return None  # a repeat caller: core.calls escalates it

    lead_id: str | None = row.id
    name: str | None = row.name
    status: str | None = row.status
    send_after: datetime | None = None
    message_status = ""
    new_lead = False
    if decision.texts and caller:
        send_after, message_status = pre.send_after, pre.message_status
        if lead_id is None:
            lead_id, new_lead = _create_lead(conn, st, business, caller, now, message_status)
            if not new_lead:  # created by a concurrent webhook since the read above
                found = conn.execute(st.lead_by_phone, {"business_id": business.id, "phone": caller}).one()
                lead_id, name, status = found.id, found.name, found.status

    conn.execute(
        st.insert_call,
        {
            "call_sid": call.call_sid,
            "business_id": business.id,
            "lead_id": lead_id,
            "from_number": call.from_number,
            "to_number": call.to_number,
            "direction": call.direction,
            "status": "ringing",
            "dial_status": None,
            "bridged": False,
            "screen_accepted": False,
            "ring_seconds": None,
            "decision_outcome": decision.outcome,
            "decision_reason": decision.reason,
            "started_at": started_at,
            "decided_at": now,
        },
    )
    if lead_id is None:
        return decision, None, None

    to = pre.to
    repeat = decision.reason == "cooldown"
    conn.execute(
        st.insert_entries,
        {
            "lead_id": lead_id,
            "call_at": started_at,
            "call_data": {
                "call_sid": call.call_sid,
                "status": "missed",
                "ring_seconds": None,
                "to": to or call.to_number,
                "repeat": repeat,
            },
            "decided_at": now,
            "decision": {"outcome": decision.outcome, "reason": decision.reason, "call_sid": call.call_sid},
        },
    )
    if not (decision.texts and caller):
        _emit_missed(session, business, lead_id, call.call_sid, repeat, row.has_connectors, False)
        return decision, lead_id, None
    assert send_after is not None
    body = pre.body_unnamed if not name and pre.body_unnamed else texting.first_text_for(business, name, now)
    message = texting.enqueue_text(
        session,
        business,
        lead_id,
        caller,
        kind="first_text",
        body=body,
        dedupe_key=f"sms:first:{call.call_sid}",
        now=now,
        from_number=to or business.numbers[0],
        delay_seconds=business.policy.send_delay_seconds,
        planned=(send_after, message_status),
    )
    if message is None:
        if new_lead:  # it was stored as texted: put it back as get_or_create leaves it
            conn.execute(st.untexted, {"lead_id": lead_id})
        _emit_missed(session, business, lead_id, call.call_sid, repeat, row.has_connectors, False)
        return decision, lead_id, None
    conn.execute(st.insert_message, message)
    if not new_lead:
        values: dict[str, Any] = {"lead_id": lead_id, "last_text_at": now, "updated_at": utcnow()}
        if message["status"] == "scheduled" and status == "new":
            values["status"] = "scheduled"
        conn.execute(st.texted, values)
    due = message["status"] == "pending"
    _emit_missed(session, business, lead_id, call.call_sid, repeat, row.has_connectors, due)
    return decision, lead_id, message["id"]


def _emit_missed(
    session: Session,
    business: Business,
    lead_id: str,
    call_sid: str,
    repeat: bool,
    has_connectors: bool,
    first_text_due: bool,
) -> None:
    """The missed call's CRM push, queued after its text: a text going now holds it (core.sync)."""
    if has_connectors:
        data = {"call_sid": call_sid, "repeat": repeat}
        sync.emit(
            session,
            business.id,
            lead_id,
            "missed_call",
            call_sid,
            data,
            first_text_due=first_text_due,
            caller_lookup=sync.looks_caller_up(business),
        )


def _create_lead(
    conn: Connection, st: Statements, business: Business, phone: str, now: datetime, message_status: str
) -> tuple[str, bool]:
    """Insert the lead as it stands once its first text is queued. (id, False) if one exists."""
    lead_id = str(uuid.uuid4())
    created = utcnow()
    result = conn.execute(
        st.insert_lead,
        {
            "id": lead_id,
            "business_id": business.id,
            "phone": phone,
            "status": "scheduled" if message_status == "scheduled" else "new",
            "source": "missed_call",
            "human_takeover": False,
            "last_text_at": now,
            "created_at": created,
            "updated_at": created,
        },
    )
    return lead_id, bool(result.rowcount)
