"""The console's reads for its lists (leads, outbox, connectors, suppressions, alerts), each paged in SQL.

The dashboard's numbers are not here: they come from :func:`core.report.build`, the code behind
``textback report`` (see bridge/console/dashboard.py and docs/reports.md).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from sqlalchemy import and_, func, or_, select
from sqlalchemy.orm import Session
from sqlalchemy.sql.elements import ColumnElement

from core.models import (
    Alert,
    ConnectorInstall,
    ConnectorState,
    Lead,
    OutboxJob,
    Suppression,
    SyncLedger,
)
from core.phones import to_e164

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
