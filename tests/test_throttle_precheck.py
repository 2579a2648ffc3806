"""A CRM request the local rate limit refuses is refused by a read: it takes no write lock.

Under load HubSpot's budget is used up almost at once and most requests only learn "refused". On
SQLite the write lock is what bounds throughput, so those requests must not queue for it: they are
refused while another connection holds it, open no write transaction on either database and leave
the shared rate windows as they were. A request with room still counts in its windows.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine, event, select
from sqlalchemy.orm import Session, sessionmaker

from bridge.runtime import Connectors
from core import config as config_mod
from core import connector_state
from core.db import make_engine, reading, session_factory, transaction
from core.errors import RateLimited
from core.models import ConnectorInstall, RateWindow, utcnow
from core.secrets import SecretBox, generate_key
from tests.conftest import config_dict
from tests.schema import migrate

BUSINESS = "bright-spark"  # the business config_dict configures
Throttle = Callable[..., None]


def hubspot_throttle(tmp_path: Path, db_url: str, factory: sessionmaker[Session]) -> Throttle:
    """The throttle the runtime hands an installed HubSpot connector (100 per 10 s, search 4 per s)."""
    key_file = tmp_path / "secret.key"
    key_file.write_text(generate_key() + "\n")
    config = config_mod.from_dict(config_dict(db_url, secret_key_file=str(key_file)))
    with transaction(factory) as s:
        s.add(
            ConnectorInstall(
                business_id=BUSINESS,
                connector_id="hubspot",
                version="1",
                config={"api_base_url": "https://api.hubapi.com"},
                secrets=SecretBox(str(key_file)).seal({"access_token": "pat-test"}),
            )
        )
    return Connectors(config, factory).build(BUSINESS, "hubspot").context.throttle


def windows(factory: sessionmaker[Session]) -> dict[tuple[str, int], int]:
    with reading(factory) as s:
        return {(r.limiter, r.window_start): r.count for r in s.scalars(select(RateWindow))}


def away_from_a_window_edge(per_seconds: float, margin: float) -> None:
    """Start a step in one rate window, not at the end of one (a new window has room again)."""
    left = per_seconds - time.time() % per_seconds
    if left < margin:
        time.sleep(left + 0.01)


@pytest.fixture
def write_transactions(engine: Engine) -> Iterator[list[str]]:
    """Every transaction begun on ``engine`` that may write (read-only ones are left out)."""
    begun: list[str] = []

    def on_begin(conn: Any) -> None:
        if not conn.get_execution_options().get("textback_read_only"):
            begun.append("write")

    event.listen(engine, "begin", on_begin)
    yield begun
    event.remove(engine, "begin", on_begin)


def pause_after_a_429(factory: sessionmaker[Session]) -> None:
    with transaction(factory) as s:
        until = utcnow() + timedelta(minutes=2)
        connector_state.pause(s, BUSINESS, "hubspot", until, "rate limited: 429")


def use_up(throttle: Throttle) -> None:
    throttle(100)  # the whole burst window in one request


@pytest.mark.parametrize("why", ["window used up", "paused after a 429"])
def test_a_refusal_does_not_wait_for_sqlites_write_lock(tmp_path: Path, why: str) -> None:
    path = tmp_path / "textback.db"
    engine = make_engine(f"sqlite:///{path}")
    migrate(engine)
    factory = session_factory(engine)
    throttle = hubspot_throttle(tmp_path, f"sqlite:///{path}", factory)
    if why == "paused after a 429":
        pause_after_a_429(factory)
    else:
        away_from_a_window_edge(10, margin=3)
        use_up(throttle)
    outcome: list[Exception | None] = []

    def request() -> None:
        try:
            throttle(1)
            outcome.append(None)
        except Exception as exc:  # handed to the test's thread
            outcome.append(exc)

    writer = sqlite3.connect(path, isolation_level=None)
    writer.execute("BEGIN IMMEDIATE")  # another process holds the write lock and keeps it
    thread = threading.Thread(target=request, daemon=True)
    try:
        thread.start()
        # Waiting for the lock would take SQLite's whole busy timeout (15 s).
        thread.join(timeout=5)
        refused_while_locked = not thread.is_alive()
    finally:
        writer.rollback()
        writer.close()
        thread.join()
        engine.dispose()
    assert refused_while_locked, "the refused request waited for the write lock"
    assert len(outcome) == 1 and isinstance(outcome[0], RateLimited)
    if why == "paused after a 429":
        assert "paused after a rate limit" in str(outcome[0])
        assert 100 < (outcome[0].retry_after or 0) <= 120
    else:
        assert "hubspot: local rate limit (100/10s)" in str(outcome[0])
        assert 0 < (outcome[0].retry_after or 0) <= 10


def test_a_refused_request_writes_nothing_and_a_permitted_one_counts(
    tmp_path: Path, db_url: str, factory: sessionmaker[Session], write_transactions: list[str]
) -> None:
    throttle = hubspot_throttle(tmp_path, db_url, factory)
    write_transactions.clear()  # the install and the connector's build
    with pytest.raises(RateLimited, match=r"local rate limit \(100/10s\)") as info:
        throttle(101)  # more than a whole window never fits
    assert 0 < (info.value.retry_after or 0) <= 10
    assert windows(factory) == {} and write_transactions == []

    away_from_a_window_edge(10, margin=3)
    throttle(60)
    taken = windows(factory)
    assert list(taken.values()) == [60] and len(write_transactions) == 1
    with pytest.raises(RateLimited, match=r"local rate limit \(100/10s\)") as info:
        throttle(41)
    assert 0 < (info.value.retry_after or 0) <= 10
    assert windows(factory) == taken and len(write_transactions) == 1
    throttle(40)  # exactly what is left
    assert list(windows(factory).values()) == [100] and len(write_transactions) == 2


def test_a_request_refused_by_one_limit_takes_nothing_from_the_others(
    tmp_path: Path, db_url: str, factory: sessionmaker[Session], write_transactions: list[str]
) -> None:
    throttle = hubspot_throttle(tmp_path, db_url, factory)
    write_transactions.clear()  # the install and the connector's build
    away_from_a_window_edge(1, margin=0.6)
    throttle(4, "search")  # the search budget (4 per second) used up, 4 of the burst's 100 taken
    taken = windows(factory)
    assert sorted(taken.values()) == [4, 4]
    with pytest.raises(RateLimited, match=r"local rate limit \(4/1s\)"):
        throttle(1, "search")
    assert windows(factory) == taken and len(write_transactions) == 1


def test_a_paused_connector_is_refused_without_a_write(
    tmp_path: Path, db_url: str, factory: sessionmaker[Session], write_transactions: list[str]
) -> None:
    throttle = hubspot_throttle(tmp_path, db_url, factory)
    write_transactions.clear()  # the install and the connector's build
    pause_after_a_429(factory)
    write_transactions.clear()  # the pause
    with pytest.raises(RateLimited, match="hubspot is paused after a rate limit") as info:
        throttle(1)
    assert 100 < (info.value.retry_after or 0) <= 120
    assert windows(factory) == {} and write_transactions == []
