"""The console's reads. Every list is paged in SQL; the dashboard aggregates in SQL per day.

Funnel definitions (also in docs/console.md), per business and per UTC day:

- missed calls: calls whose decision says the caller was missed (texted, or skipped for a reason
  that still leaves a missed caller such as ``cooldown`` or ``opted_out``), by the call's day;
- the lead funnel counts the leads first created by a missed call that day (one per caller):
  texted (a first text went out), replied (the caller wrote back), qualified (an intent was found,
  or the lead is qualified or booked), booked (an appointment was made);
- recovered % = leads that replied / leads created by a missed call;
- median time to text: from the missed call's decision (its first text is queued in the same
  transaction) to Twilio accepting that text, over first texts sent in the period;
- median time to first human response: from the lead's creation to the first reply a person sent.
"""

from __future__ import annotations

import re
import statistics
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from typing import Any

from sqlalchemy import and_, case, exists, func, or_, select
from sqlalchemy.orm import Session
from sqlalchemy.sql.elements import ColumnElement

from core.models import (
    Alert,
    Call,
    ConnectorInstall,
    ConnectorState,
    Lead,
    Message,
    OutboxJob,
    Suppression,
    SyncLedger,
    TimelineEntry,
    utcnow,
)
from core.phones import to_e164

#: Decision reasons that do not describe a missed caller.
NOT_MISSED = ("answered", "not_inbound", "short_ring", "own_number", "staff_phone")
STAGES = ("missed", "texted", "replied", "qualified", "booked")


@dataclass
class Counts:
    missed: int = 0
    leads: int = 0
    texted: int = 0
    replied: int = 0
    qualified: int = 0
    booked: int = 0

    def add(self, other: Counts) -> None:
        for name in ("missed", "leads", "texted", "replied", "qualified", "booked"):
            setattr(self, name, getattr(self, name) + getattr(other, name))

    @property
    def recovered_pct(self) -> float | None:
        return round(100.0 * self.replied / self.leads, 1) if self.leads else None


@dataclass
class Dashboard:
    since: date
    days: list[date]
    per_day: dict[date, Counts]
    per_business: dict[str, Counts]
    total: Counts
    median_to_text: float | None
    median_to_human: float | None
    median_to_text_by_business: dict[str, float | None] = field(default_factory=dict)
    median_to_human_by_business: dict[str, float | None] = field(default_factory=dict)


def _day(value: Any) -> date:
    """``date(col)`` comes back as a date (PostgreSQL) or an ISO string (SQLite)."""
    if isinstance(value, datetime):
        return value.date()
    if isinstance(value, date):
        return value
    return date.fromisoformat(str(value)[:10])


def _seconds(later: datetime | None, earlier: datetime | None) -> float | None:
    if later is None or earlier is None:
        return None
    return max(0.0, (later - earlier).total_seconds())


def _median(values: list[float]) -> float | None:
    return float(statistics.median(values)) if values else None


def dashboard(session: Session, days: int, business: str | None, now: datetime | None = None) -> Dashboard:
    now = now or utcnow()
    first_day = (now - timedelta(days=days - 1)).date()
    since = datetime(first_day.year, first_day.month, first_day.day, tzinfo=now.tzinfo)
    day_list = [first_day + timedelta(days=i) for i in range(days)]
    per_day = {d: Counts() for d in day_list}
    per_business: dict[str, Counts] = {}

    call_day = func.date(Call.started_at)
    call_filter = [
        Call.started_at >= since,
        Call.decision_outcome.is_not(None),
        Call.decision_reason.not_in(NOT_MISSED),
    ]
    if business:
        call_filter.append(Call.business_id == business)
    missed_rows = session.execute(
        select(call_day, Call.business_id, func.count())
        .where(*call_filter)
        .group_by(call_day, Call.business_id)
    )
    for day, biz, n in missed_rows:
        _add(per_day, per_business, _day(day), biz, missed=int(n))

    def flag(cond: ColumnElement[bool]) -> Any:
        return func.sum(case((cond, 1), else_=0))

    texted = exists().where(
        Message.lead_id == Lead.id, Message.kind == "first_text", Message.sent_at.is_not(None)
    )
    replied = exists().where(Message.lead_id == Lead.id, Message.direction == "inbound")
    booked_entry = exists().where(TimelineEntry.lead_id == Lead.id, TimelineEntry.type == "booking")
    booked = or_(Lead.status == "booked", booked_entry)
    qualified = or_(Lead.intent.is_not(None), Lead.status.in_(("qualified", "booked")), booked_entry)
    lead_day = func.date(Lead.created_at)
    lead_filter = [Lead.created_at >= since, Lead.source == "missed_call"]
    if business:
        lead_filter.append(Lead.business_id == business)
    rows = session.execute(
        select(lead_day, Lead.business_id, func.count())
        .add_columns(flag(texted), flag(replied), flag(qualified), flag(booked))
        .where(*lead_filter)
        .group_by(lead_day, Lead.business_id)
    )
    for day, biz, n, n_texted, n_replied, n_qualified, n_booked in rows:
        _add(
            per_day,
            per_business,
            _day(day),
            biz,
            leads=int(n or 0),
            texted=int(n_texted or 0),
            replied=int(n_replied or 0),
            qualified=int(n_qualified or 0),
            booked=int(n_booked or 0),
        )

    total = Counts()
    for c in per_business.values():
        total.add(c)

    to_text: dict[str, list[float]] = {}
    text_filter = [Message.kind == "first_text", Message.sent_at >= since]
    if business:
        text_filter.append(Message.business_id == business)
    for biz, sent_at, created_at in session.execute(
        select(Message.business_id, Message.sent_at, Message.created_at).where(*text_filter)
    ):
        secs = _seconds(sent_at, created_at)
        if secs is not None:
            to_text.setdefault(biz, []).append(secs)
    to_human: dict[str, list[float]] = {}
    human_filter = [Lead.first_human_response_at >= since]
    if business:
        human_filter.append(Lead.business_id == business)
    for biz, answered_at, created_at in session.execute(
        select(Lead.business_id, Lead.first_human_response_at, Lead.created_at).where(*human_filter)
    ):
        secs = _seconds(answered_at, created_at)
        if secs is not None:
            to_human.setdefault(biz, []).append(secs)
    for biz in (*to_text, *to_human):
        per_business.setdefault(biz, Counts())
    return Dashboard(
        since=first_day,
        days=day_list,
        per_day=per_day,
        per_business=dict(sorted(per_business.items())),
        total=total,
        median_to_text=_median([v for vs in to_text.values() for v in vs]),
        median_to_human=_median([v for vs in to_human.values() for v in vs]),
        median_to_text_by_business={b: _median(to_text.get(b, [])) for b in per_business},
        median_to_human_by_business={b: _median(to_human.get(b, [])) for b in per_business},
    )


def _add(per_day: dict[date, Counts], per_business: dict[str, Counts], day: date, biz: str, **n: int) -> None:
    """Add counts for one business on one day, to that day's totals and to the business's."""
    for counts in (per_day.setdefault(day, Counts()), per_business.setdefault(biz, Counts())):
        for name, value in n.items():
            setattr(counts, name, getattr(counts, name) + value)


# -- leads ------------------------------------------------------------------------------------------


def _like(text: str) -> str:
    escaped = text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return f"%{escaped}%"


def search_leads(
    session: Session,
    q: str,
    status: str | None,
    business: str | None,
    offset: int,
    limit: int,
) -> list[Lead]:
    """Leads matching a phone (any format, or some of its digits), a name, an email or an id."""
    query = select(Lead)
    q = q.strip()
    if q:
        conditions: list[ColumnElement[bool]] = [
            Lead.name.ilike(_like(q), escape="\\"),
            Lead.email.ilike(_like(q), escape="\\"),
            Lead.id == q,
        ]
        e164 = to_e164(q)
        if e164:
            conditions.append(Lead.phone == e164)
        digits = re.sub(r"\D", "", q)
        if len(digits) >= 3 and not re.search(r"[A-Za-z]", q):
            conditions.append(Lead.phone.like(_like(digits), escape="\\"))
        query = query.where(or_(*conditions))
    if status:
        query = query.where(Lead.status == status)
    if business:
        query = query.where(Lead.business_id == business)
    query = query.order_by(Lead.created_at.desc(), Lead.id.desc()).offset(offset).limit(limit)
    return list(session.scalars(query))


def opted_out_phones(session: Session, lead_rows: list[Lead]) -> set[tuple[str, str]]:
    if not lead_rows:
        return set()
    rows = session.execute(
        select(Suppression.business_id, Suppression.phone).where(
            Suppression.reason == "opted_out", Suppression.phone.in_({lead.phone for lead in lead_rows})
        )
    )
    return {(b, p) for b, p in rows}


def crm_links(session: Session, lead_id: str) -> list[SyncLedger]:
    return list(
        session.scalars(
            select(SyncLedger)
            .where(SyncLedger.lead_id == lead_id)
            .order_by(SyncLedger.connector_id, SyncLedger.key)
        )
    )


# -- outbox, connectors, suppressions, alerts -----------------------------------------------------------


def dead_jobs(session: Session, offset: int, limit: int) -> list[OutboxJob]:
    return list(
        session.scalars(
            select(OutboxJob)
            .where(OutboxJob.status == "dead")
            .order_by(OutboxJob.updated_at.desc(), OutboxJob.id.desc())
            .offset(offset)
            .limit(limit)
        )
    )


def dead_count(session: Session) -> int:
    return int(
        session.scalar(select(func.count()).select_from(OutboxJob).where(OutboxJob.status == "dead")) or 0
    )


@dataclass(frozen=True)
class Installed:
    install: ConnectorInstall
    state: ConnectorState | None


def installed_connectors(session: Session) -> list[Installed]:
    rows = session.execute(
        select(ConnectorInstall, ConnectorState)
        .outerjoin(
            ConnectorState,
            and_(
                ConnectorState.business_id == ConnectorInstall.business_id,
                ConnectorState.connector_id == ConnectorInstall.connector_id,
            ),
        )
        .order_by(ConnectorInstall.business_id, ConnectorInstall.connector_id)
    )
    return [Installed(install, st) for install, st in rows]


def suppressions(
    session: Session, q: str, business: str | None, offset: int, limit: int
) -> list[Suppression]:
    query = select(Suppression)
    q = q.strip()
    if q:
        e164 = to_e164(q)
        digits = re.sub(r"\D", "", q)
        conds: list[ColumnElement[bool]] = []
        if e164:
            conds.append(Suppression.phone == e164)
        if len(digits) >= 3:
            conds.append(Suppression.phone.like(_like(digits), escape="\\"))
        conds.append(Suppression.reason == q)
        query = query.where(or_(*conds))
    if business:
        query = query.where(Suppression.business_id == business)
    query = query.order_by(Suppression.created_at.desc(), Suppression.phone).offset(offset).limit(limit)
    return list(session.scalars(query))


def alerts(session: Session, show_all: bool, offset: int, limit: int) -> list[Alert]:
    query = select(Alert)
    if not show_all:
        query = query.where(Alert.resolved_at.is_(None))
    query = query.order_by(Alert.at.desc(), Alert.id.desc()).offset(offset).limit(limit)
    return list(session.scalars(query))
