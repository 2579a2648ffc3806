"""Pooled PostgreSQL connections: a session the server ended is replaced, and reads keep prepared statements.

The pool does not ping on checkout (a ``SELECT 1`` round trip per checkout); these tests end the
server side of pooled connections with ``pg_terminate_backend``, as a PostgreSQL restart does, and
check that the next unit of work still succeeds and loses nothing.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest
from sqlalchemy import Engine, create_engine, select, text
from sqlalchemy.orm import Session, sessionmaker

from core import outbox
from core.db import make_engine, reading, session_factory, transaction
from core.models import OutboxJob
from core.outbox import Outbox
from tests.schema import migrate


@pytest.fixture
def pg_url(db_url: str) -> str:
    if not db_url.startswith("postgresql"):
        pytest.skip("PostgreSQL sessions only")
    return db_url


@pytest.fixture
def engine(pg_url: str) -> Iterator[Engine]:
    engine = make_engine(pg_url, pool_size=3, max_overflow=0)
    migrate(engine)
    yield engine
    engine.dispose()


def backend_pids(factory: sessionmaker[Session], count: int) -> list[int]:
    """Check out ``count`` pooled connections at once; their server process ids."""
    sessions = [factory() for _ in range(count)]
    try:
        return [int(s.execute(text("SELECT pg_backend_pid()")).scalar_one()) for s in sessions]
    finally:
        for s in sessions:
            s.close()


def terminate(url: str, pids: list[int]) -> None:
    admin = create_engine(url.split("?")[0], isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            for pid in pids:
                assert conn.execute(text("SELECT pg_terminate_backend(:p)"), {"p": pid}).scalar()
            deadline = time.monotonic() + 10
            while (
                conn.execute(
                    text("SELECT count(*) FROM pg_stat_activity WHERE pid = ANY(:p)"), {"p": pids}
                ).scalar()
                and time.monotonic() < deadline
            ):
                time.sleep(0.05)
    finally:
        admin.dispose()


def add_job(factory: sessionmaker[Session], key: str) -> None:
    with transaction(factory) as session:
        outbox.enqueue(session, kind="sms.send", target="twilio", dedupe_key=key)


def test_work_survives_the_server_ending_every_pooled_session(engine: Engine, pg_url: str) -> None:
    factory = session_factory(engine)
    add_job(factory, "before")
    old = backend_pids(factory, 3)
    terminate(pg_url, old)

    # Each of these checks out one of the dead pooled connections first.
    add_job(factory, "after")
    box = Outbox(factory, "w1")
    jobs = box.claim(10)
    assert len(jobs) == 2
    assert all(box.complete(job) for job in jobs)
    with reading(factory) as session:
        statuses = dict(session.execute(select(OutboxJob.dedupe_key, OutboxJob.status)).tuples().all())
    assert statuses == {"before": "done", "after": "done"}
    assert not set(backend_pids(factory, 3)) & set(old)


def test_a_read_keeps_the_connections_prepared_statements(pg_url: str) -> None:
    engine = make_engine(pg_url, pool_size=1, max_overflow=0)  # every unit of work on one session
    migrate(engine)
    factory = session_factory(engine)
    box = Outbox(factory, "w1")
    for _ in range(8):  # psycopg prepares a statement at its fifth run on a connection
        box.claim(10)
    query = text("SELECT count(*) FROM pg_prepared_statements WHERE statement LIKE '%UPDATE outbox_jobs%'")
    with reading(factory) as session:
        assert session.execute(query).scalar() == 1
    with reading(factory) as session:  # ends without commit: a rollback, unless it only read
        session.scalars(select(OutboxJob.id)).all()
    with reading(factory) as session:
        assert session.execute(query).scalar() == 1
    engine.dispose()


def test_a_transaction_that_fails_still_rolls_back(engine: Engine) -> None:
    factory = session_factory(engine)
    with pytest.raises(RuntimeError), transaction(factory) as session:
        outbox.enqueue(session, kind="sms.send", target="twilio", dedupe_key="rolled-back")
        raise RuntimeError("boom")
    with reading(factory) as session:
        assert session.scalars(select(OutboxJob.id)).all() == []
