"""Batching the records of several leads' sync jobs: plan each job, then one request per record type.

When jobs queue up (a busy hour, or the backlog after a CRM outage) the worker claims several
together and ``SyncJob.prepare`` runs before them. Each job's event is first worked out against a
``Planner`` standing in for the connector: the records it would create (deal, call, task, notes)
are collected instead of sent. Those are created in one ``create_records`` call per kind, with the
same keys, markers and ledger intents as a single create, so a retry finds rather than repeats.
Anything else an event needs (an update, a contact push, an opt-out) is left to its job.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable
from typing import Any, cast

from sqlalchemy import Row, Table, bindparam, delete, or_, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session, sessionmaker

from core.crm import ActivityData, DealData, NewRecord, Remote, TaskData
from core.db import reading, transaction
from core.models import SyncLedger, utcnow
from core.pairs import any_pair, pair_params


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

_LEDGER = cast(Table, SyncLedger.__table__)


@functools.cache
def _upsert(dialect: str, intent: bool, remote: bool) -> Any:
    """A ledger row written as the ORM's load, modify and flush did, in one statement.

    New: inserted with what is given. Existing: an intent stamps ``intent_at``; a remote sets the
    ids, and ``updated_at`` moves only when they change (the ORM wrote nothing for an unchanged one).
    """
    insert = postgresql.insert if dialect == "postgresql" else sqlite.insert
    t = _LEDGER
    stmt = insert(t).values(
        lead_id=bindparam("lead_id"),
        connector_id=bindparam("connector_id"),
        key=bindparam("key"),
        remote_id=bindparam("remote_id"),
        remote_url=bindparam("remote_url"),
        intent_at=bindparam("intent_at", type_=t.c.intent_at.type),
        updated_at=bindparam("updated_at", type_=t.c.updated_at.type),
    )
    pk = ["lead_id", "connector_id", "key"]
    changes: dict[str, Any] = {"updated_at": stmt.excluded.updated_at}
    if intent:
        changes["intent_at"] = stmt.excluded.intent_at
    if remote:
        changes.update(remote_id=stmt.excluded.remote_id, remote_url=stmt.excluded.remote_url)
    if not (intent or remote):
        return stmt.on_conflict_do_nothing(index_elements=pk)
    where = None
    if not intent:
        where = or_(
            t.c.remote_id.is_distinct_from(stmt.excluded.remote_id),
            t.c.remote_url.is_distinct_from(stmt.excluded.remote_url),
        )
    return stmt.on_conflict_do_update(index_elements=pk, set_=changes, where=where)


def save(
    session: Session, connector_id: str, rows: Iterable[tuple[str, str, Remote | None]], intent: bool
) -> None:
    """Write ledger rows (lead id, key, remote): intents stamped now, remotes (when given) recorded.

    The rows all give a remote or all give None.
    """
    now = utcnow()
    params: dict[Key, dict[str, Any]] = {}
    remote = False
    for lead_id, key, made in rows:
        remote = made is not None
        # One row per key (a statement may not touch a row twice); the last one given wins, as before.
        params[(lead_id, key)] = {
            "lead_id": lead_id,
            "connector_id": connector_id,
            "key": key,
            "remote_id": made.id if made is not None else None,
            "remote_url": made.url if made is not None else None,
            "intent_at": now if intent else None,
            "updated_at": now,
        }
    if params:
        conn = session.connection()
        many = list(params.values())
        conn.execute(_upsert(conn.dialect.name, intent, remote), many if len(many) > 1 else many[0])


def mark_intents(factory: sessionmaker[Session], connector_id: str, keys: Iterable[Key]) -> None:
    """Before a batch create: remember that each record may be made, as a single create does."""
    with transaction(factory) as session:
        save(session, connector_id, ((lead_id, key, None) for lead_id, key in keys), intent=True)


def record(
    factory: sessionmaker[Session], connector_id: str, made: Iterable[tuple[str, str, Remote]]
) -> None:
    with transaction(factory) as session:
        save(session, connector_id, made, intent=False)


@functools.lru_cache(maxsize=32)
def _keyed(n: int) -> tuple[Any, Any]:
    """Statements for ``n`` (lead, key) pairs, each looked up by index (see core.pairs)."""
    t = _LEDGER
    match = (any_pair(t.c.lead_id, t.c.key, n), t.c.connector_id == bindparam("connector_id"))
    forget = delete(t).where(*match, t.c.remote_id.is_(None))
    seen = select(t.c.lead_id, t.c.key).where(*match)
    return forget, seen


def _keyed_params(connector_id: str, keys: list[Key]) -> dict[str, Any]:
    return {"connector_id": connector_id, **pair_params(keys)}


def forget_intents(factory: sessionmaker[Session], connector_id: str, keys: list[Key]) -> None:
    """Drop bare intents (no remote id) for records the CRM certainly did not create."""
    if not keys:
        return
    with transaction(factory) as session:
        session.connection().execute(_keyed(len(keys))[0], _keyed_params(connector_id, keys))


def untouched(factory: sessionmaker[Session], connector_id: str, keys: list[Key]) -> set[Key]:
    """The keys with no ledger row at all: never tried, so safe to create in a batch."""
    if not keys:
        return set()
    with factory() as session:
        seen = (
            session.connection()
            .execute(_keyed(len(keys))[1], _keyed_params(connector_id, keys))
            .all()
        )
    return set(keys) - {(lead_id, key) for lead_id, key in seen}


@functools.cache
def _rows() -> Any:
    t = _LEDGER
    return select(t.c.lead_id, t.c.key, t.c.remote_id, t.c.remote_url, t.c.intent_at).where(
        t.c.lead_id.in_(bindparam("lead_ids", expanding=True)), t.c.connector_id == bindparam("connector_id")
    )


def rows(
    factory: sessionmaker[Session], connector_id: str, lead_ids: Iterable[str]
) -> dict[str, dict[str, Row[Any]]]:
    """Every ledger row of these leads in one connector, in one read: lead id -> key -> row."""
    ids = sorted(set(lead_ids))
    found: dict[str, dict[str, Row[Any]]] = {lead_id: {} for lead_id in ids}
    if not ids:
        return found
    with reading(factory) as session:
        for row in session.connection().execute(_rows(), {"lead_ids": ids, "connector_id": connector_id}):
            found[row.lead_id][row.key] = row
    return found
