"""Batching the records of several leads' sync jobs: plan each job, then one request per record type.

When jobs queue up (a busy hour, or the backlog after a CRM outage) the worker claims several
together and ``SyncJob.prepare`` runs before them. Each job's event is first worked out against a
``Planner`` standing in for the connector: the records it would create (deal, call, task, notes)
are collected instead of sent. Those are created in one ``create_records`` call per kind, with the
same keys, markers and ledger intents as a single create, so a retry finds rather than repeats.
Anything else an event needs (an update, a contact push, an opt-out) is left to its job.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from sqlalchemy import delete, select, tuple_
from sqlalchemy.orm import Session, sessionmaker

from core.crm import ActivityData, DealData, NewRecord, Remote, TaskData
from core.db import transaction
from core.models import SyncLedger, utcnow


class Unplanned(Exception):
    """The event needs more than new records at this point: its job does the rest alone."""


class Planner:
    """Stands in for the connector while a job's event is worked out: creates are only noted."""

    def __init__(self) -> None:
        self.key = ""  # the ledger key of the record being created (set by _Run.ensure)
        self.records: list[tuple[str, NewRecord]] = []

    def _note(self, record: NewRecord) -> Remote:
        self.records.append((self.key, record))
        return Remote("", None, record.kind)

    def upsert_deal(
        self, marker: str, deal: DealData, contact: Remote | None, existing: Remote | None
    ) -> Remote:
        if existing is not None:
            raise Unplanned("deal update")
        return self._note(NewRecord("deal", marker, deal, contact))

    def create_task(self, marker: str, task: TaskData, contact: Remote | None, deal: Remote | None) -> Remote:
        return self._note(NewRecord("task", marker, task, contact, deal))

    def log_activity(
        self,
        marker: str,
        activity: ActivityData,
        contact: Remote | None,
        deal: Remote | None,
        existing: Remote | None,
    ) -> Remote:
        if existing is not None:
            raise Unplanned("activity update")
        return self._note(NewRecord(activity.kind, marker, activity, contact, deal))

    def __getattr__(self, name: str) -> Any:
        raise Unplanned(name)  # any other connector call (contact push, opt-out, lookup)


Key = tuple[str, str]  # (lead id, ledger key)


def mark_intents(factory: sessionmaker[Session], connector_id: str, keys: Iterable[Key]) -> None:
    """Before a batch create: remember that each record may be made, as a single create does."""
    with transaction(factory) as session:
        for lead_id, key in keys:
            row = session.get(SyncLedger, (lead_id, connector_id, key))
            if row is None:
                row = SyncLedger(lead_id=lead_id, connector_id=connector_id, key=key)
                session.add(row)
            row.intent_at = utcnow()


def record(
    factory: sessionmaker[Session], connector_id: str, made: Iterable[tuple[str, str, Remote]]
) -> None:
    with transaction(factory) as session:
        for lead_id, key, remote in made:
            row = session.get(SyncLedger, (lead_id, connector_id, key))
            if row is None:
                row = SyncLedger(lead_id=lead_id, connector_id=connector_id, key=key)
                session.add(row)
            row.remote_id, row.remote_url = remote.id, remote.url


def forget_intents(factory: sessionmaker[Session], connector_id: str, keys: list[Key]) -> None:
    """Drop bare intents (no remote id) for records the CRM certainly did not create."""
    if not keys:
        return
    with transaction(factory) as session:
        session.execute(
            delete(SyncLedger).where(
                tuple_(SyncLedger.lead_id, SyncLedger.key).in_(keys),
                SyncLedger.connector_id == connector_id,
                SyncLedger.remote_id.is_(None),
            )
        )


def untouched(factory: sessionmaker[Session], connector_id: str, keys: list[Key]) -> set[Key]:
    """The keys with no ledger row at all: never tried, so safe to create in a batch."""
    if not keys:
        return set()
    with factory() as session:
        seen = session.execute(
            select(SyncLedger.lead_id, SyncLedger.key).where(
                tuple_(SyncLedger.lead_id, SyncLedger.key).in_(keys),
                SyncLedger.connector_id == connector_id,
            )
        ).all()
    return set(keys) - {(lead_id, key) for lead_id, key in seen}
