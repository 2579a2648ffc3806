"""Tables that keep history are read by key, and past rate windows do not pile up.

SQLite plans from indexes alone (textback never runs ANALYZE), and it plans a row-value
``(a, b) IN (VALUES ...)`` as a scan. ``sync_ledger`` keeps every lead ever synced and
``rate_windows`` a row per limiter and window until it is pruned, so a scan grows with history. The query
plan (``EXPLAIN QUERY PLAN`` of the statement as it ran) shows what SQLite reads; those tests are
SQLite's only (PostgreSQL plans from its statistics).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest
from sqlalchemy import Engine, event, text
from sqlalchemy.orm import Session, sessionmaker

from core import connector_state, sync_batch
from core.connector_state import Limit
from core.db import reading, transaction


@pytest.fixture
def sqlite_engine(engine: Engine) -> Iterator[Engine]:
    if engine.dialect.name != "sqlite":
        pytest.skip("SQLite's planner; PostgreSQL plans from statistics")
    yield engine


def plans_of(engine: Engine, run: Callable[[], Any], table: str) -> list[list[str]]:
    """The query plan of each statement ``run`` sent that names ``table``."""
    ran: list[tuple[str, Any]] = []

    def capture(_conn: Any, _cursor: Any, sql: str, params: Any, *_rest: Any) -> None:
        if table in sql:
            ran.append((sql, params))

    event.listen(engine, "before_cursor_execute", capture)
    try:
        run()
    finally:
        event.remove(engine, "before_cursor_execute", capture)
    assert ran, f"nothing ran against {table}"
    with engine.connect() as conn:
        return [[r[3] for r in conn.exec_driver_sql("EXPLAIN QUERY PLAN " + sql, tuple(p))] for sql, p in ran]


def scans(plans: list[list[str]], table: str) -> list[str]:
    return [line for plan in plans for line in plan if line.startswith(f"SCAN {table}")]


def test_the_rate_limit_check_reads_only_the_current_windows(
    sqlite_engine: Engine, factory: sessionmaker[Session]
) -> None:
    limits = [("b:hubspot:0", Limit(100, 10)), ("b:hubspot:1", Limit(4, 1))]
    with transaction(factory) as s:  # a history of past windows
        for window in range(300):
            for limiter, _ in limits:
                connector_state._take(s, limiter, window, Limit(100, 10), 1)

    def check() -> None:
        with reading(factory) as s:
            assert connector_state.full_window(s, limits, 1) is None

    assert scans(plans_of(sqlite_engine, check, "rate_windows"), "rate_windows") == []


def test_batch_ledger_reads_and_deletes_look_up_their_keys(
    sqlite_engine: Engine, factory: sessionmaker[Session]
) -> None:
    keys = [(f"lead-{i}", "contact") for i in range(5)]
    with transaction(factory) as s:
        sync_batch.save(s, "hubspot", [(f"old-{i}", "contact", None) for i in range(200)], intent=True)

    def read_and_forget() -> None:
        assert sync_batch.untouched(factory, "hubspot", keys) == set(keys)
        assert sync_batch.rows(factory, "hubspot", [lead for lead, _ in keys]) == {
            lead: {} for lead, _ in keys
        }
        sync_batch.forget_intents(factory, "hubspot", keys)

    assert scans(plans_of(sqlite_engine, read_and_forget, "sync_ledger"), "sync_ledger") == []


def test_past_rate_windows_do_not_pile_up(factory: sessionmaker[Session]) -> None:
    """A 10 s limit uses 8,640 windows a day; only the recent ones are kept."""
    limit = Limit(100, 10)
    with transaction(factory) as s:
        for window in range(1_000):
            assert connector_state._take(s, "b:hubspot:0", window, limit, 1)
            assert connector_state._take(s, "b:other:0", window, limit, 1)
    with reading(factory) as s:
        rows = s.execute(
            text("SELECT limiter, MIN(window_start), COUNT(*) FROM rate_windows GROUP BY limiter")
        )
        kept = {limiter: (first, count) for limiter, first, count in rows}
    assert kept == {"b:hubspot:0": (992, 8), "b:other:0": (992, 8)}
