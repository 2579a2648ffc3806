"""The SQL of one outbound text (``core.sending``), built once per dialect as Core statements.

Building an ORM statement per text (``exists``, aliases, ``.values()``) cost more CPU than running
it; these are built on first use with ``bindparam``s and executed on the job's connection.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any, cast

from sqlalchemy import Table, bindparam, case, exists, func, literal_column, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.sql import Select, Update

from core import texting
from core.models import (
    Lead,
    LineType,
    Message,
    MessageStatusEvent,
    OutboxJob,
    Suppression,
    SyncLedger,
    TimelineEntry,
)
from core.outbox import claim_holds


@dataclass(frozen=True)
class Statements:
    """A text's SQL, built once per dialect: building statements per text cost more than running them."""

    facts: Select[Any]
    batch: Select[Any]
    stored: Select[Any]
    attempt: Update
    body: Update
    personalised: Update
    # the status the worker computed -> the UPDATE that stores the sent text (see _sent)
    sent: dict[str, Update]
    sent_unranked: Update
    texted: Update
    named: Update
    lead_name: Select[Any]
    # the lead's contact in a connector, touched by a push since the text was queued
    own_contact: Select[Any]
    entry: Any


def _table(model: type[Any]) -> Table:
    return cast(Table, model.__table__)


def _sent(m: Table, state: str | None) -> Update:
    """Store the sid and the status the worker computed, which only moves forward.

    The status test runs on the row being updated, not on the worker's earlier read: a status
    callback that committed after that read (or that holds the row until this UPDATE re-reads it,
    on PostgreSQL) is never overwritten by an older status. ``state`` None: a status outside
    texting.STATUS_RANK, which replaces only a text not sent yet (texting.moves).
    """
    if state is None:
        moves: Any = m.c.status.in_([literal_column("'pending'"), literal_column("'scheduled'")])
    else:
        # Literal values, as in texting's guarded UPDATEs: not an IN rendered anew per execution.
        blocked = [c for c in texting.STATUS_RANK if not texting.moves(c, state)]
        moves = m.c.status.not_in([literal_column(f"'{c}'") for c in blocked])
    return (
        update(m)
        .where(m.c.id == bindparam("message_id"))
        .values(
            sid=bindparam("sid"),
            sent_at=bindparam("sent_at", type_=m.c.sent_at.type),
            status=case((moves, bindparam("state", type_=m.c.status.type)), else_=m.c.status),
            error_code=case((moves, bindparam("error", type_=m.c.error_code.type)), else_=m.c.error_code),
            updated_at=bindparam("at", type_=m.c.updated_at.type),
        )
    )


@functools.cache
def statements(dialect: str) -> Statements:
    insert = postgresql.insert if dialect == "postgresql" else sqlite.insert
    m, lead = _table(Message), _table(Lead)
    stamp = m.c.updated_at.type
    at: Any = bindparam("at", type_=stamp)
    message_id: Any = bindparam("message_id")
    crm_matched = exists().where(
        _table(TimelineEntry).c.lead_id == m.c.lead_id, _table(TimelineEntry).c.type == "crm_match"
    )

    def suppressed(reason: str) -> Any:
        s = _table(Suppression)
        return exists().where(
            s.c.business_id == m.c.business_id, s.c.phone == m.c.to_number, s.c.reason == reason
        )

    # texting.automated_sent_since, for the message read alongside it.
    prior = m.alias("prior")
    automated = (
        select(func.count())
        .select_from(prior)
        .where(
            prior.c.business_id == m.c.business_id,
            prior.c.to_number == m.c.to_number,
            prior.c.direction == "outbound",
            prior.c.kind.in_(texting.CAPPED_KINDS),
            prior.c.id != m.c.id,
            prior.c.status.not_in(("canceled", "failed", "pending", "scheduled")),
            prior.c.created_at >= bindparam("since", type_=stamp),
        )
        .scalar_subquery()
    )
    line = _table(LineType)
    # The job's lease while the claim that ran it holds it (NULL once another worker re-claimed it):
    # read with the facts, so checking it takes no write lock.
    jobs = _table(OutboxJob)
    lease = (
        select(jobs.c.locked_until)
        .where(*claim_holds(jobs.c))
        .scalar_subquery()
    )
    facts = (
        select(
            m.c.lead_id,
            m.c.business_id,
            m.c.kind,
            m.c.sid,
            m.c.status,
            m.c.to_number,
            m.c.from_number,
            m.c.body,
            m.c.attempt_started_at,
            lead.c.id.label("lead_found"),
            lead.c.human_takeover,
            lead.c.convo_state,
            suppressed("opted_out").label("opted_out"),
            suppressed("undeliverable").label("undeliverable"),
            automated.label("automated"),
            line.c.line_type,
            line.c.checked_at,
            crm_matched.label("crm_matched"),
            lease.label("lease_until"),
        )
        .select_from(
            m.outerjoin(lead, lead.c.id == m.c.lead_id).outerjoin(line, line.c.phone == m.c.to_number)
        )
        .where(m.c.id == message_id)
    )
    batch = select(
        m.c.id,
        m.c.lead_id,
        m.c.business_id,
        m.c.kind,
        m.c.sid,
        m.c.status,
        m.c.to_number,
        m.c.attempt_started_at,
        crm_matched.label("crm_matched"),
    ).where(m.c.id.in_(bindparam("message_ids", expanding=True)))
    events = _table(MessageStatusEvent)
    stored = (
        select(
            m.c.lead_id,
            m.c.business_id,
            m.c.kind,
            m.c.status,
            m.c.error_code,
            lead.c.id.label("lead_found"),
            lead.c.status.label("lead_status"),
            events.c.status.label("known_status"),
            events.c.error_code.label("known_error"),
        )
        .select_from(
            m.outerjoin(lead, lead.c.id == m.c.lead_id).outerjoin(
                events, events.c.message_sid == bindparam("sid")
            )
        )
        .where(m.c.id == message_id)
    )
    lead_id: Any = bindparam("lead_id")
    ledger = _table(SyncLedger)
    known = ledger.alias("known")
    return Statements(
        facts=facts,
        batch=batch,
        stored=stored,
        attempt=update(m)
        .where(m.c.id == message_id)
        .values(attempt_started_at=bindparam("started", type_=stamp), updated_at=at),
        body=update(m).where(m.c.id == message_id).values(body=bindparam("text"), updated_at=at),
        personalised=update(m)
        .where(m.c.id == message_id)
        .values(body=bindparam("text"), attempt_started_at=bindparam("started", type_=stamp), updated_at=at),
        sent={state: _sent(m, state) for state in texting.STATUS_RANK},
        sent_unranked=_sent(m, None),
        texted=update(lead)
        .where(lead.c.id == lead_id, lead.c.status.in_(("new", "scheduled")))
        .values(status="texted", updated_at=at),
        named=update(lead)
        .where(lead.c.id == lead_id, (lead.c.name.is_(None)) | (lead.c.name == ""))
        .values(name=bindparam("name"), updated_at=at),
        lead_name=select(lead.c.name).where(lead.c.id == lead_id),
        own_contact=select(ledger.c.lead_id)
        .where(
            ledger.c.lead_id == lead_id,
            ledger.c.connector_id == bindparam("connector_id"),
            ledger.c.key == "contact",
            ledger.c.updated_at >= select(m.c.created_at).where(m.c.id == message_id).scalar_subquery(),
            # core.sync's missed-call push records a contact the CRM had before it as this key
            ~exists().where(
                known.c.lead_id == lead_id,
                known.c.connector_id == ledger.c.connector_id,
                known.c.key == "existing_customer",
            ),
        )
        .limit(1),
        entry=insert(_table(TimelineEntry)),
    )
