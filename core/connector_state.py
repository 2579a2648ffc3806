"""Shared state of installed connectors: pauses, health, rate windows, alerts and OAuth tokens.

Everything here lives in the database, so every worker on every machine sees the same pause,
the same rate window and the same token.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session, sessionmaker

from core.db import transaction
from core.models import Alert, ConnectorState, OAuthToken, RateWindow, utcnow
from core.secrets import SecretBox

log = logging.getLogger("textback.connectors")


def _insert(session: Session):  # type: ignore[no-untyped-def]
    return postgresql.insert if session.get_bind().dialect.name == "postgresql" else sqlite.insert


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


def paused_until(session: Session, business_id: str, connector_id: str) -> datetime | None:
    row = session.get(ConnectorState, (business_id, connector_id))
    if row and row.paused_until and row.paused_until > utcnow():
        return row.paused_until
    return None


def pause(session: Session, business_id: str, connector_id: str, until: datetime, reason: str) -> None:
    row = state_row(session, business_id, connector_id)
    # Never shorten a pause another worker set: the later Retry-After wins.
    if row.paused_until is None or row.paused_until < until:
        row.paused_until = until
        row.pause_reason = reason[:200]


def resume(session: Session, business_id: str, connector_id: str) -> None:
    row = state_row(session, business_id, connector_id)
    row.paused_until = None
    row.pause_reason = None


def record_success(session: Session, business_id: str, connector_id: str, calls: int) -> None:
    row = state_row(session, business_id, connector_id)
    row.last_success_at = utcnow()
    row.api_calls = (row.api_calls or 0) + calls


def record_error(
    session: Session,
    business_id: str,
    connector_id: str,
    message: str,
    calls: int,
    rate_limited: bool = False,
) -> None:
    row = state_row(session, business_id, connector_id)
    row.last_error = message[:2000]
    row.last_error_at = utcnow()
    row.api_calls = (row.api_calls or 0) + calls
    if rate_limited:
        row.rate_limited = (row.rate_limited or 0) + 1


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


def acquire(factory: sessionmaker[Session], limiter: str, limit: Limit, cost: int = 1) -> float:
    """Take ``cost`` requests from the shared window. Returns 0, or the seconds to wait first."""
    now = time.time()
    window = int(now // limit.per_seconds)
    with transaction(factory) as session:
        session.execute(
            _insert(session)(RateWindow)
            .values(limiter=limiter, window_start=window, count=0)
            .on_conflict_do_nothing()
        )
        taken = session.execute(
            update(RateWindow)
            .where(
                RateWindow.limiter == limiter,
                RateWindow.window_start == window,
                RateWindow.count + cost <= limit.requests,
            )
            .values(count=RateWindow.count + cost)
        ).rowcount  # type: ignore[attr-defined]
    if taken:
        return 0.0
    return (window + 1) * limit.per_seconds - now


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
