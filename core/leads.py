"""The normalised lead record and its documented JSON shape (docs/lead-record.md)."""

from __future__ import annotations

import functools
import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any, cast

from sqlalchemy import Select, Table, bindparam, exists, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from core.models import Lead, Message, Suppression, TimelineEntry, utcnow

STATUSES = (
    "new",
    "scheduled",
    "texted",
    "replied",
    "qualified",
    "booked",
    "handed_off",
    "opted_out",
    "closed",
)


def get_or_create(session: Session, business_id: str, phone: str, source: str) -> tuple[Lead, bool]:
    """The lead for (business, phone), created when missing. Safe under concurrent webhooks."""
    existing = find(session, business_id, phone)
    if existing is not None:
        return existing, False
    now = utcnow()
    values = {
        "id": str(uuid.uuid4()),
        "business_id": business_id,
        "phone": phone,
        "status": "new",
        "source": source,
        "created_at": now,
        "updated_at": now,
    }
    dialect = session.get_bind().dialect.name
    insert = postgresql.insert if dialect == "postgresql" else sqlite.insert
    stmt = insert(Lead).values(**values).on_conflict_do_nothing(index_elements=["business_id", "phone"])
    created = bool(getattr(session.execute(stmt), "rowcount", 0))
    lead = find(session, business_id, phone)
    assert lead is not None
    return lead, created


def find(session: Session, business_id: str, phone: str) -> Lead | None:
    return session.scalars(select(Lead).where(Lead.business_id == business_id, Lead.phone == phone)).first()


def add_entry(session: Session, lead_id: str, type_: str, at: datetime | None = None, **data: Any) -> None:
    session.add(TimelineEntry(lead_id=lead_id, type=type_, at=at or utcnow(), data=data))


def entries(session: Session, lead_id: str) -> list[TimelineEntry]:
    return list(session.scalars(select(TimelineEntry).where(TimelineEntry.lead_id == lead_id)))


def set_status(lead: Lead, status: str, only_from: tuple[str, ...] | None = None) -> None:
    if only_from is None or lead.status in only_from:
        lead.status = status
        lead.updated_at = utcnow()


def suppressions(session: Session, business_id: str, phone: str) -> frozenset[str]:
    rows = session.scalars(
        select(Suppression.reason).where(Suppression.business_id == business_id, Suppression.phone == phone)
    )
    return frozenset(rows)


def _iso(value: datetime | None) -> str | None:
    return value.isoformat().replace("+00:00", "Z") if value else None


@dataclass(frozen=True)
class _Statements:
    leads: Select[Any]
    entries: Select[Any]


@functools.cache
def _statements() -> _Statements:
    """Core selects of just the columns the document needs, built once (no ORM entity loads)."""
    leads, entries, msgs, supp = (
        cast(Table, m.__table__) for m in (Lead, TimelineEntry, Message, Suppression)
    )
    ids: Any = bindparam("ids", expanding=True)
    opted_out = exists().where(
        supp.c.business_id == leads.c.business_id, supp.c.phone == leads.c.phone, supp.c.reason == "opted_out"
    )
    # Each lead with its messages, oldest first (a lead without any: one row, message columns NULL).
    with_messages = (
        select(
            leads.c.id,
            leads.c.business_id,
            leads.c.phone,
            leads.c.name,
            leads.c.email,
            leads.c.status,
            leads.c.source,
            leads.c.created_at,
            leads.c.updated_at,
            opted_out.label("opted_out"),
            msgs.c.id.label("message_id"),
            msgs.c.direction,
            msgs.c.kind,
            msgs.c.sid,
            msgs.c.from_number,
            msgs.c.to_number,
            msgs.c.body,
            msgs.c.status.label("message_status"),
            msgs.c.error_code,
            msgs.c.send_after,
            msgs.c.sent_at,
            msgs.c.created_at.label("message_created_at"),
        )
        .select_from(leads.outerjoin(msgs, msgs.c.lead_id == leads.c.id))
        .where(leads.c.id.in_(ids))
        .order_by(msgs.c.created_at, msgs.c.id)
    )
    return _Statements(
        leads=with_messages,
        entries=select(entries.c.lead_id, entries.c.at, entries.c.type, entries.c.data)
        .where(entries.c.lead_id.in_(ids))
        .order_by(entries.c.id),
    )


def to_json(session: Session, lead: Lead) -> dict[str, Any]:
    """The documented lead shape shared by the CLI, exports and connectors."""
    if session.autoflush:
        session.flush()  # what the ORM queries this replaced saw: the session's pending changes
    found = documents(session, [lead.id]).get(lead.id)
    if found is None:  # not in the database (never flushed): nothing recorded for it there yet
        opted_out = "opted_out" in suppressions(session, lead.business_id, lead.phone)
        return _document(lead, [], opted_out)
    # The lead's own fields as the caller holds them, as before.
    return _document(lead, found["timeline"], found["opted_out"])


def document(session: Session, lead_id: str) -> dict[str, Any] | None:
    """:func:`to_json` of the lead with this id (None if there is none), without loading it."""
    return documents(session, [lead_id]).get(lead_id)


def documents(session: Session, lead_ids: list[str]) -> dict[str, dict[str, Any]]:
    """:func:`to_json` of each of these leads that exists, in two statements for all of them."""
    if not lead_ids:
        return {}
    st = _statements()
    conn = session.connection()
    ids = {"ids": list(dict.fromkeys(lead_ids))}
    leads: dict[str, Any] = {}
    timelines: dict[str, list[tuple[datetime, int, dict[str, Any]]]] = {}
    for row in conn.execute(st.leads, ids):
        if row.id not in leads:
            leads[row.id] = row
            timelines[row.id] = []
        if row.message_id is None:
            continue
        at = row.sent_at or row.message_created_at
        item = {
            "at": _iso(at),
            "type": "message",
            "direction": row.direction,
            "kind": row.kind,
            "message_id": row.message_id,
            "sid": row.sid,
            "from": row.from_number,
            "to": row.to_number,
            "body": row.body,
            "status": row.message_status,
            "error_code": row.error_code,
            "send_after": _iso(row.send_after),
        }
        timelines[row.id].append((at, 1, item))
    if not leads:
        return {}
    entries: dict[str, list[tuple[datetime, int, dict[str, Any]]]] = {lead_id: [] for lead_id in leads}
    for entry in conn.execute(st.entries, ids):
        if entry.lead_id in entries:
            entries[entry.lead_id].append(
                (entry.at, 0, {"at": _iso(entry.at), "type": entry.type, **(entry.data or {})})
            )
    out = {}
    for lead_id, row in leads.items():
        # Timeline entries (in id order) then messages (oldest first), merged by time; at the same
        # instant an entry comes before a message. The sort is stable, so each keeps its own order.
        merged = entries[lead_id] + timelines[lead_id]
        merged.sort(key=lambda e: (e[0], e[1]))
        out[lead_id] = _document(row, [e[2] for e in merged], bool(row.opted_out))
    return out


def _document(lead: Any, timeline: list[dict[str, Any]], opted_out: bool) -> dict[str, Any]:
    return {
        "id": lead.id,
        "business": lead.business_id,
        "phone": lead.phone,
        "name": lead.name,
        "email": lead.email,
        "status": lead.status,
        "source": lead.source,
        "opted_out": opted_out,
        "created_at": _iso(lead.created_at),
        "updated_at": _iso(lead.updated_at),
        "timeline": timeline,
    }
