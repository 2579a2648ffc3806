"""A claim reads as many jobs as it takes, however long the queue (core.outbox.Outbox.claim).

Workers fall behind exactly when a backlog builds up (a CRM's budget used up, a burst of calls),
and every text and push starts with a claim. Read as one query over due and lapsed jobs, the
claim read, checked and sorted the whole backlog to take one job. What each database reads is
shown by its plan for the claim as it ran: SQLite's ``EXPLAIN QUERY PLAN``, PostgreSQL's
``EXPLAIN ANALYZE`` (with fresh statistics, as autovacuum keeps them).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import pytest
from sqlalchemy import Engine, event, text
from sqlalchemy.orm import Session, sessionmaker

from core import outbox
from core.db import transaction
from core.models import OutboxJob, utcnow
from core.outbox import TEXT_PRIORITY, Outbox

BACKLOG = 2000


def queue_backlog(factory: sessionmaker[Session]) -> None:
    """CRM pushes for many leads (several per lead, in order) and texts, all due."""
    with transaction(factory) as s:
        for i in range(BACKLOG):
            text_job = i % 4 == 0
            outbox.enqueue(
                s,
                kind="sms.send" if text_job else "crm.sync",
                target="twilio" if text_job else "hubspot",
                dedupe_key=f"backlog-{i}",
                ordering_key=None if text_job else f"lead-{i % 300}",
            )


@pytest.fixture
def captured(engine: Engine) -> Iterator[list[tuple[str, Any]]]:
    """The claim statements that ran (SQL and parameters)."""
    ran: list[tuple[str, Any]] = []

    def capture(_conn: Any, _cursor: Any, sql: str, params: Any, *_rest: Any) -> None:
        if "UPDATE outbox_jobs" in sql and "RETURNING" in sql:
            ran.append((sql, params))

    event.listen(engine, "before_cursor_execute", capture)
    yield ran
    event.remove(engine, "before_cursor_execute", capture)


def rows_read(engine: Engine, sql: str, params: Any) -> int:
    """Rows of outbox_jobs the statement's plan reads (PostgreSQL; the claim is rolled back)."""
    with engine.connect() as conn:
        conn.execute(text("ANALYZE outbox_jobs"))
        conn.commit()
        with conn.begin() as tx:
            [[plan]] = conn.exec_driver_sql("EXPLAIN (ANALYZE, FORMAT JSON) " + sql, params).all()
            tx.rollback()
    plan = json.loads(plan) if isinstance(plan, str) else plan

    def walk(node: dict[str, Any]) -> Iterator[dict[str, Any]]:
        yield node
        for child in node.get("Plans", []):
            yield from walk(child)

    return sum(
        int(n["Actual Rows"]) * int(n["Actual Loops"]) + int(n.get("Rows Removed by Filter", 0))
        for n in walk(plan[0]["Plan"])
        if n.get("Relation Name") == "outbox_jobs" and "Scan" in n["Node Type"]
    )


def sorts_the_backlog(engine: Engine, sql: str, params: Any) -> list[str]:
    """SQLite: the plan's sorts of outbox_jobs rows themselves (a temp B-tree beside a read of the table).

    Sorting the few jobs taken from each kind is fine; sorting every ready job is the backlog read.
    """
    with engine.connect() as conn:
        plan = [(r[0], r[1], r[3]) for r in conn.exec_driver_sql("EXPLAIN QUERY PLAN " + sql, tuple(params))]
    reads = ("SEARCH outbox_jobs ", "SCAN outbox_jobs", "MULTI-INDEX OR")
    reading = {parent for _, parent, detail in plan if detail.startswith(reads)}
    return [detail for _, parent, detail in plan if "TEMP B-TREE" in detail and parent in reading]


@pytest.mark.parametrize("lane", [None, TEXT_PRIORITY], ids=["any job", "texts"])
def test_a_claim_reads_a_few_jobs_of_a_backlog_of_thousands(
    factory: sessionmaker[Session],
    engine: Engine,
    captured: list[tuple[str, Any]],
    lane: int | None,
) -> None:
    queue_backlog(factory)
    claimed = Outbox(factory, "w").claim(limit=2, max_priority=lane)
    # The first two in claim order: texts first, oldest first.
    assert [j.kind for j in claimed] == ["sms.send", "sms.send"]
    with factory() as s:
        first_texts = (
            s.query(OutboxJob.id).filter(OutboxJob.kind == "sms.send").order_by(OutboxJob.id).limit(2)
        )
        assert [j.id for j in claimed] == [r.id for r in first_texts]
    ((sql, params),) = captured
    if engine.dialect.name == "sqlite":
        assert sorts_the_backlog(engine, sql, params) == []
    else:
        assert rows_read(engine, sql, params) < 50


def test_a_limited_claim_takes_the_first_of_due_and_lapsed_jobs_in_order(
    factory: sessionmaker[Session],
) -> None:
    """Due and lapsed jobs are read apart: the claim still takes the first ``limit`` of both together."""
    with transaction(factory) as s:
        for key, kind in (("push-1", "crm.sync"), ("text-lapsing", "sms.send"), ("push-2", "crm.sync")):
            outbox.enqueue(s, kind=kind, target="t", dedupe_key=key)
    # A worker claims the text and dies: its lease lapses after 1 s.
    [text_job] = Outbox(factory, "dead", lease_seconds=1).claim(limit=1, max_priority=TEXT_PRIORITY)
    with transaction(factory) as s:
        outbox.enqueue(s, kind="sms.send", target="t", dedupe_key="text-new")
    later = utcnow() + timedelta(seconds=5)
    first_two = Outbox(factory, "alive").claim(limit=2, now=later)
    # Both texts (the lapsed one is older), before either push.
    with factory() as s:
        keys = [s.get_one(OutboxJob, j.id).dedupe_key for j in first_two]
    assert keys == ["text-lapsing", "text-new"]
    assert first_two[0].id == text_job.id and first_two[0].attempts == 2
    assert sorted(j.kind for j in Outbox(factory, "alive").claim(limit=5, now=later)) == ["crm.sync"] * 2
