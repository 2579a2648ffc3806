"""The normalised lead record and its documented JSON shape (docs/lead-record.md)."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from sqlalchemy import select
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


def to_json(session: Session, lead: Lead) -> dict[str, Any]:
    """The documented lead shape shared by the CLI, exports and connectors."""
    entries: list[tuple[datetime, int, dict[str, Any]]] = []
    for entry in session.scalars(
        select(TimelineEntry).where(TimelineEntry.lead_id == lead.id).order_by(TimelineEntry.id)
    ):
        item = {"at": _iso(entry.at), "type": entry.type, **(entry.data or {})}
        entries.append((entry.at, 0, item))
    for msg in session.scalars(
        select(Message).where(Message.lead_id == lead.id).order_by(Message.created_at)
    ):
        item = {
            "at": _iso(msg.sent_at or msg.created_at),
            "type": "message",
            "direction": msg.direction,
            "kind": msg.kind,
            "message_id": msg.id,
            "sid": msg.sid,
            "from": msg.from_number,
            "to": msg.to_number,
            "body": msg.body,
            "status": msg.status,
            "error_code": msg.error_code,
            "send_after": _iso(msg.send_after),
        }
        entries.append((msg.sent_at or msg.created_at, 1, item))
    entries.sort(key=lambda e: (e[0], e[1]))
    opted_out = "opted_out" in suppressions(session, lead.business_id, lead.phone)
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
        "timeline": [e[2] for e in entries],
    }
