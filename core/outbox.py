"""The transactional outbox: follow-up work written in the same transaction as its cause.

Workers claim jobs with a lease and a claim token. On PostgreSQL the claim is
``FOR UPDATE SKIP LOCKED``, so many workers on many machines share one table; on SQLite every
transaction is ``BEGIN IMMEDIATE`` (see core.db), which serialises claims. A killed worker's job
becomes claimable again when its lease runs out, and completion is guarded by the claim token,
so a stale worker can never finish a job somebody else has re-claimed.

Jobs sharing an ``ordering_key`` (a lead and a target) run one at a time, oldest first.

On PostgreSQL, queueing a job that is due now also sends a NOTIFY on the schema's channel
(:data:`CHANNEL_SQL`, delivered at commit), so idle workers wake at once instead of at their next
poll; a write that makes a job due later (a job queued for later, a retry, a deferral, an admin
retry) sends ``due``, so idle workers re-read when the next job is due (see core.wakeup). A job
queued for later may say why it waits (``reason``, kept in ``last_error`` as a deferral's is);
:func:`wake` makes such jobs due now. A job whose work another job did may be finished unclaimed,
by its dedupe key (:func:`complete_pending`).

The statements a worker runs for every job (claim, renew, complete, defer, fail, enqueue) are Core
statements built once (see :func:`_statements`) and run on the session's connection: building an
ORM statement and its cache key on every call cost more CPU than the database spent running it.
"""

from __future__ import annotations

import functools
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, cast

from sqlalchemy import (
    Connection,
    Table,
    and_,
    bindparam,
    delete,
    exists,
    func,
    literal_column,
    or_,
    select,
    text,
    union_all,
    update,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session, sessionmaker
from sqlalchemy.sql import Select, Update
from tenacity import RetryCallState, wait_exponential_jitter

from core import connector_state
from core.db import read_only
from core.errors import JobError, TransientError
from core.models import ConnectorState, OutboxJob, utcnow

ACTIVE = ("pending", "running")

# Texts to callers first, then the conversation, then everything else (CRM sync, notifications).
PRIORITIES = {"sms.send": 0, "convo.reply": 1, "notify.email": 3, "notify.webhook": 3, "escalation.sla": 3}
DEFAULT_PRIORITY = 5
# Texts to callers and conversation replies: the jobs a caller is waiting for (the text lane).
TEXT_PRIORITY = 1
_ANY_PRIORITY = 2**31 - 1
# The NOTIFY channel, as SQL: one per schema, because PostgreSQL delivers a notification to every
# listener of the database. Deployments sharing a database in different schemas would otherwise
# wake each other's workers for jobs they can never claim. A hash keeps any schema's name within
# the 63 bytes a channel may have. Payload "text": a text-lane job is due now; "job": another job
# is due now; "due": a job's due time moved (queued for later, retried, deferred): re-read the
# next due time.
CHANNEL_SQL = "'textback_outbox_' || left(md5(current_schema()), 12)"
DUE = "due"


@dataclass(frozen=True)
class Job:
    id: int
    kind: str
    target: str
    payload: dict[str, Any]
    attempts: int
    max_attempts: int
    claim_token: str
    lead_id: str | None
    business_id: str | None
    priority: int = DEFAULT_PRIORITY
    lease_seconds: float = 60.0


class LeaseLost(Exception):
    """Raised by a handler that renewed its own lease (see :func:`renew_in`) and found it taken."""


@dataclass(frozen=True)
class Finished:
    """Returned by a handler that marked its job done itself, in its last transaction.

    ``owned`` is False when the lease was lost (another worker owns the job now).
    """

    result: dict[str, Any] | None
    owned: bool


class Deferred(Exception):
    """Raised by a handler to put its job back until ``until`` without spending an attempt."""

    def __init__(self, until: datetime, reason: str) -> None:
        super().__init__(reason)
        self.until = until
        self.reason = reason


def enqueue(
    session: Session,
    *,
    kind: str,
    target: str,
    dedupe_key: str,
    ordering_key: str | None = None,
    business_id: str | None = None,
    lead_id: str | None = None,
    payload: dict[str, Any] | None = None,
    run_at: datetime | None = None,
    max_attempts: int = 8,
    reason: str | None = None,
) -> bool:
    """Add a job inside the caller's transaction. Returns False when ``dedupe_key`` exists.

    ``reason``: why a job queued for later (``run_at``) waits, recorded as a deferral records it,
    so :func:`wake` can make it due early.
    """
    priority = PRIORITIES.get(kind, DEFAULT_PRIORITY)
    values = {
        "kind": kind,
        "target": target,
        "dedupe_key": dedupe_key,
        "ordering_key": ordering_key or dedupe_key,
        "business_id": business_id,
        "lead_id": lead_id,
        "payload": payload or {},
        "status": "pending",
        "priority": priority,
        "attempts": 0,
        "max_attempts": max_attempts,
        "next_attempt_at": run_at or utcnow(),
        "created_at": utcnow(),
        "updated_at": utcnow(),
    }
    if reason is not None:
        values["last_error"] = reason
    _autoflush(session)
    conn = session.connection()
    st = _statements(conn.dialect.name)
    if st.enqueue_notify is None:
        return bool(getattr(conn.execute(st.enqueue, values), "rowcount", 0))
    # The NOTIFY rides on the INSERT (no extra round trip), only when a row went in, and
    # PostgreSQL delivers it at commit: a woken worker always finds the job.
    lane = DUE if run_at is not None else "text" if priority <= TEXT_PRIORITY else "job"
    return conn.execute(st.enqueue_notify[lane], values).first() is not None


def wake(session: Session, ordering_keys: list[str], *reasons: str) -> int:
    """Make the pending jobs with these ordering keys that wait for one of ``reasons`` due now.

    In the caller's transaction: one UPDATE, which clears the reason (a job is woken once). On
    PostgreSQL it announces the jobs as a new job due now does, so an idle worker wakes at its
    commit; SQLite's probe sees the commit itself. Returns how many jobs it woke.
    """
    if not ordering_keys:
        return 0
    _autoflush(session)
    conn = session.connection()
    now = utcnow()
    result = conn.execute(
        _statements(conn.dialect.name).wake,
        {"ordering_keys": ordering_keys, "reasons": list(reasons), "at": now},
    )
    return _updated(result)


def postpone(session: Session, ordering_keys: list[str], until: datetime, because: str, *reasons: str) -> int:
    """Make the pending jobs with these ordering keys that wait for one of ``reasons`` wait for
    ``until`` instead, for ``because`` (a connector paused by a rate limit): :func:`wake`, for later.
    """
    if not ordering_keys:
        return 0
    _autoflush(session)
    conn = session.connection()
    params = {"ordering_keys": ordering_keys, "reasons": list(reasons), "until": until, "because": because}
    result = conn.execute(_statements(conn.dialect.name).postpone, {**params, "at": utcnow()})
    return _updated(result)


def complete_pending(session: Session, results: dict[str, dict[str, Any]]) -> int:
    """Mark the pending jobs with these dedupe keys done, with their results, without running them.

    In the caller's transaction, which must also record the work that makes them needless (the
    caller's own job did it). Only a ``pending`` job is finished: one running is left to its worker
    and a dead one to an admin. Its attempts stay as they were (0 for a job never claimed). Returns
    how many it finished.
    """
    if not results:
        return 0
    _autoflush(session)
    conn = session.connection()
    now = utcnow()
    params = [{"key": key, "job_result": result, "at": now} for key, result in results.items()]
    result = conn.execute(
        _statements(conn.dialect.name).complete_pending, params if len(params) > 1 else params[0]
    )
    return int(result.rowcount)


def _autoflush(session: Session) -> None:
    """What ``session.execute`` of an ORM statement does first: the caller's pending rows go first."""
    if session.autoflush:
        session.flush()


def _jobs() -> Table:
    return cast(Table, OutboxJob.__table__)


@dataclass(frozen=True)
class _Statements:
    enqueue: Any
    # PostgreSQL: the INSERT returning a NOTIFY, per payload; None on SQLite.
    enqueue_notify: dict[str, Any] | None
    renew: Update
    complete: Update
    defer: Update
    fail: Update
    pause: Select[Any]
    defer_siblings: Update
    wake: Update
    postpone: Update
    complete_pending: Update


def claim_holds(c: Any) -> tuple[Any, ...]:
    """The job ``:job_id`` is still held by the claim ``:token`` (the guard of every lease write)."""
    return (c.id == bindparam("job_id"), c.claim_token == bindparam("token"), c.status == "running")


@functools.cache
def _statements(dialect: str) -> _Statements:
    jobs = _jobs()
    c = jobs.c
    stamp = c.updated_at.type
    at: Any = bindparam("at", type_=stamp)
    guard = claim_holds(c)
    insert = postgresql.insert if dialect == "postgresql" else sqlite.insert
    enqueue = insert(jobs).on_conflict_do_nothing(index_elements=["dedupe_key"])
    enqueue_notify = None
    # On PostgreSQL a job's due time moved by a retry or a deferral is announced (see DUE).
    announce: tuple[Any, ...] = ()
    if dialect == "postgresql":
        enqueue_notify = {
            lane: enqueue.returning(c.id, literal_column(f"pg_notify({CHANNEL_SQL}, '{lane}')"))
            for lane in ("text", "job", DUE)
        }
        announce = (c.id, literal_column(f"pg_notify({CHANNEL_SQL}, '{DUE}')"))
    # Held jobs' own reason only: a job deferred for anything else (a backoff, a pause) keeps its time.
    held = (
        update(jobs)
        .where(
            c.ordering_key.in_(bindparam("ordering_keys", expanding=True)),
            # ``status || ''``: SQLite without ANALYZE statistics would otherwise search by status
            # (ix_outbox_claim) and read every pending job of every business, a backlog of
            # thousands when a CRM's budget is used up, for each text sent. By ordering key it
            # reads the lead's few jobs. PostgreSQL's planner picks that index either way.
            c.status.concat("") == "pending",
            c.last_error.in_(bindparam("reasons", expanding=True)),
        )
    )
    wake_held = held.values(next_attempt_at=at, last_error=None, updated_at=at)
    postpone_held = held.values(
        next_attempt_at=bindparam("until", type_=stamp), last_error=bindparam("because"), updated_at=at
    )
    if dialect == "postgresql":
        # Due now, like a new job of the general lane (the text lane's jobs are never held).
        wake_held = wake_held.returning(c.id, literal_column(f"pg_notify({CHANNEL_SQL}, 'job')"))
        postpone_held = postpone_held.returning(*announce)
    state = cast(Table, ConnectorState.__table__)
    wake: Any = bindparam("wake", type_=stamp)
    defer = (
        update(jobs)
        .where(*guard)
        .values(
            status="pending",
            next_attempt_at=bindparam("until", type_=stamp),
            attempts=c.attempts - 1,
            locked_until=None,
            last_error=bindparam("reason"),
            updated_at=at,
        )
    )
    fail = (
        update(jobs)
        .where(*guard)
        .values(
            status=bindparam("new_status"),
            next_attempt_at=bindparam("next_at", type_=stamp),
            locked_until=None,
            last_error=bindparam("error"),
            last_error_code=bindparam("error_code"),
            finished_at=bindparam("finished", type_=stamp),
            updated_at=at,
        )
    )
    return _Statements(
        enqueue=enqueue,
        enqueue_notify=enqueue_notify,
        renew=update(jobs).where(*guard).values(locked_until=bindparam("until", type_=stamp), updated_at=at),
        complete=update(jobs)
        .where(*guard)
        .values(
            status="done",
            result=bindparam("job_result", type_=c.result.type),
            finished_at=at,
            locked_until=None,
            updated_at=at,
        ),
        defer=defer.returning(*announce) if announce else defer,
        fail=fail.returning(*announce) if announce else fail,
        pause=select(state.c.paused_until, state.c.pause_reason).where(
            state.c.business_id == bindparam("business"), state.c.connector_id == bindparam("connector")
        ),
        defer_siblings=update(jobs)
        .where(
            c.status == "pending",
            c.business_id == bindparam("business"),
            c.target == bindparam("connector"),
            c.kind == bindparam("job_kind"),
            c.next_attempt_at < wake,
        )
        .values(next_attempt_at=wake, updated_at=at),
        wake=wake_held,
        postpone=postpone_held,
        complete_pending=update(jobs)
        .where(c.dedupe_key == bindparam("key"), c.status == "pending")
        .values(
            status="done",
            result=bindparam("job_result", type_=c.result.type),
            finished_at=at,
            updated_at=at,
        ),
    )


def _ready(c: Any, now: Any) -> Any:
    return or_(
        and_(c.status == "pending", c.next_attempt_at <= now),
        and_(c.status == "running", c.locked_until < now),
    )


@functools.lru_cache(maxsize=8)
def _ready_statement(max_priority: int | None) -> Select[Any]:
    c = _jobs().c
    lane = [] if max_priority is None else [c.priority <= max_priority]
    return select(c.id).where(_ready(c, bindparam("now", type_=c.updated_at.type)), *lane).limit(1)


@functools.lru_cache(maxsize=64)
def _claim_statement(limit: int, max_priority: int | None) -> Update:
    """Claim up to ``limit`` ready jobs (of priority <= ``max_priority``): one statement per lane.

    A ready job is due (pending, its time come) or lapsed (running past its lease: its worker
    died). Each kind is read in the order of ``ix_outbox_claim`` and only until ``limit`` are
    found, and the claim takes the first ``limit`` of the two: as one query over both kinds, the
    database read, checked and sorted every ready job to pick one, so that a claim's cost grew
    with the backlog (2 and 6 ms on SQLite and PostgreSQL at 2,000 queued, 12 and 13 ms at
    6,000; ``python -m bench.store_costs claim``) just when the workers fall behind.
    """
    jobs = _jobs()
    c = jobs.c
    stamp = c.updated_at.type
    now: Any = bindparam("now", type_=stamp)
    earlier = jobs.alias("earlier")
    blocked = exists().where(
        and_(
            earlier.c.ordering_key == c.ordering_key,
            earlier.c.id < c.id,
            earlier.c.status.in_(ACTIVE),
        )
    )
    # Bounded in every lane: on ``status`` and ``priority`` SQLite reads ix_outbox_claim in the
    # order wanted; with ``status`` alone it prefers ix_outbox_ready and sorts every due job.
    lane = c.priority <= (_ANY_PRIORITY if max_priority is None else max_priority)

    def first(name: str, *ready: Any) -> Any:
        return (
            select(c.id, c.priority, c.next_attempt_at)
            .where(*ready, lane, ~blocked)
            .order_by(c.priority, c.next_attempt_at, c.id)
            .limit(limit)
            .with_for_update(skip_locked=True, of=jobs)
            .cte(name)
        )

    due = first("due", c.status == "pending", c.next_attempt_at <= now)
    lapsed = first("lapsed", c.status == "running", c.locked_until < now)
    ready = union_all(select(due), select(lapsed)).subquery("ready")
    chosen = select(ready.c.id).order_by(ready.c.priority, ready.c.next_attempt_at, ready.c.id).limit(limit)
    return (
        update(jobs)
        .where(c.id.in_(chosen.scalar_subquery()))
        .values(
            status="running",
            locked_by=bindparam("worker"),
            claim_token=bindparam("token"),
            locked_until=bindparam("lease_end", type_=stamp),
            attempts=c.attempts + 1,
            updated_at=now,
        )
        .returning(
            c.id,
            c.kind,
            c.target,
            c.payload,
            c.attempts,
            c.max_attempts,
            c.lead_id,
            c.business_id,
            c.priority,
        )
    )


def _guarded(job: Job) -> Any:
    return and_(
        OutboxJob.id == job.id, OutboxJob.claim_token == job.claim_token, OutboxJob.status == "running"
    )


def _renew(session: Session, job: Job, until: datetime, now: datetime) -> bool:
    conn = session.connection()
    params = {"job_id": job.id, "token": job.claim_token, "until": until, "at": now}
    return bool(conn.execute(_statements(conn.dialect.name).renew, params).rowcount == 1)


def _complete(session: Session, job: Job, result: dict[str, Any] | None, now: datetime) -> bool:
    conn = session.connection()
    params = {"job_id": job.id, "token": job.claim_token, "job_result": result, "at": now}
    return bool(conn.execute(_statements(conn.dialect.name).complete, params).rowcount == 1)


def renew_in(session: Session, job: Job, now: datetime | None = None) -> None:
    """Renew the lease inside a handler's own first transaction: one round trip fewer per job.

    Raises :class:`LeaseLost` when another worker re-claimed the job; the caller's transaction
    then rolls back, so nothing of the job ran.
    """
    now = now or utcnow()
    _autoflush(session)
    if not _renew(session, job, now + timedelta(seconds=job.lease_seconds), now):
        raise LeaseLost(f"job {job.id}")


def complete_in(
    session: Session, job: Job, result: dict[str, Any] | None = None, now: datetime | None = None
) -> Finished:
    """Mark the job done inside the handler's last transaction, with the work it records."""
    now = now or utcnow()
    _autoflush(session)
    return Finished(result, _complete(session, job, result, now))


class Outbox:
    def __init__(
        self,
        factory: sessionmaker[Session],
        worker_id: str,
        lease_seconds: float = 60.0,
        backoff_initial: float = 2.0,
        backoff_max: float = 600.0,
        max_attempts: int | None = None,
    ) -> None:
        self.factory = factory
        self.worker_id = worker_id
        bind = factory.kw.get("bind")
        self._sqlite = bind is not None and bind.dialect.name == "sqlite"
        # The deployment's cap (worker.max_attempts) wins over the budget a job was queued with.
        self.max_attempts = max_attempts
        self.lease = timedelta(seconds=lease_seconds)
        self._wait = wait_exponential_jitter(
            multiplier=backoff_initial, max=backoff_max, jitter=backoff_initial
        )

    def claim(
        self, limit: int = 10, now: datetime | None = None, max_priority: int | None = None
    ) -> list[Job]:
        """Claim up to ``limit`` ready jobs; ``max_priority`` restricts it to urgent kinds (a lane)."""
        now = now or utcnow()
        token = str(uuid.uuid4())
        params = {"now": now, "worker": self.worker_id, "token": token, "lease_end": now + self.lease}
        if self._sqlite and not self._any_ready(now, max_priority):
            return []
        with self.factory() as session, session.begin():
            rows = session.connection().execute(_claim_statement(limit, max_priority), params).all()
        lease = self.lease.total_seconds()
        jobs = [
            Job(
                r.id,
                r.kind,
                r.target,
                dict(r.payload or {}),
                r.attempts,
                r.max_attempts,
                token,
                r.lead_id,
                r.business_id,
                r.priority,
                lease,
            )
            for r in rows
        ]
        # Run them in priority order too: a caller's text goes before the CRM work claimed with it.
        return sorted(jobs, key=lambda j: (j.priority, j.id))

    def _any_ready(self, now: datetime, max_priority: int | None) -> bool:
        """Is a job ready to claim? Asked without SQLite's write lock, which a claim takes up front.

        Several threads are woken for one job (one per worker process whose watcher saw it); all
        but one would otherwise queue for the write lock only to claim nothing.
        """
        with self.factory() as session:
            conn = session.connection(execution_options=read_only(session.get_bind().dialect.name))
            return conn.execute(_ready_statement(max_priority), {"now": now}).first() is not None

    def _guarded(self, job: Job) -> Any:
        return _guarded(job)

    def complete(self, job: Job, result: dict[str, Any] | None = None, now: datetime | None = None) -> bool:
        """Mark done. False means the lease was lost: another worker owns the job now."""
        now = now or utcnow()
        with self.factory() as session, session.begin():
            return _complete(session, job, result, now)

    def renew(self, job: Job, now: datetime | None = None) -> bool:
        """Extend the lease before starting a job. False: it expired and someone else owns the job.

        A worker claims several jobs at once; by the time it reaches the last, the lease may have run
        out and another worker may have re-claimed it. Renewing first means it never runs twice.
        """
        now = now or utcnow()
        with self.factory() as session, session.begin():
            return _renew(session, job, now + self.lease, now)

    def defer(self, job: Job, until: datetime, reason: str) -> bool:
        """Put the job back until ``until``; the attempt it just used is given back.

        When the job's target is a connector paused by a rate limit, its other pending jobs move to
        the same time in the same UPDATE: otherwise every worker would claim each of them, find the
        pause and defer it, one by one, for as long as the pause lasts.
        """
        params = {
            "job_id": job.id,
            "token": job.claim_token,
            "until": until,
            "reason": reason,
            "at": utcnow(),
        }
        with self.factory() as session, session.begin():
            conn = session.connection()
            st = _statements(conn.dialect.name)
            owned = _updated(conn.execute(st.defer, params)) == 1
            if job.business_id:
                _defer_paused_siblings(conn, st, job, until)
            return owned

    def backoff(self, attempt: int) -> float:
        state = RetryCallState(None, None, (), {})  # type: ignore[arg-type]
        state.attempt_number = attempt
        return float(self._wait(state))

    def fail(self, job: Job, error: JobError, now: datetime | None = None) -> str:
        """Record a failed attempt; returns the job's new status ('pending' or 'dead').

        'lost' means the lease was lost: another worker owns the job now and nothing changed.
        """
        now = now or utcnow()
        status = "dead"
        next_at = now
        limit = min(job.max_attempts, self.max_attempts) if self.max_attempts else job.max_attempts
        if error.retryable and job.attempts < limit:
            status = "pending"
            delay = self.backoff(job.attempts)
            retry_after = getattr(error, "retry_after", None) if isinstance(error, TransientError) else None
            if retry_after is not None:
                delay = max(delay, float(retry_after))
            next_at = now + timedelta(seconds=delay)
        params = {
            "job_id": job.id,
            "token": job.claim_token,
            "new_status": status,
            "next_at": next_at,
            "error": str(error)[:2000],
            "error_code": str(error.code) if error.code is not None else None,
            "finished": now if status == "dead" else None,
            "at": now,
        }
        with self.factory() as session, session.begin():
            conn = session.connection()
            if _updated(conn.execute(_statements(conn.dialect.name).fail, params)) != 1:
                return "lost"
        return status


def _updated(result: Any) -> int:
    """Rows an UPDATE changed; on PostgreSQL it returns a row per job (see DUE)."""
    return len(result.all()) if result.returns_rows else int(result.rowcount)


def _defer_paused_siblings(conn: Connection, st: _Statements, job: Job, until: datetime) -> None:
    state = conn.execute(st.pause, {"business": job.business_id, "connector": job.target}).first()
    now = utcnow()
    end = connector_state.rate_limit_end(state.paused_until, state.pause_reason, now) if state else None
    if end is None:
        return  # an auth pause ends when an admin reinstalls: jobs not yet tried resume at once then
    params = {
        "business": job.business_id,
        "connector": job.target,
        "job_kind": job.kind,
        "wake": min(until, end),
        "at": now,
    }
    conn.execute(st.defer_siblings, params)


# -- administration ----------------------------------------------------------------------------


def list_jobs(session: Session, status: str | None = None, limit: int = 100) -> list[OutboxJob]:
    query = select(OutboxJob).order_by(OutboxJob.id.desc()).limit(limit)
    if status:
        query = query.where(OutboxJob.status == status)
    return list(session.scalars(query))


def retry(session: Session, job_id: int | None = None, dead: bool = False) -> int:
    """Make dead (or any not-running) jobs runnable now, with a fresh attempt budget."""
    stmt = update(OutboxJob).values(
        status="pending", attempts=0, next_attempt_at=utcnow(), finished_at=None, locked_until=None
    )
    if job_id is not None:
        stmt = stmt.where(OutboxJob.id == job_id, OutboxJob.status != "running")
    elif dead:
        stmt = stmt.where(OutboxJob.status == "dead")
    else:
        return 0
    count: int = session.execute(stmt).rowcount  # type: ignore[attr-defined]
    if count and session.get_bind().dialect.name == "postgresql":
        session.execute(text(f"SELECT pg_notify({CHANNEL_SQL}, '{DUE}')"))  # idle workers look again
    return count


def purge(session: Session, older_than: timedelta, include_dead: bool = False) -> dict[str, int]:
    """Delete finished jobs older than ``older_than``. Dead jobs only when asked explicitly."""
    cutoff = utcnow() - older_than
    counts = {}
    for status in ("done", "dead") if include_dead else ("done",):
        stmt = delete(OutboxJob).where(OutboxJob.status == status, OutboxJob.updated_at < cutoff)
        counts[status] = session.execute(stmt).rowcount  # type: ignore[attr-defined]
    return counts


def backlog(session: Session, now: datetime | None = None) -> dict[str, dict[str, Any]]:
    """Pending and running jobs per target, with the age of the oldest in seconds."""
    now = now or utcnow()
    rows = session.execute(
        select(OutboxJob.target, OutboxJob.status, func.count(), func.min(OutboxJob.created_at))
        .where(OutboxJob.status.in_((*ACTIVE, "dead")))
        .group_by(OutboxJob.target, OutboxJob.status)
    ).all()
    out: dict[str, dict[str, Any]] = {}
    for target, status, count, oldest in rows:
        entry = out.setdefault(target, {"pending": 0, "running": 0, "dead": 0, "oldest_age_seconds": 0.0})
        entry[status] = int(count)
        if status in ACTIVE and oldest is not None:
            oldest_dt = oldest if oldest.tzinfo else oldest.replace(tzinfo=now.tzinfo)
            entry["oldest_age_seconds"] = max(entry["oldest_age_seconds"], (now - oldest_dt).total_seconds())
    return out
