"""Outbound texts: choosing and rendering the first text, queueing any text through the outbox,
and applying Twilio's delivery-status callbacks."""

from __future__ import annotations

import functools
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, cast
from zoneinfo import ZoneInfo

from sqlalchemy import (
    Connection,
    Insert,
    Select,
    Table,
    Update,
    bindparam,
    exists,
    func,
    literal_column,
    select,
    update,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from core import leads, outbox
from core import templates as tpl
from core.config import Business
from core.hours import is_open, next_send_time
from core.models import Lead, Message, MessageStatusEvent, Suppression, utcnow
from core.phones import time_zones
from core.worker import pause_point

# Twilio error codes that end a send for good and mark the number.
PERMANENT_CODES: dict[int, str] = {
    21610: "opted_out",  # the recipient replied STOP
    21211: "undeliverable",  # invalid 'To' number
    21614: "undeliverable",  # not a mobile number
    30006: "undeliverable",  # landline or unreachable carrier
}

STATUS_RANK = {
    "accepted": 0,
    "scheduled": 0,
    "queued": 0,
    "sending": 1,
    "sent": 2,
    "delivered": 3,
    "undelivered": 3,
    "failed": 3,
    "read": 4,
}
TERMINAL = ("delivered", "undelivered", "failed", "read")

# Kinds that wait for the sending window. Direct answers to a message the caller just sent don't.
AUTOMATED_KINDS = ("first_text", "follow_up")
# Unsolicited automated kinds: they count toward the per-number daily cap. Direct answers to a
# text the caller just sent ("reply", "closing") go out at once and are not capped: the caller
# asked, and a capped booking confirmation would strand them.
CAPPED_KINDS = ("first_text", "follow_up")
# Kinds a closed or human-owned conversation never gets.
AUTOMATED_REPLY_KINDS = ("reply", "follow_up")
# Kinds sent to staff, not to the caller: the caller's opt-out and caps do not apply to them.
STAFF_KINDS = ("staff_alert",)


@functools.lru_cache(maxsize=4096)
def _zone_names(phone: str) -> tuple[str, ...]:
    # phonenumbers parses the number on every lookup; a caller's zones never change.
    return tuple(time_zones(phone))


def caller_zones(phone: str, business: Business) -> list[ZoneInfo]:
    zones = _zone_names(phone)
    return [ZoneInfo(z) for z in zones] if zones else [business.tz]


def first_text_body(business: Business, lead: Lead, now: datetime, existing_customer: bool = False) -> str:
    return first_text_for(business, lead.name, now, existing_customer)


def first_text_for(
    business: Business, name: str | None, now: datetime, existing_customer: bool = False
) -> str:
    """The first text for a lead called ``name`` (None when unknown)."""
    if existing_customer:
        template = "existing_customer"
    elif is_open(now, business.tz, business.hours, business.holidays):
        template = "business_hours"
    else:
        template = "after_hours"
    first = (name or "").split(" ")[0] or None
    return tpl.render(
        business.templates[template],
        business=business.name,
        first_name=first,
        booking_link=business.booking_link,
    )


def queue_text(
    session: Session,
    business: Business,
    lead: Lead,
    *,
    kind: str,
    body: str,
    dedupe_key: str,
    now: datetime | None = None,
    from_number: str | None = None,
    delay_seconds: float = 0.0,
    to_number: str | None = None,
) -> Message | None:
    """Store an outbound text and its send job in the caller's transaction.

    Automated kinds are held until the sending window opens in the caller's time zone(s).
    Returns None when a text with this dedupe key was already queued.
    """
    values = enqueue_text(
        session,
        business,
        lead.id,
        lead.phone,
        kind=kind,
        body=body,
        dedupe_key=dedupe_key,
        now=now,
        from_number=from_number,
        delay_seconds=delay_seconds,
        to_number=to_number,
    )
    if values is None:
        return None
    message = Message(**values)
    session.add(message)
    return message


def planned_status(
    business: Business, phone: str, kind: str, now: datetime, delay_seconds: float = 0.0
) -> tuple[datetime, str]:
    """When a text queued ``now`` may go out, and the status it is stored with."""
    send_at = now + timedelta(seconds=delay_seconds)
    if kind in AUTOMATED_KINDS:
        send_at = next_send_time(send_at, caller_zones(phone, business), business.policy.window)
    return send_at, "scheduled" if send_at > now + timedelta(seconds=1) else "pending"


def enqueue_text(
    session: Session,
    business: Business,
    lead_id: str,
    phone: str,
    *,
    kind: str,
    body: str,
    dedupe_key: str,
    now: datetime | None = None,
    from_number: str | None = None,
    delay_seconds: float = 0.0,
    to_number: str | None = None,
    planned: tuple[datetime, str] | None = None,
) -> dict[str, Any] | None:
    """Queue the send job for a text; the ``messages`` row values for the caller to store.

    ``planned``: what :func:`planned_status` answered for this business, phone, kind, ``now`` and
    ``delay_seconds``, when the caller needed it first (it costs a phone number parse for a new
    caller). None when a text with this dedupe key was already queued (store nothing then).
    """
    if planned is not None and now is None:
        raise ValueError("planned needs the now it was computed for")
    now = now or utcnow()
    send_at, status = planned or planned_status(business, phone, kind, now, delay_seconds)
    values: dict[str, Any] = {
        "id": str(uuid.uuid4()),
        "lead_id": lead_id,
        "business_id": business.id,
        "direction": "outbound",
        "kind": kind,
        "from_number": from_number or business.numbers[0],
        "to_number": to_number or phone,
        "body": body,
        "status": status,
        "send_after": send_at,
        "created_at": now,
        "updated_at": now,
    }
    queued = outbox.enqueue(
        session,
        kind="sms.send",
        target="twilio",
        dedupe_key=dedupe_key,
        ordering_key=f"sms:{business.id}:{to_number or phone}",
        business_id=business.id,
        lead_id=lead_id,
        payload={"message_id": values["id"]},
        run_at=send_at,
    )
    return values if queued else None


def suppress(session: Session, business_id: str, phone: str, reason: str, source: str) -> None:
    dialect = session.get_bind().dialect.name
    insert = postgresql.insert if dialect == "postgresql" else sqlite.insert
    stmt = (
        insert(Suppression)
        .values(business_id=business_id, phone=phone, reason=reason, source=source, created_at=utcnow())
        .on_conflict_do_nothing()
    )
    session.execute(stmt)


@dataclass(frozen=True)
class _StatusStatements:
    record: Insert
    # (new status, looked up by message id, with an error code) -> its guarded UPDATE
    advance: dict[tuple[str, bool, bool], Update]
    # PostgreSQL: the same two as one statement (one round trip), answering (recorded, advanced)
    both: dict[tuple[str, bool, bool], Select[Any]]


def _blocked(status: str) -> tuple[str, ...]:
    """The stored statuses that ``status`` may not replace: :func:`moves` as a set."""
    return tuple(current for current in STATUS_RANK if not moves(current, status))


@functools.cache
def _status_statements(dialect: str) -> _StatusStatements:
    insert = postgresql.insert if dialect == "postgresql" else sqlite.insert
    events, messages = cast(Table, MessageStatusEvent.__table__), cast(Table, Message.__table__)
    advance: dict[tuple[str, bool, bool], Update] = {}
    for status in STATUS_RANK:
        for by_id in (False, True):
            for with_code in (False, True):
                # The status test in SQL (not read first) also keeps concurrent callbacks for one
                # text from overwriting each other on PostgreSQL: the row lock re-checks it.
                # Literal values, not an expanding IN that is rendered anew on every execution.
                blocked: list[Any] = [literal_column(f"'{c}'") for c in _blocked(status)]
                where = [messages.c.sid == bindparam("_sid"), messages.c.status.not_in(blocked)]
                if by_id:
                    where.append(messages.c.id == bindparam("_id"))
                values: dict[str, Any] = {
                    "status": status,
                    "updated_at": bindparam("_now", type_=messages.c.updated_at.type),
                }
                if with_code:
                    values["error_code"] = bindparam("_code", type_=messages.c.error_code.type)
                advance[status, by_id, with_code] = update(messages).where(*where).values(values)
    record = insert(events).on_conflict_do_nothing(index_elements=["message_sid", "status"])
    both = {}
    if dialect == "postgresql":
        # Data-modifying CTEs: the UPDATE runs only when the INSERT stored the callback.
        recorded = (
            insert(events)
            .values(
                message_sid=bindparam("_sid"),
                status=bindparam("_status"),
                error_code=bindparam("_code", type_=events.c.error_code.type),
                received_at=bindparam("_now", type_=events.c.received_at.type),
            )
            .on_conflict_do_nothing(index_elements=["message_sid", "status"])
            .returning(events.c.id)
            .cte("recorded")
        )
        for key, stmt in advance.items():
            advanced = stmt.where(exists(select(recorded.c.id))).returning(messages.c.id).cte("advanced")
            both[key] = select(
                select(func.count()).select_from(recorded).scalar_subquery(),
                select(func.count()).select_from(advanced).scalar_subquery(),
            )
    return _StatusStatements(record=record, advance=advance, both=both)


def apply_status(
    db: Session | Connection,
    *,
    message_id: str | None,
    sid: str,
    status: str,
    error_code: int | None,
) -> bool:
    """Apply one status callback. Returns False for a duplicate (same sid and status).

    The usual callback (a text the worker already gave this sid, moving forward, no permanent
    error) is one guarded UPDATE; anything else (the sid not stored yet, a late status, a code
    that suppresses the number) goes through :func:`_apply_to_message`. Given a Connection (in a
    transaction), it needs no Session unless it takes that path.
    """
    status = status.lower()
    conn = db.connection() if isinstance(db, Session) else db
    st = _status_statements(conn.dialect.name)
    now = utcnow()
    key = (status, message_id is not None, error_code is not None)
    fast = error_code not in PERMANENT_CODES
    params: dict[str, Any] = {
        "_sid": sid,
        "_id": message_id,
        "_now": now,
        "_code": error_code,
        "_status": status,
    }
    if fast and key in st.both:
        recorded, advanced = conn.execute(st.both[key], {**params, "_status": status}).one()
        if not recorded:
            return False
        if advanced:
            return True
    else:
        values = {"message_sid": sid, "status": status, "error_code": error_code, "received_at": now}
        if not conn.execute(st.record, values).rowcount:
            return False
        if fast and key in st.advance and conn.execute(st.advance[key], params).rowcount:
            return True
    if isinstance(db, Session):
        _apply_to_message(db, message_id, sid, status, error_code)
        return True
    # Joins the caller's transaction: never commits it, and closing leaves it to the caller.
    with Session(bind=conn, join_transaction_mode="rollback_only") as session:
        _apply_to_message(session, message_id, sid, status, error_code)
        session.flush()
    return True


def _apply_to_message(
    session: Session, message_id: str | None, sid: str, status: str, error_code: int | None
) -> None:
    """The general path of a recorded callback, through the ORM.

    The text is read FOR UPDATE (PostgreSQL; SQLite's writers are serialised already): a worker
    committing the sent text after a plain read would otherwise be overwritten by this callback's
    write, computed from the older row (a late 'sent' over the 'delivered' the worker stored).
    """
    message = None
    if message_id:
        message = session.get(Message, message_id, with_for_update=True, populate_existing=True)
    if message is None:
        message = session.scalars(
            select(Message)
            .where(Message.sid == sid)
            .with_for_update()
            .execution_options(populate_existing=True)
        ).first()
    if message is None:
        return  # kept in message_status_events; applied when the worker stores the sid
    pause_point("status_read", session.connection())  # test hook: the worker commits in between
    if message.sid is None:
        message.sid = sid
    advance(message, status, error_code)
    if error_code in PERMANENT_CODES:
        suppress(
            session,
            message.business_id,
            message.to_number,
            PERMANENT_CODES[error_code],
            f"twilio:{error_code}",
        )


def moves(current: str, status: str) -> bool:
    """Whether ``status`` may replace ``current``: the delivery state only moves forward."""
    if current in TERMINAL and status != "read":
        return False
    return STATUS_RANK.get(status, -1) > STATUS_RANK.get(current, -1) or current in ("pending", "scheduled")


def furthest(events: list[tuple[str, int | None]]) -> tuple[str, int | None] | None:
    """The furthest of (status, error code) pairs reported for one text, or None."""
    return max(events, key=lambda e: STATUS_RANK.get(e[0], -1)) if events else None


def advance(message: Message, status: str, error_code: int | None = None) -> None:
    """Move the delivery state forward only: a late 'sent' never overwrites 'delivered'."""
    if not moves(message.status, status):
        return
    message.status = status
    if error_code is not None:
        message.error_code = error_code
    message.updated_at = utcnow()


def furthest_known_status(session: Session, sid: str) -> tuple[str, int | None] | None:
    """The furthest status callbacks already reported for ``sid`` (they can beat the worker)."""
    events = session.execute(
        select(MessageStatusEvent.status, MessageStatusEvent.error_code).where(
            MessageStatusEvent.message_sid == sid
        )
    ).all()
    return furthest([(status, code) for status, code in events])


def mark_lead_texted(lead: Lead) -> None:
    leads.set_status(lead, "texted", only_from=("new", "scheduled"))


def automated_sent_since(session: Session, message: Message, since: datetime) -> int:
    """Automated texts already sent (or being sent) to this number by this business since ``since``."""
    from sqlalchemy import func

    return int(
        session.scalar(
            select(func.count())
            .select_from(Message)
            .where(
                Message.business_id == message.business_id,
                Message.to_number == message.to_number,
                Message.direction == "outbound",
                Message.kind.in_(CAPPED_KINDS),
                Message.id != message.id,
                Message.status.not_in(("canceled", "failed", "pending", "scheduled")),
                Message.created_at >= since,
            )
        )
        or 0
    )
