"""Shared state of installed connectors: pauses, health, rate windows, alerts and OAuth tokens.

Everything here lives in the database, so every worker on every machine sees the same pause,
the same rate window and the same token.
"""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, cast

from sqlalchemy import Select, Table, bindparam, delete, func, or_, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session, sessionmaker

from core.db import transaction
from core.models import Alert, ConnectorState, OAuthToken, RateWindow, utcnow
from core.pairs import any_pair, pair_params
from core.secrets import SecretBox

log = logging.getLogger("textback.connectors")
# A limiter's past windows are deleted when a request is taken from every PRUNE_EVERY-th window.
PRUNE_EVERY = 16


def _insert(session: Session):  # type: ignore[no-untyped-def]
    return postgresql.insert if session.get_bind().dialect.name == "postgresql" else sqlite.insert


def _table(model: type[Any]) -> Table:
    return cast(Table, model.__table__)


@dataclass(frozen=True)
class _Statements:
    prune: Any
    pause_of: Select[Any]
    pause: Any
    success: Any
    error: Any
    take: Any


@functools.cache
def _statements(dialect: str) -> _Statements:
    """Each hot write as one UPSERT, built once per dialect: no ORM load, modify and flush."""
    insert = postgresql.insert if dialect == "postgresql" else sqlite.insert
    st = _table(ConnectorState)
    key = (st.c.business_id == bindparam("business_id"), st.c.connector_id == bindparam("connector_id"))
    row = insert(st).values(
        business_id=bindparam("business_id"),
        connector_id=bindparam("connector_id"),
        api_calls=bindparam("api_calls"),
        rate_limited=bindparam("rate_limited"),
    )
    pause = insert(st).values(
        business_id=bindparam("business_id"),
        connector_id=bindparam("connector_id"),
        api_calls=0,
        rate_limited=0,
        paused_until=bindparam("until", type_=st.c.paused_until.type),
        pause_reason=bindparam("reason"),
    )
    # Never shorten a pause another worker set: the later Retry-After wins.
    pause = pause.on_conflict_do_update(
        index_elements=["business_id", "connector_id"],
        set_={"paused_until": pause.excluded.paused_until, "pause_reason": pause.excluded.pause_reason},
        where=or_(st.c.paused_until.is_(None), st.c.paused_until < pause.excluded.paused_until),
    )
    success = row.values(last_success_at=bindparam("at", type_=st.c.last_success_at.type))
    success = success.on_conflict_do_update(
        index_elements=["business_id", "connector_id"],
        set_={
            "last_success_at": success.excluded.last_success_at,
            "api_calls": func.coalesce(st.c.api_calls, 0) + success.excluded.api_calls,
        },
    )
    error = row.values(
        last_error=bindparam("message"), last_error_at=bindparam("at", type_=st.c.last_error_at.type)
    )
    error = error.on_conflict_do_update(
        index_elements=["business_id", "connector_id"],
        set_={
            "last_error": error.excluded.last_error,
            "last_error_at": error.excluded.last_error_at,
            "api_calls": func.coalesce(st.c.api_calls, 0) + error.excluded.api_calls,
            "rate_limited": func.coalesce(st.c.rate_limited, 0) + error.excluded.rate_limited,
        },
    )
    rw = _table(RateWindow)
    take = insert(rw).values(
        limiter=bindparam("limiter"), window_start=bindparam("window"), count=bindparam("cost")
    )
    # The window's row and the request taken from it in one statement; nothing when it is full.
    take = take.on_conflict_do_update(
        index_elements=["limiter", "window_start"],
        set_={"count": rw.c.count + take.excluded.count},
        where=rw.c.count + take.excluded.count <= bindparam("requests"),
    )
    prune = delete(rw).where(rw.c.limiter == bindparam("limiter"), rw.c.window_start < bindparam("before"))
    return _Statements(
        prune=prune,
        pause_of=select(st.c.paused_until, st.c.pause_reason).where(*key),
        pause=pause,
        success=success,
        error=error,
        take=take,
    )


def _run(session: Session, stmt: str, params: dict[str, Any]) -> Any:
    conn = session.connection()
    return conn.execute(getattr(_statements(conn.dialect.name), stmt), params)


def state_row(session: Session, business_id: str, connector_id: str) -> ConnectorState:
    stmt = (
        _insert(session)(ConnectorState)
        .values(business_id=business_id, connector_id=connector_id, api_calls=0, rate_limited=0)
        .on_conflict_do_nothing()
    )
    session.execute(stmt)
    row = session.get(ConnectorState, (business_id, connector_id))
    assert row is not None
    return row


def pause_of(session: Session, business_id: str, connector_id: str) -> tuple[datetime | None, str | None]:
    """(paused_until, pause_reason) as stored, with no ORM load: (None, None) for no row."""
    found = _run(session, "pause_of", {"business_id": business_id, "connector_id": connector_id}).first()
    return (found.paused_until, found.pause_reason) if found is not None else (None, None)


RATE_LIMITED = "rate limited"  # how a rate limit's pause reason begins (see core.sync)


def rate_limit_reason(detail: object) -> str:
    """A rate limit's pause reason, as :func:`rate_limit_end` recognises it."""
    return f"{RATE_LIMITED}: {detail}"


def rate_limit_end(until: datetime | None, reason: str | None, now: datetime) -> datetime | None:
    """When a pause set by a rate limit ends, if it is one and still on; None otherwise.

    An auth pause is not one: it ends when an admin reinstalls, and jobs then go at once.
    """
    if until is None or until <= now or not (reason or "").startswith(RATE_LIMITED):
        return None
    return until


def rate_limit_pause(session: Session, business_id: str, connector_id: str) -> float:
    """Seconds left of a pause set after a vendor's rate limit; 0 when there is none (or another kind)."""
    now = utcnow()
    end = rate_limit_end(*pause_of(session, business_id, connector_id), now)
    return (end - now).total_seconds() if end is not None else 0.0


def paused_until(session: Session, business_id: str, connector_id: str) -> datetime | None:
    until, _ = pause_of(session, business_id, connector_id)
    if until and until > utcnow():
        return until
    return None


def pause(session: Session, business_id: str, connector_id: str, until: datetime, reason: str) -> None:
    _run(
        session,
        "pause",
        {"business_id": business_id, "connector_id": connector_id, "until": until, "reason": reason[:200]},
    )


def resume(session: Session, business_id: str, connector_id: str) -> None:
    row = state_row(session, business_id, connector_id)
    row.paused_until = None
    row.pause_reason = None


def record_success(session: Session, business_id: str, connector_id: str, calls: int) -> None:
    _run(
        session,
        "success",
        {
            "business_id": business_id,
            "connector_id": connector_id,
            "api_calls": calls,
            "rate_limited": 0,
            "at": utcnow(),
        },
    )


def record_error(
    session: Session,
    business_id: str,
    connector_id: str,
    message: str,
    calls: int,
    rate_limited: bool = False,
) -> None:
    _run(
        session,
        "error",
        {
            "business_id": business_id,
            "connector_id": connector_id,
            "api_calls": calls,
            "rate_limited": 1 if rate_limited else 0,
            "message": message[:2000],
            "at": utcnow(),
        },
    )


def alert(
    session: Session, business_id: str | None, connector_id: str | None, kind: str, message: str
) -> None:
    """Tell an admin (console, `textback alerts`, and an ERROR log line)."""
    existing = session.scalars(
        select(Alert).where(
            Alert.business_id == business_id,
            Alert.connector_id == connector_id,
            Alert.kind == kind,
            Alert.resolved_at.is_(None),
        )
    ).first()
    if existing is None:
        session.add(
            Alert(business_id=business_id, connector_id=connector_id, kind=kind, message=message[:2000])
        )
    log.error("admin alert", extra={"business": business_id, "connector": connector_id, "alert": kind})


@dataclass(frozen=True)
class Limit:
    requests: int
    per_seconds: float


def acquire(
    factory: sessionmaker[Session], limiter: str, limit: Limit, cost: int = 1, session: Session | None = None
) -> float:
    """Take ``cost`` requests from the shared window. Returns 0, or the seconds to wait first.

    In ``session``'s transaction when given (the caller commits), else in a transaction of its own.
    """
    now = time.time()
    window = int(now // limit.per_seconds)
    if session is None:
        with transaction(factory) as own:
            taken = _take(own, limiter, window, limit, cost)
    else:
        taken = _take(session, limiter, window, limit, cost)
    if taken:
        return 0.0
    return (window + 1) * limit.per_seconds - now


def window_counts(session: Session, windows: Sequence[tuple[str, int]]) -> dict[tuple[str, int], int]:
    """The requests taken so far from each ``(limiter, window_start)``, in one statement; absent: none."""
    if not windows:
        return {}
    rows = session.connection().execute(_counts(len(windows)), pair_params(windows))
    return {(r.limiter, r.window_start): int(r[2]) for r in rows}


@functools.lru_cache(maxsize=8)
def _counts(n: int) -> Select[Any]:
    rw = _table(RateWindow)
    match = any_pair(rw.c.limiter, rw.c.window_start, n)
    return select(rw.c.limiter, rw.c.window_start, rw.c.count).where(match)


def full_window(
    session: Session, limiters: Sequence[tuple[str, Limit]], cost: int = 1
) -> tuple[Limit, float] | None:
    """The first limit whose current window cannot fit ``cost``, with the seconds until it ends.

    None when every window has room as last committed. It only reads, so a window that has room
    here may still be full by the time ``acquire`` takes from it: ``acquire`` decides.
    """
    now = time.time()
    windows = [(limiter, int(now // limit.per_seconds)) for limiter, limit in limiters]
    counts = window_counts(session, windows)
    for (key, window), (_, limit) in zip(windows, limiters, strict=True):
        if counts.get((key, window), 0) + cost > limit.requests:
            return limit, (window + 1) * limit.per_seconds - now
    return None


def _take(session: Session, limiter: str, window: int, limit: Limit, cost: int) -> bool:
    if window % PRUNE_EVERY == 0:
        # Past windows count for nothing: without this the table keeps one row per limiter for
        # every window ever used (8,640 a day for a 10 s limit). One index range per 16 windows.
        _run(session, "prune", {"limiter": limiter, "before": window})
    if cost > limit.requests:  # never fits: only the window's row is made, as for any refusal
        session.execute(
            _insert(session)(RateWindow)
            .values(limiter=limiter, window_start=window, count=0)
            .on_conflict_do_nothing()
        )
        return False
    params = {"limiter": limiter, "window": window, "cost": cost, "requests": limit.requests}
    return bool(_run(session, "take", params).rowcount)


# -- OAuth tokens --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Token:
    access_token: str
    expires_at: datetime | None
    refresh_token: str | None


class TokenStore:
    """Per-connector OAuth tokens with single-flight refresh across workers and machines.

    ``refresh`` takes the row lock (FOR UPDATE on PostgreSQL; BEGIN IMMEDIATE on SQLite), then
    looks again: a worker that waited for the lock finds the token another worker just refreshed
    and does not refresh a second time.
    """

    def __init__(
        self, factory: sessionmaker[Session], box: SecretBox, business_id: str, connector_id: str
    ) -> None:
        self.factory = factory
        self.box = box
        self.key = (business_id, connector_id)

    def get(self) -> Token | None:
        with self.factory() as session:
            row = session.get(OAuthToken, self.key)
            if row is None or not row.access_token:
                return None
            return Token(
                self.box.open_text(row.access_token) or "",
                row.expires_at,
                self.box.open_text(row.refresh_token),
            )

    def seed(
        self, refresh_token: str, access_token: str | None = None, expires_at: datetime | None = None
    ) -> None:
        with transaction(self.factory) as session:
            row = session.get(OAuthToken, self.key)
            if row is None:
                row = OAuthToken(business_id=self.key[0], connector_id=self.key[1], extra={})
                session.add(row)
            row.refresh_token = self.box.seal_text(refresh_token)
            row.access_token = self.box.seal_text(access_token)
            row.expires_at = expires_at

    def valid(self, margin: timedelta = timedelta(seconds=60)) -> Token | None:
        token = self.get()
        if (
            token
            and token.access_token
            and (token.expires_at is None or token.expires_at - margin > utcnow())
        ):
            return token
        return None

    def refresh(
        self,
        do_refresh: Callable[[str | None], tuple[str, int, str | None]],
        stale: str | None = None,
        margin: timedelta = timedelta(seconds=60),
    ) -> Token:
        """Refresh once. ``do_refresh(refresh_token) -> (access, expires_in, new_refresh)``.

        ``stale`` is the access token the caller saw rejected; if the stored one differs, someone
        already refreshed it and that one is returned.
        """
        with self.factory() as session, session.begin():
            # FOR UPDATE locks nothing while the row does not exist: create it first (a concurrent
            # first refresh waits on this insert), so the lock below is the single flight.
            session.execute(
                _insert(session)(OAuthToken)
                .values(business_id=self.key[0], connector_id=self.key[1], extra={})
                .on_conflict_do_nothing()
            )
            row = session.scalars(
                select(OAuthToken)
                .where(OAuthToken.business_id == self.key[0], OAuthToken.connector_id == self.key[1])
                .with_for_update()
            ).first()
            assert row is not None
            current = self.box.open_text(row.access_token)
            fresh = row.expires_at is None or row.expires_at - margin > utcnow()
            if current and fresh and current != stale:
                return Token(current, row.expires_at, self.box.open_text(row.refresh_token))
            access, expires_in, new_refresh = do_refresh(self.box.open_text(row.refresh_token))
            row.access_token = self.box.seal_text(access)
            row.expires_at = utcnow() + timedelta(seconds=expires_in)
            if new_refresh:
                row.refresh_token = self.box.seal_text(new_refresh)
            return Token(access, row.expires_at, new_refresh or self.box.open_text(row.refresh_token))
