"""Read-only transactions on SQLite begin DEFERRED: they read beside a writer instead of queueing."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest
from sqlalchemy import select, text

from core.db import make_engine, reading, session_factory, transaction
from core.models import OutboxJob
from tests.schema import migrate


def test_a_read_does_not_wait_for_the_write_lock(tmp_path: Path) -> None:
    path = tmp_path / "db.sqlite"
    engine = make_engine(f"sqlite:///{path}")
    migrate(engine)
    factory = session_factory(engine)
    writer = sqlite3.connect(path, timeout=0, isolation_level=None)
    writer.execute("BEGIN IMMEDIATE")  # another process holds the write lock
    try:
        with pytest.raises(sqlite3.OperationalError, match="locked"):
            sqlite3.connect(path, timeout=0, isolation_level=None).execute("BEGIN IMMEDIATE")
        engine.pool.dispose()
        with reading(factory) as session:  # would wait out the 15 s busy timeout, then fail
            assert session.scalars(select(OutboxJob.id)).all() == []
    finally:
        writer.rollback()
        writer.close()
    with transaction(factory) as session:  # a writing transaction still takes the lock
        session.execute(text("CREATE TABLE after_reader (x INTEGER)"))
        assert session.connection().exec_driver_sql("SELECT 1").scalar() == 1
