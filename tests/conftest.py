"""Shared fixtures: a fresh database on SQLite and on PostgreSQL, configs, and a running stack.

Every test that takes ``db_url`` runs twice, once per database. PostgreSQL tests get their own
schema through the connection's search_path, so they never see each other's rows. When the
server is down the PostgreSQL half fails (under CI) or is skipped (on a laptop) with a reason.
"""

from __future__ import annotations

import contextlib
import os
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from sqlalchemy import Engine, create_engine, text
from sqlalchemy.orm import Session, sessionmaker

from core.db import make_engine, session_factory
from tests.schema import migrate

PG_ADMIN_URL = os.environ.get("TEXTBACK_TEST_PG", "postgresql+psycopg://postgres@127.0.0.1:5432/test")


def _pg_available() -> str | None:
    try:
        engine = create_engine(PG_ADMIN_URL)
        with engine.connect() as conn:
            conn.execute(text("SELECT 1"))
        engine.dispose()
        return None
    except Exception as exc:
        return f"{type(exc).__name__}: {exc}".splitlines()[0]


@pytest.fixture(scope="session")
def pg_problem() -> str | None:
    return _pg_available()


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request: pytest.FixtureRequest, tmp_path: Path, pg_problem: str | None) -> Iterator[str]:
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'textback.db'}"
        return
    if pg_problem:
        if os.environ.get("CI"):
            pytest.fail(f"PostgreSQL is required under CI but unreachable: {pg_problem}")
        pytest.skip(f"PostgreSQL unreachable: {pg_problem}")
    with pg_schema() as url:
        yield url


@contextlib.contextmanager
def pg_schema() -> Iterator[str]:
    """The URL of a new, empty PostgreSQL schema (its connections' search_path), dropped after."""
    schema = "t_" + uuid.uuid4().hex[:12]
    admin = create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f"CREATE SCHEMA {schema}"))
    try:
        yield f"{PG_ADMIN_URL}?options=-csearch_path%3D{schema}"
    finally:
        with admin.connect() as conn:
            conn.execute(text(f"DROP SCHEMA {schema} CASCADE"))
        admin.dispose()


@pytest.fixture
def engine(db_url: str) -> Iterator[Engine]:
    """A migrated database on each backend (``db_url``), disposed after the test."""
    eng = make_engine(db_url)
    migrate(eng)
    try:
        yield eng
    finally:
        eng.dispose()


@pytest.fixture
def factory(engine: Engine) -> sessionmaker[Session]:
    return session_factory(engine)


ACCOUNT_SID = "AC" + "ab" * 16
AUTH_TOKEN = "test-auth-token-0123456789"
BUSINESS_NUMBER = "+13125550100"
STAFF_PHONE = "+13125550111"


def business(**overrides: Any) -> dict[str, Any]:
    data: dict[str, Any] = {
        "id": "bright-spark",
        "name": "Bright Spark Electric",
        "timezone": "America/Chicago",
        "numbers": [BUSINESS_NUMBER],
        "staff_phones": [STAFF_PHONE],
        "mode": "ring_through",
        "ring_timeout": 20,
        "hours": {d: ["08:00-17:00"] for d in ("mon", "tue", "wed", "thu", "fri")},
        "booking_link": "https://book.example.com/bright-spark",
        "policy": {
            "min_ring_seconds": 4,
            "cooldown_hours": 12,
            # Texting is allowed all day in tests unless a test says otherwise.
            "sending_window": {"start": "00:00", "end": "00:00"},
        },
    }
    data.update(overrides)
    return data


def config_dict(
    db_url: str,
    public_url: str | None = None,
    twilio_url: str | None = None,
    businesses: list[dict[str, Any]] | None = None,
    **extra: Any,
) -> dict[str, Any]:
    data: dict[str, Any] = {
        "database_url": db_url,
        "twilio": {"account_sid": ACCOUNT_SID, "auth_token": AUTH_TOKEN, "timeout_seconds": 2},
        "worker": {
            "poll_interval": 0.05,
            "lease_seconds": 4,
            "backoff_initial": 0.2,
            "backoff_max": 1,
            "max_attempts": 8,
        },
        "businesses": businesses or [business()],
    }
    if public_url:
        data["public_url"] = public_url
    if twilio_url:
        data["twilio"]["api_base_url"] = twilio_url
    data.update(extra)
    return data


def write_config(path: Path, data: dict[str, Any]) -> Path:
    path.write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
    return path


@pytest.fixture
def stack(tmp_path: Path, db_url: str, request: pytest.FixtureRequest) -> Iterator[Any]:
    """The whole stack in this process; ``indirect`` parametrization gives its business a policy
    (see tests.stack.patient_lookup)."""
    from tests.stack import Stack, business_with

    policy = getattr(request, "param", None)
    extra = {"businesses": [business_with(policy=policy)]} if policy else {}
    s = Stack(tmp_path, db_url, **extra)
    try:
        yield s
    finally:
        s.close()


@pytest.fixture
def calendar() -> Iterator[str]:
    """A Google Calendar emulator on 127.0.0.1 (its URL)."""
    from connectors.emulator import serve_in_thread
    from connectors.google_calendar.emulator import GoogleCalendarEmulator

    server = serve_in_thread(GoogleCalendarEmulator().app)
    yield server.url
    server.stop()
